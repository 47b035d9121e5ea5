"""The authentication API over the real running service (spec §1.5, §1.6, §2.1-§2.4, §12 rows 2-4, 22).

Every test talks gRPC over attested TLS to the session's platform, so user ids
carry a random suffix: the platform is shared with other test modules.
Roles are written as short specs: PA, FO, DOM-X, DOM-Y, DOM- (empty group),
DO-X, DO-Y, where X and Y are group names unique to this module run.
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import jwt
import pytest

from conftest import Platform
from kettle.errors import KettleError
from kettle.rpc.generated import teaclave_authentication_service_pb2 as pb
from kettle.rpc.generated import teaclave_authentication_service_pb2_grpc as pb_grpc
from kettle.sdk import AuthenticationClient
from kettle.sdk.attested import AttestedEndpoint, verify_endpoint

RUN = uuid.uuid4().hex[:8]
GROUP_X = f"gx{RUN}"
GROUP_Y = f"gy{RUN}"
UNAUTH = grpc.StatusCode.UNAUTHENTICATED
MAX_MESSAGE = 4 * 1024 * 1024

ROLES: dict[str, tuple[str, str]] = {
    "PA": ("PlatformAdmin", ""),
    "FO": ("FunctionOwner", ""),
    "DOM-X": ("DataOwnerManager", GROUP_X),
    "DOM-Y": ("DataOwnerManager", GROUP_Y),
    "DOM-": ("DataOwnerManager", ""),
    "DO-X": ("DataOwner", GROUP_X),
    "DO-Y": ("DataOwner", GROUP_Y),
}
CALLERS = ("PA", "FO", "DOM-X", "DO-X")


def new_id(prefix: str) -> str:
    """A user id no other test (or test module) uses."""
    return f"{prefix}-{RUN}-{uuid.uuid4().hex[:8]}"


def role_string(spec: str) -> str:
    """The role string a token carries for a role spec (§2.1)."""
    role, attribute = ROLES[spec]
    return f"{role}-{attribute}" if role.startswith("DataOwner") else role


def token_role(token: str) -> str:
    """The role claim of a token (read without verifying: the service did that)."""
    return jwt.decode(token, options={"verify_signature": False})["role"]


def expect_error(call: Callable[[], object], message: str, code: grpc.StatusCode = UNAUTH) -> None:
    """The call fails with exactly this status code and message."""
    with pytest.raises(KettleError) as info:
        call()
    assert (info.value.code, info.value.message) == (code, message)


@dataclass
class Actors:
    """The bootstrap admin plus one logged-in caller per role category."""

    platform: Platform
    admin: AuthenticationClient
    admin_token: str
    callers: dict[str, AuthenticationClient] = field(default_factory=dict)
    caller_ids: dict[str, str] = field(default_factory=dict)

    def create(self, spec: str, password: str | None = None) -> tuple[str, str]:
        """Register (as admin) a fresh user of role ``spec``; returns (id, password)."""
        user_id = new_id(spec.lower().rstrip("-"))
        password = f"pw-{user_id}" if password is None else password
        self.admin.user_register(user_id, password, *ROLES[spec])
        return user_id, password

    def login(self, user_id: str, password: str) -> str:
        """A fresh client's login; returns the token."""
        with self.platform.auth_client() as client:
            return client.user_login(user_id, password)

    def exists(self, user_id: str) -> bool:
        return user_id in self.admin.list_users("all")


@pytest.fixture(scope="module")
def actors(platform: Platform) -> Iterator[Actors]:
    admin = platform.auth_client()
    result = Actors(platform, admin, admin.user_login("admin", "teaclave"))
    for spec in CALLERS:
        user_id, password = result.create(spec)
        client = platform.auth_client()
        client.user_login(user_id, password)
        result.callers[spec], result.caller_ids[spec] = client, user_id
    yield result
    for client in (admin, *result.callers.values()):
        client.close()


@pytest.fixture(scope="module")
def endpoint(platform: Platform) -> AttestedEndpoint:
    return verify_endpoint(platform.auth_address, "authentication", platform.trust())


@pytest.fixture(scope="module")
def raw_stub(platform: Platform, endpoint: AttestedEndpoint) -> Iterator[pb_grpc.TeaclaveAuthenticationApiStub]:
    """A bare stub on the attested channel, for requests the SDK would never send."""
    channel = endpoint.channel(platform.trust())
    yield pb_grpc.TeaclaveAuthenticationApiStub(channel)
    channel.close()


