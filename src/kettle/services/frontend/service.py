"""The frontend service: the public API gate (port 7777).

Every TeaclaveFrontend call goes through the same pipeline (``spec/platform.md``
§3): the ``id``/``token`` metadata is checked by the authentication service, the
token's role category is checked against the call's policy name by the access
control service, and the unchanged request is forwarded to the management
service with ``id``, ``token`` and ``role`` metadata. Management's answer, or its
error status, goes back unchanged. Every call leaves an audit entry (§9).
Kettle's own ``KettleFrontend.WaitTask``, ``ListMyTrail`` and ``ListMyTasks`` are gated
the same way as GetTask, ``ListMyFiles`` as GetInputFile, and ``RevokeApproval`` and
``RefuseTask`` as ApproveTask (each but WaitTask audited under its own name).

A dependency that is down is answered UNAVAILABLE with a sentence naming it
("the access control service is unavailable; try again later") within the peer
connect timeout, never by waiting out the call's deadline, and never as a
wrong credential or a refusal: only a token the authentication service judged
is "incorrent credential", and only an access control verdict is "permission
denied" (``docs/operations.md``).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from ...config import Config
from ...errors import ServiceUnavailable
from ...model.audit import (
    access_denied_message,
    authentication_failed_message,
    entry_for_call,
    management_error_message,
    success_message,
)
from ...rpc.generated import kettle_access_control_pb2 as ac_pb
from ...rpc.generated import kettle_access_control_pb2_grpc as ac_grpc
from ...rpc.generated import kettle_frontend_pb2_grpc as kettle_frontend_grpc
from ...rpc.generated import kettle_management_pb2 as mgmt_pb
from ...rpc.generated import kettle_management_pb2_grpc as mgmt_grpc
from ...rpc.generated import teaclave_authentication_service_pb2 as auth_pb
from ...rpc.generated import teaclave_authentication_service_pb2_grpc as auth_grpc
from ...rpc.generated import teaclave_common_pb2 as common_pb
from ...rpc.generated import teaclave_frontend_service_pb2 as frontend_pb
from ...rpc.generated import teaclave_frontend_service_pb2_grpc as frontend_grpc
from ...rpc.channel import PeerChannels, peer_outage
from ..runtime import ServiceRuntime
from .audit_buffer import AuditBuffer

log = logging.getLogger(__name__)

INTERNAL_TIMEOUT_SECS = 30.0
FORWARD_TIMEOUT_SECS = INTERNAL_TIMEOUT_SECS + 60
"""Management's calls may be slow once connected (WaitTask waits for a task to end)."""
AUDIT_FLUSH_SECS = 1.0
WAIT_TASK_POLICY = "get_task"
REVOKE_APPROVAL_POLICY = "approve_task"
"""Whoever may approve a task may withdraw its approval: the same access-control action."""
LIST_MY_TRAIL_POLICY = "get_task"
"""Whoever may read tasks may read its own trail (the roles that own data and approve)."""
LIST_MY_TASKS_POLICY = "get_task"
"""Whoever may read tasks may list the tasks it participates in."""
LIST_MY_FILES_POLICY = "get_input_file"
"""Whoever may read its files' descriptions may list the files it owns."""
REFUSE_TASK_POLICY = "approve_task"
"""Whoever may approve a task may decline to."""
AUDIT_NAMES = {"RevokeApproval": "revoke_approval", "ListMyTrail": "list_my_trail", "ListMyTasks": "list_my_tasks",
               "ListMyFiles": "list_my_files", "RefuseTask": "refuse_task"}
"""Kettle RPCs gated by another RPC's policy but audited under their own name."""


