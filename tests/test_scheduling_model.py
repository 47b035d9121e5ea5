"""The scheduler's pure rules (kettle.model.scheduling): leases, attempts, cancels, results. No sockets."""

from __future__ import annotations

import uuid
from dataclasses import replace

import pytest

from kettle.errors import InvalidArgument
from kettle.model import scheduling as rules
from kettle.model.records import (
    CryptoInfo,
    FileRecord,
    TaskOutputs,
    TaskRecord,
    TaskResult,
    TaskStatus,
)
from kettle.model.scheduling import (
    Admission,
    HeartbeatAction,
    Lease,
    LeaseState,
    NotAssigned,
    ResultAction,
    ScanAction,
)

EXECUTOR_A = str(uuid.uuid4())
EXECUTOR_B = str(uuid.uuid4())


def task(
    status: TaskStatus = TaskStatus.STAGED, attempts: int = 0, outputs: dict[str, FileRecord] | None = None
) -> TaskRecord:
    return TaskRecord(
        uuid=str(uuid.uuid4()), creator="alice", function_id=str(uuid.uuid4()), function_owner="bob",
        function_arguments='{"message":"hi"}', executor="builtin", inputs_ownership={},
        outputs_ownership={name: ("alice",) for name in (outputs or {})}, participants=("alice",),
        assigned_outputs=outputs or {}, status=status, attempts=attempts,
    )


def output(name: str, cmac: bytes | None = None) -> FileRecord:
    crypto = CryptoInfo("aes-gcm-128", b"k" * 16, b"i" * 12)
    return FileRecord(str(uuid.uuid4()), f"file:///tmp/{name}", crypto, ("alice",), cmac)


LEASE_MS = 3_000


def lease(t: TaskRecord, executor: str = EXECUTOR_A, attempt: int = 1, deadline_ms: int = 103_000) -> Lease:
    return Lease(t.uuid, executor, attempt, b'{"staged":"task"}', deadline_ms)


# --- leases ----------------------------------------------------------------------------


def test_lease_record_round_trips_and_rejects_corruption() -> None:
    original = lease(task(), attempt=2)
    assert Lease.from_bytes(original.to_bytes()) == original
    canceled = original.ended(LeaseState.CANCELED, 5)
    assert Lease.from_bytes(canceled.to_bytes()) == canceled and canceled.staged_task == b""
    assert rules.lease_key(original.task_id) == b"scheduler-lease-" + original.task_id.encode()
    assert rules.executor_task_key(EXECUTOR_A) == b"scheduler-executor-" + EXECUTOR_A.encode()
    for bad in (b"not json", b"{}", original.to_bytes().replace(b'"attempt":2', b'"attempt":0'),
                original.to_bytes().replace(b'"attempt":2', b'"attempt":true'),
                original.to_bytes().replace(b'"deadline_ms":103000', b'"deadline_ms":-1'),
                original.to_bytes().replace(b'"state":"active"', b'"state":"asleep"')):
        with pytest.raises(ValueError):
            Lease.from_bytes(bad)


def test_a_lease_stored_before_deadlines_reads_as_active_and_due_at_once() -> None:
    t = task()
    old = (b'{"attempt":1,"executor_id":"%s","staged_task":"eA==","task_id":"%s"}'
           % (EXECUTOR_A.encode(), t.uuid.encode()))
    read = Lease.from_bytes(old)
    assert (read.state, read.deadline_ms, read.staged_task) == (LeaseState.ACTIVE, 0, b"x")
    assert rules.scan_action(read, 50_000, grace_ms=10_000) is ScanAction.EXTEND  # a starting scheduler's grace
    assert read.renewed(50_000, 10_000).deadline_ms == 60_000


def test_only_the_active_holder_holds_a_lease() -> None:
    held = lease(task())
    assert held.held_by(EXECUTOR_A) and not held.held_by(EXECUTOR_B)
    for state in (LeaseState.CANCELED, LeaseState.RELEASED, LeaseState.REQUEUED, LeaseState.ENDED):
        assert not held.ended(state).held_by(EXECUTOR_A)
    assert held.ended(LeaseState.RELEASED).staged_task == held.staged_task  # it goes back on the queue
    assert held.ended(LeaseState.REQUEUED).staged_task == b""


