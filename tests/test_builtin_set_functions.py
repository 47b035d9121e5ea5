"""``builtin-ordered-set-intersect`` (functions.md §5.10) and ``builtin-private-join-and-compute`` (§5.9)."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from kettle.executors.runtime import FileRuntime
from kettle.functions import BuiltinFunction, FunctionError, lookup
from kettle.functions.arguments import ArgumentsError
from kettle.functions.ordered_set_intersect import (
    _rust_char_debug,
    marks_exact,
    marks_vectorised,
    parse_exact,
    parse_fixed_width,
)

PSI = "builtin-ordered-set-intersect"
PJC = "builtin-private-join-and-compute"

# Teaclave's tests/fixtures/functions/ordered_set_intersect/psi0.txt (7 lines, no final newline).
PSI0 = [
    "3129a6f57c01547906c4f851de448d4a85716927d9aae5d13955303833dea3be",
    "3c2ef1901bee3a4866d68e16de37a270e4f16d166132f14da88b5d0bb5c5a369",
    "699bd76eb9764233eade0f5ca571e86b01b59ef6051e6008f2ab1723b1ba20e8",
    "6b51d431df5d7f141cbececcf79edf3dd861c3b4069f0b11661a3eefacbba918",
    "7a90238b179e5d28faa81dcffee49fcd200d591a61f9d0ba9d76eca3cb71a813",
    "fa3cfb3f1bb823aa9501f88f1f95f732ee6fef2c3a48be7f1d38037b216a549f",
    "ffff5954ee15325a8af0a1251b5e6dc255975484df25c5f9f24542479d8d340e",
]
# psi1.txt is not available here: five ascending lines with the reference's outputs
# (0101010 / 01101), i.e. sharing PSI0's lines 1, 3 and 5.
PSI1 = [
    "3129a6f57c01547906c4f851de448d4a85716927d9aae5d13955303833dea3bf",
    PSI0[1],
    PSI0[3],
    "7a90238b179e5d28faa81dcffee49fcd200d591a61f9d0ba9d76eca3cb71a812",
    PSI0[5],
]


class RecordingRuntime(FileRuntime):
    """A FileRuntime that remembers which files were opened or created, in order."""

    def __init__(self, inputs: dict[str, Path], outputs: dict[str, Path]) -> None:
        super().__init__(inputs, outputs)
        self.calls: list[str] = []

    def open_input(self, name: str) -> BinaryIO:
        self.calls.append(f"open {name}")
        return super().open_input(name)

    def create_output(self, name: str) -> BinaryIO:
        self.calls.append(f"create {name}")
        return super().create_output(name)


def function(name: str) -> BuiltinFunction:
    found = lookup(name)
    assert found is not None and found.name == name
    return found


# --- builtin-ordered-set-intersect ----------------------------------------------------------


class Psi:
    def __init__(self, tmp_path: Path, data1: bytes | None, data2: bytes | None) -> None:
        inputs = {}
        for name, data in (("input_data1", data1), ("input_data2", data2)):
            if data is not None:
                inputs[name] = tmp_path / name
                inputs[name].write_bytes(data)
        self.out1, self.out2 = tmp_path / "output_result1", tmp_path / "output_result2"
        self.runtime = RecordingRuntime(inputs, {"output_result1": self.out1, "output_result2": self.out2})

    def run(self, order: Any = "ascending") -> str:
        return function(PSI).call({"order": order}, self.runtime)

    def outputs(self) -> tuple[bytes, bytes]:
        return self.out1.read_bytes(), self.out2.read_bytes()


def lines(*values: str, end: str = "\n") -> bytes:
    return "".join(value + end for value in values).encode()


def psi(tmp_path: Path, data1: bytes, data2: bytes, order: str = "ascending") -> tuple[str, bytes, bytes]:
    run = Psi(tmp_path, data1, data2)
    summary = run.run(order)
    return (summary, *run.outputs())


def psi_error(tmp_path: Path, data1: bytes | None, data2: bytes | None, order: str = "ascending") -> str:
    with pytest.raises(FunctionError) as info:
        Psi(tmp_path, data1, data2).run(order)
    return str(info.value)


def test_teaclave_fixture_gives_the_reference_outputs(tmp_path: Path) -> None:
    psi0 = "\n".join(PSI0).encode()
    psi1 = "\n".join(PSI1).encode()
    assert psi(tmp_path, psi0, psi1) == ("3 common items", b"0101010", b"01101")
    # The same lines with final newlines, or CRLF endings, are the same input.
    assert psi(tmp_path, lines(*PSI0), lines(*PSI1, end="\r\n")) == ("3 common items", b"0101010", b"01101")


def test_shared_fixture_copy_matches_the_inlined_lines() -> None:
    shared = Path("/work/shared/vectors/teaclave-file-128/psi0.txt")
    if not shared.exists():
        pytest.skip("shared vectors not present")
    assert shared.read_bytes() == "\n".join(PSI0).encode()


def test_duplicates_mark_one_line_per_pair(tmp_path: Path) -> None:
    assert psi(tmp_path, lines("aa", "aa"), lines("aa")) == ("1 common items", b"10", b"1")
    # 02 three times against twice: the first two of each are paired; 05 once against twice.
    assert psi(tmp_path, lines("01", "02", "02", "02", "05"), lines("02", "02", "03", "05", "05")) == (
        "3 common items", b"01101", b"11010",
    )


def test_descending_order_walks_from_the_largest(tmp_path: Path) -> None:
    assert psi(tmp_path, lines("ff", "10", "10", "00"), lines("ff", "80", "10", "00", "00"), "desending") == (
        "3 common items", b"1101", b"10110",
    )
    assert psi_error(tmp_path, lines("00", "ff"), lines("ff"), "desending") == "Invalid ordering"


def test_hex_case_is_irrelevant_and_values_compare_as_bytes(tmp_path: Path) -> None:
    assert psi(tmp_path, lines("0A", "ABCD", "FF"), lines("0a", "abcd", "ff")) == ("3 common items", b"111", b"111")
    # Byte strings compare lexicographically, a prefix first: 0a < 0a00 < 0b.
    assert psi(tmp_path, lines("0a", "0a00", "0b"), lines("0a00")) == ("1 common items", b"010", b"1")
    # Values of different lengths are never equal.
    assert psi(tmp_path, lines("00", "01"), lines("0000", "0100")) == ("0 common items", b"00", b"00")


def test_empty_lines_are_empty_values(tmp_path: Path) -> None:
    assert psi(tmp_path, b"\nab\n", b"\n") == ("1 common items", b"10", b"1")
    assert psi(tmp_path, b"\n\n", b"\n\n\n") == ("2 common items", b"11", b"110")
    # Two final newlines are a final empty line, which is smaller than the one before it.
    assert psi_error(tmp_path, b"ab\n\n", b"ab\n") == "Invalid ordering"
    assert psi(tmp_path, b"ab\n\n", b"ab\n", "desending") == ("1 common items", b"10", b"1")


def test_empty_inputs_have_no_common_items(tmp_path: Path) -> None:
    assert psi(tmp_path, b"", lines("ab")) == ("0 common items", b"", b"0")
    assert psi(tmp_path, b"", b"") == ("0 common items", b"", b"")


def test_crlf_endings_lose_one_carriage_return(tmp_path: Path) -> None:
    assert psi(tmp_path, b"01\r\n02\r\n", b"02\n") == ("1 common items", b"01", b"1")
    # A \r not followed by \n stays in the line.
    assert psi_error(tmp_path, b"01\r\n02\r", b"02") == "Odd number of digits"
    assert psi_error(tmp_path, b"0\r", b"02") == "Invalid character '\\r' at position 1"
    assert psi_error(tmp_path, b"01\r\r\n", b"02") == "Odd number of digits"


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b"abc", "Odd number of digits"),
        (b"abcg", "Invalid character 'g' at position 3"),
        (b"a cd", "Invalid character ' ' at position 1"),
        (b" abc", "Invalid character ' ' at position 0"),
        (b"ab'c", "Invalid character '\\'' at position 2"),
        (b'ab"c', "Invalid character '\"' at position 2"),
        (b"ab\\c", "Invalid character '\\\\' at position 2"),
        (b"\x00a", "Invalid character '\\0' at position 0"),
        (b"\tabc", "Invalid character '\\t' at position 0"),
        (b"ab\x01c", "Invalid character '\\u{1}' at position 2"),
        (b"ab\x7fc", "Invalid character '\\u{7f}' at position 2"),
        # A non-ASCII character is reported by its first UTF-8 byte, shown as that code point,
        # at its byte offset; the length is counted in bytes too.
        ("é0".encode(), "Odd number of digits"),
        ("00é".encode(), "Invalid character 'Ã' at position 2"),
        ("a\u00a0b".encode(), "Invalid character 'Â' at position 1"),
        ("\u0080ab".encode(), "Invalid character 'Â' at position 0"),
        ("ab\u00ad".encode(), "Invalid character 'Â' at position 2"),
        (b"ab\xff\xfe", "stream did not contain valid UTF-8"),
        (b"\xc3", "stream did not contain valid UTF-8"),
    ],
)
def test_decode_errors_have_the_reference_texts(tmp_path: Path, line: bytes, error: str) -> None:
    assert psi_error(tmp_path, b"00\n" + line + b"\n", lines("00")) == error
    assert psi_error(tmp_path, lines("00"), line) == error


def test_rust_char_escapes_for_bytes_that_are_not_printable() -> None:
    # A reported non-ASCII byte is always a UTF-8 lead byte (0xC2-0xF4), so the other
    # bytes are checked on the escape function itself: C1 controls, NBSP and the soft
    # hyphen are escaped as Rust's char Debug does.
    assert [_rust_char_debug(b) for b in (0x80, 0x9F, 0xA0, 0xAD, 0xC3, 0x22)] == [
        "'\\u{80}'", "'\\u{9f}'", "'\\u{a0}'", "'\\u{ad}'", "'Ã'", "'\"'",
    ]


def test_the_first_offending_line_decides_the_error(tmp_path: Path) -> None:
    # Lines are read one at a time: an ordering error before invalid UTF-8 wins, and vice versa.
    assert psi_error(tmp_path, b"02\n01\n\xff\n", lines("00")) == "Invalid ordering"
    assert psi_error(tmp_path, b"01\n\xff\n00\n", lines("00")) == "stream did not contain valid UTF-8"
    assert psi_error(tmp_path, b"01\nzz\n00\n", lines("00")) == "Invalid character 'z' at position 0"
    # Input 1 is parsed completely before input 2.
    assert psi_error(tmp_path, b"01\n02\n0\n", b"zz\n") == "Odd number of digits"
    assert psi_error(tmp_path, lines("01", "02"), b"03\n01\n") == "Invalid ordering"


def test_order_must_be_ascending_or_the_references_spelling(tmp_path: Path) -> None:
    for order in ("descending", "Ascending", "asc", ""):
        assert psi_error(tmp_path, lines("00"), lines("00"), order) == "Invalid order"
    assert psi(tmp_path, lines("00"), lines("00"), "desending")[0] == "1 common items"


@pytest.mark.parametrize("arguments", [{}, {"order": None}, {"order": 1}, {"order": ["ascending"]}])
def test_argument_errors_come_after_the_outputs_were_created(tmp_path: Path, arguments: dict[str, Any]) -> None:
    run = Psi(tmp_path, lines("00"), lines("00"))
    run.out1.write_bytes(b"stale 1")
    run.out2.write_bytes(b"stale 2")
    with pytest.raises(ArgumentsError) as info:
        function(PSI).call(arguments, run.runtime)
    assert str(info.value) == "Cannot deserialize arguments"
    assert run.runtime.calls == [
        "open input_data1", "open input_data2", "create output_result1", "create output_result2",
    ]
    assert run.outputs() == (b"", b"")


def test_invalid_order_also_leaves_the_outputs_created(tmp_path: Path) -> None:
    run = Psi(tmp_path, lines("00"), lines("00"))
    run.out1.write_bytes(b"stale")
    with pytest.raises(FunctionError, match=r"^Invalid order$"):
        run.run("up")
    assert run.outputs() == (b"", b"")


def test_missing_files_fail_in_the_order_they_are_opened(tmp_path: Path) -> None:
    # Input errors come before output errors, and both before the arguments are looked at.
    assert psi_error(tmp_path, lines("00"), None, order="bogus") == "Invalid input file identifier."
    run = Psi(tmp_path, None, lines("00"))
    with pytest.raises(FunctionError, match=r"^Invalid input file identifier\.$"):
        run.run()
    assert run.runtime.calls == ["open input_data1"]
    (tmp_path / "a").write_bytes(b"00\n")
    runtime = FileRuntime(
        {"input_data1": tmp_path / "a", "input_data2": tmp_path / "a"}, {"output_result1": tmp_path / "o1"}
    )
    with pytest.raises(FunctionError, match=r"^Invalid output file identifier$"):
        function(PSI).call({"order": "bogus"}, runtime)


# --- the vectorised path against the exact one ----------------------------------------------------


def random_input(rng: random.Random, pool: list[bytes], ascending: bool) -> bytes:
    values = sorted((rng.choice(pool) for _ in range(rng.randint(2, 40))), reverse=not ascending)
    texts = [value.hex().upper() if rng.random() < 0.3 else value.hex() for value in values]
    end = "\r\n" if rng.random() < 0.3 else "\n"
    text = end.join(texts) + (end if rng.random() < 0.5 else "")
    return text.encode()


def random_pool(rng: random.Random, width: int) -> list[bytes]:
    """Six values, from bytes at the extremes (NUL handling, inversion); beyond 8 bytes their
    first 8 bytes come from only two choices, so values share the vectorised path's search prefix."""
    def some_bytes(count: int) -> bytes:
        return bytes(rng.choice((0, 1, 0x7F, 0x80, 0xFE, 0xFF)) for _ in range(count))

    heads = [some_bytes(min(width, 8)) for _ in range(2 if width > 8 else 6)]
    return [rng.choice(heads) + some_bytes(width - 8) for _ in range(6)]


