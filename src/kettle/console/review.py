"""What an approval covers, prepared for a person to read (pure: no I/O).

A data owner asked to approve a task must be able to see exactly what will run
on their data: the function (its source for Python, the module's imports and
exports for WebAssembly, the description of a built-in), the arguments, every
input and output with its owners and assigned file, the other parties and their
approvals, and the task digest the approval will be bound to. Nothing is taken
on trust from the page: the console recomputes the task digest from the
manifest it shows, and the function digest from the code it shows, and says so
when either does not match.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ..model import functions as function_rules
from ..model.consent import crypto_info_digest
from ..model.records import CryptoInfo, FunctionArgument, FunctionFile, FunctionRecord, TaskStatus
from ..sdk.frontend import FunctionInfo, TaskApproval, TaskInfo
from .keys import KnownFile

EXECUTOR_KINDS = {"python": "Python", "wamr": "WebAssembly", "builtin": "built-in"}
MAX_SOURCE_CHARS = 200_000
"""Longest Python source shown inline; a longer one is shown cut, and the page says so."""


@dataclass(frozen=True)
class WasmItem:
    module: str
    name: str
    kind: str


@dataclass(frozen=True)
class FunctionReview:
    function_id: str
    name: str
    owner: str
    executor_type: str
    description: str
    pinned_digest: str
    """The function digest the task pins (what an approval covers)."""
    shown_digest: str | None
    """The digest of the function as shown here; None when the platform does not show its code to this user."""
    source: str | None
    source_cut: bool
    wasm_imports: tuple[WasmItem, ...]
    wasm_exports: tuple[WasmItem, ...]
    wasm_problem: str
    payload_sha256: str
    payload_size: int

    @property
    def kind(self) -> str:
        return EXECUTOR_KINDS.get(self.executor_type, self.executor_type)

    @property
    def digest_matches(self) -> bool:
        return self.shown_digest is not None and self.shown_digest == self.pinned_digest

    @property
    def code_hidden(self) -> bool:
        """The function owner did not make the code readable to this user (a private function)."""
        return self.executor_type != "builtin" and self.payload_size == 0


def review_function(info: FunctionInfo, pinned_digest: str) -> FunctionReview:
    payload = info.payload
    shown = None
    if payload or info.executor_type == "builtin":
        shown = function_rules.function_digest(_record_of(info))
    source, cut = None, False
    if info.executor_type == "python" and payload:
        text = payload.decode("utf-8", errors="replace")
        source, cut = text[:MAX_SOURCE_CHARS], len(text) > MAX_SOURCE_CHARS
    imports: tuple[WasmItem, ...] = ()
    exports: tuple[WasmItem, ...] = ()
    problem = ""
    if info.executor_type == "wamr" and payload:
        imports, exports, problem = wasm_interface(payload)
    return FunctionReview(
        function_id=info.function_id, name=info.name, owner=info.owner, executor_type=info.executor_type,
        description=info.description, pinned_digest=pinned_digest, shown_digest=shown, source=source,
        source_cut=cut, wasm_imports=imports, wasm_exports=exports, wasm_problem=problem,
        payload_sha256=hashlib.sha256(payload).hexdigest(), payload_size=len(payload),
    )


def wasm_interface(payload: bytes) -> tuple[tuple[WasmItem, ...], tuple[WasmItem, ...], str]:
    """A module's imports and exports, as wasmtime reads them; a module it cannot read gives the reason."""
    import wasmtime

    try:
        module = wasmtime.Module(wasmtime.Engine(), payload)
    except wasmtime.WasmtimeError as exc:
        return (), (), f"not a WebAssembly module wasmtime can read: {str(exc).splitlines()[0]}"
    imports = tuple(WasmItem(i.module, i.name or "", _wasm_kind(i.type)) for i in module.imports)
    exports = tuple(WasmItem("", e.name, _wasm_kind(e.type)) for e in module.exports)
    return imports, exports, ""


def _wasm_kind(item_type: Any) -> str:
    return type(item_type).__name__.removesuffix("Type").lower() or "item"


def _record_of(info: FunctionInfo) -> FunctionRecord:
    """The fields the function digest covers; the rest does not change what runs."""
    return FunctionRecord(
        uuid="", name=info.name, description="", public=info.public, executor_type=info.executor_type,
        payload=info.payload,
        arguments=tuple(FunctionArgument(a.key, a.default_value, a.allow_overwrite) for a in info.arguments),
        inputs=tuple(FunctionFile(f.name, optional=f.optional) for f in info.inputs),
        outputs=tuple(FunctionFile(f.name, optional=f.optional) for f in info.outputs),
        owner=info.owner, user_allowlist=(), usage_quota=None,
    )


