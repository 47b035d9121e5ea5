"""The frontend SDK without sockets: what each call sends, how answers are read,
how waiting works, and the Teaclave SDK defects it fixes (``spec/platform.md`` §11).

The clients are exercised through stand-in stubs that record requests and return
canned protobuf answers; the waiting plans are driven step by step on a fake clock.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from kettle.errors import AuthenticationError, InternalError, InvalidArgument, KettleError, NotFound
from kettle.model.records import TaskStatus
from kettle.rpc.generated import kettle_management_pb2 as kettle_pb
from kettle.rpc.generated import teaclave_common_pb2 as common_pb
from kettle.rpc.generated import teaclave_frontend_service_pb2 as pb
from kettle.sdk import (
    AsyncFrontendClient,
    DataMap,
    FrontendClient,
    FunctionArgument,
    FunctionInput,
    FunctionOutput,
    OwnerList,
    Task,
    TaskCanceled,
    TaskFailed,
    TaskFailure,
    TaskNotFinished,
    TaskOutputs,
    TaskRefusal,
    TaskWaitTimeout,
)
from kettle.sdk.frontend import (
    MAX_WAIT_MS,
    FunctionInfo,
    _Call,
    _FrontendCore,
    _Sleep,
    merged_update,
    outputs_after_wait,
    parse_task,
)

TASK = "task-5c1e0000-0000-4000-8000-000000000001"
FUNCTION = "function-5c1e0000-0000-4000-8000-000000000002"


# --- helpers ----------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def task_response(status: int = common_pb.Created, result: common_pb.TaskResult | None = None, **fields: Any) -> pb.GetTaskResponse:
    doc: dict[str, Any] = {"task_id": TASK, "creator": "alice", "function_id": FUNCTION, "function_owner": "bob",
                           "function_arguments": '{"message":"hi"}', "status": status, **fields}
    response = pb.GetTaskResponse(**doc)
    if result is not None:
        response.result.CopyFrom(result)
    return response


def ok(value: bytes, tags: dict[str, bytes] | None = None, log: tuple[str, ...] = ()) -> common_pb.TaskResult:
    return common_pb.TaskResult(Ok=common_pb.TaskOutputs(return_value=value, tags_map=tags or {}, log=list(log)))


def err(reason: str) -> common_pb.TaskResult:
    return common_pb.TaskResult(Err=common_pb.TaskFailure(reason=reason))


class Recorder:
    """Stand-in for a grpc stub: records (rpc, request, metadata, timeout), answers from ``handler``."""

    def __init__(self, log: list[tuple[str, Any, Any, float]], handler: Callable[[str, Any], Any], aio: bool) -> None:
        self.log, self.handler, self.aio = log, handler, aio

    def __getattr__(self, rpc: str) -> Callable[..., Any]:
        def call(request: Any, metadata: Any = None, timeout: float = 0) -> Any:
            self.log.append((rpc, request, metadata, timeout))
            if self.aio:
                async def answer() -> Any:
                    return self.handler(rpc, request)

                return answer()
            return self.handler(rpc, request)

        return call


def default_handler(rpc: str, request: Any) -> Any:
    answers: dict[str, Any] = {
        "RegisterFunction": pb.RegisterFunctionResponse(function_id=FUNCTION),
        "UpdateFunction": pb.UpdateFunctionResponse(function_id=FUNCTION),
        "CreateTask": pb.CreateTaskResponse(task_id=TASK),
        "RegisterInputFile": pb.RegisterInputFileResponse(data_id="input-1"),
        "RegisterOutputFile": pb.RegisterOutputFileResponse(data_id="output-1"),
        "UpdateInputFile": pb.UpdateInputFileResponse(data_id="input-2"),
        "UpdateOutputFile": pb.UpdateOutputFileResponse(data_id="output-2"),
        "RegisterFusionOutput": pb.RegisterFusionOutputResponse(data_id="output-3"),
        "RegisterInputFromOutput": pb.RegisterInputFromOutputResponse(data_id="input-3"),
        "GetTask": task_response(),
        "WaitTask": task_response(common_pb.Finished, ok(b"hi")),
    }
    if rpc in answers:
        return answers[rpc]
    from google.protobuf import empty_pb2

    return empty_pb2.Empty()


def sync_client(handler: Callable[[str, Any], Any] = default_handler, user: tuple[str, str] | None = ("alice", "tok")) -> tuple[FrontendClient, list[Any]]:
    log: list[Any] = []
    client = FrontendClient.__new__(FrontendClient)  # no endpoint: the stubs are stand-ins
    client._stubs = {"frontend": Recorder(log, handler, False), "kettle": Recorder(log, handler, False)}  # type: ignore[assignment]
    client._core = _FrontendCore(*(user or (None, None)))
    return client, log


def async_client(handler: Callable[[str, Any], Any] = default_handler) -> tuple[AsyncFrontendClient, list[Any]]:
    log: list[Any] = []
    client = AsyncFrontendClient.__new__(AsyncFrontendClient)
    client._stubs = {"frontend": Recorder(log, handler, True), "kettle": Recorder(log, handler, True)}  # type: ignore[assignment]
    client._core = _FrontendCore("alice", "tok")
    return client, log


def drive(plan: Any, clock: FakeClock, answer: Callable[[_Call], Any]) -> tuple[Any, list[Any]]:
    """Run a plan: calls are answered by ``answer`` (which may advance the clock or raise), sleeps advance the clock."""
    steps: list[Any] = []
    try:
        step = next(plan)
        while True:
            steps.append(step)
            if isinstance(step, _Sleep):
                clock.now += step.seconds
                step = plan.send(None)
                continue
            try:
                value = answer(step)
            except KettleError as exc:
                step = plan.throw(exc)
            else:
                step = plan.send(value)
    except StopIteration as stop:
        return stop.value, steps


# --- requests -------------------------------------------------------------------------------


def test_register_function_defaults_are_the_teaclave_sdks() -> None:
    client, log = sync_client()
    assert client.register_function("builtin-echo", "Native Echo Function", "builtin", arguments=["message"]) == FUNCTION
    rpc, request, metadata, _ = log[0]
    assert rpc == "RegisterFunction" and metadata == (("id", "alice"), ("token", "tok"))
    assert request.public is True
    assert request.usage_quota == -1  # proto3's default 0 would mean "never invocable"
    assert list(request.arguments) == [pb.FunctionArgument(key="message", default_value="", allow_overwrite=True)]
    assert request.payload == b"" and list(request.inputs) == [] and list(request.user_allowlist) == []


def test_register_function_with_every_field() -> None:
    client, log = sync_client()
    client.register_function(
        "f", "d", "python", False, "def entrypoint(argv): pass",
        [FunctionArgument("a"), FunctionArgument("b", "x", allow_overwrite=False)],
        [FunctionInput("in1"), "in2", FunctionInput("in3", "opt", optional=True)],
        [FunctionOutput("out1", optional=True)],
        ["bob"], None,
    )
    request = log[0][1]
    assert request.payload == b"def entrypoint(argv): pass" and request.public is False
    assert [(a.key, a.default_value, a.allow_overwrite) for a in request.arguments] == [("a", "", True), ("b", "x", False)]
    assert [(i.name, i.description, i.optional) for i in request.inputs] == [("in1", "", False), ("in2", "", False), ("in3", "opt", True)]
    assert [(o.name, o.optional) for o in request.outputs] == [("out1", True)]
    assert list(request.user_allowlist) == ["bob"] and request.usage_quota == -1  # None = unlimited


def test_update_function_sends_every_field_by_keyword() -> None:
    """Teaclave's SDK built UpdateFunctionRequest positionally and raised TypeError."""
    client, log = sync_client()
    assert client.update_function(FUNCTION, "n", "d", "wamr", False, [1, 2], ["k"], ["i"], ["o"], ["u"], 5) == FUNCTION
    rpc, request, _, _ = log[0]
    assert rpc == "UpdateFunction" and isinstance(request, pb.UpdateFunctionRequest)
    assert (request.function_id, request.name, request.description, request.executor_type) == (FUNCTION, "n", "d", "wamr")
    assert (request.public, request.payload, request.usage_quota) == (False, b"\x01\x02", 5)
    assert [a.key for a in request.arguments] == ["k"] and [i.name for i in request.inputs] == ["i"]
    assert [o.name for o in request.outputs] == ["o"] and list(request.user_allowlist) == ["u"]


