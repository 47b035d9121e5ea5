"""Consent bound to what runs, as pure rules (``docs/tasks.md`` "Consent", spec §12 row 21).

The digests are recomputed here from the documented encodings (not by calling the
code under test), so a change of encoding that the documentation does not follow
fails. Then: the pin and how a task follows an update of its function, approvals
bound to a digest (expected digest, expiry, revocation), InvokeTask's refusals, the
records' encodings, and the execution node's check of a staged task.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import grpc
import pytest
from conftest import fails_with

from kettle.model import consent as C
from kettle.model import functions as F
from kettle.model import tasks as T
from kettle.model.functions import Caller, UsageRecord
from kettle.model.records import (
    Approval,
    CryptoInfo,
    FileRecord,
    FunctionArgument,
    FunctionFile,
    FunctionRecord,
    StagedTask,
    TaskRecord,
    TaskStatus,
)
from kettle.model.users import Role

FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
NOW = 1_800_000_000
FN_UUID = "11111111-1111-4111-8111-111111111111"
TASK_UUID = "22222222-2222-4222-8222-222222222222"
IN_A = "33333333-3333-4333-8333-333333333333"
IN_B = "44444444-4444-4444-8444-444444444444"
ALICE = Caller("alice", Role.parse("DataOwner-bank"))
BOB = Caller("bob", Role.parse("DataOwner-bank"))
USAGE = UsageRecord(FN_UUID, 0)
LAPSED = "lapsed because the function changed since the task was created, after the approval was given"
PAYLOAD = b"def entrypoint(argv):\n    return 'rows'\n"


def sha(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def function(**changes: Any) -> FunctionRecord:
    base = FunctionRecord(
        uuid=FN_UUID, name="count-rows", description="counts rows", public=True, executor_type="python",
        payload=PAYLOAD, arguments=(FunctionArgument("mode", "fast", False), FunctionArgument("limit", "", True)),
        inputs=(FunctionFile("b"), FunctionFile("a")), outputs=(), owner="fo", user_allowlist=(), usage_quota=None,
    )
    return replace(base, **changes)


def file(bare: str, owner: str, url: str) -> FileRecord:
    return FileRecord(bare, url, CryptoInfo("aes-gcm-128", bytes(16), bytes(12)), (owner,), b"\x01" * 16)


def duo(fn: FunctionRecord | None = None) -> TaskRecord:
    """alice's task on alice's input a and bob's input b, data assigned, nobody approved yet."""
    definition = T.TaskDefinition('{"limit": 3}', "mesapy", (("a", ("alice",)), ("b", ("bob",))), ())
    task = T.create_task(fn or function(), ALICE, definition, TASK_UUID)
    a, b = file(IN_A, "alice", "https://files.example/a.enc"), file(IN_B, "bob", "https://files.example/b.enc")
    task = T.assign_data(task, ALICE, [("a", f"input-{IN_A}")], [], {IN_A: a})
    return T.assign_data(task, BOB, [("b", f"input-{IN_B}")], [], {IN_B: b})


def approved(task: TaskRecord, fn: FunctionRecord | None = None, **options: Any) -> TaskRecord:
    for who in (ALICE, BOB):
        task = T.approve_task(task, who, fn or function(), now=NOW, **options)
    return task


# --- the digests, recomputed from their documented encodings ---------------------------------------


