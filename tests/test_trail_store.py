"""Management's trail book (kettle.services.management.trail) on the real storage service.

With management's own attested identity: pending events become entries once,
each head is signed and verifies offline, a damaged chain is never appended to
(its events wait until it is whole again), and listings page.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from conftest import Platform

from kettle.model import trail as rules
from kettle.model.trail import EventKind, TrailEntry, TrailEvent
from kettle.sdk.trail import Trail, verify_trail
from kettle.services.management.trail import TrailBook, TrailDamaged, attested_signer
from kettle.services.platform_store import PlatformStore
from kettle.services.runtime import ServiceRuntime

T = TypeVar("T")


def as_management(platform: Platform, work: Callable[[TrailBook, PlatformStore], Awaitable[T]]) -> T:
    async def run() -> T:
        runtime = ServiceRuntime("management", platform.config)
        await runtime.attest()
        try:
            store = PlatformStore(runtime.peers)
            return await work(TrailBook(store, attested_signer(runtime.identities)), store)
        finally:
            await runtime.identities.stop()
            await runtime.peers.close()

    return asyncio.run(run())


def event(party: str, n: int) -> TrailEvent:
    return TrailEvent(f"approval-{n}", EventKind.APPROVAL, party, f"task-{n:08d}-0000-0000-0000-000000000000",
                      1_700_000_000_000 + n)


async def record(store: PlatformStore, *events: TrailEvent) -> None:
    """Write events as pending, as their cause does (the signal rides along)."""
    for key, value in rules.pending_writes(events, os.urandom(16)):
        assert value is not None
        await store.put(key, value)


async def full_listing(book: TrailBook, party: str) -> Trail:
    listing = await book.listing(party, 0, 1000)
    return Trail(party, tuple(listing.entries), listing.signed_head)


def test_pending_events_are_appended_once_in_time_order_and_verify(platform: Platform) -> None:
    party = f"owner-{os.urandom(4).hex()}"

    async def work(book: TrailBook, store: PlatformStore) -> Trail:
        await record(store, event(party, 2), event(party, 1))
        assert await book.append_pending(party) == 2
        # The same event recorded again (a replayed cause): its done marker keeps it out.
        await record(store, event(party, 1))
        assert await book.append_pending(party) == 0
        assert await store.keys_with_prefix(rules.pending_prefix(party)) == []
        return await full_listing(book, party)

    trail = as_management(platform, work)
    assert [TrailEntry.from_bytes(e).event.event_id for e in trail.entries] == ["approval-1", "approval-2"]
    verdict = verify_trail(trail, platform.trust())
    assert verdict.ok, verdict.reason


def test_a_damaged_chain_is_not_appended_to_until_it_is_whole_again(platform: Platform) -> None:
    party = f"owner-{os.urandom(4).hex()}"

    async def work(book: TrailBook, store: PlatformStore) -> None:
        await record(store, event(party, 1), event(party, 2))
        await book.append_pending(party)
        second = await store.get(rules.entry_key(party, 2))
        assert second is not None
        await store.delete(rules.entry_key(party, 2))
        await record(store, event(party, 3))
        with pytest.raises(TrailDamaged, match="does not name its last stored entry"):
            await book.append_pending(party)
        # Nothing was written past the damage, the event waits, and the listing shows the damage.
        assert await store.get(rules.entry_key(party, 3)) is None
        assert len(await store.keys_with_prefix(rules.pending_prefix(party))) == 1
        damaged = verify_trail(await full_listing(book, party), platform.trust())
        assert not damaged.ok and "entry 2" in damaged.reason
        await store.put(rules.entry_key(party, 2), second)
        assert await book.append_pending(party) == 1
        whole = verify_trail(await full_listing(book, party), platform.trust())
        assert whole.ok, whole.reason
        assert len((await full_listing(book, party)).entries) == 3

    as_management(platform, work)


def test_a_missing_head_is_not_restarted_over_existing_entries(platform: Platform) -> None:
    party = f"owner-{os.urandom(4).hex()}"

    async def work(book: TrailBook, store: PlatformStore) -> None:
        await record(store, event(party, 1))
        await book.append_pending(party)
        await store.delete(rules.head_key(party))
        await record(store, event(party, 2))
        with pytest.raises(TrailDamaged, match="has entries but no head"):
            await book.append_pending(party)
        verdict = verify_trail(await full_listing(book, party), platform.trust())
        assert not verdict.ok and "1 entries but no signed head" in verdict.reason

    as_management(platform, work)


def test_listings_page_up_to_the_head(platform: Platform) -> None:
    party = f"owner-{os.urandom(4).hex()}"

    async def work(book: TrailBook, store: PlatformStore) -> None:
        await record(store, *(event(party, n) for n in range(1, 6)))
        await book.append_pending(party)
        first = await book.listing(party, 0, 2)
        assert (len(first.entries), first.last_sequence, first.more) == (2, 2, True)
        last = await book.listing(party, 4, 2)
        assert (len(last.entries), last.last_sequence, last.more) == (1, 5, False)
        # An entry stored past the head (not management's) is not listed as part of the trail.
        await store.put(rules.entry_key(party, 6), rules.next_entry(None, event(party, 6)).to_bytes())
        assert (await book.listing(party, 0, 100)).last_sequence == 5
        await record(store, event(party, 7))
        with pytest.raises(TrailDamaged, match="entry 6 past its head"):
            await book.append_pending(party)

    as_management(platform, work)