@pytest.mark.parametrize("width", [1, 2, 3, 8, 9, 12])
@pytest.mark.parametrize("ascending", [True, False])
def test_vectorised_path_agrees_with_the_exact_one(width: int, ascending: bool) -> None:
    rng = random.Random(f"{width}-{ascending}")
    for _ in range(150):
        # A small pool, so values repeat within and across the lists.
        pool = random_pool(rng, width)
        data1, data2 = random_input(rng, pool, ascending), random_input(rng, pool, ascending)
        exact1, exact2 = parse_exact(data1, ascending), parse_exact(data2, ascending)
        fast1, fast2 = parse_fixed_width(data1, ascending), parse_fixed_width(data2, ascending)
        assert fast1 is not None and fast2 is not None
        assert fast1.values() == exact1 and fast2.values() == exact2
        vector_marks = marks_vectorised(fast1, fast2)
        exact_marks = marks_exact(exact1, exact2, ascending)
        assert vector_marks[0].tolist() == exact_marks[0].tolist()
        assert vector_marks[1].tolist() == exact_marks[1].tolist()


@pytest.mark.parametrize(
    "make_value",
    [
        lambda rng, i: rng.randbytes(4),
        lambda rng, i: rng.choice((b"\x00" * 8, b"\x00" * 7 + b"\x01", b"\xff" * 8)) + rng.randbytes(8),
        lambda rng, i: i.to_bytes(32, "big"),  # zero-padded ids: every value has the same 8-byte prefix
    ],
    ids=["random", "few-prefixes", "same-prefix"],
)
def test_vectorised_marks_agree_on_larger_random_sets(make_value: Callable[[random.Random, int], bytes]) -> None:
    rng = random.Random(7)
    for ascending in (True, False):
        universe = sorted({make_value(rng, i) for i in range(3000)}, reverse=not ascending)
        a = sorted(rng.sample(universe, 1500) * 2, reverse=not ascending)
        b = sorted(rng.sample(universe, 2000) + rng.sample(universe, 300), reverse=not ascending)
        data_a, data_b = ("\n".join(v.hex() for v in a)).encode(), ("\n".join(v.hex() for v in b)).encode()
        fast_a, fast_b = parse_fixed_width(data_a, ascending), parse_fixed_width(data_b, ascending)
        assert fast_a is not None and fast_b is not None
        marked_a, marked_b = marks_vectorised(fast_a, fast_b)
        exact_a, exact_b = marks_exact(a, b, ascending)
        assert marked_a.tolist() == exact_a.tolist() and marked_b.tolist() == exact_b.tolist()
        assert 0 < marked_a.sum() == marked_b.sum() < len(a)
        # And on sets (no repeats), where the marking takes its shortcut.
        a_set, b_set = sorted(set(a), reverse=not ascending), sorted(set(b), reverse=not ascending)
        fast_a = parse_fixed_width(("\n".join(v.hex() for v in a_set)).encode(), ascending)
        fast_b = parse_fixed_width(("\n".join(v.hex() for v in b_set)).encode(), ascending)
        assert fast_a is not None and fast_b is not None
        marked_a, marked_b = marks_vectorised(fast_a, fast_b)
        exact_a, exact_b = marks_exact(a_set, b_set, ascending)
        assert marked_a.tolist() == exact_a.tolist() and marked_b.tolist() == exact_b.tolist()