def test_heartbeats_write_a_new_deadline_only_after_a_quarter_of_the_lease() -> None:
    held = lease(task(), deadline_ms=103_000)  # written at 100 000
    assert not held.needs_renewal(100_000, LEASE_MS)
    assert not held.needs_renewal(100_750, LEASE_MS)  # exactly three quarters left
    assert held.needs_renewal(100_751, LEASE_MS)
    assert held.renewed(100_751, LEASE_MS).deadline_ms == 103_751
    graced = lease(task(), deadline_ms=120_000)
    assert graced.renewed(100_000, LEASE_MS) == graced  # never shortens a grace period


def test_what_a_scan_does_with_each_lease() -> None:
    held = lease(task(), deadline_ms=103_000)
    scan = rules.scan_action
    assert scan(held, 102_999, grace_ms=None) is ScanAction.NOTHING
    assert scan(held, 103_000, grace_ms=None) is ScanAction.RELEASE
    assert scan(held, 104_000, grace_ms=10_000) is ScanAction.EXTEND  # after an outage: time first
    assert scan(lease(task(), deadline_ms=200_000), 104_000, grace_ms=10_000) is ScanAction.NOTHING
    assert scan(held.ended(LeaseState.ENDED), 0, grace_ms=None) is ScanAction.FORGET
    canceled = held.ended(LeaseState.CANCELED, 110_000)
    assert scan(canceled, 109_999, grace_ms=None) is ScanAction.NOTHING  # its receipt may still come
    assert scan(canceled, 110_000, grace_ms=10_000) is ScanAction.FORGET
    released = held.ended(LeaseState.RELEASED, 106_000)
    assert scan(released, 105_999, grace_ms=None) is ScanAction.NOTHING  # its scheduler is re-queuing it
    assert scan(released, 106_000, grace_ms=None) is ScanAction.REQUEUE
    requeued = held.ended(LeaseState.REQUEUED, 106_000)
    assert scan(requeued, 105_999, grace_ms=None) is ScanAction.NOTHING
    assert scan(requeued, 106_000, grace_ms=None) is ScanAction.CHECK_TASK


# --- decisions -------------------------------------------------------------------------


STAGED = task()


@pytest.mark.parametrize(
    ("record", "held", "cancel", "expected"),
    [
        (None, None, False, Admission.DROP),
        (task(TaskStatus.FINISHED), None, False, Admission.DROP),
        (task(TaskStatus.CANCELED), None, True, Admission.DROP),
        (STAGED, lease(STAGED), False, Admission.DROP),  # a duplicate item of a running task
        (task(TaskStatus.APPROVED), None, False, Admission.NOT_YET),
        (STAGED, None, True, Admission.CANCEL),
        (task(attempts=3), None, False, Admission.EXHAUSTED),
        (STAGED, None, False, Admission.RUN),
        (task(TaskStatus.RUNNING, attempts=1), None, False, Admission.RUN),
        # what is left of a lease whose node was lost does not keep the task from running again
        (STAGED, lease(STAGED).ended(LeaseState.RELEASED), False, Admission.RUN),
        (STAGED, lease(STAGED).ended(LeaseState.REQUEUED), False, Admission.RUN),
    ],
)
def test_admission_of_a_queue_item(record: TaskRecord | None, held: Lease | None, cancel: bool, expected: Admission) -> None:
    assert rules.admit(record, lease=held, cancel_pending=cancel, max_attempts=3) is expected


