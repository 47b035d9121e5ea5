"""Hostile input against every public RPC of a real platform: each refused precisely, nothing changed.

Hundreds of malformed requests, generated from tables (per RPC, per field, a
catalogue of bad values), go through raw gRPC stubs over the attested channel
the SDK uses, to the authentication API and the frontend API of one platform
with every service running. Each must come back with the status code the
platform promises (``docs/errors.md``) and a plain, bounded sentence — never a
traceback, never INTERNAL for a client's mistake — and afterwards every record
of the platform (functions, usage counters, indexes, tasks, files, cancel
requests) and the user list must be exactly as before, and the platform must
still serve a normal request.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from conftest import ALL_SERVICES, Platform, make_home, with_platform_store
from google.protobuf.message import Message

from kettle.model.listings import INVALID_CURSOR
from kettle.rpc.generated import kettle_frontend_pb2 as kettle_frontend_pb
from kettle.rpc.generated import kettle_frontend_pb2_grpc as kettle_grpc
from kettle.rpc.generated import kettle_management_pb2 as kpb
from kettle.rpc.generated import teaclave_authentication_service_pb2 as apb
from kettle.rpc.generated import teaclave_authentication_service_pb2_grpc as auth_grpc
from kettle.rpc.generated import teaclave_common_pb2 as cpb
from kettle.rpc.generated import teaclave_frontend_service_pb2 as fpb
from kettle.rpc.generated import teaclave_frontend_service_pb2_grpc as frontend_grpc
from kettle.sdk.attested import verify_endpoint
from kettle.services.platform_store import PlatformStore

Code = grpc.StatusCode
INVALID, DENIED, UNAUTH, UNKNOWN = Code.INVALID_ARGUMENT, Code.PERMISSION_DENIED, Code.UNAUTHENTICATED, Code.UNKNOWN
PRECONDITION = Code.FAILED_PRECONDITION

CANCEL_FAILED = "failed to cancel task, reason: task has already been canceled"
CANCEL_FINISHED = "failed to cancel task, reason: task has already finished"
UNKNOWN_UUID = "0b0b0b0b-0b0b-4b0b-8b0b-0b0b0b0b0b0b"
HUGE = "x" * 10_000
KEY16, KEY32, IV12, CMAC = bytes(range(16)), bytes(range(32)), bytes(12), bytes(range(16))
GCM = cpb.FileCryptoInfo(schema="aes-gcm-128", key=KEY16, iv=IV12)
MAX_DETAILS = 300
"""No refusal may be longer: echoed input is bounded (64 characters and an ellipsis)."""
LEAKS = ("Traceback", 'File "/', ".py", "object at 0x", "grpc.", "Exception")
STATE_PREFIXES = (b"function-", b"usage-", b"user-", b"task-", b"input-", b"output-", b"cancel-request-",
                  b"pinned-task-")
"""Every record a management RPC can write; audit records change with every call, by design."""


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, _auditor_cache: Any) -> Iterator[Platform]:
    """A platform of this module's own: nothing else changes its records while they are compared."""
    p = Platform(make_home(tmp_path_factory.mktemp("hostile"), _auditor_cache))
    p.start(ALL_SERVICES)
    yield p
    p.stop()


# --- raw access ---------------------------------------------------------------------------------


Metadata = tuple[tuple[str, str], ...] | None


@dataclass(frozen=True)
class Case:
    """One malformed request and what it must get back (``text``: exact details; ``part``: a substring)."""

    api: str
    rpc: str
    request: Message
    who: str | None
    """A user of the world (its id and token are sent), or None for the metadata in ``metadata``."""
    code: grpc.StatusCode
    text: str | None = None
    part: str | None = None
    metadata: Metadata = None

    def key(self) -> tuple[Any, ...]:
        return (self.api, self.rpc, self.request.SerializeToString(deterministic=True), self.who, self.metadata)


class Api:
    def __init__(self, platform: Platform) -> None:
        trust = platform.trust()
        self._channels = [
            verify_endpoint(platform.auth_address, "authentication", trust).channel(trust),
            verify_endpoint(platform.frontend_address, "frontend", trust).channel(trust),
        ]
        auth, frontend = self._channels
        self.stubs: dict[str, Any] = {
            "auth": auth_grpc.TeaclaveAuthenticationApiStub(auth),
            "frontend": frontend_grpc.TeaclaveFrontendStub(frontend),
            "kettle": kettle_grpc.KettleFrontendStub(frontend),
        }
        self.tokens: dict[str, str] = {}

    def metadata(self, who: str | None) -> Metadata:
        return None if who is None else (("id", who), ("token", self.tokens[who]))

    def call(self, api: str, rpc: str, request: Message, who: str | None, metadata: Metadata = None) -> Any:
        return getattr(self.stubs[api], rpc)(request, metadata=metadata or self.metadata(who), timeout=60)

    def outcome(self, case: Case) -> tuple[grpc.StatusCode, str]:
        try:
            self.call(case.api, case.rpc, case.request, case.who, case.metadata)
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or ""
        return Code.OK, ""

    def close(self) -> None:
        for channel in self._channels:
            channel.close()


# --- the world the hostile requests aim at -------------------------------------------------------


@dataclass
class World:
    """Users and objects made with valid requests; the hostile ones point at them."""

    admin: str
    fo: str
    fo2: str
    alice: str
    bob: str
    carol: str
    echo: str
    """fo's public builtin-echo (argument ``message``)."""
    files_fn: str
    """fo's public python function: argument ``n``, input ``in``, output ``out``."""
    private: str
    """fo2's private builtin-echo, allowlisted for the group ``hospital`` only."""
    disabled: str
    alice_in: str
    alice_out: str
    bob_in: str
    bob_out: str
    fusion: str
    """alice's and bob's fusion output, not written yet."""
    task_files: str
    """alice's Created task on ``files_fn`` (in/out owned by alice, nothing assigned)."""
    task_bob: str
    task_canceled: str
    task_finished: str