def test_fixed_rpcs_use_their_own_rpc_and_message() -> None:
    """delete_function called ListFunctions, update_output_file called UpdateInputFile,
    query_audit_logs used a misspelt class and field."""
    client, log = sync_client(lambda rpc, req: pb.QueryAuditLogsResponse() if rpc == "QueryAuditLogs" else default_handler(rpc, req))
    client.delete_function(FUNCTION)
    assert client.update_output_file("output-1", "https://x/y") == "output-2"
    assert client.query_audit_logs("message:register_function", 7) == []
    assert [(rpc, type(req).__name__) for rpc, req, _, _ in log] == [
        ("DeleteFunction", "DeleteFunctionRequest"),
        ("UpdateOutputFile", "UpdateOutputFileRequest"),
        ("QueryAuditLogs", "QueryAuditLogsRequest"),
    ]
    assert log[0][1].function_id == FUNCTION
    assert (log[1][1].data_id, log[1][1].url) == ("output-1", "https://x/y")
    assert (log[2][1].query, log[2][1].limit) == ("message:register_function", 7)


def test_every_simple_call_builds_its_request() -> None:
    client, log = sync_client()
    assert client.register_input_file("https://h/in", "aes-gcm-128", [0] * 16, [1] * 12, [2] * 16) == "input-1"
    assert client.register_output_file("https://h/out", "teaclave-file-128", bytes(16), []) == "output-1"
    assert client.update_input_file("input-1", "https://h/in2") == "input-2"
    assert client.register_fusion_output(["alice", "bob"]) == "output-3"
    assert client.register_input_from_output("output-3") == "input-3"
    client.disable_function(FUNCTION)
    client.assign_data(TASK, {"in": "input-1"}, [DataMap("out", "output-1")])
    client.approve_task(TASK)
    client.invoke_task(TASK)
    client.cancel_task(TASK)
    sent = {rpc: req for rpc, req, _, _ in log}
    r = sent["RegisterInputFile"]
    assert (r.url, r.cmac, r.crypto_info.schema, r.crypto_info.key, r.crypto_info.iv) == ("https://h/in", bytes([2] * 16), "aes-gcm-128", bytes(16), bytes([1] * 12))
    r = sent["RegisterOutputFile"]
    assert (r.url, r.crypto_info.schema, r.crypto_info.key, r.crypto_info.iv) == ("https://h/out", "teaclave-file-128", bytes(16), b"")
    assert (sent["UpdateInputFile"].data_id, sent["UpdateInputFile"].url) == ("input-1", "https://h/in2")
    assert list(sent["RegisterFusionOutput"].owner_list) == ["alice", "bob"]
    assert sent["RegisterInputFromOutput"].data_id == "output-3"
    assert sent["DisableFunction"].function_id == FUNCTION
    a = sent["AssignData"]
    assert a.task_id == TASK and [(d.data_name, d.data_id) for d in a.inputs] == [("in", "input-1")]
    assert [(d.data_name, d.data_id) for d in a.outputs] == [("out", "output-1")]
    assert sent["ApproveTask"].task_id == sent["InvokeTask"].task_id == sent["CancelTask"].task_id == TASK