def test_heartbeat_decisions() -> None:
    t = task(TaskStatus.RUNNING)
    held = lease(t)
    beat = rules.on_heartbeat
    assert beat(held, EXECUTOR_A, "", executing=False, cancel_pending=True) is HeartbeatAction.NOTHING
    assert beat(held, EXECUTOR_A, t.uuid, executing=False, cancel_pending=False) is HeartbeatAction.NOTHING
    assert beat(held, EXECUTOR_A, t.uuid, executing=True, cancel_pending=False) is HeartbeatAction.RENEW
    assert beat(held, EXECUTOR_A, t.uuid, executing=True, cancel_pending=True) is HeartbeatAction.CANCEL
    assert beat(held, EXECUTOR_B, t.uuid, executing=True, cancel_pending=False) is HeartbeatAction.STOP
    assert beat(None, EXECUTOR_A, t.uuid, executing=True, cancel_pending=False) is HeartbeatAction.STOP
    canceled = held.ended(LeaseState.CANCELED, 1)
    assert beat(canceled, EXECUTOR_A, t.uuid, executing=True, cancel_pending=False) is HeartbeatAction.CANCEL
    assert beat(canceled, EXECUTOR_B, t.uuid, executing=True, cancel_pending=False) is HeartbeatAction.STOP
    for state in (LeaseState.RELEASED, LeaseState.REQUEUED, LeaseState.ENDED):
        assert beat(held.ended(state), EXECUTOR_A, t.uuid, executing=True, cancel_pending=True) is HeartbeatAction.STOP


def test_which_results_count() -> None:
    held = lease(task(TaskStatus.RUNNING))
    assert rules.on_result(held, EXECUTOR_A) is ResultAction.APPLY
    assert rules.on_result(held, EXECUTOR_B) is ResultAction.DISCARD
    assert rules.on_result(None, EXECUTOR_A) is ResultAction.DISCARD  # already recorded: never applied twice
    canceled = held.ended(LeaseState.CANCELED, 1)
    assert rules.on_result(canceled, EXECUTOR_A) is ResultAction.KEEP_RECEIPT  # the canceled run's receipt
    assert rules.on_result(canceled, EXECUTOR_B) is ResultAction.DISCARD
    for state in (LeaseState.RELEASED, LeaseState.REQUEUED, LeaseState.ENDED):
        assert rules.on_result(held.ended(state), EXECUTOR_A) is ResultAction.DISCARD


def test_a_repull_reissues_only_a_task_never_started() -> None:
    assert rules.reissue_on_repull(task(TaskStatus.STAGED, attempts=1))
    assert not rules.reissue_on_repull(task(TaskStatus.RUNNING, attempts=1))
    assert not rules.reissue_on_repull(None)


# --- transitions -----------------------------------------------------------------------


def test_attempts_count_hand_outs_idempotently() -> None:
    t = task()
    first = rules.start_attempt(t, 1)
    assert (first.status, first.attempts) == (TaskStatus.STAGED, 1)
    assert rules.start_attempt(first, 1) == first  # a retried write changes nothing
    assert rules.start_attempt(replace(first, status=TaskStatus.RUNNING), 2).attempts == 2
    with pytest.raises(NotAssigned):
        rules.start_attempt(t, 3)
    with pytest.raises(NotAssigned):
        rules.start_attempt(task(TaskStatus.FINISHED), 1)


def test_update_status_moves_staged_to_running_only() -> None:
    running = rules.begin_running(task(attempts=1))
    assert running.status is TaskStatus.RUNNING
    assert rules.begin_running(running) == running
    for status in (TaskStatus.APPROVED, TaskStatus.FINISHED, TaskStatus.CANCELED, TaskStatus.FAILED):
        with pytest.raises(NotAssigned):
            rules.begin_running(task(status))


def test_cancel_paths() -> None:
    for status in (TaskStatus.STAGED, TaskStatus.RUNNING):
        canceled = rules.cancel(task(status))
        assert canceled.status is TaskStatus.CANCELED
        assert canceled.result == TaskResult(failure="Task Canceled by the user")
    finished = replace(task(TaskStatus.FINISHED), result=TaskResult(outputs=TaskOutputs(b"x")))
    assert rules.cancel(finished) == finished