def make_world(api: Api, admin_password: str) -> World:
    suffix = secrets.token_hex(3)
    admin = "admin"
    api.tokens[admin] = api.call("auth", "UserLogin", apb.UserLoginRequest(id=admin, password=admin_password), None).token
    names = {"fo": "FunctionOwner", "fo2": "FunctionOwner", "alice": "DataOwner", "bob": "DataOwner", "carol": "DataOwner"}
    groups = {"alice": "bank", "bob": "bank", "carol": "hospital"}
    users: dict[str, str] = {}
    for name, role in names.items():
        user = f"{name}-{suffix}"
        users[name] = user
        api.call("auth", "UserRegister", apb.UserRegisterRequest(
            id=user, password="pw", role=role, attribute=groups.get(name, "")), admin)
        api.tokens[user] = api.call("auth", "UserLogin", apb.UserLoginRequest(id=user, password="pw"), None).token
    fo, fo2, alice, bob = users["fo"], users["fo2"], users["alice"], users["bob"]

    def frontend(rpc: str, request: Message, who: str) -> Any:
        return api.call("frontend", rpc, request, who)

    echo_args = [fpb.FunctionArgument(key="message", allow_overwrite=True)]
    echo = frontend("RegisterFunction", fpb.RegisterFunctionRequest(
        name="builtin-echo", executor_type="builtin", public=True, arguments=echo_args, usage_quota=-1), fo).function_id
    files_fn = frontend("RegisterFunction", fpb.RegisterFunctionRequest(
        name="copy", executor_type="python", public=True, payload=b"def entrypoint(argv):\n    return ''\n",
        arguments=[fpb.FunctionArgument(key="n", allow_overwrite=True)],
        inputs=[fpb.FunctionInput(name="in")], outputs=[fpb.FunctionOutput(name="out")], usage_quota=-1), fo).function_id
    private = frontend("RegisterFunction", fpb.RegisterFunctionRequest(
        name="builtin-echo", executor_type="builtin", public=False, arguments=echo_args,
        user_allowlist=["hospital"], usage_quota=-1), fo2).function_id
    disabled = frontend("RegisterFunction", fpb.RegisterFunctionRequest(
        name="builtin-echo", executor_type="builtin", public=True, arguments=echo_args, usage_quota=-1), fo2).function_id
    frontend("DisableFunction", fpb.DisableFunctionRequest(function_id=disabled), fo2)

    def register_input(who: str, name: str) -> str:
        return frontend("RegisterInputFile", fpb.RegisterInputFileRequest(
            url=f"https://files.example/{name}", cmac=CMAC, crypto_info=GCM), who).data_id

    def register_output(who: str, name: str) -> str:
        return frontend("RegisterOutputFile", fpb.RegisterOutputFileRequest(
            url=f"https://files.example/{name}", crypto_info=GCM), who).data_id

    def create(who: str, function_id: str, arguments: str = '{"message": "hi"}', executor: str = "builtin",
               **ownership: Any) -> str:
        return frontend("CreateTask", fpb.CreateTaskRequest(
            function_id=function_id, function_arguments=arguments, executor=executor, **ownership), who).task_id

    mine = [fpb.OwnerList(data_name="in", uids=[alice])], [fpb.OwnerList(data_name="out", uids=[alice])]
    task_files = create(alice, files_fn, '{"n": "1"}', "mesapy", inputs_ownership=mine[0], outputs_ownership=mine[1])
    task_canceled = create(alice, echo)
    frontend("CancelTask", fpb.CancelTaskRequest(task_id=task_canceled), alice)
    task_finished = create(alice, echo)
    frontend("InvokeTask", fpb.InvokeTaskRequest(task_id=task_finished), alice)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = api.call("kettle", "WaitTask", kpb.WaitTaskRequest(task_id=task_finished, timeout_ms=10_000), alice).status
        if status == cpb.TaskStatus.Finished:
            break
    assert status == cpb.TaskStatus.Finished, f"the echo task did not finish: status {status}"
    return World(
        admin=admin, fo=fo, fo2=fo2, alice=alice, bob=bob, carol=users["carol"],
        echo=echo, files_fn=files_fn, private=private, disabled=disabled,
        alice_in=register_input(alice, "a.enc"), alice_out=register_output(alice, "a.out"),
        bob_in=register_input(bob, "b.enc"), bob_out=register_output(bob, "b.out"),
        fusion=frontend("RegisterFusionOutput", fpb.RegisterFusionOutputRequest(owner_list=[alice, bob]), alice).data_id,
        task_files=task_files, task_bob=create(bob, echo), task_canceled=task_canceled, task_finished=task_finished,
    )


# --- catalogues of bad values ---------------------------------------------------------------------


def bad_ids(kind: str, real: str, other_kind_real: str) -> list[str]:
    """IDs that must all be "invalid <kind> id": unparsable, unknown, or of another kind."""
    bare = real.split("-", 1)[1]
    return [
        "", "\x00", HUGE, f"{kind}-", f"{kind}-not-a-uuid", f"{kind}-{UNKNOWN_UUID}", other_kind_real,
        f"{kind.upper()}-{bare}", f"{kind}-{bare}\x00", f"{kind}-{bare}0", f"{kind}-" + "ü" * 36, f" {real}",
        f"{kind}-{bare[:-1]}g", f"{kind}_{bare}", bare,
    ]