@pytest.mark.parametrize(
    "data",
    [
        b"ab\nzz\n",  # invalid character
        b"ab\naa\n",  # ordering
        b"ab\n\xc3\xa9\n",  # non-ASCII, valid UTF-8
        b"ab\n\xff\xfe\n",  # invalid UTF-8
        b"ab\nab  \n",  # spaces (which fromhex would skip)
        b"ab\n  \n",
        b"ab\r\nac\r\n\r\n",  # a final empty line
        b"ab\r\nac\rx\n",  # an \r where the line ending belongs must be part of one
        b"ab\nac\nad\r",  # a final \r that ends no line
        b"abc\nabd\n",  # odd length
        b"ab\n\nac\nad\n",
        b"ab\nabcd\nac\n",  # valid, but of different lengths
        b"ab\r\nac\n",  # valid, with mixed line endings
        b"ab",  # a single line without line ending
    ],
)
def test_vectorised_path_leaves_errors_and_irregular_input_to_the_exact_one(tmp_path: Path, data: bytes) -> None:
    assert parse_fixed_width(data, ascending=True) is None
    try:
        expected = parse_exact(data, ascending=True)
    except FunctionError as error:
        assert psi_error(tmp_path, data, lines("ab")) == str(error)
    else:
        assert psi(tmp_path, data, lines("ab"))[0] == f"{expected.count(bytes.fromhex('ab'))} common items"


