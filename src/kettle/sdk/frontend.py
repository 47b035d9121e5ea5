"""Clients of the frontend API (port 7777), sync and async over one core.

Like :mod:`kettle.sdk.authentication`, a pure core turns every call into (RPC,
request, result parser) and the two clients differ only in how they wait. Calls
that need several round trips -- waiting for a task -- are written once, as a
*plan*: a generator that yields the next RPC (or pause) and receives its result,
driven by a ten-line loop in each client, so the sync and async clients cannot
drift apart and the waiting logic is testable without sockets.

It stays wire-compatible with Teaclave 0.6 and fixes the Teaclave SDK's defects
(``spec/platform.md`` §11): every call uses its own RPC and message
(``delete_function``, ``update_output_file``, ``update_function``,
``query_audit_logs``), results are typed values instead of raw messages or
``MessageToDict`` dicts, every error is a :class:`~kettle.errors.KettleError`
with the server's message, and ``get_task_result`` waits on Kettle's
``WaitTask`` instead of polling every second, stops on Canceled/Failed (and on
an ``Err`` result) with the reason, and can be given a timeout.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import ipaddress
import json
import math
import time
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeAlias, TypeVar

import grpc

from ..errors import AuthenticationError, InternalError, KettleError, NotFound
from ..model.records import TaskStatus
from ..rpc.generated import kettle_frontend_pb2_grpc as kettle_grpc
from ..rpc.generated import kettle_management_pb2 as kettle_pb
from ..rpc.generated import teaclave_common_pb2 as common_pb
from ..rpc.generated import teaclave_frontend_service_pb2 as pb
from ..rpc.generated import teaclave_frontend_service_pb2_grpc as pb_grpc
from ..rpc.status import error_from_rpc
from .attested import ClientTrust, verify_endpoint
from .trail import Trail, TrailVerdict, verify_trail

if TYPE_CHECKING:
    from .objects import AsyncFunction, AsyncTask, Function, Task

DEFAULT_ADDRESS = "localhost:7777"
CALL_TIMEOUT_SECS = 30.0
MAX_WAIT_MS = 60_000
"""The longest single WaitTask the frontend accepts; longer waits are a loop of these."""
POLL_FALLBACK_SECS = 1.0
"""GetTask period, used only against a frontend without WaitTask (plain Teaclave)."""
EARLY_RETURN_BACKOFF_SECS = (0.05, 1.0)
"""Pause bounds after a WaitTask answered 'still running' long before its timeout,
so a misbehaving server cannot turn the wait into a busy loop."""


BytesLike: TypeAlias = bytes | bytearray | memoryview | Iterable[int]
Ownership: TypeAlias = "Mapping[str, Iterable[str] | str] | Iterable[OwnerList]"
Assignment: TypeAlias = "Mapping[str, str] | Iterable[DataMap]"


# --- errors -------------------------------------------------------------------


class TaskError(KettleError):
    """A task did not produce a result; ``reason`` is the platform's explanation."""

    def __init__(self, task_id: str, status: TaskStatus, reason: str, message: str) -> None:
        super().__init__(message)
        self.task_id, self.status, self.reason = task_id, status, reason


class TaskCanceled(TaskError):
    code = grpc.StatusCode.CANCELLED

    def __init__(self, task_id: str, reason: str) -> None:
        super().__init__(task_id, TaskStatus.CANCELED, reason, f"task {task_id} was canceled: {reason}")


class TaskFailed(TaskError):
    """The function failed (or its execution node was lost)."""

    code = grpc.StatusCode.ABORTED

    def __init__(self, task_id: str, reason: str, status: TaskStatus = TaskStatus.FAILED) -> None:
        super().__init__(task_id, status, reason, f"task {task_id} failed: {reason}")


class TaskNotFinished(TaskError):
    code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, task_id: str, status: TaskStatus) -> None:
        name = status_name(status)
        super().__init__(task_id, status, f"task is {name}", f"task {task_id} has not finished (status {name})")


class TaskWaitTimeout(TaskNotFinished, TimeoutError):
    """The wait's timeout passed first; the task itself carries on."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED

    def __init__(self, task_id: str, status: TaskStatus, timeout: float) -> None:
        super().__init__(task_id, status)
        self.message = f"task {task_id} did not finish within {timeout:g} s (status {status_name(status)})"
        self.args = (self.message,)


def status_name(status: TaskStatus | int) -> str:
    """Teaclave's name of a status (``DataAssigned``), as users of the platform know it."""
    return str(common_pb.TaskStatus.Name(int(status)))


# --- values sent ----------------------------------------------------------------


@dataclass(frozen=True)
class FunctionArgument:
    """An argument a function declares; the defaults are the Teaclave SDK's."""

    key: str
    default_value: str = ""
    allow_overwrite: bool = True


@dataclass(frozen=True)
class FunctionInput:
    name: str
    description: str = ""
    optional: bool = False


@dataclass(frozen=True)
class FunctionOutput:
    name: str
    description: str = ""
    optional: bool = False


@dataclass(frozen=True)
class OwnerList:
    """Who must own the file given to a task under ``data_name``."""

    data_name: str
    uids: tuple[str, ...]


@dataclass(frozen=True)
class DataMap:
    data_name: str
    data_id: str


# --- values received --------------------------------------------------------------


@dataclass(frozen=True)
class FunctionInfo:
    """A function as GetFunction shows it (payload and allowlist are empty for
    callers who are only allowlisted)."""

    function_id: str
    name: str
    description: str
    executor_type: str
    owner: str
    payload: bytes
    public: bool
    arguments: tuple[FunctionArgument, ...]
    inputs: tuple[FunctionInput, ...]
    outputs: tuple[FunctionOutput, ...]
    user_allowlist: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc["payload"] = base64.b64encode(self.payload).decode()
        return doc


@dataclass(frozen=True)
class FunctionUsage:
    function_id: str
    quota: int | None
    """Successful invocations allowed in total; None = unlimited."""
    current_usage: int

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class FunctionList:
    registered_functions: tuple[str, ...]
    allowed_functions: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"registered_functions": list(self.registered_functions), "allowed_functions": list(self.allowed_functions)}