def test_a_lost_node_requeues_until_the_attempts_are_spent() -> None:
    t = rules.begin_running(rules.start_attempt(task(), 1))
    again, requeue = rules.executor_lost(t, max_attempts=3)
    assert requeue and again.status is TaskStatus.STAGED and not again.result.ready and again.attempts == 1
    last = rules.begin_running(rules.start_attempt(rules.start_attempt(again, 2), 3))
    failed, requeue = rules.executor_lost(last, max_attempts=3)
    assert not requeue
    assert failed.status is TaskStatus.FAILED
    assert failed.result.failure == "Runtime Error: Executor Timeout (lost 3 times)"
    once, _ = rules.executor_lost(rules.start_attempt(task(), 1), max_attempts=1)
    assert once.result.failure == "Runtime Error: Executor Timeout (lost 1 time)"
    done = task(TaskStatus.CANCELED)
    assert rules.executor_lost(done, 3) == (done, False)


def test_a_lost_node_with_a_pending_cancel_ends_the_task_canceled() -> None:
    t = rules.begin_running(rules.start_attempt(task(), 1))
    canceled, requeue = rules.on_lost(t, cancel_pending=True, max_attempts=3)
    assert not requeue and canceled.status is TaskStatus.CANCELED
    assert rules.on_lost(t, cancel_pending=False, max_attempts=3) == rules.executor_lost(t, 3)


def test_lease_lifecycle_with_a_fake_clock() -> None:
    """Three nodes die in turn: the task is re-queued twice and then fails; never left Running."""
    t, now = task(), 0
    held: Lease | None = None
    for attempt in (1, 2, 3):
        assert rules.admit(t, lease=held, cancel_pending=False, max_attempts=3) is Admission.RUN
        held = Lease(t.uuid, str(uuid.uuid4()), t.attempts + 1, b"staged", now + LEASE_MS)
        t = rules.begin_running(rules.start_attempt(t, held.attempt))
        assert t.attempts == attempt
        for _ in range(5):  # heartbeats keep it alive
            now += 1_000
            assert rules.scan_action(held, now, grace_ms=None) is ScanAction.NOTHING
            if held.needs_renewal(now, LEASE_MS):
                held = held.renewed(now, LEASE_MS)
        now += LEASE_MS  # silence
        assert rules.scan_action(held, now, grace_ms=None) is ScanAction.RELEASE
        held = held.ended(LeaseState.RELEASED, now + LEASE_MS)
        t, requeue = rules.executor_lost(t, max_attempts=3)
        assert requeue is (attempt < 3)
    assert t.status is TaskStatus.FAILED and "lost 3 times" in (t.result.failure or "")


# --- results ---------------------------------------------------------------------------


def test_ok_finishes_err_fails_and_empty_finishes_not_ready() -> None:
    running = task(TaskStatus.RUNNING, attempts=1)
    ok = TaskResult(outputs=TaskOutputs(b"hello", {}, ("[INFO teaclave_function::echo] hello",)))
    finished, files = rules.apply_result(running, ok)
    assert (finished.status, finished.result, files) == (TaskStatus.FINISHED, ok, ())
    failed, _ = rules.apply_result(running, TaskResult(failure="Cannot deserialize arguments"))
    assert (failed.status, failed.result.failure) == (TaskStatus.FAILED, "Cannot deserialize arguments")
    empty, _ = rules.apply_result(running, TaskResult())
    assert empty.status is TaskStatus.FINISHED and not empty.result.ready
    with pytest.raises(InvalidArgument, match="missing"):
        rules.apply_result(running, None)
    for status in (TaskStatus.FINISHED, TaskStatus.CANCELED, TaskStatus.FAILED, TaskStatus.APPROVED):
        with pytest.raises(NotAssigned):
            rules.apply_result(task(status), ok)


def test_failure_reasons_are_cut_to_one_kib_on_a_character_boundary() -> None:
    running = task(TaskStatus.RUNNING, attempts=1)
    failed, _ = rules.apply_result(running, TaskResult(failure="é" * 2000))
    reason = failed.result.failure or ""
    assert len(reason.encode()) == 1024 and reason == "é" * 512
    assert rules.truncate_reason("x" * 1025) == "x" * 1024
    assert rules.truncate_reason("short") == "short"


