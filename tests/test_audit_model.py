"""Audit entries, the query language and result ordering, as tables (``spec/platform.md`` §9)."""

from __future__ import annotations

import ipaddress

import grpc
import pytest

from kettle.model.audit import (
    AuditError,
    IndexedEntry,
    access_denied_message,
    authentication_failed_message,
    entry_for_call,
    ip_from_peer,
    management_error_message,
    now_microseconds,
    parse_query,
    render_user,
    search,
    status_text,
    success_message,
    tokenize,
    validate_entry,
)
from kettle.rpc.generated.teaclave_common_pb2 import Entry

V4 = bytes(12)


# --- building entries -------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "ip"),
    [
        ("ipv4:127.0.0.1:5555", V4 + bytes([127, 0, 0, 1])),
        ("ipv4:10.1.2.3:443", V4 + bytes([10, 1, 2, 3])),
        ("ipv6:[::1]:5555", ipaddress.IPv6Address("::1").packed),
        ("ipv6:%5B2001:db8::7%5D:50051", ipaddress.IPv6Address("2001:db8::7").packed),
        ("ipv6:[fe80::1%25eth0]:1", ipaddress.IPv6Address("fe80::1").packed),
        ("ipv6:[::ffff:1.2.3.4]:80", ipaddress.IPv6Address("::ffff:1.2.3.4").packed),  # kept as sent
        ("ipv6:2001:db8::9", ipaddress.IPv6Address("2001:db8::9").packed),
        ("unix:/tmp/kettle.sock", bytes(16)),
        ("unix-abstract:kettle", bytes(16)),
        ("ipv4:not-an-address:1", bytes(16)),
        ("ipv6:[::zz]:1", bytes(16)),
        ("", bytes(16)),
        (None, bytes(16)),
    ],
)
def test_ip_from_peer(peer: str | None, ip: bytes) -> None:
    assert ip_from_peer(peer) == ip
    assert len(ip) == 16


def test_ipv4_becomes_the_ipv4_compatible_address() -> None:
    """Teaclave's ``to_ipv6_compatible``: ``::a.b.c.d``, not the mapped ``::ffff:a.b.c.d``."""
    assert ipaddress.IPv6Address(ip_from_peer("ipv4:192.168.0.9:1")) == ipaddress.IPv6Address("::192.168.0.9")


@pytest.mark.parametrize(
    ("user_id", "role", "text"),
    [
        ("frontend_user", "PlatformAdmin", "{ user: frontend_user, role: PlatformAdmin }"),
        ("fo", "FunctionOwner", "{ user: fo, role: FunctionOwner }"),
        ("alice", "DataOwner-org1", '{ user: alice, role: DataOwner("org1") }'),
        ("mgr", "DataOwnerManager-org1", '{ user: mgr, role: DataOwnerManager("org1") }'),
        ("odd", 'DataOwner-a"b', '{ user: odd, role: DataOwner("a\\"b") }'),
    ],
)
def test_render_user(user_id: str, role: str, text: str) -> None:
    assert render_user(user_id, role) == text


def test_outcome_messages() -> None:
    assert success_message("register_function") == "register_function"
    assert authentication_failed_message("get_task") == "authenticate to get_task: authentication failed"
    assert access_denied_message("approve_task") == "authenticate to approve_task"
    assert management_error_message("get_task", grpc.StatusCode.INVALID_ARGUMENT, "invalid task id") == (
        'get_task:status: InvalidArgument, message: "invalid task id", '
        "details: [], metadata: MetadataMap { headers: {} }"
    )


@pytest.mark.parametrize(
    ("code", "details", "text"),
    [
        (grpc.StatusCode.PERMISSION_DENIED, "permission denied", 'status: PermissionDenied, message: "permission denied"'),
        (grpc.StatusCode.UNKNOWN, "failed to approve task", 'status: Unknown, message: "failed to approve task"'),
        (grpc.StatusCode.INTERNAL, 'bad "url"\nhere', 'status: Internal, message: "bad \\"url\\"\\nhere"'),
        (grpc.StatusCode.DEADLINE_EXCEEDED, None, 'status: DeadlineExceeded, message: ""'),
        (grpc.StatusCode.UNAUTHENTICATED, "x", 'status: Unauthenticated, message: "x"'),
    ],
)
def test_status_text_is_tonic_display(code: grpc.StatusCode, details: str | None, text: str) -> None:
    assert status_text(code, details) == text + ", details: [], metadata: MetadataMap { headers: {} }"


def test_entry_for_each_outcome() -> None:
    peer = "ipv4:127.0.0.1:40000"
    ok = entry_for_call(peer, ("frontend_user", "FunctionOwner"), success_message("register_function"), True, microsecond=7)
    assert (ok.microsecond, ok.ip, ok.user, ok.message, ok.result) == (
        7, V4 + bytes([127, 0, 0, 1]), "{ user: frontend_user, role: FunctionOwner }", "register_function", True,
    )
    denied = entry_for_call(peer, None, access_denied_message("query_audit_logs"), False, microsecond=8)
    assert (denied.user, denied.message, denied.result) == ("", "authenticate to query_audit_logs", False)
    unauthenticated = entry_for_call("unix:x", None, authentication_failed_message("get_task"), False)
    assert unauthenticated.user == "" and unauthenticated.ip == bytes(16)
    assert abs(unauthenticated.microsecond - now_microseconds()) < 5_000_000


