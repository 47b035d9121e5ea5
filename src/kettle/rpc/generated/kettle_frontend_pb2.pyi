from google.protobuf import empty_pb2 as _empty_pb2
from . import teaclave_frontend_service_pb2 as _teaclave_frontend_service_pb2
from . import kettle_management_pb2 as _kettle_management_pb2
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor
