"""Function rules of the management service (``spec/platform.md`` §4), as pure functions.

Who may read, change, disable, delete, list and use a function, what a
registration may contain, and how the per-user function indexes and the usage
counter evolve. The management servicer does the storage round trips; every
decision is taken here, in the order the spec fixes, raising the exact errors of
Appendix B. Kettle's choices among the spec's SHOULD/MAY points (§12):

- #7  DisableFunction sets a ``disabled`` flag; CreateTask refuses it for every
      caller (see :func:`check_may_create_task`).
- #8  DeleteFunction removes the ID from the owner's and allowlisted users' indexes.
- #9  UpdateFunction refreshes the allowed lists when the allowlist changes.
- #10 The owner may read its own function's usage stats.

Kettle refuses at registration what Teaclave accepts and fails only when a task
runs (``docs/errors.md``): an executor type that does not exist is
INVALID_ARGUMENT (Teaclave: INTERNAL); a ``builtin`` function must name a
built-in that exists; an argument key, input name or output name may be
declared once.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from typing import Any

from ..errors import CatalogueError, InvalidArgument, PermissionDenied
from .ids import Kind, external_id, parse_external_id
from .records import FunctionArgument, FunctionFile, FunctionRecord
from .users import Category, Role

__all__ = [
    "EXECUTOR_TYPES",
    "INVALID_FUNCTION_ID",
    "MAX_ITEMS",
    "MAX_NAME_CHARS",
    "MAX_PAYLOAD_BYTES",
    "MAX_RECORD_BYTES",
    "MAX_STAGED_BYTES",
    "PERMISSION_DENIED",
    "QUOTA_USED_UP",
    "Caller",
    "FunctionDefinition",
    "FunctionIndex",
    "UsageRecord",
    "allowlist_changes",
    "check_builtin_name",
    "check_may_create_task",
    "check_may_disable",
    "check_may_list",
    "check_may_read_usage",
    "check_owner",
    "check_quota",
    "disable_function",
    "function_digest",
    "function_ids_from_keys",
    "function_manifest",
    "function_view",
    "list_functions",
    "parse_function_id",
    "quota_from_wire",
    "quota_to_wire",
    "register_function",
    "shown",
    "update_function",
    "validate_executor_type",
]

INVALID_FUNCTION_ID = "invalid function id"
PERMISSION_DENIED = "permission denied"
QUOTA_USED_UP = "function quota has been used up"

EXECUTOR_TYPES = ("builtin", "python", "wamr")
"""Exact, lowercase (``spec/platform.md`` §4.1)."""

MAX_NAME_CHARS = 256
"""Longest function name, argument key, data name or user ID Kettle stores.

Teaclave has no such bound; Kettle has one so that an absurd request is refused
with a clear error instead of becoming a record nobody can list or display."""

MAX_ITEMS = 256
"""Most arguments, inputs, outputs, allowlist entries (and, for tasks, ownership
entries and owners per entry). Each allowlist entry costs a storage write."""

MAX_RECORD_BYTES = 4 * 1024 * 1024 - 64 * 1024
"""Largest encoded record management writes (a function's payload is not part of its
record but a record of its own, bounded by :data:`MAX_PAYLOAD_BYTES`)."""

MAX_PAYLOAD_BYTES = 16 * 1024 * 1024
"""Largest function payload (Python source or WebAssembly module), four times gRPC's
default message size. The endpoints on its way accept messages large enough for it
as it grows there (``kettle.rpc.server.MAX_PAYLOAD_MESSAGE_BYTES``)."""

MAX_STAGED_BYTES = MAX_PAYLOAD_BYTES * 4 // 3 + MAX_RECORD_BYTES
"""Largest encoded staged task: the payload in base64 and a task record's worth of the rest."""

_SHOWN_CHARS = 64


def shown(text: str) -> str:
    """``text`` as echoed in an error message: bounded, because status details travel in
    HTTP/2 trailers of limited size and a client may send megabytes."""
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "…"


