"""The internal endpoints' gate: who is calling, is it attested, and may it call us?

grpc has already checked that the client certificate chains to the AS root. This
interceptor then re-verifies the report inside it (signature, report data bound
to the key, measurement in enclave info, freshness, simulation policy) and
enforces the compiled inbound rules. The verified peer is available to handlers
through :data:`current_peer`.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from cryptography import x509

from ..attestation.verifier import AttestedPeer, Verifier
from ..errors import AttestationError, PermissionDenied
from .inbound import allowed_callers

log = logging.getLogger(__name__)

current_peer: contextvars.ContextVar[AttestedPeer] = contextvars.ContextVar("current_peer")


class PeerAttestationInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, service: str, verifier: Verifier) -> None:
        self._service = service
        self._allowed = allowed_callers(service)
        self._verifier = verifier
        self._cache: dict[bytes, AttestedPeer] = {}
        self._lock = threading.Lock()

    def authorize(self, context: grpc.aio.ServicerContext) -> AttestedPeer:
        """The verified calling service, or PermissionDenied with the reason."""
        auth = context.auth_context()
        pems = auth.get("x509_pem_cert")
        if not pems:
            raise PermissionDenied("internal endpoint requires an attested client certificate")
        pem = pems[0]
        peer = self._verified(pem)
        if peer.service not in self._allowed:
            raise PermissionDenied(f"peer service {peer.service or 'unknown'} is not allowed to call {self._service}")
        return peer

    def _verified(self, pem: bytes) -> AttestedPeer:
        fingerprint = hashlib.sha256(pem).digest()
        with self._lock:
            cached = self._cache.get(fingerprint)
        now = self._verifier.now()
        if cached is not None and now <= cached.not_after and now - cached.report_time <= self._verifier.max_report_age:
            return cached
        try:
            peer = self._verifier.verify(x509.load_pem_x509_certificate(pem))
        except (AttestationError, ValueError) as exc:
            reason = exc.reason if isinstance(exc, AttestationError) else "client certificate does not parse"
            log.warning("refused peer of %s: %s", self._service, reason)
            raise PermissionDenied(f"peer attestation failed: {reason}") from None
        with self._lock:
            if len(self._cache) > 1024:
                self._cache.clear()
            self._cache[fingerprint] = peer
        return peer

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler

        async def gate(request: Any, context: grpc.aio.ServicerContext) -> Callable[[], None]:
            token = await self._enter(context)
            return lambda: current_peer.reset(token)

        # No ungated path: a call shape this gate does not know is refused outright.
        return guarded(handler, gate) or grpc.unary_unary_rpc_method_handler(self._refuse)

    async def _enter(self, context: grpc.aio.ServicerContext) -> contextvars.Token[AttestedPeer]:
        try:
            peer = self.authorize(context)
        except PermissionDenied as exc:
            await context.abort(exc.code, exc.message)
        return current_peer.set(peer)

    async def _refuse(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "client-streaming calls are not served on internal endpoints")


class _Malformed:
    """Stands in for a request whose bytes did not decode."""


_MALFORMED = _Malformed()
MALFORMED_REQUEST_TEXT = "malformed request: the message does not decode"


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    """Answer undecodable request bytes with INVALID_ARGUMENT and a plain sentence.

    Without it grpc.aio fails such a call with UNKNOWN and the decoder's exception text.
    The deserializer cannot abort a call, so it returns a marker that the wrapped
    handler turns into the status before any service code sees the request.
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        decode = handler.request_deserializer

        def tolerant_decode(data: bytes) -> Any:
            try:
                return decode(data)
            except Exception:  # noqa: BLE001 - any decoder failure is the client's malformed input
                return _MALFORMED

        async def refuse_malformed(request: Any, context: grpc.aio.ServicerContext) -> Callable[[], None]:
            if request is _MALFORMED:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, MALFORMED_REQUEST_TEXT)
            return lambda: None

        return guarded(handler, refuse_malformed, tolerant_decode) or handler


Guard = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Callable[[], None]]]
"""Runs before a method (it may abort the call) and returns what to run after it."""


def guarded(
    handler: grpc.RpcMethodHandler, guard: Guard, request_deserializer: Callable[[bytes], Any] | None = None
) -> grpc.RpcMethodHandler | None:
    """``handler`` with ``guard`` around its method; None for client-streaming shapes."""
    deserializer = request_deserializer or handler.request_deserializer
    if handler.unary_unary is not None:
        unary = handler.unary_unary

        async def run_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            after = await guard(request, context)
            try:
                return await unary(request, context)
            finally:
                after()

        return grpc.unary_unary_rpc_method_handler(
            run_unary, request_deserializer=deserializer, response_serializer=handler.response_serializer
        )
    if handler.unary_stream is not None:
        stream = handler.unary_stream

        async def run_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            after = await guard(request, context)
            try:
                async for item in stream(request, context):
                    yield item
            finally:
                after()

        return grpc.unary_stream_rpc_method_handler(
            run_stream, request_deserializer=deserializer, response_serializer=handler.response_serializer
        )
    return None
