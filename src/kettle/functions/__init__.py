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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

from .arguments import ArgType, ArgumentsError, parse_arguments

FUNCTION_LOGGER_PREFIX = "teaclave_function::"
HOST_LOGGER = "teaclave_executor_context::context"
"""The reference's module path for the file API's ERROR lines (functions.md §4.5)."""
FUNCTION_LOGGERS = (FUNCTION_LOGGER_PREFIX, HOST_LOGGER)
"""Loggers whose records belong to the task's log (captured with ``save_log``), not the node's."""
NOT_FOUND = "Function not found."

_MODULE_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")


class FunctionError(Exception):
    """A failure whose text is the task's failure reason, verbatim (e.g. ``Function not found.``)."""


class FunctionRuntime(Protocol):
    """Files of the running task, by the names registered with the function (§4.1–4.2)."""

    def open_input(self, name: str) -> BinaryIO: ...

    def create_output(self, name: str) -> BinaryIO: ...


Run = Callable[[dict[str, Any], FunctionRuntime], str]


FileNames = Callable[[dict[str, Any]], tuple[Iterable[str], Iterable[str]]]
"""(typed arguments) → (input names, output names), for functions whose files depend on them.
May be lazy: checking a task stops at the first missing name."""

Validate = Callable[[dict[str, Any]], None]
"""Raises :class:`FunctionError` for argument values the function refuses (e.g. too few parties)."""


@dataclass(frozen=True)
class BuiltinFunction:
    name: str
    """The exact registered name that selects it."""
    run: Run
    arguments: Mapping[str, ArgType] = field(default_factory=dict)
    inputs: tuple[str, ...] = ()
    """Input names it opens (clients must register and assign them, §5.1), as listings show them."""
    outputs: tuple[str, ...] = ()
    description: str = ""
    files: FileNames | None = None
    """Set when the file names depend on the arguments; ``inputs``/``outputs`` then only describe them."""
    validate: Validate | None = None
    """The function's own checks of argument values: run before the function, and when a task is created."""

    def call(self, arguments: Any, runtime: FunctionRuntime) -> str:
        typed = parse_arguments(arguments, self.arguments)
        if self.validate is not None:
            self.validate(typed)  # before any file is touched, as the reference checks them
        return self.run(typed, runtime)

    def file_names(self, typed: dict[str, Any]) -> tuple[Iterable[str], Iterable[str]]:
        """(inputs, outputs) the function opens, given its typed arguments."""
        return self.files(typed) if self.files else (self.inputs, self.outputs)

    def check_task(self, arguments: Any, inputs: Iterable[str], outputs: Iterable[str]) -> None:
        """Refuse, before a task exists, what would certainly fail it when it runs.

        The arguments must fit the declared types (deferred ones included) and
        pass :attr:`validate`, and every file the function opens must be among
        the task's inputs/outputs: built-ins have no optional files (§5.1).
        Raises :class:`TaskMismatch`."""
        try:
            typed = parse_arguments(arguments, self.arguments, declared=True)
            if self.validate is not None:
                self.validate(typed)
        except ArgumentsError as exc:
            raise TaskMismatch(f"arguments do not fit {self.name}: {exc.detail}") from None
        except FunctionError as exc:
            raise TaskMismatch(f"arguments refused by {self.name}: {exc}") from None
        needed_inputs, needed_outputs = self.file_names(typed)
        for kind, needed, given in (("input", needed_inputs, set(inputs)), ("output", needed_outputs, set(outputs))):
            for name in needed:
                if name not in given:
                    raise TaskMismatch(f"{self.name} needs an {kind} file named {name!r}")


class TaskMismatch(Exception):
    """A task definition that cannot run its built-in (the text says why)."""


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
    """Every built-in, by name, sorted (imports every function module)."""
    found: dict[str, BuiltinFunction] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        function = getattr(importlib.import_module(f"{__name__}.{info.name}"), "FUNCTION", None)
        if isinstance(function, BuiltinFunction):
            found[function.name] = function
    return dict(sorted(found.items()))
