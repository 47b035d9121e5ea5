"""The user/role domain rules of spec §2.1, §2.4 and §12 row 2, as tables."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from kettle.errors import AuthenticationError
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

PA = Role(Category.PLATFORM_ADMIN)
FO = Role(Category.FUNCTION_OWNER)
DOM_X = Role(Category.DATA_OWNER_MANAGER, "x")
DOM_Y = Role(Category.DATA_OWNER_MANAGER, "y")
DO_X = Role(Category.DATA_OWNER, "x")
DO_Y = Role(Category.DATA_OWNER, "y")
INVALID = Role.parse("Admin")

ROLES = {"PA": PA, "FO": FO, "DOM-x": DOM_X, "DOM-y": DOM_Y, "DO-x": DO_X, "DO-y": DO_Y,
         "Invalid": INVALID}
VALID = [name for name in ROLES if name != "Invalid"]


# --- roles --------------------------------------------------------------------

@pytest.mark.parametrize(
    ("text", "category", "attribute"),
    [
        ("PlatformAdmin", Category.PLATFORM_ADMIN, ""),
        ("FunctionOwner", Category.FUNCTION_OWNER, ""),
        ("DataOwner-bank", Category.DATA_OWNER, "bank"),
        ("DataOwner-a-b", Category.DATA_OWNER, "a-b"),
        ("DataOwner-", Category.DATA_OWNER, ""),
        ("DataOwnerManager-x", Category.DATA_OWNER_MANAGER, "x"),
        ("DataOwnerManager-", Category.DATA_OWNER_MANAGER, ""),
        ("DataOwnerManager-a-b", Category.DATA_OWNER_MANAGER, "a-b"),
        ("DataOwner-Manager-x", Category.DATA_OWNER, "Manager-x"),
        ("dataowner-x", Category.INVALID, ""),
        ("Admin", Category.INVALID, ""),
        ("", Category.INVALID, ""),
        ("DataOwner", Category.INVALID, ""),
        ("DataOwnerManager", Category.INVALID, ""),
        ("PlatformAdmin-x", Category.INVALID, ""),
        ("platformadmin", Category.INVALID, ""),
        (" PlatformAdmin", Category.INVALID, ""),
        ("Invalid", Category.INVALID, ""),
    ],
)
def test_parse_role_string(text: str, category: Category, attribute: str) -> None:
    role = Role.parse(text)
    assert (role.category, role.attribute) == (category, attribute)
    assert role.is_valid == (category is not Category.INVALID)


def test_invalid_role_has_empty_category() -> None:
    assert INVALID.category == ""


@pytest.mark.parametrize(
    ("role", "attribute", "expected"),
    [
        ("PlatformAdmin", "ignored", "PlatformAdmin"),
        ("FunctionOwner", "ignored", "FunctionOwner"),
        ("DataOwnerManager", "bank", "DataOwnerManager-bank"),
        ("DataOwnerManager", "", "DataOwnerManager-"),
        ("DataOwner", "bank", "DataOwner-bank"),
        ("DataOwner", "a-b", "DataOwner-a-b"),
    ],
)
def test_role_from_request_and_role_string(role: str, attribute: str, expected: str) -> None:
    parsed = Role.from_request(role, attribute)
    assert str(parsed) == expected
    assert Role.parse(str(parsed)) == parsed


@pytest.mark.parametrize(
    "role", ["", "Admin", "platformadmin", "DataOwner-x", "dataowner", "Invalid", " FunctionOwner"]
)
def test_role_from_request_rejects_other_names(role: str) -> None:
    with pytest.raises(AuthenticationError, match="^invalid role$"):
        Role.from_request(role, "x")


def test_attribute_only_for_group_roles() -> None:
    with pytest.raises(ValueError):
        Role(Category.PLATFORM_ADMIN, "x")


def test_category_given_as_plain_string_is_normalised() -> None:
    assert Role("DataOwner", "x") == DO_X  # type: ignore[arg-type]
    assert Role("DataOwner", "x").category is Category.DATA_OWNER  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("role", "expected"),
    [
        (PA, "PlatformAdmin"),
        (FO, "FunctionOwner"),
        (DOM_X, 'DataOwnerManager("x")'),
        (DO_X, 'DataOwner("x")'),
        (Role(Category.DATA_OWNER, ""), 'DataOwner("")'),
        (Role(Category.DATA_OWNER, 'a"b\\c\n'), 'DataOwner("a\\"b\\\\c\\n")'),
        (Role(Category.DATA_OWNER, "é\x01"), 'DataOwner("é\\u{1}")'),
        (INVALID, "Invalid"),
    ],
)
def test_audit_text(role: Role, expected: str) -> None:
    assert role.audit_text == expected


# --- the permission matrix ----------------------------------------------------

# §12 row 22 (Kettle deviates): a FunctionOwner registers no one, so only an admin creates a manager.
REGISTER_ALLOWED = {("PA", new) for new in VALID} | {("DOM-x", "DO-x"), ("DOM-y", "DO-y")}


@pytest.mark.parametrize(("caller", "new"), list(itertools.product(ROLES, ROLES)))
def test_may_register(caller: str, new: str) -> None:
    assert may_register(ROLES[caller], ROLES[new]) == ((caller, new) in REGISTER_ALLOWED)


# §12 row 2: a manager needs the target to be in its group already.
UPDATE_ALLOWED = {("PA", new, target) for new in VALID for target in ROLES} | {
    ("DOM-x", "DO-x", "DO-x"),
    ("DOM-y", "DO-y", "DO-y"),
}


@pytest.mark.parametrize(("caller", "new", "target"), list(itertools.product(ROLES, ROLES, ROLES)))
def test_may_update(caller: str, new: str, target: str) -> None:
    allowed = (caller, new, target) in UPDATE_ALLOWED
    assert may_update(ROLES[caller], ROLES[new], ROLES[target]) == allowed


def test_manager_cannot_update_admin_into_its_group() -> None:
    assert not may_update(DOM_X, DO_X, PA)


MANAGE_ALLOWED = {("PA", target) for target in ROLES} | {("DOM-x", "DO-x"), ("DOM-y", "DO-y")}


@pytest.mark.parametrize("rule", [may_reset_password, may_delete])
@pytest.mark.parametrize(("caller", "target"), list(itertools.product(ROLES, ROLES)))
def test_may_reset_and_delete(rule: Callable[[Role, Role], bool], caller: str, target: str) -> None:
    assert rule(ROLES[caller], ROLES[target]) == ((caller, target) in MANAGE_ALLOWED)


LIST_ALLOWED = {("PA", group) for group in ("x", "y", "anything")} | {
    ("DOM-x", "x"),
    ("DOM-y", "y"),
}


@pytest.mark.parametrize(
    ("caller", "group"), list(itertools.product(ROLES, ("x", "y", "anything")))
)
def test_may_list(caller: str, group: str) -> None:
    assert may_list(ROLES[caller], group) == ((caller, group) in LIST_ALLOWED)


def test_manager_group_is_exact() -> None:
    assert not may_reset_password(DOM_X, Role(Category.DATA_OWNER, "x-sub"))
    assert not may_list(DOM_X, "X")


# --- user ids -----------------------------------------------------------------

@pytest.mark.parametrize(
    "user_id",
    ["", "a" * 129, "a b", " a", "a\n", "a\r\nb", "ä", "a\x00", "\x7f", "a\tb", "用户", "a\u2028"],
)
def test_hostile_user_ids_are_refused(user_id: str) -> None:
    with pytest.raises(AuthenticationError, match="^invalid user id$"):
        validate_user_id(user_id)


@pytest.mark.parametrize("user_id", ["a", "a" * 128, "admin", "user-1@bank.example", "!~"])
def test_printable_ascii_user_ids_are_accepted(user_id: str) -> None:
    validate_user_id(user_id)


# --- user records -------------------------------------------------------------

def test_user_record_roundtrip() -> None:
    record = UserRecord(id="alice", role="DataOwner-a-b", password_hash="$argon2id$x")
    assert UserRecord.from_bytes(record.to_bytes()) == record


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xfe",
        b"not json",
        b"[]",
        b'"alice"',
        b'{"v":1,"id":"a","role":"PlatformAdmin"}',
        b'{"v":1,"id":"a","role":"PlatformAdmin","password_hash":"h","account":"","extra":1}',
        b'{"v":2,"id":"a","role":"PlatformAdmin","password_hash":"h"}',
        b'{"v":true,"id":"a","role":"PlatformAdmin","password_hash":"h"}',
        b'{"v":1.0,"id":"a","role":"PlatformAdmin","password_hash":"h"}',
        b'{"v":"1","id":"a","role":"PlatformAdmin","password_hash":"h"}',
        b'{"v":1,"id":1,"role":"PlatformAdmin","password_hash":"h"}',
        b'{"v":1,"id":"a","role":null,"password_hash":"h"}',
        b'{"v":1,"id":"a","role":"Admin","password_hash":"h"}',
        b'{"v":1,"id":"a","id":"b","role":"PlatformAdmin","password_hash":"h"}',
    ],
)
def test_malformed_user_record_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        UserRecord.from_bytes(data)
