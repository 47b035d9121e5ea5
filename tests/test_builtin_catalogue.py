"""The catalogue of built-ins that clients see (SDK and ``kettle function list-builtins``)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from kettle.cli.main import app
from kettle.functions import all_functions
from kettle.sdk import BuiltinArgument, builtin_function, builtin_functions
from kettle.sdk.frontend import FunctionArgument, FunctionInput, FunctionOutput


def test_the_catalogue_lists_every_builtin_with_its_arguments_and_files() -> None:
    specs = builtin_functions()
    assert [spec.name for spec in specs] == sorted(all_functions())
    psi = builtin_function("builtin-ordered-set-intersect")
    # a deferred argument (checked by the function after opening its files) is still required
    assert psi.arguments == (BuiltinArgument("order", "string", required=True),)
    assert psi.function_arguments() == [FunctionArgument("order")]
    faces = builtin_function("builtin-face-detection")
    assert faces.function_arguments() == [FunctionArgument("image")]
    assert faces.function_arguments({"image": [], "score_thresh": 2.0}) == [
        FunctionArgument("image"), FunctionArgument("score_thresh")]
    assert psi.function_inputs() == [FunctionInput("input_data1"), FunctionInput("input_data2")]
    assert psi.function_outputs() == [FunctionOutput("output_result1"), FunctionOutput("output_result2")]
    for spec in specs:
        assert spec.description, f"{spec.name} has no description"
        assert all(argument.key and argument.type for argument in spec.arguments)


def test_files_that_depend_on_arguments_need_them() -> None:
    pjc = builtin_function("builtin-private-join-and-compute")
    assert pjc.files_depend_on_arguments
    assert pjc.arguments == (BuiltinArgument("num_user", "unsigned integer (usize)", required=True),)
    assert pjc.file_names({"num_user": 3}) == (
        ["input_data0", "input_data1", "input_data2"], ["output_data0", "output_data1", "output_data2"]
    )
    with pytest.raises(ValueError, match="depend on its arguments"):
        pjc.function_inputs()
    with pytest.raises(ValueError, match="num_user: expected an unsigned integer, got str"):
        pjc.file_names({"num_user": "3"})


def test_unknown_names_are_refused() -> None:
    for name in ("builtin-online-decrypt", "builtin-nope", "echo", ""):
        with pytest.raises(ValueError, match="no built-in function is named"):
            builtin_function(name)


def test_list_builtins_on_the_command_line() -> None:
    runner = CliRunner()
    listed = runner.invoke(app, ["function", "list-builtins", "--json"])
    assert listed.exit_code == 0, listed.output
    assert [entry["name"] for entry in json.loads(listed.stdout)] == sorted(all_functions())
    one = runner.invoke(app, ["function", "list-builtins", "builtin-echo"])
    assert one.exit_code == 0 and "message: string" in one.stdout and "builtin-echo" in one.stdout
    unknown = runner.invoke(app, ["function", "list-builtins", "builtin-nope"])
    assert unknown.exit_code == 1 and "no built-in function is named 'builtin-nope'" in unknown.stderr
