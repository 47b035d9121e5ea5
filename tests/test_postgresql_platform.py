"""A whole platform whose state lives in PostgreSQL: configured by a home's kettle.toml and
the KETTLE_STORAGE_DSN environment variable, schema created on first start."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import ALL_SERVICES, Platform, make_home, postgresql_schema

from kettle.sdk import FrontendClient


@pytest.fixture
def pg_platform(tmp_path: Path, _auditor_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Platform, str]]:
    with postgresql_schema() as dsn:
        monkeypatch.setenv("KETTLE_STORAGE_DSN", dsn)  # inherited by every service the test starts
        p = Platform(make_home(tmp_path / "home", _auditor_cache, extra='[storage]\nbackend = "postgresql"\n'))
        try:
            yield p, dsn
        finally:
            p.stop()


def test_a_platform_on_postgresql_runs_tasks_and_keeps_them_across_a_storage_restart(
    pg_platform: tuple[Platform, str],
) -> None:
    platform, dsn = pg_platform
    platform.start(ALL_SERVICES)
    token = platform.auth_client().user_login("admin", "teaclave")
    client = FrontendClient(platform.frontend_address, platform.trust(), "admin", token)
    function_id = client.register_function("builtin-echo", "echo", "builtin", arguments=["message"])
    task_id = client.create_task(function_id, {"message": "kept in postgres"})
    client.invoke_task(task_id)
    assert client.get_task_result(task_id, timeout=60) == b"kept in postgres"

    assert not (platform.home / "storage").exists() or not any((platform.home / "storage").iterdir())
    with psycopg.connect(dsn) as raw:
        values = [bytes(v) for (v,) in raw.execute("SELECT value FROM kettle_records").fetchall()]
    assert values and not any(b"kept in postgres" in v for v in values)  # sealed, as in SQLite

    old = platform.child("storage").process
    old.kill()  # no goodbye
    old.wait()
    platform.start_service("storage")  # a new storage process, the same database
    assert client.get_task(task_id).result.return_value == b"kept in postgres"  # type: ignore[union-attr]
    again = client.create_task(function_id, {"message": "after the restart"})
    client.invoke_task(again)
    assert client.get_task_result(again, timeout=60) == b"after the restart"
