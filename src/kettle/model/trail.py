"""Each party's tamper-evident trail: entries, their canonical encoding, the hash chain, the head, verification.

A party's trail lists the approvals it gave (and withdrew) and every task that
was given its files, in the order management recorded them. Each entry is
canonical JSON holding its party, its sequence number (1, 2, …) and the SHA-256
of the previous entry of the same party (:data:`GENESIS` for the first), so the
entries form one hash chain per party. The *head* names the party's last entry
(sequence and hash) and the time it was written; management signs it with its
attested identity. Whoever holds the entries and the signed head can check,
offline, that no entry was removed, reordered or altered: a removed or reordered
entry breaks the sequence or a link, an altered one breaks the link after it (or
the head, for the last), a removed tail no longer reaches the head, and a head
cannot be rewritten without management's signing key.

Events reach the trail in two steps (``docs/trail.md``): the change that causes
them (an approval, a task's end) writes a *pending event* in the same storage
transaction, so an event exists exactly when its cause does; management then
appends pending events to the chain, each once (a ``done`` marker is written
with the entry and its new head).

Pure: no I/O. Storage keys (platform partition): ``trail-pending-<party>-<event id>``,
``trail-entry-<party>-<sequence, 20 digits>``, ``trail-head-<party>``,
``trail-done-<party>-<event id>`` and ``trail-signal``, where ``<party>`` is the
user id in hex (user ids may hold ``-``; hex never does, so one party's prefix
never covers another's).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from . import consent
from .ids import Kind, external_id
from .records import TaskRecord, TaskStatus

GENESIS = "0" * 64
"""The ``previous`` hash of a party's first entry."""
FORMAT = 1
"""Version of the entry and head encodings (both carry it)."""
HEAD_PURPOSE = "kettle trail head v1"
"""Heads name their purpose, and management signs them for it: its signature on a head
can never be taken for its signature on anything else (a receipt, say)."""
TRAIL_SIGNAL_KEY = b"trail-signal"
"""Rewritten (any new value) with every pending event, so management can Watch it."""
SEQUENCE_DIGITS = 20


class TrailError(ValueError):
    """A trail record that does not decode, or an event that cannot be recorded."""


class EventKind(str, Enum):
    APPROVAL = "approval"
    REVOCATION = "revocation"
    REFUSAL = "refusal"
    """The party declined to approve the task (RefuseTask): ``task_digest`` is the digest it
    refused, ``outcome`` its reason (may be empty)."""
    TASK_ENDED = "task-ended"
    RECEIPT = "receipt"
    """A canceled run's receipt: the node reports it after the task ended Canceled."""


# --- keys -------------------------------------------------------------------------------


def party_tag(party: str) -> str:
    return party.encode().hex()


def party_of_tag(tag: str) -> str:
    try:
        return bytes.fromhex(tag).decode()
    except ValueError as exc:
        raise TrailError(f"malformed party in a trail key: {exc}") from None


def pending_prefix(party: str | None = None) -> bytes:
    return b"trail-pending-" if party is None else f"trail-pending-{party_tag(party)}-".encode()


def pending_key(party: str, event_id: str) -> bytes:
    return pending_prefix(party) + event_id.encode()


def parse_pending_key(key: bytes) -> tuple[str, str]:
    """(party, event id) of a pending-event key."""
    rest = key[len(pending_prefix()):].decode(errors="replace")
    tag, _, event_id = rest.partition("-")
    if not event_id:
        raise TrailError(f"malformed pending trail key {key!r}")
    return party_of_tag(tag), event_id


def entry_prefix(party: str) -> bytes:
    return f"trail-entry-{party_tag(party)}-".encode()


def entry_key(party: str, sequence: int) -> bytes:
    return entry_prefix(party) + f"{sequence:0{SEQUENCE_DIGITS}d}".encode()


def head_key(party: str) -> bytes:
    return f"trail-head-{party_tag(party)}".encode()


def done_key(party: str, event_id: str) -> bytes:
    return f"trail-done-{party_tag(party)}-{event_id}".encode()


# --- encodings ----------------------------------------------------------------------------


def canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decode_json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise TrailError(f"{what} is not JSON: {exc}") from None


def _load(data: bytes, names: set[str], what: str) -> dict[str, Any]:
    doc = decode_json(data, what)
    if not isinstance(doc, dict) or set(doc) != names:
        raise TrailError(f"{what} has the wrong fields")
    if canonical(doc) != data:
        # Hashes and signatures are over the exact bytes: only one spelling is valid.
        raise TrailError(f"{what} is not in canonical form")
    return doc


def _text(doc: dict[str, Any], name: str, what: str) -> str:
    value = doc[name]
    if not isinstance(value, str):
        raise TrailError(f"{what}: {name} is not text")
    return value


