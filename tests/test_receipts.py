"""Execution receipts (``kettle.model.receipts``): built from a staged task and its result,
signed with a real attested execution identity, verified offline with only the AS root
and enclave info. Any changed field, signature or chain fails with a reason; a receipt
signed by another service is refused; Failed and Canceled receipts say so.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from attested_identities import AttestedHome, attested_home

from kettle.attestation.signed import sign
from kettle.errors import AttestationError, InvalidArgument
from kettle.model import scheduling as rules
from kettle.services.execution.node import ReceiptSigner
from kettle.model.receipts import (
    MAX_RECEIPT_BYTES,
    RECEIPT_PURPOSE,
    ExpectedResult,
    Outcome,
    build_receipt,
    canonical,
    examine_receipt,
    result_digest,
    sign_receipt,
    verify_receipt,
)
from kettle.model.records import (
    Approval,
    CryptoInfo,
    FileRecord,
    StagedTask,
    TaskOutputs,
    TaskRecord,
    TaskResult,
    TaskStatus,
)

BARE_TASK_ID = "0b6c3b1e-4f0a-4d53-9d8e-2f1c6a9b7e01"
TASK_ID = f"task-{BARE_TASK_ID}"
NODE_ID = "5a1f0c2e-7d3b-4e8a-b6c9-0d2e4f6a8b10"
FUNCTION_DIGEST = "fd" * 32
TASK_DIGEST = "7d" * 32
TAGS = {"output_result1": bytes(range(16)), "output_result2": bytes(range(16, 32))}


def staged_task() -> StagedTask:
    crypto = CryptoInfo("aes-gcm-128", b"k" * 16, b"i" * 12)
    return StagedTask(
        task_id=BARE_TASK_ID, function_id="f1e2d3c4-b5a6-4978-8877-665544332211", user_id="alice",
        executor="builtin", executor_type="builtin", function_name="builtin-ordered-set-intersect",
        function_arguments='{"order":"ascending"}', function_payload=b"",
        input_data={"input_data1": FileRecord("in-a", "file:///a", crypto, ("alice",), b"\x01" * 16),
                    "input_data2": FileRecord("in-b", "file:///b", crypto, ("bob",), b"\x02" * 16)},
        output_data={"output_result1": FileRecord("out-a", "file:///oa", crypto, ("alice",)),
                     "output_result2": FileRecord("out-b", "file:///ob", crypto, ("bob",))},
        function_digest=FUNCTION_DIGEST, task_digest=TASK_DIGEST,
        approvals=(Approval("bob", TASK_DIGEST, 1_800_000_100, 1_800_003_600), Approval("alice", TASK_DIGEST, 1_800_000_000)),
    )


OK = TaskResult(outputs=TaskOutputs(b"3 common lines", TAGS, ("a log line",)))
FAILED = TaskResult(failure="FunctionError: order must be ascending or descending", sandbox_layers=("process",))


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, _auditor_cache: Path) -> AttestedHome:
    return attested_home(tmp_path_factory.mktemp("receipts-home"), _auditor_cache)


@pytest.fixture(scope="module")
def now() -> float:
    return time.time() - 30


def signed(home: AttestedHome, now: float, result: TaskResult = OK, *, service: str = "execution",
           canceled: bool = False) -> bytes:
    start = datetime.fromtimestamp(now + 1, UTC)
    body = build_receipt(staged_task(), result, attempt=1, executor_id=NODE_ID, started_at=start,
                         ended_at=start + timedelta(seconds=2), canceled=canceled)
    return sign_receipt(body, home.identity(service, now), now=start + timedelta(seconds=3)).to_bytes()


@pytest.fixture(scope="module")
def receipt(home: AttestedHome, now: float) -> bytes:
    return signed(home, now)


def refusal(home: AttestedHome, data: bytes, at: float, expected: ExpectedResult = ExpectedResult()) -> str:
    with pytest.raises(AttestationError) as exc:
        verify_receipt(data, home.verifier(at), expected)
    return exc.value.reason


def test_a_receipt_states_the_run_and_verifies(home: AttestedHome, receipt: bytes, now: float) -> None:
    verdict = examine_receipt(receipt, home.verifier(now + 60))
    assert verdict.ok, verdict.reason
    assert [c.name for c in verdict.checks][:2] == ["receipt format", "purpose"]
    assert verdict.checks[-1].name == "signature" and verdict.signer is not None
    assert verdict.signer.service == "execution"
    body = json.loads(receipt)["receipt"]
    assert body["outcome"] == "Finished" and body["task_id"] == TASK_ID and body["executor_id"] == NODE_ID
    assert body["function_id"] == "function-f1e2d3c4-b5a6-4978-8877-665544332211"
    assert body["inputs"] == {"input_data1": {"file_id": "input-in-a", "cmac": "01" * 16},
                              "input_data2": {"file_id": "input-in-b", "cmac": "02" * 16}}
    assert body["outputs"] == {"output_result1": {"file_id": "output-out-a", "tag": TAGS["output_result1"].hex()},
                               "output_result2": {"file_id": "output-out-b", "tag": TAGS["output_result2"].hex()}}
    assert body["result_digest"] == result_digest(Outcome.FINISHED, return_value=b"3 common lines", tags_map=TAGS)
    assert body["payload_sha256"] == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert (body["task_digest"], body["function_digest"]) == (TASK_DIGEST, FUNCTION_DIGEST)
    assert body["approvals"] == [
        {"user_id": "alice", "task_digest": TASK_DIGEST, "approved_at": 1_800_000_000, "expires_at": None},
        {"user_id": "bob", "task_digest": TASK_DIGEST, "approved_at": 1_800_000_100, "expires_at": 1_800_003_600}]


def test_receipts_stay_verifiable_after_the_certificate_expired(home: AttestedHome, receipt: bytes, now: float) -> None:
    verify_receipt(receipt, home.verifier(now + 30 * 24 * 3600))


def test_the_reader_holds_it_against_the_task_it_saw(home: AttestedHome, receipt: bytes, now: float) -> None:
    good = ExpectedResult(TASK_ID, Outcome.FINISHED, result_digest(Outcome.FINISHED, return_value=b"3 common lines",
                                                                  tags_map=TAGS))
    verify_receipt(receipt, home.verifier(now + 60), good)
    assert refusal(home, receipt, now + 60, replace(good, task_id="another")) == \
        f"the receipt is for task {TASK_ID}, not another"
    assert refusal(home, receipt, now + 60, replace(good, outcome=Outcome.FAILED)) == \
        "the receipt says Finished, the task says Failed"
    assert refusal(home, receipt, now + 60, replace(good, task_digest="ab" * 32)) == \
        f"the node ran task digest {TASK_DIGEST}, the task's approvals cover {'ab' * 32}"
    verify_receipt(receipt, home.verifier(now + 60), replace(good, task_digest=TASK_DIGEST))
    swapped = result_digest(Outcome.FINISHED, return_value=b"4 common lines", tags_map=TAGS)
    assert refusal(home, receipt, now + 60, replace(good, result_digest=swapped)) == \
        "the task's result is not the one the node signed"


def _set(path: tuple[str, ...], value: Any) -> Any:
    def change(doc: dict[str, Any]) -> None:
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return change


# Every field of the body, changed to another well-formed value: the signature no longer matches.
FIELD_CHANGES = {
    "task_id": _set(("task_id",), "11111111-2222-4333-8444-555555555555"),
    "attempt": _set(("attempt",), 2),
    "executor_id": _set(("executor_id",), "another-node"),
    "task_digest": _set(("task_digest",), "ab" * 32),
    "function_id": _set(("function_id",), "another-function"),
    "function_digest": _set(("function_digest",), "cd" * 32),
    "function_name": _set(("function_name",), "builtin-echo"),
    "executor_type": _set(("executor_type",), "python"),
    "executor": _set(("executor",), "mesapy"),
    "payload_sha256": _set(("payload_sha256",), "ef" * 32),
    "input cmac": _set(("inputs", "input_data1", "cmac"), "03" * 16),
    "input file": _set(("inputs", "input_data2", "file_id"), "in-c"),
    "output tag": _set(("outputs", "output_result1", "tag"), "04" * 16),
    "approvals": _set(("approvals",), [{"user_id": "mallory", "task_digest": "ab" * 32, "approved_at": 1,
                                        "expires_at": None}]),
    "started_at": _set(("started_at",), "2020-01-01T00:00:00.000000Z"),
    "ended_at": _set(("ended_at",), "2099-01-01T00:00:00.000000Z"),
    "result_digest": _set(("result_digest",), "00" * 32),
    "sandbox_layers": _set(("sandbox_layers",), ["process", "seccomp"]),
}


@pytest.mark.parametrize("name", sorted(FIELD_CHANGES))
def test_any_changed_field_fails_the_signature(home: AttestedHome, receipt: bytes, now: float, name: str) -> None:
    doc = json.loads(receipt)
    FIELD_CHANGES[name](doc["receipt"])
    assert refusal(home, canonical(doc), now + 60) == \
        "the signature does not match the signed content and the certificate's key"


def test_every_field_of_the_body_is_covered_by_a_change() -> None:
    body = build_receipt(staged_task(), OK, attempt=1, executor_id=NODE_ID, started_at=datetime.now(UTC),
                         ended_at=datetime.now(UTC)).to_json()
    assert set(body) - {"format", "inputs", "outputs", "outcome"} == {name for name in FIELD_CHANGES if " " not in name}


@pytest.mark.parametrize("outcome", ["Finished", "Canceled"])
def test_a_failed_receipt_cannot_be_made_to_say_otherwise(home: AttestedHome, now: float, outcome: str) -> None:
    doc = json.loads(signed(home, now, FAILED))
    doc["receipt"]["outcome"] = outcome
    assert refusal(home, canonical(doc), now + 60) == \
        "the signature does not match the signed content and the certificate's key"


def test_a_changed_signature_or_signing_time_fails(home: AttestedHome, receipt: bytes, now: float) -> None:
    doc = json.loads(receipt)
    raw = bytearray(base64.b64decode(doc["signature"]["signature"]))
    raw[-1] ^= 1
    doc["signature"]["signature"] = base64.b64encode(bytes(raw)).decode()
    assert refusal(home, canonical(doc), now + 60) == \
        "the signature does not match the signed content and the certificate's key"
    doc = json.loads(receipt)
    moved = datetime.fromisoformat(doc["signature"]["signed_at"].replace("Z", "+00:00")) + timedelta(seconds=1)
    doc["signature"]["signed_at"] = moved.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert refusal(home, canonical(doc), now + 60) == \
        "the signature does not match the signed content and the certificate's key"


def test_a_changed_chain_fails(home: AttestedHome, receipt: bytes, now: float, tmp_path: Path,
                               _auditor_cache: Path) -> None:
    doc = json.loads(receipt)
    doc["signature"]["certificates"] = doc["signature"]["certificates"][:1]
    assert refusal(home, canonical(doc), now + 60) == "the signature carries no chain to the AS root"
    # A genuine execution certificate of another platform, spliced in: not under our AS root.
    stranger = json.loads(signed(attested_home(tmp_path / "stranger", _auditor_cache), now))
    doc = json.loads(receipt)
    doc["signature"]["certificates"][0] = stranger["signature"]["certificates"][0]
    assert "does not chain to the pinned AS root" in refusal(home, canonical(doc), now + 60)
    # Another of our own execution certificates (a different key): chains, but did not sign this.
    other = json.loads(signed(home, now))
    doc = json.loads(receipt)
    doc["signature"]["certificates"] = other["signature"]["certificates"]
    assert refusal(home, canonical(doc), now + 60) == \
        "the signature does not match the signed content and the certificate's key"


def test_a_receipt_signed_by_another_service_is_refused(home: AttestedHome, now: float) -> None:
    """The management service holds a valid attested key too, but it does not run tasks."""
    forged = signed(home, now, service="management")
    assert refusal(home, forged, now + 60) == "peer is management, expected execution"


def test_a_signature_made_for_another_purpose_is_refused(home: AttestedHome, receipt: bytes, now: float) -> None:
    doc = json.loads(receipt)
    body = canonical(doc["receipt"])
    other = sign(home.identity("execution", now), "kettle trail head v1", body,
                 now=datetime.fromtimestamp(now + 5, UTC))
    doc["signature"] = other.to_json()
    assert refusal(home, canonical(doc), now + 60) == f"signed for 'kettle trail head v1', not {RECEIPT_PURPOSE!r}"


def test_a_failed_task_receipt_says_failed_and_verifies(home: AttestedHome, now: float) -> None:
    data = signed(home, now, FAILED)
    expected = ExpectedResult(TASK_ID, Outcome.FAILED, result_digest(Outcome.FAILED, reason=FAILED.failure))
    body = verify_receipt(data, home.verifier(now + 60), expected).body
    assert body.outcome is Outcome.FAILED and body.sandbox_layers == ("process",)
    assert all(f.digest is None for f in body.outputs.values())


def test_a_canceled_run_receipt_says_canceled_and_names_no_tags(home: AttestedHome, now: float) -> None:
    data = signed(home, now, TaskResult(failure=rules.CANCELED_BY_USER), canceled=True)
    expected = ExpectedResult(TASK_ID, Outcome.CANCELED, result_digest(Outcome.CANCELED, reason=rules.CANCELED_BY_USER))
    assert verify_receipt(data, home.verifier(now + 60), expected).body.outcome is Outcome.CANCELED


@pytest.mark.parametrize("change, reason", [
    (lambda d: d.pop("signature"), "a receipt has exactly the fields receipt and signature"),
    (lambda d: d["receipt"].update(format="kettle-receipt-v0"), "receipt format is 'kettle-receipt-v0'"),
    (lambda d: d["receipt"].update(extra=1), "receipt body has the wrong fields; unknown: extra"),
    (lambda d: d["receipt"].update(outcome="Done"), "receipt outcome must be Finished, Failed or Canceled"),
    (lambda d: d["receipt"].update(attempt=0), "receipt attempt must be a positive integer"),
    (lambda d: d["receipt"].update(result_digest="XY"), "receipt result_digest must be 64 lowercase hex"),
    (lambda d: d["receipt"].update(started_at="2099-01-01T00:00:00.000000Z"), "receipt ends before it starts"),
    (lambda d: d["receipt"].update(outcome="Failed"), "a Failed receipt names output tags"),
    (lambda d: d["receipt"]["inputs"].update(x={"file_id": "f"}), "receipt inputs['x'] must have file_id and cmac"),
])
def test_malformed_receipts_are_refused_with_the_reason(home: AttestedHome, receipt: bytes, now: float,
                                                        change: Any, reason: str) -> None:
    doc = json.loads(receipt)
    change(doc)
    assert refusal(home, canonical(doc), now + 60).startswith(reason)


def test_garbage_and_oversized_files_are_refused(home: AttestedHome, now: float) -> None:
    assert refusal(home, b"\xff\x00", now) == "the receipt is not JSON"
    assert refusal(home, b" " * (MAX_RECEIPT_BYTES + 1), now).startswith(f"a receipt is at most {MAX_RECEIPT_BYTES} bytes")


# --- the scheduler keeps the receipt with the result --------------------------------------


def running_task() -> TaskRecord:
    return TaskRecord(uuid=BARE_TASK_ID, creator="alice", function_id="f", function_owner="publisher",
                      function_arguments="{}", executor="builtin", inputs_ownership={}, outputs_ownership={},
                      participants=("alice",), status=TaskStatus.RUNNING, attempts=1)


def test_the_record_keeps_the_receipt_with_either_outcome(receipt: bytes) -> None:
    ok, _ = rules.apply_result(running_task(), TaskResult(outputs=TaskOutputs(b"done"), receipt=receipt))
    failed, _ = rules.apply_result(running_task(), TaskResult(failure="x" * 5000, receipt=receipt))
    for task in (ok, failed):
        assert TaskRecord.from_bytes(task.to_bytes()).result.receipt == receipt
    assert failed.status is TaskStatus.FAILED and len(failed.result.failure or "") == 1024


def test_an_oversized_receipt_is_refused_before_anything_is_written() -> None:
    with pytest.raises(InvalidArgument, match=f"the receipt must be at most {MAX_RECEIPT_BYTES} bytes"):
        rules.apply_result(running_task(), TaskResult(failure="x", receipt=b"r" * (MAX_RECEIPT_BYTES + 1)))


def test_only_the_executor_that_ran_a_canceled_task_may_add_its_receipt_once(receipt: bytes) -> None:
    # The lease stays, CANCELED, until the receipt comes (then it is removed: a second one is discarded).
    lease = rules.Lease(BARE_TASK_ID, NODE_ID, 1, b"staged", 1).ended(rules.LeaseState.CANCELED, 2)
    assert rules.on_result(lease, "another-node") is rules.ResultAction.DISCARD
    assert rules.on_result(lease, NODE_ID) is rules.ResultAction.KEEP_RECEIPT
    assert rules.on_result(None, NODE_ID) is rules.ResultAction.DISCARD
    canceled = rules.cancel(running_task())
    kept = rules.attach_cancel_receipt(canceled, receipt)
    assert kept.result.receipt == receipt and kept.result.failure == rules.CANCELED_BY_USER
    assert rules.attach_cancel_receipt(kept, b"{}") == kept  # the first one counts
    assert rules.attach_cancel_receipt(running_task(), receipt) == running_task()  # only for a Canceled task
    with pytest.raises(InvalidArgument, match=f"a canceled run's receipt must be 1 to {MAX_RECEIPT_BYTES} bytes"):
        rules.attach_cancel_receipt(canceled, b"")


# --- the node's signing glue ------------------------------------------------------------


def test_the_node_signs_the_result_exactly_as_the_scheduler_keeps_it(home: AttestedHome, now: float) -> None:
    """A reason with a lone surrogate and over 1 KiB is signed as stored: valid UTF-8, cut to 1 KiB."""
    signer = ReceiptSigner(lambda: home.identity("execution", now), NODE_ID)
    start = datetime.fromtimestamp(now + 1, UTC)
    sent = signer.attach(staged_task(), 1, TaskResult(failure="\ud800" + "x" * 2000), start, start)
    kept, _ = rules.apply_result(running_task(), sent)
    assert kept.result.failure == sent.failure and len((sent.failure or "").encode()) == 1024
    expected = ExpectedResult(TASK_ID, Outcome.FAILED, result_digest(Outcome.FAILED, reason=kept.result.failure))
    verify_receipt(kept.result.receipt, home.verifier(now + 60), expected)


def test_a_receipt_too_large_to_be_kept_is_not_sent(home: AttestedHome, now: float) -> None:
    crowd = tuple(Approval(f"user{i:05}", TASK_DIGEST, 1_800_000_000) for i in range(8000))
    signer = ReceiptSigner(lambda: home.identity("execution", now), NODE_ID)
    start = datetime.fromtimestamp(now + 1, UTC)
    sent = signer.attach(replace(staged_task(), approvals=crowd), 1, OK, start, start)
    assert sent.receipt == b"" and sent.outputs == OK.outputs
