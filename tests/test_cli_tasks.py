"""`kettle function ...` and `kettle task ...`: option parsing, and the builtin-echo
flow through the CLI against a full platform."""

from __future__ import annotations

import json
import uuid

import pytest
from rich.console import Console

from conftest import Platform
from kettle.cli.functions import parse_argument, parse_input, parse_output
from kettle.cli.tasks import _task_table, parse_arguments, parse_assignment, parse_owners
from kettle.model.records import TaskStatus
from kettle.sdk import FunctionArgument, FunctionInput, FunctionOutput, TaskFailure, TaskInfo, TaskOutputs

MESSAGE = "Hello, Teaclave!"


# --- option parsing -------------------------------------------------------------------


def test_argument_specs() -> None:
    assert parse_argument("message") == FunctionArgument("message", "", True)
    assert parse_argument("greeting=hi") == FunctionArgument("greeting", "hi", True)
    assert parse_argument("mode=fast:fixed") == FunctionArgument("mode", "fast", False)
    assert parse_argument("url=http://h:80/x") == FunctionArgument("url", "http://h:80/x", True)
    assert parse_argument("k:fixed") == FunctionArgument("k", "", False)
    with pytest.raises(ValueError, match="needs a key"):
        parse_argument("=x")


def test_input_and_output_specs() -> None:
    assert parse_input("data") == FunctionInput("data")
    assert parse_input("extra:optional") == FunctionInput("extra", optional=True)
    assert parse_output("result:optional") == FunctionOutput("result", optional=True)
    with pytest.raises(ValueError, match="--input needs a name"):
        parse_input(":optional")


def test_task_option_specs() -> None:
    assert parse_arguments('{"message": "hi", "n": 3}') == {"message": "hi", "n": 3}
    with pytest.raises(ValueError, match="JSON object"):
        parse_arguments('["message"]')
    with pytest.raises(ValueError, match="not JSON"):
        parse_arguments("{message: hi}")
    assert parse_owners("input=alice, bob", "--input-owner") == ("input", ("alice", "bob"))
    with pytest.raises(ValueError, match="--output-owner must be NAME=UID"):
        parse_owners("output=", "--output-owner")
    assert parse_assignment("input=input-1234", "--input") == ("input", "input-1234")
    with pytest.raises(ValueError, match="NAME=DATA_ID"):
        parse_assignment("input", "--input")


# --- against a platform ---------------------------------------------------------------------


def _shown(result: TaskOutputs | TaskFailure) -> str:
    info = TaskInfo("task-1", "alice", "function-1", "bob", {}, {}, {}, ("alice",), ("alice",), {}, {},
                    TaskStatus.FAILED if isinstance(result, TaskFailure) else TaskStatus.FINISHED, result)
    console = Console(width=200, record=True)
    console.print(_task_table(info))
    return console.export_text()


def test_task_table_names_the_sandbox_layers_of_either_outcome() -> None:
    assert "│ sandbox layers   │ process, seccomp, landlock " in _shown(
        TaskFailure("CPUTimeExceeded: the function used more than 1 s of CPU", ("process", "seccomp", "landlock")))
    assert "│ sandbox layers   │ process, uid " in _shown(TaskOutputs(b"ok", sandbox_layers=("process", "uid")))
    assert "sandbox layers" not in _shown(TaskOutputs(b"ok"))  # a built-in


def test_echo_flow_through_the_cli(full_platform: Platform) -> None:
    def ok(*args: str) -> str:
        result = full_platform.kettle(*args, env={"KETTLE_PASSWORD": "teaclave"})
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    ok("user", "login", "admin")
    function_id = json.loads(ok(
        "function", "register", "--name", "builtin-echo", "--executor-type", "builtin", "--argument", "message", "--json",
    ))["function_id"]
    assert function_id.startswith("function-")
    described = json.loads(ok("function", "get", function_id, "--json"))
    assert described["name"] == "builtin-echo" and described["public"] is True
    assert described["arguments"] == [{"key": "message", "default_value": "", "allow_overwrite": True}]
    assert json.loads(ok("function", "stats", function_id, "--json"))["quota"] is None
    assert function_id in json.loads(ok("function", "list", "--json"))["registered_functions"]

    task_id = json.loads(ok("task", "create", function_id, "--args", json.dumps({"message": MESSAGE}), "--json"))["task_id"]
    assert json.loads(ok("task", "get", task_id, "--json"))["status"] == "Created"
    ok("task", "invoke", task_id)
    waited = json.loads(ok("task", "wait", task_id, "--timeout", "60", "--json"))
    assert waited["status"] == "Finished" and waited["result"]["return_value"] == MESSAGE
    assert ok("task", "wait", task_id) == MESSAGE + "\n"  # plain: just the result
    assert "Finished" in ok("task", "get", task_id)  # the readable table

    canceled = json.loads(ok("task", "create", function_id, "--args", json.dumps({"message": "x"}), "--json"))["task_id"]
    ok("task", "cancel", canceled)
    refused = full_platform.kettle("task", "wait", canceled)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1] == f"error: task {canceled} was canceled: Task canceled"


def test_unknown_function_is_a_one_line_error(full_platform: Platform) -> None:
    login = full_platform.kettle("user", "login", "admin", env={"KETTLE_PASSWORD": "teaclave"})
    assert login.returncode == 0, login.stderr
    result = full_platform.kettle("task", "create", f"function-{uuid.uuid4()}", "--args", '{"message": "hi"}')
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: invalid function id"] and result.stderr.strip().splitlines()[-1] == errors[0]
    assert "Traceback" not in result.stderr and result.stdout == ""