def test_an_error_far_into_a_regular_input_is_still_the_exact_one(tmp_path: Path) -> None:
    values = [f"{i:08x}" for i in range(20_000)]
    for bad, error in (("0000zz00", "Invalid character 'z' at position 4"), ("00000000", "Invalid ordering")):
        broken = values[:15_000] + [bad] + values[15_001:]
        assert psi_error(tmp_path, lines(*broken), lines("00000000")) == error
    assert psi(tmp_path, lines(*values), lines(*values[::2]))[0] == "10000 common items"


# --- builtin-private-join-and-compute ------------------------------------------------------------

# Three banks in the shape of Teaclave's three_party_data fixture (``name : amount``);
# only the result is known (c → 470000, e → 5033000), these inputs produce it.
BANK_A = b"a : 1000\nb : 2000\nc : 100000\nd : 5000\ne : 3000000\n"
BANK_B = b"b : 1500\nc : 150000\ne : 2000000\nf : 100\n"
BANK_C = b"a : 800\nc : 220000\ne : 33000\ng : 10"


class Pjc:
    def __init__(self, tmp_path: Path, *files: bytes | None, outputs: int | None = None) -> None:
        inputs = {}
        for i, data in enumerate(files):
            if data is not None:
                inputs[f"input_data{i}"] = tmp_path / f"input{i}"
                inputs[f"input_data{i}"].write_bytes(data)
        self.outputs = [tmp_path / f"output{i}" for i in range(len(files) if outputs is None else outputs)]
        self.runtime = RecordingRuntime(inputs, {f"output_data{i}": path for i, path in enumerate(self.outputs)})

    def run(self, num_user: Any) -> str:
        return function(PJC).call({"num_user": num_user}, self.runtime)


