"""The protobuf contract: generated code is fresh and matches the Teaclave 0.6 wire format.

Teaclave's Python SDK talks to Kettle through its own generated stubs, so every
package, service, RPC, message, field name, field number and enum number of
spec/platform.md §1 must be reproduced exactly. The tables below are transcribed
from the spec (not from proto/), so a typo in a .proto file shows up here.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import (
    Descriptor,
    EnumDescriptor,
    FieldDescriptor,
    FileDescriptor,
    ServiceDescriptor,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
GEN_SCRIPT = REPO_ROOT / "scripts" / "gen_proto.py"
GENERATED_DIR = REPO_ROOT / "src" / "kettle" / "rpc" / "generated"
GENERATED_PACKAGE = "kettle.rpc.generated"

COMMON = "teaclave_common_proto."
AUTH = "teaclave_authentication_service_proto."
FRONT = "teaclave_frontend_service_proto."
EMPTY = "google.protobuf.Empty"

# proto stem -> (proto package, imported files)
PROTO_FILES: dict[str, tuple[str, list[str]]] = {
    "teaclave_common": ("teaclave_common_proto", []),
    "teaclave_authentication_service": (
        "teaclave_authentication_service_proto",
        ["teaclave_common.proto", "google/protobuf/empty.proto"],
    ),
    "teaclave_frontend_service": (
        "teaclave_frontend_service_proto",
        ["teaclave_common.proto", "google/protobuf/empty.proto"],
    ),
}
# Kettle's internal protos (kettle_*.proto) are Kettle's own contracts; only their
# freshness is checked here, the wire tables below are Teaclave's.

# proto stem -> message -> [(field, number, type as written in a .proto, fully qualified)].
# Every message of every file, every field: the tests below also check that
# nothing else exists.
MESSAGES: dict[str, dict[str, list[tuple[str, int, str]]]] = {
    "teaclave_common": {
        "UserCredential": [("id", 1, "string"), ("token", 2, "string")],
        "FileCryptoInfo": [("schema", 1, "string"), ("key", 2, "bytes"), ("iv", 3, "bytes")],
        "TaskOutputs": [
            ("return_value", 1, "bytes"),
            ("tags_map", 2, "map<string, bytes>"),
            ("log", 3, "repeated string"),
        ],
        "TaskFailure": [("reason", 1, "string")],
        "TaskResult": [("Ok", 1, f"{COMMON}TaskOutputs"), ("Err", 2, f"{COMMON}TaskFailure")],
        "Entry": [
            ("microsecond", 1, "int64"),
            ("ip", 2, "bytes"),
            ("user", 3, "string"),
            ("message", 4, "string"),
            ("result", 5, "bool"),
        ],
    },
    "teaclave_authentication_service": {
        "UserRegisterRequest": [
            ("id", 1, "string"),
            ("password", 2, "string"),
            ("role", 3, "string"),
            ("attribute", 4, "string"),
        ],
        "UserUpdateRequest": [
            ("id", 1, "string"),
            ("password", 2, "string"),
            ("role", 3, "string"),
            ("attribute", 4, "string"),
        ],
        "UserLoginRequest": [("id", 1, "string"), ("password", 2, "string")],
        "UserLoginResponse": [("token", 1, "string")],
        "UserAuthenticateRequest": [("credential", 1, f"{COMMON}UserCredential")],
        "UserAuthClaims": [
            ("sub", 1, "string"),
            ("role", 2, "string"),
            ("iss", 3, "string"),
            ("exp", 4, "uint64"),
        ],
        "UserAuthenticateResponse": [("claims", 1, f"{AUTH}UserAuthClaims")],
        "ListUsersRequest": [("id", 1, "string")],
        "ListUsersResponse": [("ids", 1, "repeated string")],
        "ResetUserPasswordRequest": [("id", 1, "string")],
        "ResetUserPasswordResponse": [("password", 1, "string")],
        "UserChangePasswordRequest": [("password", 1, "string")],
        "DeleteUserRequest": [("id", 1, "string")],
    },
    "teaclave_frontend_service": {
        "RegisterInputFileRequest": [
            ("url", 1, "string"),
            ("cmac", 2, "bytes"),
            ("crypto_info", 3, f"{COMMON}FileCryptoInfo"),
        ],
        "RegisterInputFileResponse": [("data_id", 1, "string")],
        "UpdateInputFileRequest": [("data_id", 1, "string"), ("url", 2, "string")],
        "UpdateInputFileResponse": [("data_id", 1, "string")],
        "RegisterOutputFileRequest": [("url", 1, "string"), ("crypto_info", 2, f"{COMMON}FileCryptoInfo")],
        "RegisterOutputFileResponse": [("data_id", 1, "string")],
        "UpdateOutputFileRequest": [("data_id", 1, "string"), ("url", 2, "string")],
        "UpdateOutputFileResponse": [("data_id", 1, "string")],
        "RegisterFusionOutputRequest": [("owner_list", 1, "repeated string")],
        "RegisterFusionOutputResponse": [("data_id", 1, "string")],
        "RegisterInputFromOutputRequest": [("data_id", 1, "string")],
        "RegisterInputFromOutputResponse": [("data_id", 1, "string")],
        "GetOutputFileRequest": [("data_id", 1, "string")],
        "GetOutputFileResponse": [("owner", 1, "repeated string"), ("cmac", 2, "bytes")],
        "GetInputFileRequest": [("data_id", 1, "string")],
        "GetInputFileResponse": [("owner", 1, "repeated string"), ("cmac", 2, "bytes")],
        "FunctionInput": [("name", 1, "string"), ("description", 2, "string"), ("optional", 3, "bool")],
        "FunctionOutput": [("name", 1, "string"), ("description", 2, "string"), ("optional", 3, "bool")],
        "FunctionArgument": [
            ("key", 1, "string"),
            ("default_value", 2, "string"),
            ("allow_overwrite", 3, "bool"),
        ],
        "OwnerList": [("data_name", 1, "string"), ("uids", 2, "repeated string")],
        "RegisterFunctionRequest": [
            ("name", 1, "string"),
            ("description", 2, "string"),
            ("executor_type", 3, "string"),
            ("public", 4, "bool"),
            ("payload", 5, "bytes"),
            ("arguments", 6, f"repeated {FRONT}FunctionArgument"),
            ("inputs", 10, f"repeated {FRONT}FunctionInput"),
            ("outputs", 11, f"repeated {FRONT}FunctionOutput"),
            ("user_allowlist", 12, "repeated string"),
            ("usage_quota", 13, "int32"),
        ],
        "RegisterFunctionResponse": [("function_id", 1, "string")],
        "UpdateFunctionRequest": [
            ("function_id", 1, "string"),
            ("name", 2, "string"),
            ("description", 3, "string"),
            ("executor_type", 4, "string"),
            ("public", 5, "bool"),
            ("payload", 6, "bytes"),
            ("arguments", 7, f"repeated {FRONT}FunctionArgument"),
            ("inputs", 10, f"repeated {FRONT}FunctionInput"),
            ("outputs", 11, f"repeated {FRONT}FunctionOutput"),
            ("user_allowlist", 12, "repeated string"),
            ("usage_quota", 13, "int32"),
        ],
        "UpdateFunctionResponse": [("function_id", 1, "string")],
        "GetFunctionRequest": [("function_id", 1, "string")],
        "GetFunctionResponse": [
            ("name", 1, "string"),
            ("description", 2, "string"),
            ("executor_type", 3, "string"),
            ("owner", 4, "string"),
            ("payload", 5, "bytes"),
            ("public", 6, "bool"),
            ("arguments", 7, f"repeated {FRONT}FunctionArgument"),
            ("inputs", 10, f"repeated {FRONT}FunctionInput"),
            ("outputs", 11, f"repeated {FRONT}FunctionOutput"),
            ("user_allowlist", 12, "repeated string"),
        ],
        "GetFunctionUsageStatsRequest": [("function_id", 1, "string")],
        "GetFunctionUsageStatsResponse": [("function_quota", 1, "int32"), ("current_usage", 2, "int32")],
        "DeleteFunctionRequest": [("function_id", 1, "string")],
        "DisableFunctionRequest": [("function_id", 1, "string")],
        "ListFunctionsRequest": [("user_id", 1, "string")],
        "ListFunctionsResponse": [
            ("registered_functions", 1, "repeated string"),
            ("allowed_functions", 2, "repeated string"),
        ],
        "DataMap": [("data_name", 1, "string"), ("data_id", 2, "string")],
        "CreateTaskRequest": [
            ("function_id", 1, "string"),
            ("function_arguments", 2, "string"),
            ("executor", 3, "string"),
            ("inputs_ownership", 10, f"repeated {FRONT}OwnerList"),
            ("outputs_ownership", 11, f"repeated {FRONT}OwnerList"),
        ],
        "CreateTaskResponse": [("task_id", 1, "string")],
        "GetTaskRequest": [("task_id", 1, "string")],
        "GetTaskResponse": [
            ("task_id", 1, "string"),
            ("creator", 2, "string"),
            ("function_id", 3, "string"),
            ("function_owner", 4, "string"),
            ("function_arguments", 5, "string"),
            ("inputs_ownership", 6, f"repeated {FRONT}OwnerList"),
            ("outputs_ownership", 7, f"repeated {FRONT}OwnerList"),
            ("participants", 8, "repeated string"),
            ("approved_users", 9, "repeated string"),
            ("assigned_inputs", 10, f"repeated {FRONT}DataMap"),
            ("assigned_outputs", 11, f"repeated {FRONT}DataMap"),
            ("status", 20, f"{COMMON}TaskStatus"),
            ("result", 21, f"{COMMON}TaskResult"),
        ],
        "AssignDataRequest": [
            ("task_id", 1, "string"),
            ("inputs", 2, f"repeated {FRONT}DataMap"),
            ("outputs", 3, f"repeated {FRONT}DataMap"),
        ],
        "ApproveTaskRequest": [("task_id", 1, "string")],
        "InvokeTaskRequest": [("task_id", 1, "string")],
        "CancelTaskRequest": [("task_id", 1, "string")],
        "QueryAuditLogsRequest": [("query", 1, "string"), ("limit", 2, "uint64")],
        "QueryAuditLogsResponse": [("logs", 1, f"repeated {COMMON}Entry")],
    },
}

# enum -> [(value name, number)], all in teaclave_common_proto.
ENUMS: dict[str, list[tuple[str, int]]] = {
    "TaskStatus": [
        ("Created", 0),
        ("DataAssigned", 1),
        ("Approved", 2),
        ("Staged", 3),
        ("Running", 4),
        ("Finished", 10),
        ("Canceled", 20),
        ("Failed", 99),
    ],
    "ExecutorStatus": [("Idle", 0), ("Executing", 1)],
    "ExecutorCommand": [("NoAction", 0), ("Stop", 1), ("NewTask", 2)],
}

# proto stem -> service -> [(rpc, request, response)], fully qualified.
SERVICES: dict[str, dict[str, list[tuple[str, str, str]]]] = {
    "teaclave_authentication_service": {
        "TeaclaveAuthenticationApi": [
            ("UserRegister", f"{AUTH}UserRegisterRequest", EMPTY),
            ("UserUpdate", f"{AUTH}UserUpdateRequest", EMPTY),
            ("UserLogin", f"{AUTH}UserLoginRequest", f"{AUTH}UserLoginResponse"),
            ("UserChangePassword", f"{AUTH}UserChangePasswordRequest", EMPTY),
            ("ResetUserPassword", f"{AUTH}ResetUserPasswordRequest", f"{AUTH}ResetUserPasswordResponse"),
            ("DeleteUser", f"{AUTH}DeleteUserRequest", EMPTY),
            ("ListUsers", f"{AUTH}ListUsersRequest", f"{AUTH}ListUsersResponse"),
        ],
        "TeaclaveAuthenticationInternal": [
            ("UserAuthenticate", f"{AUTH}UserAuthenticateRequest", f"{AUTH}UserAuthenticateResponse"),
        ],
    },
    "teaclave_frontend_service": {
        "TeaclaveFrontend": [
            ("RegisterInputFile", f"{FRONT}RegisterInputFileRequest", f"{FRONT}RegisterInputFileResponse"),
            ("RegisterOutputFile", f"{FRONT}RegisterOutputFileRequest", f"{FRONT}RegisterOutputFileResponse"),
            ("UpdateInputFile", f"{FRONT}UpdateInputFileRequest", f"{FRONT}UpdateInputFileResponse"),
            ("UpdateOutputFile", f"{FRONT}UpdateOutputFileRequest", f"{FRONT}UpdateOutputFileResponse"),
            (
                "RegisterFusionOutput",
                f"{FRONT}RegisterFusionOutputRequest",
                f"{FRONT}RegisterFusionOutputResponse",
            ),
            (
                "RegisterInputFromOutput",
                f"{FRONT}RegisterInputFromOutputRequest",
                f"{FRONT}RegisterInputFromOutputResponse",
            ),
            ("GetOutputFile", f"{FRONT}GetOutputFileRequest", f"{FRONT}GetOutputFileResponse"),
            ("GetInputFile", f"{FRONT}GetInputFileRequest", f"{FRONT}GetInputFileResponse"),
            ("RegisterFunction", f"{FRONT}RegisterFunctionRequest", f"{FRONT}RegisterFunctionResponse"),
            ("GetFunction", f"{FRONT}GetFunctionRequest", f"{FRONT}GetFunctionResponse"),
            (
                "GetFunctionUsageStats",
                f"{FRONT}GetFunctionUsageStatsRequest",
                f"{FRONT}GetFunctionUsageStatsResponse",
            ),
            ("UpdateFunction", f"{FRONT}UpdateFunctionRequest", f"{FRONT}UpdateFunctionResponse"),
            ("ListFunctions", f"{FRONT}ListFunctionsRequest", f"{FRONT}ListFunctionsResponse"),
            ("DeleteFunction", f"{FRONT}DeleteFunctionRequest", EMPTY),
            ("DisableFunction", f"{FRONT}DisableFunctionRequest", EMPTY),
            ("CreateTask", f"{FRONT}CreateTaskRequest", f"{FRONT}CreateTaskResponse"),
            ("GetTask", f"{FRONT}GetTaskRequest", f"{FRONT}GetTaskResponse"),
            ("AssignData", f"{FRONT}AssignDataRequest", EMPTY),
            ("ApproveTask", f"{FRONT}ApproveTaskRequest", EMPTY),
            ("InvokeTask", f"{FRONT}InvokeTaskRequest", EMPTY),
            ("CancelTask", f"{FRONT}CancelTaskRequest", EMPTY),
            ("QueryAuditLogs", f"{FRONT}QueryAuditLogsRequest", f"{FRONT}QueryAuditLogsResponse"),
        ],
    },
}

# HTTP/2 paths the spec (§1.1) and the SDK name verbatim.
KNOWN_PATHS: list[str] = [
    "/teaclave_authentication_service_proto.TeaclaveAuthenticationApi/UserLogin",
    "/teaclave_authentication_service_proto.TeaclaveAuthenticationApi/UserRegister",
    "/teaclave_authentication_service_proto.TeaclaveAuthenticationInternal/UserAuthenticate",
    "/teaclave_frontend_service_proto.TeaclaveFrontend/CreateTask",
    "/teaclave_frontend_service_proto.TeaclaveFrontend/GetTask",
    "/teaclave_frontend_service_proto.TeaclaveFrontend/RegisterFunction",
    "/teaclave_frontend_service_proto.TeaclaveFrontend/QueryAuditLogs",
]

EMPTY_RETURNING: list[str] = [
    "DeleteFunction",
    "DisableFunction",
    "AssignData",
    "ApproveTask",
    "InvokeTask",
    "CancelTask",
]

_SCALAR_NAMES: dict[int, str] = {
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_SINT32: "sint32",
    FieldDescriptor.TYPE_SINT64: "sint64",
    FieldDescriptor.TYPE_FIXED32: "fixed32",
    FieldDescriptor.TYPE_FIXED64: "fixed64",
    FieldDescriptor.TYPE_SFIXED32: "sfixed32",
    FieldDescriptor.TYPE_SFIXED64: "sfixed64",
    FieldDescriptor.TYPE_FLOAT: "float",
    FieldDescriptor.TYPE_DOUBLE: "double",
}


def type_text(field: FieldDescriptor) -> str:
    """Render a field's type the way it is written in a .proto file (fully qualified)."""
    if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
        key = field.message_type.fields_by_name["key"]
        value = field.message_type.fields_by_name["value"]
        return f"map<{type_text(key)}, {type_text(value)}>"
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        base = field.message_type.full_name
    elif field.type == FieldDescriptor.TYPE_ENUM:
        base = field.enum_type.full_name
    else:
        base = _SCALAR_NAMES[field.type]
    return f"repeated {base}" if field.is_repeated else base


