"""Each party's listings: the tasks it participates in and the files it owns (Kettle).

Two indexes in the platform partition, written in the same storage transaction as the
record they point to, with empty values (the key says everything):

* ``party-task-<party>-<created, ms, 20 digits>-<task uuid>``: one per participant of a
  task (:func:`kettle.model.tasks.participants_of`), written with the task at CreateTask;
  ``ListMyTasks`` lists them newest first.
* ``party-file-<party>-<registered, ms, 20 digits>-<data id>``: one per owner of a file
  (``input-…`` / ``output-…``), written with the file record by every registration;
  ``ListMyFiles`` lists them in registration order.

``<party>`` is the user id in hex (:func:`kettle.model.trail.party_tag`): user ids may
hold ``-``, hex never does, so one party's prefix never covers another's. The fixed-width
time makes the keys' byte order their time order. Records stored before the indexes
existed are indexed once, at management's start, with time 0 (:data:`BACKFILL_DONE_KEY`
marks it done): they list as the oldest.

A page's cursor is the key's tail after the party's prefix (``<time>-<id>``): the next
page starts after it, so each id is listed once across pages even while records are added.

Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import InvalidArgument
from .ids import Kind, external_id
from .trail import party_tag

TASK_PREFIX = "party-task-"
FILE_PREFIX = "party-file-"
TIME_DIGITS = 20
PAGE_IDS = 500
"""Ids per ListMyTasks / ListMyFiles answer at most, whatever the request's limit."""
BACKFILL_DONE_KEY = b"party-index-backfilled"
"""Written once every record stored before the indexes existed has its entries."""
MAX_CURSOR_CHARS = TIME_DIGITS + 1 + 64
INVALID_CURSOR = "invalid cursor: pass the `next` of the previous page, or nothing for the first page"

_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_TASK_CURSOR = re.compile(rf"[0-9]{{{TIME_DIGITS}}}-{_UUID}")
_FILE_CURSOR = re.compile(rf"[0-9]{{{TIME_DIGITS}}}-(input|output)-{_UUID}")


# --- keys ---------------------------------------------------------------------------------


def _time(time_ms: int) -> str:
    if not 0 <= time_ms < 10**TIME_DIGITS:
        raise ValueError(f"time {time_ms} ms does not fit the index keys")
    return f"{time_ms:0{TIME_DIGITS}d}"


def party_tasks_prefix(party: str) -> bytes:
    return f"{TASK_PREFIX}{party_tag(party)}-".encode()


def party_task_key(party: str, created_ms: int, task_bare: str) -> bytes:
    return party_tasks_prefix(party) + f"{_time(created_ms)}-{task_bare}".encode()


def party_files_prefix(party: str) -> bytes:
    return f"{FILE_PREFIX}{party_tag(party)}-".encode()


def party_file_key(party: str, registered_ms: int, data_id: str) -> bytes:
    return party_files_prefix(party) + f"{_time(registered_ms)}-{data_id}".encode()


def task_index_writes(participants: Iterable[str], created_ms: int, task_bare: str) -> list[tuple[bytes, bytes]]:
    """The entries of a new task, one per participant, to write with the task record."""
    return [(party_task_key(p, created_ms, task_bare), b"") for p in sorted(set(participants))]


def file_index_writes(owners: Iterable[str], registered_ms: int, data_id: str) -> list[tuple[bytes, bytes]]:
    """The entries of a new file record, one per owner, to write with the record."""
    return [(party_file_key(o, registered_ms, data_id), b"") for o in sorted(set(owners))]


def indexed_id(key: bytes) -> tuple[str, str]:
    """(party tag, id) of an index key: the task uuid (``party-task-…``) or data id (``party-file-…``)."""
    text = key.decode(errors="replace")
    for prefix in (TASK_PREFIX, FILE_PREFIX):
        if text.startswith(prefix):
            tag, _, rest = text[len(prefix):].partition("-")
            _, _, ident = rest.partition("-")
            if tag and ident:
                return tag, ident
    raise ValueError(f"not a party index key: {key!r}")


# --- pages ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    ids: tuple[str, ...]
    next: str
    """The cursor of the page's last id ("" for an empty page)."""
    more: bool


def page_limit(requested: int) -> int:
    """0, or more than :data:`PAGE_IDS`: :data:`PAGE_IDS`."""
    return PAGE_IDS if requested <= 0 else min(requested, PAGE_IDS)


def check_cursor(after: str, *, files: bool) -> str:
    if after and (len(after) > MAX_CURSOR_CHARS or not (_FILE_CURSOR if files else _TASK_CURSOR).fullmatch(after)):
        raise InvalidArgument(INVALID_CURSOR)
    return after


def _page(keys: Iterable[bytes], prefix: bytes, after: str, limit: int, *, newest_first: bool,
          files: bool) -> Page:
    check_cursor(after, files=files)
    tails = sorted({k[len(prefix):].decode() for k in keys if k.startswith(prefix)}, reverse=newest_first)
    if after:
        tails = [t for t in tails if (t < after if newest_first else t > after)]
    shown = tails[:page_limit(limit)]
    ids = tuple(t[TIME_DIGITS + 1:] for t in shown)
    return Page(ids, shown[-1] if shown else "", len(tails) > len(shown))


def tasks_page(party: str, keys: Iterable[bytes], after: str, limit: int) -> Page:
    """The party's task ids (``task-…``), newest first, after the cursor ``after``."""
    page = _page(keys, party_tasks_prefix(party), after, limit, newest_first=True, files=False)
    return Page(tuple(external_id(Kind.TASK, bare) for bare in page.ids), page.next, page.more)


def files_page(party: str, keys: Iterable[bytes], after: str, limit: int) -> Page:
    """The party's data ids, oldest registration first, after the cursor ``after``."""
    return _page(keys, party_files_prefix(party), after, limit, newest_first=False, files=True)