def _count(doc: dict[str, Any], name: str, what: str) -> int:
    value = doc[name]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TrailError(f"{what}: {name} is not a non-negative integer")
    return value


def _texts(doc: dict[str, Any], name: str, what: str) -> tuple[str, ...]:
    value = doc[name]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TrailError(f"{what}: {name} is not a list of text")
    return tuple(value)


def _hash_text(doc: dict[str, Any], name: str, what: str) -> str:
    value = _text(doc, name, what)
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise TrailError(f"{what}: {name} is not a SHA-256 in lowercase hex")
    return value


@dataclass(frozen=True)
class TrailEvent:
    """Something that belongs in one party's trail, before it has a place in the chain.

    ``files_read``: the party's input files the task was given (it was handed to an
    execution node, so the node received their keys); ``files_written``: the party's
    output files the task's result wrote. ``receipt``: the task's receipt bytes as the
    result carried them (empty when it carried none). ``task_digest``: the digest the
    approval was bound to (approvals), or the task's digest (ended tasks).
    """

    event_id: str
    kind: EventKind
    party: str
    task_id: str
    time_ms: int
    task_digest: str = ""
    outcome: str = ""
    files_read: tuple[str, ...] = ()
    files_written: tuple[str, ...] = ()
    receipt: bytes = b""

    FIELDS = frozenset({"event", "kind", "party", "task_id", "time_ms", "task_digest", "outcome",
                        "files_read", "files_written", "receipt"})

    def to_json(self) -> dict[str, Any]:
        return {
            "event": self.event_id,
            "kind": self.kind.value,
            "party": self.party,
            "task_id": self.task_id,
            "time_ms": self.time_ms,
            "task_digest": self.task_digest,
            "outcome": self.outcome,
            "files_read": list(self.files_read),
            "files_written": list(self.files_written),
            "receipt": base64.b64encode(self.receipt).decode(),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any], what: str) -> TrailEvent:
        try:
            kind = EventKind(doc["kind"])
        except ValueError:
            raise TrailError(f"{what}: unknown kind {doc['kind']!r}") from None
        try:
            receipt = base64.b64decode(_text(doc, "receipt", what), validate=True)
        except ValueError as exc:
            raise TrailError(f"{what}: receipt is not base64: {exc}") from None
        return cls(
            event_id=_text(doc, "event", what),
            kind=kind,
            party=_text(doc, "party", what),
            task_id=_text(doc, "task_id", what),
            time_ms=_count(doc, "time_ms", what),
            task_digest=_text(doc, "task_digest", what),
            outcome=_text(doc, "outcome", what),
            files_read=_texts(doc, "files_read", what),
            files_written=_texts(doc, "files_written", what),
            receipt=receipt,
        )

    def to_bytes(self) -> bytes:
        return canonical(self.to_json())

    @classmethod
    def from_bytes(cls, data: bytes) -> TrailEvent:
        return cls.from_json(_load(data, set(cls.FIELDS), "pending trail event"), "pending trail event")


@dataclass(frozen=True)
class TrailEntry:
    """One link of a party's chain: the event, its place (``sequence``) and the previous entry's hash."""

    sequence: int
    previous: str
    event: TrailEvent

    @property
    def party(self) -> str:
        return self.event.party

    def to_bytes(self) -> bytes:
        return canonical({"format": FORMAT, "sequence": self.sequence, "previous": self.previous, **self.event.to_json()})

    @classmethod
    def from_bytes(cls, data: bytes) -> TrailEntry:
        what = "trail entry"
        doc = _load(data, {"format", "sequence", "previous", *TrailEvent.FIELDS}, what)
        if doc["format"] != FORMAT:
            raise TrailError(f"{what}: unknown format {doc['format']!r}")
        sequence = _count(doc, "sequence", what)
        if sequence < 1:
            raise TrailError(f"{what}: sequence numbers start at 1")
        return cls(sequence, _hash_text(doc, "previous", what), TrailEvent.from_json(doc, what))


@dataclass(frozen=True)
class TrailHead:
    """The party's last entry (``sequence`` 0 and :data:`GENESIS` for an empty trail) and when it was written."""

    party: str
    sequence: int
    hash: str
    time_ms: int

    def to_bytes(self) -> bytes:
        return canonical({"purpose": HEAD_PURPOSE, "format": FORMAT, "party": self.party,
                          "sequence": self.sequence, "hash": self.hash, "time_ms": self.time_ms})

    @classmethod
    def from_bytes(cls, data: bytes) -> TrailHead:
        what = "trail head"
        doc = _load(data, {"purpose", "format", "party", "sequence", "hash", "time_ms"}, what)
        if doc["purpose"] != HEAD_PURPOSE or doc["format"] != FORMAT:
            raise TrailError(f"{what}: not a format-{FORMAT} trail head")
        return cls(_text(doc, "party", what), _count(doc, "sequence", what), _hash_text(doc, "hash", what),
                   _count(doc, "time_ms", what))


