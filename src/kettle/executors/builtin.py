"""The built-in executor: selects a function of :mod:`kettle.functions` by its registered name.

The payload is ignored (§5.1); the name must match exactly; the argument object
is typed strictly by the function's schema before the function sees it.
"""

from __future__ import annotations

from typing import Any

from ..functions import NOT_FOUND, FunctionError, FunctionRuntime, lookup


def run_builtin(name: str, arguments: Any, payload: bytes, runtime: FunctionRuntime) -> str:
    function = lookup(name)
    if function is None:
        raise FunctionError(NOT_FOUND)
    summary = function.call(arguments, runtime)
    if not isinstance(summary, str):
        raise TypeError(f"built-in {name} returned {type(summary).__name__}, not a string")
    return summary
