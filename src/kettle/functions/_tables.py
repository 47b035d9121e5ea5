"""Numeric tables (``spec/functions.md`` §5.2): one record per line, ``,``-separated numbers.

Used by GBDT, logistic regression and PCA. Lines follow :mod:`._lines`; a line
is trimmed and must not be empty (``Empty line``); every field must be a float
literal of Appendix A.1. Fields are not trimmed, except by
:func:`iter_trimmed_records` (GBDT prediction), which also refuses an empty
field (``Empty feature``). Within a line, a field that does not parse is
reported before a wrong field count, as the reference parses the whole line first.

Rows are converted a chunk at a time, so memory stays at the table's size and
reading costs little more than numpy's own text conversion.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np

from . import FunctionError
from ._lines import decode_utf8, iter_lines, trim
from ._numbers import FLOAT_PATTERN, check_float_text, parse_double

EMPTY_LINE = "Empty line"
EMPTY_FEATURE = "Empty feature"
CHUNK_ROWS = 1 << 16

_RECORD = re.compile(rf"{FLOAT_PATTERN}(?:,{FLOAT_PATTERN})*")
_PLAIN_NUMBERS = re.compile(r"[0-9+\-.eE,]*")


def column_error(got: int, expected: int) -> FunctionError:
    return FunctionError(f"Data format error: column len = {got}, expected = {expected}")


def iter_trimmed_records(reader: BinaryIO) -> Iterator[list[str]]:
    """The fields of every line, each trimmed, not empty and a float literal (not yet converted).

    GBDT prediction's rule; its rows need not all have the same number of fields."""
    for raw in iter_lines(reader):
        line = trim(decode_utf8(raw))
        if not line:
            raise FunctionError(EMPTY_LINE)
        if _RECORD.fullmatch(line) is not None:  # no white space: nothing to trim, no empty field
            yield line.split(",")
            continue
        fields = [trim(field) for field in line.split(",")]
        for field in fields:
            if not field:
                raise FunctionError(EMPTY_FEATURE)
            check_float_text(field)
        yield fields


def iter_table(
    reader: BinaryIO, columns: int, *, single: bool = False, chunk_rows: int = CHUNK_ROWS
) -> Iterator[np.ndarray]:
    """The table in chunks of up to ``chunk_rows`` rows × ``columns`` (float32 if ``single``, else float64)."""
    dtype = np.float32 if single else np.float64
    lines: list[str] = []
    for raw in iter_lines(reader):
        try:
            lines.append(trim(decode_utf8(raw)))
        except FunctionError:
            _exact_rows(lines, columns, dtype)  # an error in an earlier line is the one reported
            raise
        if len(lines) == chunk_rows:
            yield _chunk(lines, columns, dtype)
            lines = []
    if lines:
        yield _chunk(lines, columns, dtype)


def _chunk(lines: list[str], columns: int, dtype: type) -> np.ndarray:
    """The rows of ``lines``, or the error of the first bad line.

    Fast path: on text made only of ``[0-9+-.eE,]``, Python's ``float`` accepts
    exactly the strings of A.1's grammar, so one character check over the chunk
    and numpy's conversion validate it; anything else (``inf``, an error) is
    checked line by line, in order, by :func:`_exact_rows`.
    """
    text = ",".join(lines)
    if all(lines) and _PLAIN_NUMBERS.fullmatch(text) is not None and text.count(",") == len(lines) * columns - 1:
        fields = text.split(",")
        if all(line.count(",") == columns - 1 for line in lines):
            try:
                # Through float64 even for single: the text is correctly rounded to double first (A.1).
                return np.array(fields, dtype=np.float64).astype(dtype).reshape(len(lines), columns)
            except ValueError:
                pass
    return _exact_rows(lines, columns, dtype)


def _exact_rows(lines: list[str], columns: int, dtype: type) -> np.ndarray:
    rows = []
    for line in lines:
        if not line:
            raise FunctionError(EMPTY_LINE)
        fields = line.split(",")
        values = [parse_double(field) for field in fields]
        if len(values) != columns:
            raise column_error(len(values), columns)
        rows.append(values)
    return np.array(rows, dtype=np.float64).astype(dtype).reshape(len(lines), columns)


def read_table(reader: BinaryIO, columns: int, *, single: bool = False) -> np.ndarray:
    """The whole table as one ``rows × columns`` array (``0 × columns`` when the input is empty)."""
    chunks = list(iter_table(reader, columns, single=single))
    if not chunks:
        return np.empty((0, columns), dtype=np.float32 if single else np.float64)
    return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
