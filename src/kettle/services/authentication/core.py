"""The authentication service's behaviour, independent of gRPC (``spec/platform.md`` §2.4).

Each operation runs the spec's steps in order and the first failing step
decides the error, because clients (and Teaclave's tests) see which message
comes first. The RPC adapter authenticates the caller with :meth:`authenticate`
and passes the resulting :class:`Claims` in; authorisation then uses the role
*in those claims*, not the stored one (§2.3, §12 row 4). Those can differ
only for a moment: a role change moves the user's token generation on, and a
token of an earlier generation no longer authenticates (§12 row 23).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Protocol

from kettle.errors import AuthenticationError, ConfigError, ResourceExhausted, StorageError, StorageUnavailable
from kettle.model.users import (
    Category,
    Role,
    UserRecord,
    may_delete,
    may_list,
    may_register,
    may_reset_password,
    may_update,
    validate_user_id,
)
from kettle.services.authentication import passwords
from kettle.services.authentication.throttle import LoginThrottle
from kettle.services.authentication.tokens import Claims, TokenAuthority

__all__ = ["UserRepository", "AuthenticationCore", "REWRITE_ATTEMPTS"]

log = logging.getLogger(__name__)


class UserRepository(Protocol):
    """Where user records live; the core's only port to the outside.

    Implementations raise :class:`kettle.errors.StorageError` when the backend
    fails; the core reports that as "service internal error", except
    :class:`kettle.errors.StorageUnavailable`, which stays UNAVAILABLE naming
    storage so that an outage never reads like a wrong credential.
    """

    async def get(self, user_id: str) -> UserRecord | None:
        """The record of ``user_id``, or None if there is none."""
        ...

    async def put(self, record: UserRecord) -> None:
        """Create or replace the record of ``record.id``."""
        ...

    async def replace(self, current: UserRecord, new: UserRecord) -> bool:
        """Store ``new`` (of the same id) if the stored record is still ``current``;
        False, writing nothing, if it changed or is gone meanwhile."""
        ...

    async def delete(self, user_id: str) -> None:
        """Remove the record of ``user_id`` (no error if absent)."""
        ...

    async def list_ids(self) -> list[str]:
        """Every user id, sorted bytewise (the order ListUsers returns)."""
        ...


_Admission = Callable[[UserRecord | None], str]
"""Checks the record a credential change read (raising that operation's refusal)
and returns the role string to store with the new password."""

REWRITE_ATTEMPTS = 5
"""A credential change that met a concurrent write to the same user is checked and
tried again on the fresh record, this many times in all before it gives up."""


def _failed() -> AuthenticationError:
    return AuthenticationError("authentication failed")


def _denied() -> AuthenticationError:
    return AuthenticationError("permission denied")


def _invalid_user_id() -> AuthenticationError:
    return AuthenticationError("invalid user id")


@asynccontextmanager
async def _storage_failures() -> AsyncIterator[None]:
    """Report a storage failure the way the spec names it, without details."""
    try:
        yield
    except StorageUnavailable:
        raise
    except StorageError:
        raise AuthenticationError("service internal error") from None


def _role_of(caller: Claims) -> Role:
    return Role.parse(caller.role)


class AuthenticationCore:
    """Users, passwords and tokens of one authentication-service instance."""

    def __init__(self, repo: UserRepository, tokens: TokenAuthority, throttle: LoginThrottle | None = None) -> None:
        self._repo = repo
        self._tokens = tokens
        self._throttle = throttle

    # --- credentials ---------------------------------------------------------

    async def login(self, user_id: str, password: str, source: str = "") -> str:
        """UserLogin: a token carrying the user's stored role. Every failure
        reads the same, so it does not tell unknown users from wrong passwords.

        With a throttle, a user id or client address (``source``) with too many
        recent failures is refused first, before any lookup or hashing, with
        RESOURCE_EXHAUSTED and when to retry (a Kettle addition to §2.4); every
        "authentication failed" counts as a failure, for unknown users too."""
        throttle = self._throttle
        if throttle is None:
            record = await self._check_login(user_id, password)
        else:
            if (refusal := throttle.admit(user_id, source)) is not None:
                raise ResourceExhausted(refusal.message)
            record = None
            try:
                record = await self._check_login(user_id, password)
            finally:
                # A storage failure ends the attempt too; it counts as a failure (fail closed).
                throttle.finish(user_id, source, ok=record is not None)
        if record is None:
            raise _failed()
        return self._tokens.issue(record.id, record.role, record.account, record.generation)

    async def _check_login(self, user_id: str, password: str) -> UserRecord | None:
        """The user's record if the password is right, else None ("authentication failed")."""
        if not password:
            return None
        try:
            validate_user_id(user_id)
        except AuthenticationError:
            return None
        async with _storage_failures():
            record = await self._repo.get(user_id)
        # An unknown user costs a verification too, so timing does not tell.
        stored = record.password_hash if record else await asyncio.to_thread(passwords.dummy_hash)
        matches = await asyncio.to_thread(passwords.verify_password, stored, password)
        return record if record is not None and matches else None

    async def authenticate(self, user_id: str | None, token: str | None) -> Claims:
        """The caller check of the authentication API (§1.5): absent metadata
        is named, anything else wrong is "authentication failed"."""
        if user_id is None:
            raise AuthenticationError("missing user id")
        if token is None:
            raise AuthenticationError("missing token")
        return await self._verify(user_id, token)

    async def authenticate_internal(self, user_id: str | None, token: str | None) -> Claims:
        """UserAuthenticate for the frontend: every failure, including absent
        credentials, is "authentication failed"."""
        if user_id is None or token is None:
            raise _failed()
        return await self._verify(user_id, token)

    async def _verify(self, user_id: str, token: str) -> Claims:
        """The user must still exist (deletion kills its tokens), then the token
        must be valid for it (§2.3) and of its current token generation, so a
        password reset, password change or role change kills earlier tokens."""
        if not user_id:
            raise _failed()
        async with _storage_failures():
            record = await self._repo.get(user_id)
        if record is None:
            raise _failed()
        return self._tokens.validate(user_id, token, record.account, record.generation)

    # --- user management -----------------------------------------------------

    async def register(
        self, caller: Claims, user_id: str, password: str, role: str, attribute: str
    ) -> None:
        """UserRegister: create a user the caller's role may create."""
        validate_user_id(user_id)
        async with _storage_failures():
            if await self._repo.get(user_id) is not None:
                raise AuthenticationError("user id exist")
            new_role = Role.from_request(role, attribute)
            if not may_register(_role_of(caller), new_role):
                raise _denied()
            await self._create(user_id, new_role, password)

    async def update(
        self, caller: Claims, user_id: str, password: str, role: str, attribute: str
    ) -> None:
        """UserUpdate: replace an existing user's password and role. Every
        token issued before ends with it (Kettle; in Teaclave they lived on with
        the old role, §2.3, §12 row 23): the request always sets a password."""
        validate_user_id(user_id)

        def admit(target: UserRecord | None) -> str:
            if target is None:
                raise _invalid_user_id()
            new_role = Role.from_request(role, attribute)
            if not may_update(_role_of(caller), new_role, Role.parse(target.role)):
                raise _denied()
            return str(new_role)

        await self._rewrite(user_id, password, admit)

    async def change_password(self, caller: Claims, password: str) -> None:
        """UserChangePassword: the caller's own password. Kettle keeps the
        stored role; Teaclave overwrote it with the token's, which could undo a
        role update made since login (§12 row 3). The caller's token and every
        other one issued before end with the change: log in again."""
        if not password:
            raise _failed()

        def admit(record: UserRecord | None) -> str:
            # Deleted, or reset or updated since its token was checked: that token is dead now.
            if record is None or record.generation != caller.gen:
                raise _failed()
            return record.role

        await self._rewrite(caller.sub, password, admit)

    async def reset_password(self, caller: Claims, user_id: str) -> str:
        """ResetUserPassword: give the target a fresh random password, keep its
        role, and return the password. An unknown target is "permission
        denied", as in Teaclave, so it does not reveal which ids exist. The
        target's earlier tokens end with the reset (§12 row 23)."""
        validate_user_id(user_id)

        def admit(target: UserRecord | None) -> str:
            if target is None or not may_reset_password(_role_of(caller), Role.parse(target.role)):
                raise _denied()
            return target.role

        password = passwords.generate_password()
        await self._rewrite(user_id, password, admit)
        return password

    async def delete(self, caller: Claims, user_id: str) -> None:
        """DeleteUser: remove the record; what the user owns elsewhere stays."""
        validate_user_id(user_id)
        async with _storage_failures():
            target = await self._repo.get(user_id)
            if target is None or not may_delete(_role_of(caller), Role.parse(target.role)):
                raise _denied()
            await self._repo.delete(target.id)

    async def list_users(self, caller: Claims, user_id: str) -> list[str]:
        """ListUsers: all ids for an admin; for DataOwnerManager-X (naming X in
        ``user_id``) the ids whose role is exactly DataOwner-X.

        Only emptiness is checked on ``user_id``: for a manager it is a group
        name, which may be any string, so the user-id rules do not apply.
        """
        if not user_id:
            raise _invalid_user_id()
        caller_role = _role_of(caller)
        if not may_list(caller_role, user_id):
            raise _denied()
        async with _storage_failures():
            ids = await self._repo.list_ids()
            if caller_role.category is Category.PLATFORM_ADMIN:
                return ids
            return await self._ids_with_role(ids, Role(Category.DATA_OWNER, caller_role.attribute))

    async def bootstrap_admin(self, admin_id: str, password: str) -> bool:
        """Create the PlatformAdmin ``admin_id`` unless a user of that id exists
        (whatever its role), so a changed admin password survives restarts and
        a deleted admin comes back (§2.2). Returns whether it was created."""
        try:
            validate_user_id(admin_id)
            passwords.check_new_password(password)
        except AuthenticationError as exc:
            raise ConfigError(f"unusable bootstrap admin: {exc.message}") from None
        async with _storage_failures():
            if await self._repo.get(admin_id) is not None:
                return False
            await self._create(admin_id, Role(Category.PLATFORM_ADMIN), password)
        return True

    # --- helpers -------------------------------------------------------------

    async def _ids_with_role(self, ids: list[str], role: Role) -> list[str]:
        records = [await self._repo.get(user_id) for user_id in ids]
        return [r.id for r in records if r is not None and Role.parse(r.role) == role]

    async def _create(self, user_id: str, role: Role, password: str) -> None:
        """Store a new user: a fresh account, token generation 0."""
        password_hash = await _hash(password)
        await self._repo.put(UserRecord(id=user_id, role=str(role), password_hash=password_hash,
                                        account=_new_account()))

    async def _rewrite(self, user_id: str, password: str, admit: _Admission) -> None:
        """Give ``user_id`` a new password and the role ``admit`` allows, at the next token
        generation, so every token issued before stops authenticating.

        Compare-and-swap on the record read: a plain read-then-write could let a
        concurrent change (a reset racing the user's own password change) be
        overwritten by a record of the *same* generation, and a token issued in
        between would outlive the change that should have ended it."""
        password_hash: str | None = None
        for _ in range(REWRITE_ATTEMPTS):
            async with _storage_failures():
                record = await self._repo.get(user_id)
            role = admit(record)
            assert record is not None  # every admission refuses a missing user
            if password_hash is None:  # hashed once, after the first admission (refusals cost no argon2)
                password_hash = await _hash(password)
            async with _storage_failures():
                if await self._repo.replace(record, record.with_credentials(role, password_hash)):
                    return
        log.warning("gave up changing the credentials of %r: %d concurrent writes", user_id, REWRITE_ATTEMPTS)
        raise AuthenticationError("service internal error")


async def _hash(password: str) -> str:
    """A fresh hash of ``password``, checked first: over-long passwords are refused
    before any hashing."""
    passwords.check_new_password(password)
    return await asyncio.to_thread(passwords.hash_password, password)


def _new_account() -> str:
    return secrets.token_hex(16)
