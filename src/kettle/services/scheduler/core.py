"""The scheduler's work, between the RPC adapter and the storage service.

State that matters survives a restart because it lives in storage:

- **The queue.** Management enqueues staged tasks on ``staged-task`` and rewrites
  ``staged-task-signal``. PullTask takes an item under a short storage lease,
  records the hand-out, and only then acknowledges the item. A crash before the
  acknowledgement makes the item visible again; the redelivery then finds the
  lease (or the finished task) and is dropped as a duplicate, so an item is
  never run twice and never lost.
- **Leases** (``scheduler-lease-<task uuid>``): who runs which attempt, until
  when (a wall-clock deadline), with the staged task, from hand-out until the task
  ends or its node is lost. We ack the queue item at hand-out and keep the staged
  task in the lease (rather than holding the item unacked while the task runs)
  because the storage queue cannot extend or give back a lease early: a task whose
  node died would otherwise wait out the item's whole storage lease, and a long
  task would be handed out twice. A lost node's task goes back on the queue from
  the lease's copy.
- **Attempts** are counted in the task record (``TaskRecord.attempts``), so the
  bound on re-runs holds across restarts.

Nothing that decides anything lives in memory, so any number of schedulers can
serve one storage and a node's calls may reach any of them. The stored lease is
the authority, and compare-and-put is the arbiter:

- A **hand-out** reads the task, *then* its lease, and counts the attempt with a
  compare-and-put of the task it read, writing the lease in the same step. A
  hand-out by anyone else either shows in the lease it reads (an ACTIVE lease:
  the item is a duplicate) or changed the task since (the attempt is counted
  already: this one loses). So at most one lease of a task is ACTIVE.
- Everything done **under a lease** (a renewal, Running, a result, a cancel, a
  release) reads the lease, then the task, and compare-and-puts the lease it read,
  writing the task's new record (and the records that go with an end) in the same
  step. Two of them racing on one task: exactly one wins, the other reads again
  and decides again. While a lease is ACTIVE nothing else writes its task, so the
  task read after the lease is the current one. A lease that stops being ACTIVE is
  rewritten to what it became (:class:`~kettle.model.scheduling.LeaseState`),
  because storage deletes only unconditionally; whoever comes next finishes what
  that state names.
- Every scheduler **scans** the stored leases a few times per lease period: a
  node silent past its lease's deadline loses its task once, to the scan that
  wins the compare-and-put; only the winner re-queues it. Heartbeats write a new
  deadline only after a quarter of the lease has passed (``RENEW_AFTER``).
- A **starting scheduler**, and one whose scan could not reach storage, first
  gives every lease a grace period (``restart_grace_secs``): nodes could not renew
  meanwhile. This postpones, never hastens, declaring a node lost.
- A **canceled run's receipt** is kept whichever scheduler it reaches: the lease
  stays, CANCELED, until the receipt comes or the grace period passes.

Hosts' clocks must agree to well under a lease (deadlines are compared across
hosts). Every change of a task record is a pure transition from
:mod:`kettle.model.scheduling`. A duplicate result cannot be applied: only the
lease holder's result counts, and applying it ends the lease in the same step.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ...errors import InternalError, InvalidArgument, StorageError, StorageUnavailable
from ...model import scheduling as rules
from ...model import trail as trail_rules
from ...model.records import (
    STAGED_SIGNAL_KEY,
    STAGED_TASK_QUEUE,
    StagedTask,
    TaskRecord,
    TaskResult,
    cancel_request_key,
    output_key,
    task_key,
)
from ...model.scheduling import (
    Admission,
    HeartbeatAction,
    Lease,
    LeaseState,
    NotAssigned,
    ResultAction,
    ScanAction,
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


SCANS_PER_LEASE = 4
"""How often per lease period each scheduler looks at the stored leases."""
SCAN_CONCURRENCY = 8
"""Leases one scan looks at at once."""
MAX_LEASE_TRIES = 20
"""Compare-and-puts on one lease before giving up (each failed one means the lease just changed)."""


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
    removal of its spent cancel request. Every task end of the scheduler is one
    compare-and-put carrying these, so a task's end is recorded in its parties' trails
    exactly once, in the same transaction. (Its lease is the caller's: an end under a
    lease rewrites the lease in that same step.)"""
    if not task.status.terminal:
        return []
    events = trail_rules.task_ended_events(task, int(time.time() * 1000))
    return [*_output_writes(task), *trail_rules.pending_writes(events, uuid.uuid4().bytes),
            (cancel_request_key(task.uuid), None)]


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


