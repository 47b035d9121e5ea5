"""The frontend's audit buffer: record entries without waiting, ship them to management in batches.

Every TeaclaveFrontend call leaves an audit entry (``spec/platform.md`` §9.1),
but a call must never wait for (or fail because of) the audit log. So the gate
only appends to this buffer, and a background task sends what accumulated to
management's SaveLogs every ``interval`` seconds.

Kettle flushes every **1 s** where Teaclave flushes every 30 s: a call becomes
queryable about a second later instead of up to half a minute, which is what an
administrator investigating an incident expects; one small SaveLogs per second
is cheap.

Delivery is at-least-once: a batch that fails to save stays at the front of the
buffer and is retried on the next tick, in order. (If a flush is cancelled
after management stored the batch but before we heard back, the batch is sent
again; a duplicate audit entry is better than a lost one.) Memory is bounded:
at most ``max_pending`` entries wait (plus one batch in flight); when
management stays unreachable that long, the oldest entries are dropped with a
logged warning, so the frontend keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from ...rpc.generated.teaclave_common_pb2 import Entry

log = logging.getLogger(__name__)

__all__ = ["MAX_BATCH_BYTES", "MAX_BATCH_ENTRIES", "MAX_PENDING", "AuditBuffer", "Flush"]

Flush = Callable[[list[Entry]], Awaitable[None]]

MAX_PENDING = 100_000
MAX_BATCH_ENTRIES = 1_000
MAX_BATCH_BYTES = 1024 * 1024
"""One SaveLogs request stays far below the 4 MiB gRPC message limit, however long the messages."""


class AuditBuffer:
    """Pending audit entries and the loop that flushes them. All methods run on one event loop."""

    def __init__(
        self,
        max_pending: int = MAX_PENDING,
        max_batch_entries: int = MAX_BATCH_ENTRIES,
        max_batch_bytes: int = MAX_BATCH_BYTES,
    ) -> None:
        if max_pending < 1 or max_batch_entries < 1 or max_batch_bytes < 1:
            raise ValueError("audit buffer bounds must be positive")
        self._pending: deque[Entry] = deque()
        self._max_pending = max_pending
        self._max_batch_entries = max_batch_entries
        self._max_batch_bytes = max_batch_bytes
        self._flushing = asyncio.Lock()
        self._closed = asyncio.Event()
        self._failing = False
        self.dropped = 0
        """Entries dropped because the buffer was full, since the buffer was made."""
        self._dropped_unreported = 0

    @property
    def pending(self) -> int:
        """Entries waiting to be saved (not counting a batch in flight)."""
        return len(self._pending)

    def record(self, entry: Entry) -> None:
        """Queue one entry; never blocks, never fails (drops the oldest entry when full)."""
        self._pending.append(entry)
        self._enforce_bound()

    def _enforce_bound(self) -> None:
        excess = len(self._pending) - self._max_pending
        if excess <= 0:
            return
        for _ in range(excess):
            self._pending.popleft()
        if self._dropped_unreported == 0:
            log.warning(
                "audit buffer is full (%d entries; management is not taking them): dropping the oldest entries",
                self._max_pending,
            )
        self.dropped += excess
        self._dropped_unreported += excess

    def _next_batch(self, limit: int) -> list[Entry]:
        """Take up to ``limit`` entries from the front, within the per-request bounds (at least one)."""
        batch: list[Entry] = []
        size = 0
        while self._pending and len(batch) < min(limit, self._max_batch_entries):
            entry_size = self._pending[0].ByteSize() + 8
            if batch and size + entry_size > self._max_batch_bytes:
                break
            batch.append(self._pending.popleft())
            size += entry_size
        return batch

    async def flush_pending(self, flush: Flush) -> bool:
        """Send what is pending now, batch by batch, in order; True if all of it was saved.

        Entries recorded while this runs wait for the next call, so a steady
        stream of calls cannot keep one flush going forever. A failing batch is
        put back at the front and the rest waits for the next attempt.
        """
        async with self._flushing:
            remaining = len(self._pending)
            while remaining > 0 and self._pending:
                batch = self._next_batch(remaining)
                try:
                    await flush(batch)
                except asyncio.CancelledError:
                    self._requeue(batch)
                    raise
                except Exception as exc:  # noqa: BLE001 - any failure of the save: keep the entries, retry
                    self._requeue(batch)
                    if not self._failing:
                        log.warning("saving %d audit entries failed, will retry: %s", len(batch), exc)
                    self._failing = True
                    return False
                remaining -= len(batch)
                self._recovered()
            return True

    def _requeue(self, batch: list[Entry]) -> None:
        """Put a batch back at the front; if that overflows the bound, its oldest entries go first."""
        self._pending.extendleft(reversed(batch))
        self._enforce_bound()

    def _recovered(self) -> None:
        if self._failing:
            log.info("audit entries are being saved again")
            self._failing = False
        if self._dropped_unreported:
            log.warning("%d audit entries were dropped while the buffer was full", self._dropped_unreported)
            self._dropped_unreported = 0

    async def run(self, flush: Flush, interval: float) -> None:
        """Flush every ``interval`` seconds until :meth:`close` is called (or the task is cancelled).

        Errors of ``flush`` never end the loop; the entries are retried on the next tick.
        """
        if interval <= 0:
            raise ValueError("interval must be positive")
        while not self._closed.is_set():
            try:
                await asyncio.wait_for(self._closed.wait(), interval)
            except TimeoutError:
                pass
            if self._closed.is_set():
                return
            await self.flush_pending(flush)

    async def close(self, flush: Flush) -> None:
        """Stop :meth:`run` and make one last attempt to save everything left (on shutdown).

        Whatever still fails stays in the buffer and is reported, so a caller
        may try again; nothing is silently lost.
        """
        self._closed.set()
        if not await self.flush_pending(flush):
            log.error("%d audit entries could not be saved at shutdown", len(self._pending))
