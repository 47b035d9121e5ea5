"""Task rules of the management service (``spec/platform.md`` §6), as pure functions.

CreateTask's validation and argument merge, and every management-side
transition of the task state machine (§6.8) as a function ``TaskRecord ->
TaskRecord`` that either returns the next record or raises the exact error of
Appendix B, checking in the order the spec fixes. The servicer applies these
inside the storage compare-and-put loop, so they must stay free of I/O and
side effects: a transition may be evaluated more than once.

AssignData takes the file records the servicer read beforehand (file records
never change except an output's cmac, set once by the scheduler) and stores
snapshot copies of them in the task; the per-file rules are in
:mod:`kettle.model.files`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..errors import (
    CatalogueError,
    ConsentError,
    InvalidArgument,
    KettleError,
    PermissionDenied,
)
from .consent import consent_problems, iso_time, task_digest, task_manifest
from .files import assigned_file_id, check_assignable
from .functions import (
    INVALID_FUNCTION_ID,
    MAX_ITEMS,
    MAX_NAME_CHARS,
    MAX_RECORD_BYTES,
    MAX_STAGED_BYTES,
    PERMISSION_DENIED,
    Caller,
    UsageRecord,
    check_may_create_task,
    check_quota,
    function_digest,
    function_manifest,
    shown,
)
from .ids import Kind, parse_external_id
from .records import (
    MAX_APPROVAL_SECS,
    MAX_REFUSAL_REASON_CHARS,
    Approval,
    FileRecord,
    FunctionRecord,
    Refusal,
    StagedTask,
    TaskRecord,
    TaskResult,
    TaskStatus,
)

__all__ = [
    "APPROVE_FAILED",
    "ASSIGN_FAILED",
    "CANCELED_REASON",
    "CANCEL_FAILED",
    "CANCEL_FAILED_TASK",
    "CANCEL_FINISHED",
    "EXECUTORS",
    "INVALID_TASK",
    "INVALID_TASK_ID",
    "INVOKE_FAILED",
    "TaskDefinition",
    "approvals_complete",
    "approve_task",
    "assign_data",
    "build_staged_task",
    "cancel_task",
    "check_invoker",
    "check_may_assign",
    "check_may_read_task",
    "check_participant",
    "check_pinned",
    "check_refusal_reason",
    "create_task",
    "data_complete",
    "files_to_read",
    "follow_function",
    "invoke_task",
    "invoked",
    "merge_arguments",
    "ownership_map",
    "parse_arguments",
    "parse_task_id",
    "participants_of",
    "refusal_problems",
    "refuse_task",
    "revoke_approval",
    "stage_task",
    "validate_executor",
]

INVALID_TASK_ID = "invalid task id"
INVALID_TASK = "invalid task"
ASSIGN_FAILED = "failed to assign data to task"
APPROVE_FAILED = "failed to approve task"
INVOKE_FAILED = "failed to invoke task"
CANCEL_FAILED_PREFIX = "failed to cancel task, reason: "
CANCEL_FAILED = CANCEL_FAILED_PREFIX + "task has already been canceled"
"""The reference's text, for every terminal task there; Kettle keeps it for a canceled one."""
CANCEL_FINISHED = CANCEL_FAILED_PREFIX + "task has already finished"
CANCEL_FAILED_TASK = CANCEL_FAILED_PREFIX + "task has already failed"
CANCELED_REASON = "Task canceled"

EXECUTORS = ("mesapy", "builtin", "wamr")
"""The task's ``executor`` strings, exact (§6.2 step 3)."""

ENGINE_OF_TYPE = {"builtin": "builtin", "python": "mesapy", "wamr": "wamr"}
"""The one executor that runs each function executor type (functions.md §2)."""

EXECUTOR_ALIASES = {"python": "mesapy", "wasm": "wamr"}
"""Kettle also accepts the engines' plain names; a task stores (and shows) the reference's name, so
the (type, engine) pair rule of functions.md §2 and every client that reads ``executor`` see one spelling."""

_PRE_STAGED = (TaskStatus.CREATED, TaskStatus.DATA_ASSIGNED, TaskStatus.APPROVED)
_IN_SCHEDULER = (TaskStatus.STAGED, TaskStatus.RUNNING)


