"""The scheduler's rules: who runs a task, what each report does to it, and when a node is lost.

Pure functions over :class:`~kettle.model.records.TaskRecord` and the stored
:class:`Lease`; the scheduler service only reads records, applies these, and writes
back with compare-and-put. Keeping them here means every transition is tested
without sockets (``tests/test_scheduling_model.py``).

Where Kettle deliberately differs from the reference (``spec/platform.md`` §12):

- a result carrying ``Err`` ends the task **Failed** with the reason, not Finished
  (row 1 / DESIGN.md §6);
- a node that stops heartbeating loses its *lease*: the task is re-queued, up to
  ``max_attempts`` runs in total, then it ends Failed with a reason saying how
  often its node was lost (Teaclave fails it at once, and a task it had already
  moved into memory could stay Staged forever, row 15);
- a malformed result is refused before anything is written (row 12).

A **lease** says "executor E runs attempt N of task T". It is created when T is
handed to E, renewed by E's heartbeats that name T (and by E's status report), and
ends when T ends or E is declared lost. Only a heartbeat that names
the task renews it: a node that lost the PullTask answer and sits idle does not
keep a task alive that it never started.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass, replace
from enum import Enum

import grpc

from ..errors import InvalidArgument, KettleError
from .receipts import MAX_RECEIPT_BYTES
from .records import FileRecord, TaskOutputs, TaskRecord, TaskResult, TaskStatus, truncate_reason

LEASE_PREFIX = b"scheduler-lease-"
EXECUTOR_TASK_PREFIX = b"scheduler-executor-"
CANCELED_BY_USER = "Task Canceled by the user"
"""DESIGN.md §6: a failure reason is at most 1 KiB (UTF-8), so a runaway message cannot bloat records."""
TAG_BYTES = 16
MAX_SANDBOX_LAYERS = 16
MAX_LAYER_NAME_CHARS = 64
"""A node names its sandbox's layers in each result; bounded like every field a record keeps."""


class NotAssigned(KettleError):
    """The reporting executor does not hold the task (any more): it must drop it."""

    code = grpc.StatusCode.FAILED_PRECONDITION


def lease_key(task_id: str) -> bytes:
    return LEASE_PREFIX + task_id.encode()


def executor_task_key(executor_id: str) -> bytes:
    """The task last handed to an executor, written with its lease: how any scheduler
    finds the lease of an executor that asks for work again (only a hint: the lease
    itself says whether the executor still holds the task)."""
    return EXECUTOR_TASK_PREFIX + executor_id.encode()


def is_uuid(text: str) -> bool:
    """Bare, canonical (lower-case, hyphenated) UUID text: what executor ids and bare task
    ids are. Canonical only, because the id becomes part of a storage key."""
    try:
        return str(uuid.UUID(text)) == text
    except (ValueError, AttributeError, TypeError):
        return False


def lost_reason(times: int) -> str:
    """The reason of a task whose nodes were all lost (the reference's text, plus the count)."""
    return f"Runtime Error: Executor Timeout (lost {times} time{'' if times == 1 else 's'})"


# --- leases --------------------------------------------------------------------------


class LeaseState(Enum):
    """Where a lease record is in its life. Only an ACTIVE lease lets a node run its task;
    the others are kept briefly so that whichever scheduler a node or a scan reaches next
    finishes what the state names (storage cannot delete a record on a condition, so a
    lease that ends is first rewritten conditionally, then removed)."""

    ACTIVE = "active"
    """The executor runs the attempt; it is lost at the deadline unless renewed."""
    CANCELED = "canceled"
    """The task ended Canceled while the executor ran it: the run's Canceled receipt is
    kept if it comes before the deadline, from whichever scheduler it reaches."""
    RELEASED = "released"
    """The executor was lost and the task went back to Staged; its staged task is being
    put back on the queue. Past the deadline, the scheduler that did so is presumed dead
    and a scan puts it on the queue (again, at worst: a duplicate item is dropped)."""
    REQUEUED = "requeued"
    """Back on the queue; the next hand-out overwrites this record."""
    ENDED = "ended"
    """The task ended; the record is removed right after."""


