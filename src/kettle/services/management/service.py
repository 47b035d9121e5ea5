"""The management service (internal port 17777): functions, data files, tasks, audit logs.

A thin adapter. It reads the caller from the ``id``/``role`` metadata the
frontend forwards, turns protobuf messages into model values, lets
:mod:`kettle.model.functions`, :mod:`kettle.model.files` and
:mod:`kettle.model.tasks` decide, and does the storage round trips. Task
records are also written by the scheduler, so every task change is a
compare-and-put (:meth:`PlatformStore.update_task`); function, usage and index
records get the same treatment because two frontend calls can race on them too.
New task and file records are written create-only, so a UUID collision can
never overwrite someone's record.

Invoked tasks become self-contained staged tasks on the storage queue
``staged-task``; a fresh value under ``staged-task-signal`` wakes the scheduler.

Each party's trail (``docs/trail.md``): an approval writes its pending trail
event in the same compare-and-put as the task record; :mod:`.trail` appends it
to the party's signed chain, and ``ListMyTrail`` lists the caller's own.

Each party's listings (:mod:`kettle.model.listings`): a task's index entries (one per
participant) are written in the same transaction as the task record, a file's (one per
owner) with the file record; ``ListMyTasks`` and ``ListMyFiles`` read them by prefix.
Records stored before the indexes existed are indexed once at start (:meth:`backfill_indexes`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from google.protobuf import empty_pb2

from ...config import Config, ManagementConfig
from ...crypto.schemas import FileCryptoError
from ...errors import (
    CatalogueError,
    InternalError,
    InvalidArgument,
    KettleError,
    PermissionDenied,
    StorageError,
    StorageUnavailable,
)
from ...model import consent, listings
from ...model import files as file_rules
from ...model import functions as fn_rules
from ...model import tasks as task_rules
from ...model import trail as trail_rules
from ...model.audit import AuditError, check_limit, parse_query
from ...model.files import STRICT_URLS, UrlPolicy
from ...model.functions import Caller, FunctionDefinition, FunctionIndex, UsageRecord
from ...model.ids import Kind, external_id, new_uuid
from ...model.records import (
    STAGED_SIGNAL_KEY,
    STAGED_TASK_QUEUE,
    CryptoInfo,
    FileRecord,
    FunctionArgument,
    FunctionFile,
    FunctionRecord,
    ObjectStoreCredentials,
    TaskRecord,
    TaskResult,
    cancel_request_key,
    input_key,
    output_key,
    pinned_task_key,
    pinned_tasks_prefix,
    task_key,
    usage_key,
    user_index_key,
)
from ...rpc.generated import kettle_management_pb2 as pb
from ...rpc.generated import kettle_management_pb2_grpc as pb_grpc
from ...rpc.generated import teaclave_common_pb2 as common_pb
from ...rpc.generated import teaclave_frontend_service_pb2 as fpb
from ...rpc.status import INTERNAL_ERROR_TEXT, rpc_method
from ..platform_store import (
    MAX_UPDATE_ATTEMPTS,
    NoChange,
    PlatformStore,
    when_storage_answers,
)
from ..runtime import ServiceRuntime
from ..storage.backend import RecordWrite
from .quotas import UserQuotas, warn_if_off
from .trail import PAGE_ENTRIES, TrailBook, TrailDamaged, attested_signer

log = logging.getLogger(__name__)

MAX_WAIT_MS = 60_000
"""WaitTask waits at most this long (longer requests are shortened); the client loops."""

INT32_MAX = 2**31 - 1
STAGED_SIGNAL_BYTES = 16

Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Any]]


def management_rpc(method: Handler) -> Handler:
    """:func:`rpc_method`, and a storage failure becomes INTERNAL "service internal
    error" (Appendix B): clients see the reference's text, the log keeps the cause."""

    @functools.wraps(method)
    async def run(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except StorageUnavailable:
            raise  # UNAVAILABLE naming storage: an outage, not an internal error
        except StorageError as exc:
            log.error("%s: %s", method.__name__, exc)
            raise InternalError(INTERNAL_ERROR_TEXT) from None
        except FileCryptoError as exc:
            # The model turns these into INVALID_ARGUMENT itself; this is the safety net, so
            # a client's bad crypto info never degrades to "service internal error".
            raise InvalidArgument(str(exc)) from None

    return rpc_method(run)


def caller_of(context: grpc.aio.ServicerContext) -> Caller:
    """The user the frontend authenticated (metadata ``id``) and its token role (``role``)."""
    metadata = {key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)}
    user_id, role = metadata.get("id"), metadata.get("role")
    if user_id is None:
        raise CatalogueError("missing user id")
    if role is None:
        raise CatalogueError("missing user role")
    return Caller.from_metadata(user_id, role)


def _decode(cls: Any, raw: bytes | None) -> Any:
    if raw is None:
        return None
    try:
        return cls.from_bytes(raw)
    except ValueError as exc:
        log.error("corrupt %s record: %s", cls.__name__, exc)
        raise InternalError(INTERNAL_ERROR_TEXT) from None


def _size(record: FunctionRecord | None) -> int:
    """What a function counts on its owner's storage quota: its record and its payload (stored apart)."""
    return 0 if record is None else len(record.to_bytes()) + len(record.payload)


def _unless_same(old: TaskRecord, new: TaskRecord) -> TaskRecord:
    """Skip writes that change nothing (each write wakes WaitTask callers)."""
    if new == old:
        raise NoChange
    return new


# --- protobuf <-> model --------------------------------------------------------------


