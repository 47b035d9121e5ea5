"""Roles and token invalidation, Kettle's deliberate deviations (spec §12 rows 2, 22, 23; docs/users.md).

- Only a PlatformAdmin registers or promotes a user to DataOwnerManager, so the
  takeover chain "a FunctionOwner registers a manager of group X, who resets X's
  data owners' passwords" fails at its first step.
- A DataOwnerManager updates or resets only users whose *stored* role is its
  group's DataOwner.
- A password reset, a password change and a role change end every token issued
  before them: each moves the user's token generation on, and a token carries
  the generation it was issued at (the extra ``gen`` claim).

The live tests talk to a real platform through the SDK and raw gRPC stubs over
attested TLS; the rest run the authentication core on its own repository port.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import jwt
import pytest

from conftest import Platform
from kettle.errors import AuthenticationError, KettleError
from kettle.model.users import MAX_GENERATION, UserRecord
from kettle.rpc.generated import teaclave_authentication_service_pb2 as pb
from kettle.rpc.generated import teaclave_authentication_service_pb2_grpc as pb_grpc
from kettle.sdk import AuthenticationClient, FrontendClient
from kettle.sdk.attested import verify_endpoint
from kettle.services.authentication.core import REWRITE_ATTEMPTS, AuthenticationCore
from kettle.services.authentication.tokens import Claims, TokenAuthority, generate_secret
from test_auth_core import DAY, T0, Clock, MemoryRepo, asynctest, cached_hash

RUN = uuid.uuid4().hex[:8]
GROUP_X, GROUP_Y = f"rx{RUN}", f"ry{RUN}"
UNAUTH = grpc.StatusCode.UNAUTHENTICATED
ROLES: dict[str, tuple[str, str]] = {
    "PA": ("PlatformAdmin", ""),
    "FO": ("FunctionOwner", ""),
    "DOM-X": ("DataOwnerManager", GROUP_X),
    "DOM-Y": ("DataOwnerManager", GROUP_Y),
    "DO-X": ("DataOwner", GROUP_X),
    "DO-Y": ("DataOwner", GROUP_Y),
}


def role_string(spec: str) -> str:
    role, attribute = ROLES[spec]
    return f"{role}-{attribute}" if role.startswith("DataOwner") else role


def claim(token: str, name: str) -> object:
    """One claim of a token, read without verifying (the service did that)."""
    return jwt.decode(token, options={"verify_signature": False})[name]


def refusal(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(KettleError) as info:
        call()
    return info.value.code, info.value.message


# --- a live platform -------------------------------------------------------------------------


@dataclass
class World:
    platform: Platform
    admin: AuthenticationClient

    def create(self, spec: str) -> tuple[str, str]:
        """A fresh user of role ``spec``, registered by the admin; returns (id, password)."""
        user_id = f"{spec.lower()}-{RUN}-{uuid.uuid4().hex[:8]}"
        password = f"pw-{user_id}"
        self.admin.user_register(user_id, password, *ROLES[spec])
        return user_id, password

    def client(self, user_id: str, password: str) -> AuthenticationClient:
        client = self.platform.auth_client()
        client.user_login(user_id, password)
        return client

    def role_after_login(self, user_id: str, password: str) -> str:
        """The role a fresh login with ``password`` gets: the stored role, and proof the password holds."""
        with self.platform.auth_client() as client:
            return str(claim(client.user_login(user_id, password), "role"))

    def frontend(self, user_id: str, token: str) -> FrontendClient:
        return FrontendClient(self.platform.frontend_address, self.platform.trust(), user_id, token)


@pytest.fixture(scope="module")
def world(full_platform: Platform) -> Iterator[World]:
    with full_platform.admin() as admin:
        yield World(full_platform, admin)


Takeover = Callable[[AuthenticationClient, str, str, str], object]
"""One way to become a manager of X: (the caller's client, its id, a data owner of X, an unused id)."""

TAKEOVER_PATHS: dict[str, Takeover] = {
    "register a manager of X": lambda client, me, victim, unused: client.user_register(
        unused, "pw", "DataOwnerManager", GROUP_X),
    "promote X's data owner": lambda client, me, victim, unused: client.user_update(
        victim, "pw", "DataOwnerManager", GROUP_X),
    "promote itself": lambda client, me, victim, unused: client.user_update(me, "pw", "DataOwnerManager", GROUP_X),
}


@pytest.mark.parametrize("caller", ["FO", "DOM-X", "DOM-Y", "DO-X"])
def test_only_an_admin_makes_a_data_owner_manager(world: World, caller: str) -> None:
    """§12 row 22: no one but a PlatformAdmin creates or promotes to DataOwnerManager, by any path;
    a FunctionOwner (the reference let it) is refused at the takeover chain's first step."""
    caller_id, caller_pw = world.create(caller)
    victim, victim_pw = world.create("DO-X")
    unused = f"dom-new-{RUN}-{uuid.uuid4().hex[:8]}"
    with world.client(caller_id, caller_pw) as client:
        for path, attempt in TAKEOVER_PATHS.items():
            refused = refusal(functools.partial(attempt, client, caller_id, victim, unused))
            assert refused == (UNAUTH, "permission denied"), path
    assert world.role_after_login(victim, victim_pw) == role_string("DO-X")
    assert world.role_after_login(caller_id, caller_pw) == role_string(caller)
    assert unused not in world.admin.list_users("all")


def test_takeover_refused_on_the_wire(world: World) -> None:
    """The same refusal as Teaclave's clients see it: a raw UserRegister from a FunctionOwner."""
    fo, fo_pw = world.create("FO")
    unused = f"dom-raw-{RUN}-{uuid.uuid4().hex[:8]}"
    with world.client(fo, fo_pw) as client:
        token = client.user_login(fo, fo_pw)
    endpoint = verify_endpoint(world.platform.auth_address, "authentication", world.platform.trust())
    channel = endpoint.channel(world.platform.trust())
    try:
        stub = pb_grpc.TeaclaveAuthenticationApiStub(channel)
        request = pb.UserRegisterRequest(id=unused, password="pw", role="DataOwnerManager", attribute=GROUP_X)
        with pytest.raises(grpc.RpcError) as info:
            stub.UserRegister(request, metadata=(("id", fo), ("token", token)), timeout=30)
        assert (info.value.code(), info.value.details()) == (UNAUTH, "permission denied")  # type: ignore[attr-defined]
    finally:
        channel.close()
    assert unused not in world.admin.list_users("all")


def test_admin_still_makes_managers(world: World) -> None:
    """The one path left: a PlatformAdmin registers a manager and promotes a data owner."""
    manager, manager_pw = world.create("DOM-X")
    promoted, _ = world.create("DO-X")
    world.admin.user_update(promoted, "promoted-pw", "DataOwnerManager", GROUP_X)
    assert world.role_after_login(manager, manager_pw) == role_string("DOM-X")
    assert world.role_after_login(promoted, "promoted-pw") == role_string("DOM-X")


@pytest.mark.parametrize("target", ["PA", "FO", "DOM-X", "DOM-Y", "DO-Y", "former DO-X"])
def test_manager_touches_only_its_groups_data_owners(world: World, target: str) -> None:
    """§12 row 2: a DataOwnerManager-X may neither update nor reset a user whose *stored* role is not
    DataOwner-X, not even one that was X's data owner until an admin moved it."""
    manager, manager_pw = world.create("DOM-X")
    if target == "former DO-X":
        target_id, _ = world.create("DO-X")
        world.admin.user_update(target_id, "moved-pw", "FunctionOwner")
        target_pw, target_role = "moved-pw", "FunctionOwner"
    else:
        target_id, target_pw = world.create(target)
        target_role = role_string(target)
    with world.client(manager, manager_pw) as client:
        assert refusal(lambda: client.user_update(target_id, "taken", "DataOwner", GROUP_X)) == (
            UNAUTH, "permission denied")
        assert refusal(lambda: client.reset_user_password(target_id)) == (UNAUTH, "permission denied")
    assert world.role_after_login(target_id, target_pw) == target_role  # password and role untouched


def test_manager_follows_the_stored_role(world: World) -> None:
    """The stored role decides, both ways: a user an admin moved *into* group X is the manager's."""
    manager, manager_pw = world.create("DOM-X")
    newcomer, _ = world.create("FO")
    world.admin.user_update(newcomer, "joined-pw", "DataOwner", GROUP_X)
    with world.client(manager, manager_pw) as client:
        password = client.reset_user_password(newcomer)
        client.user_update(newcomer, "managed-pw", "DataOwner", GROUP_X)
    assert password != "managed-pw"
    assert world.role_after_login(newcomer, "managed-pw") == role_string("DO-X")


def _works(world: World, user_id: str, token: str) -> None:
    """``token`` authenticates at the frontend (through the internal token check) and at the
    authentication API (where a DataOwner's ListUsers is refused only *after* authentication)."""
    with world.frontend(user_id, token) as frontend:
        frontend.list_functions()
        assert refusal(lambda: frontend.get_task(f"task-{uuid.uuid4()}")) == (
            grpc.StatusCode.INVALID_ARGUMENT, "invalid task id")
    with world.platform.auth_client() as client:
        client.use_credential(user_id, token)
        assert refusal(lambda: client.list_users(GROUP_X)) == (UNAUTH, "permission denied")


def _dead(world: World, user_id: str, token: str) -> None:
    """``token`` gets the reference's credential errors everywhere."""
    with world.frontend(user_id, token) as frontend:
        assert refusal(frontend.list_functions) == (UNAUTH, "incorrent credential")
        assert refusal(lambda: frontend.get_task(f"task-{uuid.uuid4()}")) == (UNAUTH, "incorrent credential")
    with world.platform.auth_client() as client:
        client.use_credential(user_id, token)
        assert refusal(lambda: client.list_users(GROUP_X)) == (UNAUTH, "authentication failed")
        assert refusal(lambda: client.user_change_password("from-an-old-token")) == (
            UNAUTH, "authentication failed")


def _reset_by_admin(world: World, user_id: str, client: AuthenticationClient) -> str:
    return world.admin.reset_user_password(user_id)


def _reset_by_manager(world: World, user_id: str, client: AuthenticationClient) -> str:
    manager, manager_pw = world.create("DOM-X")
    with world.client(manager, manager_pw) as manager_client:
        return manager_client.reset_user_password(user_id)


def _change_own_password(world: World, user_id: str, client: AuthenticationClient) -> str:
    client.user_change_password("changed-by-owner")
    return "changed-by-owner"


def _change_role(world: World, user_id: str, client: AuthenticationClient) -> str:
    world.admin.user_update(user_id, "same-pw", "DataOwner", GROUP_Y)
    return "same-pw"


CHANGES = {"reset by admin": _reset_by_admin, "reset by manager": _reset_by_manager,
           "own password change": _change_own_password, "role change": _change_role}


@pytest.mark.parametrize("change", list(CHANGES))
def test_change_ends_earlier_tokens(world: World, change: str) -> None:
    """§12 row 23: after a reset, a password change or a role change, every token issued before it
    fails at the frontend and at the authentication API; a token issued after it works."""
    user_id, password = world.create("DO-X")
    with world.client(user_id, password) as client:
        old = client.user_login(user_id, password)
        _works(world, user_id, old)
        new_password = CHANGES[change](world, user_id, client)
    _dead(world, user_id, old)
    with world.platform.auth_client() as client:
        fresh = client.user_login(user_id, new_password)
    assert claim(fresh, "gen") == claim(old, "gen") + 1  # type: ignore[operator]
    _works(world, user_id, fresh)


def test_untouched_users_keep_their_tokens(world: World) -> None:
    """A change ends one user's tokens only, and a failed attempt at a change ends none."""
    user_id, password = world.create("DO-X")
    bystander, bystander_pw = world.create("DO-X")
    with world.client(user_id, password) as client, world.client(bystander, bystander_pw) as other:
        token = client.user_login(user_id, password)
        bystander_token = other.user_login(bystander, bystander_pw)
        with world.client(*world.create("FO")) as fo:
            assert refusal(lambda: fo.reset_user_password(user_id)) == (UNAUTH, "permission denied")
        assert refusal(lambda: client.user_change_password("x" * 1025)) == (UNAUTH, "invalid password")
        world.admin.reset_user_password(bystander)
    _works(world, user_id, token)
    _dead(world, bystander, bystander_token)


def test_cli_passwd_logs_in_again(world: World) -> None:
    """`kettle user passwd` ends the saved token with the change, so it saves a fresh one."""
    user_id, password = world.create("DO-X")
    platform = world.platform

    def kettle(*args: str, secret: str | None = None) -> str:
        result = platform.kettle(*args, env={"KETTLE_PASSWORD": secret} if secret is not None else None)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    kettle("user", "login", user_id, secret=password)
    old_token = json.loads((platform.home / "credentials.json").read_text())["token"]
    kettle("user", "passwd", secret="cli-changed")
    saved = json.loads((platform.home / "credentials.json").read_text())
    assert saved["id"] == user_id
    _dead(world, user_id, old_token)
    _works(world, user_id, saved["token"])


# --- the core on its own repository port ------------------------------------------------------


class Env:
    def __init__(self, repo: MemoryRepo | None = None) -> None:
        self.repo = repo or MemoryRepo()
        self.secret = generate_secret()
        self.tokens = TokenAuthority(self.secret, clock=Clock())
        self.core = AuthenticationCore(self.repo, self.tokens)

    def store(self, record: UserRecord) -> None:
        self.repo.data[record.id] = record.to_bytes()

    def record(self, user_id: str) -> UserRecord:
        return UserRecord.from_bytes(self.repo.data[user_id])


ADMIN = Claims(sub="admin", role="PlatformAdmin", iss="Teaclave", exp=T0 + DAY)


def v1_record(user_id: str, role: str, password: str) -> bytes:
    """A record as Kettle wrote it before token generations."""
    return json.dumps({"v": 1, "id": user_id, "role": role, "password_hash": cached_hash(password),
                       "account": ""}, separators=(",", ":"), sort_keys=True).encode()


@asynctest
async def test_records_and_tokens_from_before_generations_keep_working() -> None:
    """A stored version-1 record loads at generation 0, and a token with Teaclave's four claims only
    (as issued before) authenticates until the user's first credential change."""
    env = Env()
    env.store(UserRecord("admin", "PlatformAdmin", cached_hash("pw"), "acct"))
    env.repo.data["old"] = v1_record("old", "DataOwner-x", "pw")
    assert env.record("old").generation == 0
    legacy = jwt.encode({"sub": "old", "role": "DataOwner-x", "iss": "Teaclave", "exp": T0 + DAY},
                        env.secret, algorithm="HS512")
    assert (await env.core.authenticate_internal("old", legacy)).gen == 0
    token = await env.core.login("old", "pw")
    assert claim(token, "gen") == 0
    await env.core.reset_password(ADMIN, "old")
    assert json.loads(env.repo.data["old"])["v"] == 2 and env.record("old").generation == 1
    for dead in (legacy, token):
        with pytest.raises(AuthenticationError, match="^authentication failed$"):
            await env.core.authenticate_internal("old", dead)


def test_user_record_generation_roundtrip_and_bounds() -> None:
    record = UserRecord("alice", "DataOwner-a", "$argon2id$x", "acct", generation=7)
    assert UserRecord.from_bytes(record.to_bytes()) == record
    changed = record.with_credentials("FunctionOwner", "$argon2id$y")
    assert (changed.id, changed.account, changed.role, changed.generation) == ("alice", "acct", "FunctionOwner", 8)
    with pytest.raises(ValueError):
        UserRecord("a", "PlatformAdmin", "h", generation=MAX_GENERATION).with_credentials("PlatformAdmin", "h")


@pytest.mark.parametrize("generation", ["true", "1.0", "-1", '"1"', "null", str(MAX_GENERATION + 1)])
def test_malformed_generation_is_refused(generation: str) -> None:
    raw = b'{"account":"","generation":' + generation.encode() + b',"id":"a","password_hash":"h",' \
        b'"role":"PlatformAdmin","v":2}'
    with pytest.raises(ValueError):
        UserRecord.from_bytes(raw)


@pytest.mark.parametrize("raw", [
    b'{"account":"","generation":0,"id":"a","password_hash":"h","role":"PlatformAdmin","v":1}',
    b'{"account":"","id":"a","password_hash":"h","role":"PlatformAdmin","v":2}',
])
def test_record_fields_must_match_their_version(raw: bytes) -> None:
    with pytest.raises(ValueError):
        UserRecord.from_bytes(raw)


@pytest.mark.parametrize("gen", [1, -1, True, 0.0, "0", None])
@asynctest
async def test_token_of_another_generation_fails(gen: object) -> None:
    env = Env()
    env.store(UserRecord("u", "FunctionOwner", cached_hash("pw")))
    forged = jwt.encode({"sub": "u", "role": "FunctionOwner", "iss": "Teaclave", "exp": T0 + DAY, "gen": gen},
                        env.secret, algorithm="HS512")
    with pytest.raises(AuthenticationError, match="^authentication failed$"):
        await env.core.authenticate("u", forged)


class RacingRepo(MemoryRepo):
    """A repository where another writer changes the record between our read and our write,
    as a concurrent change on another connection (or instance of the service) would."""

    def __init__(self, interleaved: int) -> None:
        super().__init__()
        self.interleaved = interleaved

    async def replace(self, current: UserRecord, new: UserRecord) -> bool:
        if self.interleaved > 0:
            self.interleaved -= 1
            rival = UserRecord.from_bytes(self.data[current.id]).with_credentials(current.role, cached_hash("rival"))
            self.data[current.id] = rival.to_bytes()
        return await super().replace(current, new)


@asynctest
async def test_a_concurrent_change_cannot_revive_a_generation() -> None:
    """A change that lost a race is checked and applied again on the fresh record, so it lands at a
    generation of its own and a token issued in between dies with it."""
    env = Env(RacingRepo(interleaved=1))
    env.store(UserRecord("u", "DataOwner-x", cached_hash("pw")))
    new_password = await env.core.reset_password(ADMIN, "u")
    assert env.record("u").generation == 2
    await env.core.login("u", new_password)
    with pytest.raises(AuthenticationError, match="^authentication failed$"):
        await env.core.login("u", "rival")


@asynctest
async def test_the_loser_of_a_race_is_rechecked() -> None:
    """A password change whose token was ended by a change that landed first is refused."""
    env = Env(RacingRepo(interleaved=1))
    env.store(UserRecord("u", "DataOwner-x", cached_hash("pw")))
    caller = await env.core.authenticate("u", await env.core.login("u", "pw"))
    with pytest.raises(AuthenticationError, match="^authentication failed$"):
        await env.core.change_password(caller, "mine")
    assert env.record("u").generation == 1  # only the rival's change


@asynctest
async def test_endless_contention_gives_up_cleanly() -> None:
    env = Env(RacingRepo(interleaved=REWRITE_ATTEMPTS))
    env.store(UserRecord("u", "DataOwner-x", cached_hash("pw")))
    with pytest.raises(AuthenticationError, match="^service internal error$"):
        await env.core.reset_password(ADMIN, "u")
    assert env.record("u").generation == REWRITE_ATTEMPTS  # the rivals' writes only