@dataclass(frozen=True)
class Caller:
    """Who is calling management: the user ID and role the frontend forwards as metadata."""

    user_id: str
    role: Role

    @classmethod
    def from_metadata(cls, user_id: str, role: str) -> Caller:
        return cls(user_id, Role.parse(role))

    @property
    def is_admin(self) -> bool:
        return self.role.category is Category.PLATFORM_ADMIN


@dataclass(frozen=True)
class FunctionDefinition:
    """What RegisterFunction and UpdateFunction ask for (the mutable part of a function)."""

    name: str
    description: str
    executor_type: str
    public: bool
    payload: bytes
    arguments: tuple[FunctionArgument, ...]
    inputs: tuple[FunctionFile, ...]
    outputs: tuple[FunctionFile, ...]
    user_allowlist: tuple[str, ...]
    usage_quota: int
    """As on the wire (int32): negative = unlimited, 0 = never invocable."""


@dataclass(frozen=True)
class UsageRecord:
    """``usage-<uuid>``: how many times the function was invoked successfully."""

    function_id: str
    """Bare UUID."""
    use_numbers: int = 0

    def to_bytes(self) -> bytes:
        return json.dumps({"function_id": self.function_id, "use_numbers": self.use_numbers},
                          sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> UsageRecord:
        doc = _load_object(data, {"function_id", "use_numbers"}, "usage")
        if not isinstance(doc["function_id"], str) or type(doc["use_numbers"]) is not int or doc["use_numbers"] < 0:
            raise ValueError("malformed usage record")
        return cls(doc["function_id"], doc["use_numbers"])

    def incremented(self) -> UsageRecord:
        return replace(self, use_numbers=self.use_numbers + 1)


@dataclass(frozen=True)
class FunctionIndex:
    """``user-<uuid5(user id)>``: the function external IDs a user registered or may use.

    Lists keep registration order (ListFunctions returns them as they are) and
    hold each ID once (Teaclave could list an ID twice when an allowlist
    repeated a user; nothing depends on the duplicate)."""

    id: str
    registered_functions: tuple[str, ...] = ()
    allowed_functions: tuple[str, ...] = ()

    def to_bytes(self) -> bytes:
        return json.dumps({
            "id": self.id,
            "registered_functions": list(self.registered_functions),
            "allowed_functions": list(self.allowed_functions),
        }, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> FunctionIndex:
        doc = _load_object(data, {"id", "registered_functions", "allowed_functions"}, "function index")
        lists = (doc["registered_functions"], doc["allowed_functions"])
        if not isinstance(doc["id"], str) or not all(
            isinstance(items, list) and all(isinstance(i, str) for i in items) for items in lists
        ):
            raise ValueError("malformed function index record")
        return cls(doc["id"], tuple(lists[0]), tuple(lists[1]))

    def with_registered(self, function_id: str) -> FunctionIndex:
        if function_id in self.registered_functions:
            return self
        return replace(self, registered_functions=(*self.registered_functions, function_id))

    def with_allowed(self, function_id: str) -> FunctionIndex:
        if function_id in self.allowed_functions:
            return self
        return replace(self, allowed_functions=(*self.allowed_functions, function_id))

    def without_allowed(self, function_id: str) -> FunctionIndex:
        return replace(self, allowed_functions=tuple(f for f in self.allowed_functions if f != function_id))

    def without(self, function_id: str) -> FunctionIndex:
        """The index with ``function_id`` gone from both lists (DisableFunction, DeleteFunction)."""
        return replace(
            self.without_allowed(function_id),
            registered_functions=tuple(f for f in self.registered_functions if f != function_id),
        )


def _load_object(data: bytes, names: set[str], what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise ValueError(f"{what} record is not JSON: {exc}") from None
    if not isinstance(doc, dict) or set(doc) != names:
        raise ValueError(f"{what} record has the wrong fields")
    return doc


# --- identifiers, executor types, quota ----------------------------------------------


def parse_function_id(text: str) -> str:
    """The bare UUID of a ``function-…`` ID; anything else is "invalid function id"."""
    bare = parse_external_id(text, Kind.FUNCTION)
    if bare is None:
        raise InvalidArgument(INVALID_FUNCTION_ID)
    return bare


def validate_executor_type(executor_type: str) -> str:
    if executor_type not in EXECUTOR_TYPES:
        # Teaclave's text; its INTERNAL is a client mistake here (spec §4.1, docs/errors.md).
        raise InvalidArgument(f"Invalid executor type: {shown(executor_type)}")
    return executor_type


def check_builtin_name(name: str) -> None:
    """A ``builtin`` function's name selects the built-in it runs: it must be one that exists.

    Teaclave stores any name and fails each task with "Function not found."; refusing
    here spares every data owner approving a task that can never run."""
    from ..functions import lookup  # imports only the named function's module

    if not name:
        raise InvalidArgument("a builtin function needs the name of the built-in it runs, like builtin-echo")
    if lookup(name) is None:
        raise InvalidArgument(f"no built-in function is named {shown(name)!r} (docs/builtins.md lists them)")


def quota_from_wire(quota: int) -> int | None:
    """Negative → unlimited (None); 0 stays 0 ("never invocable", proto3's default)."""
    return None if quota < 0 else quota


def quota_to_wire(quota: int | None) -> int:
    return -1 if quota is None else quota


# --- registration and update ----------------------------------------------------------


def _check_limits(definition: FunctionDefinition) -> None:
    if len(definition.name) > MAX_NAME_CHARS:
        raise InvalidArgument(f"function name is longer than {MAX_NAME_CHARS} characters")
    for what, items in (
        ("arguments", definition.arguments),
        ("inputs", definition.inputs),
        ("outputs", definition.outputs),
        ("user_allowlist entries", definition.user_allowlist),
    ):
        if len(items) > MAX_ITEMS:
            raise InvalidArgument(f"a function has at most {MAX_ITEMS} {what}")
    names = [
        *(a.key for a in definition.arguments),
        *(f.name for f in definition.inputs),
        *(f.name for f in definition.outputs),
        *definition.user_allowlist,
    ]
    if any(len(n) > MAX_NAME_CHARS for n in names):
        raise InvalidArgument(
            f"argument keys, input and output names and allowlisted user ids are at most {MAX_NAME_CHARS} characters"
        )
    for what, declared in (
        ("argument key", [a.key for a in definition.arguments]),
        ("input name", [f.name for f in definition.inputs]),
        ("output name", [f.name for f in definition.outputs]),
    ):
        # A task maps each name to one value or file: a second declaration could never be told apart.
        seen: set[str] = set()
        for name in declared:
            if name in seen:
                raise InvalidArgument(f"{what} {shown(name)!r} is declared twice")
            seen.add(name)


def _check_definition(definition: FunctionDefinition) -> None:
    validate_executor_type(definition.executor_type)
    if definition.executor_type == "builtin":
        check_builtin_name(definition.name)
    _check_limits(definition)


def _check_size(record: FunctionRecord) -> FunctionRecord:
    if len(record.payload) > MAX_PAYLOAD_BYTES:
        raise InvalidArgument(
            f"function payload is too large ({len(record.payload)} bytes, at most {MAX_PAYLOAD_BYTES})")
    size = len(record.to_bytes())
    if size > MAX_RECORD_BYTES:
        raise InvalidArgument(f"function is too large to store ({size} bytes encoded, at most {MAX_RECORD_BYTES})")
    return record


def register_function(definition: FunctionDefinition, caller: Caller, bare_uuid: str) -> FunctionRecord:
    """The new function record (§4.2 RegisterFunction): owner = caller; only the
    executor type is validated by Teaclave, Kettle adds the built-in name, unique
    names and size bounds."""
    _check_definition(definition)
    return _check_size(FunctionRecord(
        uuid=bare_uuid,
        name=definition.name,
        description=definition.description,
        public=definition.public,
        executor_type=definition.executor_type,
        payload=definition.payload,
        arguments=definition.arguments,
        inputs=definition.inputs,
        outputs=definition.outputs,
        owner=caller.user_id,
        user_allowlist=definition.user_allowlist,
        usage_quota=quota_from_wire(definition.usage_quota),
    ))


def update_function(current: FunctionRecord | None, caller: Caller, definition: FunctionDefinition) -> FunctionRecord:
    """§4.2 UpdateFunction: unknown → INVALID_ARGUMENT, not the owner (admins
    included) → PERMISSION_DENIED, a bad definition → INVALID_ARGUMENT (as for
    registration); then everything but ID, owner, usage counter and the
    ``disabled`` flag is replaced (an update does not silently re-enable a
    disabled function)."""
    if current is None:
        raise InvalidArgument(INVALID_FUNCTION_ID)
    check_owner(current, caller)
    _check_definition(definition)
    return _check_size(replace(
        current,
        name=definition.name,
        description=definition.description,
        public=definition.public,
        executor_type=definition.executor_type,
        payload=definition.payload,
        arguments=definition.arguments,
        inputs=definition.inputs,
        outputs=definition.outputs,
        user_allowlist=definition.user_allowlist,
        usage_quota=quota_from_wire(definition.usage_quota),
    ))


def allowlist_changes(old: FunctionRecord, new: FunctionRecord) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(users to add the ID to, users to remove it from) after an update (§12 #9).

    A disabled function stays out of every index, so nobody is added for it."""
    before, after = dict.fromkeys(old.user_allowlist), dict.fromkeys(new.user_allowlist)
    added = () if new.disabled else tuple(u for u in after if u not in before)
    removed = tuple(u for u in before if u not in after)
    return added, removed


# --- reading ---------------------------------------------------------------------------


def function_view(function: FunctionRecord | None, caller: Caller) -> FunctionRecord:
    """What GetFunction shows (§4.2): everything to the owner, admins and for public
    functions; without payload and allowlist to an allowlisted user ID; else refused."""
    if function is None:
        raise InvalidArgument(INVALID_FUNCTION_ID)
    if function.public or caller.is_admin or caller.user_id == function.owner:
        return function
    if caller.user_id in function.user_allowlist:
        return replace(function, payload=b"", user_allowlist=())
    raise PermissionDenied(PERMISSION_DENIED)


def check_may_read_usage(function: FunctionRecord | None, caller: Caller) -> FunctionRecord:
    """GetFunctionUsageStats (§4.2): public, admin, allowlisted user ID, or (Kettle,
    §12 #10) the owner."""
    if function is None:
        raise InvalidArgument(INVALID_FUNCTION_ID)
    if not (
        function.public
        or caller.is_admin
        or caller.user_id in function.user_allowlist
        or caller.user_id == function.owner
    ):
        raise PermissionDenied(PERMISSION_DENIED)
    return function


# --- changing ---------------------------------------------------------------------------


def check_owner(function: FunctionRecord | None, caller: Caller) -> FunctionRecord:
    """UpdateFunction/DeleteFunction: the owner only; PlatformAdmin is not exempt."""
    if function is None:
        raise InvalidArgument(INVALID_FUNCTION_ID)
    if caller.user_id != function.owner:
        raise PermissionDenied(PERMISSION_DENIED)
    return function


def check_may_disable(function: FunctionRecord | None, caller: Caller) -> FunctionRecord:
    if function is None:
        raise InvalidArgument(INVALID_FUNCTION_ID)
    if not (caller.is_admin or caller.user_id == function.owner):
        raise PermissionDenied(PERMISSION_DENIED)
    return function


def disable_function(function: FunctionRecord | None, caller: Caller) -> FunctionRecord:
    """§4.2 DisableFunction: allowlist cleared (Teaclave) and flagged disabled (Kettle, §12 #7).

    The caller then removes the ID from the owner's and the *previous*
    allowlist's indexes."""
    function = check_may_disable(function, caller)
    return replace(function, user_allowlist=(), disabled=True)


# --- listing ----------------------------------------------------------------------------


def check_may_list(caller: Caller, user_id: str) -> None:
    if not (caller.is_admin or caller.user_id == user_id):
        raise PermissionDenied(PERMISSION_DENIED)


def list_functions(
    caller: Caller, user_id: str, index: FunctionIndex | None, all_function_ids: list[str] | None = None
) -> tuple[list[str], list[str]]:
    """ListFunctions (§4.2): (registered, allowed) external IDs.

    For an admin, ``allowed`` is every stored function (sorted) — but only when
    the target user has an index at all (Teaclave's behaviour, §12 #19)."""
    check_may_list(caller, user_id)
    if index is None:
        return [], []
    allowed = list(index.allowed_functions)
    if caller.is_admin:
        allowed = sorted(all_function_ids or [])
    return list(index.registered_functions), allowed


def function_ids_from_keys(keys: list[bytes]) -> list[str]:
    """External IDs of the stored ``function-<uuid>`` keys (well-formed ones only)."""
    ids = []
    for key in keys:
        text = key.decode(errors="replace")
        bare = parse_external_id(text, Kind.FUNCTION)
        if bare is not None:
            ids.append(external_id(Kind.FUNCTION, bare))
    return sorted(ids)


# --- content digest ------------------------------------------------------------------------

FUNCTION_MANIFEST_VERSION = "kettle-function-digest-v1"


def canonical_json(doc: Any) -> str:
    """The one canonical JSON text Kettle hashes: keys sorted at every level, no spaces,
    non-ASCII kept as is (hashed as UTF-8). Python's ``json.dumps(doc, sort_keys=True,
    separators=(",", ":"), ensure_ascii=False)`` produces it."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_hex(text: str | bytes) -> str:
    return hashlib.sha256(text.encode("utf-8") if isinstance(text, str) else text).hexdigest()


def function_manifest(function: FunctionRecord) -> str:
    """What a task pins of its function: everything that decides what runs, nothing else.

    The payload (by its SHA-256), the executor type, the name (for a built-in the name
    *is* the code), every declared argument (key, default, overwritable) and every
    declared input and output (name, optional), in canonical JSON (``docs/tasks.md``
    "Consent"). Descriptions, the allowlist, the quota, ``public`` and ``disabled`` are
    left out: they do not change what runs (``public`` changes who takes part, which
    the task digest covers)."""
    return canonical_json({
        "digest": FUNCTION_MANIFEST_VERSION,
        "name": function.name,
        "executor_type": function.executor_type,
        "payload_sha256": function.payload_sha256,
        "arguments": sorted(
            ({"key": a.key, "default_value": a.default_value, "allow_overwrite": a.allow_overwrite}
             for a in function.arguments),
            key=lambda a: str(a["key"]),
        ),
        "inputs": sorted(({"name": f.name, "optional": f.optional} for f in function.inputs),
                         key=lambda f: str(f["name"])),
        "outputs": sorted(({"name": f.name, "optional": f.optional} for f in function.outputs),
                          key=lambda f: str(f["name"])),
    })


def function_digest(function: FunctionRecord) -> str:
    """SHA-256 (hex) of :func:`function_manifest`: the function's content digest."""
    return sha256_hex(function_manifest(function))


# --- use in tasks ------------------------------------------------------------------------


def check_may_create_task(function: FunctionRecord | None, caller: Caller) -> FunctionRecord:
    """CreateTask steps 1–2 (§6.2): who may build a task on this function.

    DataOwner-X / DataOwnerManager-X need a public function or X (the role
    *attribute*, §4.3) in the allowlist; PlatformAdmin always; anyone else never.
    A disabled function is refused to everyone (Kettle, §12 #7)."""
    if function is None:
        raise InvalidArgument(INVALID_FUNCTION_ID)
    if function.disabled:
        raise PermissionDenied(PERMISSION_DENIED)
    category = caller.role.category
    if category is Category.PLATFORM_ADMIN:
        return function
    group_role = category in (Category.DATA_OWNER, Category.DATA_OWNER_MANAGER)
    if group_role and (function.public or caller.role.attribute in function.user_allowlist):
        return function
    raise PermissionDenied(PERMISSION_DENIED)


def check_quota(function: FunctionRecord, usage: UsageRecord) -> None:
    """InvokeTask step 4: a quota q allows q successful invocations (0 = none)."""
    if function.usage_quota is not None and function.usage_quota <= usage.use_numbers:
        raise CatalogueError(QUOTA_USED_UP)
