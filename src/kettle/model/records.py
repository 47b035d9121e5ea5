"""The platform's stored records and the staged task, with their JSON encodings.

These are the contracts between services that share the storage service's
platform partition: management writes functions, files and tasks; the scheduler
updates tasks and output files; execution nodes receive staged tasks. Decoding
is strict (a record that does not decode is corruption, never a default).

Storage keys (platform partition, ``spec/platform.md`` §8): ``function-<uuid>``,
``usage-<uuid>``, ``user-<uuid5 of user id>``, ``task-<uuid>``, ``input-<uuid>``,
``output-<uuid>``, ``cancel-request-<uuid>``; the queue ``staged-task``. Kettle
adds ``payload-<uuid>``: a function's payload, as raw bytes (see
:class:`FunctionRecord`), and ``pinned-task-<function uuid>-<task uuid>``: the tasks
pinned to a function (see :func:`pinned_task_key`). The per-party listings
``party-task-…`` and ``party-file-…`` are described in :mod:`kettle.model.listings`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from dataclasses import asdict, dataclass, field, fields
from enum import IntEnum
from typing import Any

STAGED_TASK_QUEUE = b"staged-task"


class TaskStatus(IntEnum):
    """Numbers as ``teaclave_common_proto.TaskStatus``."""

    CREATED = 0
    DATA_ASSIGNED = 1
    APPROVED = 2
    STAGED = 3
    RUNNING = 4
    FINISHED = 10
    CANCELED = 20
    FAILED = 99

    @property
    def terminal(self) -> bool:
        return self in (TaskStatus.FINISHED, TaskStatus.CANCELED, TaskStatus.FAILED)


def function_key(bare: str) -> bytes:
    return f"function-{bare}".encode()


def function_payload_key(bare: str) -> bytes:
    """Not ``function-payload-…``: a scan of ``function-`` lists the functions."""
    return f"payload-{bare}".encode()


def usage_key(bare: str) -> bytes:
    return f"usage-{bare}".encode()


def user_index_key(user_id: str) -> bytes:
    return f"user-{uuid.uuid5(uuid.NAMESPACE_DNS, user_id)}".encode()


def task_key(bare: str) -> bytes:
    return f"task-{bare}".encode()


PINNED_TASK_PREFIX = "pinned-task-"


def pinned_tasks_prefix(function_bare: str) -> bytes:
    """Keys ``pinned-task-<function uuid>-<task uuid>`` (empty values): the tasks pinned to a
    function, so an update of the function can make them follow it (Kettle)."""
    return f"{PINNED_TASK_PREFIX}{function_bare}-".encode()


def pinned_task_key(function_bare: str, task_bare: str) -> bytes:
    return pinned_tasks_prefix(function_bare) + task_bare.encode()


def input_key(bare: str) -> bytes:
    return f"input-{bare}".encode()


def output_key(bare: str) -> bytes:
    return f"output-{bare}".encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise ValueError("expected base64 text")
    return base64.b64decode(text, validate=True)


def _dump(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class CryptoInfo:
    schema: str
    key: bytes = b""
    iv: bytes = b""

    def to_json(self) -> dict[str, Any]:
        return {"schema": self.schema, "key": _b64(self.key), "iv": _b64(self.iv)}

    @classmethod
    def from_json(cls, doc: Any) -> CryptoInfo:
        if not isinstance(doc, dict) or set(doc) != {"schema", "key", "iv"} or not isinstance(doc["schema"], str):
            raise ValueError("malformed crypto info")
        return cls(doc["schema"], _unb64(doc["key"]), _unb64(doc["iv"]))


@dataclass(frozen=True)
class ObjectStoreCredentials:
    """Credentials a data owner registered with an ``s3://`` file (Kettle, ``docs/data.md``).

    Stored only inside the file's record (sealed like every record), copied into the
    tasks the file is assigned to and into their staged tasks (sealed, and sent to the
    execution node over attested TLS), and used there for that one URL. Never returned
    by any RPC and never part of a task digest. ``repr`` leaves the secret and the
    session token out, so a record in a log line or a traceback shows neither.
    ``endpoint_url`` empty: AWS S3 itself; ``region`` empty: ``us-east-1``.
    """

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(default="", repr=False)
    endpoint_url: str = ""
    region: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            "session_token": self.session_token,
            "endpoint_url": self.endpoint_url,
            "region": self.region,
        }

    @classmethod
    def from_json(cls, doc: Any) -> ObjectStoreCredentials:
        names = {f.name for f in fields(cls)}
        if not isinstance(doc, dict) or set(doc) != names or not all(isinstance(doc[n], str) for n in names):
            raise ValueError("malformed object store credentials")
        return cls(**doc)


_FILE_FIELDS = frozenset({"uuid", "url", "crypto_info", "owner", "cmac"})


@dataclass(frozen=True)
class FileRecord:
    """An input or output file (``spec/platform.md`` §5.2); ``cmac`` None = not yet written.

    ``s3_credentials`` (Kettle): what the owner registered for an ``s3://`` URL, or None.
    The encoding has the ``s3_credentials`` key only when there are some, so records
    without them are byte for byte what they were before owners could register any."""

    uuid: str
    url: str
    crypto_info: CryptoInfo
    owner: tuple[str, ...]
    cmac: bytes | None = None
    s3_credentials: ObjectStoreCredentials | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "uuid": self.uuid,
            "url": self.url,
            "crypto_info": self.crypto_info.to_json(),
            "owner": sorted(self.owner),
            "cmac": None if self.cmac is None else _b64(self.cmac),
        }
        if self.s3_credentials is not None:
            doc["s3_credentials"] = self.s3_credentials.to_json()
        return doc

    @classmethod
    def from_json(cls, doc: Any) -> FileRecord:
        if not isinstance(doc, dict) or set(doc) not in (_FILE_FIELDS, _FILE_FIELDS | {"s3_credentials"}):
            raise ValueError("malformed file record")
        owner = doc["owner"]
        if not isinstance(owner, list) or not all(isinstance(o, str) for o in owner):
            raise ValueError("malformed file owner list")
        return cls(
            uuid=str(doc["uuid"]),
            url=str(doc["url"]),
            crypto_info=CryptoInfo.from_json(doc["crypto_info"]),
            owner=tuple(sorted(owner)),
            cmac=None if doc["cmac"] is None else _unb64(doc["cmac"]),
            s3_credentials=ObjectStoreCredentials.from_json(doc["s3_credentials"]) if "s3_credentials" in doc else None,
        )

    def to_bytes(self) -> bytes:
        return _dump(self.to_json())

    @classmethod
    def from_bytes(cls, data: bytes) -> FileRecord:
        try:
            return cls.from_json(json.loads(data))
        except ValueError:
            raise
        except Exception as exc:  # noqa: BLE001 - any shape error is corruption
            raise ValueError(f"malformed file record: {exc}") from None


@dataclass(frozen=True)
class FunctionArgument:
    key: str
    default_value: str = ""
    allow_overwrite: bool = True


@dataclass(frozen=True)
class FunctionFile:
    name: str
    description: str = ""
    optional: bool = False


@dataclass(frozen=True)
class FunctionRecord:
    uuid: str
    name: str
    description: str
    public: bool
    executor_type: str
    payload: bytes
    arguments: tuple[FunctionArgument, ...]
    inputs: tuple[FunctionFile, ...]
    outputs: tuple[FunctionFile, ...]
    owner: str
    user_allowlist: tuple[str, ...]
    usage_quota: int | None
    """None = unlimited; 0 = never invocable (``spec/platform.md`` §4.1)."""
    disabled: bool = False

    # Stored as two records: this JSON without the payload (``function-<uuid>``) and
    # the payload's raw bytes (``payload-<uuid>``, absent when empty), written in one
    # storage transaction. Inline, base64 in JSON, a payload could use only about
    # three quarters of a storage message. The JSON names the payload's SHA-256, so
    # a reader can tell it holds the payload that goes with it. Records written with
    # the payload inline (``payload`` field) still load.

    @property
    def payload_sha256(self) -> str:
        return hashlib.sha256(self.payload).hexdigest()

    def to_bytes(self) -> bytes:
        """The function record without its payload (see :meth:`payload_record`)."""
        doc = asdict(self)
        del doc["payload"]
        doc["payload_sha256"] = self.payload_sha256
        return _dump(doc)

    def payload_record(self) -> bytes | None:
        """The value of ``payload-<uuid>``; None when the payload is empty (no record)."""
        return self.payload or None

    @staticmethod
    def stored_payload_sha256(data: bytes) -> str | None:
        """The SHA-256 (hex) of the payload a stored function record goes with; None when
        the record holds its payload inline (written before payloads were stored apart)."""
        doc = _function_doc(data)
        return None if "payload" in doc else str(doc["payload_sha256"])

    @classmethod
    def from_bytes(cls, data: bytes, payload: bytes | None = None) -> FunctionRecord:
        """Decode a stored function; ``payload`` is the value of its ``payload-<uuid>``
        record (None: absent), ignored for a record that holds its payload inline."""
        doc = _function_doc(data)
        if "payload" in doc:
            payload = _unb64(doc["payload"])
        else:
            payload = payload or b""
            if hashlib.sha256(payload).hexdigest() != doc["payload_sha256"]:
                raise ValueError("the function's payload record does not match its function record")
        try:
            return cls(
                uuid=doc["uuid"],
                name=doc["name"],
                description=doc["description"],
                public=bool(doc["public"]),
                executor_type=doc["executor_type"],
                payload=payload,
                arguments=tuple(FunctionArgument(**a) for a in doc["arguments"]),
                inputs=tuple(FunctionFile(**f) for f in doc["inputs"]),
                outputs=tuple(FunctionFile(**f) for f in doc["outputs"]),
                owner=doc["owner"],
                user_allowlist=tuple(doc["user_allowlist"]),
                usage_quota=doc["usage_quota"],
                disabled=bool(doc["disabled"]),
            )
        except (TypeError, KeyError) as exc:
            raise ValueError(f"malformed function record: {exc}") from None


def _function_doc(data: bytes) -> dict[str, Any]:
    """A stored function record's fields: with ``payload_sha256``, or (older) ``payload`` inline."""
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise ValueError(f"FunctionRecord record is not JSON: {exc}") from None
    names = {f.name for f in fields(FunctionRecord)} - {"payload"}
    if not isinstance(doc, dict) or set(doc) not in (names | {"payload"}, names | {"payload_sha256"}):
        raise ValueError("FunctionRecord record has the wrong fields")
    if "payload_sha256" in doc and not isinstance(doc["payload_sha256"], str):
        raise ValueError("FunctionRecord record has a malformed payload digest")
    return doc


