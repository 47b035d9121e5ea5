"""Execution receipts: what an attested execution node ran and what came of it, signed.

When a task's run ends, the node that ran it signs a receipt with its attested
identity key (:mod:`kettle.attestation.signed`); the receipt travels with the
task's result to everyone who may read the task, and anyone can verify it
offline with only the AS root and the auditor-signed enclave info.

The file form is one JSON document::

    {"receipt": {...the body...}, "signature": {...an AttestedSignature...}}

The signed payload is the body's canonical encoding: compact JSON, keys sorted,
ASCII only (:func:`canonical`). The body holds:

========================  ===========================================================
``format``                ``kettle-receipt-v1``
``task_id``, ``attempt``  the task and which run of it (a lost node's task is re-run);
                          ids are the ones clients see (``task-…``, ``function-…``,
                          ``input-…``, ``output-…``)
``executor_id``           the execution node (its id for this process's life)
``outcome``               ``Finished`` (Ok), ``Failed`` (Err) or ``Canceled`` (stopped)
``task_digest``           what the approvals covered; ``function_digest``: the pinned
                          function (both empty when the staged task carried none)
``function_id``, ``function_name``, ``executor_type``, ``executor``
``payload_sha256``        SHA-256 of the payload bytes the node ran
``inputs``                name → ``{file_id, cmac}``: each input and the cmac checked
``outputs``               name → ``{file_id, tag}``: each output and the tag written
                          (``null`` when none was written: a failed or canceled run)
``approvals``             the approvals the task was invoked on: user, when, which
                          digest, until when
``started_at``, ``ended_at``  UTC, microseconds
``result_digest``         :func:`result_digest` of the outcome, return value or
                          reason, and output tags
``sandbox_layers``        the node's sandbox layers in force for user code
========================  ===========================================================

Byte values are lowercase hex. The checks here are pure; the node's signing glue
is :func:`sign_receipt`, verification is :func:`examine_receipt`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

from ..attestation.identity import Identity
from ..attestation.signed import (
    AttestedSignature,
    examine_signature,
    format_time,
    parse_time,
    sign,
)
from ..attestation.verifier import AttestedPeer, Check, Verifier
from ..errors import AttestationError
from .ids import Kind, external_id
from .records import StagedTask, TaskResult

RECEIPT_FORMAT = "kettle-receipt-v1"
RECEIPT_PURPOSE = "kettle execution receipt v1"
"""The purpose of a receipt signature: a node's key signs nothing else under it."""
SIGNER_SERVICE = "execution"
"""Only an attested execution node signs receipts: it is the one service that runs tasks."""
MAX_RECEIPT_BYTES = 1024 * 1024
"""A receipt is a few kilobytes (mostly the certificate chain) plus about 150 bytes per
file and per approval; a task at the limits of 256 inputs and 256 outputs stays far
below this. Anything larger is refused (and a node does not send one, see the node)."""

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX = re.compile(r"(?:[0-9a-f]{2})*")


class Outcome(str, Enum):
    FINISHED = "Finished"
    FAILED = "Failed"
    CANCELED = "Canceled"