def test_key_material_must_be_bytes_or_ints() -> None:
    client, _ = sync_client()
    with pytest.raises(TypeError, match="key"):
        client.register_input_file("https://h/in", "aes-gcm-128", "0" * 16, b"", bytes(16))  # type: ignore[arg-type]


def test_create_task_arguments_executor_and_ownership() -> None:
    client, log = sync_client()
    assert client.create_task(FUNCTION, {"message": "Hello, Teaclave!", "num_user": 3}) == TASK
    client.create_task(FUNCTION)
    client.create_task(
        FUNCTION, '{"a": "b"}', "python",
        inputs_ownership={"in": ["alice", "bob"], "solo": "carol"},
        outputs_ownership=[OwnerList("out", ("alice",))],
    )
    first, second, third = (req for _, req, _, _ in log)
    assert first.executor == "builtin"  # the default
    assert json.loads(first.function_arguments) == {"message": "Hello, Teaclave!", "num_user": 3}
    assert first.function_arguments == json.dumps({"message": "Hello, Teaclave!", "num_user": 3})
    assert second.function_arguments == "{}"  # never "", which the platform rejects
    assert third.function_arguments == '{"a": "b"}' and third.executor == "python"  # sent as given: the platform takes both names
    assert [(o.data_name, list(o.uids)) for o in third.inputs_ownership] == [("in", ["alice", "bob"]), ("solo", ["carol"])]
    assert [(o.data_name, list(o.uids)) for o in third.outputs_ownership] == [("out", ["alice"])]