def pjc(tmp_path: Path, *files: bytes) -> bytes:
    run = Pjc(tmp_path, *files)
    assert run.run(len(files)) == f"{len(files)} users join the task in total."
    results = {path.read_bytes() for path in run.outputs}
    assert len(results) == 1, "every party gets the same bytes"
    return results.pop()


def test_three_party_fixture(tmp_path: Path) -> None:
    run = Pjc(tmp_path, BANK_A, BANK_B, BANK_C)
    assert run.run(3) == "3 users join the task in total."
    assert [path.read_bytes() for path in run.outputs] == [b"c, 470000\ne, 5033000\n"] * 3
    # Inputs are read one after the other, then every output is created.
    assert run.runtime.calls == [
        "open input_data0", "open input_data1", "open input_data2",
        "create output_data0", "create output_data1", "create output_data2",
    ]


def test_two_parties(tmp_path: Path) -> None:
    assert pjc(tmp_path, b"x : 1\ny : 2\n", b"y : 40\nz : 3\n") == b"y, 42\n"
    assert pjc(tmp_path, b"x : 1\n", b"y : 2\n") == b""


def test_sums_wrap_at_32_bits(tmp_path: Path) -> None:
    assert pjc(tmp_path, b"x:4294967295\ny:4294967295", b"x:2\ny:0", b"x:4294967295\ny:1") == b"x, 0\ny, 0\n"