@dataclass(frozen=True)
class Lease:
    """Attempt ``attempt`` of ``task_id`` is held by ``executor_id``, until ``deadline_ms``.

    Stored as ``scheduler-lease-<task uuid>`` in the platform partition from the
    hand-out until the task ends or its node is lost; storage, not any scheduler's
    memory, says who runs what, so any scheduler replica can serve any node.
    ``staged_task`` is the queue item as management wrote it: the queue item itself
    is acknowledged at hand-out, so this copy is what goes back on the queue when the
    node is lost. ``deadline_ms`` is wall-clock time (ms since the epoch), compared by
    whichever scheduler looks: the hosts' clocks must agree to well under a lease
    (NTP gives milliseconds; a lease is seconds). A lease stored before deadlines
    existed reads as due at once; a starting scheduler gives it a grace period.
    """

    task_id: str
    executor_id: str
    attempt: int
    staged_task: bytes
    deadline_ms: int = 0
    state: LeaseState = LeaseState.ACTIVE

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "task_id": self.task_id,
                "executor_id": self.executor_id,
                "attempt": self.attempt,
                "staged_task": base64.b64encode(self.staged_task).decode(),
                "deadline_ms": self.deadline_ms,
                "state": self.state.value,
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Lease:
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict) or set(doc) not in (_LEASE_FIELDS, _LEASE_FIELDS_BEFORE_DEADLINES):
                raise ValueError("wrong fields")
            task_id, executor_id, attempt = doc["task_id"], doc["executor_id"], doc["attempt"]
            deadline_ms, state = doc.get("deadline_ms", 0), LeaseState(doc.get("state", LeaseState.ACTIVE.value))
            if not (isinstance(task_id, str) and isinstance(executor_id, str)):
                raise ValueError("ids must be strings")
            if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
                raise ValueError("attempt must be a positive integer")
            if isinstance(deadline_ms, bool) or not isinstance(deadline_ms, int) or deadline_ms < 0:
                raise ValueError("deadline_ms must be a non-negative integer")
            staged = base64.b64decode(doc["staged_task"], validate=True)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"malformed scheduler lease: {exc}") from None
        return cls(task_id, executor_id, attempt, staged, deadline_ms, state)

    def held_by(self, executor_id: str) -> bool:
        """Whether ``executor_id`` may run the task now (and report on it)."""
        return self.state is LeaseState.ACTIVE and self.executor_id == executor_id

    def renewed(self, now_ms: int, lease_ms: int) -> Lease:
        """Valid for a lease from ``now_ms`` (never shortened: a grace period stays)."""
        return replace(self, deadline_ms=max(self.deadline_ms, now_ms + lease_ms))

    def needs_renewal(self, now_ms: int, lease_ms: int) -> bool:
        """Whether a heartbeat must write a new deadline: only once ``RENEW_AFTER`` of the
        lease has passed since the last one, so a task running for a lease costs a few
        storage writes rather than one per heartbeat. The price: a lease runs out between
        ``1 - RENEW_AFTER`` of a lease and a lease after its node's last heartbeat."""
        return self.deadline_ms - now_ms < lease_ms * (1 - RENEW_AFTER)

    def ended(self, state: LeaseState, until_ms: int = 0) -> Lease:
        """The record the lease becomes when it stops being ACTIVE. Only a RELEASED lease
        keeps the staged task (it goes back on the queue); the others keep it small."""
        staged = self.staged_task if state is LeaseState.RELEASED else b""
        return replace(self, state=state, deadline_ms=until_ms, staged_task=staged)


_LEASE_FIELDS = frozenset({"task_id", "executor_id", "attempt", "staged_task", "deadline_ms", "state"})
_LEASE_FIELDS_BEFORE_DEADLINES = frozenset({"task_id", "executor_id", "attempt", "staged_task"})

RENEW_AFTER = 0.25
"""Fraction of a lease after which a heartbeat writes the lease's new deadline."""


class ScanAction(Enum):
    """What a scheduler's periodic scan of the stored leases does with one of them."""

    NOTHING = "nothing"
    EXTEND = "extend"
    """Give an ACTIVE lease the grace period (this scheduler just started, or storage was
    unreachable: nodes could not renew meanwhile)."""
    RELEASE = "release"
    """The executor was silent past the deadline: it is lost."""
    REQUEUE = "requeue"
    """A RELEASED lease whose scheduler did not finish re-queuing it in time."""
    FORGET = "forget"
    """Remove the record: an ENDED one, or a CANCELED one whose receipt never came."""
    CHECK_TASK = "check-task"
    """A REQUEUED lease: remove it if its task is over or gone (no hand-out will replace it)."""


def scan_action(lease: Lease, now_ms: int, *, grace_ms: int | None) -> ScanAction:
    """``grace_ms``: the grace period to give every ACTIVE lease in this scan, or None."""
    due = lease.deadline_ms <= now_ms
    if lease.state is LeaseState.ACTIVE:
        if grace_ms is not None:
            return ScanAction.EXTEND if lease.deadline_ms < now_ms + grace_ms else ScanAction.NOTHING
        return ScanAction.RELEASE if due else ScanAction.NOTHING
    if lease.state is LeaseState.ENDED or (lease.state is LeaseState.CANCELED and due):
        return ScanAction.FORGET
    if not due:
        return ScanAction.NOTHING
    return ScanAction.REQUEUE if lease.state is LeaseState.RELEASED else ScanAction.CHECK_TASK


# --- decisions -----------------------------------------------------------------------