MAX_REASON_BYTES = 1024
"""A failure reason is cut to this many bytes (DESIGN.md §6)."""


def truncate_reason(reason: str, limit: int = MAX_REASON_BYTES) -> str:
    """Cut a failure reason to ``limit`` UTF-8 bytes without splitting a character."""
    data = reason.encode("utf-8", errors="replace")
    if len(data) <= limit:
        return reason
    return data[:limit].decode("utf-8", errors="ignore")


@dataclass(frozen=True)
class TaskOutputs:
    return_value: bytes = b""
    tags_map: dict[str, bytes] = field(default_factory=dict)
    log: tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskResult:
    """Not ready (both None), Ok (``outputs``) or Err (``failure`` reason).

    ``sandbox_layers`` (Kettle) names the sandbox layers in force while the task's
    user code ran, with either outcome; empty for built-ins and for results that
    did not come from a run (not ready, canceled, lost).

    ``receipt`` (Kettle) is the execution receipt the node that ran the task signed
    (:mod:`kettle.model.receipts`), with either outcome; empty for results no node
    produced (not ready, canceled before a node ran it, every node lost).
    """

    outputs: TaskOutputs | None = None
    failure: str | None = None
    sandbox_layers: tuple[str, ...] = ()
    receipt: bytes = b""

    @property
    def ready(self) -> bool:
        return self.outputs is not None or self.failure is not None

    def to_json(self) -> dict[str, Any] | None:
        doc: dict[str, Any]
        if self.outputs is not None:
            o = self.outputs
            doc = {"ok": {"return_value": _b64(o.return_value), "tags_map": {k: _b64(v) for k, v in o.tags_map.items()}, "log": list(o.log)}}
        elif self.failure is not None:
            doc = {"err": self.failure}
        else:
            return None
        if self.sandbox_layers:
            doc["sandbox_layers"] = list(self.sandbox_layers)
        if self.receipt:
            doc["receipt"] = _b64(self.receipt)
        return doc

    @classmethod
    def from_json(cls, doc: Any) -> TaskResult:
        if doc is None:
            return cls()
        if not isinstance(doc, dict):
            raise ValueError("malformed task result")
        outcome = set(doc) - {"sandbox_layers", "receipt"}
        layers = doc.get("sandbox_layers", [])
        if not isinstance(layers, list) or not all(isinstance(name, str) for name in layers):
            raise ValueError("malformed task result")
        receipt = _unb64(doc.get("receipt", ""))
        if outcome == {"err"} and isinstance(doc["err"], str):
            return cls(failure=doc["err"], sandbox_layers=tuple(layers), receipt=receipt)
        if outcome == {"ok"} and isinstance(doc["ok"], dict):
            ok = doc["ok"]
            return cls(outputs=TaskOutputs(
                return_value=_unb64(ok["return_value"]),
                tags_map={str(k): _unb64(v) for k, v in ok["tags_map"].items()},
                log=tuple(str(line) for line in ok["log"]),
            ), sandbox_layers=tuple(layers), receipt=receipt)
        raise ValueError("malformed task result")


