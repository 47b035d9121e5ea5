"""The scheduler's gRPC face (``proto/kettle_scheduler.proto``), reachable only by execution nodes.

A thin adapter: messages in, :class:`~kettle.services.scheduler.core.Scheduler`
decides. Storage trouble is answered UNAVAILABLE ("storage service error"), so a
node knows to retry rather than give up; malformed requests are INVALID_ARGUMENT,
a report about a task the node does not hold is FAILED_PRECONDITION.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import empty_pb2

from ...config import Config
from ...errors import InvalidArgument, StorageError, Unavailable
from ...model.records import TaskOutputs, TaskResult
from ...model.scheduling import HeartbeatAction
from ...rpc.generated import kettle_scheduler_pb2 as pb
from ...rpc.generated import kettle_scheduler_pb2_grpc as pb_grpc
from ...rpc.generated import teaclave_common_pb2 as common_pb
from ...rpc.status import rpc_method
from ..platform_store import PlatformStore
from ..runtime import ServiceRuntime
from .core import Scheduler
from .settings import SchedulerSettings

log = logging.getLogger(__name__)

STORAGE_RETRY_SECS = 1.0

Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])


def storage_unavailable(method: Handler) -> Handler:
    """Storage failures become UNAVAILABLE: the node's cue to retry the same call later."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except StorageError as exc:
            log.warning("%s: %s", method.__name__, exc.message)
            raise Unavailable("storage service error") from None

    return wrapper  # type: ignore[return-value]


def result_from_proto(request: pb.UpdateTaskResultRequest) -> TaskResult | None:
    """None when ``result`` is absent (refused); an empty TaskResult when no member is set."""
    if not request.HasField("result"):
        return None
    which = request.result.WhichOneof("result")
    if which == "Ok":
        ok = request.result.Ok
        return TaskResult(outputs=TaskOutputs(bytes(ok.return_value), dict(ok.tags_map), tuple(ok.log)),
                          sandbox_layers=tuple(ok.sandbox_layers), receipt=bytes(ok.receipt))
    if which == "Err":
        err = request.result.Err
        return TaskResult(failure=err.reason, sandbox_layers=tuple(err.sandbox_layers), receipt=bytes(err.receipt))
    return TaskResult()


class SchedulerServicer(pb_grpc.KettleSchedulerServicer):
    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler

    @rpc_method
    @storage_unavailable
    async def Heartbeat(self, request: pb.HeartbeatRequest, context: grpc.aio.ServicerContext) -> pb.HeartbeatResponse:
        if request.status not in (common_pb.Idle, common_pb.Executing):
            raise InvalidArgument("invalid executor status")
        stop = await self._scheduler.heartbeat(
            request.executor_id, request.status == common_pb.Executing, request.task_id
        )
        return pb.HeartbeatResponse(command=common_pb.Stop if stop is not None else common_pb.NoAction,
                                    canceled=stop is HeartbeatAction.CANCEL)

    @rpc_method
    @storage_unavailable
    async def PullTask(self, request: pb.PullTaskRequest, context: grpc.aio.ServicerContext) -> pb.PullTaskResponse:
        handed = await self._scheduler.pull(request.executor_id, request.wait_ms)
        if handed is None:
            return pb.PullTaskResponse(found=False)
        return pb.PullTaskResponse(found=True, staged_task=handed.staged_task, attempt=handed.attempt)

    @rpc_method
    @storage_unavailable
    async def UpdateTaskStatus(
        self, request: pb.UpdateTaskStatusRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        await self._scheduler.update_status(request.executor_id, request.task_id)
        return empty_pb2.Empty()

    @rpc_method
    @storage_unavailable
    async def UpdateTaskResult(
        self, request: pb.UpdateTaskResultRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        await self._scheduler.update_result(request.executor_id, request.task_id, result_from_proto(request))
        return empty_pb2.Empty()


async def load_until_storage_answers(scheduler: Scheduler) -> None:
    """Storage may still be starting (or restarting with us): keep trying, nodes wait meanwhile."""
    while True:
        try:
            await scheduler.load()
            return
        except StorageError as exc:
            log.warning("cannot look at the stored leases yet (%s); retrying", exc.message)
            await asyncio.sleep(STORAGE_RETRY_SECS)


async def main(config: Config) -> None:
    settings = SchedulerSettings.load(config)
    runtime = ServiceRuntime("scheduler", config)
    await runtime.attest()
    scheduler = Scheduler(PlatformStore(runtime.peers), settings)
    await load_until_storage_answers(scheduler)
    log.info("lease %.1f s, at most %d attempt(s) per task", settings.lease_secs, settings.max_attempts)
    servicer = SchedulerServicer(scheduler)
    runtime.internal_server(lambda server: pb_grpc.add_KettleSchedulerServicer_to_server(servicer, server))
    background = [asyncio.create_task(scheduler.expire_leases_forever()),
                  asyncio.create_task(scheduler.doorbell.watch_forever())]
    try:
        await runtime.serve()
    finally:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