@dataclass(frozen=True)
class SignedHead:
    """A head and management's signature over its exact bytes (``signature``: the
    attested-signature envelope, opaque here)."""

    head: bytes
    signature: bytes

    def to_bytes(self) -> bytes:
        return canonical({"head": base64.b64encode(self.head).decode(),
                          "signature": base64.b64encode(self.signature).decode()})

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedHead:
        what = "signed trail head"
        doc = _load(data, {"head", "signature"}, what)
        try:
            return cls(base64.b64decode(_text(doc, "head", what), validate=True),
                       base64.b64decode(_text(doc, "signature", what), validate=True))
        except ValueError as exc:
            raise TrailError(f"{what}: not base64: {exc}") from None


def next_entry(head: TrailHead | None, event: TrailEvent) -> TrailEntry:
    """The entry that follows ``head`` (None: the party's first)."""
    if head is None:
        return TrailEntry(1, GENESIS, event)
    if head.party != event.party:
        raise TrailError(f"an event of {event.party!r} cannot follow the head of {head.party!r}")
    return TrailEntry(head.sequence + 1, head.hash, event)


def head_after(entry_bytes: bytes, entry: TrailEntry, time_ms: int) -> TrailHead:
    return TrailHead(entry.party, entry.sequence, digest(entry_bytes), time_ms)


# --- events from the platform's records ----------------------------------------------------


def _owned(files: Iterable[tuple[str, str, tuple[str, ...]]], party: str) -> tuple[str, ...]:
    return tuple(sorted({data_id for data_id, _, owners in files if party in owners}))


def task_ended_events(task: TaskRecord, time_ms: int) -> list[TrailEvent]:
    """One event per party whose files an ended task was given, if it was ever handed to an
    execution node (``attempts`` > 0): a task that never started received no file.

    ``files_written`` lists the outputs the result wrote (Finished tasks only: only then
    are outputs recorded); ``receipt`` is the receipt the result carries (``docs/receipts.md``),
    kept as opaque bytes."""
    return _ending_events(task, time_ms, EventKind.TASK_ENDED)


def late_receipt_events(task: TaskRecord, time_ms: int) -> list[TrailEvent]:
    """The receipt of a canceled run, which its node reports after the task ended: to the
    same parties as the task's end, with the same files."""
    if task.status != TaskStatus.CANCELED or not task.result.receipt:
        return []
    return _ending_events(task, time_ms, EventKind.RECEIPT)


def _ending_events(task: TaskRecord, time_ms: int, kind: EventKind) -> list[TrailEvent]:
    if not task.status.terminal or task.attempts == 0:
        return []
    inputs = [(external_id(Kind.INPUT, f.uuid), name, f.owner) for name, f in task.assigned_inputs.items()]
    written = set(task.result.outputs.tags_map) if task.status == TaskStatus.FINISHED and task.result.outputs else set()
    outputs = [(external_id(Kind.OUTPUT, f.uuid), name, f.owner) for name, f in task.assigned_outputs.items()]
    parties = sorted({owner for _, _, owners in inputs + outputs for owner in owners})
    task_id = external_id(Kind.TASK, task.uuid)
    digest = consent.task_digest(task)
    prefix = "ended" if kind == EventKind.TASK_ENDED else kind.value
    return [
        TrailEvent(
            event_id=f"{prefix}-{task.uuid}",
            kind=kind,
            party=party,
            task_id=task_id,
            time_ms=time_ms,
            task_digest=digest,
            outcome=task.status.name.capitalize(),
            files_read=_owned(inputs, party),
            files_written=_owned([o for o in outputs if o[1] in written], party),
            receipt=task.result.receipt,
        )
        for party in parties
    ]


def approval_event(task: TaskRecord, party: str, kind: EventKind, time_ms: int, nonce: str,
                   task_digest: str = "", outcome: str = "") -> TrailEvent:
    """A party approved (or withdrew its approval of, or refused) a task; ``nonce`` makes the
    event id unique, since a party may approve the same task again after its approval was
    voided. ``outcome``: a refusal's reason."""
    return TrailEvent(
        event_id=f"{kind.value}-{task.uuid}-{nonce}",
        kind=kind,
        party=party,
        task_id=external_id(Kind.TASK, task.uuid),
        time_ms=time_ms,
        task_digest=task_digest,
        outcome=outcome,
    )


