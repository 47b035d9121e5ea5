from . import teaclave_common_pb2 as _teaclave_common_pb2
from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterInputFileRequest(_message.Message):
    __slots__ = ("url", "cmac", "crypto_info", "s3_credentials")
    URL_FIELD_NUMBER: _ClassVar[int]
    CMAC_FIELD_NUMBER: _ClassVar[int]
    CRYPTO_INFO_FIELD_NUMBER: _ClassVar[int]
    S3_CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    url: str
    cmac: bytes
    crypto_info: _teaclave_common_pb2.FileCryptoInfo
    s3_credentials: ObjectStoreCredentials
    def __init__(self, url: _Optional[str] = ..., cmac: _Optional[bytes] = ..., crypto_info: _Optional[_Union[_teaclave_common_pb2.FileCryptoInfo, _Mapping]] = ..., s3_credentials: _Optional[_Union[ObjectStoreCredentials, _Mapping]] = ...) -> None: ...

class ObjectStoreCredentials(_message.Message):
    __slots__ = ("access_key_id", "secret_access_key", "session_token", "endpoint_url", "region")
    ACCESS_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SECRET_ACCESS_KEY_FIELD_NUMBER: _ClassVar[int]
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_URL_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    access_key_id: str
    secret_access_key: str
    session_token: str
    endpoint_url: str
    region: str
    def __init__(self, access_key_id: _Optional[str] = ..., secret_access_key: _Optional[str] = ..., session_token: _Optional[str] = ..., endpoint_url: _Optional[str] = ..., region: _Optional[str] = ...) -> None: ...

class RegisterInputFileResponse(_message.Message):
    __slots__ = ("data_id",)
    DATA_ID_FIELD_NUMBER: _ClassVar[int]
    data_id: str
    def __init__(self, data_id: _Optional[str] = ...) -> None: ...

class UpdateInputFileRequest(_message.Message):
    __slots__ = ("data_id", "url", "s3_credentials")
    DATA_ID_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    S3_CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    data_id: str
    url: str
    s3_credentials: ObjectStoreCredentials
    def __init__(self, data_id: _Optional[str] = ..., url: _Optional[str] = ..., s3_credentials: _Optional[_Union[ObjectStoreCredentials, _Mapping]] = ...) -> None: ...

class UpdateInputFileResponse(_message.Message):
    __slots__ = ("data_id",)
    DATA_ID_FIELD_NUMBER: _ClassVar[int]
    data_id: str
    def __init__(self, data_id: _Optional[str] = ...) -> None: ...

class RegisterOutputFileRequest(_message.Message):
    __slots__ = ("url", "crypto_info", "s3_credentials")
    URL_FIELD_NUMBER: _ClassVar[int]
    CRYPTO_INFO_FIELD_NUMBER: _ClassVar[int]
    S3_CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    url: str
    crypto_info: _teaclave_common_pb2.FileCryptoInfo
    s3_credentials: ObjectStoreCredentials
    def __init__(self, url: _Optional[str] = ..., crypto_info: _Optional[_Union[_teaclave_common_pb2.FileCryptoInfo, _Mapping]] = ..., s3_credentials: _Optional[_Union[ObjectStoreCredentials, _Mapping]] = ...) -> None: ...

class RegisterOutputFileResponse(_message.Message):
    __slots__ = ("data_id",)
    DATA_ID_FIELD_NUMBER: _ClassVar[int]
    data_id: str
    def __init__(self, data_id: _Optional[str] = ...) -> None: ...

class UpdateOutputFileRequest(_message.Message):
    __slots__ = ("data_id", "url", "s3_credentials")
    DATA_ID_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    S3_CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    data_id: str
    url: str
    s3_credentials: ObjectStoreCredentials
    def __init__(self, data_id: _Optional[str] = ..., url: _Optional[str] = ..., s3_credentials: _Optional[_Union[ObjectStoreCredentials, _Mapping]] = ...) -> None: ...

class UpdateOutputFileResponse(_message.Message):
    __slots__ = ("data_id",)
    DATA_ID_FIELD_NUMBER: _ClassVar[int]
    data_id: str
    def __init__(self, data_id: _Optional[str] = ...) -> None: ...