def test_validate_entry_wants_16_byte_ips() -> None:
    validate_entry(Entry(ip=bytes(16)))
    for length in (0, 4, 15, 17):
        with pytest.raises(AuditError) as refused:
            validate_entry(Entry(ip=bytes(length)), 3)
        assert str(refused.value) == f"audit log error, reason: entry 3: ip must be 16 bytes, got {length}"
        assert refused.value.code == grpc.StatusCode.UNKNOWN


# --- tokenising ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("register_function", ["register", "function"]),
        ("authenticate to register_function: authentication failed",
         ["authenticate", "to", "register", "function", "authentication", "failed"]),
        ('{ user: Frontend_User, role: DataOwner("Org-1") }', ["user", "frontend", "user", "role", "dataowner", "org", "1"]),
        ("ÜNÏCODE—dash", ["ünïcode", "dash"]),
        ("a.b@c", ["a", "b", "c"]),
        ("", []),
        ("__--__", []),
    ],
)
def test_tokenize(text: str, tokens: list[str]) -> None:
    assert tokenize(text) == tokens


# --- queries over a fixed corpus ----------------------------------------------------


def _entry(second: int, user: tuple[str, str] | None, message: str, result: bool) -> Entry:
    return entry_for_call("ipv4:127.0.0.1:1", user, message, result, microsecond=second * 1_000_000)


ADMIN = ("admin", "PlatformAdmin")
FRONTEND_USER = ("frontend_user", "FunctionOwner")
ALICE = ("alice", "DataOwner-org1")
BOB = ("Bob", "DataOwnerManager-org1")

CORPUS: dict[str, Entry] = {
    "reg_ok": _entry(1, FRONTEND_USER, success_message("register_function"), True),
    "reg_unauth": _entry(2, None, authentication_failed_message("register_function"), False),
    "approve_denied": _entry(3, None, access_denied_message("approve_task"), False),
    "get_task_err": _entry(4, ALICE, management_error_message("get_task", grpc.StatusCode.PERMISSION_DENIED, "permission denied"), False),
    "query_ok": _entry(5, ADMIN, success_message("query_audit_logs"), True),
    "input_ok": _entry(6, BOB, success_message("register_input_file"), True),
    "update_fn_ok": _entry(7, FRONTEND_USER, success_message("update_function"), True),
    "invoke_err": _entry(8, ALICE, management_error_message("invoke_task", grpc.StatusCode.UNKNOWN, "function quota has been used up"), False),
}
DOCS = [IndexedEntry.of(entry) for entry in CORPUS.values()]
ALL = set(CORPUS)


