"""Verifying execution receipts offline (``docs/receipts.md``).

A receipt is checked with nothing but what a client already trusts, the AS root
and the auditor-signed enclave info (:class:`~kettle.sdk.attested.ClientTrust`):
no platform call is made. Given the :class:`~kettle.sdk.frontend.TaskInfo` the
platform returned, the receipt is also held against it: same task, the task digest
its approvals cover, same outcome, and the result (return value or reason, and
output tags) the node signed.
"""

from __future__ import annotations

from ..errors import AttestationError
from ..model.receipts import (
    ExpectedResult,
    Outcome,
    Receipt,
    ReceiptVerdict,
    examine_receipt as _examine,
    result_digest,
)
from ..model.records import TaskStatus
from .attested import ClientTrust
from .frontend import TaskFailure, TaskInfo, TaskOutputs


def expected_from_task(task: TaskInfo) -> ExpectedResult:
    """What a receipt for ``task``'s run must say, as the platform reports the task."""
    result = task.result
    if isinstance(result, TaskOutputs):
        outcome = Outcome.FINISHED
        digest = result_digest(outcome, return_value=result.return_value, tags_map=result.tags_map)
    elif isinstance(result, TaskFailure):
        outcome = Outcome.CANCELED if task.status is TaskStatus.CANCELED else Outcome.FAILED
        digest = result_digest(outcome, reason=result.reason)
    else:
        return ExpectedResult(task_id=task.task_id, task_digest=task.task_digest or None)
    return ExpectedResult(task_id=task.task_id, outcome=outcome, result_digest=digest,
                          task_digest=task.task_digest or None)


def examine_receipt(receipt: bytes, trust: ClientTrust | None = None, *, task: TaskInfo | None = None) -> ReceiptVerdict:
    """Every check of ``receipt`` with its reason (``verdict.ok``, ``verdict.reason``);
    ``trust`` defaults to the trust files of the Kettle home (``ClientTrust.from_config``)."""
    trust = trust or ClientTrust.from_config()
    return _examine(receipt, trust.verifier, expected_from_task(task) if task is not None else ExpectedResult())


def verify_receipt(receipt: bytes, trust: ClientTrust | None = None, *, task: TaskInfo | None = None) -> Receipt:
    """The verified receipt, or :class:`~kettle.errors.AttestationError` with the first failing reason.

    ``receipt`` is the bytes of a receipt file or :attr:`TaskInfo.receipt`; with
    ``task`` the receipt must also be about that task and its result.
    """
    if task is not None and not receipt:
        raise AttestationError(f"task {task.task_id} has no receipt: no execution node ran it")
    verdict = examine_receipt(receipt, trust, task=task)
    if not verdict.ok:
        raise AttestationError(verdict.reason)
    assert verdict.receipt is not None
    return verdict.receipt