def test_a_repeated_identity_takes_its_last_amount(tmp_path: Path) -> None:
    assert pjc(tmp_path, b"x : 1\nx : 5\nx : oops\n", b"x : 10\n") == b"x, 15\n"


def test_malformed_lines_are_skipped(tmp_path: Path) -> None:
    skipped_or_kept = (
        "ab", ":5",  # shorter than 3 bytes
        "a:b:1", "no colon here",  # not exactly two parts
        "m : -1", "m : 4294967296", "m : 1 2", "m :", "m : 0x10", "m : 1.0", "m : ٣", "m : +",  # not a u32
        " : 7",  # an empty identity is one
        "p : +08",  # leading plus and zeros are fine
        "q : 4294967295",
        "\u00a0r : 3\u3000\r",  # Unicode White_Space and \r are trimmed
        "\x1cs : 4",  # U+001C is not White_Space: it stays in the identity
        "é:1",  # three bytes
    )
    party = "\n".join(skipped_or_kept).encode()
    every = b"\n".join(
        f"{name} : 1".encode() for name in ("ab", "a", "m", "", "p", "q", "r", "\x1cs", "é")
    )
    assert pjc(tmp_path, party, every) == (
        b", 8\n\x1cs, 5\np, 9\nq, 0\nr, 4\n" + "é, 2\n".encode()
    )


def test_identities_are_sorted_by_their_utf8_bytes(tmp_path: Path) -> None:
    data = "z : 1\n\u00e9 : 1\nA : 1\n\U0001f600 : 1\n\uffee : 1\n".encode()
    result = pjc(tmp_path, data, data).decode().splitlines()
    assert result == sorted(result, key=lambda line: line.encode()) and len(result) == 5
    assert result[0] == "A, 2" and result[-1] == "\U0001f600, 2"


@pytest.mark.parametrize("num_user", [0, 1])
def test_fewer_than_two_parties_fail_before_touching_a_file(tmp_path: Path, num_user: int) -> None:
    run = Pjc(tmp_path)
    with pytest.raises(FunctionError, match=r"^The demo requires at least two parties!$"):
        run.run(num_user)
    assert run.runtime.calls == []


@pytest.mark.parametrize("num_user", [-1, 2.0, "2", None, True])
def test_num_user_must_be_an_unsigned_integer(tmp_path: Path, num_user: Any) -> None:
    run = Pjc(tmp_path, BANK_A, BANK_B)
    with pytest.raises(ArgumentsError, match=r"^Cannot deserialize arguments$"):
        run.run(num_user)
    assert run.runtime.calls == []


def test_a_missing_input_fails_before_any_output_is_created(tmp_path: Path) -> None:
    run = Pjc(tmp_path, BANK_A, BANK_B, outputs=3)
    with pytest.raises(FunctionError, match=r"^Invalid input file identifier\.$"):
        run.run(3)
    assert run.runtime.calls == ["open input_data0", "open input_data1", "open input_data2"]
    assert not any(path.exists() for path in run.outputs)


def test_a_missing_output_fails_after_the_earlier_ones_were_written(tmp_path: Path) -> None:
    run = Pjc(tmp_path, BANK_A, BANK_B, BANK_C, outputs=2)
    with pytest.raises(FunctionError, match=r"^Invalid output file identifier$"):
        run.run(3)
    assert [path.read_bytes() for path in run.outputs] == [b"c, 470000\ne, 5033000\n"] * 2


def test_invalid_utf8_fails_when_that_input_is_read(tmp_path: Path) -> None:
    # input_data1 is read (and refused) before input_data2 is looked for.
    run = Pjc(tmp_path, BANK_A, b"x : 1\n\xff : 2\n", None)
    with pytest.raises(FunctionError, match=r"^stream did not contain valid UTF-8$"):
        run.run(3)
    assert run.runtime.calls == ["open input_data0", "open input_data1"]