def pb2(stem: str) -> ModuleType:
    return importlib.import_module(f"{GENERATED_PACKAGE}.{stem}_pb2")


def pb2_grpc(stem: str) -> ModuleType:
    return importlib.import_module(f"{GENERATED_PACKAGE}.{stem}_pb2_grpc")


def file_descriptor(stem: str) -> FileDescriptor:
    descriptor: FileDescriptor = pb2(stem).DESCRIPTOR
    return descriptor


def file_proto(stem: str) -> descriptor_pb2.FileDescriptorProto:
    return descriptor_pb2.FileDescriptorProto.FromString(file_descriptor(stem).serialized_pb)


def message_descriptor(stem: str, message: str) -> Descriptor:
    return file_descriptor(stem).message_types_by_name[message]


def service_descriptor(stem: str, service: str) -> ServiceDescriptor:
    return file_descriptor(stem).services_by_name[service]


# Kettle's additions to Teaclave's messages: (stem, message) -> fields, each numbered from
# KETTLE_FIELD_BASE on, so they cannot collide with a field Teaclave adds; Teaclave's clients
# skip them as unknown fields (checked below with a parser that knows only the spec's fields).
KETTLE_FIELD_BASE = 100
KETTLE_EXTENSIONS: dict[tuple[str, str], list[tuple[str, int, str]]] = {
    ("teaclave_common", "TaskOutputs"): [("sandbox_layers", 100, "repeated string"), ("receipt", 101, "bytes")],
    ("teaclave_common", "TaskFailure"): [("sandbox_layers", 100, "repeated string"), ("receipt", 101, "bytes")],
    ("teaclave_frontend_service", "GetTaskResponse"): [
        ("function_digest", 100, "string"),
        ("task_digest", 101, "string"),
        ("task_manifest", 102, "string"),
        ("approvals", 103, f"repeated {FRONT}TaskApproval"),
        ("refusals", 104, f"repeated {FRONT}TaskRefusal"),
    ],
    **{("teaclave_frontend_service", request): [("s3_credentials", 100, f"{FRONT}ObjectStoreCredentials")]
       for request in ("RegisterInputFileRequest", "RegisterOutputFileRequest", "UpdateInputFileRequest",
                       "UpdateOutputFileRequest")},
    ("teaclave_frontend_service", "ApproveTaskRequest"): [
        ("expect_digest", 100, "string"),
        ("valid_for_secs", 101, "uint64"),
    ],
}
# Kettle's own messages in Teaclave's packages (used only by its fields above): stem -> message -> fields.
KETTLE_MESSAGES: dict[str, dict[str, list[tuple[str, int, str]]]] = {
    "teaclave_frontend_service": {
        "TaskApproval": [
            ("user_id", 1, "string"),
            ("task_digest", 2, "string"),
            ("approved_at", 3, "uint64"),
            ("expires_at", 4, "uint64"),
        ],
        "TaskRefusal": [
            ("user_id", 1, "string"),
            ("refused_at", 2, "uint64"),
            ("task_digest", 3, "string"),
            ("reason", 4, "string"),
        ],
        "ObjectStoreCredentials": [
            ("access_key_id", 1, "string"),
            ("secret_access_key", 2, "string"),
            ("session_token", 3, "string"),
            ("endpoint_url", 4, "string"),
            ("region", 5, "string"),
        ],
    },
}