def matching(query: str) -> set[str]:
    parsed = parse_query(query)
    return {name for name, doc in zip(CORPUS, DOCS) if parsed.matches(doc)}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        # The three examples of §9.2.
        ("user:frontend_user", {"reg_ok", "update_fn_ok"}),
        ("message:register_function", {"reg_ok", "reg_unauth"}),
        ("message:authenticate", {"reg_unauth", "approve_denied"}),
        # Bare terms search message, not user.
        ("register_function", {"reg_ok", "reg_unauth"}),
        ("alice", set()),
        ("user:alice", {"get_task_err", "invoke_err"}),
        # Case-insensitive, both ways.
        ("user:FRONTEND_USER", {"reg_ok", "update_fn_ok"}),
        ("message:Register_Function", {"reg_ok", "reg_unauth"}),
        ("user:bob", {"input_ok"}),
        # Roles are in the user field.
        ("user:platformadmin", {"query_ok"}),
        ('user:DataOwner("org1")', {"get_task_err", "invoke_err"}),
        ("user:dataownermanager", {"input_ok"}),
        ("user:org1", {"get_task_err", "invoke_err", "input_ok"}),
        # Phrases: consecutive tokens in order.
        ('"authenticate to register_function"', {"reg_unauth"}),
        ('message:"to approve"', {"approve_denied"}),
        ('"function register"', set()),
        ('user:"frontend user"', {"reg_ok", "update_fn_ok"}),
        ('"permission denied"', {"get_task_err"}),
        ("function", {"reg_ok", "reg_unauth", "update_fn_ok", "invoke_err"}),  # error texts are searchable
        # Default operator is OR.
        ("register_function approve_task", {"reg_ok", "reg_unauth", "approve_denied"}),
        ("update_function query_audit_logs", {"update_fn_ok", "query_ok"}),
        # Boolean operators.
        ("register_function OR approve_task", {"reg_ok", "reg_unauth", "approve_denied"}),
        ("register_function AND authenticate", {"reg_unauth"}),
        ("message:register_function AND NOT message:authenticate", {"reg_ok"}),
        ("register_function -authenticate", {"reg_ok"}),
        ("+register_function -authenticate", {"reg_ok"}),
        ("+user:alice invoke_task", {"get_task_err", "invoke_err"}),  # with a required clause, plain ones are optional
        ("+user:alice +invoke_task", {"invoke_err"}),
        ("user:alice AND invoke_task OR approve_task", {"invoke_err", "approve_denied"}),  # AND binds tighter
        ("approve_task OR user:alice AND invoke_task", {"invoke_err", "approve_denied"}),
        ("(approve_task OR user:alice) AND authenticate", {"approve_denied"}),
        ("user:(alice bob)", {"get_task_err", "invoke_err", "input_ok"}),
        ("user:(alice AND NOT quota) AND quota", {"invoke_err"}),
        ("NOT message:authenticate", ALL - {"reg_unauth", "approve_denied"}),
        ("-user:*", {"reg_unauth", "approve_denied"}),
        ("user:*", ALL - {"reg_unauth", "approve_denied"}),
        ("*", ALL),
        ("* -function", {"approve_denied", "get_task_err", "query_ok", "input_ok"}),
        # result is searchable too.
        ("result:false", {"reg_unauth", "approve_denied", "get_task_err", "invoke_err"}),
        ("user:frontend_user AND result:true", {"reg_ok", "update_fn_ok"}),
        # Lower-case and/or/not are words, and words with no token match nothing.
        ("register_function and", {"reg_ok", "reg_unauth"}),
        ("user:__", set()),
        ("", set()),
        ("   ", set()),
        ("quota\\:used", set()),  # escaped colon: the phrase "quota used" (not consecutive)
        ("quota\\ has", {"invoke_err"}),
        ("\\*", set()),
    ],
)
def test_query_table(query: str, expected: set[str]) -> None:
    assert matching(query) == expected


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("(register_function", "invalid query at position 0: unbalanced '('"),
        ("a (b (c)", "invalid query at position 2: unbalanced '('"),
        ("register_function)", "invalid query at position 17: unbalanced ')'"),
        ('"authenticate to', "invalid query at position 0: unterminated '\"'"),
        ("ip:127.0.0.1", "invalid query at position 0: field does not exist: 'ip'"),
        ("Message:x", "invalid query at position 0: field does not exist: 'Message'"),  # field names are case-sensitive
        ("user:", "invalid query at position 5: expected a term after 'user:'"),
        ("user: alice", "invalid query at position 5: expected a term after 'user:'"),
        ("a AND", "invalid query at position 5: expected a clause after AND"),
        ("a OR", "invalid query at position 4: expected a clause after OR"),
        ("AND a", "invalid query at position 0: AND needs a clause on its left"),
        ("a OR OR b", "invalid query at position 5: expected a clause after OR"),
        ("NOT", "invalid query at position 3: expected a clause after NOT"),
        ("a - b", "invalid query at position 3: expected a clause right after '-'"),
        ("()", "invalid query at position 0: empty group '()'"),
        ("result:maybe", "invalid query at position 0: result takes true or false, not 'maybe'"),
        ("a\\", "invalid query at position 1: a '\\' must escape a character"),
        ("(" * 100 + "a" + ")" * 100, "invalid query at position 64: parentheses nest deeper than 64"),
    ],
)
def test_bad_queries(query: str, reason: str) -> None:
    with pytest.raises(AuditError) as refused:
        parse_query(query)
    assert refused.value.reason == reason
    assert refused.value.message == f"audit log error, reason: {reason}"
    assert refused.value.code == grpc.StatusCode.UNKNOWN


def test_overlong_query_is_refused() -> None:
    with pytest.raises(AuditError, match="query is longer than"):
        parse_query("a " * 40_000)


# --- ordering and limit ------------------------------------------------------------


def _timed(name: str, microsecond: int) -> IndexedEntry:
    return IndexedEntry.of(Entry(microsecond=microsecond, ip=bytes(16), message=name, result=True))


def test_newest_second_first_insertion_order_within_a_second() -> None:
    # Insertion order; b is older than a by its microseconds, but both fall in second 10.
    inserted = [
        _timed("a", 10_900_000),
        _timed("b", 10_100_000),
        _timed("c", 11_500_000),
        _timed("d", 9_000_000),
        _timed("e", 10_500_000),
        _timed("f", 11_000_000),
    ]
    everything = parse_query("*")
    names = [e.message for e in search(everything, inserted, 100)]
    assert names == ["c", "f", "a", "b", "e", "d"]
    assert [e.message for e in search(everything, inserted, 3)] == ["c", "f", "a"]
    assert [e.message for e in search(everything, inserted, 1)] == ["c"]
    assert [e.message for e in search(parse_query("a OR b OR d"), inserted, 2)] == ["a", "b"]


def test_limit_must_be_positive() -> None:
    for limit in (0, -1):
        with pytest.raises(AuditError) as refused:
            search(parse_query("*"), DOCS, limit)
        assert str(refused.value) == "audit log error, reason: limit must be greater than 0"


def test_search_over_the_corpus_is_newest_first() -> None:
    found = search(parse_query("result:true"), DOCS, 10)
    assert [e.message for e in found] == ["update_function", "register_input_file", "query_audit_logs", "register_function"]