class RegisterFusionOutputRequest(_message.Message):
    __slots__ = ("owner_list",)
    OWNER_LIST_FIELD_NUMBER: _ClassVar[int]
    owner_list: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, owner_list: _Optional[_Iterable[str]] = ...) -> None: ...

class RegisterFusionOutputResponse(_message.Message):
    __slots__ = ("data_id",)
    DATA_ID_FIELD_NUMBER: _ClassVar[int]
    data_id: str
    def __init__(self, data_id: _Optional[str] = ...) -> None: ...

class RegisterInputFromOutputRequest(_message.Message):
    __slots__ = ("data_id",)
    DATA_ID_FIELD_NUMBER: _ClassVar[int]
    data_id: str
    def __init__(self, data_id: _Optional[str] = ...) -> None: ...

class RegisterInputFromOutputResponse(_message.Message):
    __slots__ = ("data_id",)
    DATA_ID_FIELD_NUMBER: _ClassVar[int]
    data_id: str
    def __init__(self, data_id: _Optional[str] = ...) -> None: ...

class GetOutputFileRequest(_message.Message):
    __slots__ = ("data_id",)
    DATA_ID_FIELD_NUMBER: _ClassVar[int]
    data_id: str
    def __init__(self, data_id: _Optional[str] = ...) -> None: ...

class GetOutputFileResponse(_message.Message):
    __slots__ = ("owner", "cmac")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    CMAC_FIELD_NUMBER: _ClassVar[int]
    owner: _containers.RepeatedScalarFieldContainer[str]
    cmac: bytes
    def __init__(self, owner: _Optional[_Iterable[str]] = ..., cmac: _Optional[bytes] = ...) -> None: ...

class GetInputFileRequest(_message.Message):
    __slots__ = ("data_id",)
    DATA_ID_FIELD_NUMBER: _ClassVar[int]
    data_id: str
    def __init__(self, data_id: _Optional[str] = ...) -> None: ...

class GetInputFileResponse(_message.Message):
    __slots__ = ("owner", "cmac")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    CMAC_FIELD_NUMBER: _ClassVar[int]
    owner: _containers.RepeatedScalarFieldContainer[str]
    cmac: bytes
    def __init__(self, owner: _Optional[_Iterable[str]] = ..., cmac: _Optional[bytes] = ...) -> None: ...

class FunctionInput(_message.Message):
    __slots__ = ("name", "description", "optional")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    OPTIONAL_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    optional: bool
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., optional: _Optional[bool] = ...) -> None: ...

class FunctionOutput(_message.Message):
    __slots__ = ("name", "description", "optional")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    OPTIONAL_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    optional: bool
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., optional: _Optional[bool] = ...) -> None: ...

class FunctionArgument(_message.Message):
    __slots__ = ("key", "default_value", "allow_overwrite")
    KEY_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VALUE_FIELD_NUMBER: _ClassVar[int]
    ALLOW_OVERWRITE_FIELD_NUMBER: _ClassVar[int]
    key: str
    default_value: str
    allow_overwrite: bool
    def __init__(self, key: _Optional[str] = ..., default_value: _Optional[str] = ..., allow_overwrite: _Optional[bool] = ...) -> None: ...

class OwnerList(_message.Message):
    __slots__ = ("data_name", "uids")
    DATA_NAME_FIELD_NUMBER: _ClassVar[int]
    UIDS_FIELD_NUMBER: _ClassVar[int]
    data_name: str
    uids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, data_name: _Optional[str] = ..., uids: _Optional[_Iterable[str]] = ...) -> None: ...