def test_calls_need_credentials_and_send_them() -> None:
    client, log = sync_client(user=None)
    with pytest.raises(AuthenticationError, match="no credentials"):
        client.get_task(TASK)
    assert log == []
    client.use_credential("carol", "t2")
    client.get_task(TASK)
    assert log[0][2] == (("id", "carol"), ("token", "t2"))


def test_list_functions_defaults_to_the_callers_own_id() -> None:
    client, log = sync_client(lambda rpc, req: pb.ListFunctionsResponse(registered_functions=["function-a"], allowed_functions=["function-b", "function-c"]))
    listing = client.list_functions()
    assert log[0][1].user_id == "alice"
    assert listing.registered_functions == ("function-a",) and listing.allowed_functions == ("function-b", "function-c")
    client.list_functions("bob")
    assert log[1][1].user_id == "bob"


def test_server_errors_become_kettle_errors() -> None:
    def refuse(rpc: str, request: Any) -> Any:
        raise FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "invalid function id")

    client, _ = sync_client(refuse)
    with pytest.raises(InvalidArgument, match="^invalid function id$"):
        client.create_task("function-nope", {})


# --- responses ---------------------------------------------------------------------------------


def test_get_function_and_usage_are_typed() -> None:
    def answer(rpc: str, request: Any) -> Any:
        if rpc == "GetFunction":
            return pb.GetFunctionResponse(
                name="echo", description="d", executor_type="builtin", owner="bob", payload=b"p", public=False,
                arguments=[pb.FunctionArgument(key="message", default_value="x", allow_overwrite=False)],
                inputs=[pb.FunctionInput(name="in", optional=True)], outputs=[pb.FunctionOutput(name="out")],
                user_allowlist=["alice"],
            )
        quota = -1 if request.function_id == FUNCTION else 3
        return pb.GetFunctionUsageStatsResponse(function_quota=quota, current_usage=2)

    client, _ = sync_client(answer)
    info = client.get_function(FUNCTION)
    assert info == FunctionInfo(
        FUNCTION, "echo", "d", "builtin", "bob", b"p", False,
        (FunctionArgument("message", "x", False),), (FunctionInput("in", "", True),), (FunctionOutput("out"),), ("alice",),
    )
    assert info.to_json()["payload"] == "cA=="
    unlimited = client.get_function_usage_stats(FUNCTION)
    assert (unlimited.quota, unlimited.current_usage) == (None, 2)
    assert client.get_function_usage_stats("function-other").quota == 3


def test_files_are_typed() -> None:
    def answer(rpc: str, request: Any) -> Any:
        cmac = b"" if rpc == "GetOutputFile" else bytes(16)
        return getattr(pb, f"{rpc}Response")(owner=["bob", "alice"], cmac=cmac)

    client, _ = sync_client(answer)
    assert client.get_input_file("input-1").owners == ("alice", "bob")
    assert client.get_input_file("input-1").cmac == bytes(16)
    assert client.get_output_file("output-1").cmac is None  # not written yet


