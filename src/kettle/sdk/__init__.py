"""Kettle's Python SDK: attested channels to the platform and clients for its APIs.

Every client verifies the service it talks to before its first request: chain to
the pinned AS root only, the report's signature, report data bound to the TLS
key, the measurement against auditor-signed enclave info, report status and age.
With ``verify_hardware=True`` it also verifies the service's TEE evidence against
AMD's and Intel's roots itself, for a party that does not trust the operator.
"""

from ..model.records import TaskStatus
from .attested import AttestedEndpoint, ClientTrust, HardwareTrust, verify_endpoint
from .authentication import AsyncAuthenticationClient, AuthenticationClient
from .builtins import BuiltinArgument, BuiltinSpec, builtin_function, builtin_functions
from .files import RAW_CMAC, FileCryptoError, FileKey, decrypt_file, encrypt_file, file_cmac
from .frontend import (
    AsyncFrontendClient,
    AuditEntry,
    DataMap,
    FileInfo,
    FrontendClient,
    FunctionArgument,
    FunctionInfo,
    FunctionInput,
    FunctionList,
    FunctionOutput,
    FunctionUsage,
    OwnerList,
    S3Credentials,
    TaskCanceled,
    TaskError,
    TaskFailed,
    TaskFailure,
    TaskApproval,
    TaskRefusal,
    TaskInfo,
    TaskNotFinished,
    TaskOutputs,
    TaskWaitTimeout,
)
from .objects import AsyncFunction, AsyncTask, Function, Task
from .receipts import examine_receipt, verify_receipt
from .trail import Trail, TrailVerdict, verify_trail

__all__ = [
    "AsyncAuthenticationClient",
    "AsyncFrontendClient",
    "AsyncFunction",
    "AsyncTask",
    "AttestedEndpoint",
    "AuditEntry",
    "AuthenticationClient",
    "BuiltinArgument",
    "BuiltinSpec",
    "ClientTrust",
    "HardwareTrust",
    "DataMap",
    "FileCryptoError",
    "FileInfo",
    "FileKey",
    "FrontendClient",
    "Function",
    "FunctionArgument",
    "FunctionInfo",
    "FunctionInput",
    "FunctionList",
    "FunctionOutput",
    "FunctionUsage",
    "OwnerList",
    "RAW_CMAC",
    "S3Credentials",
    "Task",
    "TaskCanceled",
    "TaskError",
    "TaskFailed",
    "TaskFailure",
    "TaskApproval",
    "TaskRefusal",
    "TaskInfo",
    "TaskNotFinished",
    "TaskOutputs",
    "TaskStatus",
    "TaskWaitTimeout",
    "Trail",
    "TrailVerdict",
    "builtin_function",
    "builtin_functions",
    "decrypt_file",
    "encrypt_file",
    "examine_receipt",
    "file_cmac",
    "verify_endpoint",
    "verify_receipt",
    "verify_trail",
]
