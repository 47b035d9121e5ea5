"""What an approval covers, and whether the consent a task runs on still holds (Kettle).

Teaclave records *who* approved a task, not *what* they approved, so the code or
data could change under an approval (``spec/platform.md`` §12 row 21). Kettle
binds each approval to a **task digest**: the SHA-256 of a canonical description
(:func:`task_manifest`) of everything that decides what runs on the parties' data —
the function's pinned content digest (:func:`kettle.model.functions.function_digest`),
the executor, the merged arguments, the participants, and for every input and
output its owners and assigned file (ID, SHA-256 of the URL, SHA-256 of the crypto
info, and an input's cmac). Hashes stand in for URLs and keys so every participant
can see and recompute the whole description without learning another party's
secrets; each owner checks its own entries against what it registered.

Pure functions: the task rules (:mod:`kettle.model.tasks`) call them inside
compare-and-put loops, and the execution node calls :func:`staged_refusal` before
it runs anything. ``docs/tasks.md`` ("Consent") documents the encodings.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from .functions import canonical_json, sha256_hex
from .ids import Kind, external_id
from .records import CryptoInfo, FileRecord, StagedTask, TaskRecord

__all__ = [
    "TASK_MANIFEST_VERSION",
    "consent_problems",
    "crypto_info_digest",
    "file_entry",
    "iso_time",
    "staged_refusal",
    "task_digest",
    "task_manifest",
]

TASK_MANIFEST_VERSION = "kettle-task-digest-v1"


def iso_time(seconds: float) -> str:
    """A Unix time as people read it in error messages (UTC, to the second)."""
    return datetime.fromtimestamp(int(seconds), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def crypto_info_digest(info: CryptoInfo) -> str:
    """SHA-256 (hex) of ``{"iv": <hex>, "key": <hex>, "schema": <name>}`` in canonical JSON."""
    return sha256_hex(canonical_json({"schema": info.schema, "key": info.key.hex(), "iv": info.iv.hex()}))


def file_entry(owners: tuple[str, ...], file: FileRecord | None, *, output: bool) -> dict[str, Any]:
    """One data name of the manifest: its owners and, once assigned, the file it names.

    An input's cmac binds its content; an output has none until the task wrote it,
    so an output's entry names no cmac (the digest must not move when the task ends)."""
    entry: dict[str, Any] = {"owners": sorted(owners), "file": None}
    if file is not None:
        kind = Kind.OUTPUT if output else Kind.INPUT
        described: dict[str, Any] = {
            "data_id": external_id(kind, file.uuid),
            "url_sha256": sha256_hex(file.url),
            "crypto_info_sha256": crypto_info_digest(file.crypto_info),
        }
        if not output:
            described["cmac"] = (file.cmac or b"").hex()
        entry["file"] = described
    return entry


def _files(
    ownership: Mapping[str, tuple[str, ...]], assigned: Mapping[str, FileRecord], *, output: bool
) -> dict[str, Any]:
    return {name: file_entry(owners, assigned.get(name), output=output) for name, owners in ownership.items()}


def task_manifest(task: TaskRecord) -> str:
    """The canonical description an approval covers (its SHA-256 is the task digest)."""
    return canonical_json({
        "digest": TASK_MANIFEST_VERSION,
        "task_id": external_id(Kind.TASK, task.uuid),
        "function_id": external_id(Kind.FUNCTION, task.function_id),
        "function_digest": task.function_digest,
        "executor": task.executor,
        "function_arguments": task.function_arguments,
        "participants": sorted(task.participants),
        "inputs": _files(task.inputs_ownership, task.assigned_inputs, output=False),
        "outputs": _files(task.outputs_ownership, task.assigned_outputs, output=True),
    })


def task_digest(task: TaskRecord) -> str:
    return sha256_hex(task_manifest(task))


# --- consent at InvokeTask ---------------------------------------------------------------------


def consent_problems(task: TaskRecord, now: float) -> tuple[list[str], list[str]]:
    """(sentences about approvals that are not in force, for the participants we know why;
    participants who simply never approved). Both empty: everyone's consent holds."""
    digest = task_digest(task)
    problems: list[str] = []
    never: list[str] = []
    for user in sorted(task.participants):
        approval = task.approval_of(user)
        if approval is None:
            why = task.lapsed.get(user)
            if why is None:
                never.append(user)
            else:
                problems.append(f"{user}'s approval {why}")
        elif approval.task_digest != digest:
            problems.append(f"{user}'s approval covers task digest {approval.task_digest}, not the current {digest}")
        elif approval.expired(now):
            assert approval.expires_at is not None
            problems.append(f"{user}'s approval expired at {iso_time(approval.expires_at)}")
    return problems, never


# --- the execution node's check -----------------------------------------------------------------


def staged_refusal(staged: StagedTask) -> str | None:
    """Why the node must not run ``staged`` (None: it runs exactly what was pinned and approved).

    The payload, name and executor type must be those of the pinned function
    manifest, whose SHA-256 must be the pinned function digest; the task manifest's
    SHA-256 must be the task digest, and what it describes must be what the node
    runs (task, function, digest, executor, arguments, every file); every approval
    must cover that task digest."""
    if not staged.function_digest or not staged.task_digest:
        return "the staged task carries no pinned digest"
    if sha256_hex(staged.function_manifest) != staged.function_digest:
        return "the function description does not match the pinned function digest"
    try:
        function = json.loads(staged.function_manifest)
        described = json.loads(staged.task_manifest)
    except ValueError:
        return "the staged task's descriptions are not JSON"
    if not isinstance(function, dict) or not isinstance(described, dict):
        return "the staged task's descriptions are malformed"
    if function.get("payload_sha256") != sha256_hex(staged.function_payload):
        return "the function payload does not match the digest pinned when the task was created"
    if (function.get("name"), function.get("executor_type")) != (staged.function_name, staged.executor_type):
        return "the function name or executor type does not match the pinned function digest"
    if sha256_hex(staged.task_manifest) != staged.task_digest:
        return "the task description does not match the task digest"
    runs = {
        "task_id": external_id(Kind.TASK, staged.task_id),
        "function_id": external_id(Kind.FUNCTION, staged.function_id),
        "function_digest": staged.function_digest,
        "executor": staged.executor,
        "function_arguments": staged.function_arguments,
        "inputs": {n: file_entry(f.owner, f, output=False) for n, f in staged.input_data.items()},
        "outputs": {n: file_entry(f.owner, f, output=True) for n, f in staged.output_data.items()},
    }
    if any(described.get(key) != value for key, value in runs.items()):
        return "the staged task is not the task its digest describes"
    if any(a.task_digest != staged.task_digest for a in staged.approvals):
        return "an approval of the staged task covers another task digest"
    return None