BAD_URLS: list[tuple[str, str]] = [
    ("file:///etc/passwd", "URL scheme not allowed: file"),
    ("file:../../etc/passwd", "URL scheme not allowed: file"),
    ("file://localhost/etc/shadow", "URL scheme not allowed: file"),
    ("FILE:///etc/passwd", "URL scheme not allowed: file"),
    ("javascript:alert(1)", "URL scheme not allowed: javascript"),
    ("gopher://127.0.0.1:70/_stats", "URL scheme not allowed: gopher"),
    ("ftp://files.example/in.enc", "URL scheme not allowed: ftp"),
    ("ws://files.example/in.enc", "URL scheme not allowed: ws"),
    ("mailto:someone@files.example", "URL scheme not allowed: mailto"),
    ("fusion:///TEACLAVE_FUSION_BASE/x.fusion", "fusion URLs name files the platform holds"),
    ("", "relative URL without a base"),
    ("relative/in.enc", "relative URL without a base"),
    ("//files.example/in.enc", "relative URL without a base"),
    ("https://", "empty host"),
    ("https:files.example/in.enc", "https URL without a host"),
    ("https://files example/in.enc", "invalid URL character U+0020"),
    ("https://[::1/in.enc", "invalid IPv6 address"),
    ("https://files.example:99999/in.enc", "invalid port number"),
    ("http://999.1.1.1/in.enc", "invalid IPv4 address"),
    ("https://files.example/\x00", "invalid URL character U+0000"),
    ("https://files.example/a\nb", "invalid URL character U+000A"),
    ("\u202ehttps://files.example/a", "invalid URL character U+202E"),
    ("https://files.example/" + "a" * 9000, "URL is too long"),
    ("x" * 70 + "://host/", "URL scheme not allowed: " + "x" * 64 + "…"),
]

BAD_CRYPTO: list[tuple[cpb.FileCryptoInfo | None, str]] = [
    (None, "missing crypto_info"),
    (cpb.FileCryptoInfo(schema="", key=KEY16, iv=IV12), "Invalid crypto schema: "),
    (cpb.FileCryptoInfo(schema="aes-gcm-512", key=KEY16, iv=IV12), "Invalid crypto schema: aes-gcm-512"),
    (cpb.FileCryptoInfo(schema="AES-GCM-128", key=KEY16, iv=IV12), "Invalid crypto schema: AES-GCM-128"),
    (cpb.FileCryptoInfo(schema=HUGE, key=KEY16, iv=IV12), "Invalid crypto schema: " + "x" * 64 + "…"),
    (cpb.FileCryptoInfo(schema="aes-gcm-128", key=KEY16[:15], iv=IV12), "Invalid key length for AesGcm128: 15"),
    (cpb.FileCryptoInfo(schema="aes-gcm-128", key=KEY16 + b"\x00", iv=IV12), "Invalid key length for AesGcm128: 17"),
    (cpb.FileCryptoInfo(schema="aes-gcm-128", key=b"", iv=IV12), "Invalid key length for AesGcm128: 0"),
    (cpb.FileCryptoInfo(schema="aes-gcm-128", key=KEY16, iv=IV12[:11]), "Invalid iv length for AesGcm128: 11"),
    (cpb.FileCryptoInfo(schema="aes-gcm-256", key=KEY16, iv=IV12), "Invalid key length for AesGcm256: 16"),
    (cpb.FileCryptoInfo(schema="aes-gcm-256", key=KEY32, iv=b""), "Invalid iv length for AesGcm256: 0"),
    (cpb.FileCryptoInfo(schema="teaclave-file-128", key=KEY16, iv=IV12), "IV is not empty for teaclave_file_128"),
    (cpb.FileCryptoInfo(schema="teaclave-file-128", key=KEY32, iv=b""), "Invalid key length for TeaclaveFile128: 32"),
]


def definition_cases() -> list[tuple[dict[str, Any], str]]:
    """Changes to a valid builtin-echo definition that RegisterFunction and UpdateFunction refuse."""
    arg = fpb.FunctionArgument
    many = [f"n{i}" for i in range(257)]
    return [
        ({"executor_type": ""}, "Invalid executor type: "),
        ({"executor_type": "rust"}, "Invalid executor type: rust"),
        ({"executor_type": "Builtin"}, "Invalid executor type: Builtin"),
        ({"executor_type": "python\x00"}, "Invalid executor type: python\x00"),
        ({"executor_type": HUGE}, "Invalid executor type: " + "x" * 64 + "…"),
        ({"name": ""}, "a builtin function needs the name of the built-in it runs"),
        ({"name": "\x00"}, "no built-in function is named '\\x00'"),
        ({"name": "builtin-echo\x00"}, "no built-in function is named 'builtin-echo\\x00'"),
        ({"name": "builtin-nonexistent"}, "no built-in function is named 'builtin-nonexistent'"),
        ({"name": "echo"}, "no built-in function is named 'echo'"),
        ({"name": "builtin_echo"}, "no built-in function is named 'builtin_echo'"),
        ({"name": "builtin-../echo"}, "no built-in function is named 'builtin-../echo'"),
        ({"name": "builtin-" + HUGE}, "no built-in function is named 'builtin-" + "x" * 56 + "…'"),
        ({"arguments": [arg(key="message"), arg(key="message")]}, "argument key 'message' is declared twice"),
        ({"inputs": [fpb.FunctionInput(name="a"), fpb.FunctionInput(name="a")]}, "input name 'a' is declared twice"),
        ({"outputs": [fpb.FunctionOutput(name="o"), fpb.FunctionOutput(name="o")]}, "output name 'o' is declared twice"),
        ({"arguments": [arg(key=k) for k in many]}, "a function has at most 256 arguments"),
        ({"inputs": [fpb.FunctionInput(name=k) for k in many]}, "a function has at most 256 inputs"),
        ({"outputs": [fpb.FunctionOutput(name=k) for k in many]}, "a function has at most 256 outputs"),
        ({"user_allowlist": many}, "a function has at most 256 user_allowlist entries"),
        ({"arguments": [arg(key="k" * 257)]}, "at most 256 characters"),
        ({"inputs": [fpb.FunctionInput(name="i" * 257)]}, "at most 256 characters"),
        ({"user_allowlist": ["u" * 257]}, "at most 256 characters"),
        ({"executor_type": "python", "name": "f", "arguments": [arg(key="a"), arg(key="b"), arg(key="a")]},
         "argument key 'a' is declared twice"),
        ({"executor_type": "wamr", "name": "f", "outputs": [fpb.FunctionOutput(name="")] * 2},
         "output name '' is declared twice"),
    ]