@dataclass(frozen=True)
class S3Credentials:
    """Kettle: credentials of a data owner's own for an ``s3://`` file (``docs/data.md``).

    Registered with the file, sealed with its record, and used only by the execution
    node running a task that uses the file, for that URL alone; the platform never
    returns them. ``endpoint_url``: an S3-compatible store (path-style requests), empty
    for AWS S3; ``region``: empty for ``us-east-1``. ``repr`` leaves the secret and the
    session token out."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(default="", repr=False)
    endpoint_url: str = ""
    region: str = ""

    @classmethod
    def from_json(cls, doc: Any) -> S3Credentials:
        """From ``{"access_key_id": …, "secret_access_key": …}`` with optional ``session_token``,
        ``endpoint_url`` and ``region`` (all text); ValueError naming what is wrong, never a value."""
        names = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(doc, dict):
            raise ValueError("s3 credentials must be a JSON object")  # noqa: TRY004 - a malformed file, like the rest
        unknown = sorted(set(doc) - set(names))
        if unknown:
            raise ValueError(f"s3 credentials: unknown fields {', '.join(map(repr, unknown))} (known: {', '.join(names)})")
        for required in names[:2]:
            if not doc.get(required):
                raise ValueError(f"s3 credentials: {required} is missing")
        wrong = [name for name in names if name in doc and not isinstance(doc[name], str)]
        if wrong:
            raise ValueError(f"s3 credentials: {', '.join(wrong)} must be text")
        return cls(**{name: doc[name] for name in names if name in doc})

    @classmethod
    def load(cls, path: str | Path) -> S3Credentials:
        """From a JSON file (see :meth:`from_json`)."""
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read s3 credentials file {str(path)!r}: {exc.strerror or exc}") from None
        except ValueError:
            raise ValueError(f"s3 credentials file {str(path)!r} is not JSON") from None
        return cls.from_json(doc)

    def to_message(self) -> pb.ObjectStoreCredentials:
        return pb.ObjectStoreCredentials(
            access_key_id=self.access_key_id, secret_access_key=self.secret_access_key,
            session_token=self.session_token, endpoint_url=self.endpoint_url, region=self.region,
        )


def _with_credentials(request: Any, credentials: S3Credentials | None) -> Any:
    if credentials is not None:
        request.s3_credentials.CopyFrom(credentials.to_message())
    return request


@dataclass(frozen=True)
class FileInfo:
    data_id: str
    owners: tuple[str, ...]
    cmac: bytes | None
    """None until a task has written the (output) file."""


@dataclass(frozen=True)
class TaskOutputs:
    """A successful run: the function's return value, the cmac of each output by
    output name, and its log lines."""

    return_value: bytes
    tags_map: Mapping[str, bytes] = field(default_factory=dict, hash=False)
    log: tuple[str, ...] = ()
    sandbox_layers: tuple[str, ...] = ()
    """The sandbox layers the function's code ran under (e.g. ``seccomp``); empty for built-ins."""
    receipt: bytes = field(default=b"", repr=False, compare=False)
    """The execution receipt the node signed (``docs/receipts.md``); :func:`kettle.sdk.verify_receipt` checks it."""

    @property
    def text(self) -> str:
        return self.return_value.decode()


@dataclass(frozen=True)
class TaskFailure:
    reason: str
    sandbox_layers: tuple[str, ...] = ()
    """As in :class:`TaskOutputs`."""
    receipt: bytes = field(default=b"", repr=False, compare=False)
    """As in :class:`TaskOutputs`; empty when no node ran the task (canceled before it ran, every node lost)."""


@dataclass(frozen=True)
class TaskApproval:
    """One participant's approval of a task (Kettle): the task digest it covers, when it was
    given and when it expires (Unix seconds; None: no expiry)."""

    user_id: str
    task_digest: str
    approved_at: int
    expires_at: int | None

    def to_json(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "task_digest": self.task_digest, "approved_at": self.approved_at,
                "expires_at": self.expires_at}


@dataclass(frozen=True)
class TaskRefusal:
    """A participant declined to approve a task (Kettle, ``refuse_task``): when (Unix seconds),
    the task digest it refused, and its reason (may be empty). It stands until that
    participant approves the task; the task cannot be invoked meanwhile."""

    user_id: str
    refused_at: int
    task_digest: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "refused_at": self.refused_at, "task_digest": self.task_digest,
                "reason": self.reason}


@dataclass(frozen=True)
class TaskInfo:
    """A task as GetTask/WaitTask show it; ``result`` is None until the task ends.

    Kettle adds what an approval covers: ``task_manifest`` (the canonical description
    whose SHA-256 is ``task_digest``), the pinned ``function_digest``, each recorded
    approval, and each standing refusal. Against a plain Teaclave frontend they stay empty."""

    task_id: str
    creator: str
    function_id: str
    function_owner: str
    function_arguments: Mapping[str, Any] = field(hash=False)
    inputs_ownership: Mapping[str, tuple[str, ...]] = field(hash=False)
    outputs_ownership: Mapping[str, tuple[str, ...]] = field(hash=False)
    participants: tuple[str, ...]
    approved_users: tuple[str, ...]
    assigned_inputs: Mapping[str, str] = field(hash=False)
    assigned_outputs: Mapping[str, str] = field(hash=False)
    status: TaskStatus
    result: TaskOutputs | TaskFailure | None
    function_digest: str = ""
    task_digest: str = ""
    task_manifest: str = ""
    approvals: tuple[TaskApproval, ...] = ()
    refusals: tuple[TaskRefusal, ...] = ()

    @property
    def terminal(self) -> bool:
        return self.status.terminal

    @property
    def receipt(self) -> bytes:
        """The signed execution receipt of the task's run; empty until it ends, and when no node ran it."""
        return self.result.receipt if self.result is not None else b""

    @property
    def succeeded(self) -> bool:
        return self.status is TaskStatus.FINISHED and isinstance(self.result, TaskOutputs)

    def outputs_or_raise(self) -> TaskOutputs:
        """The outputs of a successful run; otherwise the specific error, with the reason.

        A Finished task with an ``Err`` result (how Teaclave reports a failed
        function) is a failure too -- Teaclave's SDK returned empty bytes for it.
        """
        reason = self.result.reason if isinstance(self.result, TaskFailure) else None
        if self.status is TaskStatus.FINISHED:
            if isinstance(self.result, TaskOutputs):
                return self.result
            raise TaskFailed(self.task_id, reason or "the task finished without a result", TaskStatus.FINISHED)
        if self.status is TaskStatus.CANCELED:
            raise TaskCanceled(self.task_id, reason or "canceled")
        if self.status is TaskStatus.FAILED:
            raise TaskFailed(self.task_id, reason or "no reason given")
        raise TaskNotFinished(self.task_id, self.status)

    def to_json(self) -> dict[str, Any]:
        result: dict[str, Any] | None
        if isinstance(self.result, TaskOutputs):
            try:
                text: str | None = self.result.return_value.decode()
            except UnicodeDecodeError:
                text = None
            result = {
                "return_value": text,
                "return_value_base64": base64.b64encode(self.result.return_value).decode(),
                "tags_map": {k: base64.b64encode(v).decode() for k, v in sorted(self.result.tags_map.items())},
                "log": list(self.result.log),
                "sandbox_layers": list(self.result.sandbox_layers),
            }
        elif isinstance(self.result, TaskFailure):
            result = {"reason": self.result.reason, "sandbox_layers": list(self.result.sandbox_layers)}
        else:
            result = None
        return {
            "task_id": self.task_id,
            "creator": self.creator,
            "function_id": self.function_id,
            "function_owner": self.function_owner,
            "function_arguments": dict(self.function_arguments),
            "inputs_ownership": {k: list(v) for k, v in self.inputs_ownership.items()},
            "outputs_ownership": {k: list(v) for k, v in self.outputs_ownership.items()},
            "participants": list(self.participants),
            "approved_users": list(self.approved_users),
            "assigned_inputs": dict(self.assigned_inputs),
            "assigned_outputs": dict(self.assigned_outputs),
            "status": status_name(self.status),
            "status_code": int(self.status),
            "result": result,
            "function_digest": self.function_digest,
            "task_digest": self.task_digest,
            "task_manifest": json.loads(self.task_manifest) if self.task_manifest else None,
            "approvals": [a.to_json() for a in self.approvals],
            "refusals": [r.to_json() for r in self.refusals],
        }


