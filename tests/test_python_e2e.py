"""Python functions end to end through the SDK: the reference's payloads, a hostile one, cancel, logs.

A real platform whose execution node runs user code in its sandbox; data
owners encrypt their files, the function owner registers the payload in the
reference's (MesaPy) style, tasks run with executor ``mesapy`` as Teaclave's
clients name it, and owners decrypt their outputs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import task_world
from task_world import World

from kettle.errors import KettleError
from kettle.sdk import TaskFailure

PAYLOADS = Path(__file__).parent / "data" / "python"
VECTORS = Path("/work/shared/vectors/functions")
LOOP = "def entrypoint(argv):\n    while True:\n        pass\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, _auditor_cache: Path) -> Iterator[World]:
    config = "[sandbox]\ncpu_time_secs = 30\nwall_time_secs = 60\nmemory_mib = 512\n"
    with task_world.world(tmp_path_factory.mktemp("python-e2e"), _auditor_cache, config) as started:
        yield started


def python(world: World, payload: str, arguments: Sequence[str] = (), inputs: Sequence[str] = (),
           outputs: Sequence[str] = (), optional: bool = False) -> str:
    return world.function("python", payload.encode(), arguments, inputs, outputs, optional)


REQUIRED_LAYERS = {"process", "rlimits", "seccomp", "landlock", "uid"}


def test_echo_returns_the_message_under_either_executor_name(world: World) -> None:
    function_id = python(world, (PAYLOADS / "echo.py").read_text(), ["message"])
    for executor in ("mesapy", "python"):  # the platform takes the plain name too
        run = world.run(function_id, {"message": "Hello, Teaclave!"}, executor=executor)
        assert run.return_value == "Hello, Teaclave!"
        assert REQUIRED_LAYERS <= set(run.task.outputs_or_raise().sandbox_layers)


def test_the_file_api_unit_payload_passes(world: World) -> None:
    function_id = python(world, (PAYLOADS / "file_api.py").read_text(), inputs=["in_f1"], outputs=["out_f1"])
    run = world.run(function_id, {}, {"in_f1": b"Hello\nWorld"}, ["out_f1"])
    assert run.return_value == ""
    assert run.outputs["out_f1"] == b"This message is from Mesapy!"


def test_optional_files_absent_and_present(world: World) -> None:
    function_id = python(world, (PAYLOADS / "optional_files.py").read_text(),
                                 inputs=["input_data1", "input_data2", "input_data3"], optional=True)
    assert world.run(function_id, {}).return_value == "input_data1 does not exist"
    present = world.run(function_id, {}, {"input_data1": b"4.8,3.0,1.4,0.3,3.0\n5.1,3.5,1.4,0.2,3.0\n"})
    assert present.return_value == "4.8,3.0,1.4,0.3,3.0\n"


def test_logistic_regression_trains_then_predicts_from_the_training_outputs(world: World) -> None:
    train = python(world, (PAYLOADS / "logistic_regression_train.py").read_text(),
                           inputs=["input_train"], outputs=["output_params", "output_scaler"])
    trained = world.run(train, {}, {"input_train": (VECTORS / "logistic_regression_training" / "train.txt").read_bytes()},
                        ["output_params", "output_scaler"])
    assert trained.return_value == "Training is finished!"
    params = world.alice.register_input_from_output(trained.output_ids["output_params"])
    scaler = world.alice.register_input_from_output(trained.output_ids["output_scaler"])
    predict = python(world, (PAYLOADS / "logistic_regression_predict.py").read_text(),
                             inputs=["input_params", "input_scaler", "input_predict"])
    predicted = world.run(predict, {}, {
        "input_params": params, "input_scaler": scaler,
        "input_predict": (VECTORS / "logistic_regression_prediction" / "predict_input.txt").read_bytes()})
    assert predicted.return_value == "[1.0 1.0 0.0 0.0 0.0]"


def test_a_hostile_payload_fails_with_its_reason_and_uploads_nothing(world: World) -> None:
    function_id = python(world, 
        "def entrypoint(argv):\n    teaclave_open('out', 'wb').write(b'partial')\n    open('/etc/passwd').read()\n",
        outputs=["out"])
    run = world.run(function_id, {}, outputs=["out"])
    assert run.failure == "SandboxViolation: the function made a forbidden system call"
    assert run.outputs == {"out": None}
    assert isinstance(run.task.result, TaskFailure) and REQUIRED_LAYERS <= set(run.task.result.sandbox_layers)


def test_an_exception_fails_the_task_and_its_traceback_goes_to_the_log(world: World) -> None:
    function_id = python(world, 
        "def entrypoint(argv):\n    print('working on', argv[1])\n    raise KeyError('no column 7')\n",
        ["save_log"])
    run = world.run(function_id, {"save_log": "true"})
    assert run.failure == "KeyError: 'no column 7'"


def test_the_log_shows_the_sandbox_layers_and_what_the_function_printed(world: World) -> None:
    function_id = python(world, "def entrypoint(argv):\n    print('hello from the sandbox')\n    return 'ok'\n",
                                 ["save_log"])
    log = world.run(function_id, {"save_log": "true"}).task.outputs_or_raise().log
    assert any(line.startswith("[INFO teaclave_function::python] sandbox layers: process") and "seccomp" in line
               and "landlock (ABI" in line for line in log), log
    assert "[INFO teaclave_function::python] output: hello from the sandbox" in log
    quiet = world.run(function_id, {"save_log": "false"}).task.outputs_or_raise()
    assert (quiet.return_value, list(quiet.log)) == (b"ok", [])


def test_cancelling_an_infinite_loop_is_prompt_and_the_next_task_runs(world: World) -> None:
    loop = python(world, LOOP)
    task_id, _ = world.start(loop, {})
    task = world.cancel_once_running(task_id)
    assert isinstance(task.result, TaskFailure) and task.result.reason == "Task Canceled by the user"
    echo = python(world, (PAYLOADS / "echo.py").read_text(), ["message"])
    assert world.run(echo, {"message": "next"}).return_value == "next"


def test_a_payload_of_8_mib_registers_runs_and_reads_back_unchanged(world: World) -> None:
    """Stored as its own record: no longer capped near 3 MiB by base64 inside the function's JSON."""
    comment = "".join(f"# line {n:07d} of a long explanation that the function carries along\n" for n in range(90_000))
    literal = "TABLE = " + repr(bytes(range(256)) * 4096) + "\n"  # 1 MiB of bytes, as a literal
    code = comment + literal + "def entrypoint(argv):\n    return 'table of %d bytes' % len(TABLE)\n"
    payload = code.encode()
    assert 8 << 20 <= len(payload) < 12 << 20
    function_id = world.function("python", payload)
    assert world.publisher.get_function(function_id).payload == payload
    assert world.run(function_id, {}).return_value == "table of 1048576 bytes"
    too_large = b"#" * (16 * 1024 * 1024 + 1)
    with pytest.raises(KettleError, match=r"^function payload is too large \(16777217 bytes, at most 16777216\)$"):
        world.function("python", too_large)