def test_sandbox_layers_are_kept_with_either_outcome_and_survive_the_record() -> None:
    running = task(TaskStatus.RUNNING, attempts=1)
    layers = ("process", "seccomp", "landlock")
    ok = TaskResult(outputs=TaskOutputs(b"done"), sandbox_layers=layers)
    failed, _ = rules.apply_result(running, TaskResult(failure="CPUTimeExceeded", sandbox_layers=layers))
    finished, _ = rules.apply_result(running, ok)
    assert finished.result.sandbox_layers == failed.result.sandbox_layers == layers
    for record in (finished, failed):
        assert type(record).from_bytes(record.to_bytes()).result == record.result
    # a result without layers (built-ins, older records) keeps its stored form
    assert TaskResult(failure="x").to_json() == {"err": "x"}
    assert TaskResult.from_json({"err": "x"}) == TaskResult(failure="x")


@pytest.mark.parametrize("layers", [("",), ("x" * 65,), tuple(f"layer{i}" for i in range(17))])
def test_unbounded_sandbox_layers_are_refused(layers: tuple[str, ...]) -> None:
    with pytest.raises(InvalidArgument, match="sandbox_layers"):
        rules.apply_result(task(TaskStatus.RUNNING, attempts=1), TaskResult(failure="x", sandbox_layers=layers))


@pytest.mark.parametrize("doc", [
    {"err": "x", "sandbox_layers": "seccomp"}, {"err": "x", "sandbox_layers": [1]}, {"sandbox_layers": []},
    {"ok": {}, "err": "x"}, {"err": "x", "other": 1}, ["err"],
])
def test_malformed_stored_results_are_refused(doc: object) -> None:
    with pytest.raises((ValueError, KeyError)):
        TaskResult.from_json(doc)


def test_tags_update_the_output_snapshots_and_records() -> None:
    running = task(TaskStatus.RUNNING, attempts=1, outputs={"model": output("model"), "report": output("report")})
    tags = {"model": b"\x01" * 16, "report": b"\x02" * 16}
    finished, files = rules.apply_result(running, TaskResult(outputs=TaskOutputs(b"", tags)))
    assert finished.assigned_outputs["model"].cmac == b"\x01" * 16
    assert finished.assigned_outputs["report"].cmac == b"\x02" * 16
    assert {f.uuid: f.cmac for f in files} == {running.assigned_outputs[n].uuid: tags[n] for n in tags}
    assert rules.finished_outputs(finished) == files


@pytest.mark.parametrize(
    ("tags", "message"),
    [
        ({"model": b"\x01" * 16, "report": b"\x02" * 16, "other": b"\x03" * 16}, "not an assigned output"),
        ({"model": b"\x01" * 15, "report": b"\x02" * 16}, "15 bytes"),
        ({"model": b"\x01" * 16}, "no tag for"),
        ({"model": b"\x01" * 16, "report": b"\x02" * 16, "tagged": b"\x04" * 16}, "already has a tag"),
    ],
)
def test_malformed_tags_are_refused_before_anything_changes(tags: dict[str, bytes], message: str) -> None:
    outputs = {"model": output("model"), "report": output("report")}
    if "tagged" in tags:
        outputs["tagged"] = output("tagged", cmac=b"\x09" * 16)
    running = task(TaskStatus.RUNNING, attempts=1, outputs=outputs)
    with pytest.raises(InvalidArgument, match=message):
        rules.apply_result(running, TaskResult(outputs=TaskOutputs(b"", tags)))


def test_ids_must_be_canonical_uuids() -> None:
    assert rules.is_uuid(EXECUTOR_A)
    for bad in ("", "task-" + EXECUTOR_A, EXECUTOR_A.upper(), EXECUTOR_A.replace("-", ""), "nope"):
        assert not rules.is_uuid(bad)
