"""The scheduler's work, between the RPC adapter and the storage service.

State that matters survives a restart because it lives in storage:

- **The queue.** Management enqueues staged tasks on ``staged-task`` and rewrites
  ``staged-task-signal``. PullTask takes an item under a short storage lease,
  records the hand-out, and only then acknowledges the item. A crash before the
  acknowledgement makes the item visible again; the redelivery then finds the
  lease (or the finished task) and is dropped as a duplicate, so an item is
  never run twice and never lost.
- **Leases** (``scheduler-lease-<task uuid>``): who runs which attempt, with the
  staged task, from hand-out until the task ends or its node is lost. We ack the
  queue item at hand-out and keep the staged task in the lease (rather than
  holding the item unacked while the task runs) because the storage queue cannot
  extend or give back a lease early: a task whose node died would otherwise wait
  out the item's whole storage lease, and a long task would be handed out twice.
  A lost node's task goes back on the queue from the lease's copy.
- **Attempts** are counted in the task record (``TaskRecord.attempts``), so the
  bound on re-runs holds across restarts.

Heartbeat times are only in memory; leases reloaded at start get a fresh grace
period. Every change of a task record is a compare-and-put of a pure transition
from :mod:`kettle.model.scheduling`, and every operation on one task holds that
task's lock, so a heartbeat, a result and an expiry for the same task never
interleave. A duplicate result cannot be applied: only the lease holder's result
counts, applying it ends the task (terminal) and removes the lease, and a
late or repeated report is discarded.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from ...errors import InvalidArgument
from ...model import scheduling as rules
from ...model import trail as trail_rules
from ...model.records import (
    STAGED_SIGNAL_KEY,
    STAGED_TASK_QUEUE,
    StagedTask,
    TaskRecord,
    TaskResult,
    TaskStatus,
    cancel_request_key,
    output_key,
    task_key,
)
from ...model.scheduling import (
    Admission,
    HeartbeatAction,
    Lease,
    LeaseTable,
    NotAssigned,
)
from ..platform_store import NoChange, PlatformStore
from ..storage.backend import RecordWrite
from .settings import SchedulerSettings

log = logging.getLogger(__name__)

CLAIM_SECS = 15
"""Storage lease on a dequeued item while we record its hand-out (a crash makes it reappear after this)."""
MAX_WAIT_MS = 30_000
"""Longest PullTask long poll."""
NOT_YET_WAIT_MS = 2_000
"""How long a hand-out waits for management to store the Staged status it is about to write."""
MAX_NOT_YET_DELIVERIES = 20
"""An item whose task never becomes Staged is dropped after this many deliveries (management crashed)."""


SIGNAL_WATCH_MS = 30_000
"""One storage Watch of the queue's signal at most this long; then it is renewed."""
SIGNAL_RETRY_SECS = 0.5