def build_cases(w: World) -> list[Case]:
    cases: list[Case] = []
    fe = "frontend"

    def add(rpc: str, request: Message, who: str | None, code: grpc.StatusCode, text: str | None = None,
            part: str | None = None, api: str = fe, metadata: Metadata = None) -> None:
        cases.append(Case(api, rpc, request, who, code, text, part, metadata))

    # 1. Credentials: every frontend RPC and every authentication RPC but login, without or with bad ones.
    frontend_requests: dict[tuple[str, str], Message] = {
        (fe, "RegisterInputFile"): fpb.RegisterInputFileRequest(url="https://files.example/n", cmac=CMAC, crypto_info=GCM),
        (fe, "RegisterOutputFile"): fpb.RegisterOutputFileRequest(url="https://files.example/n", crypto_info=GCM),
        (fe, "UpdateInputFile"): fpb.UpdateInputFileRequest(data_id=w.alice_in, url="https://files.example/m"),
        (fe, "UpdateOutputFile"): fpb.UpdateOutputFileRequest(data_id=w.alice_out, url="https://files.example/m"),
        (fe, "RegisterFusionOutput"): fpb.RegisterFusionOutputRequest(owner_list=[w.alice, w.bob]),
        (fe, "RegisterInputFromOutput"): fpb.RegisterInputFromOutputRequest(data_id=w.alice_out),
        (fe, "GetOutputFile"): fpb.GetOutputFileRequest(data_id=w.alice_out),
        (fe, "GetInputFile"): fpb.GetInputFileRequest(data_id=w.alice_in),
        (fe, "RegisterFunction"): fpb.RegisterFunctionRequest(name="builtin-echo", executor_type="builtin"),
        (fe, "GetFunction"): fpb.GetFunctionRequest(function_id=w.echo),
        (fe, "GetFunctionUsageStats"): fpb.GetFunctionUsageStatsRequest(function_id=w.echo),
        (fe, "UpdateFunction"): fpb.UpdateFunctionRequest(function_id=w.echo, name="builtin-echo", executor_type="builtin"),
        (fe, "ListFunctions"): fpb.ListFunctionsRequest(user_id=w.fo),
        (fe, "DeleteFunction"): fpb.DeleteFunctionRequest(function_id=w.echo),
        (fe, "DisableFunction"): fpb.DisableFunctionRequest(function_id=w.echo),
        (fe, "CreateTask"): fpb.CreateTaskRequest(function_id=w.echo, function_arguments='{"message": "x"}', executor="builtin"),
        (fe, "GetTask"): fpb.GetTaskRequest(task_id=w.task_files),
        (fe, "AssignData"): fpb.AssignDataRequest(task_id=w.task_files, inputs=[fpb.DataMap(data_name="in", data_id=w.alice_in)]),
        (fe, "ApproveTask"): fpb.ApproveTaskRequest(task_id=w.task_bob),
        (fe, "InvokeTask"): fpb.InvokeTaskRequest(task_id=w.task_bob),
        (fe, "CancelTask"): fpb.CancelTaskRequest(task_id=w.task_bob),
        (fe, "QueryAuditLogs"): fpb.QueryAuditLogsRequest(query="", limit=10),
        ("kettle", "WaitTask"): kpb.WaitTaskRequest(task_id=w.task_files, timeout_ms=0),
        ("kettle", "RevokeApproval"): kpb.RevokeApprovalRequest(task_id=w.task_bob),
        ("kettle", "ListMyTrail"): kpb.ListMyTrailRequest(),
        ("kettle", "ListMyTasks"): kpb.ListMyTasksRequest(),
        ("kettle", "ListMyFiles"): kpb.ListMyFilesRequest(),
        ("kettle", "RefuseTask"): kpb.RefuseTaskRequest(task_id=w.task_files, reason="no"),
        ("auth", "UserRegister"): apb.UserRegisterRequest(id="newcomer", password="pw", role="PlatformAdmin"),
        ("auth", "UserUpdate"): apb.UserUpdateRequest(id=w.alice, password="pw", role="PlatformAdmin"),
        ("auth", "UserChangePassword"): apb.UserChangePasswordRequest(password="new"),
        ("auth", "ResetUserPassword"): apb.ResetUserPasswordRequest(id=w.alice),
        ("auth", "DeleteUser"): apb.DeleteUserRequest(id=w.alice),
        ("auth", "ListUsers"): apb.ListUsersRequest(id=w.alice),
    }
    admin_token = "__admin__"  # replaced below: metadata is built when the token is known
    bad_credentials: list[tuple[Metadata, str]] = [
        ((), "missing user id"),
        ((("id", w.admin),), "missing token"),
        ((("token", admin_token),), "missing user id"),
        ((("id", w.admin), ("token", "not-a-token")), "incorrent credential"),
        ((("id", w.alice), ("token", admin_token)), "incorrent credential"),
        ((("id", w.admin), ("token", admin_token + "x")), "incorrent credential"),
    ]
    for (api, rpc), request in frontend_requests.items():
        for metadata, text in bad_credentials:
            expected = text
            if api == "auth" and text == "incorrent credential":
                expected = None  # the authentication API has its own texts; the code is what matters
            add(rpc, request, None, UNAUTH, expected, api=api, metadata=metadata)
    # A DataOwner at the gate of what it may not call.
    for (api, rpc), request in frontend_requests.items():
        if api != "auth" and rpc in ("RegisterFunction", "UpdateFunction", "DeleteFunction", "DisableFunction",
                                     "QueryAuditLogs"):
            add(rpc, request, w.carol, DENIED, "permission denied", api=api)
        if api != "auth" and rpc in ("RegisterInputFile", "CreateTask", "GetTask", "AssignData", "CancelTask"):
            add(rpc, request, w.fo, DENIED, "permission denied", api=api)

    # 2. IDs: every field that names an object, with every bad ID.
    function_ids = bad_ids("function", w.echo, w.task_files)
    task_ids = bad_ids("task", w.task_files, w.echo)
    for bad in function_ids:
        text = "invalid function id"
        add("GetFunction", fpb.GetFunctionRequest(function_id=bad), w.fo, INVALID, text)
        add("GetFunctionUsageStats", fpb.GetFunctionUsageStatsRequest(function_id=bad), w.fo, INVALID, text)
        add("UpdateFunction", fpb.UpdateFunctionRequest(function_id=bad, name="builtin-echo", executor_type="builtin"),
            w.fo, INVALID, text)
        add("DeleteFunction", fpb.DeleteFunctionRequest(function_id=bad), w.fo, INVALID, text)
        add("DisableFunction", fpb.DisableFunctionRequest(function_id=bad), w.fo, INVALID, text)
        add("CreateTask", fpb.CreateTaskRequest(function_id=bad, function_arguments='{"message": "x"}', executor="builtin"),
            w.alice, INVALID, text)
    for bad in task_ids:
        text = "invalid task id"
        add("GetTask", fpb.GetTaskRequest(task_id=bad), w.alice, INVALID, text)
        add("WaitTask", kpb.WaitTaskRequest(task_id=bad, timeout_ms=1), w.alice, INVALID, text, api="kettle")
        add("RevokeApproval", kpb.RevokeApprovalRequest(task_id=bad), w.alice, INVALID, text, api="kettle")
        add("RefuseTask", kpb.RefuseTaskRequest(task_id=bad), w.alice, INVALID, text, api="kettle")
        add("AssignData", fpb.AssignDataRequest(task_id=bad), w.alice, INVALID, text)
        add("ApproveTask", fpb.ApproveTaskRequest(task_id=bad), w.alice, INVALID, text)
        add("InvokeTask", fpb.InvokeTaskRequest(task_id=bad), w.alice, INVALID, text)
        add("CancelTask", fpb.CancelTaskRequest(task_id=bad), w.alice, INVALID, text)
    for bad in bad_ids("input", w.alice_in, w.alice_out):
        text = "invalid data id"
        add("UpdateInputFile", fpb.UpdateInputFileRequest(data_id=bad, url="https://files.example/m"), w.alice, INVALID, text)
        add("GetInputFile", fpb.GetInputFileRequest(data_id=bad), w.alice, INVALID, text)
    for bad in bad_ids("output", w.alice_out, w.alice_in):
        text = "invalid data id"
        add("UpdateOutputFile", fpb.UpdateOutputFileRequest(data_id=bad, url="https://files.example/m"), w.alice, INVALID, text)
        add("GetOutputFile", fpb.GetOutputFileRequest(data_id=bad), w.alice, INVALID, text)
        add("RegisterInputFromOutput", fpb.RegisterInputFromOutputRequest(data_id=bad), w.alice, INVALID, text)

    # 3. URLs, cmacs and crypto info of data registrations.
    for url, part in BAD_URLS:
        add("RegisterInputFile", fpb.RegisterInputFileRequest(url=url, cmac=CMAC, crypto_info=GCM), w.alice, INVALID, part=part)
        add("RegisterOutputFile", fpb.RegisterOutputFileRequest(url=url, crypto_info=GCM), w.alice, INVALID, part=part)
        add("UpdateInputFile", fpb.UpdateInputFileRequest(data_id=w.alice_in, url=url), w.alice, INVALID, part=part)
        add("UpdateOutputFile", fpb.UpdateOutputFileRequest(data_id=w.alice_out, url=url), w.alice, INVALID, part=part)
    data_url = "data:text/plain;base64,aGk="
    add("RegisterOutputFile", fpb.RegisterOutputFileRequest(url=data_url, crypto_info=GCM), w.alice, INVALID,
        "an output cannot be written to a data URL")
    add("UpdateOutputFile", fpb.UpdateOutputFileRequest(data_id=w.alice_out, url=data_url), w.alice, INVALID,
        "an output cannot be written to a data URL")
    for cmac in (b"", CMAC[:15], CMAC + b"\x00", bytes(1000)):
        add("RegisterInputFile", fpb.RegisterInputFileRequest(url="https://files.example/n", cmac=cmac, crypto_info=GCM),
            w.alice, INVALID, f"Invalid cmac length: {len(cmac)}")
    for info, part in BAD_CRYPTO:
        extra = {} if info is None else {"crypto_info": info}
        add("RegisterInputFile", fpb.RegisterInputFileRequest(url="https://files.example/n", cmac=CMAC, **extra),
            w.alice, INVALID, part=part)
        add("RegisterOutputFile", fpb.RegisterOutputFileRequest(url="https://files.example/n", **extra),
            w.alice, INVALID, part=part)

    # 4. Other users' files, unfinished outputs, fusion owner lists.
    add("UpdateInputFile", fpb.UpdateInputFileRequest(data_id=w.bob_in, url="https://files.example/m"), w.alice, DENIED, "permission denied")
    add("UpdateOutputFile", fpb.UpdateOutputFileRequest(data_id=w.bob_out, url="https://files.example/m"), w.alice, DENIED, "permission denied")
    add("UpdateOutputFile", fpb.UpdateOutputFileRequest(data_id=w.fusion, url="https://files.example/m"), w.alice, DENIED, "permission denied")
    add("GetInputFile", fpb.GetInputFileRequest(data_id=w.bob_in), w.alice, DENIED, "permission denied")
    add("GetOutputFile", fpb.GetOutputFileRequest(data_id=w.bob_out), w.alice, DENIED, "permission denied")
    add("GetOutputFile", fpb.GetOutputFileRequest(data_id=w.fusion), w.carol, DENIED, "permission denied")
    add("RegisterInputFromOutput", fpb.RegisterInputFromOutputRequest(data_id=w.bob_out), w.alice, DENIED, "permission denied")
    add("RegisterInputFromOutput", fpb.RegisterInputFromOutputRequest(data_id=w.alice_out), w.alice, INVALID, "invalid output file")
    add("RegisterInputFromOutput", fpb.RegisterInputFromOutputRequest(data_id=w.fusion), w.bob, INVALID, "invalid output file")
    for owners, code, text in (
        ([], DENIED, "permission denied"),
        ([w.alice], DENIED, "permission denied"),
        ([w.bob, w.carol], DENIED, "permission denied"),
        ([w.alice, ""], INVALID, "owner_list contains an empty user id"),
        ([w.alice, w.alice], INVALID, "a fusion output needs at least two distinct owners"),
        ([w.alice, "u" * 300], INVALID, "owner_list contains a user id longer than 256 characters"),
        ([w.alice, *(f"u{i}" for i in range(300))], INVALID, "owner_list has 301 entries, at most 256"),
    ):
        add("RegisterFusionOutput", fpb.RegisterFusionOutputRequest(owner_list=owners), w.alice, code, text)

    # 5. Function definitions (registration and update of one's own function), others' functions.
    base = {"name": "builtin-echo", "executor_type": "builtin", "public": True, "usage_quota": -1,
            "arguments": [fpb.FunctionArgument(key="message", allow_overwrite=True)]}
    for changes, part in definition_cases():
        add("RegisterFunction", fpb.RegisterFunctionRequest(**{**base, **changes}), w.fo, INVALID, part=part)
        add("UpdateFunction", fpb.UpdateFunctionRequest(function_id=w.echo, **{**base, **changes}), w.fo, INVALID, part=part)
    add("UpdateFunction", fpb.UpdateFunctionRequest(function_id=w.private, **base), w.fo, DENIED, "permission denied")
    add("DeleteFunction", fpb.DeleteFunctionRequest(function_id=w.private), w.fo, DENIED, "permission denied")
    add("DisableFunction", fpb.DisableFunctionRequest(function_id=w.private), w.fo, DENIED, "permission denied")
    add("GetFunction", fpb.GetFunctionRequest(function_id=w.private), w.alice, DENIED, "permission denied")
    add("GetFunctionUsageStats", fpb.GetFunctionUsageStatsRequest(function_id=w.private), w.alice, DENIED, "permission denied")
    for user_id in (w.fo2, "", HUGE, "\x00", w.admin):
        add("ListFunctions", fpb.ListFunctionsRequest(user_id=user_id), w.fo, DENIED, "permission denied")

    # 6. Task definitions.
    def create(arguments: str = '{"message": "x"}', executor: str = "builtin", function_id: str = w.echo,
               **ownership: Any) -> fpb.CreateTaskRequest:
        return fpb.CreateTaskRequest(function_id=function_id, function_arguments=arguments, executor=executor, **ownership)

    for executor, part in (
        ("", "Unsupported executor: "), ("rust", "Unsupported executor: rust"), ("BUILTIN", "Unsupported executor: BUILTIN"),
        ("builtin\x00", "Unsupported executor: builtin\x00"), (HUGE, "Unsupported executor: " + "x" * 64 + "…"),
        ("mesapy", "executor mesapy cannot run a builtin function"), ("python", "executor mesapy cannot run a builtin function"),
        ("wamr", "executor wamr cannot run a builtin function"), ("wasm", "executor wamr cannot run a builtin function"),
    ):
        add("CreateTask", create(executor=executor), w.alice, INVALID, part=part)
    add("CreateTask", create('{"n": "1"}', "builtin", w.files_fn), w.alice, INVALID, part="executor builtin cannot run a python function")
    for arguments, part in (
        ("", "function_arguments is not valid JSON"), ("{", "function_arguments is not valid JSON"),
        ("[]", "function_arguments is not a JSON object"), ("null", "function_arguments is not a JSON object"),
        ('"message"', "function_arguments is not a JSON object"), ('{"message": NaN}', "function_arguments is not valid JSON"),
        ('{"message": 1e999}', "function_arguments is not valid JSON"),
        ('{"message": "\\ud800"}', "function_arguments is not valid JSON"),
        ('{"message": ' + "[" * 100_000 + "]" * 100_000 + "}", "function_arguments is not valid JSON"),
        ('{"message": "x"' + " " * 10 + HUGE, "function_arguments is not valid JSON"),
        ("{}", "invalid task"), ('{"message": "x", "extra": 1}', "invalid task"), ('{"Message": "x"}', "invalid task"),
    ):
        add("CreateTask", create(arguments), w.alice, INVALID, part=part)
    owner = fpb.OwnerList
    for ownership in (
        {},
        {"inputs_ownership": [owner(data_name="in", uids=[w.alice])]},
        {"outputs_ownership": [owner(data_name="out", uids=[w.alice])]},
        {"inputs_ownership": [owner(data_name="in", uids=[w.alice]), owner(data_name="other", uids=[w.alice])],
         "outputs_ownership": [owner(data_name="out", uids=[w.alice])]},
        {"inputs_ownership": [owner(data_name="in", uids=[f"u{i}" for i in range(300)])],
         "outputs_ownership": [owner(data_name="out", uids=[w.alice])]},
        {"inputs_ownership": [owner(data_name="in", uids=["u" * 300])],
         "outputs_ownership": [owner(data_name="out", uids=[w.alice])]},
    ):
        add("CreateTask", create('{"n": "1"}', "mesapy", w.files_fn, **ownership), w.alice, INVALID, "invalid task")
    add("CreateTask", create(function_id=w.private), w.alice, DENIED, "permission denied")
    add("CreateTask", create(function_id=w.disabled), w.alice, DENIED, "permission denied")

    # 7. Task operations in the wrong state, on others' tasks, with bad data maps.
    dm = fpb.DataMap
    for inputs, outputs, code, text in (
        ([dm(data_name="in", data_id="not-an-id")], [], INVALID, "malformed data id 'not-an-id'"),
        ([dm(data_name="in", data_id=HUGE)], [], INVALID, "malformed data id '" + "x" * 64 + "…'"),
        ([], [dm(data_name="out", data_id="output-")], INVALID, "malformed data id 'output-'"),
        ([dm(data_name="in", data_id=f"input-{UNKNOWN_UUID}")], [], INVALID, "invalid data id"),
        ([dm(data_name="in", data_id=w.alice_out)], [], INVALID, "invalid data id"),
        ([dm(data_name="in", data_id=w.bob_in)], [], DENIED, "permission denied"),
        ([dm(data_name="nosuch", data_id=w.alice_in)], [], DENIED, "permission denied"),
        ([dm(data_name="in", data_id=w.alice_in), dm(data_name="in", data_id=w.alice_in)], [], DENIED, "permission denied"),
        ([dm(data_name="in", data_id=w.alice_in)], [dm(data_name="out", data_id=w.bob_out)], DENIED, "permission denied"),
        ([dm(data_name="in", data_id=w.alice_in)], [dm(data_name="out", data_id=w.fusion)], DENIED, "permission denied"),
    ):
        add("AssignData", fpb.AssignDataRequest(task_id=w.task_files, inputs=inputs, outputs=outputs), w.alice, code, text)
    add("AssignData", fpb.AssignDataRequest(task_id=w.task_canceled), w.alice, UNKNOWN, "failed to assign data to task")
    add("AssignData", fpb.AssignDataRequest(task_id=w.task_finished), w.alice, UNKNOWN, "failed to assign data to task")
    add("AssignData", fpb.AssignDataRequest(task_id=w.task_bob), w.alice, DENIED, "permission denied")
    for task_id, code, text in (
        (w.task_files, UNKNOWN, "failed to approve task"), (w.task_canceled, UNKNOWN, "failed to approve task"),
        (w.task_finished, UNKNOWN, "failed to approve task"), (w.task_bob, DENIED, "permission denied"),
    ):
        add("ApproveTask", fpb.ApproveTaskRequest(task_id=task_id), w.alice, code, text)
    for task_id, code, text in (
        (w.task_files, UNKNOWN, "failed to invoke task"), (w.task_canceled, UNKNOWN, "failed to invoke task"),
        (w.task_finished, UNKNOWN, "failed to invoke task"), (w.task_bob, DENIED, "permission denied"),
    ):
        add("InvokeTask", fpb.InvokeTaskRequest(task_id=task_id), w.alice, code, text)
    for task_id, code, text in (
        (w.task_files, PRECONDITION, f"{w.alice} has no approval of this task to revoke"),
        (w.task_finished, PRECONDITION, "the task is finished: an approval can be revoked only before the task is invoked"),
        (w.task_bob, DENIED, "permission denied"),
    ):
        add("RevokeApproval", kpb.RevokeApprovalRequest(task_id=task_id), w.alice, code, text, api="kettle")
    add("CancelTask", fpb.CancelTaskRequest(task_id=w.task_canceled), w.alice, UNKNOWN, CANCEL_FAILED)
    add("CancelTask", fpb.CancelTaskRequest(task_id=w.task_finished), w.alice, UNKNOWN, CANCEL_FINISHED)
    add("CancelTask", fpb.CancelTaskRequest(task_id=w.task_bob), w.alice, DENIED, "permission denied")
    add("GetTask", fpb.GetTaskRequest(task_id=w.task_bob), w.alice, DENIED, "permission denied")
    add("WaitTask", kpb.WaitTaskRequest(task_id=w.task_bob, timeout_ms=1), w.alice, DENIED, "permission denied", api="kettle")
    add("WaitTask", kpb.WaitTaskRequest(task_id=w.task_files, timeout_ms=1), w.carol, DENIED, "permission denied", api="kettle")
    # One's own trail only, and only for the roles that read tasks; absurd paging is an empty page.
    add("ListMyTrail", kpb.ListMyTrailRequest(), w.fo, DENIED, "permission denied", api="kettle")
    add("ListMyTrail", kpb.ListMyTrailRequest(after_sequence=2**64 - 1, limit=2**32 - 1), w.alice, Code.OK,
        api="kettle")
    # One's own tasks and files only, for the roles that read them; a cursor no page gave is refused.
    add("ListMyTasks", kpb.ListMyTasksRequest(), w.fo, DENIED, "permission denied", api="kettle")
    add("ListMyFiles", kpb.ListMyFilesRequest(), w.fo, DENIED, "permission denied", api="kettle")
    add("ListMyTasks", kpb.ListMyTasksRequest(limit=2**32 - 1), w.alice, Code.OK, api="kettle")
    add("ListMyFiles", kpb.ListMyFilesRequest(limit=2**32 - 1), w.alice, Code.OK, api="kettle")
    for cursor in ("x", HUGE, f"{0:020d}-{w.task_files}", "\x00"):
        add("ListMyTasks", kpb.ListMyTasksRequest(after=cursor), w.alice, INVALID, INVALID_CURSOR, api="kettle")
        add("ListMyFiles", kpb.ListMyFilesRequest(after=cursor), w.alice, INVALID, INVALID_CURSOR, api="kettle")
    # Refusing: participants only, before the task is invoked, with a short printable reason.
    for task_id, reason, code, text in (
        (w.task_bob, "", DENIED, "permission denied"),
        (w.task_finished, "", PRECONDITION, "the task is finished: a task can be refused only before it is invoked"),
        (w.task_files, "r" * 257, INVALID, "the reason is 257 characters long; at most 256"),
        (w.task_files, "a\nb", INVALID,
         "the reason may hold only printable characters (no line breaks or control characters)"),
    ):
        add("RefuseTask", kpb.RefuseTaskRequest(task_id=task_id, reason=reason), w.alice, code, text, api="kettle")
    for query, limit in (("", 0), ("user:x", 0), ("(((", 10), ("user:", 10), ("NOT", 10), ("nosuchfield:x", 10),
                         ("x" * 100_000, 10)):
        add("QueryAuditLogs", fpb.QueryAuditLogsRequest(query=query, limit=limit), w.admin, INVALID,
            part="audit log error, reason: ")

    # 8. The authentication API with a valid caller and bad content.
    auth = "auth"
    for user_id, password in (("", "x"), (f"nobody-{w.alice}", "x"), ("\x00", "x"), (w.alice, "wrong"), (HUGE, "p")):
        add("UserLogin", apb.UserLoginRequest(id=user_id, password=password), None, UNAUTH, api=auth, metadata=())
    for user_id, role, attribute, password in (
        ("", "DataOwner", "bank", "pw"), ("\x00", "DataOwner", "bank", "pw"), (HUGE, "DataOwner", "bank", "pw"),
        ("ü-user", "DataOwner", "bank", "pw"), ("a b", "DataOwner", "bank", "pw"), (w.alice, "DataOwner", "bank", "pw"),
        ("new-one", "", "", "pw"), ("new-one", "Nonsense", "", "pw"), ("new-one", "DataOwner\x00", "bank", "pw"),
        ("new-one", "DataOwner", "bank", "p" * 100_000),
    ):
        request = apb.UserRegisterRequest(id=user_id, password=password, role=role, attribute=attribute)
        add("UserRegister", request, w.admin, UNAUTH, api=auth)
    add("UserRegister", apb.UserRegisterRequest(id="new-two", password="pw", role="PlatformAdmin"), w.alice, UNAUTH, api=auth)
    for user_id, role in (("", "DataOwner"), ("nobody-here", "DataOwner"), (HUGE, "DataOwner"), (w.bob, "Nonsense")):
        add("UserUpdate", apb.UserUpdateRequest(id=user_id, password="pw", role=role, attribute="bank"), w.admin, UNAUTH, api=auth)
    add("UserUpdate", apb.UserUpdateRequest(id=w.bob, password="pw", role="PlatformAdmin"), w.alice, UNAUTH, api=auth)
    for user_id, who in (("", w.admin), ("nobody-here", w.admin), (HUGE, w.admin), (w.bob, w.alice), (w.admin, w.fo)):
        add("ResetUserPassword", apb.ResetUserPasswordRequest(id=user_id), who, UNAUTH, api=auth)
        add("DeleteUser", apb.DeleteUserRequest(id=user_id), who, UNAUTH, api=auth)
    for user_id, who in (("", w.admin), ("", w.alice), ("bank", w.alice), (w.admin, w.fo)):
        add("ListUsers", apb.ListUsersRequest(id=user_id), who, UNAUTH, api=auth)
    add("UserChangePassword", apb.UserChangePasswordRequest(password=""), w.alice, UNAUTH, api=auth)
    add("UserChangePassword", apb.UserChangePasswordRequest(password="p" * 100_000), w.alice, UNAUTH, api=auth)
    return cases