MAX_APPROVAL_SECS = 10 * 366 * 24 * 3600
"""Longest validity an approval may ask for (``valid_for_secs``): about ten years, so
an expiry always fits every integer type it travels in."""


@dataclass(frozen=True)
class Approval:
    """One participant's consent to a task (Kettle, ``spec/platform.md`` §12 row 21).

    It covers exactly the task digest it names (:mod:`kettle.model.consent`): when
    anything the digest covers changes, the approval lapses. Times are Unix seconds.
    """

    user_id: str
    task_digest: str
    """SHA-256 (hex) of the task's canonical description when the approval was given."""
    approved_at: int
    expires_at: int | None = None
    """None = until the task runs or the approval is revoked."""

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def to_json(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "task_digest": self.task_digest, "approved_at": self.approved_at,
                "expires_at": self.expires_at}

    @classmethod
    def from_json(cls, doc: Any) -> Approval:
        if not isinstance(doc, dict) or set(doc) != {"user_id", "task_digest", "approved_at", "expires_at"}:
            raise ValueError("malformed approval")
        user_id, digest, at, expires = doc["user_id"], doc["task_digest"], doc["approved_at"], doc["expires_at"]
        if not (isinstance(user_id, str) and isinstance(digest, str) and _is_int(at)
                and (expires is None or _is_int(expires))):
            raise ValueError("malformed approval")
        return cls(user_id, digest, at, expires)


