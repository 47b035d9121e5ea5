"""Clients of the authentication API, sync and async over one core.

The core turns each call into (RPC name, request, needs-credentials) and each
response into a plain value; the two clients only differ in how they wait. It
fixes the Teaclave SDK's defects (``spec/platform.md`` §11) while staying
wire-compatible: ``user_update`` sends credentials, ``reset_user_password``
returns the password and ``list_users`` the list of ids.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from ..rpc.generated import teaclave_authentication_service_pb2 as pb
from ..rpc.generated import teaclave_authentication_service_pb2_grpc as pb_grpc
from ..rpc.status import error_from_rpc
from .attested import ClientTrust, verify_endpoint

DEFAULT_ADDRESS = "localhost:7776"
CALL_TIMEOUT_SECS = 30.0


@dataclass(frozen=True)
class _Call:
    rpc: str
    request: Any
    result: Callable[[Any], Any]
    authenticated: bool = True


class _AuthenticationCore:
    """What each call sends and what it returns; no I/O."""

    def __init__(self) -> None:
        self.user_id: str | None = None
        self.token: str | None = None

    def metadata(self, call: _Call) -> tuple[tuple[str, str], ...]:
        if not call.authenticated or self.user_id is None or self.token is None:
            return ()
        return (("id", self.user_id), ("token", self.token))

    def login(self, user_id: str, password: str) -> _Call:
        def remember(response: pb.UserLoginResponse) -> str:
            self.user_id, self.token = user_id, response.token
            return response.token

        return _Call("UserLogin", pb.UserLoginRequest(id=user_id, password=password), remember, authenticated=False)

    @staticmethod
    def register(user_id: str, password: str, role: str, attribute: str) -> _Call:
        request = pb.UserRegisterRequest(id=user_id, password=password, role=role, attribute=attribute)
        return _Call("UserRegister", request, lambda _: None)

    @staticmethod
    def update(user_id: str, password: str, role: str, attribute: str) -> _Call:
        request = pb.UserUpdateRequest(id=user_id, password=password, role=role, attribute=attribute)
        return _Call("UserUpdate", request, lambda _: None)

    @staticmethod
    def change_password(password: str) -> _Call:
        return _Call("UserChangePassword", pb.UserChangePasswordRequest(password=password), lambda _: None)

    @staticmethod
    def reset_password(user_id: str) -> _Call:
        return _Call("ResetUserPassword", pb.ResetUserPasswordRequest(id=user_id), lambda r: r.password)

    @staticmethod
    def delete(user_id: str) -> _Call:
        return _Call("DeleteUser", pb.DeleteUserRequest(id=user_id), lambda _: None)

    @staticmethod
    def list_users(user_id: str) -> _Call:
        return _Call("ListUsers", pb.ListUsersRequest(id=user_id), lambda r: list(r.ids))


class AuthenticationClient:
    """Blocking client. Verifies the service's attestation when constructed."""

    def __init__(self, address: str = DEFAULT_ADDRESS, trust: ClientTrust | None = None) -> None:
        self.trust = trust or ClientTrust.from_config()
        self.endpoint = verify_endpoint(address, "authentication", self.trust)
        self._channel = self.endpoint.channel(self.trust)
        self._stub = pb_grpc.TeaclaveAuthenticationApiStub(self._channel)
        self._core = _AuthenticationCore()

    def _invoke(self, call: _Call) -> Any:
        try:
            response = getattr(self._stub, call.rpc)(
                call.request, metadata=self._core.metadata(call), timeout=CALL_TIMEOUT_SECS
            )
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None
        return call.result(response)

    def use_credential(self, user_id: str, token: str) -> None:
        self._core.user_id, self._core.token = user_id, token

    def user_login(self, user_id: str, password: str) -> str:
        return self._invoke(self._core.login(user_id, password))

    def user_register(self, user_id: str, password: str, role: str, attribute: str = "") -> None:
        self._invoke(self._core.register(user_id, password, role, attribute))

    def user_update(self, user_id: str, password: str, role: str, attribute: str = "") -> None:
        self._invoke(self._core.update(user_id, password, role, attribute))

    def user_change_password(self, password: str) -> None:
        self._invoke(self._core.change_password(password))

    def reset_user_password(self, user_id: str) -> str:
        return self._invoke(self._core.reset_password(user_id))

    def delete_user(self, user_id: str) -> None:
        self._invoke(self._core.delete(user_id))

    def list_users(self, user_id: str) -> list[str]:
        return self._invoke(self._core.list_users(user_id))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> AuthenticationClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncAuthenticationClient:
    """asyncio client; create it with ``await AsyncAuthenticationClient.connect(...)``."""

    def __init__(self, trust: ClientTrust, channel: grpc.aio.Channel) -> None:
        self.trust = trust
        self._channel = channel
        self._stub = pb_grpc.TeaclaveAuthenticationApiStub(channel)
        self._core = _AuthenticationCore()

    @classmethod
    async def connect(cls, address: str = DEFAULT_ADDRESS, trust: ClientTrust | None = None) -> AsyncAuthenticationClient:
        import asyncio

        trust = trust or ClientTrust.from_config()
        endpoint = await asyncio.to_thread(verify_endpoint, address, "authentication", trust)
        return cls(trust, endpoint.aio_channel(trust))

    async def _invoke(self, call: _Call) -> Any:
        try:
            response = await getattr(self._stub, call.rpc)(
                call.request, metadata=self._core.metadata(call), timeout=CALL_TIMEOUT_SECS
            )
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None
        return call.result(response)

    async def user_login(self, user_id: str, password: str) -> str:
        return await self._invoke(self._core.login(user_id, password))

    async def user_register(self, user_id: str, password: str, role: str, attribute: str = "") -> None:
        await self._invoke(self._core.register(user_id, password, role, attribute))

    async def user_update(self, user_id: str, password: str, role: str, attribute: str = "") -> None:
        await self._invoke(self._core.update(user_id, password, role, attribute))

    async def user_change_password(self, password: str) -> None:
        await self._invoke(self._core.change_password(password))

    async def reset_user_password(self, user_id: str) -> str:
        return await self._invoke(self._core.reset_password(user_id))

    async def delete_user(self, user_id: str) -> None:
        await self._invoke(self._core.delete(user_id))

    async def list_users(self, user_id: str) -> list[str]:
        return await self._invoke(self._core.list_users(user_id))

    async def close(self) -> None:
        await self._channel.close()
