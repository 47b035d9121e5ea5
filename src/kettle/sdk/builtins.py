"""What the built-in functions take and produce, for registering them and creating their tasks.

A built-in is selected by the name it is registered under (``spec/functions.md``
§5.1) and uses its argument keys and file names literally, so a client must
declare exactly those. This is the catalogue of the Kettle version installed
with this SDK; the platform checks a task against its own (CreateTask refuses a
built-in task whose arguments do not fit or whose files are missing)::

    from kettle.sdk import builtin_function

    gbdt = builtin_function("builtin-gbdt-train")
    client.register_function(gbdt.name, executor_type="builtin", arguments=gbdt.function_arguments(),
                             inputs=gbdt.function_inputs(), outputs=gbdt.function_outputs())
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..functions import BuiltinFunction, all_functions, lookup
from ..functions.arguments import ArgumentsError, parse_arguments
from .frontend import FunctionArgument, FunctionInput, FunctionOutput


@dataclass(frozen=True)
class BuiltinArgument:
    key: str
    type: str
    """e.g. ``unsigned integer (u32)``, ``number (f32)``, ``string``, ``boolean``, ``byte array``."""
    required: bool


@dataclass(frozen=True)
class BuiltinSpec:
    name: str
    description: str
    arguments: tuple[BuiltinArgument, ...]
    inputs: tuple[str, ...]
    """Input file names; where they depend on the arguments, a pattern such as ``input_data<num_user-1>``."""
    outputs: tuple[str, ...]
    files_depend_on_arguments: bool

    def function_arguments(self, arguments: Mapping[str, Any] | None = None) -> list[FunctionArgument]:
        """Its arguments, to register: the required ones and the optional ones among ``arguments``.

        All overwritable, as tasks give them typed values: a non-overwritable
        argument's default reaches the function as a JSON string, which a numeric
        or boolean argument refuses (§3.1). A task must give exactly the keys its
        function declares, so an optional argument is declared only if used."""
        given = arguments or {}
        return [FunctionArgument(a.key) for a in self.arguments if a.required or a.key in given]

    def function_inputs(self, arguments: Mapping[str, Any] | None = None) -> list[FunctionInput]:
        return [FunctionInput(name) for name in self.file_names(arguments)[0]]

    def function_outputs(self, arguments: Mapping[str, Any] | None = None) -> list[FunctionOutput]:
        return [FunctionOutput(name) for name in self.file_names(arguments)[1]]

    def file_names(self, arguments: Mapping[str, Any] | None = None) -> tuple[list[str], list[str]]:
        """(inputs, outputs) the function opens; ``arguments`` are needed when they decide the names."""
        function = _function(self.name)
        if function.files is None:
            return list(function.inputs), list(function.outputs)
        if arguments is None:
            raise ValueError(f"{self.name} opens files that depend on its arguments: pass them")
        try:
            typed = parse_arguments(dict(arguments), function.arguments, declared=True)
        except ArgumentsError as exc:
            raise ValueError(f"arguments do not fit {self.name}: {exc.detail}") from None
        inputs, outputs = function.file_names(typed)
        return list(inputs), list(outputs)


def builtin_functions() -> tuple[BuiltinSpec, ...]:
    """Every built-in function, sorted by name."""
    return tuple(_spec(function) for function in all_functions().values())


def builtin_function(name: str) -> BuiltinSpec:
    """The built-in registered exactly as ``name``; ValueError if there is none."""
    return _spec(_function(name))


def _function(name: str) -> BuiltinFunction:
    function = lookup(name)
    if function is None:
        raise ValueError(f"no built-in function is named {name!r}")
    return function


def _spec(function: BuiltinFunction) -> BuiltinSpec:
    arguments = tuple(
        BuiltinArgument(key, kind.describe(), required=not kind.declared.optional)
        for key, kind in function.arguments.items()
    )
    return BuiltinSpec(
        name=function.name,
        description=function.description,
        arguments=arguments,
        inputs=function.inputs,
        outputs=function.outputs,
        files_depend_on_arguments=function.files is not None,
    )