def test_parse_task_reads_every_field() -> None:
    response = task_response(
        common_pb.Finished, ok(b"Hello", {"out": b"\x01" * 16}, ("line",)),
        inputs_ownership=[pb.OwnerList(data_name="in", uids=["bob", "alice"])],
        outputs_ownership=[pb.OwnerList(data_name="out", uids=["alice"])],
        participants=["bob", "alice"], approved_users=["alice"],
        assigned_inputs=[pb.DataMap(data_name="in", data_id="input-1")],
        assigned_outputs=[pb.DataMap(data_name="out", data_id="output-1")],
    )
    info = parse_task(response)
    assert info.status is TaskStatus.FINISHED and info.terminal and info.succeeded
    assert (info.task_id, info.creator, info.function_id, info.function_owner) == (TASK, "alice", FUNCTION, "bob")
    assert info.function_arguments == {"message": "hi"}
    assert info.inputs_ownership == {"in": ("alice", "bob")} and info.outputs_ownership == {"out": ("alice",)}
    assert info.participants == ("alice", "bob") and info.approved_users == ("alice",)
    assert info.assigned_inputs == {"in": "input-1"} and info.assigned_outputs == {"out": "output-1"}
    assert info.result == TaskOutputs(b"Hello", {"out": b"\x01" * 16}, ("line",))
    doc = info.to_json()
    assert doc["status"] == "Finished" and doc["status_code"] == 10
    assert doc["result"]["return_value"] == "Hello" and doc["result"]["log"] == ["line"]
    assert json.loads(json.dumps(doc)) == doc


def test_parse_task_not_ready_failure_and_bad_status() -> None:
    created = parse_task(task_response())  # Created: status 0, no result
    assert created.status is TaskStatus.CREATED and created.result is None and created.to_json()["result"] is None
    canceled = parse_task(task_response(common_pb.Canceled, err("Task canceled")))
    assert canceled.result == TaskFailure("Task canceled") and canceled.to_json()["result"] == {"reason": "Task canceled", "sandbox_layers": []}
    with pytest.raises(InternalError):
        parse_task(task_response(status=7))


def test_audit_entries_are_typed() -> None:
    v4 = bytes(12) + bytes([127, 0, 0, 1])
    v6 = ipaddress.IPv6Address("2001:db8::1").packed

    def answer(rpc: str, request: Any) -> Any:
        return pb.QueryAuditLogsResponse(logs=[
            common_pb.Entry(microsecond=1_700_000_000_000_000, ip=v4, user="u", message="get_task", result=True),
            common_pb.Entry(microsecond=1, ip=v6, message="m"),
            common_pb.Entry(microsecond=2, ip=bytes(16), message="n"),
        ])

    client, _ = sync_client(answer)
    first, second, third = client.query_audit_logs("user:u", 3)
    assert first.ip == ipaddress.IPv4Address("127.0.0.1") and first.result and first.time.year == 2023
    assert second.ip == ipaddress.IPv6Address("2001:db8::1") and third.ip is None


# --- results -------------------------------------------------------------------------------------


def test_result_mapping() -> None:
    assert outputs_after_wait(parse_task(task_response(common_pb.Finished, ok(b"v"))), None).return_value == b"v"
    # Teaclave's SDK returned b"" for a Finished task with an Err result.
    with pytest.raises(TaskFailed, match="boom") as failed:
        outputs_after_wait(parse_task(task_response(common_pb.Finished, err("boom"))), None)
    assert failed.value.reason == "boom" and failed.value.status is TaskStatus.FINISHED
    with pytest.raises(TaskCanceled) as canceled:
        outputs_after_wait(parse_task(task_response(common_pb.Canceled, err("Task canceled"))), None)
    assert canceled.value.reason == "Task canceled" and canceled.value.task_id == TASK
    with pytest.raises(TaskFailed) as lost:
        outputs_after_wait(parse_task(task_response(common_pb.Failed, err("Runtime Error: Executor Timeout"))), None)
    assert lost.value.reason == "Runtime Error: Executor Timeout" and lost.value.status is TaskStatus.FAILED
    with pytest.raises(TaskNotFinished):
        parse_task(task_response(common_pb.Running)).outputs_or_raise()
    with pytest.raises(TimeoutError):  # TaskWaitTimeout is both a KettleError and a TimeoutError
        outputs_after_wait(parse_task(task_response(common_pb.Running)), 5)
    assert issubclass(TaskWaitTimeout, KettleError)