MAX_REFUSAL_REASON_CHARS = 256
"""A refusal's reason is at most this many characters (printable ones only)."""


@dataclass(frozen=True)
class Refusal:
    """A participant declined to approve a task (Kettle, RefuseTask): visible to every
    participant in GetTask, and InvokeTask is refused while it stands. ``refused_at`` is
    Unix seconds; ``task_digest`` is the digest of the task as it was refused."""

    user_id: str
    refused_at: int
    task_digest: str
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "refused_at": self.refused_at, "task_digest": self.task_digest,
                "reason": self.reason}

    @classmethod
    def from_json(cls, doc: Any) -> Refusal:
        if not isinstance(doc, dict) or set(doc) != {"user_id", "refused_at", "task_digest", "reason"}:
            raise ValueError("malformed refusal")
        user_id, at, digest, reason = doc["user_id"], doc["refused_at"], doc["task_digest"], doc["reason"]
        if not (isinstance(user_id, str) and _is_int(at) and isinstance(digest, str) and isinstance(reason, str)):
            raise ValueError("malformed refusal")
        return cls(user_id, at, digest, reason)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass(frozen=True)
class TaskRecord:
    """A task (``spec/platform.md`` §6.1). Sets are kept as sorted tuples; maps as dicts."""

    uuid: str
    creator: str
    function_id: str
    """Bare UUID of the function."""
    function_owner: str
    function_arguments: str
    """The merged argument object as compact JSON text with sorted keys."""
    executor: str
    inputs_ownership: dict[str, tuple[str, ...]]
    outputs_ownership: dict[str, tuple[str, ...]]
    participants: tuple[str, ...]
    approvals: tuple[Approval, ...] = ()
    """The approvals in force, one per participant at most, sorted by user (Kettle: each
    bound to a task digest, possibly expiring)."""
    assigned_inputs: dict[str, FileRecord] = field(default_factory=dict)
    assigned_outputs: dict[str, FileRecord] = field(default_factory=dict)
    status: TaskStatus = TaskStatus.CREATED
    result: TaskResult = TaskResult()
    attempts: int = 0
    """How many times an execution node started it (Kettle: bounded re-runs after a lost node)."""
    function_digest: str = ""
    """The function's content digest pinned at CreateTask (:func:`kettle.model.functions.function_digest`);
    empty only for a task stored before Kettle pinned functions."""
    lapsed: dict[str, str] = field(default_factory=dict)
    """User ID → why that participant's approval lapsed (revoked, or voided by a change): kept until
    the participant approves again, so a refused InvokeTask can say whose consent is missing and why."""
    refusals: tuple[Refusal, ...] = ()
    """Kettle: the participants who refused the task (RefuseTask), one each, sorted by user; a
    participant's approval removes its refusal. Encoded only when there are some, so a task
    nobody refused is stored byte for byte as before refusals existed."""

    @property
    def approved_users(self) -> tuple[str, ...]:
        """Teaclave's ``approved_users``: who has an approval recorded."""
        return tuple(a.user_id for a in self.approvals)

    def approval_of(self, user_id: str) -> Approval | None:
        return next((a for a in self.approvals if a.user_id == user_id), None)

    def refusal_of(self, user_id: str) -> Refusal | None:
        return next((r for r in self.refusals if r.user_id == user_id), None)

    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = {
            "uuid": self.uuid,
            "creator": self.creator,
            "function_id": self.function_id,
            "function_owner": self.function_owner,
            "function_arguments": self.function_arguments,
            "executor": self.executor,
            "inputs_ownership": {k: sorted(v) for k, v in self.inputs_ownership.items()},
            "outputs_ownership": {k: sorted(v) for k, v in self.outputs_ownership.items()},
            "participants": sorted(self.participants),
            "approvals": [a.to_json() for a in sorted(self.approvals, key=lambda a: a.user_id)],
            "function_digest": self.function_digest,
            "lapsed": dict(self.lapsed),
            "assigned_inputs": {k: v.to_json() for k, v in self.assigned_inputs.items()},
            "assigned_outputs": {k: v.to_json() for k, v in self.assigned_outputs.items()},
            "status": int(self.status),
            "result": self.result.to_json(),
            "attempts": self.attempts,
        }
        if self.refusals:
            doc["refusals"] = [r.to_json() for r in sorted(self.refusals, key=lambda r: r.user_id)]
        return _dump(doc)

    @classmethod
    def from_bytes(cls, data: bytes) -> TaskRecord:
        doc = _task_doc(data)
        try:
            return cls(
                uuid=doc["uuid"],
                creator=doc["creator"],
                function_id=doc["function_id"],
                function_owner=doc["function_owner"],
                function_arguments=doc["function_arguments"],
                executor=doc["executor"],
                inputs_ownership={k: tuple(v) for k, v in doc["inputs_ownership"].items()},
                outputs_ownership={k: tuple(v) for k, v in doc["outputs_ownership"].items()},
                participants=tuple(doc["participants"]),
                approvals=tuple(Approval.from_json(a) for a in doc["approvals"]),
                assigned_inputs={k: FileRecord.from_json(v) for k, v in doc["assigned_inputs"].items()},
                assigned_outputs={k: FileRecord.from_json(v) for k, v in doc["assigned_outputs"].items()},
                status=TaskStatus(doc["status"]),
                result=TaskResult.from_json(doc["result"]),
                attempts=int(doc["attempts"]),
                function_digest=str(doc["function_digest"]),
                lapsed={str(k): str(v) for k, v in doc["lapsed"].items()},
                refusals=tuple(Refusal.from_json(r) for r in doc.get("refusals", ())),
            )
        except (TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"malformed task record: {exc}") from None


