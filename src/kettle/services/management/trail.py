"""Management's side of the parties' trails: appending pending events to the chains, and listing.

Events are written as *pending* by whoever causes them, in the same storage
transaction as the cause (management's approvals, the scheduler's task endings;
:mod:`kettle.model.trail`). Here they are appended to their party's chain, one
party at a time under that party's lock: the new entry, the new signed head, a
``done`` marker for the event and the removal of the pending record are one
compare-and-put on the head, so an event is appended once and a crash leaves
either all of it or none (the pending record is then appended after restart).

A chain whose stored head does not match its stored entries (someone removed,
added or changed records behind management's back) is never appended to or
repaired: its pending events wait, the damage stays visible to the party's
``kettle audit verify-trail``, and the log says so.

Pending events are appended when their signal changes (a storage Watch), when
the service starts, and before a party's trail is listed, so a listing includes
every event that happened before the call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from ...attestation.identity import IdentityManager
from ...attestation.signed import sign as attested_signature
from ...errors import KettleError, StorageError
from ...model import trail as rules
from ...model.trail import SignedHead, TrailError, TrailEvent, TrailHead
from ..platform_store import MAX_UPDATE_ATTEMPTS, PlatformStore

log = logging.getLogger(__name__)

Sign = Callable[[bytes], bytes]
"""Signs a head's exact bytes with management's attested identity; returns the envelope."""

WATCH_MS = 30_000
"""The append loop also looks for pending events this often without a signal (a lost wake-up costs at most this)."""
RETRY_SECS = 1.0
PAGE_ENTRIES = 100
"""Entries per ListMyTrail answer at most: receipts (a certificate chain and an attestation
report each) make entries several KiB, and an answer must stay well under gRPC's 4 MiB."""


class TrailDamaged(KettleError):
    """A party's stored chain is not what management wrote: nothing is appended to it."""


@dataclass(frozen=True)
class Listing:
    entries: list[bytes]
    signed_head: bytes
    """Empty when the party has no trail yet."""
    last_sequence: int
    """The storage position of the last entry listed (``after`` when none was)."""
    more: bool


def _now_ms() -> int:
    return int(time.time() * 1000)


