"""Strict JSON typing of built-in function arguments (``spec/functions.md`` §3.4).

The reference deserializes the argument object into a fixed record, so a JSON
value of the wrong kind is refused rather than coerced: ``4.0`` is not an
integer, ``"true"`` is not a boolean, a missing key is an error. Every refusal
has the one reason ``Cannot deserialize arguments``; the detail is not part of
the reason (but :class:`ArgumentsError` keeps it for logs and tests).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CANNOT_DESERIALIZE = "Cannot deserialize arguments"


class ArgumentsError(Exception):
    """The arguments do not fit the function's schema. ``str()`` is the reference reason."""

    def __init__(self, detail: str) -> None:
        super().__init__(CANNOT_DESERIALIZE)
        self.detail = detail


class ArgType:
    """A declared argument type: ``convert`` returns the Python value or raises ArgumentsError."""

    name: str = "value"
    optional: bool = False

    def convert(self, key: str, value: Any) -> Any:
        raise NotImplementedError

    @property
    def declared(self) -> ArgType:
        """The type a task's value must have (what task creation checks; see :class:`Deferred`)."""
        return self

    def describe(self) -> str:
        """How the type reads in listings, e.g. ``unsigned integer (u32)``."""
        return self.name


@dataclass(frozen=True)
class Unsigned(ArgType):
    """``u8`` / ``u32`` / ``usize``: a JSON integer within range; never a float, bool or string."""

    bits: int
    name: str = "unsigned integer"

    def describe(self) -> str:
        return f"{self.name} ({'usize' if self.bits == 64 else f'u{self.bits}'})"

    def convert(self, key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ArgumentsError(f"{key}: expected an unsigned integer, got {type(value).__name__}")
        if not 0 <= value < 2**self.bits:
            raise ArgumentsError(f"{key}: {value} is out of range for u{self.bits}")
        return value


@dataclass(frozen=True)
class Float(ArgType):
    """``f32`` / ``f64``: any JSON number (integers accepted)."""

    bits: int
    name: str = "number"

    def describe(self) -> str:
        return f"{self.name} (f{self.bits})"

    def convert(self, key: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ArgumentsError(f"{key}: expected a number, got {type(value).__name__}")
        result = float(value)
        if self.bits == 32 and math.isfinite(result) and abs(result) > 3.4028234663852886e38:
            raise ArgumentsError(f"{key}: {value} is out of range for f32")
        return result


@dataclass(frozen=True)
class String(ArgType):
    name: str = "string"

    def convert(self, key: str, value: Any) -> str:
        if not isinstance(value, str):
            raise ArgumentsError(f"{key}: expected a string, got {type(value).__name__}")
        return value


@dataclass(frozen=True)
class Boolean(ArgType):
    name: str = "boolean"

    def convert(self, key: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise ArgumentsError(f"{key}: expected true or false, got {type(value).__name__}")
        return value


@dataclass(frozen=True)
class Bytes(ArgType):
    """A JSON array of integers 0–255."""

    name: str = "byte array"

    def convert(self, key: str, value: Any) -> bytes:
        # bytes() checks the range and the type at C speed (images are megabytes long); it
        # accepts booleans and int subclasses, so the element types are checked to be exactly int.
        try:
            if isinstance(value, list) and set(map(type, value)) <= {int}:
                return bytes(value)
        except ValueError:
            pass
        raise ArgumentsError(f"{key}: expected an array of byte values")


@dataclass(frozen=True)
class OptionalArg(ArgType):
    """A missing key or ``null`` means absent (None); anything else must fit ``inner``."""

    inner: ArgType
    optional: bool = True

    def convert(self, key: str, value: Any) -> Any:
        return None if value is None else self.inner.convert(key, value)

    def describe(self) -> str:
        return self.inner.describe()


@dataclass(frozen=True)
class Deferred(ArgType):
    """Lets a value through the executor's schema check untouched (``None`` when the key is missing).

    The executor types a function's arguments before calling it, but where the
    reference reads an argument only after opening its files (ordered-set
    intersect's ``order``), a bad value must fail the task at that point, with
    the files already created. The function then applies ``inner`` itself
    (:meth:`check`). A missing key reaches ``inner`` as ``None``, which a
    required type refuses like a ``null``. Task creation checks ``inner`` at once.
    """

    inner: ArgType
    optional: bool = True

    def convert(self, key: str, value: Any) -> Any:
        return value

    def check(self, key: str, value: Any) -> Any:
        return self.inner.convert(key, value)

    @property
    def declared(self) -> ArgType:
        return self.inner

    def describe(self) -> str:
        return self.inner.describe()


U8, U32, USIZE = Unsigned(8), Unsigned(32), Unsigned(64)
F32, F64 = Float(32), Float(64)
STRING, BOOL, BYTES = String(), Boolean(), Bytes()


def parse_arguments(arguments: Any, schema: Mapping[str, ArgType], *, declared: bool = False) -> dict[str, Any]:
    """Check the argument object against ``schema``; keys not in the schema are ignored.

    ``declared`` checks every key against its :attr:`ArgType.declared` type, as
    task creation does, instead of the executor's (possibly deferred) one."""
    if not isinstance(arguments, dict):
        raise ArgumentsError("the arguments are not a JSON object")
    parsed: dict[str, Any] = {}
    for key, kind in schema.items():
        if declared:
            kind = kind.declared
        if key not in arguments:
            if not kind.optional:
                raise ArgumentsError(f"missing argument {key!r}")
            parsed[key] = None
            continue
        parsed[key] = kind.convert(key, arguments[key])
    return parsed