def pending_writes(events: Sequence[TrailEvent], signal: bytes) -> list[tuple[bytes, bytes | None]]:
    """The storage writes that record ``events`` as pending, to go in the same transaction
    as their cause, and the signal that wakes management."""
    if not events:
        return []
    return [*((pending_key(e.party, e.event_id), e.to_bytes()) for e in events), (TRAIL_SIGNAL_KEY, signal)]


# --- verification ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"check": self.name, "ok": self.ok, "reason": self.reason}


def _entries_check(party: str, raw: Sequence[bytes]) -> tuple[Check, list[TrailEntry | None]]:
    entries: list[TrailEntry | None] = []
    problems: list[str] = []
    for position, data in enumerate(raw, 1):
        try:
            entry = TrailEntry.from_bytes(data)
        except TrailError as exc:
            problems.append(f"entry at position {position}: {exc}")
            entries.append(None)
            continue
        if entry.party != party:
            problems.append(f"entry at position {position} belongs to {entry.party!r}, not {party!r}")
        entries.append(entry)
    if problems:
        return Check("entries", False, "; ".join(problems)), entries
    return Check("entries", True, f"{len(raw)} entries decode and all belong to {party!r}"), entries


def _sequence_check(entries: Sequence[TrailEntry | None]) -> Check:
    for position, entry in enumerate(entries, 1):
        if entry is None:
            return Check("sequence", False, f"entry at position {position} does not decode")
    numbers = [entry.sequence for entry in entries if entry is not None]
    expected = list(range(1, len(numbers) + 1))
    if numbers == expected:
        return Check("sequence", True, f"entries 1 to {len(numbers)} in order, none missing")
    missing = sorted(set(range(1, max(numbers) + 1)) - set(numbers))
    if missing:
        return Check("sequence", False, f"entry {missing[0]} is missing")
    repeated = sorted({n for n in numbers if numbers.count(n) > 1})
    if repeated:
        return Check("sequence", False, f"entry {repeated[0]} appears more than once")
    position = next(p for p, (n, e) in enumerate(zip(numbers, expected, strict=True), 1) if n != e)
    return Check("sequence", False, f"entries are out of order (position {position} holds entry {numbers[position - 1]})")


def _links_check(raw: Sequence[bytes], entries: Sequence[TrailEntry | None]) -> Check:
    expected = GENESIS
    for position, (data, entry) in enumerate(zip(raw, entries, strict=True), 1):
        if entry is None:
            return Check("links", False, f"entry at position {position} does not decode")
        if entry.previous != expected:
            return Check("links", False, f"entry {entry.sequence} does not follow the entry before it "
                                         f"(it names previous {entry.previous[:16]}…, the chain has {expected[:16]}…): "
                                         "an entry was removed, reordered or altered")
        expected = digest(data)
    return Check("links", True, "each entry holds the hash of the one before it")


def _head_check(party: str, raw: Sequence[bytes], head: TrailHead) -> Check:
    if head.party != party:
        return Check("head", False, f"the head belongs to {head.party!r}, not {party!r}")
    last = (len(raw), digest(raw[-1])) if raw else (0, GENESIS)
    if head.sequence != last[0]:
        return Check("head", False, f"the signed head names entry {head.sequence}, the trail has {last[0]} entries")
    if head.hash != last[1]:
        return Check("head", False, f"the signed head's hash does not match entry {head.sequence}: it was altered")
    return Check("head", True, f"the head names entry {head.sequence} and its hash")


def verify_chain(party: str, raw_entries: Sequence[bytes], head_bytes: bytes) -> list[Check]:
    """Every structural check of ``party``'s trail, each with its reason: entries decode and
    are the party's, sequence 1..n, links, and the head names the last entry. (The head's
    signature is checked apart, against the platform's trust anchors.) An empty
    ``head_bytes`` means the platform holds no head: right only for an empty trail."""
    entries_check, entries = _entries_check(party, raw_entries)
    checks = [entries_check, _sequence_check(entries), _links_check(raw_entries, entries)]
    if not head_bytes:
        if raw_entries:
            checks.append(Check("head", False, f"{len(raw_entries)} entries but no signed head"))
        else:
            checks.append(Check("head", True, "the trail is empty and has no head"))
        return checks
    try:
        head = TrailHead.from_bytes(head_bytes)
    except TrailError as exc:
        checks.append(Check("head", False, str(exc)))
    else:
        checks.append(_head_check(party, raw_entries, head))
    return checks


def describe(entry: TrailEntry) -> dict[str, Any]:
    """A reader's view of an entry (the receipt as base64)."""
    doc = entry.event.to_json()
    return {"sequence": entry.sequence, "previous": entry.previous, **doc}