def raw_error(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()  # type: ignore[attr-defined]


# --- the permission matrix (§2.4, with the §12 row 2 fix) ------------------------------------

REGISTER_MATRIX = [
    *[("PA", new, True) for new in ("PA", "FO", "DOM-X", "DOM-Y", "DO-X", "DO-Y")],
    # §12 row 22 (Kettle deviates): a FunctionOwner registers no one, a manager least of all.
    ("FO", "PA", False), ("FO", "FO", False), ("FO", "DOM-X", False), ("FO", "DOM-Y", False),
    ("FO", "DOM-", False), ("FO", "DO-X", False),
    ("DOM-X", "PA", False), ("DOM-X", "FO", False), ("DOM-X", "DOM-X", False), ("DOM-X", "DOM-Y", False),
    ("DOM-X", "DO-X", True), ("DOM-X", "DO-Y", False),
    *[("DO-X", new, False) for new in ("PA", "FO", "DOM-X", "DO-X", "DO-Y")],
]


@pytest.mark.parametrize(("caller", "new_role", "allowed"), REGISTER_MATRIX)
def test_register_matrix(actors: Actors, caller: str, new_role: str, allowed: bool) -> None:
    """§2.4 UserRegister: each caller category may create exactly the new roles of the matrix."""
    user_id = new_id("reg")
    register = lambda: actors.callers[caller].user_register(user_id, "pw", *ROLES[new_role])  # noqa: E731
    if allowed:
        register()
        assert token_role(actors.login(user_id, "pw")) == role_string(new_role)
    else:
        expect_error(register, "permission denied")
        assert not actors.exists(user_id)


UPDATE_MATRIX = [
    ("PA", "DO-X", "FO", True), ("PA", "PA", "DO-Y", True), ("PA", "FO", "DOM-X", True),
    ("PA", "DOM-X", "PA", True),
    ("FO", "DO-X", "DO-X", False), ("FO", "FO", "FO", False), ("FO", "DOM-X", "DOM-Y", False),
    ("DOM-X", "DO-X", "DO-X", True),
    ("DOM-X", "DO-X", "DO-Y", False),
    ("DOM-X", "DO-X", "DOM-X", False),
    # §12 row 2 (SHOULD fix): the target's current role must be DataOwner-X too.
    ("DOM-X", "DO-Y", "DO-X", False), ("DOM-X", "PA", "DO-X", False), ("DOM-X", "FO", "DO-X", False),
    ("DOM-X", "DOM-X", "DO-X", False), ("DOM-X", "DOM-Y", "DO-X", False),
    ("DO-X", "DO-X", "DO-X", False), ("DO-X", "DO-Y", "DO-X", False),
]


@pytest.mark.parametrize(("caller", "target", "new_role", "allowed"), UPDATE_MATRIX)
def test_update_matrix(actors: Actors, caller: str, target: str, new_role: str, allowed: bool) -> None:
    """§2.4 UserUpdate incl. §12 row 2: allowed updates replace password and role; denied ones change nothing."""
    target_id, old_password = actors.create(target)
    update = lambda: actors.callers[caller].user_update(target_id, "new-pw", *ROLES[new_role])  # noqa: E731
    if allowed:
        update()
        assert token_role(actors.login(target_id, "new-pw")) == role_string(new_role)
    else:
        expect_error(update, "permission denied")
        assert token_role(actors.login(target_id, old_password)) == role_string(target)


TARGET_MATRIX = [
    *[("PA", target, True) for target in ("PA", "FO", "DOM-X", "DO-X")],
    *[("FO", target, False) for target in ("FO", "DOM-X", "DO-X")],
    ("DOM-X", "DO-X", True),
    *[("DOM-X", target, False) for target in ("DO-Y", "DOM-X", "PA", "FO")],
    *[("DO-X", target, False) for target in ("DO-X", "DO-Y")],
]


@pytest.mark.parametrize(("caller", "target", "allowed"), TARGET_MATRIX)
def test_reset_password_matrix(actors: Actors, caller: str, target: str, allowed: bool) -> None:
    """§2.4 ResetUserPassword: a 32-hex-digit password, role kept, only for targets the caller manages."""
    target_id, old_password = actors.create(target)
    reset = lambda: actors.callers[caller].reset_user_password(target_id)  # noqa: E731
    if allowed:
        password = reset()
        assert re.fullmatch(r"[0-9a-f]{32}", password)
        assert token_role(actors.login(target_id, password)) == role_string(target)
    else:
        expect_error(reset, "permission denied")
        assert token_role(actors.login(target_id, old_password)) == role_string(target)


@pytest.mark.parametrize(("caller", "target", "allowed"), TARGET_MATRIX)
def test_delete_matrix(actors: Actors, caller: str, target: str, allowed: bool) -> None:
    """§2.4 DeleteUser: only targets the caller manages are removed."""
    target_id, _ = actors.create(target)
    delete = lambda: actors.callers[caller].delete_user(target_id)  # noqa: E731
    if allowed:
        delete()
        assert not actors.exists(target_id)
    else:
        expect_error(delete, "permission denied")
        assert actors.exists(target_id)


@dataclass
class ListGroup:
    """A group L of this test alone, so a manager's listing can be compared exactly."""

    name: str
    members: list[str]
    others: list[str]
    callers: dict[str, AuthenticationClient]
    manager_id: str


@pytest.fixture(scope="module")
def list_group(actors: Actors) -> Iterator[ListGroup]:
    group, other_group = f"gl{RUN}", f"gm{RUN}"
    admin = actors.admin
    members = sorted(new_id(f"lm{i}") for i in range(3))
    for member in members:
        admin.user_register(member, "pw", "DataOwner", group)
    others = [new_id("lo-dom"), new_id("lo-do"), new_id("lo-fo")]
    admin.user_register(others[0], "pw", "DataOwnerManager", group)  # a manager is not a member
    admin.user_register(others[1], "pw", "DataOwner", other_group)
    admin.user_register(others[2], "pw", "FunctionOwner", "")
    callers: dict[str, AuthenticationClient] = {"PA": actors.callers["PA"], "FO": actors.callers["FO"]}
    ids: dict[str, str] = {}
    for spec, (role, attribute) in {"DOM-L": ("DataOwnerManager", group), "DO-L": ("DataOwner", group)}.items():
        user_id = ids[spec] = new_id(spec.lower())
        admin.user_register(user_id, "pw", role, attribute)
        if role == "DataOwner":
            members = sorted([*members, user_id])
        client = actors.platform.auth_client()
        client.user_login(user_id, "pw")
        callers[spec] = client
    yield ListGroup(group, members, others, callers, ids["DOM-L"])
    callers["DOM-L"].close()
    callers["DO-L"].close()


LIST_CASES = [
    ("PA", "anything at all", "all"),
    ("PA", "L", "all"),
    ("DOM-L", "L", "group"),
    ("DOM-L", "M", "denied"),
    ("DOM-L", "own-id", "denied"),
    ("FO", "L", "denied"),
    ("DO-L", "L", "denied"),
]


@pytest.mark.parametrize(("caller", "request_id", "expected"), LIST_CASES)
def test_list_users(actors: Actors, list_group: ListGroup, caller: str, request_id: str, expected: str) -> None:
    """§2.4 ListUsers: admin sees all ids sorted; DOM-L only with id = its group, and only DataOwner-L ids."""
    requested = {"L": list_group.name, "M": f"gm{RUN}", "own-id": list_group.manager_id}.get(request_id, request_id)
    call = lambda: list_group.callers[caller].list_users(requested)  # noqa: E731
    if expected == "denied":
        expect_error(call, "permission denied")
    elif expected == "group":
        assert call() == list_group.members
    else:
        ids = call()
        assert {"admin", *list_group.members, *list_group.others} <= set(ids)
        assert ids == sorted(ids, key=str.encode)


@pytest.mark.parametrize("caller", CALLERS)
def test_change_password_any_role(actors: Actors, caller: str) -> None:
    """§2.4 UserChangePassword: every role may change its own password; the role stays."""
    user_id, old_password = actors.create(caller)
    with actors.platform.auth_client() as client:
        client.user_login(user_id, old_password)
        expect_error(lambda: client.user_change_password(""), "authentication failed")
        expect_error(lambda: client.user_change_password("x" * 1025), "invalid password")
        client.user_change_password("changed-pw")  # ends this client's token (tests/test_roles.py)
    assert token_role(actors.login(user_id, "changed-pw")) == role_string(caller)
    expect_error(lambda: actors.login(user_id, old_password), "authentication failed")


# --- the order of checks (§2.4 "first failing step decides") ---------------------------------


@pytest.fixture(scope="module")
def existing(actors: Actors) -> str:
    return actors.create("DO-X")[0]


ORDER_CASES: list[tuple[str, str, Callable[[AuthenticationClient, str], Any], str]] = [
    ("DO-X", "register existing id beats permission", lambda c, e: c.user_register(e, "pw", "PlatformAdmin"), "user id exist"),
    ("PA", "register existing id beats invalid role", lambda c, e: c.user_register(e, "pw", "Nobody"), "user id exist"),
    ("DO-X", "register invalid role beats permission", lambda c, e: c.user_register(new_id("o"), "pw", "Nobody"), "invalid role"),
    ("DO-X", "register empty id first", lambda c, e: c.user_register("", "pw", "Nobody"), "invalid user id"),
    ("DO-X", "register over-long password after permission", lambda c, e: c.user_register(new_id("o"), "x" * 2000, "PlatformAdmin"), "permission denied"),
    ("PA", "register over-long password", lambda c, e: c.user_register(new_id("o"), "x" * 1025, "FunctionOwner"), "invalid password"),
    ("DO-X", "update unknown id beats role and permission", lambda c, e: c.user_update(new_id("o"), "pw", "Nobody"), "invalid user id"),
    ("DO-X", "update invalid role beats permission", lambda c, e: c.user_update(e, "pw", "Nobody"), "invalid role"),
    ("DO-X", "update empty id", lambda c, e: c.user_update("", "pw", "DataOwner", GROUP_X), "invalid user id"),
    ("PA", "update over-long password", lambda c, e: c.user_update(e, "é" * 513, "DataOwner", GROUP_X), "invalid password"),
    ("PA", "reset unknown target", lambda c, e: c.reset_user_password(new_id("o")), "permission denied"),
    ("PA", "delete unknown target", lambda c, e: c.delete_user(new_id("o")), "permission denied"),
    ("DO-X", "reset empty id", lambda c, e: c.reset_user_password(""), "invalid user id"),
    ("DO-X", "delete empty id", lambda c, e: c.delete_user(""), "invalid user id"),
    ("DO-X", "list empty id beats permission", lambda c, e: c.list_users(""), "invalid user id"),
    ("PA", "list empty id", lambda c, e: c.list_users(""), "invalid user id"),
]


@pytest.mark.parametrize(("caller", "case", "call", "message"), ORDER_CASES, ids=[c[1] for c in ORDER_CASES])
def test_error_order(actors: Actors, existing: str, caller: str, case: str,
                     call: Callable[[AuthenticationClient, str], Any], message: str) -> None:
    """§2.4 step order: the first failing step names the error, always with UNAUTHENTICATED."""
    expect_error(lambda: call(actors.callers[caller], existing), message)


@pytest.mark.parametrize("role", ["", "Nobody", "platformadmin", "PlatformAdmin ", "DataOwner-x", "Invalid", "dataowner"])
def test_register_unknown_role(actors: Actors, role: str) -> None:
    """§2.1: roles match one of the four names exactly (case-sensitive), else "invalid role"."""
    expect_error(lambda: actors.admin.user_register(new_id("role"), "pw", role, "x"), "invalid role")


# --- hostile inputs ------------------------------------------------------------------------

BAD_IDS = ["", "a" * 129, "has space", "new\nline", "tab\tid", "ünïcödé", "del\x7f", "nul\x00id", " lead"]


@pytest.mark.parametrize("bad_id", BAD_IDS, ids=repr)
def test_hostile_user_ids(actors: Actors, bad_id: str) -> None:
    """User ids must be 1..128 printable ASCII chars without spaces: "invalid user id" everywhere, no login."""
    admin = actors.admin
    expect_error(lambda: admin.user_register(bad_id, "pw", "FunctionOwner"), "invalid user id")
    expect_error(lambda: admin.user_update(bad_id, "pw", "FunctionOwner"), "invalid user id")
    expect_error(lambda: admin.reset_user_password(bad_id), "invalid user id")
    expect_error(lambda: admin.delete_user(bad_id), "invalid user id")
    expect_error(lambda: actors.login(bad_id, "pw"), "authentication failed")


def test_longest_user_id_works(actors: Actors) -> None:
    """The 128-character bound is inclusive: such a user registers and logs in."""
    user_id = (new_id("long") + "x" * 128)[:128]
    actors.admin.user_register(user_id, "pw", "FunctionOwner")
    assert token_role(actors.login(user_id, "pw")) == "FunctionOwner"


@pytest.mark.parametrize(("password", "accepted"), [
    ("x" * 1024, True), ("é" * 512, True), ("x" * 1025, False), ("é" * 513, False), ("x" * 100_000, False),
])
def test_password_length_bound(actors: Actors, password: str, accepted: bool) -> None:
    """Passwords over 1024 UTF-8 bytes are "invalid password"; up to 1024 they register and log in."""
    user_id = new_id("pwlen")
    register = lambda: actors.admin.user_register(user_id, password, "FunctionOwner")  # noqa: E731
    if accepted:
        register()
        assert token_role(actors.login(user_id, password)) == "FunctionOwner"
    else:
        expect_error(register, "invalid password")
        assert not actors.exists(user_id)
        expect_error(lambda: actors.login(user_id, password), "authentication failed")


def test_login_failures(actors: Actors) -> None:
    """UserLogin step 1: wrong password, unknown user, empty id/password all read "authentication failed"."""
    user_id, password = actors.create("FO")
    empty_user, _ = actors.create("FO", password="")  # accepted at registration, can never log in
    for login_id, login_password in [
        (user_id, "wrong"), (user_id, password + "x"), (user_id, ""), (new_id("ghost"), password),
        ("", password), (empty_user, ""), ("admin", "x" * 5000),
    ]:
        expect_error(lambda: actors.login(login_id, login_password), "authentication failed")
    assert actors.login(user_id, password)


@pytest.fixture(scope="module")
def admin_token(actors: Actors) -> str:
    return actors.admin_token


def metadata_cases(token: str) -> list[tuple[tuple[tuple[str, Any], ...], str]]:
    return [
        ((), "missing user id"),
        ((("token", token),), "missing user id"),
        ((("id-bin", b"admin"), ("token", token)), "missing user id"),
        ((("id", "admin"),), "missing token"),
        ((("id", "admin"), ("token-bin", token.encode())), "missing token"),
        ((("id", "admin"), ("token", "")), "authentication failed"),
        ((("id", ""), ("token", token)), "authentication failed"),
    ]


def test_missing_metadata(raw_stub: pb_grpc.TeaclaveAuthenticationApiStub, admin_token: str) -> None:
    """§1.5: absent `id` → "missing user id" (checked first), absent `token` → "missing token"."""
    for metadata, message in metadata_cases(admin_token):
        for call in (
            lambda: raw_stub.ListUsers(pb.ListUsersRequest(id="x"), metadata=metadata, timeout=10),
            lambda: raw_stub.UserChangePassword(pb.UserChangePasswordRequest(password="p"), metadata=metadata, timeout=10),
        ):
            assert raw_error(call) == (UNAUTH, message), metadata
    ok = raw_stub.ListUsers(pb.ListUsersRequest(id="x"), metadata=(("id", "admin"), ("token", admin_token)), timeout=10)
    assert "admin" in ok.ids


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def forged_tokens(token: str) -> dict[str, str]:
    """Variants of a genuine ``token`` that must not authenticate its user."""
    header, payload, signature = token.split(".")
    claims = jwt.decode(token, options={"verify_signature": False})
    flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    promoted = {**claims, "role": "PlatformAdmin"}
    return {
        "tampered signature byte": f"{header}.{payload}.{flipped}",
        "tampered payload": f"{header}.{_b64(promoted)}.{signature}",
        "wrong secret HS512": jwt.encode(claims, b"k" * 64, algorithm="HS512"),
        "HS256": jwt.encode(claims, b"k" * 64, algorithm="HS256"),
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.",
        "alg none, no signature part": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{payload}",
        "wrong issuer": jwt.encode({**claims, "iss": "Kettle"}, b"k" * 64, algorithm="HS512"),
        "garbage": "not-a-jwt",
        "huge": "A" * 6000,
    }


def test_forged_tokens(actors: Actors) -> None:
    """§2.3: tampered, wrong-secret, wrong-algorithm, alg-none and junk tokens → "authentication failed"."""
    user_id, password = actors.create("DO-X")
    token = actors.login(user_id, password)
    with actors.platform.auth_client() as client:
        for name, forged in forged_tokens(token).items():
            client.use_credential(user_id, forged)
            with pytest.raises(KettleError) as info:
                client.user_change_password("should-not-change")
            assert (info.value.code, info.value.message) == (UNAUTH, "authentication failed"), name
        client.use_credential(user_id, token)
        expect_error(lambda: client.list_users(GROUP_X), "permission denied")  # the genuine token authenticates
    assert actors.login(user_id, password)


def test_token_of_other_user(actors: Actors, admin_token: str) -> None:
    """§2.3: `sub` must equal the presented id, so A's token does not work with B's id."""
    a_id, a_password = actors.create("DO-X")
    b_id, _ = actors.create("DO-X")
    a_token = actors.login(a_id, a_password)
    with actors.platform.auth_client() as client:
        for presented_id, token in [(b_id, a_token), ("admin", a_token), (a_id, admin_token)]:
            client.use_credential(presented_id, token)
            expect_error(lambda: client.list_users("x"), "authentication failed")


def test_token_after_user_deletion(actors: Actors) -> None:
    """§2.3: deleting a user kills its tokens."""
    user_id, password = actors.create("DOM-X")
    with actors.platform.auth_client() as client:
        client.user_login(user_id, password)
        assert client.list_users(GROUP_X) is not None
        actors.admin.delete_user(user_id)
        expect_error(lambda: client.list_users(GROUP_X), "authentication failed")
        expect_error(lambda: client.user_change_password("again"), "authentication failed")


def test_expired_and_foreign_tokens(actors: Actors, home_factory: Callable[..., Platform]) -> None:
    """§2.3: an expired token (no leeway) and a token signed by another platform → "authentication failed"."""
    short = home_factory(extra="[authentication]\ntoken_validity_secs = 2\n")
    short.start()
    with short.auth_client() as client:
        token = client.user_login("admin", "teaclave")
        assert "admin" in client.list_users("x")
        exp = jwt.decode(token, options={"verify_signature": False})["exp"]
        with actors.platform.auth_client() as foreign:
            foreign.use_credential("admin", token)  # same user id, other platform's secret
            expect_error(lambda: foreign.list_users("x"), "authentication failed")
        time.sleep(max(0.0, exp - time.time()) + 0.2)
        expect_error(lambda: client.list_users("x"), "authentication failed")
        client.user_login("admin", "teaclave")
        assert "admin" in client.list_users("x")


# --- message size (§1.6) ----------------------------------------------------------------


def test_message_size_limit(platform: Platform, endpoint: AttestedEndpoint, actors: Actors) -> None:
    """§1.6: a message just under 4 MiB is processed, one over it is RESOURCE_EXHAUSTED; the service lives on."""
    trust = platform.trust()
    channel = grpc.secure_channel(
        endpoint.address,
        grpc.ssl_channel_credentials(root_certificates=trust.as_root_pem),
        options=[("grpc.ssl_target_name_override", endpoint.target_name),
                 ("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)],
    )
    stub = pb_grpc.TeaclaveAuthenticationApiStub(channel)
    try:
        near = pb.UserLoginRequest(id="admin", password="x" * (MAX_MESSAGE - 64))
        assert near.ByteSize() <= MAX_MESSAGE
        assert raw_error(lambda: stub.UserLogin(near, timeout=30)) == (UNAUTH, "authentication failed")
        admin_md = (("id", "admin"), ("token", actors.admin_token))
        big_register = pb.UserRegisterRequest(id=new_id("big"), password="x" * (MAX_MESSAGE - 256), role="FunctionOwner")
        assert raw_error(lambda: stub.UserRegister(big_register, metadata=admin_md, timeout=30)) == (
            UNAUTH, "invalid password")
        over = pb.UserLoginRequest(id="admin", password="x" * (MAX_MESSAGE + 1024))
        code, _ = raw_error(lambda: stub.UserLogin(over, timeout=30))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        channel.close()
    # The SDK's own channel refuses to send it at all.
    with pytest.raises(KettleError) as info:
        actors.login("admin", "x" * (MAX_MESSAGE + 1024))
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert platform.child("authentication").process.poll() is None
    assert token_role(actors.login("admin", "teaclave")) == "PlatformAdmin"


def test_token_stays_dead_after_id_reused(actors: Actors) -> None:
    """§2.3: a token killed by deleting its user must not come back when the id is registered again."""
    user_id, password = actors.create("PA")
    with actors.platform.auth_client() as old_admin:
        old_admin.user_login(user_id, password)
        actors.admin.delete_user(user_id)
        actors.callers["DOM-X"].user_register(user_id, "someone-else", "DataOwner", GROUP_X)
        expect_error(lambda: old_admin.list_users("x"), "authentication failed")