class Admission(Enum):
    """What to do with a staged-task queue item when an executor asks for work."""

    RUN = "run"
    """Hand it to the executor."""
    DROP = "drop"
    """Acknowledge and forget it: the task is gone, already over, or held by a lease (a duplicate item)."""
    CANCEL = "cancel"
    """A cancel is pending: the task ends Canceled without running."""
    EXHAUSTED = "exhausted"
    """It already used every attempt (only after a crash at an unlucky moment): it ends Failed."""
    NOT_YET = "not-yet"
    """Management enqueued it but has not stored the Staged status yet: look again later."""


def admit(task: TaskRecord | None, *, lease: Lease | None, cancel_pending: bool, max_attempts: int) -> Admission:
    """``lease``: the stored lease of the task, read *after* the task (see the scheduler:
    a hand-out that lands between the two reads then shows in one or the other)."""
    if task is None or task.status.terminal or (lease is not None and lease.state is LeaseState.ACTIVE):
        return Admission.DROP
    if task.status not in (TaskStatus.STAGED, TaskStatus.RUNNING):
        return Admission.NOT_YET
    if cancel_pending:
        return Admission.CANCEL
    if task.attempts >= max_attempts:
        return Admission.EXHAUSTED
    return Admission.RUN


class HeartbeatAction(Enum):
    NOTHING = "nothing"
    """The node says it runs nothing: nothing to renew (see the module docstring)."""
    RENEW = "renew"
    CANCEL = "cancel"
    """The node runs a task whose cancel is pending: cancel it and answer Stop."""
    STOP = "stop"
    """The node runs a task it does not hold (lost and re-queued, canceled, finished): answer Stop."""


def on_heartbeat(
    lease: Lease | None, executor_id: str, task_id: str, *, executing: bool, cancel_pending: bool
) -> HeartbeatAction:
    """``lease`` is the stored lease of the task the heartbeat names (if any). A node whose
    run was canceled hears CANCEL again until its receipt comes (its first answer may be lost)."""
    if not executing or not task_id:
        return HeartbeatAction.NOTHING
    if lease is not None and lease.executor_id == executor_id and lease.state is LeaseState.CANCELED:
        return HeartbeatAction.CANCEL
    if lease is None or not lease.held_by(executor_id):
        return HeartbeatAction.STOP
    return HeartbeatAction.CANCEL if cancel_pending else HeartbeatAction.RENEW


class ResultAction(Enum):
    APPLY = "apply"
    """From the lease holder: the result ends the task."""
    KEEP_RECEIPT = "keep-receipt"
    """From the executor whose run was canceled: its Canceled receipt goes with the task."""
    DISCARD = "discard"
    """Canceled, re-queued after a lost node, or already recorded (a retry whose answer was
    lost): a late result is discarded, never applied."""


def on_result(lease: Lease | None, executor_id: str) -> ResultAction:
    if lease is not None and lease.held_by(executor_id):
        return ResultAction.APPLY
    if lease is not None and lease.executor_id == executor_id and lease.state is LeaseState.CANCELED:
        return ResultAction.KEEP_RECEIPT
    return ResultAction.DISCARD


def reissue_on_repull(task: TaskRecord | None) -> bool:
    """An executor that holds a lease asks for a task again. If it never confirmed the
    task (still Staged) it evidently lost the PullTask answer: give it the same attempt
    again rather than counting a lost node. If it had started it, it abandoned it."""
    return task is not None and task.status == TaskStatus.STAGED


# --- transitions ---------------------------------------------------------------------


def start_attempt(task: TaskRecord, attempt: int) -> TaskRecord:
    """The task is handed to a node as run number ``attempt`` (idempotent for the same number)."""
    if task.status not in (TaskStatus.STAGED, TaskStatus.RUNNING):
        raise NotAssigned(f"task is {task.status.name.lower()}, not staged")
    if task.attempts not in (attempt - 1, attempt):
        raise NotAssigned(f"task is at attempt {task.attempts}, not {attempt - 1}")
    return replace(task, status=TaskStatus.STAGED, attempts=attempt)


def begin_running(task: TaskRecord) -> TaskRecord:
    """UpdateTaskStatus from the lease holder: Staged → Running (the requested value is ignored, §7.3)."""
    if task.status == TaskStatus.RUNNING:
        return task
    if task.status != TaskStatus.STAGED:
        raise NotAssigned(f"task is {task.status.name.lower()}, not staged")
    return replace(task, status=TaskStatus.RUNNING)


def cancel(task: TaskRecord) -> TaskRecord:
    """A pending cancel is delivered (at hand-out, on a heartbeat, or when the node is lost)."""
    if task.status.terminal:
        return task
    return replace(task, status=TaskStatus.CANCELED, result=TaskResult(failure=CANCELED_BY_USER))


