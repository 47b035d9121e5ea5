"""The scheduler's rules: who runs a task, what each report does to it, and when a node is lost.

Pure functions over :class:`~kettle.model.records.TaskRecord` and an in-memory
lease table; the scheduler service only reads records, applies these, and writes
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
handed to E, renewed by E's heartbeats that name T (and by E's status and result
reports), and ends when T ends or E is declared lost. Only a heartbeat that names
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


@dataclass(frozen=True)
class Lease:
    """Attempt ``attempt`` of ``task_id`` is held by ``executor_id``.

    Stored as ``scheduler-lease-<task uuid>`` in the platform partition from the
    hand-out until the task ends or its node is lost, so a restarted scheduler
    knows who runs what. ``staged_task`` is the queue item as management wrote it:
    the queue item itself is acknowledged at hand-out, so this copy is what goes
    back on the queue when the node is lost. Heartbeat times are *not* stored
    (a write per heartbeat would be wasteful); a reloaded lease starts a fresh
    grace period instead.
    """

    task_id: str
    executor_id: str
    attempt: int
    staged_task: bytes

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "task_id": self.task_id,
                "executor_id": self.executor_id,
                "attempt": self.attempt,
                "staged_task": base64.b64encode(self.staged_task).decode(),
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Lease:
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict) or set(doc) != {"task_id", "executor_id", "attempt", "staged_task"}:
                raise ValueError("wrong fields")
            task_id, executor_id, attempt = doc["task_id"], doc["executor_id"], doc["attempt"]
            if not (isinstance(task_id, str) and isinstance(executor_id, str)):
                raise ValueError("ids must be strings")
            if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
                raise ValueError("attempt must be a positive integer")
            staged = base64.b64decode(doc["staged_task"], validate=True)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"malformed scheduler lease: {exc}") from None
        return cls(task_id, executor_id, attempt, staged)


class LeaseTable:
    """Which executor holds which task, and until when (monotonic seconds).

    The clock is passed in by the caller so expiry is testable without waiting.
    An executor runs one task at a time, so it holds at most one lease.
    """

    def __init__(self, lease_secs: float) -> None:
        if lease_secs <= 0:
            raise ValueError("lease_secs must be positive")
        self.lease_secs = lease_secs
        self._leases: dict[str, Lease] = {}
        self._deadlines: dict[str, float] = {}
        self._by_executor: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._leases)

    def add(self, lease: Lease, now: float, grace: float | None = None) -> None:
        """Record a lease, valid for ``grace`` seconds (default: one lease period) from ``now``."""
        old = self._leases.get(lease.task_id)
        if old is not None:
            self._by_executor.pop(old.executor_id, None)
        previous_task = self._by_executor.get(lease.executor_id)
        if previous_task is not None and previous_task != lease.task_id:
            self.remove(previous_task)
        self._leases[lease.task_id] = lease
        self._deadlines[lease.task_id] = now + (self.lease_secs if grace is None else grace)
        self._by_executor[lease.executor_id] = lease.task_id

    def get(self, task_id: str) -> Lease | None:
        return self._leases.get(task_id)

    def held_by(self, executor_id: str) -> Lease | None:
        task_id = self._by_executor.get(executor_id)
        return None if task_id is None else self._leases.get(task_id)

    def renew(self, task_id: str, executor_id: str, now: float) -> bool:
        """Extend the lease if ``executor_id`` holds it (never shortens a longer grace period)."""
        lease = self._leases.get(task_id)
        if lease is None or lease.executor_id != executor_id:
            return False
        self._deadlines[task_id] = max(self._deadlines[task_id], now + self.lease_secs)
        return True

    def remove(self, task_id: str) -> None:
        lease = self._leases.pop(task_id, None)
        self._deadlines.pop(task_id, None)
        if lease is not None and self._by_executor.get(lease.executor_id) == task_id:
            del self._by_executor[lease.executor_id]

    def is_expired(self, task_id: str, now: float) -> bool:
        deadline = self._deadlines.get(task_id)
        return deadline is not None and deadline <= now

    def expired(self, now: float) -> list[Lease]:
        due = sorted((deadline, task_id) for task_id, deadline in self._deadlines.items() if deadline <= now)
        return [self._leases[task_id] for _, task_id in due]

    def next_deadline(self) -> float | None:
        return min(self._deadlines.values(), default=None)


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


def admit(task: TaskRecord | None, *, leased: bool, cancel_pending: bool, max_attempts: int) -> Admission:
    if task is None or task.status.terminal or leased:
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
    """``lease`` is the current lease of the task the heartbeat names (if any)."""
    if not executing or not task_id:
        return HeartbeatAction.NOTHING
    if lease is None or lease.executor_id != executor_id:
        return HeartbeatAction.STOP
    return HeartbeatAction.CANCEL if cancel_pending else HeartbeatAction.RENEW


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


class CanceledRuns:
    """Which executor was running each task canceled lately (in memory, bounded): the one
    whose Canceled receipt is accepted after its lease ended. A scheduler restart in the
    moment between the cancel and the report loses that receipt (the task stays Canceled)."""

    LIMIT = 1024

    def __init__(self) -> None:
        self._runs: dict[str, str] = {}

    def add(self, task_id: str, executor_id: str) -> None:
        self._runs.pop(task_id, None)
        self._runs[task_id] = executor_id
        while len(self._runs) > self.LIMIT:
            del self._runs[next(iter(self._runs))]

    def take(self, task_id: str, executor_id: str) -> bool:
        """True once, for the executor that was running ``task_id`` when it was canceled."""
        if self._runs.get(task_id) != executor_id:
            return False
        del self._runs[task_id]
        return True


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

