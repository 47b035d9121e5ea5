"""External identifiers: ``<prefix>-<uuid>`` (``spec/platform.md`` §0.1)."""

from __future__ import annotations

import uuid
from enum import StrEnum


class Kind(StrEnum):
    INPUT = "input"
    OUTPUT = "output"
    FUNCTION = "function"
    TASK = "task"


def new_uuid() -> str:
    return str(uuid.uuid4())


def external_id(kind: Kind, bare: str) -> str:
    return f"{kind.value}-{bare}"


def parse_external_id(text: str, kind: Kind) -> str | None:
    """The canonical bare UUID of ``text`` if it names an object of ``kind``, else None.

    Split at the first ``-``; the rest must be a UUID in any form Python accepts
    (hyphenated, 32 hex digits, ``urn:uuid:``), re-rendered lowercase and hyphenated,
    as the reference does. A wrong prefix behaves like "not found" (None).
    """
    prefix, sep, rest = text.partition("-")
    if not sep or prefix != kind.value or not rest or len(rest) > 45:
        return None
    try:
        return str(uuid.UUID(rest))
    except ValueError:
        return None


def parse_bare_uuid(text: str) -> str | None:
    if len(text) > 45:
        return None
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None