def canonical(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def test_function_digest_is_the_documented_encoding() -> None:
    expected = canonical({
        "digest": "kettle-function-digest-v1", "name": "count-rows", "executor_type": "python",
        "payload_sha256": sha(PAYLOAD),
        "arguments": [{"key": "limit", "default_value": "", "allow_overwrite": True},
                      {"key": "mode", "default_value": "fast", "allow_overwrite": False}],
        "inputs": [{"name": "a", "optional": False}, {"name": "b", "optional": False}],
        "outputs": [],
    })
    assert F.function_manifest(function()) == expected
    assert F.function_digest(function()) == sha(expected)


@pytest.mark.parametrize(("change", "moves"), [
    ({"payload": PAYLOAD + b"# other code\n"}, True),
    ({"name": "count-rows-2"}, True),
    ({"executor_type": "wamr"}, True),
    ({"arguments": (FunctionArgument("mode", "slow", False), FunctionArgument("limit", "", True))}, True),
    ({"inputs": (FunctionFile("a"), FunctionFile("b", optional=True))}, True),
    ({"outputs": (FunctionFile("out"),)}, True),
    ({"description": "another text", "inputs": (FunctionFile("a", "new words"), FunctionFile("b"))}, False),
    ({"user_allowlist": ("bank",), "usage_quota": 3, "public": False, "disabled": True}, False),
])
def test_function_digest_covers_what_runs_and_only_that(change: dict[str, Any], moves: bool) -> None:
    assert (F.function_digest(function(**change)) != F.function_digest(function())) is moves


def test_task_digest_is_the_documented_encoding() -> None:
    task = duo()
    crypto = sha(canonical({"schema": "aes-gcm-128", "key": "00" * 16, "iv": "00" * 12}))

    def entry(bare: str, owner: str, url: str) -> dict[str, Any]:
        return {"owners": [owner], "file": {"data_id": f"input-{bare}", "url_sha256": sha(url),
                                            "crypto_info_sha256": crypto, "cmac": "01" * 16}}

    expected = canonical({
        "digest": "kettle-task-digest-v1", "task_id": f"task-{TASK_UUID}", "function_id": f"function-{FN_UUID}",
        "function_digest": F.function_digest(function()), "executor": "mesapy",
        "function_arguments": '{"limit":3,"mode":"fast"}', "participants": ["alice", "bob"],
        "inputs": {"a": entry(IN_A, "alice", "https://files.example/a.enc"),
                   "b": entry(IN_B, "bob", "https://files.example/b.enc")},
        "outputs": {},
    })
    assert C.task_manifest(task) == expected
    assert C.task_digest(task) == sha(expected)
    ownership = (("a", ("alice",)), ("b", ("bob",)))
    unassigned = T.create_task(function(), ALICE, T.TaskDefinition('{"limit": 3}', "mesapy", ownership), TASK_UUID)
    assert json.loads(C.task_manifest(unassigned))["inputs"]["a"] == {"owners": ["alice"], "file": None}


def test_an_output_entry_names_no_cmac_so_the_digest_survives_the_run() -> None:
    out = FileRecord("o", "s3://bucket/out", CryptoInfo("teaclave-file-128", bytes(16)), ("alice",))
    assert C.file_entry(("alice",), out, output=True) == C.file_entry(("alice",), replace(out, cmac=b"t" * 16),
                                                                      output=True)
    assert "cmac" not in C.file_entry(("alice",), out, output=True)["file"]


# --- the pin and updates of the function ------------------------------------------------------------


def test_create_task_pins_the_function_digest() -> None:
    assert duo().function_digest == F.function_digest(function())


def test_an_update_before_any_approval_is_followed() -> None:
    new = function(payload=b"def entrypoint(argv):\n    return 'v2'\n")
    task = T.follow_function(duo(), new)
    assert task.function_digest == F.function_digest(new) and task.lapsed == {}
    task = approved(task, new)
    assert task.status == TaskStatus.APPROVED
    assert T.invoke_task(task, ALICE, new, USAGE, NOW).status == TaskStatus.STAGED


def test_an_update_after_an_approval_voids_every_approval() -> None:
    task = T.approve_task(duo(), ALICE, function(), now=NOW)
    new = function(payload=b"def entrypoint(argv):\n    return 'leak'\n")
    followed = T.follow_function(task, new)
    assert (followed.approved_users, followed.status) == ((), TaskStatus.DATA_ASSIGNED)
    assert followed.function_digest == F.function_digest(new)
    assert followed.lapsed["alice"].startswith(LAPSED)
    followed = T.approve_task(followed, BOB, new, now=NOW)
    fails_with(lambda: T.invoke_task(followed, ALICE, new, USAGE, NOW), FAILED_PRECONDITION,
            f"alice's approval {LAPSED}")
    again = T.approve_task(followed, ALICE, new, now=NOW)
    assert again.lapsed == {} and T.invoke_task(again, ALICE, new, USAGE, NOW).status == TaskStatus.STAGED


def test_the_swap_attack_is_refused_at_invoke_even_when_the_task_did_not_follow() -> None:
    """Both owners approved; the code changes; InvokeTask sees another digest than the pin."""
    task = approved(duo())
    new = function(payload=b"def entrypoint(argv):\n    return 'leak'\n")
    fails_with(lambda: T.invoke_task(task, ALICE, new, USAGE, NOW), FAILED_PRECONDITION,
            "the function changed since the task was created", F.function_digest(new))
    fails_with(lambda: T.build_staged_task(task, new), FAILED_PRECONDITION, "the function changed")


def test_a_task_that_no_longer_fits_the_function_keeps_its_pin() -> None:
    task = T.approve_task(duo(), ALICE, function(), now=NOW)
    misfit = function(inputs=(FunctionFile("a"),))  # input b is gone
    assert T.follow_function(task, misfit) == task
    fails_with(lambda: T.approve_task(task, BOB, misfit, now=NOW), FAILED_PRECONDITION,
            "the function changed since the task was created", "no longer fits it", "create a new task")


def test_following_recomputes_arguments_and_participants() -> None:
    new = function(arguments=(FunctionArgument("mode", "thorough", False), FunctionArgument("limit", "", True)),
                   public=False, owner="fo")
    followed = T.follow_function(duo(), new)
    assert followed.function_arguments == '{"limit":3,"mode":"thorough"}'
    assert followed.participants == ("alice", "bob", "fo")  # the owner of a private function takes part


@pytest.mark.parametrize("status", [TaskStatus.STAGED, TaskStatus.RUNNING, TaskStatus.FINISHED, TaskStatus.CANCELED])
def test_an_invoked_task_never_follows(status: TaskStatus) -> None:
    task = replace(approved(duo()), status=status)
    assert T.follow_function(task, function(payload=b"other")) == task


# --- approvals ----------------------------------------------------------------------------------------


def test_an_approval_records_who_when_which_digest_and_expiry() -> None:
    task = T.approve_task(duo(), ALICE, function(), now=NOW, valid_for_secs=60)
    assert task.approvals == (Approval("alice", C.task_digest(task), NOW, NOW + 60),)
    renewed = T.approve_task(task, ALICE, function(), now=NOW + 10)
    assert renewed.approvals == (Approval("alice", C.task_digest(task), NOW + 10, None),)


def test_approving_with_the_wrong_expected_digest_records_nothing() -> None:
    task = duo()
    digest = C.task_digest(task)
    message = fails_with(lambda: T.approve_task(task, ALICE, function(), now=NOW, expect_digest="0" * 64),
                      FAILED_PRECONDITION, f"the task's digest is now {digest}", "nothing was approved")
    assert "0" * 64 in message
    assert T.approve_task(task, ALICE, function(), now=NOW, expect_digest=digest).approved_users == ("alice",)


@pytest.mark.parametrize("seconds", [-1, 10 * 366 * 24 * 3600 + 1])
def test_an_absurd_validity_is_refused(seconds: int) -> None:
    fails_with(lambda: T.approve_task(duo(), ALICE, function(), now=NOW, valid_for_secs=seconds),
            grpc.StatusCode.INVALID_ARGUMENT, "valid_for_secs")


def test_an_expired_approval_blocks_invoke_and_names_whose() -> None:
    task = T.approve_task(T.approve_task(duo(), ALICE, function(), now=NOW, valid_for_secs=60), BOB, function(),
                          now=NOW)
    assert T.invoke_task(task, ALICE, function(), USAGE, NOW + 59).status == TaskStatus.STAGED
    fails_with(lambda: T.invoke_task(task, ALICE, function(), USAGE, NOW + 60), FAILED_PRECONDITION,
            "alice's approval expired at 2027-01-15T08:01:00Z")


def test_a_revoked_approval_blocks_invoke_until_given_again() -> None:
    task = approved(duo())
    revoked = T.revoke_approval(task, BOB, NOW + 5)
    assert (revoked.approved_users, revoked.status) == (("alice",), TaskStatus.DATA_ASSIGNED)
    fails_with(lambda: T.invoke_task(revoked, ALICE, function(), USAGE, NOW), FAILED_PRECONDITION,
            "bob's approval was revoked at 2027-01-15T08:00:05Z")
    again = T.approve_task(revoked, BOB, function(), now=NOW + 6)
    assert T.invoke_task(again, ALICE, function(), USAGE, NOW).status == TaskStatus.STAGED


def test_revoking_needs_an_approval_and_a_task_not_yet_invoked() -> None:
    fails_with(lambda: T.revoke_approval(duo(), BOB, NOW), FAILED_PRECONDITION, "bob has no approval")
    fails_with(lambda: T.revoke_approval(approved(duo()), Caller("eve", Role.parse("DataOwner-x")), NOW),
            grpc.StatusCode.PERMISSION_DENIED)
    staged = T.invoke_task(approved(duo()), ALICE, function(), USAGE, NOW)
    fails_with(lambda: T.revoke_approval(staged, BOB, NOW), FAILED_PRECONDITION, "the task is staged",
            "only before the task is invoked")


def test_approvals_never_given_keep_the_reference_refusal() -> None:
    fails_with(lambda: T.invoke_task(duo(), ALICE, function(), USAGE, NOW), grpc.StatusCode.UNKNOWN)


def test_an_approval_on_another_digest_does_not_count() -> None:
    task = approved(duo())
    stale = replace(task, approvals=(replace(task.approvals[0], task_digest="f" * 64), task.approvals[1]))
    fails_with(lambda: T.invoke_task(stale, ALICE, function(), USAGE, NOW), FAILED_PRECONDITION,
            f"alice's approval covers task digest {'f' * 64}")


# --- records ---------------------------------------------------------------------------------------


def test_a_task_record_round_trips_its_consent() -> None:
    task = T.revoke_approval(approved(duo(), valid_for_secs=30), BOB, NOW)
    assert TaskRecord.from_bytes(task.to_bytes()) == task


def test_a_task_stored_before_digests_loads_with_its_old_approvals_lapsed() -> None:
    doc = json.loads(approved(duo()).to_bytes())
    for key in ("approvals", "function_digest", "lapsed"):
        del doc[key]
    doc["approved_users"] = ["alice", "bob"]
    legacy = TaskRecord.from_bytes(json.dumps(doc).encode())
    assert (legacy.approvals, legacy.function_digest, legacy.status) == ((), "", TaskStatus.DATA_ASSIGNED)
    fails_with(lambda: T.invoke_task(legacy, ALICE, function(), USAGE, NOW), FAILED_PRECONDITION,
            "the task was created before Kettle pinned functions to tasks")
    # approving again pins the function; each party must approve on the digest
    repinned = T.approve_task(legacy, ALICE, function(), now=NOW)
    assert repinned.function_digest == F.function_digest(function())
    fails_with(lambda: T.invoke_task(repinned, ALICE, function(), USAGE, NOW), FAILED_PRECONDITION,
            "bob's approval was given before approvals were bound to a task digest")


# --- the execution node's check ------------------------------------------------------------------------


def staged() -> StagedTask:
    return T.build_staged_task(T.invoke_task(approved(duo()), ALICE, function(), USAGE, NOW), function())


def test_a_staged_task_carries_what_the_consent_covered() -> None:
    task = approved(duo())
    s = staged()
    assert (s.task_id, s.function_digest, s.task_digest) == (TASK_UUID, task.function_digest, C.task_digest(task))
    assert s.approvals == task.approvals and {a.user_id for a in s.approvals} == {"alice", "bob"}
    assert C.staged_refusal(s) is None
    assert StagedTask.from_bytes(s.to_bytes()) == s


@pytest.mark.parametrize(("tamper", "reason"), [
    (lambda s: replace(s, function_payload=b"def entrypoint(argv):\n    return 'leak'\n"),
     "the function payload does not match the digest pinned when the task was created"),
    (lambda s: replace(s, function_name="other"),
     "the function name or executor type does not match the pinned function digest"),
    (lambda s: replace(s, function_manifest=s.function_manifest.replace("count-rows", "x")),
     "the function description does not match the pinned function digest"),
    (lambda s: replace(s, function_arguments='{"limit":99,"mode":"fast"}'),
     "the staged task is not the task its digest describes"),
    (lambda s: replace(s, input_data={**s.input_data, "a": replace(s.input_data["a"], url="https://evil/")}),
     "the staged task is not the task its digest describes"),
    (lambda s: replace(s, task_manifest=s.task_manifest.replace("mesapy", "wamr")),
     "the task description does not match the task digest"),
    (lambda s: replace(s, approvals=(replace(s.approvals[0], task_digest="0" * 64),)),
     "an approval of the staged task covers another task digest"),
    (lambda s: replace(s, function_digest="", task_digest=""), "the staged task carries no pinned digest"),
])
def test_the_node_refuses_a_staged_task_that_is_not_what_was_pinned(
    tamper: Callable[[StagedTask], StagedTask], reason: str
) -> None:
    assert C.staged_refusal(tamper(staged())) == reason


def test_a_staged_task_queued_before_pins_decodes_and_is_refused() -> None:
    doc = json.loads(staged().to_bytes())
    for key in ("function_digest", "function_manifest", "task_digest", "task_manifest", "approvals"):
        del doc[key]
    old = StagedTask.from_bytes(json.dumps(doc).encode())
    assert C.staged_refusal(old) == "the staged task carries no pinned digest"


# --- the CLI's parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900), ("12h", 43200), ("7d", 604800)])
def test_durations(text: str, seconds: int) -> None:
    from kettle.cli.tasks import parse_duration

    assert parse_duration(text, "--expires-in") == seconds


@pytest.mark.parametrize("text", ["0", "-5", "1.5h", "h", "", "5w", "١٢"])
def test_bad_durations(text: str) -> None:
    from kettle.cli.tasks import parse_duration

    with pytest.raises(ValueError, match="--expires-in must be a positive duration"):
        parse_duration(text, "--expires-in")
