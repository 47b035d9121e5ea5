"""``builtin-ordered-set-join`` (``spec/functions.md`` §5.11): a merge join of two sorted CSV files.

Both inputs are read one record at a time and the output written as matches are
found, so files of any size join in constant memory. Keys are compared as
strings (byte order, which for UTF-8 is code-point order): the files must be
sorted that way by their key column, ascending or descending per ``ascending``;
sortedness is not checked, as in the reference.

The CSV dialect is the reference's (the Rust ``csv`` crate's defaults): ``,``,
``"`` quoting with doubled quotes, records ending in ``\\n``, ``\\r\\n`` or
``\\r``, blank lines skipped, nothing trimmed. Python's ``csv`` module parses
that dialect the same way once it is given lines with their terminators
(``newline=""``); this module counts records, lines and bytes itself, for the
reference's error text when a record's field count differs from the file's first
record: ``CSV error: record <index from 0> (line: <from 1>, byte: <offset>): …``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any, BinaryIO

from . import BuiltinFunction, FunctionError, FunctionRuntime
from ._lines import INVALID_UTF8
from .arguments import BOOL, USIZE

INVALID_INDEX = "invalid index"


class _Records:
    """The records of one CSV input, with the reference's field-count check."""

    def __init__(self, reader: BinaryIO) -> None:
        self._text = io.TextIOWrapper(reader, encoding="utf-8", errors="strict", newline="")
        self._byte = 0
        self._line = 1
        self._csv = csv.reader(self._lines(), strict=False)
        self._index = 0
        self._width: int | None = None

    def _lines(self) -> Iterator[str]:
        try:
            for line in self._text:
                # counted before the line is handed over: between records, the counters
                # are where the next record starts
                self._byte += len(line.encode("utf-8"))
                self._line += 1
                yield line
        except UnicodeDecodeError:
            raise FunctionError(INVALID_UTF8) from None

    def next(self) -> list[str] | None:
        while True:
            start = (self._line, self._byte)
            try:
                record = next(self._csv, None)
            except csv.Error as exc:
                raise FunctionError(f"CSV error: {exc}") from None
            if record is None:
                return None
            if not record:
                continue  # a blank line
            if self._width is None:
                self._width = len(record)
            elif len(record) != self._width:
                raise FunctionError(
                    f"CSV error: record {self._index} (line: {start[0]}, byte: {start[1]}): found record with "
                    f"{len(record)} fields, but the previous record has {self._width} fields"
                )
            self._index += 1
            return record


def _key(record: list[str], column: int) -> bytes:
    if column >= len(record):
        raise FunctionError(INVALID_INDEX)
    return record[column].encode("utf-8")


class _Output:
    """CSV out: ``\n`` endings, quotes only where needed, ``""`` for a record with no bytes at all."""

    def __init__(self, sink: BinaryIO) -> None:
        self.stream = io.TextIOWrapper(sink, encoding="utf-8", newline="")
        self._csv = csv.writer(self.stream, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)

    def write(self, record: list[str]) -> None:
        if not record or record == [""]:
            self.stream.write('""\n')
        else:
            self._csv.writerow(record)

    def finish(self) -> None:
        self.stream.flush()
        self.stream.detach()  # the runtime closes the file itself


def ordered_set_join(arguments: dict[str, Any], runtime: FunctionRuntime) -> str:
    left_column, right_column = arguments["left_column"], arguments["right_column"]
    ascending, drop = arguments["ascending"], arguments["drop"]
    count = 0
    with runtime.open_input("input_data1") as input1, runtime.open_input("input_data2") as input2, \
            runtime.create_output("output_result") as sink:
        left, right = _Records(input1), _Records(input2)
        output = _Output(sink)
        record1 = left.next()
        if record1 is None:
            raise FunctionError("input1 is empty")
        record2 = right.next()
        if record2 is None:
            raise FunctionError("input2 is empty")
        while True:
            key1, key2 = _key(record1, left_column), _key(record2, right_column)
            if key1 == key2:
                kept = record1[:left_column] + record1[left_column + 1:] if drop else record1
                output.write(kept + record2[:right_column] + record2[right_column + 1:])
                count += 1
                record1 = left.next()
                if record1 is None:
                    break
                record2 = right.next()
                if record2 is None:
                    break
            elif (key1 < key2) == ascending:
                record1 = left.next()
                if record1 is None:
                    break
            else:
                record2 = right.next()
                if record2 is None:
                    break
        output.finish()
    return f"{count} records"


FUNCTION = BuiltinFunction(
    name="builtin-ordered-set-join",
    run=ordered_set_join,
    arguments={"left_column": USIZE, "right_column": USIZE, "ascending": BOOL, "drop": BOOL},
    inputs=("input_data1", "input_data2"),
    outputs=("output_result",),
    description="Joins two CSV files sorted by their key columns (compared as text); one output record per match.",
)
