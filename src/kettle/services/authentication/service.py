"""The authentication service: the user API (port 7776) and the internal token check (port 17776).

A thin adapter: metadata and messages in, :class:`AuthenticationCore` decides.
User records and the token-signing secret are kept in the storage service (its
``authentication`` partition, sealed), so users, passwords and issued tokens
survive restarts.
"""

from __future__ import annotations

import logging

import grpc
from google.protobuf import empty_pb2

from ...config import DEFAULT_ADMIN_PASSWORD, Config
from ...errors import ConfigError, StorageError
from ...model.users import UserRecord
from ...rpc.generated import kettle_storage_pb2 as storage_pb
from ...rpc.generated import kettle_storage_pb2_grpc as storage_grpc
from ...rpc.generated import teaclave_authentication_service_pb2 as pb
from ...rpc.generated import teaclave_authentication_service_pb2_grpc as pb_grpc
from ...rpc.channel import PeerChannels
from ...rpc.status import rpc_method
from ..runtime import ServiceRuntime
from .core import AuthenticationCore
from .tokens import Claims, TokenAuthority, generate_secret

log = logging.getLogger(__name__)

USER_PREFIX = b"user/"
SECRET_KEY = b"secret/jwt-hs512"
STORAGE_TIMEOUT_SECS = 10.0


class StorageUserRepository:
    """User records in the storage service's ``authentication`` partition."""

    def __init__(self, peers: PeerChannels) -> None:
        # Ask for the channel on every call: it is re-made when our certificate rotates.
        self._peers = peers

    async def _call(self, method: str, request: object) -> object:
        stub = storage_grpc.KettleStorageStub(self._peers.channel("storage"))
        try:
            return await getattr(stub, method)(request, timeout=STORAGE_TIMEOUT_SECS, wait_for_ready=True)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise StorageError(f"storage {method} failed: {exc.code().name} {exc.details()}") from None

    async def get(self, user_id: str) -> UserRecord | None:
        response = await self._call("Get", storage_pb.GetRequest(key=USER_PREFIX + user_id.encode()))
        return None if response is None else UserRecord.from_bytes(response.value)  # type: ignore[attr-defined]

    async def put(self, record: UserRecord) -> None:
        await self._call("Put", storage_pb.PutRequest(key=USER_PREFIX + record.id.encode(), value=record.to_bytes()))

    async def delete(self, user_id: str) -> None:
        await self._call("Delete", storage_pb.DeleteRequest(key=USER_PREFIX + user_id.encode()))

    async def list_ids(self) -> list[str]:
        response = await self._call("GetKeysByPrefix", storage_pb.GetKeysByPrefixRequest(prefix=USER_PREFIX))
        return [k[len(USER_PREFIX):].decode() for k in response.keys]  # type: ignore[attr-defined]

    async def signing_secret(self) -> bytes:
        """The JWT secret; created on first start and kept, so tokens survive restarts."""
        response = await self._call("Get", storage_pb.GetRequest(key=SECRET_KEY))
        if response is not None:
            return response.value  # type: ignore[attr-defined]
        secret = generate_secret()
        await self._call("Put", storage_pb.PutRequest(key=SECRET_KEY, value=secret))
        return secret


def _credential(context: grpc.aio.ServicerContext) -> tuple[str | None, str | None]:
    metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
    return metadata.get("id"), metadata.get("token")


class AuthenticationApi(pb_grpc.TeaclaveAuthenticationApiServicer):
    def __init__(self, core: AuthenticationCore) -> None:
        self._core = core

    async def _caller(self, context: grpc.aio.ServicerContext) -> Claims:
        return await self._core.authenticate(*_credential(context))

    @rpc_method
    async def UserLogin(self, request: pb.UserLoginRequest, context: grpc.aio.ServicerContext) -> pb.UserLoginResponse:
        return pb.UserLoginResponse(token=await self._core.login(request.id, request.password))

    @rpc_method
    async def UserRegister(self, request: pb.UserRegisterRequest, context: grpc.aio.ServicerContext) -> empty_pb2.Empty:
        caller = await self._caller(context)
        await self._core.register(caller, request.id, request.password, request.role, request.attribute)
        return empty_pb2.Empty()

    @rpc_method
    async def UserUpdate(self, request: pb.UserUpdateRequest, context: grpc.aio.ServicerContext) -> empty_pb2.Empty:
        caller = await self._caller(context)
        await self._core.update(caller, request.id, request.password, request.role, request.attribute)
        return empty_pb2.Empty()

    @rpc_method
    async def UserChangePassword(
        self, request: pb.UserChangePasswordRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        caller = await self._caller(context)
        await self._core.change_password(caller, request.password)
        return empty_pb2.Empty()

    @rpc_method
    async def ResetUserPassword(
        self, request: pb.ResetUserPasswordRequest, context: grpc.aio.ServicerContext
    ) -> pb.ResetUserPasswordResponse:
        caller = await self._caller(context)
        return pb.ResetUserPasswordResponse(password=await self._core.reset_password(caller, request.id))

    @rpc_method
    async def DeleteUser(self, request: pb.DeleteUserRequest, context: grpc.aio.ServicerContext) -> empty_pb2.Empty:
        caller = await self._caller(context)
        await self._core.delete(caller, request.id)
        return empty_pb2.Empty()

    @rpc_method
    async def ListUsers(self, request: pb.ListUsersRequest, context: grpc.aio.ServicerContext) -> pb.ListUsersResponse:
        caller = await self._caller(context)
        return pb.ListUsersResponse(ids=await self._core.list_users(caller, request.id))


class AuthenticationInternal(pb_grpc.TeaclaveAuthenticationInternalServicer):
    def __init__(self, core: AuthenticationCore) -> None:
        self._core = core

    @rpc_method
    async def UserAuthenticate(
        self, request: pb.UserAuthenticateRequest, context: grpc.aio.ServicerContext
    ) -> pb.UserAuthenticateResponse:
        credential = request.credential if request.HasField("credential") else None
        claims = await self._core.authenticate_internal(
            credential.id if credential else None, credential.token if credential else None
        )
        return pb.UserAuthenticateResponse(
            claims=pb.UserAuthClaims(sub=claims.sub, role=claims.role, iss=claims.iss, exp=claims.exp)
        )


def check_bootstrap_password(config: Config) -> None:
    if not config.dev_mode and config.authentication.admin_password == DEFAULT_ADMIN_PASSWORD:
        raise ConfigError(
            "refusing to start: the bootstrap admin password is the default one; "
            "set [authentication] admin_password (the default is allowed only with [platform] dev_mode = true)"
        )


async def main(config: Config) -> None:
    check_bootstrap_password(config)
    runtime = ServiceRuntime("authentication", config)
    await runtime.attest()
    repository = StorageUserRepository(runtime.peers)
    tokens = TokenAuthority(await repository.signing_secret(), config.authentication.token_validity_secs)
    core = AuthenticationCore(repository, tokens)
    if await core.bootstrap_admin(config.authentication.admin_id, config.authentication.admin_password):
        log.info("created the bootstrap PlatformAdmin %r", config.authentication.admin_id)
    api, internal = AuthenticationApi(core), AuthenticationInternal(core)
    runtime.api_server(lambda server: pb_grpc.add_TeaclaveAuthenticationApiServicer_to_server(api, server))
    runtime.internal_server(
        lambda server: pb_grpc.add_TeaclaveAuthenticationInternalServicer_to_server(internal, server)
    )
    await runtime.serve()