class RegisterFunctionRequest(_message.Message):
    __slots__ = ("name", "description", "executor_type", "public", "payload", "arguments", "inputs", "outputs", "user_allowlist", "usage_quota")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_TYPE_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    USER_ALLOWLIST_FIELD_NUMBER: _ClassVar[int]
    USAGE_QUOTA_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    executor_type: str
    public: bool
    payload: bytes
    arguments: _containers.RepeatedCompositeFieldContainer[FunctionArgument]
    inputs: _containers.RepeatedCompositeFieldContainer[FunctionInput]
    outputs: _containers.RepeatedCompositeFieldContainer[FunctionOutput]
    user_allowlist: _containers.RepeatedScalarFieldContainer[str]
    usage_quota: int
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., executor_type: _Optional[str] = ..., public: _Optional[bool] = ..., payload: _Optional[bytes] = ..., arguments: _Optional[_Iterable[_Union[FunctionArgument, _Mapping]]] = ..., inputs: _Optional[_Iterable[_Union[FunctionInput, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[FunctionOutput, _Mapping]]] = ..., user_allowlist: _Optional[_Iterable[str]] = ..., usage_quota: _Optional[int] = ...) -> None: ...

class RegisterFunctionResponse(_message.Message):
    __slots__ = ("function_id",)
    FUNCTION_ID_FIELD_NUMBER: _ClassVar[int]
    function_id: str
    def __init__(self, function_id: _Optional[str] = ...) -> None: ...

class UpdateFunctionRequest(_message.Message):
    __slots__ = ("function_id", "name", "description", "executor_type", "public", "payload", "arguments", "inputs", "outputs", "user_allowlist", "usage_quota")
    FUNCTION_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_TYPE_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    USER_ALLOWLIST_FIELD_NUMBER: _ClassVar[int]
    USAGE_QUOTA_FIELD_NUMBER: _ClassVar[int]
    function_id: str
    name: str
    description: str
    executor_type: str
    public: bool
    payload: bytes
    arguments: _containers.RepeatedCompositeFieldContainer[FunctionArgument]
    inputs: _containers.RepeatedCompositeFieldContainer[FunctionInput]
    outputs: _containers.RepeatedCompositeFieldContainer[FunctionOutput]
    user_allowlist: _containers.RepeatedScalarFieldContainer[str]
    usage_quota: int
    def __init__(self, function_id: _Optional[str] = ..., name: _Optional[str] = ..., description: _Optional[str] = ..., executor_type: _Optional[str] = ..., public: _Optional[bool] = ..., payload: _Optional[bytes] = ..., arguments: _Optional[_Iterable[_Union[FunctionArgument, _Mapping]]] = ..., inputs: _Optional[_Iterable[_Union[FunctionInput, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[FunctionOutput, _Mapping]]] = ..., user_allowlist: _Optional[_Iterable[str]] = ..., usage_quota: _Optional[int] = ...) -> None: ...

class UpdateFunctionResponse(_message.Message):
    __slots__ = ("function_id",)
    FUNCTION_ID_FIELD_NUMBER: _ClassVar[int]
    function_id: str
    def __init__(self, function_id: _Optional[str] = ...) -> None: ...

class GetFunctionRequest(_message.Message):
    __slots__ = ("function_id",)
    FUNCTION_ID_FIELD_NUMBER: _ClassVar[int]
    function_id: str
    def __init__(self, function_id: _Optional[str] = ...) -> None: ...

class GetFunctionResponse(_message.Message):
    __slots__ = ("name", "description", "executor_type", "owner", "payload", "public", "arguments", "inputs", "outputs", "user_allowlist")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_TYPE_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    USER_ALLOWLIST_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    executor_type: str
    owner: str
    payload: bytes
    public: bool
    arguments: _containers.RepeatedCompositeFieldContainer[FunctionArgument]
    inputs: _containers.RepeatedCompositeFieldContainer[FunctionInput]
    outputs: _containers.RepeatedCompositeFieldContainer[FunctionOutput]
    user_allowlist: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., executor_type: _Optional[str] = ..., owner: _Optional[str] = ..., payload: _Optional[bytes] = ..., public: _Optional[bool] = ..., arguments: _Optional[_Iterable[_Union[FunctionArgument, _Mapping]]] = ..., inputs: _Optional[_Iterable[_Union[FunctionInput, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[FunctionOutput, _Mapping]]] = ..., user_allowlist: _Optional[_Iterable[str]] = ...) -> None: ...

class GetFunctionUsageStatsRequest(_message.Message):
    __slots__ = ("function_id",)
    FUNCTION_ID_FIELD_NUMBER: _ClassVar[int]
    function_id: str
    def __init__(self, function_id: _Optional[str] = ...) -> None: ...

class GetFunctionUsageStatsResponse(_message.Message):
    __slots__ = ("function_quota", "current_usage")
    FUNCTION_QUOTA_FIELD_NUMBER: _ClassVar[int]
    CURRENT_USAGE_FIELD_NUMBER: _ClassVar[int]
    function_quota: int
    current_usage: int
    def __init__(self, function_quota: _Optional[int] = ..., current_usage: _Optional[int] = ...) -> None: ...

class DeleteFunctionRequest(_message.Message):
    __slots__ = ("function_id",)
    FUNCTION_ID_FIELD_NUMBER: _ClassVar[int]
    function_id: str
    def __init__(self, function_id: _Optional[str] = ...) -> None: ...

class DisableFunctionRequest(_message.Message):
    __slots__ = ("function_id",)
    FUNCTION_ID_FIELD_NUMBER: _ClassVar[int]
    function_id: str
    def __init__(self, function_id: _Optional[str] = ...) -> None: ...

class ListFunctionsRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class ListFunctionsResponse(_message.Message):
    __slots__ = ("registered_functions", "allowed_functions")
    REGISTERED_FUNCTIONS_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_FUNCTIONS_FIELD_NUMBER: _ClassVar[int]
    registered_functions: _containers.RepeatedScalarFieldContainer[str]
    allowed_functions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, registered_functions: _Optional[_Iterable[str]] = ..., allowed_functions: _Optional[_Iterable[str]] = ...) -> None: ...