# ---------------------------------------------------------------------------
# (a) the committed generated code is exactly what the generator produces


def _listing(directory: Path) -> dict[str, Path]:
    """Relative path -> file, ignoring bytecode caches (they are not generated)."""
    return {
        path.relative_to(directory).as_posix(): path
        for path in sorted(directory.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    out = tmp_path / "generated"
    # Run from an unrelated cwd: the output must not depend on where make runs.
    subprocess.run([sys.executable, str(GEN_SCRIPT), "--out", str(out)], cwd=tmp_path, check=True)
    fresh = _listing(out)
    committed = _listing(GENERATED_DIR)
    assert sorted(fresh) == sorted(committed), (
        "generated code is stale: run `make proto` "
        f"(missing: {sorted(set(fresh) - set(committed))}, extra: {sorted(set(committed) - set(fresh))})"
    )
    stale = [name for name in sorted(fresh) if fresh[name].read_bytes() != committed[name].read_bytes()]
    assert not stale, f"generated code is stale: run `make proto` (differs: {stale})"


# ---------------------------------------------------------------------------
# (b) the wire contract


@pytest.mark.parametrize("stem", sorted(PROTO_FILES))
def test_modules_import_from_package(stem: str) -> None:
    messages = pb2(stem)
    stubs = pb2_grpc(stem)
    assert messages.__name__ == f"{GENERATED_PACKAGE}.{stem}_pb2"
    assert stubs.__name__ == f"{GENERATED_PACKAGE}.{stem}_pb2_grpc"
    for service in SERVICES.get(stem, {}):
        for attribute in (f"{service}Stub", f"{service}Servicer", f"add_{service}Servicer_to_server"):
            assert hasattr(stubs, attribute), f"{stubs.__name__} lacks {attribute}"


@pytest.mark.parametrize(("stem", "package", "dependencies"), [(s, *v) for s, v in sorted(PROTO_FILES.items())])
def test_file_header(stem: str, package: str, dependencies: list[str]) -> None:
    proto = file_proto(stem)
    assert proto.name == f"{stem}.proto"
    assert proto.syntax == "proto3"
    assert proto.package == package
    assert sorted(proto.dependency) == sorted(dependencies)


@pytest.mark.parametrize("stem", sorted(MESSAGES))
def test_no_extra_or_missing_messages(stem: str) -> None:
    expected = [*MESSAGES[stem], *KETTLE_MESSAGES.get(stem, {})]
    assert sorted(file_descriptor(stem).message_types_by_name) == sorted(expected)


@pytest.mark.parametrize(
    ("stem", "message"),
    [(stem, message) for stem, messages in KETTLE_MESSAGES.items() for message in messages],
)
def test_kettle_messages(stem: str, message: str) -> None:
    fields = message_descriptor(stem, message).fields
    assert sorted((f.name, f.number, type_text(f)) for f in fields) == sorted(KETTLE_MESSAGES[stem][message])


@pytest.mark.parametrize(
    ("stem", "message"),
    [(stem, message) for stem, messages in MESSAGES.items() for message in messages],
)
def test_no_extra_or_missing_fields(stem: str, message: str) -> None:
    actual = sorted(field.name for field in message_descriptor(stem, message).fields)
    expected = MESSAGES[stem][message] + KETTLE_EXTENSIONS.get((stem, message), [])
    assert actual == sorted(name for name, _, _ in expected)


@pytest.mark.parametrize(("stem", "message"), sorted(KETTLE_EXTENSIONS))
def test_kettle_extensions(stem: str, message: str) -> None:
    for name, number, type_ in KETTLE_EXTENSIONS[stem, message]:
        descriptor = message_descriptor(stem, message).fields_by_name[name]
        assert (descriptor.number, type_text(descriptor)) == (number, type_)
        assert number >= KETTLE_FIELD_BASE


def _teaclave_only_common() -> ModuleType:
    """teaclave_common as the spec's tables define it (no Kettle fields): what a Teaclave client parses with."""
    proto = descriptor_pb2.FileDescriptorProto.FromString(file_descriptor("teaclave_common").serialized_pb)
    proto.name = "teaclave_only/teaclave_common.proto"
    proto.package = "teaclave_only"
    for message in proto.message_type:
        kept = [f for f in message.field if f.number < KETTLE_FIELD_BASE]
        del message.field[:]
        message.field.extend(kept)
        for field in [*message.field, *(f for nested in message.nested_type for f in nested.field)]:
            if field.type_name.startswith(".teaclave_common_proto."):
                field.type_name = field.type_name.replace(".teaclave_common_proto.", ".teaclave_only.")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    module = ModuleType("teaclave_only")
    for name in ("TaskResult", "TaskOutputs", "TaskFailure"):
        setattr(module, name, message_factory.GetMessageClass(pool.FindMessageTypeByName(f"teaclave_only.{name}")))
    return module


def test_teaclave_clients_read_results_with_kettle_fields() -> None:
    ours = pb2("teaclave_common")
    theirs = _teaclave_only_common()
    ok = ours.TaskResult(Ok=ours.TaskOutputs(return_value=b"42", tags_map={"out": b"t" * 16}, log=["line"],
                                             sandbox_layers=["seccomp", "landlock"], receipt=b"{}" * 2000))
    parsed = theirs.TaskResult.FromString(ok.SerializeToString())
    assert (parsed.Ok.return_value, dict(parsed.Ok.tags_map), list(parsed.Ok.log)) == (b"42", {"out": b"t" * 16}, ["line"])
    assert not hasattr(parsed.Ok, "sandbox_layers") and not hasattr(parsed.Ok, "receipt")
    err = ours.TaskResult(Err=ours.TaskFailure(reason="CPUTimeExceeded", sandbox_layers=["seccomp"], receipt=b"{}"))
    assert theirs.TaskResult.FromString(err.SerializeToString()).Err.reason == "CPUTimeExceeded"
    # and the other way: a Teaclave result reads back with no layers
    plain = theirs.TaskResult(Err=theirs.TaskFailure(reason="boom")).SerializeToString()
    assert list(ours.TaskResult.FromString(plain).Err.sandbox_layers) == []


@pytest.mark.parametrize(
    ("stem", "message", "field", "number", "type_"),
    [
        pytest.param(stem, message, field, number, type_, id=f"{message}.{field}")
        for stem, messages in MESSAGES.items()
        for message, fields in messages.items()
        for field, number, type_ in fields
    ],
)
def test_field(stem: str, message: str, field: str, number: int, type_: str) -> None:
    descriptor = message_descriptor(stem, message).fields_by_name[field]
    assert descriptor.number == number
    assert type_text(descriptor) == type_
    # proto3 `optional` would change presence semantics (and MessageToDict
    # output); the spec declares none. Oneof members and messages have presence.
    if descriptor.containing_oneof is None and descriptor.type != FieldDescriptor.TYPE_MESSAGE:
        assert not descriptor.has_presence


def test_task_result_oneof() -> None:
    task_result = message_descriptor("teaclave_common", "TaskResult")
    assert sorted(task_result.oneofs_by_name) == ["result"]
    members = [(f.name, f.number, f.message_type.full_name) for f in task_result.oneofs_by_name["result"].fields]
    assert members == [("Ok", 1, f"{COMMON}TaskOutputs"), ("Err", 2, f"{COMMON}TaskFailure")]
    # What the SDK does with it: result.Ok.return_value / result.Err.reason.
    module = pb2("teaclave_common")
    ok = module.TaskResult(Ok=module.TaskOutputs(return_value=b"42"))
    assert ok.WhichOneof("result") == "Ok" and ok.Ok.return_value == b"42"
    err = module.TaskResult(Err=module.TaskFailure(reason="boom"))
    assert err.WhichOneof("result") == "Err" and err.Err.reason == "boom"
    assert module.TaskResult().WhichOneof("result") is None


def test_no_extra_or_missing_enums() -> None:
    for stem in PROTO_FILES:
        expected = sorted(ENUMS) if stem == "teaclave_common" else []
        assert sorted(file_descriptor(stem).enum_types_by_name) == expected, stem


@pytest.mark.parametrize(
    ("enum", "name", "number"),
    [pytest.param(enum, name, number, id=f"{enum}.{name}") for enum, values in ENUMS.items() for name, number in values],
)
def test_enum_value(enum: str, name: str, number: int) -> None:
    descriptor: EnumDescriptor = file_descriptor("teaclave_common").enum_types_by_name[enum]
    assert descriptor.values_by_name[name].number == number
    assert getattr(pb2("teaclave_common"), name) == number


@pytest.mark.parametrize("enum", sorted(ENUMS))
def test_enum_has_exactly_spec_values(enum: str) -> None:
    descriptor = file_descriptor("teaclave_common").enum_types_by_name[enum]
    assert [(v.name, v.number) for v in descriptor.values] == ENUMS[enum]


@pytest.mark.parametrize("stem", sorted(PROTO_FILES))
def test_no_extra_or_missing_services(stem: str) -> None:
    assert sorted(file_descriptor(stem).services_by_name) == sorted(SERVICES.get(stem, {}))


@pytest.mark.parametrize(
    ("stem", "service"),
    [(stem, service) for stem, services in SERVICES.items() for service in services],
)
def test_no_extra_or_missing_rpcs(stem: str, service: str) -> None:
    actual = sorted(method.name for method in service_descriptor(stem, service).methods)
    assert actual == sorted(rpc for rpc, _, _ in SERVICES[stem][service])


@pytest.mark.parametrize(
    ("stem", "service", "rpc", "request_type", "response_type"),
    [
        pytest.param(stem, service, rpc, request_type, response_type, id=f"{service}.{rpc}")
        for stem, services in SERVICES.items()
        for service, rpcs in services.items()
        for rpc, request_type, response_type in rpcs
    ],
)
def test_rpc(stem: str, service: str, rpc: str, request_type: str, response_type: str) -> None:
    method = service_descriptor(stem, service).methods_by_name[rpc]
    assert method.input_type.full_name == request_type
    assert method.output_type.full_name == response_type
    # All Teaclave and Kettle RPCs are unary.
    assert not method.client_streaming and not method.server_streaming


@pytest.mark.parametrize("rpc", EMPTY_RETURNING)
def test_frontend_rpcs_returning_empty(rpc: str) -> None:
    method = service_descriptor("teaclave_frontend_service", "TeaclaveFrontend").methods_by_name[rpc]
    assert method.output_type.full_name == EMPTY


class _RecordingChannel:
    """Stands in for a grpc.Channel and records the method paths a stub binds."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def unary_unary(self, path: str, *args: Any, **kwargs: Any) -> object:
        self.paths.append(path)
        return object()


def _stub_paths(stem: str, service: str) -> list[str]:
    channel = _RecordingChannel()
    getattr(pb2_grpc(stem), f"{service}Stub")(channel)
    return channel.paths


@pytest.mark.parametrize(
    ("stem", "service"),
    [(stem, service) for stem, services in SERVICES.items() for service in services],
)
def test_stub_method_paths(stem: str, service: str) -> None:
    """The paths the generated client stubs call are /<package>.<Service>/<Rpc>."""
    package = PROTO_FILES[stem][0]
    expected = sorted(f"/{package}.{service}/{rpc}" for rpc, _, _ in SERVICES[stem][service])
    assert sorted(_stub_paths(stem, service)) == expected


@pytest.mark.parametrize("path", KNOWN_PATHS)
def test_known_path_exists(path: str) -> None:
    all_paths = {p for stem, services in SERVICES.items() for service in services for p in _stub_paths(stem, service)}
    assert path in all_paths
