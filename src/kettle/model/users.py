"""Users and roles: who a caller is and whom it may manage (``spec/platform.md`` §2).

Everything here is pure so that the permission matrix, the role grammar and the
user-id rules can be tested as tables, without a service around them. The
authentication service core applies these rules in the order the spec fixes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from kettle.errors import AuthenticationError

__all__ = [
    "Category",
    "Role",
    "INVALID_ROLE",
    "UserRecord",
    "MAX_GENERATION",
    "MAX_USER_ID_LENGTH",
    "validate_user_id",
    "may_register",
    "may_update",
    "may_reset_password",
    "may_delete",
    "may_list",
]


class Category(StrEnum):
    """The kind of a role; the value is the name used on the wire.

    ``INVALID`` is empty so that it never equals a name a client can send and
    never matches an access-control policy entry.
    """

    PLATFORM_ADMIN = "PlatformAdmin"
    FUNCTION_OWNER = "FunctionOwner"
    DATA_OWNER_MANAGER = "DataOwnerManager"
    DATA_OWNER = "DataOwner"
    INVALID = ""


_GROUPED = frozenset({Category.DATA_OWNER_MANAGER, Category.DATA_OWNER})
_REQUESTABLE = frozenset(Category) - {Category.INVALID}
_INVALID_TEXT = "Invalid"  # Teaclave's rendering of UserRole::Invalid


@dataclass(frozen=True)
class Role:
    """A user's one role: a category plus, for the two group roles, a group name.

    Only DataOwnerManager and DataOwner carry an attribute (the group); any
    other category with an attribute is refused at construction, so two equal
    roles always render to the same role string and vice versa.
    """

    category: Category
    attribute: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "category", Category(self.category))
        if self.category not in _GROUPED and self.attribute:
            raise ValueError(f"role {self.category.value or _INVALID_TEXT!r} takes no attribute")

    @classmethod
    def from_request(cls, role: str, attribute: str) -> Role:
        """The role a UserRegister/UserUpdate request asks for (§2.1).

        The name must be one of the four exactly (case-sensitive); the
        attribute is kept only for the group roles, as in Teaclave.
        """
        if role not in _REQUESTABLE:
            raise AuthenticationError("invalid role")
        category = Category(role)
        return cls(category, attribute if category in _GROUPED else "")

    @classmethod
    def parse(cls, role_string: str) -> Role:
        """The role a role string (token claim, stored record) denotes.

        ``DataOwner-`` is tried before ``DataOwnerManager-`` like the reference
        does; the two cannot be confused because ``DataOwnerManager-x`` does
        not start with ``DataOwner-``. Anything unrecognised is the invalid
        role, which has no rights, rather than an error: a bad claim must deny,
        not crash.
        """
        if role_string in (Category.PLATFORM_ADMIN, Category.FUNCTION_OWNER):
            return cls(Category(role_string))
        for category in (Category.DATA_OWNER, Category.DATA_OWNER_MANAGER):
            prefix = f"{category.value}-"
            if role_string.startswith(prefix):
                return cls(category, role_string[len(prefix) :])
        return INVALID_ROLE

    @property
    def is_valid(self) -> bool:
        return self.category is not Category.INVALID

    @property
    def audit_text(self) -> str:
        """The rendering audit entries use (Teaclave's Debug form, §9.1)."""
        if self.category in _GROUPED:
            return f"{self.category.value}({_debug_quote(self.attribute)})"
        return str(self)

    def __str__(self) -> str:
        """The role string carried in tokens and records (§2.1)."""
        if self.category in _GROUPED:
            return f"{self.category.value}-{self.attribute}"
        return self.category.value or _INVALID_TEXT


INVALID_ROLE = Role(Category.INVALID)

_DEBUG_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", "\0": "\\0"}


def _debug_quote(text: str) -> str:
    """Quote like Rust's ``{:?}`` for strings, so audit text matches Teaclave's
    for ordinary group names and stays unambiguous for hostile ones."""
    escaped = "".join(
        _DEBUG_ESCAPES.get(ch) or (ch if ch.isprintable() else f"\\u{{{ord(ch):x}}}")
        for ch in text
    )
    return f'"{escaped}"'


# --- user ids -----------------------------------------------------------------

MAX_USER_ID_LENGTH = 128


def validate_user_id(user_id: str) -> None:
    """Refuse ids that could never authenticate, before they are stored.

    Teaclave only refuses the empty id. Kettle is stricter because a user id
    travels in the ``id`` gRPC metadata entry of every authenticated call, and
    metadata values must be printable ASCII: an id with a space, a control
    character or a non-ASCII letter could be registered but never used (§0.1),
    and control characters are a log/header-injection hazard. The length bound
    keeps ids far below gRPC's metadata size limits and keeps records small.
    """
    if not (0 < len(user_id) <= MAX_USER_ID_LENGTH) or not all(
        "\x21" <= ch <= "\x7e" for ch in user_id
    ):
        raise AuthenticationError("invalid user id")


# --- the stored user ----------------------------------------------------------

_RECORD_VERSION = 2
_RECORD_FIELDS = frozenset({"v", "id", "role", "password_hash", "account", "generation"})
_V1_RECORD_FIELDS = _RECORD_FIELDS - {"generation"}
"""Version 1 records predate token generations; they load as generation 0, so an upgrade
keeps every user and every token issued before it (they carry no generation: 0 too)."""

MAX_GENERATION = 2**53 - 1
"""Far beyond any number of credential changes; keeps the value exact wherever JSON
numbers are doubles, and refuses a corrupt record rather than carrying a huge integer."""


@dataclass(frozen=True)
class UserRecord:
    """What the authentication service stores per user.

    The salt lives inside the argon2 ``password_hash`` string (PHC format), so
    no separate salt field is needed.
    """

    id: str
    role: str
    password_hash: str
    account: str = ""
    """Random per registration, kept through updates: login tokens are bound to it, so a
    deleted user's token stays dead when someone registers the same id again."""
    generation: int = 0
    """Moves on at every password or role change; a token carries the generation it was
    issued at and is valid only while it is the record's (§12 row 23)."""

    def __post_init__(self) -> None:
        if not _is_generation(self.generation):
            raise ValueError(f"a token generation is an integer from 0 to {MAX_GENERATION}")

    def with_credentials(self, role: str, password_hash: str) -> UserRecord:
        """The record after a password or role change: same user and account, and the next
        generation, so every token issued before the change stops authenticating."""
        return replace(self, role=role, password_hash=password_hash, generation=self.generation + 1)

    def to_bytes(self) -> bytes:
        """Versioned JSON, so a later format can be told apart from this one."""
        document = {"v": _RECORD_VERSION, "id": self.id, "role": self.role,
                    "password_hash": self.password_hash, "account": self.account,
                    "generation": self.generation}
        return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> UserRecord:
        """Decode strictly: a record that is not exactly what ``to_bytes``
        writes (or what version 1 wrote) is corruption or tampering, and must
        not become a login.

        Raises ValueError on any deviation (bad JSON, duplicate or unknown
        keys, wrong types, unknown version, invalid role or generation).
        """
        try:
            document = json.loads(data.decode("utf-8"), object_pairs_hook=_unique_keys)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"user record is not JSON: {exc}") from None
        if not isinstance(document, dict):
            raise ValueError("user record has the wrong fields")
        version = document.get("v")
        if type(version) is not int or version not in (1, _RECORD_VERSION):
            raise ValueError(f"unsupported user record version {version!r}")
        if document.keys() != (_V1_RECORD_FIELDS if version == 1 else _RECORD_FIELDS):
            raise ValueError("user record has the wrong fields")
        fields = (document["id"], document["role"], document["password_hash"], document["account"])
        if not all(isinstance(value, str) for value in fields):
            raise ValueError("user record fields must be strings")
        if not Role.parse(document["role"]).is_valid:
            raise ValueError("user record has an invalid role")
        generation = document.get("generation", 0)
        if not _is_generation(generation):
            raise ValueError("user record has an invalid token generation")
        return cls(*fields, generation=generation)


