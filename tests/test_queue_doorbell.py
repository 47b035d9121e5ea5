"""The scheduler's doorbell: one watch of the queue signal wakes one waiting PullTask per ring."""

from __future__ import annotations

import asyncio

import pytest

from kettle.services.scheduler.core import QueueDoorbell


def doorbell() -> QueueDoorbell:
    return QueueDoorbell(store=None)  # type: ignore[arg-type]  # ring and wait never touch storage


def test_a_ring_with_nobody_waiting_is_kept_for_the_next_waiter() -> None:
    async def body() -> None:
        bell = doorbell()
        await asyncio.wait_for(bell.wait(5), 1)  # rung at start: items may be queued already
        with pytest.raises(TimeoutError):
            await bell.wait(0.05)  # that ring is used up
        bell.ring()
        bell.ring()  # rings do not pile up: one look at the queue covers both
        await asyncio.wait_for(bell.wait(5), 1)
        with pytest.raises(TimeoutError):
            await bell.wait(0.05)

    asyncio.run(body())


def test_each_ring_wakes_exactly_one_waiter() -> None:
    async def body() -> None:
        bell = doorbell()
        await bell.wait(0)  # take the start-up ring
        woken: list[int] = []

        async def waiter(n: int) -> None:
            await bell.wait(5)
            woken.append(n)

        waiters = [asyncio.create_task(waiter(n)) for n in range(3)]
        await asyncio.sleep(0.01)
        bell.ring()
        await asyncio.sleep(0.01)
        assert woken == [0]
        bell.ring()
        bell.ring()
        await asyncio.sleep(0.01)
        assert woken == [0, 1, 2]
        await asyncio.gather(*waiters)

    asyncio.run(body())


def test_a_waiter_that_went_away_does_not_swallow_a_ring() -> None:
    async def body() -> None:
        bell = doorbell()
        await bell.wait(0)
        gone = asyncio.create_task(bell.wait(5))
        staying = asyncio.create_task(bell.wait(5))
        await asyncio.sleep(0.01)
        gone.cancel()  # its node went away mid long-poll
        await asyncio.sleep(0.01)
        bell.ring()
        await asyncio.wait_for(staying, 1)

    asyncio.run(body())
