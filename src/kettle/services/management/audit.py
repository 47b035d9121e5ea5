"""The audit log of the management service: SaveLogs and QueryAuditLogs (``spec/platform.md`` §9, A.1).

Storage layout
==============

Teaclave keeps a Tantivy index in the storage service (``tantivy/<file>``).
Kettle stores the entries themselves and searches them in memory with
:mod:`kettle.model.audit`. Each SaveLogs batch becomes one record (or a few,
see below) in the storage service's platform partition, sealed at rest by the
storage service like every other value::

    audit-<20-digit microseconds>-<16 hex random>-<part, 4 digits>-<parts, 4 digits>
        value = b"\\x01" + SaveLogsRequest{logs: [Entry, …]}      (record format 1)
    auditbucket-<first 10 of those 20 digits>
        value = b""  (marker: "records exist in this ~2.8 hour time bucket")

Why this layout:

* **Appends are one write, never a read-modify-write.** A batch is written
  under a fresh key with create-only ``compare_and_put``, so saves never
  contend, nothing stored is ever rewritten, and a key collision (practically
  impossible with 64 random bits) can never overwrite a record. The first save
  into a new time bucket also writes that bucket's marker, before its record.
* **A prefix scan returns the log in insertion order.** Storage returns keys
  sorted bytewise; the zero-padded time makes that chronological. The time in
  the key is the *save* time, made strictly increasing by this service (it
  continues after the newest stored key even if the clock went back across a
  restart), so key order is exactly the order batches were saved — the
  insertion order that breaks ties within a second in query results.
* **Queries are incremental and no listing grows without bound.** The frontend
  saves up to once a second, so one flat ``audit-`` listing would pass the
  4 MiB gRPC message limit after about a day of traffic. Instead a query lists
  the bucket markers (~3,200 a year) and then the buckets; a bucket that no
  save can write to any more (its end lies before every key time this process
  can still assign) is listed once and remembered. Records never change once
  written, so decoded, tokenised batches are cached by key and a query fetches
  only records it has not seen. The store is written only by this service, so
  the caches never go stale.
* **A failed save stores nothing visible.** A batch whose encoding exceeds
  :data:`MAX_RECORD_BYTES` (kept well below the 4 MiB limit on the way to
  storage) is split into parts sharing time and random id; a batch is only
  read when all its parts are present. If writing a part fails, the parts
  already written are deleted (best effort) and, whatever remains, the
  incomplete batch is never returned. A retried batch gets a new key.

Every entry is held in memory once read (the in-memory counterpart of
Teaclave's index), and every query scans them; retention and compaction are
left for when audit volumes call for them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from ...errors import KettleError
from ...model.audit import (
    AuditError,
    IndexedEntry,
    check_limit,
    now_microseconds,
    parse_query,
    search,
    validate_entry,
)
from ...rpc.generated.kettle_management_pb2 import SaveLogsRequest
from ...rpc.generated.teaclave_common_pb2 import Entry
from ..platform_store import PlatformStore

log = logging.getLogger(__name__)

__all__ = ["AUDIT_PREFIX", "BUCKET_PREFIX", "MAX_PARTS", "MAX_RECORD_BYTES", "AuditLog"]

AUDIT_PREFIX = b"audit-"
BUCKET_PREFIX = b"auditbucket-"
RECORD_FORMAT = b"\x01"
TIME_DIGITS = 20
BUCKET_DIGITS = 10
"""Leading digits of the key time that name its bucket: 10 of 20 → buckets of 10^10 µs (~2.8 h)."""
MAX_RECORD_BYTES = 1024 * 1024
"""Largest encoded batch stored as one record; bigger batches are split into parts."""
MAX_PARTS = 9999
FETCH_CONCURRENCY = 16
STORAGE_ERROR_REASON = "storage service error"

_KEY = re.compile(rb"audit-(\d{20})-([0-9a-f]{16})-(\d{4})-(\d{4})\Z")
_MARKER = re.compile(rb"auditbucket-(\d+)\Z")


def _bucket_span() -> int:
    return 10 ** (TIME_DIGITS - BUCKET_DIGITS)


def _bucket_of(microsecond: int) -> int:
    return microsecond // _bucket_span()


def _bucket_marker(bucket: int) -> bytes:
    return BUCKET_PREFIX + f"{bucket:0{BUCKET_DIGITS}d}".encode()


def _bucket_records_prefix(bucket: int) -> bytes:
    return AUDIT_PREFIX + f"{bucket:0{BUCKET_DIGITS}d}".encode()


@dataclass(frozen=True)
class _RecordKey:
    """A parsed record key; ``group`` identifies one saved batch."""

    key: bytes
    microsecond: int
    nonce: bytes
    part: int
    parts: int

    @property
    def group(self) -> tuple[int, bytes]:
        return self.microsecond, self.nonce

    @classmethod
    def parse(cls, key: bytes) -> _RecordKey | None:
        match = _KEY.match(key)
        if match is None:
            return None
        micro, nonce, part, parts = match.groups()
        return cls(key, int(micro), nonce, int(part), int(parts))

    @staticmethod
    def render(microsecond: int, nonce: str, part: int, parts: int) -> bytes:
        return f"audit-{microsecond:0{TIME_DIGITS}d}-{nonce}-{part:04d}-{parts:04d}".encode()


def _encode(entries: Sequence[Entry]) -> bytes:
    return RECORD_FORMAT + SaveLogsRequest(logs=entries).SerializeToString()


def _decode(value: bytes) -> list[Entry]:
    """Raises ValueError for anything that is not a format-1 record."""
    if not value.startswith(RECORD_FORMAT):
        raise ValueError(f"unknown audit record format {value[:1]!r}")
    try:
        return list(SaveLogsRequest.FromString(value[len(RECORD_FORMAT) :]).logs)
    except DecodeError as exc:
        raise ValueError(f"audit record does not decode: {exc}") from None


def _encoded_size(entry: Entry) -> int:
    """Bytes the entry takes inside SaveLogsRequest (tag + length prefix + body)."""
    size = entry.ByteSize()
    return 1 + max(1, (size.bit_length() + 6) // 7) + size


def _split(entries: Sequence[Entry]) -> list[list[Entry]]:
    """Consecutive runs of entries, each encoding to at most MAX_RECORD_BYTES."""
    parts: list[list[Entry]] = [[]]
    used = len(RECORD_FORMAT)
    for entry in entries:
        size = _encoded_size(entry)
        if parts[-1] and used + size > MAX_RECORD_BYTES:
            parts.append([])
            used = len(RECORD_FORMAT)
        parts[-1].append(entry)
        used += size
    return parts


class AuditLog:
    """SaveLogs and QueryAuditLogs over the storage service. One instance per management process."""

    def __init__(self, store: PlatformStore) -> None:
        self._store = store
        self._records: dict[bytes, tuple[IndexedEntry, ...] | None] = {}
        """Decoded records by key; None marks a record that does not decode (logged once)."""
        self._final_listings: dict[int, list[_RecordKey]] = {}
        """Record keys of buckets no save can add to any more, by bucket."""
        self._known_buckets: set[int] = set()
        self._last_key_time: int | None = None
        """The newest key time stored or assigned; None until read from storage."""
        self._in_flight: list[int] = []
        """Key times of saves still writing."""
        self._key_lock = asyncio.Lock()

    async def save(self, entries: Sequence[Entry]) -> None:
        """Store one batch durably, all or nothing (the SaveLogs RPC).

        Every entry is validated first (``ip`` must be 16 bytes, Appendix A.1);
        one bad entry refuses the whole batch and nothing is stored. Raises
        :class:`AuditError` (``audit log error, reason: …``) on any failure.
        """
        for index, entry in enumerate(entries):
            validate_entry(entry, index)
            if _encoded_size(entry) > MAX_RECORD_BYTES:
                raise AuditError(f"entry {index} is larger than {MAX_RECORD_BYTES} bytes")
        if not entries:
            return
        batch = [Entry() for _ in entries]
        for copy, entry in zip(batch, entries):
            copy.CopyFrom(entry)  # the caller's messages stay theirs; the cache keeps its own
        parts = _split(batch)
        if len(parts) > MAX_PARTS:
            raise AuditError(f"batch is too large ({len(batch)} entries)")
        async with self._key_lock:
            last = await self._newest_key_time()
            key_time = self._last_key_time = max(now_microseconds(), last + 1)
            self._in_flight.append(key_time)
        nonce = secrets.token_hex(8)
        written: list[bytes] = []
        try:
            bucket = _bucket_of(key_time)
            if bucket not in self._known_buckets:
                await self._store.put(_bucket_marker(bucket), b"")  # before any record of the bucket
                self._known_buckets.add(bucket)
            for index, part in enumerate(parts):
                key = _RecordKey.render(key_time, nonce, index, len(parts))
                applied, _ = await self._store.compare_and_put(key, None, _encode(part))
                if not applied:
                    raise AuditError("audit record key is already taken")
                written.append(key)
        except KettleError as exc:
            await self._discard(written)
            if isinstance(exc, AuditError):
                raise
            log.error("saving %d audit entries failed: %s", len(batch), exc)
            raise AuditError(STORAGE_ERROR_REASON) from None
        finally:
            self._in_flight.remove(key_time)
        for key, part in zip(written, parts):
            self._records[key] = tuple(IndexedEntry.of(entry) for entry in part)

    async def query(self, query: str, limit: int) -> list[Entry]:
        """Entries matching ``query``, newest first, at most ``limit`` (QueryAuditLogs).

        The limit and the query are checked before storage is touched.
        Raises :class:`AuditError` for ``limit`` ≤ 0, an unparsable query, or
        a storage failure.
        """
        check_limit(limit)
        parsed = parse_query(query)
        documents = await self._documents()
        results = []
        for entry in search(parsed, documents, limit):
            copy = Entry()
            copy.CopyFrom(entry)  # callers may mutate what they get; the cache must not change
            results.append(copy)
        return results

    # --- keys -----------------------------------------------------------------------

    async def _keys_with_prefix(self, prefix: bytes) -> list[bytes]:
        try:
            return await self._store.keys_with_prefix(prefix)
        except KettleError as exc:
            log.error("listing audit records failed: %s", exc)
            raise AuditError(STORAGE_ERROR_REASON) from None

    async def _list_buckets(self) -> list[int]:
        buckets = []
        for key in await self._keys_with_prefix(BUCKET_PREFIX):
            match = _MARKER.match(key)
            if match is None or len(match.group(1)) != BUCKET_DIGITS:
                log.warning("ignoring a storage key that is not an audit bucket marker: %r", key)
                continue
            buckets.append(int(match.group(1)))
        self._known_buckets.update(buckets)
        return sorted(buckets)

    async def _list_bucket(self, bucket: int) -> list[_RecordKey]:
        keys = []
        for key in await self._keys_with_prefix(_bucket_records_prefix(bucket)):
            parsed = _RecordKey.parse(key)
            if parsed is None:
                log.warning("ignoring a storage key that is not an audit record: %r", key)
            else:
                keys.append(parsed)
        return keys

    async def _newest_key_time(
        self, buckets: list[int] | None = None, listings: dict[int, list[_RecordKey]] | None = None
    ) -> int:
        """The newest key time stored or assigned (read from storage once). Call under the key lock.

        Bucket listings it has to make are put into ``listings`` for reuse.
        """
        if self._last_key_time is None:
            newest = 0
            for bucket in reversed(buckets if buckets is not None else await self._list_buckets()):
                keys = await self._list_bucket(bucket)
                if listings is not None:
                    listings[bucket] = keys
                if keys:  # a marker without records: its first save failed
                    newest = max(k.microsecond for k in keys)
                    break
            self._last_key_time = newest
        return self._last_key_time

    async def _list_keys(self) -> list[_RecordKey]:
        """Every record key, in key order; buckets nobody can write to any more come from memory."""
        buckets = await self._list_buckets()
        # Listed under the lock while the last key time is first read: no save can run meanwhile.
        fresh: dict[int, list[_RecordKey]] = {}
        async with self._key_lock:
            # Every key time this process can still write is at least ``floor``; it is fixed
            # before any other bucket is listed, so a bucket ending below it is complete.
            floor = min([*self._in_flight, await self._newest_key_time(buckets, fresh) + 1])
        keys: list[_RecordKey] = []
        for bucket in buckets:
            listing = self._final_listings.get(bucket)
            if listing is None:
                listing = fresh[bucket] if bucket in fresh else await self._list_bucket(bucket)
                if (bucket + 1) * _bucket_span() <= floor:
                    self._final_listings[bucket] = listing
            keys.extend(listing)
        return keys

    # --- records --------------------------------------------------------------------

    async def _documents(self) -> list[IndexedEntry]:
        """Every stored entry of every complete batch, in insertion order; fills the cache."""
        keys = await self._list_keys()
        missing = [k.key for k in keys if k.key not in self._records]
        if missing:
            await self._fetch(missing)
        listed = {k.key for k in keys}
        for stale in [key for key in self._records if key not in listed]:
            del self._records[stale]  # a failed save's cleaned-up part
        documents: list[IndexedEntry] = []
        for _, group_iter in itertools.groupby(keys, key=lambda k: k.group):
            group = list(group_iter)
            records = [self._records.get(k.key) for k in group]
            complete = [(k.part, k.parts) for k in group] == [(i, group[0].parts) for i in range(group[0].parts)]
            if not complete or any(record is None for record in records):
                continue  # a save that failed or is still being written: invisible
            for record in records:
                documents.extend(record or ())
        return documents

    async def _fetch(self, keys: list[bytes]) -> None:
        limiter = asyncio.Semaphore(FETCH_CONCURRENCY)

        async def fetch(key: bytes) -> None:
            async with limiter:
                value = await self._store.get(key)
            if value is None:
                return  # deleted since it was listed: a failed save's cleanup
            try:
                self._records[key] = tuple(IndexedEntry.of(entry) for entry in _decode(value))
            except ValueError as exc:
                log.error("audit record %r is unreadable and is left out of queries: %s", key, exc)
                self._records[key] = None

        try:
            async with asyncio.TaskGroup() as group:
                for key in keys:
                    group.create_task(fetch(key))
        except* KettleError as failures:
            log.error("reading audit records failed: %s", failures.exceptions[0])
            raise AuditError(STORAGE_ERROR_REASON) from None

    async def _discard(self, keys: list[bytes]) -> None:
        """Best-effort removal of a failed save's parts (they are invisible either way)."""
        for key in keys:
            try:
                await self._store.delete(key)
            except KettleError as exc:
                log.warning("could not remove part %r of a failed audit save: %s", key, exc)
