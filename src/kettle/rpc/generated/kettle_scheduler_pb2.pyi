from google.protobuf import empty_pb2 as _empty_pb2
from . import teaclave_common_pb2 as _teaclave_common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HeartbeatRequest(_message.Message):
    __slots__ = ("executor_id", "status", "task_id")
    EXECUTOR_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    executor_id: str
    status: _teaclave_common_pb2.ExecutorStatus
    task_id: str
    def __init__(self, executor_id: _Optional[str] = ..., status: _Optional[_Union[_teaclave_common_pb2.ExecutorStatus, str]] = ..., task_id: _Optional[str] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("command", "canceled")
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    CANCELED_FIELD_NUMBER: _ClassVar[int]
    command: _teaclave_common_pb2.ExecutorCommand
    canceled: bool
    def __init__(self, command: _Optional[_Union[_teaclave_common_pb2.ExecutorCommand, str]] = ..., canceled: _Optional[bool] = ...) -> None: ...

class PullTaskRequest(_message.Message):
    __slots__ = ("executor_id", "wait_ms")
    EXECUTOR_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    executor_id: str
    wait_ms: int
    def __init__(self, executor_id: _Optional[str] = ..., wait_ms: _Optional[int] = ...) -> None: ...

class PullTaskResponse(_message.Message):
    __slots__ = ("found", "staged_task", "attempt")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    STAGED_TASK_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    found: bool
    staged_task: bytes
    attempt: int
    def __init__(self, found: _Optional[bool] = ..., staged_task: _Optional[bytes] = ..., attempt: _Optional[int] = ...) -> None: ...

class UpdateTaskStatusRequest(_message.Message):
    __slots__ = ("executor_id", "task_id", "task_status")
    EXECUTOR_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_STATUS_FIELD_NUMBER: _ClassVar[int]
    executor_id: str
    task_id: str
    task_status: _teaclave_common_pb2.TaskStatus
    def __init__(self, executor_id: _Optional[str] = ..., task_id: _Optional[str] = ..., task_status: _Optional[_Union[_teaclave_common_pb2.TaskStatus, str]] = ...) -> None: ...

class UpdateTaskResultRequest(_message.Message):
    __slots__ = ("executor_id", "task_id", "result")
    EXECUTOR_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    executor_id: str
    task_id: str
    result: _teaclave_common_pb2.TaskResult
    def __init__(self, executor_id: _Optional[str] = ..., task_id: _Optional[str] = ..., result: _Optional[_Union[_teaclave_common_pb2.TaskResult, _Mapping]] = ...) -> None: ...
