"""``builtin-private-join-and-compute`` (``spec/functions.md`` §5.9).

N parties each bring a file of ``identity : amount`` lines; every party gets the
same output: the identities present in all N files, each with the sum of its
amounts (unsigned 32-bit, wrapping like the reference's release build).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from . import BuiltinFunction, FunctionError, FunctionRuntime
from ._lines import decode_utf8, trim
from .arguments import USIZE

TOO_FEW_PARTIES = "The demo requires at least two parties!"

U32_MASK = 0xFFFFFFFF
_U32_TEXT = re.compile(r"\+?[0-9]+")
"""Rust's ``u32::from_str`` grammar (Appendix A.2); ``[0-9]`` because ``\\d`` also matches non-ASCII digits."""


def parse_u32(text: str) -> int | None:
    if _U32_TEXT.fullmatch(text) is None:
        return None
    value = int(text)
    return value if value <= U32_MASK else None


def parse_amounts(data: bytes) -> dict[str, int]:
    """One party's file: identity → amount; malformed lines are skipped, a repeated identity's last line wins."""
    amounts: dict[str, int] = {}
    for piece in decode_utf8(data).split("\n"):
        piece = trim(piece)
        # The reference's minimum is 3 *bytes*; a piece of 3 or more characters has at least that many.
        if len(piece) < 3 and len(piece.encode("utf-8")) < 3:
            continue
        parts = piece.split(":")
        if len(parts) != 2:
            continue
        amount = parse_u32(trim(parts[1]))
        if amount is not None:
            amounts[trim(parts[0])] = amount
    return amounts


def private_join_and_compute(arguments: dict[str, Any], runtime: FunctionRuntime) -> str:
    parties: int = arguments["num_user"]
    # Each input is opened only after the previous one was read and joined, as in the
    # reference, so which failure a task reports (a bad file or a missing one) is the same.
    with runtime.open_input("input_data0") as reader:
        totals = parse_amounts(reader.read())
    for i in range(1, parties):
        with runtime.open_input(f"input_data{i}") as reader:
            amounts = parse_amounts(reader.read())
        totals = {
            identity: (amounts[identity] + total) & U32_MASK
            for identity, total in totals.items()
            if identity in amounts
        }
    # The reference writes in hash-map order; sorting makes the outputs reproducible. Python
    # compares strings by code point, which is the byte order of their UTF-8 encodings.
    result = "".join(f"{identity}, {total}\n" for identity, total in sorted(totals.items())).encode("utf-8")
    for i in range(parties):
        with runtime.create_output(f"output_data{i}") as writer:
            writer.write(result)
    return f"{parties} users join the task in total."


def check_parties(arguments: dict[str, Any]) -> None:
    if arguments["num_user"] < 2:
        raise FunctionError(TOO_FEW_PARTIES)


def file_names(arguments: dict[str, Any]) -> tuple[Iterator[str], Iterator[str]]:
    # Lazy: num_user may be huge, and checking a task stops at the first missing name.
    parties = range(arguments["num_user"])
    return (f"input_data{i}" for i in parties), (f"output_data{i}" for i in parties)


FUNCTION = BuiltinFunction(
    name="builtin-private-join-and-compute",
    run=private_join_and_compute,
    arguments={"num_user": USIZE},
    inputs=("input_data0", "…", "input_data<num_user-1>"),
    outputs=("output_data0", "…", "output_data<num_user-1>"),
    files=file_names,
    validate=check_parties,
    description="Sums the amounts of the identities that every party's file contains; every party gets the result.",
)