def _is_generation(value: object) -> bool:
    """A true integer (not a bool, not a float) in range."""
    return type(value) is int and 0 <= value <= MAX_GENERATION


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Reject duplicate keys, which json.loads would silently resolve."""
    document = dict(pairs)
    if len(document) != len(pairs):
        raise ValueError("user record has duplicate keys")
    return document


# --- the permission matrix (§2.4) ---------------------------------------------
# Each rule answers for a caller's role taken from its token claims (§2.3).
# Roles that are not valid grant nothing.


def _manages(caller: Role, role: Role) -> bool:
    """Whether ``caller`` is the DataOwnerManager of the group ``role`` owns data in."""
    return (
        caller.category is Category.DATA_OWNER_MANAGER
        and role == Role(Category.DATA_OWNER, caller.attribute)
    )


def may_register(caller: Role, new_role: Role) -> bool:
    """Admins create anyone; a manager creates data owners of its own group.

    Teaclave also let a FunctionOwner create a DataOwnerManager of any group,
    who could then reset that group's data owners' passwords and receive them
    (§12 row 22). Kettle deviates: only a PlatformAdmin creates a manager, and
    a FunctionOwner creates no one."""
    if not new_role.is_valid:
        return False
    if caller.category is Category.PLATFORM_ADMIN:
        return True
    return _manages(caller, new_role)


def may_update(caller: Role, new_role: Role, target_current: Role) -> bool:
    """Admins update anyone, so only they promote to DataOwnerManager (§12 row
    22). A manager may only touch users whose *stored* role is its group's
    DataOwner and keep them there: Teaclave did not check the target's current
    role, letting a manager demote an admin into its group (§12 row 2)."""
    if not new_role.is_valid:
        return False
    if caller.category is Category.PLATFORM_ADMIN:
        return True
    return _manages(caller, new_role) and _manages(caller, target_current)


def may_reset_password(caller: Role, target_role: Role) -> bool:
    """Admins reset anyone; a manager resets only users whose stored role is its
    group's DataOwner (never an admin, a function owner, another manager or
    another group's data owner)."""
    return caller.category is Category.PLATFORM_ADMIN or _manages(caller, target_role)


def may_delete(caller: Role, target_role: Role) -> bool:
    """Admins delete anyone; a manager deletes its own group's data owners."""
    return caller.category is Category.PLATFORM_ADMIN or _manages(caller, target_role)


def may_list(caller: Role, requested_id: str) -> bool:
    """Admins list everyone; a manager lists its group, naming it in the
    request's ``id`` field (a group name there, not a user id)."""
    if caller.category is Category.PLATFORM_ADMIN:
        return True
    return caller.category is Category.DATA_OWNER_MANAGER and requested_id == caller.attribute