# --- the task -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSlot:
    direction: str
    """``input`` or ``output``."""
    name: str
    owners: tuple[str, ...]
    assigned: str
    """The data id assigned to it, empty until its owners assign one."""
    manifest_file: dict[str, Any] | None
    """What the manifest binds of the assigned file (id, URL digest, crypto digest, an input's cmac)."""

    def owned_by(self, user: str) -> bool:
        return user in self.owners


@dataclass(frozen=True)
class PartyState:
    user_id: str
    roles: tuple[str, ...]
    approval: TaskApproval | None
    approval_current: bool
    """The approval covers the task's current digest (a stale one no longer counts)."""


@dataclass(frozen=True)
class TaskReview:
    task: TaskInfo
    manifest_text: str
    digest_recomputed: str
    slots: tuple[DataSlot, ...]
    parties: tuple[PartyState, ...]

    @property
    def digest_matches(self) -> bool:
        return bool(self.task.task_digest) and self.digest_recomputed == self.task.task_digest

    def my_slots(self, user: str) -> tuple[DataSlot, ...]:
        return tuple(s for s in self.slots if s.owned_by(user))

    def waiting_for(self, user: str) -> bool:
        """The task asks ``user`` for an approval of its current digest (it is not running or over, and
        ``user`` has not refused it)."""
        return needs_approval(self.task, user)


def needs_approval(task: TaskInfo, user: str) -> bool:
    if user not in task.participants or task.status not in (TaskStatus.CREATED, TaskStatus.DATA_ASSIGNED,
                                                             TaskStatus.APPROVED):
        return False
    if any(r.user_id == user for r in task.refusals):
        return False  # decided: the refusal stands until the user approves (from the task's page)
    mine = next((a for a in task.approvals if a.user_id == user), None)
    return mine is None or mine.task_digest != task.task_digest


def review_task(task: TaskInfo) -> TaskReview:
    manifest: dict[str, Any] = json.loads(task.task_manifest) if task.task_manifest else {}
    slots = []
    for direction, ownership, assigned in (("input", task.inputs_ownership, task.assigned_inputs),
                                           ("output", task.outputs_ownership, task.assigned_outputs)):
        entries = manifest.get(f"{direction}s", {}) if isinstance(manifest, dict) else {}
        for name in sorted(ownership):
            entry = entries.get(name) if isinstance(entries, dict) else None
            file = entry.get("file") if isinstance(entry, dict) else None
            slots.append(DataSlot(direction, name, tuple(sorted(ownership[name])), assigned.get(name, ""),
                                  file if isinstance(file, dict) else None))
    parties = []
    for user in sorted(task.participants):
        roles = []
        if user == task.creator:
            roles.append("creator")
        if user == task.function_owner:
            roles.append("function owner")
        roles += [f"owns {s.direction} {s.name}" for s in slots if s.owned_by(user)]
        approval = next((a for a in task.approvals if a.user_id == user), None)
        parties.append(PartyState(user, tuple(roles), approval,
                                  approval is not None and approval.task_digest == task.task_digest))
    pretty = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) if manifest else ""
    recomputed = hashlib.sha256(task.task_manifest.encode()).hexdigest() if task.task_manifest else ""
    return TaskReview(task, pretty, recomputed, tuple(slots), tuple(parties))


def registration_problems(slot: DataSlot, known: KnownFile) -> list[str]:
    """How the file the digest binds for ``slot`` differs from what this user registered
    (``known``, from the console's key store); empty when it is exactly that file."""
    bound = slot.manifest_file or {}
    expected = {
        "data_id": known.data_id,
        "url_sha256": hashlib.sha256(known.url.encode()).hexdigest(),
        "crypto_info_sha256": crypto_info_digest(CryptoInfo(known.key.schema, known.key.key, known.key.iv)),
    }
    if slot.direction == "input" and known.cmac:
        expected["cmac"] = known.cmac
    names = {"data_id": "data id", "url_sha256": "URL", "crypto_info_sha256": "key", "cmac": "cmac"}
    return [f"the {names[field]} is not the one you registered" for field, value in expected.items()
            if bound.get(field) != value]