@dataclass(frozen=True)
class AuditEntry:
    microsecond: int
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    """None when the frontend did not know the client's address."""
    user: str
    message: str
    result: bool

    @property
    def time(self) -> datetime:
        return datetime.fromtimestamp(self.microsecond / 1_000_000, UTC)


# --- conversions --------------------------------------------------------------------


def _bytes(value: BytesLike, what: str) -> bytes:
    """Bytes from bytes or a list of ints (how Teaclave's examples pass keys and cmacs)."""
    if isinstance(value, str):
        raise TypeError(f"{what} must be bytes or a list of ints, not str")
    return bytes(value)


def _payload(value: bytes | str | Iterable[int]) -> bytes:
    """Script payloads are often text; send them as UTF-8."""
    return value.encode() if isinstance(value, str) else bytes(value)


def _arguments_pb(arguments: Iterable[FunctionArgument | str]) -> list[pb.FunctionArgument]:
    items = [FunctionArgument(a) if isinstance(a, str) else a for a in arguments]
    return [pb.FunctionArgument(key=a.key, default_value=a.default_value, allow_overwrite=a.allow_overwrite) for a in items]


def _inputs_pb(inputs: Iterable[FunctionInput | str]) -> list[pb.FunctionInput]:
    items = [FunctionInput(i) if isinstance(i, str) else i for i in inputs]
    return [pb.FunctionInput(name=i.name, description=i.description, optional=i.optional) for i in items]


def _outputs_pb(outputs: Iterable[FunctionOutput | str]) -> list[pb.FunctionOutput]:
    items = [FunctionOutput(o) if isinstance(o, str) else o for o in outputs]
    return [pb.FunctionOutput(name=o.name, description=o.description, optional=o.optional) for o in items]


def _quota(usage_quota: int | None) -> int:
    """The wire quota: negative = unlimited. Never 0 by omission (0 = never invocable)."""
    return -1 if usage_quota is None else usage_quota


def _owner_lists(ownership: Ownership) -> list[pb.OwnerList]:
    if isinstance(ownership, Mapping):
        entries = [
            OwnerList(name, (uids,) if isinstance(uids, str) else tuple(uids)) for name, uids in ownership.items()
        ]
    else:
        entries = list(ownership)
    return [pb.OwnerList(data_name=e.data_name, uids=list(e.uids)) for e in entries]


def _data_maps(assignment: Assignment) -> list[pb.DataMap]:
    entries = [DataMap(k, v) for k, v in assignment.items()] if isinstance(assignment, Mapping) else list(assignment)
    return [pb.DataMap(data_name=e.data_name, data_id=e.data_id) for e in entries]


def _arguments_json(function_arguments: Mapping[str, Any] | str | None) -> str:
    """JSON text of an object, as CreateTask requires (``{}`` when there are none)."""
    if function_arguments is None:
        return "{}"
    if isinstance(function_arguments, str):
        return function_arguments
    return json.dumps(dict(function_arguments))


def _function_info(function_id: str, r: pb.GetFunctionResponse) -> FunctionInfo:
    return FunctionInfo(
        function_id=function_id,
        name=r.name,
        description=r.description,
        executor_type=r.executor_type,
        owner=r.owner,
        payload=bytes(r.payload),
        public=r.public,
        arguments=tuple(FunctionArgument(a.key, a.default_value, a.allow_overwrite) for a in r.arguments),
        inputs=tuple(FunctionInput(i.name, i.description, i.optional) for i in r.inputs),
        outputs=tuple(FunctionOutput(o.name, o.description, o.optional) for o in r.outputs),
        user_allowlist=tuple(r.user_allowlist),
    )


def parse_task(r: pb.GetTaskResponse) -> TaskInfo:
    """A GetTask/WaitTask answer as a TaskInfo (sets sorted, so equal tasks compare equal)."""
    try:
        status = TaskStatus(r.status)
    except ValueError:
        raise InternalError(f"the frontend sent an unknown task status {r.status}") from None
    try:
        arguments = json.loads(r.function_arguments) if r.function_arguments else {}
    except ValueError:
        raise InternalError("the frontend sent function arguments that are not JSON") from None
    which = r.result.WhichOneof("result") if r.HasField("result") else None
    result: TaskOutputs | TaskFailure | None
    if which == "Ok":
        ok = r.result.Ok
        result = TaskOutputs(bytes(ok.return_value), {k: bytes(v) for k, v in ok.tags_map.items()}, tuple(ok.log),
                             tuple(ok.sandbox_layers), bytes(ok.receipt))
    elif which == "Err":
        err = r.result.Err
        result = TaskFailure(err.reason, tuple(err.sandbox_layers), bytes(err.receipt))
    else:
        result = None
    return TaskInfo(
        task_id=r.task_id,
        creator=r.creator,
        function_id=r.function_id,
        function_owner=r.function_owner,
        function_arguments=arguments,
        inputs_ownership={o.data_name: tuple(sorted(o.uids)) for o in r.inputs_ownership},
        outputs_ownership={o.data_name: tuple(sorted(o.uids)) for o in r.outputs_ownership},
        participants=tuple(sorted(r.participants)),
        approved_users=tuple(sorted(r.approved_users)),
        assigned_inputs={d.data_name: d.data_id for d in r.assigned_inputs},
        assigned_outputs={d.data_name: d.data_id for d in r.assigned_outputs},
        status=status,
        result=result,
        function_digest=r.function_digest,
        task_digest=r.task_digest,
        task_manifest=r.task_manifest,
        approvals=tuple(
            TaskApproval(a.user_id, a.task_digest, a.approved_at, a.expires_at or None)
            for a in sorted(r.approvals, key=lambda a: a.user_id)
        ),
        refusals=tuple(
            TaskRefusal(f.user_id, f.refused_at, f.task_digest, f.reason)
            for f in sorted(r.refusals, key=lambda f: f.user_id)
        ),
    )


def _audit_entry(e: common_pb.Entry) -> AuditEntry:
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    raw = bytes(e.ip)
    if len(raw) == 16 and any(raw):
        # Teaclave writes IPv4 clients as IPv4-compatible IPv6 addresses (::a.b.c.d).
        ip = ipaddress.IPv4Address(raw[12:]) if not any(raw[:12]) else ipaddress.IPv6Address(raw)
    return AuditEntry(e.microsecond, ip, e.user, e.message, e.result)