def canonical(doc: Any) -> bytes:
    """One byte string per value: compact JSON, keys sorted, ASCII escapes."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def result_digest(outcome: Outcome, *, return_value: bytes | None = None, reason: str | None = None,
                  tags_map: Mapping[str, bytes] | None = None) -> str:
    """SHA-256 (hex) of the canonical result: outcome, return value (base64) or failure
    reason, and each output's tag (hex). The log is not covered: it is the function's
    chatter, kept only when asked for, and may be cut in transit."""
    doc = {
        "outcome": outcome.value,
        "return_value": None if return_value is None else base64.b64encode(return_value).decode(),
        "reason": reason,
        "tags_map": {name: tag.hex() for name, tag in sorted((tags_map or {}).items())},
    }
    return hashlib.sha256(canonical(doc)).hexdigest()


def digest_of_result(result: TaskResult, outcome: Outcome) -> str:
    if result.outputs is not None:
        return result_digest(outcome, return_value=result.outputs.return_value, tags_map=result.outputs.tags_map)
    return result_digest(outcome, reason=result.failure)


@dataclass(frozen=True)
class ReceiptApproval:
    user_id: str
    task_digest: str
    approved_at: int
    """Unix seconds."""
    expires_at: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "task_digest": self.task_digest, "approved_at": self.approved_at,
                "expires_at": self.expires_at}


@dataclass(frozen=True)
class ReceiptFile:
    file_id: str
    digest: str | None
    """Hex cmac of an input / tag of an output; None for an output nothing was written to."""


@dataclass(frozen=True)
class ReceiptBody:
    task_id: str
    attempt: int
    executor_id: str
    outcome: Outcome
    task_digest: str
    function_id: str
    function_digest: str
    function_name: str
    executor_type: str
    executor: str
    payload_sha256: str
    inputs: dict[str, ReceiptFile]
    outputs: dict[str, ReceiptFile]
    approvals: tuple[ReceiptApproval, ...]
    started_at: datetime
    ended_at: datetime
    result_digest: str
    sandbox_layers: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "format": RECEIPT_FORMAT,
            "task_id": self.task_id,
            "attempt": self.attempt,
            "executor_id": self.executor_id,
            "outcome": self.outcome.value,
            "task_digest": self.task_digest,
            "function_id": self.function_id,
            "function_digest": self.function_digest,
            "function_name": self.function_name,
            "executor_type": self.executor_type,
            "executor": self.executor,
            "payload_sha256": self.payload_sha256,
            "inputs": {n: {"file_id": f.file_id, "cmac": f.digest} for n, f in sorted(self.inputs.items())},
            "outputs": {n: {"file_id": f.file_id, "tag": f.digest} for n, f in sorted(self.outputs.items())},
            "approvals": [a.to_json() for a in self.approvals],
            "started_at": format_time(self.started_at),
            "ended_at": format_time(self.ended_at),
            "result_digest": self.result_digest,
            "sandbox_layers": list(self.sandbox_layers),
        }

    @classmethod
    def from_json(cls, doc: Any) -> ReceiptBody:
        """Strict: exactly the documented fields, each of its type; AttestationError naming the field."""
        names = {"format", "task_id", "attempt", "executor_id", "outcome", "task_digest", "function_id",
                 "function_digest", "function_name", "executor_type", "executor", "payload_sha256", "inputs",
                 "outputs", "approvals", "started_at", "ended_at", "result_digest", "sandbox_layers"}
        if not isinstance(doc, dict):
            raise AttestationError("receipt body must be a JSON object")
        if set(doc) != names:
            extra, missing = sorted(set(doc) - names), sorted(names - set(doc))
            raise AttestationError("receipt body has the wrong fields"
                                   + (f"; unknown: {', '.join(extra)}" if extra else "")
                                   + (f"; missing: {', '.join(missing)}" if missing else ""))
        if doc["format"] != RECEIPT_FORMAT:
            raise AttestationError(f"receipt format is {doc['format']!r}, not {RECEIPT_FORMAT!r}")
        try:
            outcome = Outcome(doc["outcome"])
        except ValueError:
            raise AttestationError("receipt outcome must be Finished, Failed or Canceled") from None
        started, ended = parse_time(doc["started_at"], "started_at"), parse_time(doc["ended_at"], "ended_at")
        if ended < started:
            raise AttestationError("receipt ends before it starts")
        attempt = doc["attempt"]
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
            raise AttestationError("receipt attempt must be a positive integer")
        layers = doc["sandbox_layers"]
        if not isinstance(layers, list) or not all(isinstance(x, str) for x in layers):
            raise AttestationError("receipt sandbox_layers must be a list of names")
        body = cls(
            task_id=_text(doc, "task_id"),
            attempt=attempt,
            executor_id=_text(doc, "executor_id"),
            outcome=outcome,
            task_digest=_digest(doc, "task_digest", empty=True),
            function_id=_text(doc, "function_id"),
            function_digest=_digest(doc, "function_digest", empty=True),
            function_name=_text(doc, "function_name"),
            executor_type=_text(doc, "executor_type"),
            executor=_text(doc, "executor"),
            payload_sha256=_digest(doc, "payload_sha256"),
            inputs=_files(doc["inputs"], "inputs", "cmac"),
            outputs=_files(doc["outputs"], "outputs", "tag"),
            approvals=_approvals(doc["approvals"]),
            started_at=started,
            ended_at=ended,
            result_digest=_digest(doc, "result_digest"),
            sandbox_layers=tuple(layers),
        )
        if outcome is not Outcome.FINISHED and any(f.digest is not None for f in body.outputs.values()):
            raise AttestationError(f"a {outcome.value} receipt names output tags")
        return body


def _text(doc: dict[str, Any], name: str) -> str:
    value = doc[name]
    if not isinstance(value, str):
        raise AttestationError(f"receipt {name} must be text")
    return value


def _digest(doc: dict[str, Any], name: str, *, empty: bool = False) -> str:
    value = doc[name]
    if not isinstance(value, str) or not (_HEX64.fullmatch(value) or (empty and value == "")):
        raise AttestationError(f"receipt {name} must be 64 lowercase hex characters" + (" or empty" if empty else ""))
    return value


def _files(value: Any, what: str, digest_name: str) -> dict[str, ReceiptFile]:
    if not isinstance(value, dict):
        raise AttestationError(f"receipt {what} must map names to files")
    files = {}
    for name, entry in value.items():
        if not isinstance(entry, dict) or set(entry) != {"file_id", digest_name} \
                or not isinstance(entry["file_id"], str):
            raise AttestationError(f"receipt {what}[{name!r}] must have file_id and {digest_name}")
        digest = entry[digest_name]
        if digest is not None and not (isinstance(digest, str) and digest and _HEX.fullmatch(digest)):
            raise AttestationError(f"receipt {what}[{name!r}].{digest_name} must be lowercase hex or null")
        files[name] = ReceiptFile(entry["file_id"], digest)
    return files


def _approvals(value: Any) -> tuple[ReceiptApproval, ...]:
    if not isinstance(value, list):
        raise AttestationError("receipt approvals must be a list")
    approvals = []
    for i, entry in enumerate(value):
        keys = {"user_id", "task_digest", "approved_at", "expires_at"}
        if not isinstance(entry, dict) or set(entry) != keys or not isinstance(entry["user_id"], str) \
                or not _is_time(entry["approved_at"]) \
                or not (entry["expires_at"] is None or _is_time(entry["expires_at"])):
            raise AttestationError(f"receipt approval {i} must have user_id, task_digest, approved_at and expires_at")
        approvals.append(ReceiptApproval(entry["user_id"], _digest(entry, "task_digest"), entry["approved_at"],
                                         entry["expires_at"]))
    return tuple(approvals)


def _is_time(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def outcome_of(result: TaskResult, *, canceled: bool = False) -> Outcome:
    if canceled:
        return Outcome.CANCELED
    return Outcome.FINISHED if result.outputs is not None else Outcome.FAILED


def build_receipt(
    staged: StagedTask,
    result: TaskResult,
    *,
    attempt: int,
    executor_id: str,
    started_at: datetime,
    ended_at: datetime,
    canceled: bool = False,
) -> ReceiptBody:
    """What the node states about one run of ``staged`` that ended in ``result``
    (as the node reports it: a canceled run's result is the cancel reason)."""
    outcome = outcome_of(result, canceled=canceled)
    tags = result.outputs.tags_map if result.outputs is not None and not canceled else {}
    return ReceiptBody(
        task_id=external_id(Kind.TASK, staged.task_id),
        attempt=attempt,
        executor_id=executor_id,
        outcome=outcome,
        task_digest=staged.task_digest,
        function_id=external_id(Kind.FUNCTION, staged.function_id),
        function_digest=staged.function_digest,
        function_name=staged.function_name,
        executor_type=staged.executor_type,
        executor=staged.executor,
        payload_sha256=hashlib.sha256(staged.function_payload).hexdigest(),
        inputs={n: ReceiptFile(external_id(Kind.INPUT, f.uuid), None if f.cmac is None else f.cmac.hex())
                for n, f in staged.input_data.items()},
        outputs={n: ReceiptFile(external_id(Kind.OUTPUT, f.uuid), tags[n].hex() if n in tags else None)
                 for n, f in staged.output_data.items()},
        approvals=tuple(ReceiptApproval(a.user_id, a.task_digest, a.approved_at, a.expires_at)
                        for a in sorted(staged.approvals, key=lambda a: a.user_id)),
        started_at=started_at,
        ended_at=ended_at,
        result_digest=digest_of_result(result, outcome),
        sandbox_layers=result.sandbox_layers,
    )


@dataclass(frozen=True)
class Receipt:
    body: ReceiptBody
    signature: AttestedSignature

    def to_bytes(self) -> bytes:
        return canonical({"receipt": self.body.to_json(), "signature": self.signature.to_json()})

    @classmethod
    def from_bytes(cls, data: bytes) -> Receipt:
        if len(data) > MAX_RECEIPT_BYTES:
            raise AttestationError(f"a receipt is at most {MAX_RECEIPT_BYTES} bytes; this is {len(data)}")
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise AttestationError("the receipt is not JSON") from None
        if not isinstance(doc, dict) or set(doc) != {"receipt", "signature"}:
            raise AttestationError("a receipt has exactly the fields receipt and signature")
        return cls(ReceiptBody.from_json(doc["receipt"]), AttestedSignature.from_json(doc["signature"]))


def sign_receipt(body: ReceiptBody, identity: Identity, *, now: datetime | None = None) -> Receipt:
    """The node's signing glue: sign the body's canonical bytes with its attested key."""
    return Receipt(body, sign(identity, RECEIPT_PURPOSE, canonical(body.to_json()), now=now))


@dataclass(frozen=True)
class ExpectedResult:
    """What a reader of the task saw, to hold the receipt against (all optional)."""

    task_id: str | None = None
    outcome: Outcome | None = None
    result_digest: str | None = None
    task_digest: str | None = None
    """What the task's approvals covered, as the platform shows it (GetTask)."""


@dataclass
class ReceiptVerdict:
    checks: list[Check] = field(default_factory=list)
    receipt: Receipt | None = None
    signer: AttestedPeer | None = None

    @property
    def ok(self) -> bool:
        return self.receipt is not None and self.signer is not None and all(c.ok for c in self.checks)

    @property
    def reason(self) -> str:
        failed = [c for c in self.checks if not c.ok]
        return failed[0].detail if failed else "verified"


def examine_receipt(data: bytes, verifier: Verifier, expected: ExpectedResult = ExpectedResult()) -> ReceiptVerdict:
    """Every check of a receipt file: its form, the execution node's attested signature as of
    the signing time, and (when given) that it is about the task and result the reader saw."""
    verdict = ReceiptVerdict()
    try:
        receipt = Receipt.from_bytes(data)
    except AttestationError as exc:
        verdict.checks.append(Check("receipt format", False, exc.reason))
        return verdict
    verdict.receipt = receipt
    body = receipt.body
    verdict.checks.append(Check("receipt format", True, f"{RECEIPT_FORMAT}: task {body.task_id}, {body.outcome.value}"))
    signed = examine_signature(receipt.signature, canonical(body.to_json()), purpose=RECEIPT_PURPOSE,
                               expected_service=SIGNER_SERVICE, verifier=verifier)
    verdict.checks.extend(signed.checks)
    verdict.signer = signed.signer
    if signed.signer is not None and not body.started_at <= body.ended_at <= receipt.signature.signed_at:
        verdict.checks.append(Check("times", False, "the run's times are not before the signing time"))
    if expected.task_id is not None:
        ok = body.task_id == expected.task_id
        verdict.checks.append(Check("task", ok, body.task_id if ok else
                                    f"the receipt is for task {body.task_id}, not {expected.task_id}"))
    if expected.task_digest is not None:
        ok = body.task_digest == expected.task_digest
        verdict.checks.append(Check("consent", ok, f"ran what the approvals covered ({body.task_digest})" if ok else
                                    f"the node ran task digest {body.task_digest or '(none)'}, "
                                    f"the task's approvals cover {expected.task_digest}"))
    if expected.outcome is not None:
        ok = body.outcome is expected.outcome
        verdict.checks.append(Check("outcome", ok, body.outcome.value if ok else
                                    f"the receipt says {body.outcome.value}, the task says {expected.outcome.value}"))
    if expected.result_digest is not None:
        ok = body.result_digest == expected.result_digest
        verdict.checks.append(Check("result", ok, "the result is the one the node signed" if ok else
                                    "the task's result is not the one the node signed"))
    return verdict


def verify_receipt(data: bytes, verifier: Verifier, expected: ExpectedResult = ExpectedResult()) -> Receipt:
    """The receipt, or AttestationError with the first failing reason."""
    verdict = examine_receipt(data, verifier, expected)
    if not verdict.ok:
        raise AttestationError(verdict.reason)
    assert verdict.receipt is not None
    return verdict.receipt