class QueueDoorbell:
    """One watch of ``staged-task-signal`` for every PullTask waiting in this scheduler.

    Each waiting PullTask used to read the signal, try the queue and watch the
    signal itself, so every enqueue woke every waiting node and cost each of them
    three storage calls. Here one watcher rings once per change, and the ring
    wakes a single waiter; a waiter that took an item rings again (the queue may
    hold more), so items are taken one by one by as many waiters as there are
    items. A ring with nobody waiting is kept for the next PullTask, so no enqueue
    is missed between a look at the queue and the wait.
    """

    def __init__(self, store: PlatformStore) -> None:
        self._store = store
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._rung = True
        """A ring nobody took yet; true at start, when items may already be waiting."""

    def ring(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._rung = True

    async def wait(self, timeout: float) -> None:
        """Until a ring (or ``timeout`` seconds pass)."""
        if self._rung:
            self._rung = False
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except (TimeoutError, asyncio.CancelledError):
            if waiter.done() and not waiter.cancelled():
                self.ring()  # rung just as we gave up: pass it on, never drop it
            raise

    async def watch_forever(self) -> None:
        known: bytes | None = None
        fresh = True
        while True:
            try:
                if fresh:
                    known, fresh = await self._store.get(STAGED_SIGNAL_KEY), False
                current = await self._store.watch(STAGED_SIGNAL_KEY, known, SIGNAL_WATCH_MS)
                if current != known:
                    known = current
                    self.ring()
            except Exception as exc:  # noqa: BLE001 - storage trouble: waiters look at the queue themselves
                log.warning("cannot watch the staged-task signal (%s); retrying", exc)
                fresh = True
                self.ring()
                await asyncio.sleep(SIGNAL_RETRY_SECS)


@dataclass(frozen=True)
class HandOut:
    staged_task: bytes
    attempt: int


class KeyedLocks:
    """One asyncio lock per task id, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


def _check_uuid(text: str, what: str) -> str:
    if not rules.is_uuid(text):
        raise InvalidArgument(f"invalid {what}")
    return text


def _output_writes(task: TaskRecord) -> list[RecordWrite]:
    """The output file records a Finished task carries, as writes that go with it."""
    return [(output_key(record.uuid), record.to_bytes()) for record in rules.finished_outputs(task)]


def _ending_writes(task: TaskRecord) -> list[RecordWrite]:
    """What is written with a task record that ends: a Finished task's output records, the
    trail event of each party whose files it was given (``docs/trail.md``), and the
    removal of its lease and spent cancel request. Every task change of the scheduler
    goes through :meth:`Scheduler._update`, so a task's end is recorded in its parties'
    trails exactly once, in the same transaction."""
    if not task.status.terminal:
        return []
    events = trail_rules.task_ended_events(task, int(time.time() * 1000))
    return [*_output_writes(task), *trail_rules.pending_writes(events, uuid.uuid4().bytes),
            (cancel_request_key(task.uuid), None), (rules.lease_key(task.uuid), None)]


def _late_receipt_writes(task: TaskRecord) -> list[RecordWrite]:
    """A canceled run's receipt arrives after the task ended: it follows the task's end
    into its parties' trails, in the same transaction that keeps it."""
    events = trail_rules.late_receipt_events(task, int(time.time() * 1000))
    return trail_rules.pending_writes(events, uuid.uuid4().bytes)


def _change(transition: Callable[[TaskRecord], TaskRecord]) -> Callable[[TaskRecord], TaskRecord]:
    """Adapt a pure transition to ``PlatformStore.update_task``: no change means no write."""

    def change(task: TaskRecord) -> TaskRecord:
        updated = transition(task)
        if updated == task:
            raise NoChange
        return updated

    return change


class Scheduler:
    def __init__(
        self, store: PlatformStore, settings: SchedulerSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._store = store
        self._settings = settings
        self._clock = clock
        self._leases = LeaseTable(settings.lease_secs)
        self._canceled_runs = rules.CanceledRuns()
        self._locks = KeyedLocks()
        self._lease_added = asyncio.Event()
        self.doorbell = QueueDoorbell(store)

    # --- start-up and the expiry loop ------------------------------------------------

    async def load(self) -> None:
        """Reload the leases of a previous run, before serving any node."""
        now = self._clock()
        for key in await self._store.keys_with_prefix(rules.LEASE_PREFIX):
            raw = await self._store.get(key)
            if raw is None:
                continue
            try:
                lease = Lease.from_bytes(raw)
            except ValueError as exc:
                log.error("dropping unreadable lease record %r: %s", key, exc)
                await self._store.delete(key)
                continue
            task = await self._store.get_task(task_key(lease.task_id))
            if task is None or task.status.terminal:
                # Ended while we were stopping: finish the bookkeeping of that ending.
                if task is not None:
                    await self._repair_outputs(task)
                await self._close(lease)
                continue
            self._leases.add(lease, now, grace=self._settings.restart_grace_secs)
        if len(self._leases):
            log.info("reloaded %d lease(s); their nodes have %.0f s to heartbeat", len(self._leases),
                     self._settings.restart_grace_secs)

    async def expire_leases_forever(self) -> None:
        """Declare nodes lost when their lease runs out; wakes for the next deadline, not on a tick."""
        while True:
            self._lease_added.clear()  # before reading the deadline, so a lease added meanwhile wakes us
            deadline = self._leases.next_deadline()
            delay = self._settings.lease_secs if deadline is None else max(0.0, deadline - self._clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lease_added.wait(), timeout=delay + 0.05)
            for lease in self._leases.expired(self._clock()):
                try:
                    async with self._locks.hold(lease.task_id):
                        current = self._leases.get(lease.task_id)
                        if current is lease and self._leases.is_expired(lease.task_id, self._clock()):
                            log.warning("executor %s went silent running task %s (attempt %d)",
                                        lease.executor_id, lease.task_id, lease.attempt)
                            await self._release_lost(lease)
                except Exception:  # storage trouble: the lease stays expired and is retried
                    log.exception("could not release the lease of task %s; retrying", lease.task_id)
                    await asyncio.sleep(1.0)

    # --- PullTask ---------------------------------------------------------------------

    async def pull(self, executor_id: str, wait_ms: int) -> HandOut | None:
        _check_uuid(executor_id, "executor id")
        held = self._leases.held_by(executor_id)
        if held is not None:
            again = await self._repull(held, executor_id)
            if again is not None:
                return again
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(wait_ms, MAX_WAIT_MS) / 1000
        while True:
            item = await self._store.dequeue(STAGED_TASK_QUEUE, CLAIM_SECS)
            if item is not None:
                self.doorbell.ring()  # the queue may hold more: the next waiter looks
                # Once an item is taken, finish recording it even if the caller goes away.
                handed = await asyncio.shield(self._hand_out(item.item_id, item.value, item.deliveries, executor_id))
                if handed is not None:
                    return handed
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await self.doorbell.wait(remaining)

    async def _repull(self, held: Lease, executor_id: str) -> HandOut | None:
        async with self._locks.hold(held.task_id):
            if self._leases.get(held.task_id) is not held:
                return None
            task = await self._store.get_task(task_key(held.task_id))
            if rules.reissue_on_repull(task):
                log.info("executor %s asked again before starting task %s: same attempt %d",
                         executor_id, held.task_id, held.attempt)
                self._leases.renew(held.task_id, executor_id, self._clock())
                # The first hand-out may have died between the lease and the attempt count.
                await self._update(task_key(held.task_id), lambda t: rules.start_attempt(t, held.attempt))
                return HandOut(held.staged_task, held.attempt)
            log.warning("executor %s abandoned task %s (attempt %d)", executor_id, held.task_id, held.attempt)
            await self._release_lost(held)
            return None

    async def _hand_out(self, item_id: int, value: bytes, deliveries: int, executor_id: str) -> HandOut | None:
        try:
            staged = StagedTask.from_bytes(value)
        except ValueError as exc:
            log.error("dropping an unreadable staged-task item: %s", exc)
            await self._store.ack(STAGED_TASK_QUEUE, item_id)
            return None
        if not rules.is_uuid(staged.task_id):
            log.error("dropping a staged task with an invalid task id %r", staged.task_id[:64])
            await self._store.ack(STAGED_TASK_QUEUE, item_id)
            return None
        key = task_key(staged.task_id)
        async with self._locks.hold(staged.task_id):
            decision, task = await self._admit(staged.task_id)
            if decision is Admission.NOT_YET:
                raw = await self._store.get(key)
                if raw is not None:
                    await self._store.watch(key, raw, NOT_YET_WAIT_MS)
                decision, task = await self._admit(staged.task_id)
            if decision is Admission.NOT_YET:
                if deliveries < MAX_NOT_YET_DELIVERIES:
                    log.info("task %s is queued but not Staged yet; looking again later", staged.task_id)
                    return None  # unacked: the item reappears when its claim runs out
                log.error("task %s was queued but never became Staged; dropping the item", staged.task_id)
                decision = Admission.DROP
            if decision is Admission.DROP:
                await self._store.ack(STAGED_TASK_QUEUE, item_id)
                if task is not None and task.status.terminal:
                    # A redelivery after a crash mid-cancel: the request is spent.
                    await self._store.delete(cancel_request_key(staged.task_id))
                return None
            assert task is not None
            if decision is Admission.CANCEL:
                await self._update(key, rules.cancel)
                await self._store.ack(STAGED_TASK_QUEUE, item_id)
                await self._store.delete(cancel_request_key(staged.task_id))
                log.info("task %s canceled before it ran", staged.task_id)
                return None
            if decision is Admission.EXHAUSTED:
                max_attempts = self._settings.max_attempts
                await self._update(key, lambda t: rules.executor_lost(t, max_attempts)[0])
                await self._store.ack(STAGED_TASK_QUEUE, item_id)
                return None
            lease = Lease(staged.task_id, executor_id, task.attempts + 1, value)
            # Order matters for crash safety: the lease and the attempt together (a
            # redelivered item then counts as a duplicate), then the acknowledgement.
            lease_write = (rules.lease_key(lease.task_id), lease.to_bytes())
            _, wrote = await self._store.change_task(
                key, _change(lambda t: rules.start_attempt(t, lease.attempt)),
                also=lambda t: [lease_write, *_ending_writes(t)])
            if not wrote:  # the attempt was counted already (a repeated hand-out): the lease alone
                await self._store.put(*lease_write)
            await self._store.ack(STAGED_TASK_QUEUE, item_id)
            self._leases.add(lease, self._clock())
            self._lease_added.set()
            log.info("task %s handed to executor %s (attempt %d)", lease.task_id, executor_id, lease.attempt)
            return HandOut(value, lease.attempt)

    async def _admit(self, task_id: str) -> tuple[Admission, TaskRecord | None]:
        # Both read at once: the cancel request matters only for a live, unleased task, but
        # that is nearly every hand-out, and one round trip instead of two is the hand-out's latency.
        task, cancel_pending = await asyncio.gather(self._store.get_task(task_key(task_id)),
                                                    self._cancel_pending(task_id))
        leased = self._leases.get(task_id) is not None
        decision = rules.admit(task, leased=leased, cancel_pending=cancel_pending,
                               max_attempts=self._settings.max_attempts)
        return decision, task

    # --- Heartbeat, UpdateTaskStatus, UpdateTaskResult --------------------------------------

    async def heartbeat(self, executor_id: str, executing: bool, task_id: str) -> HeartbeatAction | None:
        """None, or why the node must stop the task it runs: STOP (not its task any more)
        or CANCEL (canceled: the node then reports the run's Canceled receipt)."""
        _check_uuid(executor_id, "executor id")
        if not executing or not task_id:
            return None
        _check_uuid(task_id, "task id")
        async with self._locks.hold(task_id):
            lease = self._leases.get(task_id)
            # Renew first, without storage: a storage outage must not make live nodes look lost.
            self._leases.renew(task_id, executor_id, self._clock())
            holder = lease is not None and lease.executor_id == executor_id
            pending = holder and await self._cancel_pending(task_id)
            action = rules.on_heartbeat(lease, executor_id, task_id, executing=executing, cancel_pending=pending)
            if action is HeartbeatAction.STOP:
                log.info("telling executor %s to stop task %s, which it does not hold", executor_id, task_id)
                return action
            if action is HeartbeatAction.CANCEL:
                assert lease is not None
                _, ended = await self._end(task_key(task_id), rules.cancel)
                await self._close(lease, deleted=ended)
                self._canceled_runs.add(task_id, executor_id)
                log.info("task %s canceled while running on executor %s", task_id, executor_id)
                return action
            return None

    async def update_status(self, executor_id: str, task_id: str) -> None:
        _check_uuid(executor_id, "executor id")
        _check_uuid(task_id, "task id")
        async with self._locks.hold(task_id):
            self._require_holder(task_id, executor_id)
            await self._update(task_key(task_id), rules.begin_running)

    async def update_result(self, executor_id: str, task_id: str, result: TaskResult | None) -> None:
        _check_uuid(executor_id, "executor id")
        _check_uuid(task_id, "task id")
        if result is None:
            raise InvalidArgument("task result is missing")
        async with self._locks.hold(task_id):
            lease = self._leases.get(task_id)
            if lease is None and self._canceled_runs.take(task_id, executor_id):
                # The run this executor stopped for a cancel: keep its Canceled receipt.
                await self._store.update_task(
                    task_key(task_id), _change(lambda t: rules.attach_cancel_receipt(t, result.receipt)),
                    also=_late_receipt_writes)
                log.info("kept the receipt of canceled task %s from executor %s", task_id, executor_id)
                return
            if lease is None or lease.executor_id != executor_id:
                # Canceled, re-queued after a lost node, or already recorded (a retry
                # whose answer was lost): a late result is discarded, never applied.
                log.info("discarding a result for task %s from executor %s, which does not hold it",
                         task_id, executor_id)
                return
            self._leases.renew(task_id, executor_id, self._clock())
            key = task_key(task_id)
            task = await self._store.get_task(key)
            if task is None or task.status.terminal:
                await self._close(lease)
                return
            rules.apply_result(task, result)  # refuse a malformed result before writing anything
            # One storage transaction: whoever sees the task ended sees every output
            # record with its new tag (and the reverse), never one without the other.
            finished, ended = await self._end(key, lambda t: rules.apply_result(t, result)[0])
            await self._close(lease, deleted=ended)
            log.info("task %s %s (attempt %d, executor %s)", task_id, finished.status.name, lease.attempt, executor_id)

    # --- helpers ------------------------------------------------------------------------

    async def _update(self, key: bytes, transition: Callable[[TaskRecord], TaskRecord]) -> TaskRecord:
        """Every task change of the scheduler: the pure transition under compare-and-put,
        with what an ending writes alongside (:func:`_ending_writes`)."""
        return (await self._end(key, transition))[0]

    async def _end(self, key: bytes, transition: Callable[[TaskRecord], TaskRecord]) -> tuple[TaskRecord, bool]:
        """As :meth:`_update`; also whether this change ended the task, so its lease and
        cancel request went with it (:meth:`_close` then has nothing left to delete)."""
        task, wrote = await self._store.change_task(key, _change(transition), also=_ending_writes)
        return task, wrote and task.status.terminal

    def _require_holder(self, task_id: str, executor_id: str) -> Lease:
        lease = self._leases.get(task_id)
        if lease is None or lease.executor_id != executor_id:
            raise NotAssigned("task is not assigned to this executor")
        self._leases.renew(task_id, executor_id, self._clock())
        return lease

    async def _cancel_pending(self, task_id: str) -> bool:
        return await self._store.get(cancel_request_key(task_id)) is not None

    async def _repair_outputs(self, task: TaskRecord) -> None:
        """Write a Finished task's output records again. Results are committed with their
        outputs in one step now; a database from a version that wrote the outputs after
        the task can hold a task whose outputs a crash left unwritten, and its lease."""
        for key, value in _output_writes(task):
            assert value is not None
            await self._store.put(key, value)

    async def _close(self, lease: Lease, *, deleted: bool = False) -> None:
        """Bookkeeping after a task ended: the spent cancel request, and the lease (unless
        ``deleted``: the write that ended the task removed both)."""
        if not deleted:
            await self._store.delete(cancel_request_key(lease.task_id))
            await self._store.delete(rules.lease_key(lease.task_id))
        if self._leases.get(lease.task_id) is lease:
            self._leases.remove(lease.task_id)

    async def _release_lost(self, lease: Lease) -> None:
        """The lease holder is gone (silent, or asked for other work): re-queue or fail the task.

        Called with the task's lock held. Order: task record, queue, lease — a crash
        in between leaves the lease, which expires again after the restart and
        repeats the (idempotent) steps; a duplicate queue item is dropped at hand-out.
        """
        key = task_key(lease.task_id)
        task = await self._store.get_task(key)
        if task is not None and not task.status.terminal:
            if await self._cancel_pending(lease.task_id):
                task = await self._update(key, rules.cancel)
                log.info("task %s canceled (its node was lost)", lease.task_id)
            else:
                max_attempts = self._settings.max_attempts
                task = await self._update(key, lambda t: rules.executor_lost(t, max_attempts)[0])
                if task.status == TaskStatus.STAGED:
                    await self._store.enqueue(STAGED_TASK_QUEUE, lease.staged_task, signal_key=STAGED_SIGNAL_KEY)
                    log.info("task %s re-queued after attempt %d", lease.task_id, lease.attempt)
                else:
                    log.warning("task %s %s: %s", lease.task_id, task.status.name, task.result.failure)
        await self._close(lease)