# --- state ----------------------------------------------------------------------------------------


def platform_records(platform: Platform) -> dict[bytes, bytes]:
    """Every management record in storage, read with the scheduler's attested identity."""

    async def read(store: PlatformStore) -> dict[bytes, bytes]:
        keys = [k for prefix in STATE_PREFIXES for k in await store.keys_with_prefix(prefix)]
        values = await asyncio.gather(*(store.get(k) for k in keys))
        return {k: v for k, v in zip(keys, values, strict=True) if v is not None}

    return with_platform_store(platform.config, "scheduler", read)


def users(api: Api, admin: str) -> list[str]:
    return sorted(api.call("auth", "ListUsers", apb.ListUsersRequest(id=admin), admin).ids)


# --- the test ----------------------------------------------------------------------------------------


def test_hostile_requests_are_refused_precisely_and_change_nothing(platform: Platform) -> None:
    api = Api(platform)
    try:
        world = make_world(api, "teaclave")
        cases = build_cases(world)
        keys = {case.key() for case in cases}
        assert len(keys) == len(cases), "every case is a distinct request"
        assert len(cases) >= 300
        covered = {(case.api, case.rpc) for case in cases}
        assert covered == public_rpcs(), "every public RPC gets hostile requests"

        before, users_before = platform_records(platform), users(api, world.admin)
        wrong: list[str] = []
        for case in cases:
            case = with_tokens(case, api)
            code, details = api.outcome(case)
            problems = []
            if code != case.code:
                problems.append(f"{code.name} instead of {case.code.name}")
            if case.text is not None and details != case.text:
                problems.append(f"text {details!r} instead of {case.text!r}")
            if case.part is not None and case.part not in details:
                problems.append(f"text {details!r} lacks {case.part!r}")
            if len(details) > MAX_DETAILS or any(leak in details for leak in LEAKS):
                problems.append(f"text leaks or is unbounded: {details[:200]!r}")
            if problems:
                wrong.append(f"{case.api}.{case.rpc} as {case.who} {short(case.request)}: {'; '.join(problems)}")
        assert not wrong, f"{len(wrong)} of {len(cases)} hostile requests answered wrongly:\n" + "\n".join(wrong)

        assert platform_records(platform) == before, "a refused request changed a record"
        assert users(api, world.admin) == users_before, "a refused request changed the users"
        # Still serving: a normal request right after the storm.
        data_id = api.call("frontend", "RegisterInputFile", fpb.RegisterInputFileRequest(
            url="https://files.example/after.enc", cmac=CMAC, crypto_info=GCM), world.alice).data_id
        assert api.call("frontend", "GetInputFile", fpb.GetInputFileRequest(data_id=data_id), world.alice).owner == [world.alice]
    finally:
        api.close()


def with_tokens(case: Case, api: Api) -> Case:
    """Bad-credential cases name the admin's real token by a placeholder (it exists only at run time)."""
    if not case.metadata:
        return case
    token = api.tokens["admin"]
    metadata = tuple((k, v.replace("__admin__", token)) for k, v in case.metadata)
    return Case(case.api, case.rpc, case.request, case.who, case.code, case.text, case.part, metadata)


def public_rpcs() -> set[tuple[str, str]]:
    services = {
        "auth": apb.DESCRIPTOR.services_by_name["TeaclaveAuthenticationApi"],
        "frontend": fpb.DESCRIPTOR.services_by_name["TeaclaveFrontend"],
        "kettle": kettle_frontend_pb.DESCRIPTOR.services_by_name["KettleFrontend"],
    }
    return {(api, method.name) for api, service in services.items() for method in service.methods}


def short(request: Message) -> str:
    text = str(request).replace("\n", " ")
    return text if len(text) <= 160 else text[:160] + "…"

