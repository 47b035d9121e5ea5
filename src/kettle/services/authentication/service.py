"""The authentication service: the user API (port 7776) and the internal token check (port 17776).

A thin adapter: metadata and messages in, :class:`AuthenticationCore` decides.
User records and the token-signing secret are kept in the storage service (its
``authentication`` partition, sealed), so users, passwords and issued tokens
survive restarts.
"""

from __future__ import annotations

import logging
import time

import grpc
from google.protobuf import empty_pb2

from ...config import DEFAULT_ADMIN_PASSWORD, AuthenticationConfig, Config
from ...errors import ConfigError
from ...model.users import UserRecord
from ...rpc.generated import teaclave_authentication_service_pb2 as pb
from ...rpc.generated import teaclave_authentication_service_pb2_grpc as pb_grpc
from ...rpc.status import rpc_method
from ..platform_store import PlatformStore, when_storage_answers
from ..runtime import ServiceRuntime
from .core import AuthenticationCore
from .throttle import LoginThrottle, ThrottlePolicy, source_of_peer
from .tokens import Claims, TokenAuthority, generate_secret

log = logging.getLogger(__name__)

USER_PREFIX = b"user/"
SECRET_KEY = b"secret/jwt-hs512"


class StorageUserRepository:
    """User records in the storage service's ``authentication`` partition (the storage
    service picks the partition from our attested identity)."""

    def __init__(self, store: PlatformStore) -> None:
        self._store = store

    async def get(self, user_id: str) -> UserRecord | None:
        raw = await self._store.get(USER_PREFIX + user_id.encode())
        return None if raw is None else UserRecord.from_bytes(raw)

    async def put(self, record: UserRecord) -> None:
        await self._store.put(USER_PREFIX + record.id.encode(), record.to_bytes())

    async def replace(self, current: UserRecord, new: UserRecord) -> bool:
        # Compared on the stored bytes, so a record written meanwhile by another instance is seen.
        key = USER_PREFIX + current.id.encode()
        raw = await self._store.get(key)
        if raw is None or UserRecord.from_bytes(raw) != current:
            return False
        applied, _ = await self._store.compare_and_put(key, raw, new.to_bytes())
        return applied

    async def delete(self, user_id: str) -> None:
        await self._store.delete(USER_PREFIX + user_id.encode())

    async def list_ids(self) -> list[str]:
        return [k[len(USER_PREFIX):].decode() for k in await self._store.keys_with_prefix(USER_PREFIX)]

    async def signing_secret(self) -> bytes:
        """The JWT secret; created on first start and kept, so tokens survive restarts.

        Create-only, so two instances starting at once agree on one secret."""
        secret = await self._store.get(SECRET_KEY)
        if secret is not None:
            return secret
        _, current = await self._store.compare_and_put(SECRET_KEY, None, generate_secret())
        assert current is not None
        return current


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
        token = await self._core.login(request.id, request.password, source_of_peer(context.peer() or ""))
        return pb.UserLoginResponse(token=token)

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


def login_throttle(settings: AuthenticationConfig) -> LoginThrottle:
    """The service's login throttle. Its state lives in this process only: a restart
    forgets it (``docs/limits.md`` says why that is acceptable)."""

    def policy(max_failures: int) -> ThrottlePolicy:
        return ThrottlePolicy(max_failures, settings.login_failure_window_secs,
                              settings.login_lockout_secs, settings.login_max_lockout_secs)

    for name, limit in (("login_max_failures_per_user", settings.login_max_failures_per_user),
                        ("login_max_failures_per_source", settings.login_max_failures_per_source)):
        if limit == 0:
            log.warning("authentication.%s = 0: that login throttle is OFF", name)
    return LoginThrottle(policy(settings.login_max_failures_per_user),
                         policy(settings.login_max_failures_per_source), time.monotonic)


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
    repository = StorageUserRepository(PlatformStore(runtime.peers))
    secret = await when_storage_answers(repository.signing_secret, "read the token-signing secret")
    tokens = TokenAuthority(secret, config.authentication.token_validity_secs)
    core = AuthenticationCore(repository, tokens, login_throttle(config.authentication))
    admin = config.authentication.admin_id, config.authentication.admin_password
    if await when_storage_answers(lambda: core.bootstrap_admin(*admin), "create the bootstrap admin"):
        log.info("created the bootstrap PlatformAdmin %r", config.authentication.admin_id)
    api, internal = AuthenticationApi(core), AuthenticationInternal(core)
    runtime.api_server(lambda server: pb_grpc.add_TeaclaveAuthenticationApiServicer_to_server(api, server))
    runtime.internal_server(
        lambda server: pb_grpc.add_TeaclaveAuthenticationInternalServicer_to_server(internal, server)
    )
    await runtime.serve()