# --- waiting -------------------------------------------------------------------------------------


def test_wait_returns_the_moment_the_task_ends() -> None:
    clock = FakeClock()
    core = _FrontendCore("alice", "tok", clock)

    def answer(call: _Call) -> Any:
        assert call.service == "kettle" and isinstance(call.request, kettle_pb.WaitTaskRequest)
        clock.now += 0.2  # the task finishes 0.2 s into the wait
        return parse_task(task_response(common_pb.Finished, ok(b"done")))

    value, steps = drive(core.get_task_result(TASK, None), clock, answer)
    assert value == b"done"
    assert [(s.rpc, s.request.timeout_ms) for s in steps] == [("WaitTask", MAX_WAIT_MS)]
    assert steps[0].deadline > MAX_WAIT_MS / 1000  # the gRPC deadline outlasts the server-side wait


def test_long_waits_are_a_loop_of_at_most_60_s_without_sleeping() -> None:
    clock = FakeClock()
    core = _FrontendCore("alice", "tok", clock)

    def answer(call: _Call) -> Any:
        clock.now += call.request.timeout_ms / 1000  # the server waits the full time: still running
        return parse_task(task_response(common_pb.Running))

    with pytest.raises(TaskWaitTimeout) as timed_out:
        drive(core.get_task_result(TASK, 150), clock, answer)
    assert timed_out.value.status is TaskStatus.RUNNING and "150 s" in timed_out.value.message
    info, steps = drive(core.wait_task(TASK, 150), clock, answer)
    assert info.status is TaskStatus.RUNNING  # wait_task reports the state instead of raising
    assert [s.request.timeout_ms for s in steps] == [60_000, 60_000, 30_000]
    assert not any(isinstance(s, _Sleep) for s in steps)


def test_unlimited_wait_keeps_waiting_until_the_end() -> None:
    clock = FakeClock()
    core = _FrontendCore("alice", "tok", clock)
    answers = iter([common_pb.Staged, common_pb.Running, common_pb.Running, common_pb.Failed])

    def answer(call: _Call) -> Any:
        status = next(answers)
        clock.now += 60 if status != common_pb.Failed else 1
        return parse_task(task_response(status, err("ValueError: bad") if status == common_pb.Failed else None))

    with pytest.raises(TaskFailed, match="ValueError: bad"):
        drive(core.get_task_result(TASK, None), clock, answer)


def test_a_server_answering_early_is_not_busy_looped() -> None:
    clock = FakeClock()
    core = _FrontendCore("alice", "tok", clock)
    calls = 0

    def answer(call: _Call) -> Any:
        nonlocal calls
        calls += 1
        return parse_task(task_response(common_pb.Running if calls < 6 else common_pb.Finished, None if calls < 6 else ok(b"x")))

    value, steps = drive(core.get_task_result(TASK, None), clock, answer)
    assert value == b"x"
    sleeps = [s.seconds for s in steps if isinstance(s, _Sleep)]
    assert sleeps == [0.05, 0.1, 0.2, 0.4, 0.8]


def test_without_wait_task_it_falls_back_to_polling_get_task() -> None:
    clock = FakeClock()
    core = _FrontendCore("alice", "tok", clock)
    statuses = iter([common_pb.Running, common_pb.Running, common_pb.Finished])

    def answer(call: _Call) -> Any:
        if call.rpc == "WaitTask":
            raise _unimplemented()
        status = next(statuses)
        return parse_task(task_response(status, ok(b"polled") if status == common_pb.Finished else None))

    value, steps = drive(core.get_task_result(TASK, None), clock, answer)
    assert value == b"polled"
    assert [getattr(s, "rpc", "sleep") for s in steps] == ["WaitTask", "GetTask", "sleep", "GetTask", "sleep", "GetTask"]
    assert core.wait_task_supported is False


