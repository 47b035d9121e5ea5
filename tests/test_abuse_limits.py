"""Per-user quotas, the execution node's disk guard and login throttling (issue 16 item 8).

The quota and staging rules are pure and tested directly (the throttle's in
``test_login_throttle.py``); management's use of them runs over the servicer
with the in-memory platform store (records in their real byte form); the node's
guard runs the worker's own code path over real files; and one real platform
shows each limit refusing one user (or address) while the others carry on.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import task_world
from conftest import Platform
from staged import World as StagedWorld
from staged import task
from task_world import World
from test_management_service import ALICE, FO, Aborted, FakeContext, MemoryStore

from kettle.config import ExecutionConfig, ManagementConfig, parse_config
from kettle.errors import ConfigError, KettleError, ResourceExhausted, TransferError
from kettle.executors import run_staged_task
from kettle.executors.files import DataPlane
from kettle.file_agent.budget import StagingBudget
from kettle.model.quotas import MISSING_TASK_GRACE_SECS, UserQuota, quota_key
from kettle.model.records import TaskStatus
from kettle.rpc.generated import teaclave_common_pb2 as common_pb
from kettle.rpc.generated import teaclave_frontend_service_pb2 as fpb
from kettle.sdk import FrontendClient
from kettle.services.authentication import passwords
from kettle.services.management.service import KettleManagementServicer

# --- the pure rules --------------------------------------------------------------------


def test_stored_bytes_are_refused_past_the_limit_and_given_back() -> None:
    quota = UserQuota("alice").with_stored(600, 1000)
    with pytest.raises(ResourceExhausted) as refused:
        quota.with_stored(401, 1000)
    assert refused.value.message == (
        "storage quota exceeded: this would bring your stored functions and file records to 1,001 bytes, "
        "over your limit of 1,000 bytes; delete functions you no longer need")
    assert quota.with_stored(400, 1000).stored_bytes == 1000
    assert quota.with_stored(-600, 1000).stored_bytes == 0
    assert quota.with_stored(10**12, 0).stored_bytes == 600 + 10**12  # 0: no limit


def test_tasks_in_flight_drop_ended_ones_and_refuse_at_the_limit() -> None:
    quota = UserQuota("alice", tasks={"a": 100.0, "b": 100.0, "c": 100.0})
    statuses = {"a": TaskStatus.RUNNING, "b": TaskStatus.CREATED, "c": TaskStatus.STAGED}
    with pytest.raises(ResourceExhausted) as refused:
        quota.with_task("d", 200.0, statuses, 3)
    assert refused.value.message == (
        "task quota exceeded: you have 3 tasks in flight (created and not yet finished, failed or canceled), "
        "the limit is 3; wait for some to end or cancel them")
    for ended in (TaskStatus.FINISHED, TaskStatus.FAILED, TaskStatus.CANCELED):
        admitted = quota.with_task("d", 200.0, {**statuses, "b": ended}, 3)
        assert admitted.tasks == {"a": 100.0, "c": 100.0, "d": 200.0}


def test_below_the_limit_a_task_is_admitted_without_reading_the_listed_ones() -> None:
    quota = UserQuota("alice", tasks={"a": 100.0, "b": 100.0})
    assert not quota.must_check_statuses(3) and not quota.must_check_statuses(0)
    admitted = quota.with_task("c", 200.0, None, 3)
    assert admitted.tasks == {"a": 100.0, "b": 100.0, "c": 200.0}  # nothing dropped unread
    assert admitted.must_check_statuses(3)  # full: the next admission reads and prunes
    with pytest.raises(ValueError, match="statuses are needed at the limit"):
        admitted.with_task("d", 200.0, None, 3)
    pruned = admitted.with_task("d", 200.0, {"a": TaskStatus.FINISHED, "b": TaskStatus.RUNNING,
                                               "c": TaskStatus.FAILED}, 3)
    assert pruned.tasks == {"b": 100.0, "d": 200.0}


def test_a_listed_task_without_record_counts_only_for_a_grace_period() -> None:
    quota = UserQuota("alice", tasks={"a": 100.0})
    with pytest.raises(ResourceExhausted):
        quota.with_task("b", 100.0 + MISSING_TASK_GRACE_SECS - 1, {"a": None}, 1)
    assert quota.with_task("b", 100.0 + MISSING_TASK_GRACE_SECS, {"a": None}, 1).tasks == {
        "b": 100.0 + MISSING_TASK_GRACE_SECS}


def test_quota_record_round_trip_and_strict_decoding() -> None:
    quota = UserQuota("alice", 42, {"a": 1.5})
    assert UserQuota.from_bytes(quota.to_bytes()) == quota
    for bad in (b"{", b"[]", b'{"user_id": "a", "stored_bytes": -1, "tasks": {}}',
                b'{"user_id": "a", "stored_bytes": true, "tasks": {}}',
                b'{"user_id": "a", "stored_bytes": 1, "tasks": {"a": "x"}}'):
        with pytest.raises(ValueError, match="malformed quota record"):
            UserQuota.from_bytes(bad)
    assert quota_key("x" * 10_000).startswith(b"quota-") and len(quota_key("x" * 10_000)) == 42


def test_staging_budget_per_task_and_free_disk_floor() -> None:
    free = [10_000]
    budget = StagingBudget(max_bytes=1000, min_free_bytes=5000, free_bytes=lambda: free[0])
    budget.take(600)
    with pytest.raises(TransferError, match=r"^the task's inputs need more than this execution node's "
                                            r"staging budget of 1,000 bytes per task$"):
        budget.take(401)
    budget.give_back(600)
    free[0] = 5500
    with pytest.raises(TransferError, match=r"^the execution node's scratch disk is too full to stage the task's "
                                            r"inputs \(5,500 bytes free, 5,000 must stay free\)$"):
        budget.take(501)
    budget.take(500)
    assert budget.used == 500
    StagingBudget(0, 0, lambda: 0).take(10**15)  # both off


def test_settings_default_on(tmp_path: Path) -> None:
    config = parse_config("", tmp_path)
    assert (config.management.max_stored_bytes_per_user, config.management.max_tasks_in_flight_per_user) == (
        256 << 20, 100)
    assert (config.execution.max_task_input_bytes, config.execution.min_free_disk_bytes) == (4 << 30, 1 << 30)
    custom = parse_config("[management]\nmax_tasks_in_flight_per_user = 0\n", tmp_path)
    assert custom.management.max_tasks_in_flight_per_user == 0
    with pytest.raises(ConfigError, match="management.max_stored_bytes_per_user must be a non-negative integer"):
        parse_config("[management]\nmax_stored_bytes_per_user = -1\n", tmp_path)


# --- management over the in-memory store -----------------------------------------------


def run(body: object) -> None:
    asyncio.run(body)  # type: ignore[arg-type]


def stored_bytes(store: MemoryStore, user_id: str) -> int:
    raw = store.records.get(quota_key(user_id))
    return 0 if raw is None else UserQuota.from_bytes(raw).stored_bytes


def test_function_and_file_records_count_on_their_owner_and_are_given_back() -> None:
    async def body() -> None:
        store = MemoryStore()
        servicer = KettleManagementServicer(store, ManagementConfig(max_stored_bytes_per_user=20_000))
        register = fpb.RegisterFunctionRequest(name="f", executor_type="python", payload=b"x" * 12_000)
        fid = (await servicer.RegisterFunction(register, FakeContext(FO))).function_id
        used = stored_bytes(store, FO[0])
        assert 12_000 < used < 13_000  # the payload (a record of its own) and the function record
        with pytest.raises(Aborted) as refused:
            await servicer.RegisterFunction(register, FakeContext(FO))
        assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused.value.details.startswith("storage quota exceeded: ")
        assert stored_bytes(store, FO[0]) == used  # a refusal stores and counts nothing
        # An update is charged its growth only.
        await servicer.UpdateFunction(fpb.UpdateFunctionRequest(
            function_id=fid, name="f", executor_type="python", payload=b"x" * 3_000), FakeContext(FO))
        assert stored_bytes(store, FO[0]) == used - 9_000
        await servicer.DeleteFunction(fpb.DeleteFunctionRequest(function_id=fid), FakeContext(FO))
        assert stored_bytes(store, FO[0]) == 0
        # File records count on whoever registers them; a failed write gives the bytes back.
        request = fpb.RegisterOutputFileRequest(url="https://files.example/out", crypto_info=common_pb.FileCryptoInfo(
            schema="aes-gcm-128", key=bytes(16), iv=bytes(12)))
        await servicer.RegisterOutputFile(request, FakeContext(ALICE))
        per_file = stored_bytes(store, ALICE[0])
        assert per_file > 0
        store.fail = {"compare_and_put"}
        with pytest.raises(Aborted):
            await servicer.RegisterOutputFile(request, FakeContext(ALICE))
        store.fail = set()
        assert stored_bytes(store, ALICE[0]) == per_file

    run(body())


# --- a real platform ---------------------------------------------------------------------

TASK_LIMIT = 3
STORED_LIMIT = 100_000
INPUT_BUDGET = 1 << 20
LOCKOUT_SECS = 2
SOURCE_LIMIT = 12


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, _auditor_cache: Path) -> Iterator[World]:
    config = (f"[management]\nmax_tasks_in_flight_per_user = {TASK_LIMIT}\n"
              f"max_stored_bytes_per_user = {STORED_LIMIT}\n\n"
              f"[execution]\nmax_task_input_bytes = {INPUT_BUDGET}\n\n"
              # Lockouts short enough to wait out in a test.
              f"[authentication]\nlogin_lockout_secs = {LOCKOUT_SECS}\nlogin_max_lockout_secs = {LOCKOUT_SECS * 2}\n"
              f"login_max_failures_per_source = {SOURCE_LIMIT}\n")
    with task_world.world(tmp_path_factory.mktemp("abuse-limits"), _auditor_cache, config) as started:
        yield started


def refused(call: object) -> KettleError:
    with pytest.raises(KettleError) as info:
        call()  # type: ignore[operator]
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value
    return info.value


def test_task_quota_refuses_one_user_and_not_the_others(world: World) -> None:
    echo = world.publisher.register_function("builtin-echo", "", "builtin", arguments=["message"], public=True)
    create = lambda client: client.create_task(echo, {"message": "hi"}, "builtin")
    mine = [create(world.alice) for _ in range(TASK_LIMIT)]
    error = refused(lambda: create(world.alice))
    assert error.message.startswith(f"task quota exceeded: you have {TASK_LIMIT} tasks in flight")
    bobs = create(world.owners["bob"])  # another user is not affected
    world.alice.cancel_task(mine[0])  # an ended task no longer counts
    mine[0] = create(world.alice)
    refused(lambda: create(world.alice))
    for task_id in [*mine, bobs]:
        world.owners["bob" if task_id == bobs else "alice"].cancel_task(task_id)


def test_stored_bytes_quota_refuses_one_user_and_not_the_others(world: World) -> None:
    payload = b"def entrypoint(argv):\n    return 'x'\n" + b"#" * 50_000
    first = world.publisher.register_function("big", "", "python", payload=payload)
    error = refused(lambda: world.publisher.register_function("big2", "", "python", payload=payload))
    assert error.message.startswith("storage quota exceeded: this would bring your stored functions and file records")
    assert error.message.endswith(f"over your limit of {STORED_LIMIT:,} bytes; delete functions you no longer need")
    with world.platform.auth_client() as auth, FrontendClient(
            world.platform.frontend_address, world.platform.trust(), "admin",
            auth.user_login("admin", "teaclave")) as admin:
        admin.register_function("big", "", "python", payload=payload)  # another user has room
    world.publisher.delete_function(first)
    world.publisher.delete_function(world.publisher.register_function("big2", "", "python", payload=payload))


def test_an_input_over_the_node_budget_fails_the_task_and_the_node_carries_on(world: World) -> None:
    payload = (b"def entrypoint(argv):\n    f = teaclave_open('data', 'rb')\n    n = len(f.read())\n"
               b"    f.close()\n    return str(n)\n")
    function_id = world.function("python", payload, inputs=["data"])
    too_big = world.run(function_id, {}, {"data": b"x" * (INPUT_BUDGET + 1)})
    assert too_big.failure.startswith("Failed to ")
    assert too_big.failure.endswith(f"staging budget of {INPUT_BUDGET:,} bytes per task")
    assert world.platform.child("execution").process.poll() is None
    fits = world.run(function_id, {}, {"data": b"x" * 1000})
    assert fits.return_value == "1000"


# --- the node's guard over real files (the worker's code path) --------------------------


@pytest.mark.parametrize(("limits", "reason"), [
    (ExecutionConfig(max_task_input_bytes=3000), "staging budget of 3,000 bytes per task"),
    (ExecutionConfig(min_free_disk_bytes=1 << 62), "must stay free)"),
])
def test_staging_limits_fail_the_task_and_leave_no_files(tmp_path: Path, limits: ExecutionConfig,
                                                         reason: str) -> None:
    staged = StagedWorld(tmp_path)
    plane = DataPlane(staged.plane.agent, staged.workdir, limits)
    inputs = {"a": staged.aes_input("a.in", b"1" * 2000), "b": staged.protected_input("b.in", b"2" * 2000)}
    result = run_staged_task(task(inputs, name="builtin-test-copy"), plane)
    assert result.failure is not None and result.failure.endswith(reason), result.failure
    assert staged.scratch_files() == []


# --- login throttling on the real service (these lock out this test's address: they go last) --


def process_cpu_secs(pid: int) -> float:
    """User + system CPU time of a process so far (``/proc/PID/stat`` fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_verification_cpu_secs() -> float:
    """The CPU time of one password verification as the service does it (argon2id)."""
    stored = passwords.hash_password("something")
    started = time.process_time()
    passwords.verify_password(stored, "something else")
    return time.process_time() - started


def login_error(platform: Platform, user_id: str, password: str) -> KettleError:
    with platform.auth_client() as client, pytest.raises(KettleError) as info:
        client.user_login(user_id, password)
    return info.value


def test_service_throttles_a_user_fast_and_lets_the_real_user_back(world: World) -> None:
    platform = world.platform
    with platform.admin() as admin:
        admin.user_register("victim", "real-password", "FunctionOwner", "")
    for _ in range(5):
        error = login_error(platform, "victim", "guess")
        assert (error.code, error.message) == (grpc.StatusCode.UNAUTHENTICATED, "authentication failed")
    # Refused before any lookup or hashing: 20 refusals cost the service far less CPU than the
    # argon2 verifications they would otherwise run (CPU time, so a loaded machine does not matter).
    pid = platform.child("authentication").process.pid
    hash_cpu = one_verification_cpu_secs()
    with platform.auth_client() as client:
        client.user_login("admin", "teaclave")  # warm the channel
        before = process_cpu_secs(pid)
        for _ in range(20):
            with pytest.raises(KettleError) as info:
                client.user_login("victim", "real-password")
            assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert info.value.message == f"too many failed logins for this user; retry after {LOCKOUT_SECS} seconds"
        spent = process_cpu_secs(pid) - before
    assert spent < 10 * hash_cpu, (spent, hash_cpu)
    # An unknown id gets the same treatment, so the answers do not tell which ids exist.
    for _ in range(5):
        assert login_error(platform, "nobody-here", "guess").message == "authentication failed"
    assert login_error(platform, "nobody-here", "guess").code == grpc.StatusCode.RESOURCE_EXHAUSTED
    time.sleep(LOCKOUT_SECS + 0.5)
    with platform.auth_client() as client:
        assert client.user_login("victim", "real-password")
    assert platform.child("authentication").process.poll() is None


def test_service_throttles_an_address_trying_many_users(world: World) -> None:
    codes = [login_error(world.platform, f"spray{i}", "guess").code for i in range(SOURCE_LIMIT + 2)]
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
    first = codes.index(grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert all(code == grpc.StatusCode.UNAUTHENTICATED for code in codes[:first])
    error = login_error(world.platform, "admin", "teaclave")  # even a right password, from this address
    assert error.message.startswith("too many failed logins from this address; retry after ")