def function_definition(request: fpb.RegisterFunctionRequest | fpb.UpdateFunctionRequest) -> FunctionDefinition:
    return FunctionDefinition(
        name=request.name,
        description=request.description,
        executor_type=request.executor_type,
        public=request.public,
        payload=request.payload,
        arguments=tuple(FunctionArgument(a.key, a.default_value, a.allow_overwrite) for a in request.arguments),
        inputs=tuple(FunctionFile(f.name, f.description, f.optional) for f in request.inputs),
        outputs=tuple(FunctionFile(f.name, f.description, f.optional) for f in request.outputs),
        user_allowlist=tuple(request.user_allowlist),
        usage_quota=request.usage_quota,
    )


def function_response(function: FunctionRecord) -> fpb.GetFunctionResponse:
    return fpb.GetFunctionResponse(
        name=function.name,
        description=function.description,
        executor_type=function.executor_type,
        owner=function.owner,
        payload=function.payload,
        public=function.public,
        arguments=[
            fpb.FunctionArgument(key=a.key, default_value=a.default_value, allow_overwrite=a.allow_overwrite)
            for a in function.arguments
        ],
        inputs=[fpb.FunctionInput(name=f.name, description=f.description, optional=f.optional) for f in function.inputs],
        outputs=[
            fpb.FunctionOutput(name=f.name, description=f.description, optional=f.optional) for f in function.outputs
        ],
        user_allowlist=list(function.user_allowlist),
    )


def crypto_info_of(request: fpb.RegisterInputFileRequest | fpb.RegisterOutputFileRequest) -> CryptoInfo | None:
    """The request's crypto info, None when the field is absent ("missing crypto_info")."""
    if not request.HasField("crypto_info"):
        return None
    info = request.crypto_info
    return CryptoInfo(info.schema, bytes(info.key), bytes(info.iv))


def s3_credentials_of(request: Any) -> ObjectStoreCredentials | None:
    """The owner's s3 credentials of a file request (Kettle field 100), None when absent."""
    if not request.HasField("s3_credentials"):
        return None
    given = request.s3_credentials
    return ObjectStoreCredentials(given.access_key_id, given.secret_access_key, given.session_token,
                                  given.endpoint_url, given.region)


def task_definition(request: fpb.CreateTaskRequest) -> task_rules.TaskDefinition:
    return task_rules.TaskDefinition(
        function_arguments=request.function_arguments,
        executor=request.executor,
        inputs_ownership=tuple((o.data_name, tuple(o.uids)) for o in request.inputs_ownership),
        outputs_ownership=tuple((o.data_name, tuple(o.uids)) for o in request.outputs_ownership),
    )


def result_message(result: TaskResult) -> common_pb.TaskResult:
    message = common_pb.TaskResult()
    if result.outputs is not None:
        message.Ok.return_value = result.outputs.return_value
        for name, tag in result.outputs.tags_map.items():
            message.Ok.tags_map[name] = tag
        message.Ok.log.extend(result.outputs.log)
        message.Ok.sandbox_layers.extend(result.sandbox_layers)
        message.Ok.receipt = result.receipt
    elif result.failure is not None:
        message.Err.reason = result.failure
        message.Err.sandbox_layers.extend(result.sandbox_layers)
        message.Err.receipt = result.receipt
    return message


def task_response(task: TaskRecord) -> fpb.GetTaskResponse:
    """GetTask's and WaitTask's answer; ``result`` is always present (empty = not ready),
    so SDKs that test for the field see it as soon as the task exists (§11 item 5)."""
    response = fpb.GetTaskResponse(
        task_id=external_id(Kind.TASK, task.uuid),
        creator=task.creator,
        function_id=external_id(Kind.FUNCTION, task.function_id),
        function_owner=task.function_owner,
        function_arguments=task.function_arguments,
        inputs_ownership=[fpb.OwnerList(data_name=k, uids=v) for k, v in task.inputs_ownership.items()],
        outputs_ownership=[fpb.OwnerList(data_name=k, uids=v) for k, v in task.outputs_ownership.items()],
        participants=list(task.participants),
        approved_users=list(task.approved_users),
        assigned_inputs=[
            fpb.DataMap(data_name=k, data_id=external_id(Kind.INPUT, f.uuid)) for k, f in task.assigned_inputs.items()
        ],
        assigned_outputs=[
            fpb.DataMap(data_name=k, data_id=external_id(Kind.OUTPUT, f.uuid)) for k, f in task.assigned_outputs.items()
        ],
        status=int(task.status),
        function_digest=task.function_digest,
        task_digest=consent.task_digest(task),
        task_manifest=consent.task_manifest(task),
        approvals=[
            fpb.TaskApproval(user_id=a.user_id, task_digest=a.task_digest, approved_at=a.approved_at,
                             expires_at=a.expires_at or 0)
            for a in task.approvals
        ],
        refusals=[
            fpb.TaskRefusal(user_id=r.user_id, refused_at=r.refused_at, task_digest=r.task_digest, reason=r.reason)
            for r in task.refusals
        ],
    )
    response.result.CopyFrom(result_message(task.result))
    response.result.SetInParent()
    return response


# --- the servicer -----------------------------------------------------------------------