class TrailBook:
    def __init__(self, store: PlatformStore, sign: Sign, clock_ms: Callable[[], int] = _now_ms) -> None:
        self._store = store
        self._sign = sign
        self._clock_ms = clock_ms
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, party: str) -> asyncio.Lock:
        return self._locks.setdefault(party, asyncio.Lock())

    # --- appending ------------------------------------------------------------------------

    async def append_pending(self, party: str) -> int:
        """Append ``party``'s pending events (oldest first); returns how many were appended."""
        async with self._lock(party):
            keys = await self._store.keys_with_prefix(rules.pending_prefix(party))
            events: list[TrailEvent] = []
            for key in keys:
                raw = await self._store.get(key)
                if raw is None:
                    continue
                try:
                    event = TrailEvent.from_bytes(raw)
                except TrailError as exc:
                    log.error("pending trail event %r does not decode; left in place: %s", key, exc)
                    continue
                if event.party != party:
                    log.error("pending trail event %r names party %r; left in place", key, event.party)
                    continue
                events.append(event)
            events.sort(key=lambda e: (e.time_ms, e.event_id))
            return sum([await self._append(event) for event in events])

    async def _append(self, event: TrailEvent) -> bool:
        """Append one event; False when it was appended before (its pending record is dropped)."""
        party = event.party
        pending = rules.pending_key(party, event.event_id)
        for _ in range(MAX_UPDATE_ATTEMPTS):
            head_raw = await self._store.get(rules.head_key(party))
            head = await self._checked_head(party, head_raw)
            if await self._store.get(rules.done_key(party, event.event_id)) is not None:
                # Appended before (a crash between the append and our reading of the pending record).
                await self._store.delete(pending)
                return False
            entry = rules.next_entry(head, event)
            if await self._store.get(rules.entry_key(party, entry.sequence)) is not None:
                raise TrailDamaged(f"the trail of {party!r} holds an entry {entry.sequence} past its head")
            entry_bytes = entry.to_bytes()
            new_head = rules.head_after(entry_bytes, entry, self._clock_ms())
            head_bytes = new_head.to_bytes()
            signed = SignedHead(head_bytes, self._sign(head_bytes)).to_bytes()
            applied, _ = await self._store.compare_and_put(
                rules.head_key(party), head_raw, signed,
                also=[(rules.entry_key(party, entry.sequence), entry_bytes),
                      (rules.done_key(party, event.event_id), b""),
                      (pending, None)],
            )
            if applied:
                return True
        raise StorageError(f"the trail head of {party!r} is being updated too often")

    async def _checked_head(self, party: str, head_raw: bytes | None) -> TrailHead | None:
        """The stored head, after checking it still names the stored last entry."""
        if head_raw is None:
            if await self._store.get(rules.entry_key(party, 1)) is not None:
                raise TrailDamaged(f"the trail of {party!r} has entries but no head")
            return None
        try:
            head = TrailHead.from_bytes(SignedHead.from_bytes(head_raw).head)
        except TrailError as exc:
            raise TrailDamaged(f"the trail head of {party!r} does not decode: {exc}") from None
        last = await self._store.get(rules.entry_key(party, head.sequence)) if head.sequence else None
        if head.party != party or (head.sequence and (last is None or rules.digest(last) != head.hash)):
            raise TrailDamaged(f"the trail head of {party!r} does not name its last stored entry")
        return head

    async def append_all(self) -> None:
        """Append every party's pending events; a damaged trail is logged and skipped."""
        keys = await self._store.keys_with_prefix(rules.pending_prefix())
        parties: dict[str, None] = {}
        for key in keys:
            try:
                parties[rules.parse_pending_key(key)[0]] = None
            except TrailError as exc:
                log.error("%s; left in place", exc)
        for party in parties:
            try:
                await self.append_pending(party)
            except TrailDamaged as exc:
                log.error("not appending to a damaged trail: %s", exc.message)

    async def run_forever(self) -> None:
        """Append pending events whenever the signal changes (and at start)."""
        while True:
            try:
                signal = await self._store.get(rules.TRAIL_SIGNAL_KEY)
                await self.append_all()
                await self._store.watch(rules.TRAIL_SIGNAL_KEY, signal, WATCH_MS)
            except KettleError as exc:  # storage down, or no valid identity to sign with yet
                log.warning("trail appends wait: %s", exc.message)
                await asyncio.sleep(RETRY_SECS)

    # --- listing -----------------------------------------------------------------------------

    async def listing(self, party: str, after: int, limit: int) -> Listing:
        """Entries ``after``+1 … of ``party``'s trail (at most ``limit``, up to the head read
        first) and its signed head, as stored: a damaged chain is shown as it is."""
        try:
            await self.append_pending(party)
        except TrailDamaged as exc:
            log.error("listing a damaged trail: %s", exc.message)
        except KettleError as exc:
            # Listed as it stands; the pending events follow in a later listing.
            log.warning("trail of %s listed before its pending events: %s", party, exc.message)
        head_raw = await self._store.get(rules.head_key(party)) or b""
        # Entries appended after the head was read are left for the next listing, so that
        # a listing is consistent with its head. A missing or undecodable head bounds
        # nothing: the entries then show the party that its head is gone.
        last = None
        try:
            last = TrailHead.from_bytes(SignedHead.from_bytes(head_raw).head).sequence if head_raw else None
        except TrailError:
            pass
        prefix = rules.entry_prefix(party)
        positions = []
        for key in await self._store.keys_with_prefix(prefix):
            suffix = key[len(prefix):]
            sequence = int(suffix) if suffix.isdigit() else None
            if sequence is not None and sequence > after and (last is None or sequence <= last):
                positions.append(sequence)
        page = positions[:limit]
        raws = await asyncio.gather(*(self._store.get(rules.entry_key(party, p)) for p in page))
        entries = [raw for raw in raws if raw is not None]
        return Listing(entries, head_raw, page[-1] if page else after, len(positions) > limit)



def attested_signer(identities: IdentityManager) -> Sign:
    """Sign with the identity in force (certificates rotate; each signature bundles its chain)."""

    def sign_head(head: bytes) -> bytes:
        signed = attested_signature(identities.current, rules.HEAD_PURPOSE, head)
        return rules.canonical(signed.to_json())

    return sign_head