def _busy(task_id: str) -> StorageError:
    return StorageError(f"the lease of task {task_id} is changing too often; try again")


class Scheduler:
    def __init__(
        self, store: PlatformStore, settings: SchedulerSettings, clock: Callable[[], float] = time.time
    ) -> None:
        self._store = store
        self._settings = settings
        self._clock = clock
        """Wall-clock seconds: lease deadlines are compared by every scheduler."""
        self._lease_ms = int(settings.lease_secs * 1000)
        self._grace_ms = int(settings.restart_grace_secs * 1000)
        self._grace_due = True
        """The next scan gives every lease the grace period (at start, and after storage trouble)."""
        self.doorbell = QueueDoorbell(store)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # --- start-up and the expiry scan ------------------------------------------------------

    async def load(self) -> None:
        """Before serving any node: give every stored lease the grace period, since its
        node could not renew it while no scheduler ran (nothing is kept in memory)."""
        await self._scan(grace=True)
        self._grace_due = False

    async def expire_leases_forever(self) -> None:
        """Scan the stored leases (every scheduler's) a few times per lease period."""
        while True:
            await asyncio.sleep(self._settings.lease_secs / SCANS_PER_LEASE)
            try:
                await self._scan(grace=self._grace_due)
                self._grace_due = False
            except StorageUnavailable as exc:
                # Nodes cannot renew either: the next scan that gets through gives them time first.
                log.warning("cannot scan the leases (%s); retrying", exc.message)
                self._grace_due = True
            except Exception:
                log.exception("the lease scan failed; retrying")

    async def _scan(self, *, grace: bool) -> None:
        """Look at every stored lease. Storage being unreachable is raised (the caller then
        gives the grace period next time); trouble with one lease is logged and the others
        are still looked at, so one bad record cannot keep every lost node's task waiting."""
        keys = await self._store.keys_with_prefix(rules.LEASE_PREFIX)
        limit = asyncio.Semaphore(SCAN_CONCURRENCY)
        unreachable: list[StorageUnavailable] = []

        async def look(key: bytes) -> None:
            async with limit:
                try:
                    await self._scan_one(key, grace=grace)
                except StorageUnavailable as exc:
                    unreachable.append(exc)
                except Exception:
                    log.exception("could not act on lease %r; looking again at the next scan", key)

        await asyncio.gather(*(look(key) for key in keys))
        if unreachable:
            raise unreachable[0]

    async def _scan_one(self, key: bytes, *, grace: bool) -> None:
        raw = await self._store.get(key)
        if raw is None:
            return
        try:
            lease = Lease.from_bytes(raw)
        except ValueError as exc:
            log.error("dropping unreadable lease record %r: %s", key, exc)
            await self._store.delete(key)
            return
        now = self._now_ms()
        action = rules.scan_action(lease, now, grace_ms=self._grace_ms if grace else None)
        if action is ScanAction.EXTEND:
            # A heartbeat that renewed it meanwhile wins; it renewed it anyway.
            await self._store.compare_and_put(key, raw, lease.renewed(now, self._grace_ms).to_bytes())
        elif action is ScanAction.RELEASE:
            await self._release(raw, lease, "went silent running")  # a renewal or another scan may win
        elif action is ScanAction.REQUEUE:
            # Its scheduler died between the release and the queue: take the job over, for a
            # lease period, so that one scan re-queues it (a duplicate item is dropped anyway).
            claimed = lease.ended(LeaseState.RELEASED, now + self._lease_ms)
            applied, _ = await self._store.compare_and_put(key, raw, claimed.to_bytes())
            if applied:
                log.warning("re-queuing task %s, which a scheduler released but did not re-queue", lease.task_id)
                await self._requeue(claimed)
        elif action is ScanAction.FORGET:
            await self._store.delete(key)
        elif action is ScanAction.CHECK_TASK:
            task = await self._store.get_task(task_key(lease.task_id))
            if task is None or task.status.terminal:
                await self._store.delete(key)

    # --- PullTask ---------------------------------------------------------------------

    async def pull(self, executor_id: str, wait_ms: int) -> HandOut | None:
        _check_uuid(executor_id, "executor id")
        held = await self._store.get(rules.executor_task_key(executor_id))
        if held is not None and rules.is_uuid(held.decode(errors="replace")):
            again = await self._repull(held.decode(), executor_id)
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

    async def _repull(self, task_id: str, executor_id: str) -> HandOut | None:
        """The executor asks for work while it holds a lease (whichever scheduler gave it)."""
        for _ in range(MAX_LEASE_TRIES):
            raw, lease = await self._read_lease(task_id)
            if raw is None or lease is None or not lease.held_by(executor_id):
                return None
            task = await self._store.get_task(task_key(task_id))
            if rules.reissue_on_repull(task):
                renewed = lease.renewed(self._now_ms(), self._lease_ms)
                if await self._swap_lease(task_id, raw, renewed):
                    log.info("executor %s asked again before starting task %s: same attempt %d",
                             executor_id, task_id, lease.attempt)
                    return HandOut(lease.staged_task, lease.attempt)
                continue
            if await self._release(raw, lease, "abandoned"):
                return None
        raise _busy(task_id)

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
            if await self._end_unleased(task, rules.cancel):
                log.info("task %s canceled before it ran", staged.task_id)
            await self._store.ack(STAGED_TASK_QUEUE, item_id)
            return None
        if decision is Admission.EXHAUSTED:
            max_attempts = self._settings.max_attempts
            await self._end_unleased(task, lambda t: rules.executor_lost(t, max_attempts)[0])
            await self._store.ack(STAGED_TASK_QUEUE, item_id)
            return None
        lease = Lease(staged.task_id, executor_id, task.attempts + 1, value, self._now_ms() + self._lease_ms)
        # Order matters for crash safety: the lease and the attempt together (a
        # redelivered item then counts as a duplicate), then the acknowledgement.
        writes = [(rules.lease_key(lease.task_id), lease.to_bytes()),
                  (rules.executor_task_key(executor_id), lease.task_id.encode())]
        try:
            _, won = await self._store.change_task(
                key, _change(lambda t: rules.start_attempt(t, lease.attempt)), also=lambda _: writes)
        except NotAssigned:
            won = False  # it ended, or moved on by more than one attempt, since we read it
        await self._store.ack(STAGED_TASK_QUEUE, item_id)
        if not won:
            # Attempt `lease.attempt` was counted by a hand-out of another (duplicate) item,
            # which wrote its own lease: this item is spent.
            log.info("task %s was handed out from another queue item meanwhile; dropping this one", lease.task_id)
            return None
        log.info("task %s handed to executor %s (attempt %d)", lease.task_id, executor_id, lease.attempt)
        return HandOut(value, lease.attempt)

    async def _admit(self, task_id: str) -> tuple[Admission, TaskRecord | None]:
        # The task and its cancel request at once (one round trip instead of two is the
        # hand-out's latency); the lease strictly after the task (see the module docstring).
        task, cancel_pending = await asyncio.gather(self._store.get_task(task_key(task_id)),
                                                    self._cancel_pending(task_id))
        _, lease = await self._read_lease(task_id)
        decision = rules.admit(task, lease=lease, cancel_pending=cancel_pending,
                               max_attempts=self._settings.max_attempts)
        return decision, task

    async def _end_unleased(self, read: TaskRecord, transition: Callable[[TaskRecord], TaskRecord]) -> bool:
        """End a task that had no ACTIVE lease when read, unless a hand-out (of a duplicate
        item) counted an attempt since: that run's lease decides its fate then. Whatever is
        left of an earlier lease (re-queued) goes in the same step. Whether it ended it."""

        def unless_handed_out(task: TaskRecord) -> TaskRecord:
            if task.attempts != read.attempts:
                raise NoChange
            return transition(task)

        _, wrote = await self._store.change_task(
            task_key(read.uuid), _change(unless_handed_out),
            also=lambda t: [*_ending_writes(t), (rules.lease_key(read.uuid), None)])
        return wrote

    # --- Heartbeat, UpdateTaskStatus, UpdateTaskResult --------------------------------------

    async def heartbeat(self, executor_id: str, executing: bool, task_id: str) -> HeartbeatAction | None:
        """None, or why the node must stop the task it runs: STOP (not its task any more)
        or CANCEL (canceled: the node then reports the run's Canceled receipt)."""
        _check_uuid(executor_id, "executor id")
        if not executing or not task_id:
            return None
        _check_uuid(task_id, "task id")
        for _ in range(MAX_LEASE_TRIES):
            # Both at once: the cancel request matters only to the holder, but that is nearly every
            # heartbeat, and one round trip instead of two is what a heartbeat costs.
            (raw, lease), pending = await asyncio.gather(self._read_lease(task_id), self._cancel_pending(task_id))
            action = rules.on_heartbeat(lease, executor_id, task_id, executing=executing, cancel_pending=pending)
            if action is HeartbeatAction.STOP:
                log.info("telling executor %s to stop task %s, which it does not hold", executor_id, task_id)
                return action
            assert raw is not None and lease is not None
            if lease.state is LeaseState.CANCELED:
                return action  # told again: the first answer may have been lost
            if action is HeartbeatAction.RENEW:
                now = self._now_ms()
                if not lease.needs_renewal(now, self._lease_ms):
                    return None
                if await self._swap_lease(task_id, raw, lease.renewed(now, self._lease_ms)):
                    return None
                continue
            task = await self._store.get_task(task_key(task_id))
            if task is None or task.status.terminal:
                await self._end_lease(raw, lease, None, LeaseState.ENDED)
                continue  # then: not its task any more
            # The lease stays, CANCELED, for the run's receipt (which may reach another scheduler).
            receipt_until = self._now_ms() + self._grace_ms
            if await self._end_lease(raw, lease, rules.cancel(task), LeaseState.CANCELED, receipt_until):
                log.info("task %s canceled while running on executor %s", task_id, executor_id)
                return action
        raise _busy(task_id)

    async def update_status(self, executor_id: str, task_id: str) -> None:
        _check_uuid(executor_id, "executor id")
        _check_uuid(task_id, "task id")
        for _ in range(MAX_LEASE_TRIES):
            raw, lease = await self._read_lease(task_id)
            if raw is None or lease is None or not lease.held_by(executor_id):
                raise NotAssigned("task is not assigned to this executor")
            task = await self._require_task(task_id)
            running = rules.begin_running(task)
            now = self._now_ms()
            if running == task and not lease.needs_renewal(now, self._lease_ms):
                return
            also = [] if running == task else [(task_key(task_id), running.to_bytes())]
            if await self._swap_lease(task_id, raw, lease.renewed(now, self._lease_ms), also):
                return
        raise _busy(task_id)

    async def update_result(self, executor_id: str, task_id: str, result: TaskResult | None) -> None:
        _check_uuid(executor_id, "executor id")
        _check_uuid(task_id, "task id")
        if result is None:
            raise InvalidArgument("task result is missing")
        key = task_key(task_id)
        for _ in range(MAX_LEASE_TRIES):
            raw, lease = await self._read_lease(task_id)
            action = rules.on_result(lease, executor_id)
            if action is ResultAction.DISCARD:
                log.info("discarding a result for task %s from executor %s, which does not hold it",
                         task_id, executor_id)
                return
            assert raw is not None and lease is not None
            if action is ResultAction.KEEP_RECEIPT:
                # The run this executor stopped for a cancel: keep its Canceled receipt (the first one).
                await self._store.update_task(
                    key, _change(lambda t: rules.attach_cancel_receipt(t, result.receipt)), also=_late_receipt_writes)
                await self._store.delete(rules.lease_key(task_id))  # the task is over: no lease can follow
                log.info("kept the receipt of canceled task %s from executor %s", task_id, executor_id)
                return
            task = await self._require_task(task_id)
            if task.status.terminal:
                await self._end_lease(raw, lease, None, LeaseState.ENDED)
                return
            finished, _ = rules.apply_result(task, result)  # refuse a malformed result before writing anything
            # One storage transaction: whoever sees the task ended sees every output
            # record with its new tag (and the reverse), never one without the other.
            if await self._end_lease(raw, lease, finished, LeaseState.ENDED):
                log.info("task %s %s (attempt %d, executor %s)",
                         task_id, finished.status.name, lease.attempt, executor_id)
                return
        raise _busy(task_id)

    # --- helpers ------------------------------------------------------------------------

    async def _read_lease(self, task_id: str) -> tuple[bytes | None, Lease | None]:
        raw = await self._store.get(rules.lease_key(task_id))
        if raw is None:
            return None, None
        try:
            return raw, Lease.from_bytes(raw)
        except ValueError as exc:
            # Never read as "no lease": that could hand the task out a second time. The scan removes it.
            log.error("unreadable lease record of task %s: %s", task_id, exc)
            raise InternalError("service internal error") from None

    async def _swap_lease(
        self, task_id: str, expected: bytes, lease: Lease, also: Sequence[RecordWrite] = ()
    ) -> bool:
        """Write ``lease`` (and ``also`` with it) if the stored lease is still ``expected``."""
        applied, _ = await self._store.compare_and_put(rules.lease_key(task_id), expected, lease.to_bytes(), also)
        return applied

    async def _end_lease(
        self, raw: bytes, lease: Lease, task: TaskRecord | None, state: LeaseState, until_ms: int = 0
    ) -> Lease | None:
        """In one step, if the stored lease is still ``raw``: the lease becomes ``state``,
        the task its new record ``task`` (with what goes with an end), and the executor's
        hint goes. An ENDED lease is then removed. The new lease, or None if it changed."""
        ended = lease.ended(state, until_ms)
        also: list[RecordWrite] = [(rules.executor_task_key(lease.executor_id), None)]
        if task is not None:
            # The task last: a trigger-level reader sees outputs tagged before the task ends.
            also += [*_ending_writes(task), (task_key(lease.task_id), task.to_bytes())]
        if not await self._swap_lease(lease.task_id, raw, ended, also):
            return None
        if state is LeaseState.ENDED:
            await self._store.delete(rules.lease_key(lease.task_id))  # the task is over: no lease can follow
        return ended

    async def _release(self, raw: bytes, lease: Lease, why: str) -> bool:
        """The lease holder is gone (``why``: silent, or asked for other work): re-queue or
        end the task, if the lease is still ``raw``. Whether this call did it (then it logs).

        Order: the lease (RELEASED) with the task record, then the queue, then the lease
        (REQUEUED). A crash in between leaves a RELEASED lease, which a scan re-queues
        once it is a lease period old; a duplicate queue item is dropped at hand-out.
        """
        task, pending = await asyncio.gather(self._store.get_task(task_key(lease.task_id)),
                                             self._cancel_pending(lease.task_id))
        if task is None or task.status.terminal:
            if task is not None:
                await self._repair_outputs(task)
            return await self._end_lease(raw, lease, None, LeaseState.ENDED) is not None
        updated, requeue = rules.on_lost(task, cancel_pending=pending, max_attempts=self._settings.max_attempts)
        if not requeue:
            if await self._end_lease(raw, lease, updated, LeaseState.ENDED) is None:
                return False
            log.warning("executor %s %s task %s (attempt %d): the task is %s: %s", lease.executor_id, why,
                        lease.task_id, lease.attempt, updated.status.name, updated.result.failure)
            return True
        released = await self._end_lease(raw, lease, updated, LeaseState.RELEASED, self._now_ms() + self._lease_ms)
        if released is None:
            return False
        log.warning("executor %s %s task %s (attempt %d)", lease.executor_id, why, lease.task_id, lease.attempt)
        await self._requeue(released)
        log.info("task %s re-queued after attempt %d", lease.task_id, lease.attempt)
        return True

    async def _requeue(self, released: Lease) -> None:
        await self._store.enqueue(STAGED_TASK_QUEUE, released.staged_task, signal_key=STAGED_SIGNAL_KEY)
        requeued = released.ended(LeaseState.REQUEUED, self._now_ms() + self._lease_ms)
        # A hand-out of the new item may have replaced it already: then that lease stays.
        await self._store.compare_and_put(rules.lease_key(released.task_id), released.to_bytes(), requeued.to_bytes())

    async def _require_task(self, task_id: str) -> TaskRecord:
        task = await self._store.get_task(task_key(task_id))
        if task is None:
            log.error("task %s has a lease but no record", task_id)
            raise InternalError("service internal error")
        return task

    async def _cancel_pending(self, task_id: str) -> bool:
        return await self._store.get(cancel_request_key(task_id)) is not None

    async def _repair_outputs(self, task: TaskRecord) -> None:
        """Write a Finished task's output records again. Results are committed with their
        outputs in one step now; a database from a version that wrote the outputs after
        the task can hold a task whose outputs a crash left unwritten, and its lease."""
        for key, value in _output_writes(task):
            assert value is not None
            await self._store.put(key, value)