class KettleManagementServicer(pb_grpc.KettleManagementServicer):
    def __init__(
        self,
        store: PlatformStore,
        limits: ManagementConfig = ManagementConfig(),
        url_policy: UrlPolicy = STRICT_URLS,
        trail: TrailBook | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``trail`` appends the parties' trail events (None: they stay pending, e.g. in
        tests of other parts; the running service always has one)."""
        self._store = store
        self._clock = clock
        """Wall-clock Unix seconds: approvals are stamped with it and expire by it."""
        self._urls = url_policy
        self._audit: Any = None
        self._quotas = UserQuotas(store, limits)
        self._trail = trail

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # --- record helpers (compare-and-put loops) ---

    async def _update(
        self, key: bytes, cls: Any, change: Callable[[Any], Any], also: Sequence[RecordWrite] = ()
    ) -> tuple[Any, Any]:
        """Apply ``change(current or None)`` atomically; it returns the new record, or None
        to write nothing. ``also`` are written in the same transaction as a new record.
        Returns (record it applied to, new record)."""
        decoded: dict[bytes | None, Any] = {}

        def change_raw(raw: bytes | None) -> bytes | None:
            current = decoded[raw] = _decode(cls, raw)
            updated = change(current)
            if updated is None or updated == current:
                return None
            data: bytes = updated.to_bytes()
            decoded[data] = updated
            return data

        before, after = await self._store.update(key, change_raw, lambda _: also)
        return decoded[before], decoded[after]

    async def _change_index(
        self, user_id: str, change: Callable[[FunctionIndex], FunctionIndex], *, create: bool
    ) -> None:
        def apply(index: FunctionIndex | None) -> FunctionIndex | None:
            if index is None and not create:
                return None  # missing indexes are skipped, never created by a removal
            return change(index or FunctionIndex(user_id))

        await self._update(user_index_key(user_id), FunctionIndex, apply)

    async def _get_function(self, bare: str) -> FunctionRecord | None:
        return await self._store.get_function(bare)

    async def _get_usage(self, bare: str) -> UsageRecord | None:
        return _decode(UsageRecord, await self._store.get(usage_key(bare)))  # type: ignore[no-any-return]

    async def _get_task(self, bare: str) -> TaskRecord:
        task = await self._store.get_task(task_key(bare))
        if task is None:
            raise InvalidArgument(task_rules.INVALID_TASK_ID)
        return task

    # --- functions ---

    @management_rpc
    async def RegisterFunction(
        self, request: fpb.RegisterFunctionRequest, context: grpc.aio.ServicerContext
    ) -> fpb.RegisterFunctionResponse:
        caller = caller_of(context)
        record = fn_rules.register_function(function_definition(request), caller, new_uuid())
        # Shielded: a client that hangs up must not leave a function without its indexes.
        await asyncio.shield(self._store_new_function(record))
        return fpb.RegisterFunctionResponse(function_id=external_id(Kind.FUNCTION, record.uuid))

    async def _store_new_function(self, record: FunctionRecord) -> None:
        function_id = external_id(Kind.FUNCTION, record.uuid)
        size = _size(record)
        await self._quotas.reserve_bytes(record.owner, size)
        try:
            # The usage record goes first: a visible function always has one.
            await self._store.put(usage_key(record.uuid), UsageRecord(record.uuid).to_bytes())
            if not await self._store.create_function(record):  # a UUID v4 collision: never overwrite
                raise InternalError(INTERNAL_ERROR_TEXT)
        except BaseException:
            await self._quotas.settle_bytes(record.owner, -size)
            raise
        await self._change_index(record.owner, lambda index: index.with_registered(function_id), create=True)
        await asyncio.gather(*(
            self._change_index(user, lambda index: index.with_allowed(function_id), create=True)
            for user in dict.fromkeys(record.user_allowlist)
        ))

    @management_rpc
    async def GetFunction(
        self, request: fpb.GetFunctionRequest, context: grpc.aio.ServicerContext
    ) -> fpb.GetFunctionResponse:
        caller = caller_of(context)
        bare = fn_rules.parse_function_id(request.function_id)
        return function_response(fn_rules.function_view(await self._get_function(bare), caller))

    @management_rpc
    async def GetFunctionUsageStats(
        self, request: fpb.GetFunctionUsageStatsRequest, context: grpc.aio.ServicerContext
    ) -> fpb.GetFunctionUsageStatsResponse:
        caller = caller_of(context)
        bare = fn_rules.parse_function_id(request.function_id)
        function = fn_rules.check_may_read_usage(await self._get_function(bare), caller)
        usage = await self._get_usage(bare)
        if usage is None:
            raise InvalidArgument(fn_rules.INVALID_FUNCTION_ID)
        return fpb.GetFunctionUsageStatsResponse(
            function_quota=fn_rules.quota_to_wire(function.usage_quota),
            current_usage=min(usage.use_numbers, INT32_MAX),
        )

    @management_rpc
    async def UpdateFunction(
        self, request: fpb.UpdateFunctionRequest, context: grpc.aio.ServicerContext
    ) -> fpb.UpdateFunctionResponse:
        caller = caller_of(context)
        bare = fn_rules.parse_function_id(request.function_id)
        definition = function_definition(request)
        await asyncio.shield(self._update_function(bare, caller, definition))
        return fpb.UpdateFunctionResponse(function_id=external_id(Kind.FUNCTION, bare))

    async def _update_function(self, bare: str, caller: Caller, definition: FunctionDefinition) -> None:
        # The function's growth is reserved on its owner's quota first (the rules refuse first,
        # in their order), then settled to what the compare-and-put really changed.
        current = await self._get_function(bare)
        planned = fn_rules.update_function(current, caller, definition)
        owner, reserved = planned.owner, max(0, _size(planned) - _size(current))
        await self._quotas.reserve_bytes(owner, reserved)
        try:
            before, after = await self._store.update_function(
                bare, lambda current: fn_rules.update_function(current, caller, definition)
            )
        except BaseException:
            await self._quotas.settle_bytes(owner, -reserved)
            raise
        await self._quotas.settle_bytes(owner, _size(after) - _size(before) - reserved)
        # Kettle refreshes the allowed lists (§12 #9) so ListFunctions follows the allowlist.
        function_id = external_id(Kind.FUNCTION, bare)
        added, removed = fn_rules.allowlist_changes(before, after)
        await asyncio.gather(
            *(self._change_index(u, lambda index: index.with_allowed(function_id), create=True) for u in added),
            *(self._change_index(u, lambda index: index.without_allowed(function_id), create=False) for u in removed),
        )
        if fn_rules.function_digest(before) != fn_rules.function_digest(after):
            await self._follow_function(after)

    async def _follow_function(self, function: FunctionRecord) -> None:
        """Every task pinned to the function and not yet invoked follows the update: approvals
        given to the old code lapse at once (``task_rules.follow_function``). Best effort: a
        task missed here (created concurrently, or a storage failure) still cannot run the new
        code on old consent, since InvokeTask and the node check the pin."""
        prefix = pinned_tasks_prefix(function.uuid)
        for key in await self._store.keys_with_prefix(prefix):
            bare = key[len(prefix):].decode(errors="replace")
            if await self._store.get(task_key(bare)) is None:  # its CreateTask failed after the entry
                await self._store.delete(key)
                continue
            try:
                if await self._follow_task(bare, function):  # invoked or over: it never follows again
                    await self._store.delete(key)
            except KettleError as exc:
                log.error("task %s did not follow the update of function %s: %s", bare, function.uuid, exc)

    async def _follow_task(self, bare: str, function: FunctionRecord) -> bool:
        """One task follows the update of its function; whether it is invoked (or over)."""
        done = False
        before: tuple[str, ...] = ()

        def follow(task: TaskRecord) -> TaskRecord:
            nonlocal done, before
            done, before = task_rules.invoked(task), task.participants
            return _unless_same(task, task_rules.follow_function(task, function))

        def newcomers(task: TaskRecord) -> list[RecordWrite]:
            # A function that turned private makes its owner a participant: the task joins its
            # listing, in the same write (dated now: the index keeps no creation time to copy).
            added = set(task.participants) - set(before)
            return list(listings.task_index_writes(added, self._now_ms(), task.uuid))

        await self._store.update_task(task_key(bare), follow, also=newcomers)
        return done

    @management_rpc
    async def DeleteFunction(
        self, request: fpb.DeleteFunctionRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        caller = caller_of(context)
        bare = fn_rules.parse_function_id(request.function_id)
        function = fn_rules.check_owner(await self._get_function(bare), caller)
        await asyncio.shield(self._delete_function(function))
        return empty_pb2.Empty()

    async def _delete_function(self, function: FunctionRecord) -> None:
        # The usage record stays, as in Teaclave: tasks on the function then fail at
        # InvokeTask with "invalid function id" because the function itself is gone.
        await self._store.delete_function(function.uuid)
        await self._quotas.settle_bytes(function.owner, -_size(function))
        await self._forget_in_indexes(function)

    async def _forget_in_indexes(self, function: FunctionRecord) -> None:
        """Remove the function from its owner's and allowlisted users' indexes (§12 #8, DisableFunction)."""
        function_id = external_id(Kind.FUNCTION, function.uuid)
        await asyncio.gather(*(
            self._change_index(user, lambda index: index.without(function_id), create=False)
            for user in dict.fromkeys((function.owner, *function.user_allowlist))
        ))

    @management_rpc
    async def DisableFunction(
        self, request: fpb.DisableFunctionRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        caller = caller_of(context)
        bare = fn_rules.parse_function_id(request.function_id)
        await asyncio.shield(self._disable_function(bare, caller))
        return empty_pb2.Empty()

    async def _disable_function(self, bare: str, caller: Caller) -> None:
        def disable(current: FunctionRecord | None) -> FunctionRecord:
            return fn_rules.disable_function(current, caller)

        before, _ = await self._store.update_function(bare, disable)
        await self._forget_in_indexes(before)

    @management_rpc
    async def ListFunctions(
        self, request: fpb.ListFunctionsRequest, context: grpc.aio.ServicerContext
    ) -> fpb.ListFunctionsResponse:
        caller = caller_of(context)
        fn_rules.check_may_list(caller, request.user_id)
        index: FunctionIndex | None = _decode(FunctionIndex, await self._store.get(user_index_key(request.user_id)))
        all_ids = None
        if caller.is_admin and index is not None:
            all_ids = fn_rules.function_ids_from_keys(await self._store.keys_with_prefix(b"function-"))
        registered, allowed = fn_rules.list_functions(caller, request.user_id, index, all_ids)
        return fpb.ListFunctionsResponse(registered_functions=registered, allowed_functions=allowed)

    # --- tasks ---

    @management_rpc
    async def CreateTask(
        self, request: fpb.CreateTaskRequest, context: grpc.aio.ServicerContext
    ) -> fpb.CreateTaskResponse:
        caller = caller_of(context)
        bare_function = fn_rules.parse_function_id(request.function_id)
        function = await self._get_function(bare_function)
        task = task_rules.create_task(function, caller, task_definition(request), new_uuid())
        await self._quotas.admit_task(caller.user_id, task.uuid)
        pinned = pinned_task_key(task.function_id, task.uuid)
        listed = listings.task_index_writes(task.participants, self._now_ms(), task.uuid)
        try:
            # The index entries are written with the task, so an update of the function finds
            # every task pinned to it, and each participant's listing holds exactly its tasks.
            applied, _ = await self._store.compare_and_put(
                task_key(task.uuid), None, task.to_bytes(), [(pinned, b""), *listed])
            if not applied:  # a UUID v4 collision: never overwrite someone's task
                raise InternalError(INTERNAL_ERROR_TEXT)
        except BaseException:
            await self._quotas.forget_task(caller.user_id, task.uuid)
            raise
        return fpb.CreateTaskResponse(task_id=external_id(Kind.TASK, task.uuid))

    @management_rpc
    async def GetTask(self, request: fpb.GetTaskRequest, context: grpc.aio.ServicerContext) -> fpb.GetTaskResponse:
        caller = caller_of(context)
        bare = task_rules.parse_task_id(request.task_id)
        task = task_rules.check_may_read_task(await self._store.get_task(task_key(bare)), caller)
        return task_response(task)

    @management_rpc
    async def WaitTask(self, request: pb.WaitTaskRequest, context: grpc.aio.ServicerContext) -> fpb.GetTaskResponse:
        """GetTask that returns once the task is terminal or ``timeout_ms`` passed,
        woken by the storage Watch on the task record rather than by polling."""
        caller = caller_of(context)
        bare = task_rules.parse_task_id(request.task_id)
        key = task_key(bare)
        raw = await self._store.get(key)
        task: TaskRecord = task_rules.check_may_read_task(_decode(TaskRecord, raw), caller)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(request.timeout_ms, MAX_WAIT_MS) / 1000
        while not task.status.terminal:
            remaining_ms = int((deadline - loop.time()) * 1000)
            if remaining_ms <= 0:
                break
            current = await self._store.watch(key, raw, remaining_ms)
            if current is None:  # tasks are never deleted; answer with what we last saw
                break
            raw, task = current, _decode(TaskRecord, current)
        return task_response(task)

    @management_rpc
    async def AssignData(self, request: fpb.AssignDataRequest, context: grpc.aio.ServicerContext) -> empty_pb2.Empty:
        """§6.3. The file records are read first, then the task changes by compare-and-put
        with snapshot copies of them; any refusal stores nothing."""
        caller = caller_of(context)
        bare = task_rules.parse_task_id(request.task_id)
        task = task_rules.check_may_assign(await self._get_task(bare), caller)
        inputs = [(m.data_name, m.data_id) for m in request.inputs]
        outputs = [(m.data_name, m.data_id) for m in request.outputs]
        input_ids, output_ids = task_rules.files_to_read(task, inputs, outputs)
        input_files = await self._read_files(input_key, input_ids)
        output_files = await self._read_files(output_key, output_ids)

        def assign(current: TaskRecord) -> TaskRecord:
            return _unless_same(
                current, task_rules.assign_data(current, caller, inputs, outputs, input_files, output_files)
            )

        await self._store.update_task(task_key(bare), assign)
        return empty_pb2.Empty()

    async def _read_files(self, key: Callable[[str], bytes], bares: list[str]) -> dict[str, FileRecord]:
        records = await asyncio.gather(*(self._store.get_file(key(b)) for b in bares))
        return {b: r for b, r in zip(bares, records, strict=True) if r is not None}

    @management_rpc
    async def ApproveTask(
        self, request: fpb.ApproveTaskRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        caller = caller_of(context)
        bare = task_rules.parse_task_id(request.task_id)
        task = await self._get_task(bare)
        function = await self._get_function(task.function_id)
        now = int(self._clock())

        def approve(current: TaskRecord) -> TaskRecord:
            return _unless_same(current, task_rules.approve_task(
                current, caller, function, now=now, expect_digest=request.expect_digest,
                valid_for_secs=request.valid_for_secs,
            ))

        def given(task: TaskRecord) -> list[RecordWrite]:
            approval = task.approval_of(caller.user_id)  # approve_task recorded it (or refused)
            digest = "" if approval is None else approval.task_digest
            return self._trail_event(task, caller, trail_rules.EventKind.APPROVAL, digest)

        await self._store.update_task(task_key(bare), approve, also=given)
        await self._append_trail(caller.user_id)
        return empty_pb2.Empty()

    @management_rpc
    async def RevokeApproval(
        self, request: pb.RevokeApprovalRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        caller = caller_of(context)
        bare = task_rules.parse_task_id(request.task_id)
        await self._get_task(bare)
        now = int(self._clock())
        revoked: dict[str, str] = {}

        def revoke(task: TaskRecord) -> TaskRecord:
            approval = task.approval_of(caller.user_id)
            revoked["digest"] = "" if approval is None else approval.task_digest
            return task_rules.revoke_approval(task, caller, now)

        await self._store.update_task(
            task_key(bare), revoke,
            also=lambda task: self._trail_event(task, caller, trail_rules.EventKind.REVOCATION, revoked["digest"]),
        )
        await self._append_trail(caller.user_id)
        return empty_pb2.Empty()

    # --- the parties' trails ---

    def _trail_event(
        self, task: TaskRecord, caller: Caller, kind: trail_rules.EventKind, digest: str, outcome: str = ""
    ) -> list[RecordWrite]:
        """The pending trail event of an approval (or its withdrawal, or a refusal) of the task
        digest ``digest``, written in the same transaction as the task record."""
        event = trail_rules.approval_event(task, caller.user_id, kind, self._now_ms(), new_uuid(), digest, outcome)
        return trail_rules.pending_writes([event], os.urandom(STAGED_SIGNAL_BYTES))

    async def _append_trail(self, party: str) -> None:
        """Append the party's pending events now, so its next listing needs no wait; a
        failure here is only logged: the event is pending and the append loop retries it."""
        if self._trail is None:
            return
        try:
            await self._trail.append_pending(party)
        except TrailDamaged as exc:
            log.error("not appending to a damaged trail: %s", exc.message)
        except KettleError as exc:
            log.warning("trail event of %s stays pending: %s", party, exc.message)

    @management_rpc
    async def ListMyTrail(
        self, request: pb.ListMyTrailRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListMyTrailResponse:
        caller = caller_of(context)
        if self._trail is None:
            raise InternalError(INTERNAL_ERROR_TEXT)
        limit = PAGE_ENTRIES if request.limit == 0 else min(request.limit, PAGE_ENTRIES)
        listing = await self._trail.listing(caller.user_id, request.after_sequence, limit)
        return pb.ListMyTrailResponse(entries=listing.entries, signed_head=listing.signed_head,
                                      last_sequence=listing.last_sequence, more=listing.more)

    # --- the parties' listings ---

    @management_rpc
    async def ListMyTasks(
        self, request: pb.ListMyTasksRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListMyTasksResponse:
        caller = caller_of(context)
        listings.check_cursor(request.after, files=False)
        keys = await self._store.keys_with_prefix(listings.party_tasks_prefix(caller.user_id))
        page = listings.tasks_page(caller.user_id, keys, request.after, request.limit)
        return pb.ListMyTasksResponse(task_ids=page.ids, next=page.next, more=page.more)

    @management_rpc
    async def ListMyFiles(
        self, request: pb.ListMyFilesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListMyFilesResponse:
        caller = caller_of(context)
        listings.check_cursor(request.after, files=True)
        keys = await self._store.keys_with_prefix(listings.party_files_prefix(caller.user_id))
        page = listings.files_page(caller.user_id, keys, request.after, request.limit)
        return pb.ListMyFilesResponse(data_ids=page.ids, next=page.next, more=page.more)

    async def backfill_indexes(self) -> int:
        """Index, once, the tasks and files stored before the listings existed (dated 0:
        they list as the oldest); returns how many entries it wrote.

        The records are scanned before the index, so a record created meanwhile (its entries
        written with it) is never indexed twice; running it twice (two replicas starting)
        writes the same keys again, which changes nothing."""
        if await self._store.get(listings.BACKFILL_DONE_KEY) is not None:
            return 0
        task_keys = await self._store.keys_with_prefix(b"task-")
        file_keys = [*await self._store.keys_with_prefix(b"input-"), *await self._store.keys_with_prefix(b"output-")]
        indexed = {listings.indexed_id(k) for prefix in (listings.TASK_PREFIX, listings.FILE_PREFIX)
                   for k in await self._store.keys_with_prefix(prefix.encode())}
        written = 0
        for key in task_keys:
            task = await self._store.get_task(key)
            if task is None:
                continue
            missing = [p for p in task.participants if (trail_rules.party_tag(p), task.uuid) not in indexed]
            for entry, value in listings.task_index_writes(missing, 0, task.uuid):
                await self._store.put(entry, value)
                written += 1
        for key in file_keys:
            record = await self._store.get_file(key)
            data_id = key.decode()
            if record is None:
                continue
            missing = [o for o in record.owner if (trail_rules.party_tag(o), data_id) not in indexed]
            for entry, value in listings.file_index_writes(missing, 0, data_id):
                await self._store.put(entry, value)
                written += 1
        await self._store.put(listings.BACKFILL_DONE_KEY, b"")
        return written

    # --- refusals ---

    @management_rpc
    async def RefuseTask(self, request: pb.RefuseTaskRequest, context: grpc.aio.ServicerContext) -> empty_pb2.Empty:
        caller = caller_of(context)
        task_rules.check_refusal_reason(request.reason)
        bare = task_rules.parse_task_id(request.task_id)
        await self._get_task(bare)
        now = int(self._clock())

        def refuse(task: TaskRecord) -> TaskRecord:
            return task_rules.refuse_task(task, caller, now, request.reason)

        def refused(task: TaskRecord) -> list[RecordWrite]:
            refusal = task.refusal_of(caller.user_id)
            assert refusal is not None  # refuse_task recorded it (or refused)
            return self._trail_event(task, caller, trail_rules.EventKind.REFUSAL, refusal.task_digest,
                                     refusal.reason)

        await self._store.update_task(task_key(bare), refuse, also=refused)
        await self._append_trail(caller.user_id)
        return empty_pb2.Empty()

    @management_rpc
    async def InvokeTask(self, request: fpb.InvokeTaskRequest, context: grpc.aio.ServicerContext) -> empty_pb2.Empty:
        caller = caller_of(context)
        bare = task_rules.parse_task_id(request.task_id)
        raw_task = await self._store.get(task_key(bare))
        if raw_task is None:
            raise InvalidArgument(task_rules.INVALID_TASK_ID)
        task = TaskRecord.from_bytes(raw_task)
        function, raw_usage = await asyncio.gather(self._get_function(task.function_id),
                                                   self._store.get(usage_key(task.function_id)))
        now = self._clock()
        # Every check of §6.5 in its order, on what we read; repeated below under compare-and-put.
        task_rules.invoke_task(task, caller, function, _decode(UsageRecord, raw_usage), now)
        assert function is not None
        # Shielded: a caller that goes away does not cut the transaction's answer off mid-way.
        await asyncio.shield(self._invoke(bare, caller, function, now, (raw_task, raw_usage)))
        return empty_pb2.Empty()

    async def _invoke(
        self, bare: str, caller: Caller, function: FunctionRecord, now: float, read: tuple[bytes | None, bytes | None]
    ) -> None:
        """Count one use, stage the task and queue it for the scheduler, in one storage
        transaction (the scheduler's doorbell rings in it too).

        All of it or none: a management replica, or the storage replica it talks to,
        dying mid-call leaves the task as it was, or staged, counted once and queued;
        never a Staged task that nothing queued, nor a use counted for a task that did
        not run. The quota is checked on the very usage record the transaction compares,
        so concurrent invocations can never run a function more often than its quota.
        ``read`` is the task and usage records as the caller read them: the first try
        compares against those; a conflict reads both again.
        """
        key, counted = task_key(bare), usage_key(function.uuid)
        raw_task, raw_usage = read
        for attempt in range(MAX_UPDATE_ATTEMPTS):
            if attempt:
                raw_task, raw_usage = await asyncio.gather(self._store.get(key), self._store.get(counted))
            if raw_task is None:
                raise InvalidArgument(task_rules.INVALID_TASK_ID)
            usage = _decode(UsageRecord, raw_usage)
            if usage is None:
                raise InvalidArgument(fn_rules.INVALID_FUNCTION_ID)
            fn_rules.check_quota(function, usage)
            task = TaskRecord.from_bytes(raw_task)
            task_rules.check_invoker(task, caller)
            task_rules.check_pinned(task, function)
            staged_record = task_rules.stage_task(task, now)
            staged = task_rules.build_staged_task(staged_record, function)
            applied, _ = await self._store.compare_and_put(
                key, raw_task, staged_record.to_bytes(),
                compared=[(counted, raw_usage, usage.incremented().to_bytes())],
                enqueue=(STAGED_TASK_QUEUE, staged.to_bytes(), STAGED_SIGNAL_KEY),
            )
            if applied:
                return
        raise StorageError(f"task {bare} is being changed too often; try again")

    @management_rpc
    async def CancelTask(self, request: fpb.CancelTaskRequest, context: grpc.aio.ServicerContext) -> empty_pb2.Empty:
        caller = caller_of(context)
        bare = task_rules.parse_task_id(request.task_id)
        await self._get_task(bare)
        needs_request = False

        def cancel(task: TaskRecord) -> TaskRecord:
            nonlocal needs_request
            canceled = task_rules.cancel_task(task, caller)
            needs_request = canceled is None
            if canceled is None:
                raise NoChange
            return canceled

        await self._store.update_task(task_key(bare), cancel)
        if needs_request:
            # Staged/Running: the scheduler owns the task now; it acts on this record.
            await self._store.put(cancel_request_key(bare), b"")
        return empty_pb2.Empty()

    # --- data files ---

    async def _create_file(self, key: bytes, record: FileRecord, caller: Caller) -> None:
        """Create-only: a UUID v4 collision must never overwrite someone's file. The
        record's bytes count on the quota of the caller who registers it. Each owner's
        listing entry is written with the record."""
        size = len(record.to_bytes())
        data_id = key.decode()  # input-<uuid> / output-<uuid>: the data id itself
        listed = listings.file_index_writes(record.owner, self._now_ms(), data_id)
        await self._quotas.reserve_bytes(caller.user_id, size)
        try:
            applied, _ = await self._store.compare_and_put(key, None, record.to_bytes(), listed)
            if not applied:
                raise InternalError(INTERNAL_ERROR_TEXT)
        except BaseException:
            await self._quotas.settle_bytes(caller.user_id, -size)
            raise

    async def _get_input(self, data_id: str) -> FileRecord | None:
        return await self._store.get_file(input_key(file_rules.parse_data_id(data_id, Kind.INPUT)))

    async def _get_output(self, data_id: str) -> FileRecord | None:
        return await self._store.get_file(output_key(file_rules.parse_data_id(data_id, Kind.OUTPUT)))

    @management_rpc
    async def RegisterInputFile(
        self, request: fpb.RegisterInputFileRequest, context: grpc.aio.ServicerContext
    ) -> fpb.RegisterInputFileResponse:
        caller = caller_of(context)
        record = file_rules.register_input_file(
            caller, request.url, request.cmac, crypto_info_of(request), new_uuid(), self._urls,
            s3_credentials_of(request),
        )
        await self._create_file(input_key(record.uuid), record, caller)
        return fpb.RegisterInputFileResponse(data_id=external_id(Kind.INPUT, record.uuid))

    @management_rpc
    async def RegisterOutputFile(
        self, request: fpb.RegisterOutputFileRequest, context: grpc.aio.ServicerContext
    ) -> fpb.RegisterOutputFileResponse:
        caller = caller_of(context)
        record = file_rules.register_output_file(
            caller, request.url, crypto_info_of(request), new_uuid(), self._urls, s3_credentials_of(request)
        )
        await self._create_file(output_key(record.uuid), record, caller)
        return fpb.RegisterOutputFileResponse(data_id=external_id(Kind.OUTPUT, record.uuid))

    @management_rpc
    async def UpdateInputFile(
        self, request: fpb.UpdateInputFileRequest, context: grpc.aio.ServicerContext
    ) -> fpb.UpdateInputFileResponse:
        caller = caller_of(context)
        old = await self._get_input(request.data_id)
        record = file_rules.update_file(old, caller, request.url, new_uuid(), output=False, policy=self._urls,
                                        s3_credentials=s3_credentials_of(request))
        await self._create_file(input_key(record.uuid), record, caller)
        return fpb.UpdateInputFileResponse(data_id=external_id(Kind.INPUT, record.uuid))

    @management_rpc
    async def UpdateOutputFile(
        self, request: fpb.UpdateOutputFileRequest, context: grpc.aio.ServicerContext
    ) -> fpb.UpdateOutputFileResponse:
        caller = caller_of(context)
        old = await self._get_output(request.data_id)
        record = file_rules.update_file(old, caller, request.url, new_uuid(), output=True, policy=self._urls,
                                        s3_credentials=s3_credentials_of(request))
        await self._create_file(output_key(record.uuid), record, caller)
        return fpb.UpdateOutputFileResponse(data_id=external_id(Kind.OUTPUT, record.uuid))

    @management_rpc
    async def RegisterFusionOutput(
        self, request: fpb.RegisterFusionOutputRequest, context: grpc.aio.ServicerContext
    ) -> fpb.RegisterFusionOutputResponse:
        caller = caller_of(context)
        bare = new_uuid()
        path = new_uuid()
        while path == bare:
            path = new_uuid()
        key = secrets.token_bytes(file_rules.FUSION_KEY_BYTES)
        record = file_rules.register_fusion_output(caller, request.owner_list, bare, path, key)
        await self._create_file(output_key(record.uuid), record, caller)
        return fpb.RegisterFusionOutputResponse(data_id=external_id(Kind.OUTPUT, record.uuid))

    @management_rpc
    async def RegisterInputFromOutput(
        self, request: fpb.RegisterInputFromOutputRequest, context: grpc.aio.ServicerContext
    ) -> fpb.RegisterInputFromOutputResponse:
        """The input gets the output's UUID; repeating the call leaves the same record."""
        caller = caller_of(context)
        derived = file_rules.input_from_output(await self._get_output(request.data_id), caller)

        def write(current: FileRecord | None) -> FileRecord:
            if current is not None and current != derived:
                # Another input under this UUID (a collision, or storage tampering): keep it.
                log.error("input-%s exists and is not derived from output-%s", derived.uuid, derived.uuid)
                raise InternalError(INTERNAL_ERROR_TEXT)
            return derived

        size = len(derived.to_bytes())
        await self._quotas.reserve_bytes(caller.user_id, size)
        try:
            listed = listings.file_index_writes(derived.owner, self._now_ms(), external_id(Kind.INPUT, derived.uuid))
            before, _ = await self._update(input_key(derived.uuid), FileRecord, write, listed)
        except BaseException:
            await self._quotas.settle_bytes(caller.user_id, -size)
            raise
        if before is not None:  # registered before: counted then
            await self._quotas.settle_bytes(caller.user_id, -size)
        return fpb.RegisterInputFromOutputResponse(data_id=external_id(Kind.INPUT, derived.uuid))

    @management_rpc
    async def GetInputFile(
        self, request: fpb.GetInputFileRequest, context: grpc.aio.ServicerContext
    ) -> fpb.GetInputFileResponse:
        caller = caller_of(context)
        owners, cmac = file_rules.file_view(await self._get_input(request.data_id), caller)
        return fpb.GetInputFileResponse(owner=list(owners), cmac=cmac)

    @management_rpc
    async def GetOutputFile(
        self, request: fpb.GetOutputFileRequest, context: grpc.aio.ServicerContext
    ) -> fpb.GetOutputFileResponse:
        caller = caller_of(context)
        owners, cmac = file_rules.file_view(await self._get_output(request.data_id), caller)
        return fpb.GetOutputFileResponse(owner=list(owners), cmac=cmac)

    # --- audit log ---

    def _audit_log(self) -> Any:
        if self._audit is None:
            # Imported here: the audit index is its own module and may arrive separately.
            from .audit import AuditLog

            self._audit = AuditLog(self._store)
        return self._audit

    @management_rpc
    async def SaveLogs(self, request: pb.SaveLogsRequest, context: grpc.aio.ServicerContext) -> empty_pb2.Empty:
        # The frontend's flusher calls this with no user metadata: the entries are the data.
        await self._audit_log().save(list(request.logs))
        return empty_pb2.Empty()

    @management_rpc
    async def QueryAuditLogs(
        self, request: fpb.QueryAuditLogsRequest, context: grpc.aio.ServicerContext
    ) -> fpb.QueryAuditLogsResponse:
        caller = caller_of(context)
        if not caller.is_admin:
            raise PermissionDenied(fn_rules.PERMISSION_DENIED)
        try:
            # The client's part, checked before storage is read: its mistakes are INVALID_ARGUMENT
            # with the catalogue's text; UNKNOWN stays for the audit log failing (Appendix B).
            check_limit(request.limit)
            parse_query(request.query)
        except AuditError as exc:
            raise InvalidArgument(exc.message) from None
        entries: list[common_pb.Entry] = await self._audit_log().query(request.query, request.limit)
        return fpb.QueryAuditLogsResponse(logs=entries)


async def main(config: Config) -> None:
    runtime = ServiceRuntime("management", config)
    await runtime.attest()
    warn_if_off(config.management)
    urls = UrlPolicy.from_config(config.file_agent, config.home)
    log.info("registration accepts URL schemes %s", ", ".join(sorted(urls.schemes)))
    store = PlatformStore(runtime.peers)
    trail = TrailBook(store, attested_signer(runtime.identities))
    servicer = KettleManagementServicer(store, config.management, urls, trail=trail)
    runtime.internal_server(lambda server: pb_grpc.add_KettleManagementServicer_to_server(servicer, server))
    # Events recorded while management was down (task endings) are appended at start.
    appender = asyncio.create_task(trail.run_forever())
    backfill = asyncio.create_task(_backfill(servicer))
    try:
        await runtime.serve()
    finally:
        appender.cancel()
        backfill.cancel()
        await asyncio.gather(appender, backfill, return_exceptions=True)


async def _backfill(servicer: KettleManagementServicer) -> None:
    """Index the records stored before the listings existed, beside serving: until it is
    done, a listing may miss such old records (never a new one)."""
    try:
        written = await when_storage_answers(servicer.backfill_indexes, "index the records stored before listings")
    except KettleError as exc:
        log.error("the records stored before listings are not indexed yet (next start retries): %s", exc.message)
        return
    if written:
        log.info("indexed %d listing entries of records stored before listings existed", written)
