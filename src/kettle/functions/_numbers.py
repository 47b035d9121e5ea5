"""Number text as the reference reads and writes it (``spec/functions.md`` Appendix A).

Python's own rules differ in small, visible ways: ``float()`` accepts
whitespace, ``_`` separators and non-ASCII digits, and ``repr`` writes
``1e-05`` where the reference writes ``0.00001`` (doubles) and ``1e+16`` where it
writes ``1e16``. Every built-in that parses or prints a number goes through here.
"""

from __future__ import annotations

import re

import numpy as np

from . import FunctionError

INVALID_FLOAT = "invalid float literal"
EMPTY_FLOAT = "cannot parse float from empty string"

FLOAT_PATTERN = r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|(?i:inf|infinity|nan))"
"""Rust's float grammar (A.1); ``[0-9]`` because ``\\d`` also matches non-ASCII digits."""

_FLOAT = re.compile(FLOAT_PATTERN)


def check_float_text(text: str) -> None:
    """Raise the reference's parse error unless ``text`` is a float literal of A.1."""
    if not text:
        raise FunctionError(EMPTY_FLOAT)
    if _FLOAT.fullmatch(text) is None:
        raise FunctionError(INVALID_FLOAT)


def parse_double(text: str) -> float:
    check_float_text(text)
    return float(text)


def parse_single(text: str) -> np.float32:
    """The single-precision value of ``text`` (through double: A.1's rare double rounding accepted)."""
    check_float_text(text)
    return np.float32(float(text))


def _digits_and_point(value: float | np.floating, single: bool) -> tuple[str, int]:
    """Shortest round-trip digits d₁…d_L and K such that the value is 0.d₁…d_L × 10^K (A.3 step 3)."""
    scientific = np.format_float_scientific(np.float32(value) if single else np.float64(value), unique=True, trim="-")
    mantissa, _, exponent = scientific.lstrip("-").partition("e")
    digits = mantissa.replace(".", "").rstrip("0") or "0"
    return digits, int(exponent) + 1


def format_shortest(value: float | np.floating, *, single: bool = False) -> str:
    """A.3: the reference's JSON float text (``None`` for NaN and infinities is the caller's ``null``)."""
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        return "null"
    sign = "-" if np.signbit(value) else ""
    if value == 0:
        return sign + "0.0"
    digits, point = _digits_and_point(value, single)
    length = len(digits)
    high, low = (13, -6) if single else (16, -5)
    if length <= point <= high:
        text = digits + "0" * (point - length) + ".0"
    elif 0 < point <= high:
        text = digits[:point] + "." + digits[point:]
    elif low < point <= 0:
        text = "0." + "0" * -point + digits
    else:
        text = _scientific(digits, point)
    return sign + text


def format_debug(value: float) -> str:
    """A.4: the reference's debug text of a double (PCA output)."""
    value = float(value)
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "inf" if value > 0 else "-inf"
    sign = "-" if np.signbit(value) else ""
    if value == 0:
        return sign + "0.0"
    magnitude = abs(value)
    if 1e-4 <= magnitude < 1e16:
        text = repr(magnitude)
        return sign + (text if "." in text else text + ".0")
    digits, point = _digits_and_point(magnitude, single=False)
    return sign + _scientific(digits, point)


def _scientific(digits: str, point: int) -> str:
    mantissa = digits if len(digits) == 1 else f"{digits[0]}.{digits[1:]}"
    return f"{mantissa}e{point - 1}"


def format_fixed(value: float | np.floating, decimals: int) -> str:
    """A.5: exact decimal expansion rounded ties-to-even; NaN/inf as the reference prints them."""
    value = float(value)
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{decimals}f}"


def fixed_lines(values: np.ndarray, decimals: int) -> bytes:
    """Each value with ``decimals`` fixed decimals (A.5) and ``\\n``: prediction outputs."""
    return "".join(format_fixed(value, decimals) + "\n" for value in values.tolist()).encode("ascii")