def _unimplemented() -> KettleError:
    from kettle.errors import from_status

    return from_status(grpc.StatusCode.UNIMPLEMENTED, "")


def test_wait_errors_other_than_unimplemented_propagate() -> None:
    clock = FakeClock()
    core = _FrontendCore("alice", "tok", clock)

    def answer(call: _Call) -> Any:
        raise InvalidArgument("invalid task id")

    with pytest.raises(InvalidArgument, match="invalid task id"):
        drive(core.wait_task(TASK, None), clock, answer)


def test_output_cmac_by_tag() -> None:
    client, _ = sync_client(lambda rpc, req: task_response(common_pb.Finished, ok(b"", {"output": b"\x07" * 16})))
    assert client.get_output_cmac_by_tag(TASK, "output") == b"\x07" * 16  # raw bytes, no base64
    with pytest.raises(NotFound, match="no output named 'nope'"):
        client.get_output_cmac_by_tag(TASK, "nope")


def test_sync_client_waits_through_wait_task() -> None:
    client, log = sync_client()
    assert client.get_task_result(TASK) == b"hi"
    assert [rpc for rpc, *_ in log] == ["WaitTask"]
    assert log[0][3] > MAX_WAIT_MS / 1000


# --- partial updates -----------------------------------------------------------------------------


INFO = FunctionInfo(FUNCTION, "echo", "d", "builtin", "bob", b"p", True, (FunctionArgument("m"),), (), (), ("u",))


def test_merged_update_changes_only_what_is_given() -> None:
    merged = merged_update(INFO, 4, {"public": False})
    assert merged == {
        "name": "echo", "description": "d", "executor_type": "builtin", "payload": b"p", "public": False,
        "arguments": (FunctionArgument("m"),), "inputs": (), "outputs": (), "user_allowlist": ("u",), "usage_quota": 4,
    }
    with pytest.raises(TypeError, match="owner"):
        merged_update(INFO, None, {"owner": "mallory"})


def test_function_update_reads_then_replaces() -> None:
    def answer(rpc: str, request: Any) -> Any:
        if rpc == "GetFunction":
            return pb.GetFunctionResponse(name="echo", executor_type="builtin", owner="bob", payload=b"p", public=True,
                                          arguments=[pb.FunctionArgument(key="m", allow_overwrite=True)])
        if rpc == "GetFunctionUsageStats":
            return pb.GetFunctionUsageStatsResponse(function_quota=9, current_usage=1)
        return default_handler(rpc, request)

    client, log = sync_client(answer)
    client.function(FUNCTION).update(description="new")
    assert [rpc for rpc, *_ in log] == ["GetFunction", "GetFunctionUsageStats", "UpdateFunction"]
    sent = log[-1][1]
    assert (sent.name, sent.description, sent.payload, sent.usage_quota, sent.public) == ("echo", "new", b"p", 9, True)
    assert [a.key for a in sent.arguments] == ["m"]
    log.clear()
    client.function(FUNCTION).update(usage_quota=None)  # given: no need to read the stats
    assert [rpc for rpc, *_ in log] == ["GetFunction", "UpdateFunction"] and log[-1][1].usage_quota == -1


# --- objects and the async client ----------------------------------------------------------------


def test_task_and_function_objects() -> None:
    client, log = sync_client()
    task = client.function(FUNCTION).create_task({"message": "hi"})
    assert isinstance(task, Task) and task.id == TASK and task == client.task(TASK)
    task.invoke()
    assert task.wait().status is TaskStatus.FINISHED and task.last is not None
    assert task.result() == b"hi"
    task.approve()
    task.cancel()
    task.assign({"in": "input-1"})
    assert task.refresh().status is TaskStatus.CREATED
    assert [rpc for rpc, *_ in log] == ["CreateTask", "InvokeTask", "WaitTask", "WaitTask", "ApproveTask", "CancelTask", "AssignData", "GetTask"]


