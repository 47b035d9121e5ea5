"""The one exception hierarchy of Kettle.

Every error a Kettle component raises on purpose is a :class:`KettleError`. Each
class carries the gRPC status code it maps to, so the RPC layer can turn any of
them into a status (and back) without a lookup table scattered over services.
Messages are the exact texts clients see; where the Teaclave reference defines a
text (``spec/platform.md`` §0.2, §2.4, Appendix B) the raising code uses it.
"""

from __future__ import annotations

import grpc


class KettleError(Exception):
    """Base of every deliberate Kettle error."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(KettleError):
    """The runtime configuration or the platform's files are unusable."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class AuthenticationError(KettleError):
    """Credentials are missing or wrong; every authentication-service error."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(KettleError):
    code = grpc.StatusCode.PERMISSION_DENIED


class InvalidArgument(KettleError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(KettleError):
    code = grpc.StatusCode.NOT_FOUND


class InternalError(KettleError):
    """The platform failed, not the client: only for failures of Kettle or its storage.

    A client's malformed request is :class:`InvalidArgument`, never this class."""

    code = grpc.StatusCode.INTERNAL


class CatalogueError(KettleError):
    """An error whose UNKNOWN status the reference fixes (``spec/platform.md`` Appendix B):
    a task in the wrong state, a used-up quota, missing internal metadata.

    Kept UNKNOWN for compatibility with clients that match on it; every other client
    mistake is INVALID_ARGUMENT, PERMISSION_DENIED or FAILED_PRECONDITION."""

    code = grpc.StatusCode.UNKNOWN


class Unavailable(KettleError):
    """A peer could not be reached (after retries where they apply)."""

    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(KettleError):
    """A limit that protects the platform from abuse was reached (a login throttle, a
    per-user quota); the message says which and what to do."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class ConsentError(KettleError):
    """A task's consent does not hold for what would run: its function changed since it was
    pinned, an approval is missing, revoked, expired or covers another digest, or a party's
    expected digest is not the task's (``docs/tasks.md`` "Consent"). The message says which."""

    code = grpc.StatusCode.FAILED_PRECONDITION


def unavailable_message(service: str) -> str:
    """The sentence a caller sees when the platform service ``service`` cannot be reached."""
    return f"the {service.replace('_', ' ')} service is unavailable; try again later"


class ServiceUnavailable(Unavailable):
    """A platform service this one depends on is down: UNAVAILABLE naming it.

    Raised within about a peer connect timeout, instead of waiting for the
    caller's whole deadline, so an outage never looks like a hang.
    """

    def __init__(self, service: str) -> None:
        super().__init__(unavailable_message(service))
        self.service = service


class StorageError(InternalError):
    """The storage backend failed; the write, if any, did not happen."""


class StorageUnavailable(StorageError):
    """The storage service cannot be reached. A StorageError (nothing was written, every
    caller's cleanup applies), but reported as UNAVAILABLE naming storage, never as a
    credential or internal error."""

    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self) -> None:
        super().__init__(unavailable_message("storage"))
        self.service = "storage"


class SealingError(StorageError):
    """A sealed value failed to open: wrong key, wrong record key, or tampering."""


class AttestationError(KettleError):
    """Evidence, a report, a certificate or enclave info failed verification.

    ``reason`` is a short, specific sentence saying which check failed; it is
    what ``kettle attest`` prints and what a refused peer sees.
    """

    code = grpc.StatusCode.PERMISSION_DENIED

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TransferError(KettleError):
    """A file could not be fetched from or stored to its URL.

    Raised by the execution node's file agent; the message becomes the task's
    failure reason, which every participant can read, so it names the URL
    without credentials or query string.
    """


_BY_CODE: dict[grpc.StatusCode, type[KettleError]] = {
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.FAILED_PRECONDITION: ConfigError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
}


def from_status(code: grpc.StatusCode, message: str) -> KettleError:
    """The client-side twin of a status a Kettle server sent."""
    cls = _BY_CODE.get(code, KettleError)
    err = cls(message)
    err.code = code
    return err
