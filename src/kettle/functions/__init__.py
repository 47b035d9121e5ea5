"""The built-in functions (``spec/functions.md`` §5), one module each, and their registry.

Adding a built-in is a one-file affair: create ``kettle/functions/<module>.py``
defining ``FUNCTION = BuiltinFunction(...)``, where ``<module>`` is the
registered name without its ``builtin-`` / ``builtin_`` prefix and with ``-``
turned into ``_`` (``builtin-echo`` → ``echo``,
``builtin_online_decrypt`` → ``online_decrypt``). Lookup imports only that module
(so one task does not pay for every function's dependencies; import heavy
libraries at module level freely) and then requires the module's declared name
to equal the requested one exactly, so ``builtin-online-decrypt`` does not find
``builtin_online_decrypt``.

A function receives its arguments already checked against its schema
(:mod:`kettle.functions.arguments`) and a :class:`FunctionRuntime` giving its
files by registered name. It returns the summary string (the task's return
value) or raises :class:`FunctionError` with the reference's failure text. Any
other exception also fails the task, with ``"<Type>: <message>"``. It logs
through :func:`function_logger`; those records become the task's log lines when
the task asked for them (``save_log``).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import pkgutil
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

from .arguments import ArgType, parse_arguments

FUNCTION_LOGGER_PREFIX = "teaclave_function::"
NOT_FOUND = "Function not found."

_MODULE_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")


class FunctionError(Exception):
    """A failure whose text is the task's failure reason, verbatim (e.g. ``Function not found.``)."""


class FunctionRuntime(Protocol):
    """Files of the running task, by the names registered with the function (§4.1–4.2)."""

    def open_input(self, name: str) -> BinaryIO: ...

    def create_output(self, name: str) -> BinaryIO: ...


Run = Callable[[dict[str, Any], FunctionRuntime], str]


@dataclass(frozen=True)
class BuiltinFunction:
    name: str
    """The exact registered name that selects it."""
    run: Run
    arguments: Mapping[str, ArgType] = field(default_factory=dict)
    inputs: tuple[str, ...] = ()
    """Input names it opens (clients must register and assign them, §5.1)."""
    outputs: tuple[str, ...] = ()
    description: str = ""

    def call(self, arguments: Any, runtime: FunctionRuntime) -> str:
        return self.run(parse_arguments(arguments, self.arguments), runtime)


def function_logger(module: str) -> logging.Logger:
    """The logger of a built-in: records show as ``[INFO teaclave_function::<module>] ...``."""
    return logging.getLogger(FUNCTION_LOGGER_PREFIX + module)


def module_for(name: str) -> str | None:
    """The module that would define the built-in ``name`` (None if the name cannot be one)."""
    for prefix in ("builtin-", "builtin_"):
        if name.startswith(prefix):
            module = name[len(prefix):].replace("-", "_")
            return module if _MODULE_NAME.match(module) else None
    return None


def lookup(name: str) -> BuiltinFunction | None:
    """The built-in registered exactly as ``name``, or None."""
    module = module_for(name)
    if module is None or importlib.util.find_spec(f"{__name__}.{module}") is None:
        return None
    function = getattr(importlib.import_module(f"{__name__}.{module}"), "FUNCTION", None)
    if isinstance(function, BuiltinFunction) and function.name == name:
        return function
    return None


def all_functions() -> dict[str, BuiltinFunction]:
    """Every built-in, by name (imports every function module)."""
    found: dict[str, BuiltinFunction] = {}
    for info in pkgutil.iter_modules(__path__):
        function = getattr(importlib.import_module(f"{__name__}.{info.name}"), "FUNCTION", None)
        if isinstance(function, BuiltinFunction):
            found[function.name] = function
    return found
