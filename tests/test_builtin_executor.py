"""The built-in executor, argument typing, the registry, builtin-echo; the worker process is tests/test_workers.py."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import staged

from kettle import executors
from kettle.config import FileAgentConfig
from kettle.executors import run_staged_task
from kettle.executors.job import WorkerJob
from kettle.executors.runtime import FileRuntime
from kettle.functions import (
    BuiltinFunction,
    FunctionError,
    all_functions,
    lookup,
    module_for,
)
from kettle.functions.arguments import (
    BOOL,
    BYTES,
    F32,
    F64,
    STRING,
    U8,
    U32,
    USIZE,
    ArgType,
    ArgumentsError,
    OptionalArg,
    parse_arguments,
)
from kettle.model.records import CryptoInfo, FileRecord, TaskResult

# --- builtin-echo and logs -------------------------------------------------------------


def test_echo_returns_its_message_and_logs_only_with_save_log_true() -> None:
    result = run_staged_task(staged(arguments={"message": "Hello, Teaclave Tests!", "save_log": "true"}))
    assert result.outputs is not None
    assert result.outputs.return_value == b"Hello, Teaclave Tests!"
    assert result.outputs.tags_map == {}
    assert result.outputs.log == ("[INFO teaclave_function::echo] Hello, Teaclave Tests!",)
    for save_log in ("false", True, "True", "yes", None):
        quiet = run_staged_task(staged(arguments={"message": "hi", "save_log": save_log}))
        assert quiet.outputs is not None and quiet.outputs.log == () and quiet.outputs.return_value == b"hi"


def test_echo_keeps_any_unicode_message() -> None:
    result = run_staged_task(staged(arguments={"message": "héllo 世界 \n\"quoted\""}))
    assert result.outputs is not None and result.outputs.return_value == "héllo 世界 \n\"quoted\"".encode()


@pytest.mark.parametrize("arguments", [{}, {"message": 3}, {"message": None}, {"message": ["a"]}, [], "not json"])
def test_missing_or_mistyped_arguments_cannot_be_deserialized(arguments: Any) -> None:
    assert run_staged_task(staged(arguments=arguments)) == TaskResult(failure="Cannot deserialize arguments")


# --- dispatch -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["builtin-nope", "builtin_echo", "Builtin-echo", "echo", "builtin-arguments", ""])
def test_only_the_exact_registered_name_is_found(name: str) -> None:
    assert run_staged_task(staged(name=name)) == TaskResult(failure="Function not found.")


@pytest.mark.parametrize(
    ("executor_type", "executor", "reason"),
    [
        ("python", "builtin", "function not available: (Python, Builtin)"),
        ("builtin", "mesapy", "function not available: (Builtin, MesaPy)"),
        ("wamr", "builtin", "function not available: (WAMicroRuntime, Builtin)"),
        ("builtin", "wamr", "function not available: (Builtin, WAMicroRuntime)"),
        ("python", "wamr", "function not available: (Python, WAMicroRuntime)"),
        ("wamr", "mesapy", "function not available: (WAMicroRuntime, MesaPy)"),
    ],
)
def test_the_executor_pair_is_checked_at_execution(executor_type: str, executor: str, reason: str) -> None:
    assert run_staged_task(staged(executor_type=executor_type, executor=executor)) == TaskResult(failure=reason)


@pytest.mark.parametrize(("executor_type", "executor"), [("python", "mesapy"), ("wamr", "wamr")])
def test_user_code_never_runs_in_a_worker_without_a_sandbox(executor_type: str, executor: str) -> None:
    result = run_staged_task(staged(executor_type=executor_type, executor=executor))
    assert result == TaskResult(failure="SandboxUnavailable: this execution node has no sandbox for user code")


def test_tasks_with_data_files_need_a_data_plane() -> None:
    record = FileRecord(str(uuid.uuid4()), "file:///tmp/in", CryptoInfo("raw"), ("alice",))
    for files in ({"inputs": {"input": record}}, {"outputs": {"output": record}}):
        assert run_staged_task(staged(**files)) == TaskResult(
            failure="Runtime Error: this execution node cannot move data files")


def test_a_raising_function_fails_with_type_and_message_cut_to_one_kib(monkeypatch: pytest.MonkeyPatch) -> None:
    def raising(name: str, arguments: Any, payload: bytes, runtime: Any) -> str:
        raise ValueError("x" * 5000)

    monkeypatch.setitem(executors.EXECUTORS, ("builtin", "builtin"), raising)
    reason = run_staged_task(staged()).failure
    assert reason is not None and reason.startswith("ValueError: xxx") and len(reason.encode()) == 1024

    def bare(name: str, arguments: Any, payload: bytes, runtime: Any) -> str:
        raise KeyError

    monkeypatch.setitem(executors.EXECUTORS, ("builtin", "builtin"), bare)
    assert run_staged_task(staged()).failure == "KeyError"


def test_the_runtime_refuses_unassigned_files_with_the_reference_texts() -> None:
    runtime = FileRuntime()
    with pytest.raises(FunctionError, match=r"^Invalid input file identifier\.$"):
        runtime.open_input("training_data")
    with pytest.raises(FunctionError, match=r"^Invalid output file identifier$"):
        runtime.create_output("trained_model")


# --- registry ------------------------------------------------------------------------------


REFERENCE_BUILTINS = {
    "builtin-echo", "builtin-gbdt-train", "builtin-gbdt-predict", "builtin-logistic-regression-train",
    "builtin-logistic-regression-predict", "builtin_principal_components_analysis",
    "builtin-private-join-and-compute", "builtin-ordered-set-intersect", "builtin-ordered-set-join",
    "builtin-rsa-sign", "builtin-face-detection", "builtin-password-check", "builtin_online_decrypt",
}
"""The 13 names of functions.md §5.1, and no others."""


def test_every_builtin_lives_in_the_module_its_name_selects() -> None:
    functions = all_functions()
    assert set(functions) == REFERENCE_BUILTINS
    for name, function in functions.items():
        assert isinstance(function, BuiltinFunction)
        assert lookup(name) is function, f"{name} must be defined in kettle/functions/{module_for(name)}.py"
    assert module_for("builtin-gbdt-train") == "gbdt_train"
    assert module_for("builtin_online_decrypt") == "online_decrypt"
    assert module_for("builtin-../x") is None and module_for("gbdt") is None


# --- argument typing (functions.md §3.4) -------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "accepted", "rejected"),
    [
        (U8, [0, 255], [256, -1, 4.0, "4", True, None]),
        (U32, [0, 2**32 - 1], [2**32, -1, 4.0, "4", False]),
        (USIZE, [0, 2**64 - 1], [2**64, -3, 1.5]),
        (F32, [1, 0.5, -2.5e10], ["1.0", True, None]),
        (F64, [1, 1e300, 4.0], ["1", False, [1]]),
        (STRING, ["", "x"], [1, None, True, ["x"]]),
        (BOOL, [True, False], ["true", 1, 0, None]),
        (BYTES, [[], [0, 255]], [[256], [-1], [1.0], "abc", [True]]),
        (OptionalArg(U32), [None, 7], [-1, "7"]),
    ],
)
def test_argument_types_accept_exactly_their_json(kind: ArgType, accepted: list[Any], rejected: list[Any]) -> None:
    for value in accepted:
        parse_arguments({"k": value}, {"k": kind})
    for value in rejected:
        with pytest.raises(ArgumentsError) as info:
            parse_arguments({"k": value}, {"k": kind})
        assert str(info.value) == "Cannot deserialize arguments"


def test_argument_conversion_and_absence() -> None:
    schema = {"n": U32, "rate": F64, "raw": BYTES, "maybe": OptionalArg(STRING)}
    parsed = parse_arguments({"n": 3, "rate": 2, "raw": [104, 105], "extra": "ignored"}, schema)
    assert parsed == {"n": 3, "rate": 2.0, "raw": b"hi", "maybe": None}
    assert isinstance(parsed["rate"], float)
    with pytest.raises(ArgumentsError, match="Cannot deserialize"):
        parse_arguments({"rate": 1.0, "raw": []}, schema)  # missing required "n"





def test_a_worker_job_round_trips(tmp_path: Path) -> None:
    settings = FileAgentConfig(file_roots=("/srv",), max_file_bytes=5)
    original = WorkerJob(staged(), tmp_path / "w", tmp_path, settings, attempt=3)
    assert WorkerJob.from_bytes(original.to_bytes()) == original
    for attempt in (0, -1, "2", 1.0, True, None):
        doc = json.loads(original.to_bytes())
        doc["attempt"] = attempt
        with pytest.raises(ValueError, match="malformed worker job: attempt must be a positive integer"):
            WorkerJob.from_bytes(json.dumps(doc).encode())
