"""The authentication service core (spec §1.5, §2.2-§2.4, §12 rows 2-4), without sockets.

The in-memory repository below is the core's own port implemented for tests,
not a stand-in for another service.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec

import jwt
import pytest

from kettle.errors import AuthenticationError, ConfigError, StorageError
from kettle.model.users import UserRecord
from kettle.services.authentication import passwords
from kettle.services.authentication.core import AuthenticationCore
from kettle.services.authentication.tokens import Claims, TokenAuthority, generate_secret

P = ParamSpec("P")

T0 = 1_700_000_000
DAY = 86_400


def asynctest(fn: Callable[P, Awaitable[None]]) -> Callable[P, None]:
    """Run an async test body in a fresh event loop (no pytest-asyncio here)."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        asyncio.run(fn(*args, **kwargs))  # type: ignore[arg-type]

    return run


class MemoryRepo:
    """A dict-backed UserRepository that stores records in their byte form."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    async def get(self, user_id: str) -> UserRecord | None:
        raw = self.data.get(user_id)
        return None if raw is None else UserRecord.from_bytes(raw)

    async def put(self, record: UserRecord) -> None:
        self.data[record.id] = record.to_bytes()

    async def replace(self, current: UserRecord, new: UserRecord) -> bool:
        raw = self.data.get(current.id)
        if raw is None or UserRecord.from_bytes(raw) != current:
            return False
        self.data[current.id] = new.to_bytes()
        return True

    async def delete(self, user_id: str) -> None:
        self.data.pop(user_id, None)

    async def list_ids(self) -> list[str]:
        return sorted(self.data, key=lambda user_id: user_id.encode())


class BrokenRepo(MemoryRepo):
    async def get(self, user_id: str) -> UserRecord | None:
        raise StorageError("disk on fire")


class Clock:
    def __init__(self) -> None:
        self.now: float = T0

    def __call__(self) -> float:
        return self.now


@functools.cache
def cached_hash(password: str) -> str:
    """Seeding users with a shared hash keeps the suite fast; argon2 is slow on purpose."""
    return passwords.hash_password(password)


class Env:
    def __init__(self, repo: MemoryRepo | None = None) -> None:
        self.repo = repo or MemoryRepo()
        self.clock = Clock()
        self.secret = generate_secret()
        self.tokens = TokenAuthority(self.secret, clock=self.clock)
        self.core = AuthenticationCore(self.repo, self.tokens)

    def seed(self, user_id: str, role: str, password: str = "pw") -> Claims:
        """Store a user and return the claims a fresh login would give it."""
        self.repo.data[user_id] = UserRecord(user_id, role, cached_hash(password)).to_bytes()
        return Claims(sub=user_id, role=role, iss="Teaclave", exp=int(self.clock.now) + DAY)

    def stored_role(self, user_id: str) -> str:
        return UserRecord.from_bytes(self.repo.data[user_id]).role

    def forge(self, claims: dict[str, Any], key: bytes | None = None, alg: str = "HS512") -> str:
        return jwt.encode(claims, self.secret if key is None else key, algorithm=alg)


@pytest.fixture
def env() -> Env:
    return Env()


async def expect(message: str, operation: Awaitable[Any]) -> None:
    with pytest.raises(AuthenticationError) as caught:
        await operation
    assert caught.value.message == message


# --- login --------------------------------------------------------------------

@asynctest
async def test_login_issues_token_with_stored_role(env: Env) -> None:
    env.seed("alice", "DataOwner-bank", "secret")
    token = await env.core.login("alice", "secret")
    claims = await env.core.authenticate("alice", token)
    assert claims == Claims(sub="alice", role="DataOwner-bank", iss="Teaclave", exp=T0 + DAY)
    payload = jwt.decode(token, options={"verify_signature": False})
    assert set(payload) == {"sub", "role", "iss", "exp", "gen"}  # Teaclave's four, and the generation
    assert jwt.get_unverified_header(token)["alg"] == "HS512"


@pytest.mark.parametrize(
    ("user_id", "password"),
    [
        ("alice", "wrong"),
        ("alice", ""),
        ("", "secret"),
        ("bob", "secret"),
        ("ALICE", "secret"),
        ("a lice", "secret"),
        ("alice", "secret" + "x" * 1024),
        ("alice", "secret\x00"),
    ],
)
@asynctest
async def test_login_failures_are_indistinguishable(env: Env, user_id: str, password: str) -> None:
    env.seed("alice", "DataOwner-bank", "secret")
    await expect("authentication failed", env.core.login(user_id, password))


@asynctest
async def test_empty_password_never_logs_in(env: Env) -> None:
    admin = env.seed("admin", "PlatformAdmin")
    await env.core.register(admin, "blank", "", "FunctionOwner", "")
    await expect("authentication failed", env.core.login("blank", ""))


# --- authenticating calls ------------------------------------------------------

@pytest.mark.parametrize(
    ("user_id", "token", "message"),
    [
        (None, None, "missing user id"),
        (None, "t", "missing user id"),
        ("alice", None, "missing token"),
        ("alice", "", "authentication failed"),
        ("", "t", "authentication failed"),
        ("nobody", "t", "authentication failed"),
    ],
)
@asynctest
async def test_api_authenticate_metadata_order(
    env: Env, user_id: str | None, token: str | None, message: str
) -> None:
    env.seed("alice", "FunctionOwner")
    await expect(message, env.core.authenticate(user_id, token))


@pytest.mark.parametrize(
    ("user_id", "token"), [(None, None), (None, "t"), ("alice", None), ("alice", "")]
)
@asynctest
async def test_internal_authenticate_says_only_authentication_failed(
    env: Env, user_id: str | None, token: str | None
) -> None:
    env.seed("alice", "FunctionOwner")
    await expect("authentication failed", env.core.authenticate_internal(user_id, token))


@asynctest
async def test_internal_authenticate_returns_claims(env: Env) -> None:
    env.seed("alice", "FunctionOwner")
    token = env.tokens.issue("alice", "FunctionOwner")
    claims = await env.core.authenticate_internal("alice", token)
    assert (claims.sub, claims.role) == ("alice", "FunctionOwner")


def _good_claims(**changes: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {"sub": "alice", "role": "PlatformAdmin", "iss": "Teaclave",
                              "exp": T0 + 60}
    claims.update(changes)
    return {name: value for name, value in claims.items() if value is not None}


HOSTILE_TOKENS: dict[str, Callable[[Env], str]] = {
    "other secret": lambda e: e.forge(_good_claims(), key=generate_secret()),
    "alg none": lambda e: jwt.encode(_good_claims(), None, algorithm="none"),
    "alg none, signature kept": lambda e: _swap_header(e.forge(_good_claims()), "none"),
    "HS256 same secret": lambda e: e.forge(_good_claims(), alg="HS256"),
    "HS384 same secret": lambda e: e.forge(_good_claims(), alg="HS384"),
    "wrong issuer": lambda e: e.forge(_good_claims(iss="Kettle")),
    "other user": lambda e: e.tokens.issue("mallory", "PlatformAdmin"),
    "missing role": lambda e: e.forge(_good_claims(role=None)),
    "missing exp": lambda e: e.forge(_good_claims(exp=None)),
    "missing iss": lambda e: e.forge(_good_claims(iss=None)),
    "float exp": lambda e: e.forge(_good_claims(exp=T0 + 60.5)),
    "string exp": lambda e: e.forge(_good_claims(exp=str(T0 + 60))),
    "bool exp": lambda e: e.forge(_good_claims(exp=True)),
    "non-string role": lambda e: e.forge(_good_claims(role=["PlatformAdmin"])),
    "garbage": lambda e: "not a token",
    "three dots": lambda e: "a.b.c",
    "non-ascii": lambda e: "é.é.é",
    "truncated signature": lambda e: e.tokens.issue("alice", "PlatformAdmin")[:-2],
    "extra-long": lambda e: e.tokens.issue("alice", "PlatformAdmin") + "A" * 10_000,
    "extra-long and validly signed": lambda e: e.forge(_good_claims(role="x" * 5000)),
}


def _swap_header(token: str, alg: str) -> str:
    header = jwt.utils.base64url_encode(f'{{"alg":"{alg}","typ":"JWT"}}'.encode()).decode()
    return ".".join([header, *token.split(".")[1:]])


@asynctest
async def test_forging_helper_makes_valid_tokens(env: Env) -> None:
    """Control for the hostile table: only the one named defect makes each fail."""
    env.seed("alice", "PlatformAdmin")
    assert (await env.core.authenticate("alice", env.forge(_good_claims()))).sub == "alice"


@pytest.mark.parametrize("make_token", HOSTILE_TOKENS.values(), ids=list(HOSTILE_TOKENS))
@asynctest
async def test_hostile_tokens_fail(env: Env, make_token: Callable[[Env], str]) -> None:
    env.seed("alice", "PlatformAdmin")
    env.seed("mallory", "PlatformAdmin")
    token = make_token(env)
    await expect("authentication failed", env.core.authenticate("alice", token))
    await expect("authentication failed", env.core.authenticate_internal("alice", token))


@pytest.mark.parametrize(("offset", "valid"), [(-1, True), (0, False), (1, False)])
@asynctest
async def test_expiry_has_no_leeway(env: Env, offset: int, valid: bool) -> None:
    env.seed("alice", "PlatformAdmin")
    token = env.tokens.issue("alice", "PlatformAdmin")
    env.clock.now = T0 + DAY + offset
    if valid:
        assert (await env.core.authenticate("alice", token)).exp == T0 + DAY
    else:
        await expect("authentication failed", env.core.authenticate("alice", token))


def test_token_secret_must_be_long_enough() -> None:
    with pytest.raises(ValueError):
        TokenAuthority(b"k" * 63)
    assert len(generate_secret()) == 64


@asynctest
async def test_deleted_users_token_fails(env: Env) -> None:
    admin = env.seed("admin", "PlatformAdmin")
    victim = env.seed("victim", "FunctionOwner")
    token = env.tokens.issue("victim", "FunctionOwner")
    await env.core.delete(admin, "victim")
    await expect("authentication failed", env.core.authenticate("victim", token))
    await expect("authentication failed", env.core.change_password(victim, "new"))


# --- error order of every operation (first failing step wins) ------------------

CALLERS = {
    "PA": "PlatformAdmin",
    "FO": "FunctionOwner",
    "DOM-x": "DataOwnerManager-x",
    "DO-x": "DataOwner-x",
}
LONG = "p" * 1025


def _seed_population(env: Env) -> dict[str, Claims]:
    """Callers of every kind plus targets in and out of group x. No record can
    hold an invalid role, so that caller exists only as token claims."""
    callers = {name: env.seed(f"caller-{name}", role) for name, role in CALLERS.items()
               if name != "Invalid"}
    callers["Invalid"] = Claims(sub="caller-Invalid", role="Admin", iss="Teaclave", exp=T0 + DAY)
    for user_id, role in [("do-x", "DataOwner-x"), ("do-y", "DataOwner-y"),
                          ("dom-x2", "DataOwnerManager-x"), ("do-x-sub", "DataOwner-x-sub"),
                          ("fo", "FunctionOwner"), ("pa", "PlatformAdmin")]:
        env.seed(user_id, role)
    return callers


def _role_string(role: str, attribute: str) -> str:
    return role if role in ("PlatformAdmin", "FunctionOwner") else f"{role}-{attribute}"


REGISTER_CASES = [
    # caller, id, password, role, attribute, expected error (None = success)
    ("DO-x", "", "pw", "Bogus", "", "invalid user id"),
    ("DO-x", "a b", "pw", "Bogus", "", "invalid user id"),
    ("DO-x", "do-y", "pw", "Bogus", "", "user id exist"),
    ("DO-x", "new", "pw", "Bogus", "", "invalid role"),
    ("DO-x", "new", "pw", "DataOwner", "x", "permission denied"),
    ("DO-x", "new", LONG, "DataOwner", "x", "permission denied"),
    ("Invalid", "new", "pw", "FunctionOwner", "", "permission denied"),
    ("FO", "new", "pw", "DataOwner", "x", "permission denied"),
    ("FO", "new", "pw", "DataOwnerManager", "any", "permission denied"),  # §12 row 22
    ("DOM-x", "new", "pw", "DataOwner", "y", "permission denied"),
    ("DOM-x", "new", "pw", "DataOwnerManager", "x", "permission denied"),
    ("DOM-x", "new", "pw", "DataOwner", "x", None),
    ("PA", "new", "pw", "platformadmin", "", "invalid role"),
    ("PA", "new", "pw", "PlatformAdmin", "", None),
    ("PA", "new", LONG, "PlatformAdmin", "", "invalid password"),
    ("PA", "x" * 129, "pw", "PlatformAdmin", "", "invalid user id"),
]


@pytest.mark.parametrize(
    ("caller", "user_id", "password", "role", "attribute", "error"), REGISTER_CASES
)
@asynctest
async def test_register(
    env: Env, caller: str, user_id: str, password: str, role: str, attribute: str, error: str | None
) -> None:
    callers = _seed_population(env)
    operation = env.core.register(callers[caller], user_id, password, role, attribute)
    if error:
        before = dict(env.repo.data)
        await expect(error, operation)
        assert env.repo.data == before
    else:
        await operation
        assert env.stored_role(user_id) == _role_string(role, attribute)


UPDATE_CASES = [
    ("DO-x", "", "pw", "Bogus", "", "invalid user id"),
    ("DO-x", "unknown", "pw", "Bogus", "", "invalid user id"),
    ("DO-x", "do-x", "pw", "Bogus", "", "invalid role"),
    ("DO-x", "do-x", "pw", "DataOwner", "x", "permission denied"),
    ("FO", "dom-x2", "pw", "DataOwnerManager", "x", "permission denied"),
    ("Invalid", "do-x", "pw", "DataOwner", "x", "permission denied"),
    ("DOM-x", "pa", "pw", "DataOwner", "x", "permission denied"),  # §12 row 2
    ("DOM-x", "do-y", "pw", "DataOwner", "x", "permission denied"),
    ("DOM-x", "dom-x2", "pw", "DataOwner", "x", "permission denied"),
    ("DOM-x", "do-x", "pw", "DataOwnerManager", "x", "permission denied"),
    ("DOM-x", "do-x", "pw", "DataOwner", "y", "permission denied"),
    ("DOM-x", "do-x", LONG, "DataOwner", "x", "invalid password"),
    ("DOM-x", "do-x", "pw2", "DataOwner", "x", None),
    ("PA", "do-x", "pw2", "FunctionOwner", "ignored", None),
    ("PA", "pa", "pw2", "DataOwner", "z", None),
]


@pytest.mark.parametrize(
    ("caller", "user_id", "password", "role", "attribute", "error"), UPDATE_CASES
)
@asynctest
async def test_update(
    env: Env, caller: str, user_id: str, password: str, role: str, attribute: str, error: str | None
) -> None:
    callers = _seed_population(env)
    operation = env.core.update(callers[caller], user_id, password, role, attribute)
    if error:
        before = dict(env.repo.data)
        await expect(error, operation)
        assert env.repo.data == before
    else:
        await operation
        assert env.stored_role(user_id) == _role_string(role, attribute)
        await env.core.login(user_id, password)


RESET_DELETE_CASES = [
    ("DO-x", "", "invalid user id"),
    ("DO-x", "unknown", "permission denied"),
    ("PA", "unknown", "permission denied"),
    ("PA", "bad\nid", "invalid user id"),
    ("DO-x", "do-x", "permission denied"),
    ("FO", "do-x", "permission denied"),
    ("Invalid", "do-x", "permission denied"),
    ("DOM-x", "do-y", "permission denied"),
    ("DOM-x", "do-x-sub", "permission denied"),
    ("DOM-x", "dom-x2", "permission denied"),
    ("DOM-x", "pa", "permission denied"),
    ("DOM-x", "do-x", None),
    ("PA", "pa", None),
    ("PA", "fo", None),
]


@pytest.mark.parametrize(("caller", "user_id", "error"), RESET_DELETE_CASES)
@asynctest
async def test_reset_password(env: Env, caller: str, user_id: str, error: str | None) -> None:
    callers = _seed_population(env)
    operation = env.core.reset_password(callers[caller], user_id)
    if error:
        await expect(error, operation)
        return
    role_before = env.stored_role(user_id)
    new_password = await operation
    assert len(new_password) == 32 and int(new_password, 16) >= 0 and new_password.islower()
    assert env.stored_role(user_id) == role_before
    token = await env.core.login(user_id, new_password)
    assert (await env.core.authenticate(user_id, token)).role == role_before
    await expect("authentication failed", env.core.login(user_id, "pw"))


@pytest.mark.parametrize(("caller", "user_id", "error"), RESET_DELETE_CASES)
@asynctest
async def test_delete(env: Env, caller: str, user_id: str, error: str | None) -> None:
    callers = _seed_population(env)
    before = dict(env.repo.data)
    operation = env.core.delete(callers[caller], user_id)
    if error:
        await expect(error, operation)
        assert env.repo.data == before
    else:
        await operation
        assert set(before) - set(env.repo.data) == {user_id}


LIST_CASES = [
    ("DO-x", "", "invalid user id"),
    ("DO-x", "x", "permission denied"),
    ("FO", "x", "permission denied"),
    ("Invalid", "x", "permission denied"),
    ("DOM-x", "y", "permission denied"),
    ("DOM-x", "caller-DOM-x", "permission denied"),
    ("PA", "", "invalid user id"),
]


@pytest.mark.parametrize(("caller", "requested", "error"), LIST_CASES)
@asynctest
async def test_list_users_refusals(env: Env, caller: str, requested: str, error: str) -> None:
    callers = _seed_population(env)
    await expect(error, env.core.list_users(callers[caller], requested))


@asynctest
async def test_list_users_results(env: Env) -> None:
    callers = _seed_population(env)
    env.seed("B-do-x", "DataOwner-x")
    everyone = await env.core.list_users(callers["PA"], "ignored but non-empty")
    assert everyone == sorted(env.repo.data, key=str.encode)
    assert "B-do-x" in everyone and everyone.index("B-do-x") < everyone.index("caller-DO-x")
    group = await env.core.list_users(callers["DOM-x"], "x")
    assert group == ["B-do-x", "caller-DO-x", "do-x"]


@asynctest
async def test_manager_of_group_with_spaces_can_list_it(env: Env) -> None:
    manager = env.seed("m", "DataOwnerManager-north bank")
    env.seed("o", "DataOwner-north bank")
    assert await env.core.list_users(manager, "north bank") == ["o"]


# --- change password keeps the stored role ---------------------------------------
# (A role change ends the tokens issued before it, tests/test_roles.py, so a token's
# role differs from the stored one only for a record updated before Kettle had token
# generations: both are at generation 0.)

@asynctest
async def test_change_password_keeps_stored_role(env: Env) -> None:
    env.seed("u", "DataOwnerManager-x", "old")
    stale = Claims(sub="u", role="DataOwner-x", iss="Teaclave", exp=T0 + DAY)
    await env.core.change_password(stale, "new")
    assert env.stored_role("u") == "DataOwnerManager-x"  # §12 row 3
    await expect("authentication failed", env.core.login("u", "old"))
    fresh = await env.core.authenticate("u", await env.core.login("u", "new"))
    assert fresh.role == "DataOwnerManager-x"


@pytest.mark.parametrize(("password", "error"), [("", "authentication failed"),
                                                  (LONG, "invalid password"),
                                                  ("é" * 512 + "a", "invalid password"),
                                                  ("\udcff", "invalid password")])
@asynctest
async def test_change_password_refusals(env: Env, password: str, error: str) -> None:
    user = env.seed("u", "FunctionOwner")
    before = dict(env.repo.data)
    await expect(error, env.core.change_password(user, password))
    assert env.repo.data == before


@asynctest
async def test_password_of_exactly_1024_bytes_is_accepted(env: Env) -> None:
    user = env.seed("u", "FunctionOwner")
    password = "é" * 512
    await env.core.change_password(user, password)
    await env.core.login("u", password)


# --- bootstrap --------------------------------------------------------------------

@asynctest
async def test_bootstrap_is_idempotent_and_never_overwrites(env: Env) -> None:
    assert await env.core.bootstrap_admin("admin", "teaclave") is True
    assert env.stored_role("admin") == "PlatformAdmin"
    admin = await env.core.authenticate("admin", await env.core.login("admin", "teaclave"))
    await env.core.change_password(admin, "changed")
    assert await env.core.bootstrap_admin("admin", "teaclave") is False
    await env.core.login("admin", "changed")
    await expect("authentication failed", env.core.login("admin", "teaclave"))


@asynctest
async def test_bootstrap_recreates_deleted_admin_and_spares_other_roles(env: Env) -> None:
    env.seed("admin", "FunctionOwner")
    assert await env.core.bootstrap_admin("admin", "teaclave") is False
    assert env.stored_role("admin") == "FunctionOwner"
    del env.repo.data["admin"]
    assert await env.core.bootstrap_admin("admin", "teaclave") is True
    assert env.stored_role("admin") == "PlatformAdmin"


@pytest.mark.parametrize(("admin_id", "password"), [("", "pw"), ("ad min", "pw"), ("admin", LONG)])
@asynctest
async def test_bootstrap_refuses_unusable_configuration(
    env: Env, admin_id: str, password: str
) -> None:
    with pytest.raises(ConfigError):
        await env.core.bootstrap_admin(admin_id, password)


# --- storage failures and stored hashes ---------------------------------------------

@asynctest
async def test_storage_failure_is_service_internal_error() -> None:
    broken = Env(BrokenRepo())
    caller = Claims(sub="admin", role="PlatformAdmin", iss="Teaclave", exp=T0 + DAY)
    await expect("service internal error", broken.core.login("admin", "pw"))
    register = broken.core.register(caller, "u", "pw", "FunctionOwner", "")
    await expect("service internal error", register)
    await expect("service internal error", broken.core.authenticate("admin", "t"))


@asynctest
async def test_passwords_are_stored_as_argon2id(env: Env) -> None:
    admin = env.seed("admin", "PlatformAdmin")
    await env.core.register(admin, "u", "hunter2", "FunctionOwner", "")
    stored = UserRecord.from_bytes(env.repo.data["u"]).password_hash
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert "hunter2" not in stored


@asynctest
async def test_hashing_runs_off_the_event_loop(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[threading.Thread] = []
    real_hash = passwords.hash_password

    def spy(password: str) -> str:
        threads.append(threading.current_thread())
        return real_hash(password)

    monkeypatch.setattr(passwords, "hash_password", spy)
    await env.core.change_password(env.seed("u", "FunctionOwner"), "new")
    assert threads and threading.main_thread() not in threads


@pytest.mark.parametrize(
    "password_hash",
    [
        "",
        "garbage",
        "$argon2id$v=19$m=19456,t=2,p=1$é$é",
        "$argon2i$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA",
    ],
)
def test_verify_password_never_raises(password_hash: str) -> None:
    assert passwords.verify_password(password_hash, "pw") is False


def test_verify_password_refuses_overlong_and_unencodable_passwords() -> None:
    good = cached_hash("pw")
    assert passwords.verify_password(good, "pw")
    assert not passwords.verify_password(good, "pw" + "x" * 1024)
    assert not passwords.verify_password(good, "\udcff")


def test_generated_passwords_are_uuid4_hex() -> None:
    first, second = passwords.generate_password(), passwords.generate_password()
    assert first != second
    assert uuid.UUID(hex=first).version == 4 and first == uuid.UUID(hex=first).hex


@asynctest
async def test_deleted_users_token_stays_dead_when_the_id_is_registered_again(env: Env) -> None:
    """Tokens are bound to the account, not just to the id (Kettle: deletion kills tokens for good)."""
    admin = env.seed("admin", "PlatformAdmin")
    await env.core.register(admin, "bob", "pw1", "PlatformAdmin", "")
    old_token = await env.core.login("bob", "pw1")
    await env.core.delete(admin, "bob")
    await env.core.register(admin, "bob", "pw2", "DataOwner", "x")
    await expect("authentication failed", env.core.authenticate("bob", old_token))
    new_token = await env.core.login("bob", "pw2")
    assert (await env.core.authenticate("bob", new_token)).role == "DataOwner-x"