@dataclass(frozen=True)
class TaskDefinition:
    """What CreateTask asks for, besides the function."""

    function_arguments: str
    """JSON text of an object."""
    executor: str
    inputs_ownership: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """(data name, owner user IDs) as sent; a repeated name: last wins."""
    outputs_ownership: tuple[tuple[str, tuple[str, ...]], ...] = ()


# --- parsing -------------------------------------------------------------------------------


def parse_task_id(text: str) -> str:
    """The bare UUID of a ``task-…`` ID; anything else (other prefix too) is "invalid task id"."""
    bare = parse_external_id(text, Kind.TASK)
    if bare is None:
        raise InvalidArgument(INVALID_TASK_ID)
    return bare


def validate_executor(executor: str) -> str:
    """The reference's name of the engine ``executor`` names (an alias is translated)."""
    canonical = EXECUTOR_ALIASES.get(executor, executor)
    if canonical not in EXECUTORS:
        raise InvalidArgument(f"Unsupported executor: {shown(executor)}")
    return canonical


def check_executor_pair(executor: str, executor_type: str) -> None:
    """The task's executor must be the one that runs the function's executor type.

    Teaclave finds a mismatch only when the task runs ("function not available"),
    after every data owner approved it; Kettle refuses it at CreateTask."""
    expected = ENGINE_OF_TYPE.get(executor_type)
    if expected is not None and executor != expected:
        raise InvalidArgument(
            f"executor {executor} cannot run a {executor_type} function (its executor is {expected})"
        )


def ownership_map(entries: Iterable[tuple[str, Iterable[str]]]) -> dict[str, tuple[str, ...]]:
    """OwnerList entries as a map: a repeated data name keeps the last entry; owners are a set."""
    result: dict[str, tuple[str, ...]] = {}
    for name, uids in entries:
        result[name] = tuple(sorted(set(uids)))
    return result


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {shown(text)} is out of range")
    return value


def parse_arguments(text: str) -> dict[str, Any]:
    """``function_arguments`` as a JSON object (§6.2 step 4); otherwise INVALID_ARGUMENT.

    Stricter than Python's json module, like the reference's parser: no NaN or
    Infinity, no numbers that overflow a double, no lone surrogate escapes —
    each would otherwise be stored and later fail to render as JSON or UTF-8."""
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError, UnicodeEncodeError) as exc:
        raise InvalidArgument(f"function_arguments is not valid JSON: {shown(str(exc))}") from None
    if not isinstance(value, dict):
        raise InvalidArgument("function_arguments is not a JSON object")
    return value