LEGACY_APPROVAL = "was given before approvals were bound to a task digest"


def _task_doc(data: bytes) -> dict[str, Any]:
    """A stored task's fields. A record written before approvals were bound to digests
    (``approved_users``, no pin) still loads: no pinned digest, and each former approval
    recorded as lapsed, so such a task is never invoked on consent nobody gave to a digest."""
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise ValueError(f"TaskRecord record is not JSON: {exc}") from None
    current = {f.name for f in fields(TaskRecord)}
    unrefused = current - {"refusals"}  # "refusals" is stored only when there are some
    legacy = unrefused - {"approvals", "function_digest", "lapsed"} | {"approved_users"}
    if not isinstance(doc, dict) or set(doc) not in (current, unrefused, legacy):
        raise ValueError("TaskRecord record has the wrong fields")
    if "approved_users" in doc:
        users = doc.pop("approved_users")
        if not isinstance(users, list):
            raise ValueError("malformed task record: approved_users")
        doc.update(approvals=[], function_digest="", lapsed={str(u): LEGACY_APPROVAL for u in users})
        if doc["status"] == TaskStatus.APPROVED:  # waiting for approvals again, which it may now receive
            doc["status"] = int(TaskStatus.DATA_ASSIGNED)
    return doc


@dataclass(frozen=True)
class StagedTask:
    """Everything an execution node needs to run one task (``spec/platform.md`` §6.9)."""

    task_id: str
    function_id: str
    user_id: str
    executor: str
    executor_type: str
    function_name: str
    function_arguments: str
    function_payload: bytes
    input_data: dict[str, FileRecord]
    output_data: dict[str, FileRecord]
    function_digest: str = ""
    """The digest pinned in the task (SHA-256 hex of ``function_manifest``)."""
    function_manifest: str = ""
    """The canonical description of the function whose SHA-256 is ``function_digest``: the node
    checks the payload, name and executor type it runs against it (:mod:`kettle.model.consent`)."""
    task_digest: str = ""
    """The digest of everything the approvals covered (SHA-256 hex of ``task_manifest``)."""
    task_manifest: str = ""
    """The canonical description the approvals covered; the node checks it describes what it runs."""
    approvals: tuple[Approval, ...] = ()
    """The approvals the task was invoked on (user, time, digest, expiry), sorted by user."""

    def to_bytes(self) -> bytes:
        return _dump({
            "task_id": self.task_id,
            "function_id": self.function_id,
            "user_id": self.user_id,
            "executor": self.executor,
            "executor_type": self.executor_type,
            "function_name": self.function_name,
            "function_arguments": self.function_arguments,
            "function_payload": _b64(self.function_payload),
            "input_data": {k: v.to_json() for k, v in self.input_data.items()},
            "output_data": {k: v.to_json() for k, v in self.output_data.items()},
            "function_digest": self.function_digest,
            "function_manifest": self.function_manifest,
            "task_digest": self.task_digest,
            "task_manifest": self.task_manifest,
            "approvals": [a.to_json() for a in self.approvals],
        })

    @classmethod
    def from_bytes(cls, data: bytes) -> StagedTask:
        doc = _staged_doc(data)
        try:
            return cls(
                task_id=doc["task_id"],
                function_id=doc["function_id"],
                user_id=doc["user_id"],
                executor=doc["executor"],
                executor_type=doc["executor_type"],
                function_name=doc["function_name"],
                function_arguments=doc["function_arguments"],
                function_payload=_unb64(doc["function_payload"]),
                input_data={k: FileRecord.from_json(v) for k, v in doc["input_data"].items()},
                output_data={k: FileRecord.from_json(v) for k, v in doc["output_data"].items()},
                function_digest=str(doc["function_digest"]),
                function_manifest=str(doc["function_manifest"]),
                task_digest=str(doc["task_digest"]),
                task_manifest=str(doc["task_manifest"]),
                approvals=tuple(Approval.from_json(a) for a in doc["approvals"]),
            )
        except (TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"malformed staged task: {exc}") from None


_CONSENT_FIELDS = {"function_digest": "", "function_manifest": "", "task_digest": "", "task_manifest": "",
                   "approvals": []}


def _staged_doc(data: bytes) -> dict[str, Any]:
    """A staged task's fields; one queued before staged tasks carried their pins decodes with
    empty ones, which the execution node refuses to run (a clear failure, not a lost task)."""
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise ValueError(f"StagedTask record is not JSON: {exc}") from None
    names = {f.name for f in fields(StagedTask)}
    if not isinstance(doc, dict) or set(doc) not in (names, names - set(_CONSENT_FIELDS)):
        raise ValueError("StagedTask record has the wrong fields")
    return {**_CONSENT_FIELDS, **doc}


def cancel_request_key(bare: str) -> bytes:
    """Present while a cancel of a Staged/Running task is pending (written by management,
    consumed by the scheduler)."""
    return f"cancel-request-{bare}".encode()


STAGED_SIGNAL_KEY = b"staged-task-signal"
"""Rewritten (any new value) after every enqueue on the staged-task queue, so the
scheduler can Watch it instead of polling the queue."""
