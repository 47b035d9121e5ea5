"""Text conventions shared by the built-ins (``spec/functions.md`` §5.2): UTF-8, lines, trimming.

The reference reads text with Rust's standard library, so its rules are the ones
reproduced here rather than Python's: ``str.splitlines`` also splits at
``\\r``, ``\\x0b``, ``\\u2028`` …, and ``str.strip`` also strips U+001C–U+001F,
which are not Unicode White_Space.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from . import FunctionError

INVALID_UTF8 = "stream did not contain valid UTF-8"

WHITE_SPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
"""The Unicode White_Space property, which Rust's ``str::trim`` removes."""


def decode_utf8(data: bytes) -> str:
    """The whole text, or the reference's error for a stream that is not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise FunctionError(INVALID_UTF8) from None


def trim(text: str) -> str:
    """Rust's ``str::trim``: leading and trailing White_Space removed."""
    return text.strip(WHITE_SPACE)


def split_lines(data: bytes) -> list[bytes]:
    """The lines of ``data`` as Rust's ``BufRead::lines`` yields them, still undecoded.

    Split at ``\\n``; a ``\\r`` right before a ``\\n`` goes with it; what follows the
    last ``\\n`` is a line only if it is not empty (and keeps a final ``\\r``, which
    is not before a ``\\n``). Decoding is left to the caller because the reference
    checks UTF-8 line by line: an error in an earlier line wins over invalid UTF-8
    in a later one.
    """
    pieces = data.split(b"\n")
    last = pieces.pop()
    lines = [piece[:-1] if piece.endswith(b"\r") else piece for piece in pieces]
    if last:
        lines.append(last)
    return lines


def iter_lines(reader: BinaryIO) -> Iterator[bytes]:
    """The lines of a stream, by the rules of :func:`split_lines`, without reading it whole."""
    for raw in reader:
        if raw.endswith(b"\n"):
            raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
        yield raw

