from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    def __init__(self, key: _Optional[bytes] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("value",)
    VALUE_FIELD_NUMBER: _ClassVar[int]
    value: bytes
    def __init__(self, value: _Optional[bytes] = ...) -> None: ...

class PutRequest(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    value: bytes
    def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    def __init__(self, key: _Optional[bytes] = ...) -> None: ...

class GetKeysByPrefixRequest(_message.Message):
    __slots__ = ("prefix",)
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    prefix: bytes
    def __init__(self, prefix: _Optional[bytes] = ...) -> None: ...

class GetKeysByPrefixResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, keys: _Optional[_Iterable[bytes]] = ...) -> None: ...

class EnqueueRequest(_message.Message):
    __slots__ = ("queue", "value", "signal_key")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_KEY_FIELD_NUMBER: _ClassVar[int]
    queue: bytes
    value: bytes
    signal_key: bytes
    def __init__(self, queue: _Optional[bytes] = ..., value: _Optional[bytes] = ..., signal_key: _Optional[bytes] = ...) -> None: ...

class DequeueRequest(_message.Message):
    __slots__ = ("queue", "lease_seconds")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    queue: bytes
    lease_seconds: int
    def __init__(self, queue: _Optional[bytes] = ..., lease_seconds: _Optional[int] = ...) -> None: ...

class DequeueResponse(_message.Message):
    __slots__ = ("found", "item_id", "value", "deliveries")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    found: bool
    item_id: int
    value: bytes
    deliveries: int
    def __init__(self, found: _Optional[bool] = ..., item_id: _Optional[int] = ..., value: _Optional[bytes] = ..., deliveries: _Optional[int] = ...) -> None: ...

class AckRequest(_message.Message):
    __slots__ = ("queue", "item_id")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    queue: bytes
    item_id: int
    def __init__(self, queue: _Optional[bytes] = ..., item_id: _Optional[int] = ...) -> None: ...

class RecordWrite(_message.Message):
    __slots__ = ("key", "value", "delete")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    value: bytes
    delete: bool
    def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ..., delete: _Optional[bool] = ...) -> None: ...

class RecordChange(_message.Message):
    __slots__ = ("key", "expected", "expect_absent", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_FIELD_NUMBER: _ClassVar[int]
    EXPECT_ABSENT_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    expected: bytes
    expect_absent: bool
    value: bytes
    def __init__(self, key: _Optional[bytes] = ..., expected: _Optional[bytes] = ..., expect_absent: _Optional[bool] = ..., value: _Optional[bytes] = ...) -> None: ...

class CompareAndPutRequest(_message.Message):
    __slots__ = ("key", "expected", "expect_absent", "value", "also", "compared", "enqueue")
    KEY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_FIELD_NUMBER: _ClassVar[int]
    EXPECT_ABSENT_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    ALSO_FIELD_NUMBER: _ClassVar[int]
    COMPARED_FIELD_NUMBER: _ClassVar[int]
    ENQUEUE_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    expected: bytes
    expect_absent: bool
    value: bytes
    also: _containers.RepeatedCompositeFieldContainer[RecordWrite]
    compared: _containers.RepeatedCompositeFieldContainer[RecordChange]
    enqueue: EnqueueRequest
    def __init__(self, key: _Optional[bytes] = ..., expected: _Optional[bytes] = ..., expect_absent: _Optional[bool] = ..., value: _Optional[bytes] = ..., also: _Optional[_Iterable[_Union[RecordWrite, _Mapping]]] = ..., compared: _Optional[_Iterable[_Union[RecordChange, _Mapping]]] = ..., enqueue: _Optional[_Union[EnqueueRequest, _Mapping]] = ...) -> None: ...

class CompareAndPutResponse(_message.Message):
    __slots__ = ("applied", "found", "current")
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    applied: bool
    found: bool
    current: bytes
    def __init__(self, applied: _Optional[bool] = ..., found: _Optional[bool] = ..., current: _Optional[bytes] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("key", "known", "known_absent", "timeout_ms")
    KEY_FIELD_NUMBER: _ClassVar[int]
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    KNOWN_ABSENT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    known: bytes
    known_absent: bool
    timeout_ms: int
    def __init__(self, key: _Optional[bytes] = ..., known: _Optional[bytes] = ..., known_absent: _Optional[bool] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class WatchResponse(_message.Message):
    __slots__ = ("changed", "found", "value")
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    changed: bool
    found: bool
    value: bytes
    def __init__(self, changed: _Optional[bool] = ..., found: _Optional[bool] = ..., value: _Optional[bytes] = ...) -> None: ...
