"""Restart every service mid-way through a batch of 200 queued tasks: all 200 end Finished,
none reported twice, none lost (issue acceptance; the whole platform, through the SDK)."""

from __future__ import annotations

import time

from conftest import ALL_SERVICES, Platform, stored_tasks

from kettle.model.records import TaskStatus
from kettle.sdk import FrontendClient

BATCH = 200


def _client(platform: Platform) -> FrontendClient:
    token = platform.auth_client().user_login("admin", "teaclave")
    return FrontendClient(platform.frontend_address, platform.trust(), "admin", token)


def test_restarting_every_service_mid_batch_loses_and_repeats_nothing(home_factory) -> None:  # type: ignore[no-untyped-def]
    # One user keeps the whole batch in flight, above the default per-user limit.
    fresh_platform = home_factory(extra=f"[management]\nmax_tasks_in_flight_per_user = {BATCH}\n")
    fresh_platform.start(ALL_SERVICES)
    client = _client(fresh_platform)
    function_id = client.register_function("builtin-echo", arguments=["message"])
    task_ids = []
    for i in range(BATCH):
        task_id = client.create_task(function_id, {"message": f"message {i}"})
        client.invoke_task(task_id)
        task_ids.append(task_id)
    # Mid-way: some finished, many still queued or running.
    client.wait_task(task_ids[BATCH // 5], timeout=120)
    client.close()

    fresh_platform.stop()  # every service, the attestation service too, in reverse order
    fresh_platform.start(ALL_SERVICES)

    client = _client(fresh_platform)
    deadline = time.monotonic() + 240
    for i, task_id in enumerate(task_ids):
        info = client.wait_task(task_id, timeout=max(1.0, deadline - time.monotonic()))
        assert info.status == TaskStatus.FINISHED, (i, info)
        assert client.get_task_result(task_id) == f"message {i}".encode()
    client.close()

    records, queue_empty, leases = stored_tasks(fresh_platform, task_ids)
    assert all(r.status == TaskStatus.FINISHED for r in records)
    # Each task was handed out at most once more than it was run to the end: a run cut
    # short by the restart is re-run, but no result is ever applied twice (the first
    # applied result ends the task; later ones are discarded by the scheduler).
    assert all(1 <= r.attempts <= 2 for r in records), [r.attempts for r in records]
    assert sum(r.attempts == 1 for r in records) >= BATCH - 10
    assert queue_empty and leases == []
