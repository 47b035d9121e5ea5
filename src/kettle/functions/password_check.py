"""``builtin-password-check`` (``spec/functions.md`` §5.14): is a password in an exposed list?

The password is the first line of ``password``, trimmed; the exposed list is
streamed line by line (each trimmed; a blank line is the empty password and a
member), so a list of any size costs constant memory. Comparison is exact.
Kettle choices: an empty password file fails with ``Empty password file`` and
invalid UTF-8 with the standard text (the reference crashes on both).
"""

from __future__ import annotations

from typing import Any

from . import BuiltinFunction, FunctionError, FunctionRuntime
from ._lines import decode_utf8, iter_lines, trim

EMPTY_PASSWORD = "Empty password file"


def password_check(arguments: dict[str, Any], runtime: FunctionRuntime) -> str:
    with runtime.open_input("password") as reader:
        first = next(iter_lines(reader), None)
    if first is None:
        raise FunctionError(EMPTY_PASSWORD)
    password = trim(decode_utf8(first))
    with runtime.open_input("exposed_passwords") as reader:
        for line in iter_lines(reader):
            if trim(decode_utf8(line)) == password:
                return "true"
    return "false"


FUNCTION = BuiltinFunction(
    name="builtin-password-check",
    run=password_check,
    inputs=("password", "exposed_passwords"),
    description="Returns true if the password (first line of its file) is among the exposed passwords, else false.",
)