class DataMap(_message.Message):
    __slots__ = ("data_name", "data_id")
    DATA_NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_ID_FIELD_NUMBER: _ClassVar[int]
    data_name: str
    data_id: str
    def __init__(self, data_name: _Optional[str] = ..., data_id: _Optional[str] = ...) -> None: ...

class CreateTaskRequest(_message.Message):
    __slots__ = ("function_id", "function_arguments", "executor", "inputs_ownership", "outputs_ownership")
    FUNCTION_ID_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    INPUTS_OWNERSHIP_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_OWNERSHIP_FIELD_NUMBER: _ClassVar[int]
    function_id: str
    function_arguments: str
    executor: str
    inputs_ownership: _containers.RepeatedCompositeFieldContainer[OwnerList]
    outputs_ownership: _containers.RepeatedCompositeFieldContainer[OwnerList]
    def __init__(self, function_id: _Optional[str] = ..., function_arguments: _Optional[str] = ..., executor: _Optional[str] = ..., inputs_ownership: _Optional[_Iterable[_Union[OwnerList, _Mapping]]] = ..., outputs_ownership: _Optional[_Iterable[_Union[OwnerList, _Mapping]]] = ...) -> None: ...

class CreateTaskResponse(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class GetTaskRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class GetTaskResponse(_message.Message):
    __slots__ = ("task_id", "creator", "function_id", "function_owner", "function_arguments", "inputs_ownership", "outputs_ownership", "participants", "approved_users", "assigned_inputs", "assigned_outputs", "status", "result", "function_digest", "task_digest", "task_manifest", "approvals", "refusals")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    CREATOR_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_ID_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_OWNER_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    INPUTS_OWNERSHIP_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_OWNERSHIP_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    APPROVED_USERS_FIELD_NUMBER: _ClassVar[int]
    ASSIGNED_INPUTS_FIELD_NUMBER: _ClassVar[int]
    ASSIGNED_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_DIGEST_FIELD_NUMBER: _ClassVar[int]
    TASK_DIGEST_FIELD_NUMBER: _ClassVar[int]
    TASK_MANIFEST_FIELD_NUMBER: _ClassVar[int]
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    REFUSALS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    creator: str
    function_id: str
    function_owner: str
    function_arguments: str
    inputs_ownership: _containers.RepeatedCompositeFieldContainer[OwnerList]
    outputs_ownership: _containers.RepeatedCompositeFieldContainer[OwnerList]
    participants: _containers.RepeatedScalarFieldContainer[str]
    approved_users: _containers.RepeatedScalarFieldContainer[str]
    assigned_inputs: _containers.RepeatedCompositeFieldContainer[DataMap]
    assigned_outputs: _containers.RepeatedCompositeFieldContainer[DataMap]
    status: _teaclave_common_pb2.TaskStatus
    result: _teaclave_common_pb2.TaskResult
    function_digest: str
    task_digest: str
    task_manifest: str
    approvals: _containers.RepeatedCompositeFieldContainer[TaskApproval]
    refusals: _containers.RepeatedCompositeFieldContainer[TaskRefusal]
    def __init__(self, task_id: _Optional[str] = ..., creator: _Optional[str] = ..., function_id: _Optional[str] = ..., function_owner: _Optional[str] = ..., function_arguments: _Optional[str] = ..., inputs_ownership: _Optional[_Iterable[_Union[OwnerList, _Mapping]]] = ..., outputs_ownership: _Optional[_Iterable[_Union[OwnerList, _Mapping]]] = ..., participants: _Optional[_Iterable[str]] = ..., approved_users: _Optional[_Iterable[str]] = ..., assigned_inputs: _Optional[_Iterable[_Union[DataMap, _Mapping]]] = ..., assigned_outputs: _Optional[_Iterable[_Union[DataMap, _Mapping]]] = ..., status: _Optional[_Union[_teaclave_common_pb2.TaskStatus, str]] = ..., result: _Optional[_Union[_teaclave_common_pb2.TaskResult, _Mapping]] = ..., function_digest: _Optional[str] = ..., task_digest: _Optional[str] = ..., task_manifest: _Optional[str] = ..., approvals: _Optional[_Iterable[_Union[TaskApproval, _Mapping]]] = ..., refusals: _Optional[_Iterable[_Union[TaskRefusal, _Mapping]]] = ...) -> None: ...

class TaskApproval(_message.Message):
    __slots__ = ("user_id", "task_digest", "approved_at", "expires_at")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_DIGEST_FIELD_NUMBER: _ClassVar[int]
    APPROVED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    task_digest: str
    approved_at: int
    expires_at: int
    def __init__(self, user_id: _Optional[str] = ..., task_digest: _Optional[str] = ..., approved_at: _Optional[int] = ..., expires_at: _Optional[int] = ...) -> None: ...

class TaskRefusal(_message.Message):
    __slots__ = ("user_id", "refused_at", "task_digest", "reason")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    REFUSED_AT_FIELD_NUMBER: _ClassVar[int]
    TASK_DIGEST_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    refused_at: int
    task_digest: str
    reason: str
    def __init__(self, user_id: _Optional[str] = ..., refused_at: _Optional[int] = ..., task_digest: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class AssignDataRequest(_message.Message):
    __slots__ = ("task_id", "inputs", "outputs")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    inputs: _containers.RepeatedCompositeFieldContainer[DataMap]
    outputs: _containers.RepeatedCompositeFieldContainer[DataMap]
    def __init__(self, task_id: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[DataMap, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[DataMap, _Mapping]]] = ...) -> None: ...

class ApproveTaskRequest(_message.Message):
    __slots__ = ("task_id", "expect_digest", "valid_for_secs")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    EXPECT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    VALID_FOR_SECS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    expect_digest: str
    valid_for_secs: int
    def __init__(self, task_id: _Optional[str] = ..., expect_digest: _Optional[str] = ..., valid_for_secs: _Optional[int] = ...) -> None: ...

class InvokeTaskRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class CancelTaskRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class QueryAuditLogsRequest(_message.Message):
    __slots__ = ("query", "limit")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    query: str
    limit: int
    def __init__(self, query: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class QueryAuditLogsResponse(_message.Message):
    __slots__ = ("logs",)
    LOGS_FIELD_NUMBER: _ClassVar[int]
    logs: _containers.RepeatedCompositeFieldContainer[_teaclave_common_pb2.Entry]
    def __init__(self, logs: _Optional[_Iterable[_Union[_teaclave_common_pb2.Entry, _Mapping]]] = ...) -> None: ...
