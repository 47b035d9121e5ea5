"""Mapping between Kettle's exceptions and gRPC statuses, on both sides of a call."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from ..errors import KettleError, from_status

log = logging.getLogger(__name__)

INTERNAL_ERROR_TEXT = "service internal error"

Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])


def rpc_method(method: Handler) -> Handler:
    """Wrap a servicer method: a KettleError becomes its status and message; any other
    exception is logged and becomes INTERNAL "service internal error", never a crash."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except KettleError as exc:
            await context.abort(exc.code, exc.message)
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("unexpected error in %s", method.__qualname__)
            await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_ERROR_TEXT)

    return wrapper  # type: ignore[return-value]


def error_from_rpc(exc: grpc.RpcError) -> KettleError:
    """The KettleError a client raises for a failed call."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return from_status(code, details or code.name.lower())