def outputs_after_wait(info: TaskInfo, timeout: float | None) -> TaskOutputs:
    """The outputs of a task a wait returned: a task still running means the wait timed out."""
    if not info.terminal:
        raise TaskWaitTimeout(info.task_id, info.status, math.inf if timeout is None else timeout)
    return info.outputs_or_raise()


def merged_update(info: FunctionInfo, quota: int | None, changes: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments of ``update_function`` that change only ``changes``.

    UpdateFunction replaces every field, so a partial update is a read (GetFunction
    plus the quota from GetFunctionUsageStats) merged with the changes.
    """
    allowed = {f.name for f in dataclasses.fields(FunctionInfo)} - {"function_id", "owner"} | {"usage_quota"}
    unknown = set(changes) - allowed
    if unknown:
        raise TypeError(f"cannot update {', '.join(sorted(unknown))}")
    current = {name: getattr(info, name) for name in allowed - {"usage_quota"}}
    current["usage_quota"] = quota
    return {**current, **changes}


# --- the core -------------------------------------------------------------------------


R = TypeVar("R")
T = TypeVar("T")


@dataclass(frozen=True)
class _Call(Generic[R]):
    rpc: str
    request: Any
    result: Callable[[Any], R]
    service: str = "frontend"
    """``frontend`` (TeaclaveFrontend) or ``kettle`` (KettleFrontend)."""
    deadline: float = CALL_TIMEOUT_SECS


@dataclass(frozen=True)
class _Sleep:
    seconds: float


_Step: TypeAlias = "_Call[Any] | _Sleep"
Plan: TypeAlias = Generator[_Step, Any, T]


def _none(_: Any) -> None:
    return None


def _data_id(r: Any) -> str:
    return str(r.data_id)


class _FrontendCore:
    """What each call sends and what it returns; no I/O."""

    def __init__(self, user_id: str | None = None, token: str | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.user_id, self.token = user_id, token
        self.clock = clock
        self.wait_task_supported = True

    def metadata(self) -> tuple[tuple[str, str], ...]:
        if self.user_id is None or self.token is None:
            raise AuthenticationError("no credentials: log in and call use_credential(user_id, token) first")
        return (("id", self.user_id), ("token", self.token))

    # data

    @staticmethod
    def register_input_file(
        url: str, schema: str, key: BytesLike, iv: BytesLike, cmac: BytesLike, s3_credentials: S3Credentials | None = None
    ) -> _Call[str]:
        crypto = common_pb.FileCryptoInfo(schema=schema, key=_bytes(key, "key"), iv=_bytes(iv, "iv"))
        request = pb.RegisterInputFileRequest(url=url, cmac=_bytes(cmac, "cmac"), crypto_info=crypto)
        return _Call("RegisterInputFile", _with_credentials(request, s3_credentials), _data_id)

    @staticmethod
    def register_output_file(
        url: str, schema: str, key: BytesLike, iv: BytesLike, s3_credentials: S3Credentials | None = None
    ) -> _Call[str]:
        crypto = common_pb.FileCryptoInfo(schema=schema, key=_bytes(key, "key"), iv=_bytes(iv, "iv"))
        request = pb.RegisterOutputFileRequest(url=url, crypto_info=crypto)
        return _Call("RegisterOutputFile", _with_credentials(request, s3_credentials), _data_id)

    @staticmethod
    def update_input_file(data_id: str, url: str, s3_credentials: S3Credentials | None = None) -> _Call[str]:
        request = pb.UpdateInputFileRequest(data_id=data_id, url=url)
        return _Call("UpdateInputFile", _with_credentials(request, s3_credentials), _data_id)

    @staticmethod
    def update_output_file(data_id: str, url: str, s3_credentials: S3Credentials | None = None) -> _Call[str]:
        request = pb.UpdateOutputFileRequest(data_id=data_id, url=url)
        return _Call("UpdateOutputFile", _with_credentials(request, s3_credentials), _data_id)

    @staticmethod
    def register_fusion_output(owners: Iterable[str]) -> _Call[str]:
        owners = [owners] if isinstance(owners, str) else list(owners)
        return _Call("RegisterFusionOutput", pb.RegisterFusionOutputRequest(owner_list=owners), _data_id)

    @staticmethod
    def register_input_from_output(data_id: str) -> _Call[str]:
        return _Call("RegisterInputFromOutput", pb.RegisterInputFromOutputRequest(data_id=data_id), _data_id)

    @staticmethod
    def get_input_file(data_id: str) -> _Call[FileInfo]:
        def parse(r: pb.GetInputFileResponse) -> FileInfo:
            return FileInfo(data_id, tuple(sorted(r.owner)), bytes(r.cmac) or None)

        return _Call("GetInputFile", pb.GetInputFileRequest(data_id=data_id), parse)

    @staticmethod
    def get_output_file(data_id: str) -> _Call[FileInfo]:
        def parse(r: pb.GetOutputFileResponse) -> FileInfo:
            return FileInfo(data_id, tuple(sorted(r.owner)), bytes(r.cmac) or None)

        return _Call("GetOutputFile", pb.GetOutputFileRequest(data_id=data_id), parse)

    # functions

    @staticmethod
    def register_function(
        name: str,
        description: str,
        executor_type: str,
        public: bool,
        payload: bytes | str | Iterable[int],
        arguments: Iterable[FunctionArgument | str],
        inputs: Iterable[FunctionInput | str],
        outputs: Iterable[FunctionOutput | str],
        user_allowlist: Iterable[str],
        usage_quota: int | None,
    ) -> _Call[str]:
        request = pb.RegisterFunctionRequest(
            name=name,
            description=description,
            executor_type=executor_type,
            public=public,
            payload=_payload(payload),
            arguments=_arguments_pb(arguments),
            inputs=_inputs_pb(inputs),
            outputs=_outputs_pb(outputs),
            user_allowlist=list(user_allowlist),
            usage_quota=_quota(usage_quota),
        )
        return _Call("RegisterFunction", request, lambda r: r.function_id)

    @staticmethod
    def update_function(
        function_id: str,
        name: str,
        description: str,
        executor_type: str,
        public: bool,
        payload: bytes | str | Iterable[int],
        arguments: Iterable[FunctionArgument | str],
        inputs: Iterable[FunctionInput | str],
        outputs: Iterable[FunctionOutput | str],
        user_allowlist: Iterable[str],
        usage_quota: int | None,
    ) -> _Call[str]:
        # By keyword: Teaclave's SDK built this message positionally and never worked.
        request = pb.UpdateFunctionRequest(
            function_id=function_id,
            name=name,
            description=description,
            executor_type=executor_type,
            public=public,
            payload=_payload(payload),
            arguments=_arguments_pb(arguments),
            inputs=_inputs_pb(inputs),
            outputs=_outputs_pb(outputs),
            user_allowlist=list(user_allowlist),
            usage_quota=_quota(usage_quota),
        )
        return _Call("UpdateFunction", request, lambda r: r.function_id)

    @staticmethod
    def get_function(function_id: str) -> _Call[FunctionInfo]:
        return _Call("GetFunction", pb.GetFunctionRequest(function_id=function_id), lambda r: _function_info(function_id, r))

    @staticmethod
    def get_function_usage_stats(function_id: str) -> _Call[FunctionUsage]:
        def parse(r: pb.GetFunctionUsageStatsResponse) -> FunctionUsage:
            return FunctionUsage(function_id, None if r.function_quota < 0 else r.function_quota, r.current_usage)

        return _Call("GetFunctionUsageStats", pb.GetFunctionUsageStatsRequest(function_id=function_id), parse)

    def list_functions(self, user_id: str | None) -> _Call[FunctionList]:
        if user_id is None:
            self.metadata()  # a clear error when there is no "own" user yet
            user_id = self.user_id

        def parse(r: pb.ListFunctionsResponse) -> FunctionList:
            return FunctionList(tuple(r.registered_functions), tuple(r.allowed_functions))

        return _Call("ListFunctions", pb.ListFunctionsRequest(user_id=user_id), parse)

    @staticmethod
    def delete_function(function_id: str) -> _Call[None]:
        return _Call("DeleteFunction", pb.DeleteFunctionRequest(function_id=function_id), _none)

    @staticmethod
    def disable_function(function_id: str) -> _Call[None]:
        return _Call("DisableFunction", pb.DisableFunctionRequest(function_id=function_id), _none)

    # tasks

    @staticmethod
    def create_task(
        function_id: str,
        function_arguments: Mapping[str, Any] | str | None,
        executor: str,
        inputs_ownership: Ownership,
        outputs_ownership: Ownership,
    ) -> _Call[str]:
        request = pb.CreateTaskRequest(
            function_id=function_id,
            function_arguments=_arguments_json(function_arguments),
            executor=executor,
            inputs_ownership=_owner_lists(inputs_ownership),
            outputs_ownership=_owner_lists(outputs_ownership),
        )
        return _Call("CreateTask", request, lambda r: r.task_id)

    @staticmethod
    def assign_data(task_id: str, inputs: Assignment, outputs: Assignment) -> _Call[None]:
        request = pb.AssignDataRequest(task_id=task_id, inputs=_data_maps(inputs), outputs=_data_maps(outputs))
        return _Call("AssignData", request, _none)

    @staticmethod
    def approve_task(task_id: str, expect_digest: str | None = None, expires_in: int | None = None) -> _Call[None]:
        if expires_in is not None and (isinstance(expires_in, bool) or not isinstance(expires_in, int)
                                       or expires_in <= 0):
            raise ValueError("expires_in must be a positive number of seconds")
        request = pb.ApproveTaskRequest(task_id=task_id, expect_digest=expect_digest or "",
                                        valid_for_secs=expires_in or 0)
        return _Call("ApproveTask", request, _none)

    @staticmethod
    def revoke_approval(task_id: str) -> _Call[None]:
        return _Call("RevokeApproval", kettle_pb.RevokeApprovalRequest(task_id=task_id), _none, service="kettle")

    @staticmethod
    def refuse_task(task_id: str, reason: str) -> _Call[None]:
        request = kettle_pb.RefuseTaskRequest(task_id=task_id, reason=reason)
        return _Call("RefuseTask", request, _none, service="kettle")

    @staticmethod
    def invoke_task(task_id: str) -> _Call[None]:
        return _Call("InvokeTask", pb.InvokeTaskRequest(task_id=task_id), _none)

    @staticmethod
    def cancel_task(task_id: str) -> _Call[None]:
        return _Call("CancelTask", pb.CancelTaskRequest(task_id=task_id), _none)

    @staticmethod
    def get_task(task_id: str) -> _Call[TaskInfo]:
        return _Call("GetTask", pb.GetTaskRequest(task_id=task_id), parse_task)

    @staticmethod
    def wait_task_once(task_id: str, timeout_ms: int) -> _Call[TaskInfo]:
        timeout_ms = max(0, min(MAX_WAIT_MS, timeout_ms))
        request = kettle_pb.WaitTaskRequest(task_id=task_id, timeout_ms=timeout_ms)
        return _Call("WaitTask", request, parse_task, service="kettle", deadline=timeout_ms / 1000 + CALL_TIMEOUT_SECS)

    @staticmethod
    def query_audit_logs(query: str, limit: int) -> _Call[list[AuditEntry]]:
        request = pb.QueryAuditLogsRequest(query=query, limit=limit)
        return _Call("QueryAuditLogs", request, lambda r: [_audit_entry(e) for e in r.logs])

    @staticmethod
    def my_trail_page(after_sequence: int) -> _Call[kettle_pb.ListMyTrailResponse]:
        request = kettle_pb.ListMyTrailRequest(after_sequence=after_sequence)
        return _Call("ListMyTrail", request, lambda r: r, service="kettle")

    @staticmethod
    def my_tasks_page(after: str) -> _Call[kettle_pb.ListMyTasksResponse]:
        return _Call("ListMyTasks", kettle_pb.ListMyTasksRequest(after=after), lambda r: r, service="kettle")

    @staticmethod
    def my_files_page(after: str) -> _Call[kettle_pb.ListMyFilesResponse]:
        return _Call("ListMyFiles", kettle_pb.ListMyFilesRequest(after=after), lambda r: r, service="kettle")

    # plans: calls of several round trips

    def list_my_tasks(self) -> Plan[list[str]]:
        """Every page of the caller's task ids, newest first."""
        return self._all_pages(self.my_tasks_page, lambda page: page.task_ids)

    def list_my_files(self) -> Plan[list[str]]:
        """Every page of the caller's data ids, in registration order."""
        return self._all_pages(self.my_files_page, lambda page: page.data_ids)

    @staticmethod
    def _all_pages(page_call: Callable[[str], _Call[Any]], ids_of: Callable[[Any], Iterable[str]]) -> Plan[list[str]]:
        """The ids of every page of a cursor listing (ListMyTasks, ListMyFiles), each once."""
        ids: list[str] = []
        after = ""
        while True:
            page = yield page_call(after)
            ids.extend(ids_of(page))
            # A page that does not move the cursor on ends the walk (never a loop on a bad server).
            if not page.more or not page.next or page.next == after:
                return list(dict.fromkeys(ids))
            after = page.next

    def my_trail(self) -> Plan[Trail]:
        """Every page of the caller's trail; the head of the last page (it bounds that page)."""
        if self.user_id is None:
            raise AuthenticationError("no credentials: log in and call use_credential(user_id, token) first")
        entries: list[bytes] = []
        after = 0
        while True:
            page: kettle_pb.ListMyTrailResponse = yield self.my_trail_page(after)
            entries.extend(bytes(e) for e in page.entries)
            if not page.more or page.last_sequence <= after:
                return Trail(self.user_id, tuple(entries), bytes(page.signed_head))
            after = page.last_sequence

    def wait_task(self, task_id: str, timeout: float | None) -> Plan[TaskInfo]:
        """Until the task ends or ``timeout`` seconds pass (None: no limit); the last state.

        WaitTask answers as soon as the task ends, so the result arrives without
        polling delay; waits longer than the server's 60 s cap are a loop.
        """
        deadline = None if timeout is None else self.clock() + max(0.0, timeout)
        backoff = 0.0
        while True:
            remaining = None if deadline is None else max(0.0, deadline - self.clock())
            if self.wait_task_supported:
                wait_ms = MAX_WAIT_MS if remaining is None else min(MAX_WAIT_MS, math.ceil(remaining * 1000))
                started = self.clock()
                try:
                    info: TaskInfo = yield self.wait_task_once(task_id, wait_ms)
                except KettleError as exc:
                    if exc.code != grpc.StatusCode.UNIMPLEMENTED:
                        raise
                    self.wait_task_supported = False  # a Teaclave frontend: fall back to polling
                    continue
                returned_early = self.clock() - started < wait_ms / 2000
            else:
                info = yield self.get_task(task_id)
                returned_early = True
            if info.terminal:
                return info
            now = self.clock()
            if deadline is not None and now >= deadline:
                return info
            if not returned_early:
                backoff = 0.0
                continue
            if self.wait_task_supported:
                low, high = EARLY_RETURN_BACKOFF_SECS
                backoff = min(high, max(low, backoff * 2))
            else:
                backoff = POLL_FALLBACK_SECS
            yield _Sleep(backoff if deadline is None else min(backoff, deadline - now))

    def task_outputs(self, task_id: str, timeout: float | None) -> Plan[TaskOutputs]:
        info = yield from self.wait_task(task_id, timeout)
        return outputs_after_wait(info, timeout)

    def get_task_result(self, task_id: str, timeout: float | None) -> Plan[bytes]:
        outputs = yield from self.task_outputs(task_id, timeout)
        return outputs.return_value

    def get_output_cmac_by_tag(self, task_id: str, tag: str, timeout: float | None) -> Plan[bytes]:
        outputs = yield from self.task_outputs(task_id, timeout)
        try:
            return outputs.tags_map[tag]
        except KeyError:
            known = ", ".join(sorted(outputs.tags_map)) or "none"
            raise NotFound(f"task {task_id} has no output named {tag!r} (outputs: {known})") from None

    def function_update(self, function_id: str, changes: Mapping[str, Any]) -> Plan[str]:
        info: FunctionInfo = yield self.get_function(function_id)
        if "usage_quota" in changes:
            quota = None
        else:
            usage: FunctionUsage = yield self.get_function_usage_stats(function_id)
            quota = usage.quota
        merged = merged_update(info, quota, changes)
        updated: str = yield self.update_function(function_id, **merged)
        return updated


# --- the clients -------------------------------------------------------------------------


class FrontendClient:
    """Blocking client. Verifies the frontend's attestation when constructed."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        trust: ClientTrust | None = None,
        user_id: str | None = None,
        token: str | None = None,
    ) -> None:
        self.trust = trust or ClientTrust.from_config()
        self.endpoint = verify_endpoint(address, "frontend", self.trust)
        self._channel = self.endpoint.channel(self.trust)
        self._stubs = {
            "frontend": pb_grpc.TeaclaveFrontendStub(self._channel),
            "kettle": kettle_grpc.KettleFrontendStub(self._channel),
        }
        self._core = _FrontendCore(user_id, token)

    def use_credential(self, user_id: str, token: str) -> None:
        self._core.user_id, self._core.token = user_id, token

    @property
    def user_id(self) -> str | None:
        return self._core.user_id

    def _invoke(self, call: _Call[R]) -> R:
        metadata = self._core.metadata()
        try:
            response = getattr(self._stubs[call.service], call.rpc)(call.request, metadata=metadata, timeout=call.deadline)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None
        return call.result(response)

    def _run(self, plan: Plan[T]) -> T:
        try:
            step = next(plan)
            while True:
                if isinstance(step, _Sleep):
                    time.sleep(max(0.0, step.seconds))
                    step = plan.send(None)
                    continue
                try:
                    value = self._invoke(step)
                except KettleError as exc:
                    step = plan.throw(exc)
                else:
                    step = plan.send(value)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    # data

    def register_input_file(
        self, url: str, schema: str, key: BytesLike, iv: BytesLike, cmac: BytesLike,
        s3_credentials: S3Credentials | None = None,
    ) -> str:
        """Register an encrypted input; Kettle: ``s3_credentials`` for an ``s3://`` URL in a bucket of your own."""
        return self._invoke(self._core.register_input_file(url, schema, key, iv, cmac, s3_credentials))

    def register_output_file(
        self, url: str, schema: str, key: BytesLike, iv: BytesLike, s3_credentials: S3Credentials | None = None
    ) -> str:
        """Register an output; Kettle: ``s3_credentials`` for an ``s3://`` URL in a bucket of your own."""
        return self._invoke(self._core.register_output_file(url, schema, key, iv, s3_credentials))

    def update_input_file(self, data_id: str, url: str, s3_credentials: S3Credentials | None = None) -> str:
        """A copy at ``url``; Kettle: the old s3 credentials do not carry over, give them again if needed."""
        return self._invoke(self._core.update_input_file(data_id, url, s3_credentials))

    def update_output_file(self, data_id: str, url: str, s3_credentials: S3Credentials | None = None) -> str:
        """A copy at ``url``; Kettle: the old s3 credentials do not carry over, give them again if needed."""
        return self._invoke(self._core.update_output_file(data_id, url, s3_credentials))

    def register_fusion_output(self, owners: Iterable[str]) -> str:
        return self._invoke(self._core.register_fusion_output(owners))

    def register_input_from_output(self, data_id: str) -> str:
        return self._invoke(self._core.register_input_from_output(data_id))

    def get_input_file(self, data_id: str) -> FileInfo:
        return self._invoke(self._core.get_input_file(data_id))

    def get_output_file(self, data_id: str) -> FileInfo:
        return self._invoke(self._core.get_output_file(data_id))

    # functions

    def register_function(
        self,
        name: str,
        description: str = "",
        executor_type: str = "builtin",
        public: bool = True,
        payload: bytes | str | Iterable[int] = b"",
        arguments: Iterable[FunctionArgument | str] = (),
        inputs: Iterable[FunctionInput | str] = (),
        outputs: Iterable[FunctionOutput | str] = (),
        user_allowlist: Iterable[str] = (),
        usage_quota: int | None = -1,
    ) -> str:
        """Register a function and return its id (``usage_quota`` None or negative = unlimited)."""
        return self._invoke(self._core.register_function(
            name, description, executor_type, public, payload, arguments, inputs, outputs, user_allowlist, usage_quota
        ))

    def update_function(
        self,
        function_id: str,
        name: str,
        description: str = "",
        executor_type: str = "builtin",
        public: bool = True,
        payload: bytes | str | Iterable[int] = b"",
        arguments: Iterable[FunctionArgument | str] = (),
        inputs: Iterable[FunctionInput | str] = (),
        outputs: Iterable[FunctionOutput | str] = (),
        user_allowlist: Iterable[str] = (),
        usage_quota: int | None = -1,
    ) -> str:
        """Replace every field of a function (the RPC's semantics); see ``Function.update`` for a partial change."""
        return self._invoke(self._core.update_function(
            function_id, name, description, executor_type, public, payload, arguments, inputs, outputs, user_allowlist, usage_quota
        ))

    def get_function(self, function_id: str) -> FunctionInfo:
        return self._invoke(self._core.get_function(function_id))

    def get_function_usage_stats(self, function_id: str) -> FunctionUsage:
        return self._invoke(self._core.get_function_usage_stats(function_id))

    def list_functions(self, user_id: str | None = None) -> FunctionList:
        """The functions ``user_id`` (default: you) registered and may use."""
        return self._invoke(self._core.list_functions(user_id))

    def delete_function(self, function_id: str) -> None:
        self._invoke(self._core.delete_function(function_id))

    def disable_function(self, function_id: str) -> None:
        self._invoke(self._core.disable_function(function_id))

    # tasks

    def create_task(
        self,
        function_id: str,
        function_arguments: Mapping[str, Any] | str | None = None,
        executor: str = "builtin",
        inputs_ownership: Ownership = (),
        outputs_ownership: Ownership = (),
    ) -> str:
        """Create a task and return its id; ownerships map data names to owner ids."""
        return self._invoke(self._core.create_task(function_id, function_arguments, executor, inputs_ownership, outputs_ownership))

    def assign_data(self, task_id: str, inputs: Assignment = (), outputs: Assignment = ()) -> None:
        self._invoke(self._core.assign_data(task_id, inputs, outputs))

    def approve_task(self, task_id: str, expect_digest: str | None = None, expires_in: int | None = None) -> None:
        """Approve the task. Kettle: with ``expect_digest`` (the ``task_digest`` the caller
        reviewed), a task that changed since is refused and nothing is recorded; with
        ``expires_in`` (seconds) the approval lapses then unless the task was invoked."""
        self._invoke(self._core.approve_task(task_id, expect_digest, expires_in))

    def revoke_approval(self, task_id: str) -> None:
        """Withdraw the caller's approval of a task not yet invoked (Kettle)."""
        self._invoke(self._core.revoke_approval(task_id))

    def refuse_task(self, task_id: str, reason: str = "") -> None:
        """Decline to approve a task not yet invoked, visibly to the other participants (Kettle):
        withdraws your approval if any; the task cannot be invoked until you approve it.
        ``reason``: at most 256 printable characters."""
        self._invoke(self._core.refuse_task(task_id, reason))

    def list_my_tasks(self) -> list[str]:
        """The ids of the tasks you participate in, newest first (Kettle)."""
        return self._run(self._core.list_my_tasks())

    def list_my_files(self) -> list[str]:
        """The ids of the files you own, alone or jointly, in registration order (Kettle)."""
        return self._run(self._core.list_my_files())

    def invoke_task(self, task_id: str) -> None:
        self._invoke(self._core.invoke_task(task_id))

    def cancel_task(self, task_id: str) -> None:
        self._invoke(self._core.cancel_task(task_id))

    def get_task(self, task_id: str) -> TaskInfo:
        return self._invoke(self._core.get_task(task_id))

    def wait_task(self, task_id: str, timeout: float | None = None) -> TaskInfo:
        """The task once it ends, or its state when ``timeout`` seconds have passed."""
        return self._run(self._core.wait_task(task_id, timeout))

    def get_task_result(self, task_id: str, timeout: float | None = None) -> bytes:
        """The return value once the task finishes; TaskCanceled/TaskFailed with the
        reason if it does not, TaskWaitTimeout if ``timeout`` passes first."""
        return self._run(self._core.get_task_result(task_id, timeout))

    def get_output_cmac_by_tag(self, task_id: str, tag: str, timeout: float | None = None) -> bytes:
        """The cmac of the output named ``tag`` once the task finishes (to register it as an input)."""
        return self._run(self._core.get_output_cmac_by_tag(task_id, tag, timeout))

    def query_audit_logs(self, query: str, limit: int = 100) -> list[AuditEntry]:
        return self._invoke(self._core.query_audit_logs(query, limit))

    def my_trail(self) -> Trail:
        """Your trail: the approvals you gave and the tasks given your files, as stored
        (``docs/trail.md``); :meth:`verify_my_trail` or :func:`kettle.sdk.verify_trail` checks it."""
        return self._run(self._core.my_trail())

    def verify_my_trail(self) -> TrailVerdict:
        """Fetch your trail and verify it against this client's trust anchors (each check with its reason)."""
        return verify_trail(self.my_trail(), self.trust)

    # objects

    def function(self, function_id: str) -> Function:
        from .objects import Function

        return Function(self, function_id)

    def task(self, task_id: str) -> Task:
        from .objects import Task

        return Task(self, task_id)

    def _update_function_fields(self, function_id: str, changes: Mapping[str, Any]) -> str:
        return self._run(self._core.function_update(function_id, changes))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> FrontendClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncFrontendClient:
    """asyncio client; create it with ``await AsyncFrontendClient.connect(...)``."""

    def __init__(self, trust: ClientTrust, channel: grpc.aio.Channel, user_id: str | None = None, token: str | None = None) -> None:
        self.trust = trust
        self._channel = channel
        self._stubs = {
            "frontend": pb_grpc.TeaclaveFrontendStub(channel),
            "kettle": kettle_grpc.KettleFrontendStub(channel),
        }
        self._core = _FrontendCore(user_id, token)

    @classmethod
    async def connect(
        cls,
        address: str = DEFAULT_ADDRESS,
        trust: ClientTrust | None = None,
        *,
        user_id: str | None = None,
        token: str | None = None,
    ) -> AsyncFrontendClient:
        trust = trust or ClientTrust.from_config()
        endpoint = await asyncio.to_thread(verify_endpoint, address, "frontend", trust)
        return cls(trust, endpoint.aio_channel(trust), user_id, token)

    def use_credential(self, user_id: str, token: str) -> None:
        self._core.user_id, self._core.token = user_id, token

    @property
    def user_id(self) -> str | None:
        return self._core.user_id

    async def _invoke(self, call: _Call[R]) -> R:
        metadata = self._core.metadata()
        try:
            response = await getattr(self._stubs[call.service], call.rpc)(call.request, metadata=metadata, timeout=call.deadline)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None
        return call.result(response)

    async def _run(self, plan: Plan[T]) -> T:
        try:
            step = next(plan)
            while True:
                if isinstance(step, _Sleep):
                    await asyncio.sleep(max(0.0, step.seconds))
                    step = plan.send(None)
                    continue
                try:
                    value = await self._invoke(step)
                except KettleError as exc:
                    step = plan.throw(exc)
                else:
                    step = plan.send(value)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    # data

    async def register_input_file(
        self, url: str, schema: str, key: BytesLike, iv: BytesLike, cmac: BytesLike,
        s3_credentials: S3Credentials | None = None,
    ) -> str:
        return await self._invoke(self._core.register_input_file(url, schema, key, iv, cmac, s3_credentials))

    async def register_output_file(
        self, url: str, schema: str, key: BytesLike, iv: BytesLike, s3_credentials: S3Credentials | None = None
    ) -> str:
        return await self._invoke(self._core.register_output_file(url, schema, key, iv, s3_credentials))

    async def update_input_file(self, data_id: str, url: str, s3_credentials: S3Credentials | None = None) -> str:
        return await self._invoke(self._core.update_input_file(data_id, url, s3_credentials))

    async def update_output_file(self, data_id: str, url: str, s3_credentials: S3Credentials | None = None) -> str:
        return await self._invoke(self._core.update_output_file(data_id, url, s3_credentials))

    async def register_fusion_output(self, owners: Iterable[str]) -> str:
        return await self._invoke(self._core.register_fusion_output(owners))

    async def register_input_from_output(self, data_id: str) -> str:
        return await self._invoke(self._core.register_input_from_output(data_id))

    async def get_input_file(self, data_id: str) -> FileInfo:
        return await self._invoke(self._core.get_input_file(data_id))

    async def get_output_file(self, data_id: str) -> FileInfo:
        return await self._invoke(self._core.get_output_file(data_id))

    # functions

    async def register_function(
        self,
        name: str,
        description: str = "",
        executor_type: str = "builtin",
        public: bool = True,
        payload: bytes | str | Iterable[int] = b"",
        arguments: Iterable[FunctionArgument | str] = (),
        inputs: Iterable[FunctionInput | str] = (),
        outputs: Iterable[FunctionOutput | str] = (),
        user_allowlist: Iterable[str] = (),
        usage_quota: int | None = -1,
    ) -> str:
        return await self._invoke(self._core.register_function(
            name, description, executor_type, public, payload, arguments, inputs, outputs, user_allowlist, usage_quota
        ))

    async def update_function(
        self,
        function_id: str,
        name: str,
        description: str = "",
        executor_type: str = "builtin",
        public: bool = True,
        payload: bytes | str | Iterable[int] = b"",
        arguments: Iterable[FunctionArgument | str] = (),
        inputs: Iterable[FunctionInput | str] = (),
        outputs: Iterable[FunctionOutput | str] = (),
        user_allowlist: Iterable[str] = (),
        usage_quota: int | None = -1,
    ) -> str:
        return await self._invoke(self._core.update_function(
            function_id, name, description, executor_type, public, payload, arguments, inputs, outputs, user_allowlist, usage_quota
        ))

    async def get_function(self, function_id: str) -> FunctionInfo:
        return await self._invoke(self._core.get_function(function_id))

    async def get_function_usage_stats(self, function_id: str) -> FunctionUsage:
        return await self._invoke(self._core.get_function_usage_stats(function_id))

    async def list_functions(self, user_id: str | None = None) -> FunctionList:
        return await self._invoke(self._core.list_functions(user_id))

    async def delete_function(self, function_id: str) -> None:
        await self._invoke(self._core.delete_function(function_id))

    async def disable_function(self, function_id: str) -> None:
        await self._invoke(self._core.disable_function(function_id))

    # tasks

    async def create_task(
        self,
        function_id: str,
        function_arguments: Mapping[str, Any] | str | None = None,
        executor: str = "builtin",
        inputs_ownership: Ownership = (),
        outputs_ownership: Ownership = (),
    ) -> str:
        return await self._invoke(self._core.create_task(function_id, function_arguments, executor, inputs_ownership, outputs_ownership))

    async def assign_data(self, task_id: str, inputs: Assignment = (), outputs: Assignment = ()) -> None:
        await self._invoke(self._core.assign_data(task_id, inputs, outputs))

    async def approve_task(
        self, task_id: str, expect_digest: str | None = None, expires_in: int | None = None
    ) -> None:
        """As :meth:`FrontendClient.approve_task`."""
        await self._invoke(self._core.approve_task(task_id, expect_digest, expires_in))

    async def revoke_approval(self, task_id: str) -> None:
        """As :meth:`FrontendClient.revoke_approval`."""
        await self._invoke(self._core.revoke_approval(task_id))

    async def refuse_task(self, task_id: str, reason: str = "") -> None:
        """As :meth:`FrontendClient.refuse_task`."""
        await self._invoke(self._core.refuse_task(task_id, reason))

    async def list_my_tasks(self) -> list[str]:
        """As :meth:`FrontendClient.list_my_tasks`."""
        return await self._run(self._core.list_my_tasks())

    async def list_my_files(self) -> list[str]:
        """As :meth:`FrontendClient.list_my_files`."""
        return await self._run(self._core.list_my_files())

    async def invoke_task(self, task_id: str) -> None:
        await self._invoke(self._core.invoke_task(task_id))

    async def cancel_task(self, task_id: str) -> None:
        await self._invoke(self._core.cancel_task(task_id))

    async def get_task(self, task_id: str) -> TaskInfo:
        return await self._invoke(self._core.get_task(task_id))

    async def wait_task(self, task_id: str, timeout: float | None = None) -> TaskInfo:
        return await self._run(self._core.wait_task(task_id, timeout))

    async def get_task_result(self, task_id: str, timeout: float | None = None) -> bytes:
        return await self._run(self._core.get_task_result(task_id, timeout))

    async def get_output_cmac_by_tag(self, task_id: str, tag: str, timeout: float | None = None) -> bytes:
        return await self._run(self._core.get_output_cmac_by_tag(task_id, tag, timeout))

    async def query_audit_logs(self, query: str, limit: int = 100) -> list[AuditEntry]:
        return await self._invoke(self._core.query_audit_logs(query, limit))

    async def my_trail(self) -> Trail:
        return await self._run(self._core.my_trail())

    async def verify_my_trail(self) -> TrailVerdict:
        return await asyncio.to_thread(verify_trail, await self.my_trail(), self.trust)

    # objects

    def function(self, function_id: str) -> AsyncFunction:
        from .objects import AsyncFunction

        return AsyncFunction(self, function_id)

    def task(self, task_id: str) -> AsyncTask:
        from .objects import AsyncTask

        return AsyncTask(self, task_id)

    async def _update_function_fields(self, function_id: str, changes: Mapping[str, Any]) -> str:
        return await self._run(self._core.function_update(function_id, changes))

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncFrontendClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