def merge_arguments(function: FunctionRecord, requested: dict[str, Any]) -> str:
    """The task's final argument object as text (§6.2 "Argument merging").

    Start from the request (values of any JSON type kept); every function
    argument that is not overwritable, or absent from the request, is set to its
    default value *as a JSON string*. Compact, keys sorted at every level, UTF-8
    kept as is: the text the reference stores and GetTask returns."""
    merged = dict(requested)
    for argument in function.arguments:
        if not argument.allow_overwrite or argument.key not in requested:
            merged[argument.key] = argument.default_value
    return json.dumps(merged, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def participants_of(
    creator: str,
    function: FunctionRecord,
    inputs_ownership: dict[str, tuple[str, ...]],
    outputs_ownership: dict[str, tuple[str, ...]],
) -> tuple[str, ...]:
    """All data owners, the creator, and the function's owner when the function is private."""
    people = {creator}
    for owners in (*inputs_ownership.values(), *outputs_ownership.values()):
        people.update(owners)
    if not function.public:
        people.add(function.owner)
    return tuple(sorted(people))


# --- CreateTask -------------------------------------------------------------------------------


def _files_match(declared: Sequence[Any], listed: dict[str, tuple[str, ...]]) -> bool:
    """{declared names} == {listed names} ∪ {optional declared names} (§6.2 steps 6–7)."""
    names = {f.name for f in declared}
    return names == set(listed) | {f.name for f in declared if f.optional}


def create_task(
    function: FunctionRecord | None, caller: Caller, definition: TaskDefinition, bare_uuid: str
) -> TaskRecord:
    """A Created task, or the first error of §6.2 in its order:

    1. unknown function → INVALID_ARGUMENT "invalid function id";
    2. caller's role / allowlist / disabled → PERMISSION_DENIED;
    3. executor string → INVALID_ARGUMENT "Unsupported executor: …" (Teaclave:
       INTERNAL), and (Kettle) it must be the function's executor;
    4. function_arguments not a JSON object → INVALID_ARGUMENT (Teaclave: INTERNAL);
    5. request keys ≠ overwritable argument keys → INVALID_ARGUMENT "invalid task";
    6.–7. inputs / outputs ownership ≠ declared files → "invalid task".
    Then Kettle's checks: a built-in's arguments and files (:func:`check_builtin_task`),
    bounds (owners per entry, owner ID length, record size).
    """
    function = check_may_create_task(function, caller)
    executor = validate_executor(definition.executor)
    check_executor_pair(executor, function.executor_type)
    requested = parse_arguments(definition.function_arguments)
    if set(requested) != {a.key for a in function.arguments if a.allow_overwrite}:
        raise InvalidArgument(INVALID_TASK)
    inputs = ownership_map(definition.inputs_ownership)
    outputs = ownership_map(definition.outputs_ownership)
    if not _files_match(function.inputs, inputs) or not _files_match(function.outputs, outputs):
        raise InvalidArgument(INVALID_TASK)
    for owners in (*inputs.values(), *outputs.values()):
        if len(owners) > MAX_ITEMS or any(len(uid) > MAX_NAME_CHARS for uid in owners):
            raise InvalidArgument(INVALID_TASK)
    arguments = merge_arguments(function, requested)
    if function.executor_type == "builtin":
        check_builtin_task(function.name, arguments, inputs, outputs)
    task = TaskRecord(
        uuid=bare_uuid,
        creator=caller.user_id,
        function_id=function.uuid,
        function_owner=function.owner,
        function_arguments=arguments,
        executor=executor,
        inputs_ownership=inputs,
        outputs_ownership=outputs,
        participants=participants_of(caller.user_id, function, inputs, outputs),
        function_digest=function_digest(function),
    )
    size = len(task.to_bytes())
    if size > MAX_RECORD_BYTES:
        raise InvalidArgument(f"task is too large to store ({size} bytes encoded, at most {MAX_RECORD_BYTES})")
    return task


def check_builtin_task(name: str, arguments: str, inputs: Iterable[str], outputs: Iterable[str]) -> None:
    """A task of a known built-in must be one it can run: typed arguments, every file it opens.

    The reference finds such mistakes only when the task runs, after every party
    approved it; Kettle refuses them here with INVALID_ARGUMENT ``invalid task: <why>``.
    A name that is no built-in is refused at RegisterFunction; a record stored before
    that rule is left to fail when it runs (``Function not found.``)."""
    from ..functions import (  # imports only the named function's module
        TaskMismatch,
        lookup,
    )

    function = lookup(name)
    if function is None:
        return
    try:
        function.check_task(json.loads(arguments), inputs, outputs)
    except TaskMismatch as exc:
        raise InvalidArgument(f"{INVALID_TASK}: {exc}") from None


# --- conditions ---------------------------------------------------------------------------------


def data_complete(task: TaskRecord) -> bool:
    """Every data name of the ownership maps has an assigned file."""
    return set(task.inputs_ownership) <= set(task.assigned_inputs) and set(task.outputs_ownership) <= set(
        task.assigned_outputs
    )


def approvals_complete(task: TaskRecord) -> bool:
    """Everyone approved, or approval is moot because there is a single participant."""
    return len(task.participants) == 1 or set(task.participants) <= set(task.approved_users)


def check_participant(task: TaskRecord, caller: Caller) -> TaskRecord:
    if caller.user_id not in task.participants:
        raise PermissionDenied(PERMISSION_DENIED)
    return task


def check_may_read_task(task: TaskRecord | None, caller: Caller) -> TaskRecord:
    """GetTask / WaitTask: participants only; PlatformAdmin is not exempt (§6.7)."""
    if task is None:
        raise InvalidArgument(INVALID_TASK_ID)
    return check_participant(task, caller)


# --- transitions ----------------------------------------------------------------------------------


def check_may_assign(task: TaskRecord, caller: Caller) -> TaskRecord:
    """§6.3 steps 2–3: a participant, and the task still Created."""
    check_participant(task, caller)
    if task.status != TaskStatus.CREATED:
        raise CatalogueError(ASSIGN_FAILED)
    return task


Entries = Sequence[tuple[str, str]]
"""(data name, data ID) pairs of an AssignData request, in request order."""


def _reachable(entries: Entries, ownership: dict[str, tuple[str, ...]], kind: Kind) -> list[str]:
    """Bare UUIDs of the ``kind`` files AssignData may have to look at.

    Each accepted entry fills a distinct declared name, so the entry after the
    first ``len(ownership)`` ones always fails: nothing after it is ever reached."""
    bares: list[str] = []
    for _, data_id in entries[: len(ownership) + 1]:
        try:
            bare = assigned_file_id(data_id, kind)
        except KettleError:
            continue
        if bare is not None and bare not in bares:
            bares.append(bare)
    return bares


def files_to_read(task: TaskRecord, inputs: Entries, outputs: Entries) -> tuple[list[str], list[str]]:
    """(input UUIDs, output UUIDs) whose records :func:`assign_data` needs; a bounded
    number however long the request's lists are. Depends only on the ownership maps,
    which never change, so it may be computed on an older copy of the task."""
    return (
        _reachable(inputs, task.inputs_ownership, Kind.INPUT),
        _reachable(outputs, task.outputs_ownership, Kind.OUTPUT),
    )


def _assign(
    task: TaskRecord,
    caller: Caller,
    entries: Entries,
    kind: Kind,
    files: Mapping[str, FileRecord],
) -> dict[str, FileRecord]:
    output = kind is Kind.OUTPUT
    ownership = task.outputs_ownership if output else task.inputs_ownership
    assigned = dict(task.assigned_outputs if output else task.assigned_inputs)
    bares = [assigned_file_id(data_id, kind) for _, data_id in entries]  # step 4: all parsed first
    for (name, _), bare in zip(entries, bares, strict=True):
        record = None if bare is None else files.get(bare)
        assigned[name] = check_assignable(record, caller, name, ownership, assigned, output=output)
    return assigned


def assign_data(
    task: TaskRecord,
    caller: Caller,
    inputs: Entries,
    outputs: Entries,
    input_files: Mapping[str, FileRecord] | None = None,
    output_files: Mapping[str, FileRecord] | None = None,
) -> TaskRecord:
    """§6.3, all or nothing: participant → status Created → every input entry (IDs
    parsed first: INTERNAL; then "invalid data id" / PERMISSION_DENIED per entry, in
    order) → the same for outputs → DataAssigned once every declared name has a file.

    ``input_files`` / ``output_files`` are the stored records by bare UUID (as read
    for :func:`files_to_read`); a missing one is an unknown file. The task keeps
    snapshot copies. An AssignData with empty lists is legal and advances a task
    whose data is complete (a task without files) to DataAssigned."""
    check_may_assign(task, caller)
    assigned_inputs = _assign(task, caller, inputs, Kind.INPUT, input_files or {})
    assigned_outputs = _assign(task, caller, outputs, Kind.OUTPUT, output_files or {})
    # Only a Created task takes data, and a task leaves Created at its first approval, so
    # no assignment ever changes what an approval covered.
    updated = replace(task, assigned_inputs=assigned_inputs, assigned_outputs=assigned_outputs)
    if data_complete(updated):
        updated = replace(updated, status=TaskStatus.DATA_ASSIGNED)
    size = len(updated.to_bytes())
    if size > MAX_RECORD_BYTES:
        raise InvalidArgument(f"task is too large to store ({size} bytes encoded, at most {MAX_RECORD_BYTES})")
    return updated


def _void_if_changed(before: TaskRecord, after: TaskRecord, why: str) -> TaskRecord:
    """Kettle: a change to anything the task digest covers voids every approval recorded
    on the old digest; the task goes back to waiting for approvals, and each voided
    participant is remembered with ``why`` (for InvokeTask's refusal)."""
    if not before.approvals or task_digest(before) == task_digest(after):
        return after
    lapsed = {**after.lapsed, **{a.user_id: why for a in before.approvals}}
    status = TaskStatus.DATA_ASSIGNED if after.status == TaskStatus.APPROVED else after.status
    return replace(after, approvals=(), lapsed=lapsed, status=status)


def _refit(task: TaskRecord, function: FunctionRecord) -> TaskRecord | str:
    """The task rebuilt on the changed ``function`` as CreateTask would have built it from the
    same request, or why it cannot be (the request no longer fits the function)."""
    try:
        check_executor_pair(task.executor, function.executor_type)
        merged = parse_arguments(task.function_arguments)
        if set(merged) != {a.key for a in function.arguments}:
            return "its arguments are not the function's arguments any more"
        requested = {a.key: merged[a.key] for a in function.arguments if a.allow_overwrite}
        if not _files_match(function.inputs, task.inputs_ownership) or not _files_match(
            function.outputs, task.outputs_ownership
        ):
            return "its inputs or outputs are not the function's any more"
        arguments = merge_arguments(function, requested)
        if function.executor_type == "builtin":
            check_builtin_task(function.name, arguments, task.inputs_ownership, task.outputs_ownership)
    except KettleError as exc:
        return exc.message
    return replace(
        task,
        function_digest=function_digest(function),
        function_arguments=arguments,
        function_owner=function.owner,
        participants=participants_of(task.creator, function, task.inputs_ownership, task.outputs_ownership),
    )


def follow_function(task: TaskRecord, function: FunctionRecord | None) -> TaskRecord:
    """Kettle: a task not yet invoked follows an update of its function, when the task still
    fits it: it pins the new digest, and every approval given to the old one lapses (an update
    before any approval is therefore harmless). A task that no longer fits keeps its old pin,
    so InvokeTask refuses it. Invoked and finished tasks never change."""
    if task.status not in _PRE_STAGED or function is None or function_digest(function) == task.function_digest:
        return task
    refit = _refit(task, function)
    if isinstance(refit, str):
        return task
    return _void_if_changed(
        task, refit, "lapsed because the function changed since the task was created, after the approval was given "
        f"(its digest is now {refit.function_digest})",
    )


def _function_changed(task: TaskRecord, function: FunctionRecord) -> str:
    if not task.function_digest:
        return "the task was created before Kettle pinned functions to tasks"
    return (f"the function changed since the task was created (the task pinned digest {task.function_digest}, "
            f"the function's is now {function_digest(function)})")


def check_approval_request(valid_for_secs: int) -> None:
    if not 0 <= valid_for_secs <= MAX_APPROVAL_SECS:
        raise InvalidArgument(f"valid_for_secs must be between 0 (no expiry) and {MAX_APPROVAL_SECS}")


def approve_task(
    task: TaskRecord,
    caller: Caller,
    function: FunctionRecord | None,
    *,
    now: int,
    expect_digest: str = "",
    valid_for_secs: int = 0,
) -> TaskRecord:
    """§6.4: the state is checked before participation; approving is idempotent;
    Approved once everyone approved (or single participant), else DataAssigned.

    Kettle: the task first follows its (current) ``function`` (:func:`follow_function`);
    if it cannot, approving is refused (FAILED_PRECONDITION). The approval is recorded
    against the task digest, at ``now`` (Unix seconds), expiring ``valid_for_secs``
    later (0: no expiry). With ``expect_digest``, a different current digest is refused
    and nothing is recorded: a party approves exactly what it reviewed. Approving again
    renews the approval (same digest, no expiry asked: unchanged)."""
    ready = task.status == TaskStatus.DATA_ASSIGNED or (task.status == TaskStatus.CREATED and data_complete(task))
    if not ready:
        raise CatalogueError(APPROVE_FAILED)
    check_participant(task, caller)
    check_approval_request(valid_for_secs)
    followed = follow_function(task, function)
    if function is not None and function_digest(function) != followed.function_digest:
        raise ConsentError(f"{_function_changed(task, function)}, and the task no longer fits it "
                           f"({_refit(task, function)}); create a new task")
    task = followed
    digest = task_digest(task)
    if expect_digest and expect_digest != digest:
        raise ConsentError(f"the task's digest is now {digest}, not the expected {expect_digest}: the task changed "
                           "since it was reviewed; nothing was approved")
    expires_at = now + valid_for_secs if valid_for_secs else None
    existing = task.approval_of(caller.user_id)
    if existing is None or existing.task_digest != digest or existing.expired(now) or expires_at is not None \
            or existing.expires_at is not None:
        approval = Approval(caller.user_id, digest, now, expires_at)
        others = [a for a in task.approvals if a.user_id != caller.user_id]
        lapsed = {user: why for user, why in task.lapsed.items() if user != caller.user_id}
        task = replace(task, approvals=tuple(sorted([*others, approval], key=lambda a: a.user_id)), lapsed=lapsed)
    # Approving is how a participant takes its refusal back.
    refusals = tuple(r for r in task.refusals if r.user_id != caller.user_id)
    status = TaskStatus.APPROVED if approvals_complete(task) else TaskStatus.DATA_ASSIGNED
    return replace(task, status=status, refusals=refusals)


def check_refusal_reason(reason: str) -> str:
    """A refusal's reason: at most :data:`MAX_REFUSAL_REASON_CHARS` printable characters (it is
    shown to the other participants and in InvokeTask's refusal, so no line breaks or controls)."""
    if len(reason) > MAX_REFUSAL_REASON_CHARS:
        raise InvalidArgument(f"the reason is {len(reason)} characters long; at most {MAX_REFUSAL_REASON_CHARS}")
    if not reason.isprintable():
        raise InvalidArgument("the reason may hold only printable characters (no line breaks or control characters)")
    return reason


def refuse_task(task: TaskRecord, caller: Caller, now: int, reason: str = "") -> TaskRecord:
    """Kettle: a participant declines to approve a task not yet invoked, visibly to the others.

    In order: the reason (:func:`check_refusal_reason`, INVALID_ARGUMENT); the caller must be a
    participant, as to approve (PERMISSION_DENIED, before anything about the task is told);
    the task must not be invoked yet, as to revoke an approval (FAILED_PRECONDITION). The
    caller's approval, if any, is withdrawn (an Approved task goes back to DataAssigned); its
    refusal, bound to the current task digest at ``now`` (Unix seconds), replaces an earlier
    one. It stands until the caller approves (:func:`approve_task`); InvokeTask is refused
    meanwhile, naming who refused (:func:`stage_task`)."""
    check_refusal_reason(reason)
    check_participant(task, caller)
    if task.status not in _PRE_STAGED:
        raise ConsentError(
            f"the task is {task.status.name.lower()}: a task can be refused only before it is invoked"
        )
    refusal = Refusal(caller.user_id, now, task_digest(task), reason)
    others = [r for r in task.refusals if r.user_id != caller.user_id]
    approvals = tuple(a for a in task.approvals if a.user_id != caller.user_id)
    status = TaskStatus.DATA_ASSIGNED if task.status == TaskStatus.APPROVED else task.status
    return replace(task, approvals=approvals, status=status,
                   refusals=tuple(sorted([*others, refusal], key=lambda r: r.user_id)))


def refusal_problems(task: TaskRecord) -> list[str]:
    """One sentence per standing refusal, naming who refused, when, and why."""
    problems = []
    for refusal in task.refusals:
        why = f" ({refusal.reason})" if refusal.reason else ""
        problems.append(f"{refusal.user_id} refused it at {iso_time(refusal.refused_at)}{why}")
    return problems


def revoke_approval(task: TaskRecord, caller: Caller, now: int) -> TaskRecord:
    """Kettle: a participant withdraws its approval, until the task is invoked. An Approved
    task goes back to DataAssigned; InvokeTask then names who revoked (FAILED_PRECONDITION)."""
    if task.status not in _PRE_STAGED:
        raise ConsentError(
            f"the task is {task.status.name.lower()}: an approval can be revoked only before the task is invoked"
        )
    check_participant(task, caller)
    if task.approval_of(caller.user_id) is None:
        raise ConsentError(f"{caller.user_id} has no approval of this task to revoke")
    approvals = tuple(a for a in task.approvals if a.user_id != caller.user_id)
    status = TaskStatus.DATA_ASSIGNED if task.status == TaskStatus.APPROVED else task.status
    lapsed = {**task.lapsed, caller.user_id: f"was revoked at {iso_time(now)}"}
    return replace(task, approvals=approvals, lapsed=lapsed, status=status)


def invoked(task: TaskRecord) -> bool:
    """Staged, running or over: nothing about its consent changes any more."""
    return task.status not in _PRE_STAGED


def check_invoker(task: TaskRecord, caller: Caller) -> TaskRecord:
    """Only the creator invokes; PlatformAdmin is not exempt (§6.5 step 2)."""
    if caller.user_id != task.creator:
        raise PermissionDenied(PERMISSION_DENIED)
    return task


def stage_task(task: TaskRecord, now: float) -> TaskRecord:
    """§6.5 step 5 and the status of step 7: Approved, or Created/DataAssigned whose
    data and approvals are complete (promoted on the fly) → Staged.

    Kettle: with more than one participant, every approval must be in force at ``now``
    (not expired, covering the current task digest); an approval that lapsed (revoked,
    expired, voided by a change) is refused with FAILED_PRECONDITION naming whose and
    why. Approvals that were simply never given keep the reference's refusal.

    Kettle: a standing refusal (:func:`refuse_task`) is refused first, FAILED_PRECONDITION
    naming who refused: a task a participant declined never runs, whatever else holds."""
    refused = refusal_problems(task)
    if refused:
        raise ConsentError(f"the task cannot run: {'; '.join(refused)}; it runs only once each of them approves it")
    data_ready = task.status == TaskStatus.APPROVED or (
        task.status in (TaskStatus.CREATED, TaskStatus.DATA_ASSIGNED) and data_complete(task)
    )
    if not data_ready:
        raise CatalogueError(INVOKE_FAILED)
    if len(task.participants) > 1:
        problems, never = consent_problems(task, now)
        if problems:
            missing = f"; {', '.join(never)} never approved it" if never else ""
            raise ConsentError(f"the task cannot run: {'; '.join(problems)}{missing}")
        if never:
            raise CatalogueError(INVOKE_FAILED)
    return replace(task, status=TaskStatus.STAGED)


def invoke_task(
    task: TaskRecord, caller: Caller, function: FunctionRecord | None, usage: UsageRecord | None, now: float
) -> TaskRecord:
    """§6.5 steps 2–5 in order: creator, function and usage record exist, quota, state.

    Kettle, after the quota: the function's current digest must be the one the task
    pinned (else FAILED_PRECONDITION: the function changed since the task was created);
    then the approvals must hold at ``now`` (:func:`stage_task`)."""
    check_invoker(task, caller)
    if function is None or usage is None:
        raise InvalidArgument(INVALID_FUNCTION_ID)
    check_quota(function, usage)
    if task.status in _PRE_STAGED:
        check_pinned(task, function)
    return stage_task(task, now)


def check_pinned(task: TaskRecord, function: FunctionRecord) -> None:
    """The function must still be the one the task pinned; checked again when staging."""
    if function_digest(function) != task.function_digest:
        raise ConsentError(f"{_function_changed(task, function)}; nothing ran. Each party must approve the task "
                           "again on the new function, or the task must be created again")


def build_staged_task(task: TaskRecord, function: FunctionRecord) -> StagedTask:
    """The self-contained staged task (§6.9): code, name and executor type from the
    function record (Kettle: the one the task pinned), arguments and file snapshots from
    the task; and what the consent covered: both digests, the canonical descriptions
    they hash, and the approvals (for the node's check and the task's receipt)."""
    check_pinned(task, function)
    staged = StagedTask(
        task_id=task.uuid,
        function_id=function.uuid,
        user_id=task.creator,
        executor=task.executor,
        executor_type=function.executor_type,
        function_name=function.name,
        function_arguments=task.function_arguments,
        function_payload=function.payload,
        input_data=dict(task.assigned_inputs),
        output_data=dict(task.assigned_outputs),
        function_digest=task.function_digest,
        function_manifest=function_manifest(function),
        task_digest=task_digest(task),
        task_manifest=task_manifest(task),
        approvals=tuple(sorted(task.approvals, key=lambda a: a.user_id)),
    )
    size = len(staged.to_bytes())
    if size > MAX_STAGED_BYTES:
        raise InvalidArgument(f"task is too large to stage ({size} bytes encoded, at most {MAX_STAGED_BYTES})")
    return staged


def cancel_task(task: TaskRecord, caller: Caller) -> TaskRecord | None:
    """§6.6: creator or admin. Before staging → Canceled with Err "Task canceled".
    Staged/Running → None: the caller records a cancel request and the scheduler
    finishes the job. Terminal → UNKNOWN, as in the reference, saying what is true
    (the reference says "already been canceled" for every terminal task)."""
    if not (caller.is_admin or caller.user_id == task.creator):
        raise PermissionDenied(PERMISSION_DENIED)
    if task.status in _IN_SCHEDULER:
        return None
    if task.status in _PRE_STAGED:
        return replace(task, status=TaskStatus.CANCELED, result=TaskResult(failure=CANCELED_REASON))
    if task.status == TaskStatus.FINISHED:
        raise CatalogueError(CANCEL_FINISHED)
    if task.status == TaskStatus.FAILED:
        raise CatalogueError(CANCEL_FAILED_TASK)
    raise CatalogueError(CANCEL_FAILED)
