"""The frontend SDK against a full running platform: the builtin-echo flow, sync and
async, waiting without polling, canceled tasks and timeouts."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

import pytest

from conftest import Platform
from kettle.errors import InvalidArgument
from kettle.model.records import TaskStatus
from kettle.sdk import (
    AsyncFrontendClient,
    FrontendClient,
    FunctionArgument,
    TaskCanceled,
    TaskOutputs,
    TaskWaitTimeout,
)

MESSAGE = "Hello, Teaclave!"


def admin_token(platform: Platform) -> str:
    return platform.auth_client().user_login("admin", "teaclave")


@pytest.fixture
def client(full_platform: Platform) -> Any:
    with FrontendClient(full_platform.frontend_address, full_platform.trust(), "admin", admin_token(full_platform)) as c:
        yield c


def register_echo(client: FrontendClient) -> str:
    return client.register_function("builtin-echo", "Native Echo Function", "builtin", arguments=[FunctionArgument("message")])


def test_echo_result_arrives_as_soon_as_the_task_finishes(client: FrontendClient, full_platform: Platform) -> None:
    function_id = register_echo(client)
    info = client.get_function(function_id)
    assert (info.name, info.owner, info.public) == ("builtin-echo", "admin", True)
    assert client.get_function_usage_stats(function_id).quota is None  # the SDK registers with -1
    task_id = client.create_task(function_id, {"message": MESSAGE})
    assert client.get_task(task_id).function_arguments == {"message": MESSAGE}

    # A second client watches the task closely, to know when it really finished.
    finished_seen: list[float] = []
    watching, stop = threading.Event(), threading.Event()

    def watch() -> None:
        with FrontendClient(full_platform.frontend_address, full_platform.trust(), "admin", admin_token(full_platform)) as watcher:
            while not stop.is_set():
                terminal = watcher.get_task(task_id).terminal
                watching.set()
                if terminal:
                    finished_seen.append(time.monotonic())
                    return
                time.sleep(0.02)

    rpcs: list[str] = []
    invoke = client._invoke

    def counting(call: Any) -> Any:
        rpcs.append(call.rpc)
        return invoke(call)

    client._invoke = counting  # type: ignore[method-assign]
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        assert watching.wait(30)
        client.invoke_task(task_id)
        assert client.get_task_result(task_id, timeout=60) == MESSAGE.encode()
        returned = time.monotonic()
        watcher.join(10)
    finally:
        stop.set()
    assert finished_seen, "the watcher never saw the task end"
    # Returned within a fraction of a second of the end (a 1-second poll could be up to 1 s late).
    assert returned - finished_seen[0] < 0.5
    assert rpcs == ["InvokeTask", "WaitTask"]  # one wait, no GetTask polling
    final = client.get_task(task_id)
    assert final.status is TaskStatus.FINISHED and isinstance(final.result, TaskOutputs)
    assert client.get_function_usage_stats(function_id).current_usage == 1
    assert function_id in client.list_functions().registered_functions


def test_task_objects(client: FrontendClient) -> None:
    task = client.function(register_echo(client)).create_task({"message": MESSAGE})
    assert task.refresh().status is TaskStatus.CREATED
    task.invoke()
    info = task.wait()
    assert info.status is TaskStatus.FINISHED and info.result == TaskOutputs(MESSAGE.encode(), {}, info.result.log)  # type: ignore[union-attr]
    assert task.result() == MESSAGE.encode()


def test_canceled_task_raises_with_the_reason(client: FrontendClient) -> None:
    task = client.function(register_echo(client)).create_task({"message": MESSAGE})
    task.cancel()
    with pytest.raises(TaskCanceled) as canceled:
        client.get_task_result(task.id, timeout=30)
    assert canceled.value.reason == "Task canceled" and canceled.value.task_id == task.id
    assert task.wait(timeout=5).status is TaskStatus.CANCELED


def test_waiting_on_a_task_that_is_never_invoked_times_out(client: FrontendClient) -> None:
    task = client.function(register_echo(client)).create_task({"message": MESSAGE})
    started = time.monotonic()
    assert task.wait(timeout=1.0).status is TaskStatus.CREATED
    assert 0.9 <= time.monotonic() - started < 5
    with pytest.raises(TaskWaitTimeout):
        task.result(timeout=0.5)


def test_errors_are_kettle_errors(client: FrontendClient) -> None:
    with pytest.raises(InvalidArgument, match="invalid task id"):
        client.get_task(f"task-{uuid.uuid4()}")
    with pytest.raises(InvalidArgument, match="invalid function id"):
        client.create_task(f"function-{uuid.uuid4()}", {})


def test_async_client_echo(full_platform: Platform) -> None:
    token = admin_token(full_platform)

    async def main() -> None:
        client = await AsyncFrontendClient.connect(full_platform.frontend_address, full_platform.trust(), user_id="admin", token=token)
        try:
            function_id = await client.register_function("builtin-echo", arguments=["message"])
            task_id = await client.create_task(function_id, {"message": MESSAGE})
            await client.invoke_task(task_id)
            assert await client.get_task_result(task_id, timeout=60) == MESSAGE.encode()

            task = await client.function(function_id).create_task({"message": "again"})
            await task.invoke()
            info = await task.wait(timeout=60)
            assert info.status is TaskStatus.FINISHED and await task.result() == b"again"

            canceled = await client.function(function_id).create_task({"message": "never"})
            await canceled.cancel()
            with pytest.raises(TaskCanceled, match="Task canceled"):
                await canceled.result(timeout=30)
        finally:
            await client.close()

    asyncio.run(main())