def attach_cancel_receipt(task: TaskRecord, receipt: bytes) -> TaskRecord:
    """The node that was running a task when it was canceled reports the run's receipt
    (outcome Canceled); it goes with the Canceled result. Only the first one counts."""
    if not receipt or len(receipt) > MAX_RECEIPT_BYTES:
        raise InvalidArgument(f"a canceled run's receipt must be 1 to {MAX_RECEIPT_BYTES} bytes")
    if task.status != TaskStatus.CANCELED or task.result.receipt:
        return task
    return replace(task, result=replace(task.result, receipt=receipt))


def executor_lost(task: TaskRecord, max_attempts: int) -> tuple[TaskRecord, bool]:
    """The node running the task is gone. Returns the new record and whether to re-queue it.

    ``task.attempts`` counts the runs handed out so far; each one that did not end
    the task ended by a lost node, so that is also how often a node was lost.
    """
    if task.status.terminal:
        return task, False
    if task.attempts >= max_attempts:
        failed = replace(task, status=TaskStatus.FAILED, result=TaskResult(failure=lost_reason(task.attempts)))
        return failed, False
    return replace(task, status=TaskStatus.STAGED, result=TaskResult()), True


def on_lost(task: TaskRecord, *, cancel_pending: bool, max_attempts: int) -> tuple[TaskRecord, bool]:
    """The lease holder is gone (silent, or asked for other work): the new record, and
    whether to re-queue it. A pending cancel is delivered instead of a re-run."""
    if cancel_pending:
        return cancel(task), False
    return executor_lost(task, max_attempts)


def apply_result(task: TaskRecord, result: TaskResult | None) -> tuple[TaskRecord, tuple[FileRecord, ...]]:
    """UpdateTaskResult from the lease holder. Everything is checked before anything changes.

    Returns the finished task and the output file records to overwrite (each
    assigned output's snapshot with its new cmac, ``spec/platform.md`` §7.3).
    ``Ok`` → Finished; ``Err`` → Failed (Kettle); present but empty → Finished,
    not ready (§7.3 step 4); absent → INVALID_ARGUMENT.
    """
    if result is None:
        raise InvalidArgument("task result is missing")
    if task.status not in (TaskStatus.STAGED, TaskStatus.RUNNING):
        raise NotAssigned(f"task is {task.status.name.lower()}, not running")
    layers = result.sandbox_layers
    if len(layers) > MAX_SANDBOX_LAYERS or not all(0 < len(name) <= MAX_LAYER_NAME_CHARS for name in layers):
        raise InvalidArgument(f"sandbox_layers must be at most {MAX_SANDBOX_LAYERS} names of 1 to "
                              f"{MAX_LAYER_NAME_CHARS} characters")
    if len(result.receipt) > MAX_RECEIPT_BYTES:
        raise InvalidArgument(f"the receipt must be at most {MAX_RECEIPT_BYTES} bytes")
    if result.outputs is not None:
        outputs = _tagged_outputs(task, result.outputs)
        assigned = dict(task.assigned_outputs)
        assigned.update({name: record for name, record in outputs})
        finished = replace(task, status=TaskStatus.FINISHED, result=result, assigned_outputs=assigned)
        return finished, tuple(record for _, record in outputs)
    if result.failure is not None:
        failed = TaskResult(failure=truncate_reason(result.failure), sandbox_layers=layers, receipt=result.receipt)
        return replace(task, status=TaskStatus.FAILED, result=failed), ()
    return replace(task, status=TaskStatus.FINISHED, result=TaskResult()), ()


def _tagged_outputs(task: TaskRecord, outputs: TaskOutputs) -> list[tuple[str, FileRecord]]:
    tags = outputs.tags_map
    for name in sorted(tags):
        if name not in task.assigned_outputs:
            raise InvalidArgument(f"tags_map names {name!r}, which is not an assigned output of the task")
        if task.assigned_outputs[name].cmac is not None:
            raise InvalidArgument(f"output {name!r} already has a tag")
        if len(tags[name]) != TAG_BYTES:
            raise InvalidArgument(f"the tag of output {name!r} is {len(tags[name])} bytes, not {TAG_BYTES}")
    missing = sorted(set(task.assigned_outputs) - set(tags))
    if missing:
        raise InvalidArgument(f"tags_map has no tag for the assigned output(s) {', '.join(map(repr, missing))}")
    return [(name, replace(task.assigned_outputs[name], cmac=tags[name])) for name in sorted(tags)]


def finished_outputs(task: TaskRecord) -> tuple[FileRecord, ...]:
    """The output records of a Finished task, each with its tag: committed in the same storage
    transaction as the task record (``docs/tasks.md``)."""
    if task.status != TaskStatus.FINISHED or task.result.outputs is None:
        return ()
    return tuple(task.assigned_outputs[n] for n in sorted(task.result.outputs.tags_map) if n in task.assigned_outputs)

