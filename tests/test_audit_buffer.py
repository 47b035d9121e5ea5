"""The frontend's audit buffer, on a bare event loop: cadence, retry, shutdown flush, bounds."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import pytest

from kettle.rpc.generated.teaclave_common_pb2 import Entry
from kettle.services.frontend.audit_buffer import AuditBuffer


def entry(n: int, message: str = "") -> Entry:
    return Entry(microsecond=n, ip=bytes(16), message=message or f"call {n}", result=True)


class Sink:
    """A SaveLogs stand-in: records batches; fails the next ``fail`` calls."""

    def __init__(self, fail: int = 0) -> None:
        self.batches: list[list[int]] = []
        self.fail = fail
        self.attempts = 0

    async def __call__(self, entries: list[Entry]) -> None:
        self.attempts += 1
        await asyncio.sleep(0)
        if self.fail:
            self.fail -= 1
            raise ConnectionError("management is down")
        self.batches.append([e.microsecond for e in entries])

    @property
    def saved(self) -> list[int]:
        return [n for batch in self.batches for n in batch]


async def eventually(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(body())


def test_flushes_on_each_tick_and_not_when_idle() -> None:
    async def body() -> None:
        buffer, sink = AuditBuffer(), Sink()
        flusher = asyncio.create_task(buffer.run(sink, 0.05))
        for n in range(3):
            buffer.record(entry(n))
        assert sink.batches == []  # record() never flushes by itself
        await eventually(lambda: sink.saved == [0, 1, 2])
        assert sink.batches == [[0, 1, 2]]  # one SaveLogs for what accumulated
        await asyncio.sleep(0.2)
        assert sink.attempts == 1  # idle ticks send nothing
        buffer.record(entry(3))
        await eventually(lambda: sink.saved == [0, 1, 2, 3])
        assert sink.batches[-1] == [3]
        await buffer.close(sink)
        await asyncio.wait_for(flusher, 1)  # close() ends run()

    run(body)


def test_cadence_is_the_interval() -> None:
    async def body() -> None:
        buffer, sink = AuditBuffer(), Sink()
        flusher = asyncio.create_task(buffer.run(sink, 0.3))
        buffer.record(entry(1))
        await asyncio.sleep(0.15)
        assert sink.saved == []  # not before the interval
        await eventually(lambda: sink.saved == [1], timeout=1)
        flusher.cancel()

    run(body)


def test_failed_flush_keeps_entries_in_order_and_retries() -> None:
    async def body() -> None:
        buffer, sink = AuditBuffer(), Sink(fail=2)
        flusher = asyncio.create_task(buffer.run(sink, 0.03))
        buffer.record(entry(1))
        buffer.record(entry(2))
        await eventually(lambda: sink.attempts >= 1)
        buffer.record(entry(3))  # recorded while management is down
        await eventually(lambda: sink.saved == [1, 2, 3])
        assert sink.attempts >= 3 and buffer.pending == 0
        await buffer.close(sink)
        await flusher

    run(body)


def test_flush_pending_returns_whether_everything_was_saved() -> None:
    async def body() -> None:
        buffer, sink = AuditBuffer(), Sink(fail=1)
        buffer.record(entry(1))
        assert await buffer.flush_pending(sink) is False
        assert buffer.pending == 1
        assert await buffer.flush_pending(sink) is True
        assert (sink.saved, buffer.pending) == ([1], 0)
        assert await buffer.flush_pending(sink) is True  # nothing pending: no call
        assert sink.attempts == 2

    run(body)


def test_close_flushes_the_rest_and_stops_run() -> None:
    async def body() -> None:
        buffer, sink = AuditBuffer(), Sink()
        flusher = asyncio.create_task(buffer.run(sink, 3600))
        for n in range(5):
            buffer.record(entry(n))
        await buffer.close(sink)
        assert sink.saved == [0, 1, 2, 3, 4]
        await asyncio.wait_for(flusher, 1)

    run(body)


def test_close_after_the_flusher_was_cancelled_mid_flush() -> None:
    """The frontend cancels its flusher, then closes: a batch cut off in flight is not lost."""

    async def body() -> None:
        buffer = AuditBuffer()
        started = asyncio.Event()

        async def hanging(entries: list[Entry]) -> None:
            started.set()
            await asyncio.sleep(3600)

        flusher = asyncio.create_task(buffer.run(hanging, 0.01))
        buffer.record(entry(1))
        buffer.record(entry(2))
        await asyncio.wait_for(started.wait(), 2)
        assert buffer.pending == 0  # in flight
        flusher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await flusher
        assert buffer.pending == 2  # put back, in order
        sink = Sink()
        buffer.record(entry(3))
        await buffer.close(sink)
        assert sink.saved == [1, 2, 3]

    run(body)


def test_close_keeps_what_it_could_not_save(caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        buffer, sink = AuditBuffer(), Sink(fail=1)
        buffer.record(entry(1))
        with caplog.at_level(logging.ERROR):
            await buffer.close(sink)
        assert buffer.pending == 1
        assert "1 audit entries could not be saved at shutdown" in caplog.text
        await buffer.close(sink)  # a caller may try again
        assert sink.saved == [1]

    run(body)


def test_entries_recorded_during_a_flush_wait_for_the_next_one() -> None:
    async def body() -> None:
        buffer = AuditBuffer(max_batch_entries=1)
        saved: list[int] = []

        async def busy(entries: list[Entry]) -> None:
            saved.extend(e.microsecond for e in entries)
            buffer.record(entry(100 + len(saved)))  # a steady stream of calls

        buffer.record(entry(1))
        buffer.record(entry(2))
        assert await buffer.flush_pending(busy) is True
        assert saved == [1, 2] and buffer.pending == 2

    run(body)


def test_batches_respect_entry_and_byte_bounds() -> None:
    async def body() -> None:
        sink = Sink()
        by_count = AuditBuffer(max_batch_entries=2)
        for n in range(5):
            by_count.record(entry(n))
        await by_count.flush_pending(sink)
        assert sink.batches == [[0, 1], [2, 3], [4]]

        sink = Sink()
        by_size = AuditBuffer(max_batch_bytes=300)
        for n in range(4):
            by_size.record(entry(n, "x" * 100))  # ~130 bytes each: two per request
        by_size.record(entry(9, "y" * 1000))  # larger than a batch on its own: still sent, alone
        await by_size.flush_pending(sink)
        assert sink.batches == [[0, 1], [2, 3], [9]]

    run(body)


def test_failure_stops_the_pass_and_later_batches_wait() -> None:
    async def body() -> None:
        buffer, sink = AuditBuffer(max_batch_entries=2), Sink()
        for n in range(5):
            buffer.record(entry(n))
        await buffer.flush_pending(sink)
        assert sink.saved == [0, 1, 2, 3, 4]
        failing = Sink(fail=1)
        for n in range(5, 10):
            buffer.record(entry(n))
        assert await buffer.flush_pending(failing) is False
        assert failing.attempts == 1 and buffer.pending == 5
        assert await buffer.flush_pending(failing) is True
        assert failing.saved == [5, 6, 7, 8, 9]

    run(body)


def test_bounded_memory_drops_the_oldest(caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        buffer = AuditBuffer(max_pending=5)
        with caplog.at_level(logging.WARNING):
            for n in range(8):
                buffer.record(entry(n))
        assert (buffer.pending, buffer.dropped) == (5, 3)
        assert caplog.text.count("audit buffer is full") == 1  # one warning per overflow episode
        caplog.clear()
        sink = Sink()
        with caplog.at_level(logging.WARNING):
            await buffer.flush_pending(sink)
        assert sink.saved == [3, 4, 5, 6, 7]
        assert "3 audit entries were dropped" in caplog.text

    run(body)


def test_bound_holds_when_a_failed_batch_comes_back() -> None:
    async def body() -> None:
        buffer = AuditBuffer(max_pending=4, max_batch_entries=2)
        for n in range(4):
            buffer.record(entry(n))

        async def fail_after_more_calls(entries: list[Entry]) -> None:
            for n in range(10, 13):  # calls keep coming while the batch is in flight
                buffer.record(entry(n))
            raise ConnectionError("down")

        assert await buffer.flush_pending(fail_after_more_calls) is False
        assert buffer.pending == 4
        sink = Sink()
        await buffer.flush_pending(sink)
        assert sink.saved == [3, 10, 11, 12]  # the newest four survive, in order
        assert buffer.dropped == 3

    run(body)


def test_run_survives_unexpected_flush_errors() -> None:
    async def body() -> None:
        buffer = AuditBuffer()
        calls = 0
        saved: list[int] = []

        async def flaky(entries: list[Entry]) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("bug in the save path")
            saved.extend(e.microsecond for e in entries)

        flusher = asyncio.create_task(buffer.run(flaky, 0.02))
        buffer.record(entry(1))
        await eventually(lambda: saved == [1])
        await buffer.close(flaky)
        await flusher

    run(body)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        AuditBuffer(max_pending=0)

    async def body() -> None:
        with pytest.raises(ValueError):
            await AuditBuffer().run(Sink(), 0)

    run(body)