def policy_name(rpc: str) -> str:
    """``RegisterInputFile`` → ``register_input_file`` (the action names of the access policy)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", rpc).lower()


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str, audit_message: str, user: tuple[str, str] | None) -> None:
        super().__init__(message)
        self.code, self.message, self.audit_message, self.user = code, message, audit_message, user


def _outage(outage: ServiceUnavailable, policy: str, user: tuple[str, str] | None) -> _Refused:
    """A dependency is down: UNAVAILABLE with the sentence naming it, audited as such."""
    log.warning("%s refused: %s", policy, outage.message)
    return _Refused(outage.code, outage.message, management_error_message(policy, outage.code, outage.message), user)


class Gate:
    """Authentication, authorisation, forwarding and auditing, shared by every RPC."""

    def __init__(self, peers: PeerChannels, audit: AuditBuffer) -> None:
        self._peers = peers
        self._audit = audit

    async def _authenticate(self, context: grpc.aio.ServicerContext, policy: str) -> tuple[str, str, str]:
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        user_id, token = metadata.get("id"), metadata.get("token")
        failed = authentication_failed_message(policy)
        if user_id is None:
            raise _Refused(grpc.StatusCode.UNAUTHENTICATED, "missing user id", failed, None)
        if token is None:
            raise _Refused(grpc.StatusCode.UNAUTHENTICATED, "missing token", failed, None)
        try:
            stub = auth_grpc.TeaclaveAuthenticationInternalStub(await self._peers.ready("authentication"))
            response = await stub.UserAuthenticate(
                auth_pb.UserAuthenticateRequest(credential=common_pb.UserCredential(id=user_id, token=token)),
                timeout=INTERNAL_TIMEOUT_SECS,
            )
        except ServiceUnavailable as outage:
            raise _outage(outage, policy, None) from None
        except grpc.RpcError as exc:
            outage = peer_outage("authentication", exc)
            if outage is not None:
                raise _outage(outage, policy, None) from None
            if exc.code() != grpc.StatusCode.UNAUTHENTICATED:
                log.error("authentication service failed: %s %s", exc.code().name, exc.details())
            # Teaclave's spelling, reproduced on purpose (spec/platform.md §1.5, §12 row 18).
            raise _Refused(grpc.StatusCode.UNAUTHENTICATED, "incorrent credential", failed, None) from None
        return user_id, token, response.claims.role

    async def _authorize(self, user: tuple[str, str], policy: str, name: str) -> None:
        """Ask access control about ``policy``; refusals and outages are audited as ``name``."""
        role = user[1]
        try:
            stub = ac_grpc.KettleAccessControlStub(await self._peers.ready("access_control"))
            response = await stub.AuthorizeApi(
                ac_pb.AuthorizeApiRequest(user_role=role.split("-", 1)[0], api=policy),
                timeout=INTERNAL_TIMEOUT_SECS,
            )
            accepted = response.accept
        except ServiceUnavailable as outage:
            raise _outage(outage, name, user) from None
        except grpc.RpcError as exc:
            outage = peer_outage("access_control", exc)
            if outage is not None:
                raise _outage(outage, name, user) from None
            log.error("access control service failed: %s %s", exc.code().name, exc.details())
            accepted = False
        if not accepted:
            raise _Refused(grpc.StatusCode.PERMISSION_DENIED, "permission denied", access_denied_message(name), None)

    async def handle(
        self, rpc: str, policy: str, request: Any, context: grpc.aio.ServicerContext
    ) -> Any:
        user: tuple[str, str] | None = None
        name = AUDIT_NAMES.get(rpc, policy)
        try:
            user_id, token, role = await self._authenticate(context, name)
            user = (user_id, role)
            await self._authorize(user, policy, name)
        except _Refused as refused:
            self._audit.record(entry_for_call(context.peer(), refused.user, refused.audit_message, False))
            await context.abort(refused.code, refused.message)
        metadata = (("id", user_id), ("token", token), ("role", role))
        try:
            stub = mgmt_grpc.KettleManagementStub(await self._peers.ready("management"))
            response = await getattr(stub, rpc)(request, metadata=metadata, timeout=FORWARD_TIMEOUT_SECS)
        except ServiceUnavailable as outage:
            refused = _outage(outage, name, user)
            self._audit.record(entry_for_call(context.peer(), user, refused.audit_message, False))
            await context.abort(refused.code, refused.message)
        except grpc.RpcError as exc:
            outage = peer_outage("management", exc)
            code, details = (outage.code, outage.message) if outage else (exc.code(), exc.details() or "")
            message = management_error_message(name, code, details)
            self._audit.record(entry_for_call(context.peer(), user, message, False))
            await context.abort(code, details)
        self._audit.record(entry_for_call(context.peer(), user, success_message(name), True))
        return response


def _forwarder(rpc: str, policy: str) -> Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    async def forward(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.gate.handle(rpc, policy, request, context)

    forward.__name__ = rpc
    return forward


def _servicer(base: type, rpcs: dict[str, str]) -> type:
    namespace: dict[str, Any] = {
        "__init__": lambda self, gate: setattr(self, "gate", gate),
        **{rpc: _forwarder(rpc, policy) for rpc, policy in rpcs.items()},
    }
    return type(f"Gated{base.__name__}", (base,), namespace)


FRONTEND_RPCS = {
    method.name: policy_name(method.name)
    for method in frontend_pb.DESCRIPTOR.services_by_name["TeaclaveFrontend"].methods
}
FrontendServicer = _servicer(frontend_grpc.TeaclaveFrontendServicer, FRONTEND_RPCS)
KettleFrontendServicer = _servicer(
    kettle_frontend_grpc.KettleFrontendServicer,
    {"WaitTask": WAIT_TASK_POLICY, "RevokeApproval": REVOKE_APPROVAL_POLICY, "ListMyTrail": LIST_MY_TRAIL_POLICY,
     "ListMyTasks": LIST_MY_TASKS_POLICY, "ListMyFiles": LIST_MY_FILES_POLICY, "RefuseTask": REFUSE_TASK_POLICY},
)


async def main(config: Config) -> None:
    runtime = ServiceRuntime("frontend", config)
    await runtime.attest()
    audit = AuditBuffer()

    async def save(entries: list[common_pb.Entry]) -> None:
        # A failed save keeps the entries for the next tick; an unreachable management
        # fails it quickly rather than holding the flusher for a whole deadline.
        stub = mgmt_grpc.KettleManagementStub(await runtime.peers.ready("management"))
        await stub.SaveLogs(mgmt_pb.SaveLogsRequest(logs=entries), timeout=INTERNAL_TIMEOUT_SECS)

    gate = Gate(runtime.peers, audit)

    def register(server: grpc.aio.Server) -> None:
        frontend_grpc.add_TeaclaveFrontendServicer_to_server(FrontendServicer(gate), server)
        kettle_frontend_grpc.add_KettleFrontendServicer_to_server(KettleFrontendServicer(gate), server)

    runtime.api_server(register)
    flusher = asyncio.get_running_loop().create_task(audit.run(save, AUDIT_FLUSH_SECS))
    try:
        await runtime.serve()
    finally:
        flusher.cancel()
        await audit.close(save)