def test_async_client_shares_the_core() -> None:
    async def main() -> None:
        client, log = async_client()
        function_id = await client.register_function("builtin-echo", arguments=["message"])
        task_id = await client.create_task(function_id, {"message": "hi"})
        await client.invoke_task(task_id)
        assert await client.get_task_result(task_id) == b"hi"
        new_task = await client.function(function_id).create_task({"message": "again"})
        assert (await new_task.wait()).status is TaskStatus.FINISHED
        assert await new_task.result() == b"hi"
        assert [rpc for rpc, *_ in log] == ["RegisterFunction", "CreateTask", "InvokeTask", "WaitTask", "CreateTask", "WaitTask", "WaitTask"]
        assert log[0][1].usage_quota == -1 and log[0][1].public is True

    asyncio.run(main())


def test_async_client_raises_task_errors() -> None:
    async def main() -> None:
        client, _ = async_client(lambda rpc, req: task_response(common_pb.Canceled, err("Task canceled")))
        with pytest.raises(TaskCanceled, match="Task canceled"):
            await client.get_task_result(TASK)

    asyncio.run(main())


# --- listings and refusals (Kettle) ------------------------------------------------------------


def test_list_my_tasks_and_files_walk_every_page_with_the_cursor() -> None:
    pages = {"": (["task-3", "task-2"], "c2", True), "c2": (["task-1"], "c1", False)}

    def handler(rpc: str, request: Any) -> Any:
        ids, cursor, more = pages[request.after]
        if rpc == "ListMyTasks":
            return kettle_pb.ListMyTasksResponse(task_ids=ids, next=cursor, more=more)
        return kettle_pb.ListMyFilesResponse(data_ids=ids, next=cursor, more=more)

    client, log = sync_client(handler)
    assert client.list_my_tasks() == ["task-3", "task-2", "task-1"]
    assert client.list_my_files() == ["task-3", "task-2", "task-1"]
    assert [(rpc, request.after, request.limit) for rpc, request, _, _ in log] == [
        ("ListMyTasks", "", 0), ("ListMyTasks", "c2", 0), ("ListMyFiles", "", 0), ("ListMyFiles", "c2", 0)]
    aclient, _ = async_client(handler)
    assert asyncio.run(aclient.list_my_tasks()) == ["task-3", "task-2", "task-1"]
    assert asyncio.run(aclient.list_my_files()) == ["task-3", "task-2", "task-1"]


def test_a_listing_that_does_not_move_its_cursor_ends() -> None:
    """A server answering `more` with the same cursor again cannot make the client loop."""
    core = _FrontendCore("alice", "tok")
    answer = kettle_pb.ListMyTasksResponse(task_ids=["task-1"], next="c", more=True)
    ids, steps = drive(core.list_my_tasks(), FakeClock(), lambda call: answer)
    assert ids == ["task-1"] and len(steps) == 2


def test_refuse_task_sends_the_reason_to_kettles_service() -> None:
    client, log = sync_client()
    client.refuse_task(TASK, "not this quarter")
    client.refuse_task(TASK)
    assert [(rpc, request.task_id, request.reason) for rpc, request, _, _ in log] == [
        ("RefuseTask", TASK, "not this quarter"), ("RefuseTask", TASK, "")]


def test_get_task_shows_refusals() -> None:
    refusal = pb.TaskRefusal(user_id="bob", refused_at=1_800_000_000, task_digest="d" * 64, reason="no")
    info = parse_task(task_response(refusals=[refusal]))
    assert info.refusals == (TaskRefusal("bob", 1_800_000_000, "d" * 64, "no"),)
    assert info.to_json()["refusals"] == [
        {"user_id": "bob", "refused_at": 1_800_000_000, "task_digest": "d" * 64, "reason": "no"}]
    assert parse_task(task_response()).refusals == ()  # a Teaclave frontend: none
