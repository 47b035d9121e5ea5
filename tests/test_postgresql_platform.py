"""A whole platform whose state lives in PostgreSQL: configured by a home's kettle.toml and
the KETTLE_STORAGE_DSN environment variable, schema created on first start."""

from __future__ import annotations

import json
import time
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
    listed = platform.kettle("storage", "dead-letters", "--json", env={"KETTLE_STORAGE_DSN": dsn})
    assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stdout + listed.stderr

    old = platform.child("storage").process
    old.kill()  # no goodbye
    old.wait()
    platform.start_service("storage")  # a new storage process, the same database
    assert client.get_task(task_id).result.return_value == b"kept in postgres"  # type: ignore[union-attr]
    again = client.create_task(function_id, {"message": "after the restart"})
    client.invoke_task(again)
    assert client.get_task_result(again, timeout=60) == b"after the restart"


def test_the_connection_string_comes_from_the_environment_then_a_private_file_then_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kettle.config import parse_config
    from kettle.errors import ConfigError
    from kettle.services.storage.service import postgresql_dsn

    monkeypatch.delenv("KETTLE_STORAGE_DSN", raising=False)
    secret = tmp_path / "dsn"
    secret.write_text("postgresql://kettle:pw@db/kettle\n")
    secret.chmod(0o644)
    with_file = parse_config('[storage]\nbackend = "postgresql"\ndsn_file = "dsn"\n', tmp_path)
    with pytest.raises(ConfigError, match=r"other users may read it \(mode 0644\): chmod 600 it"):
        postgresql_dsn(with_file)
    secret.chmod(0o600)
    assert postgresql_dsn(with_file) == "postgresql://kettle:pw@db/kettle"
    monkeypatch.setenv("KETTLE_STORAGE_DSN", "postgresql://from-env@db/kettle")
    assert postgresql_dsn(with_file) == "postgresql://from-env@db/kettle"
    monkeypatch.delenv("KETTLE_STORAGE_DSN")
    plain = parse_config('[storage]\nbackend = "postgresql"\ndsn = "postgresql://kettle@db/kettle"\n', tmp_path)
    assert postgresql_dsn(plain) == "postgresql://kettle@db/kettle"
    with pytest.raises(ConfigError, match="needs a connection string"):
        postgresql_dsn(parse_config('[storage]\nbackend = "postgresql"\n', tmp_path))


def test_a_populated_sqlite_platform_moves_to_postgresql_and_keeps_everything(
    tmp_path: Path, _auditor_cache: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kettle.config import load_config

    monkeypatch.delenv("KETTLE_STORAGE_DSN", raising=False)
    platform = Platform(make_home(tmp_path / "home", _auditor_cache))
    try:
        platform.start(ALL_SERVICES)
        admin = platform.admin()
        admin.user_register("moving_user", "pw-moving", "DataOwner", "org")
        token = platform.auth_client().user_login("admin", "teaclave")
        client = FrontendClient(platform.frontend_address, platform.trust(), "admin", token)
        function_id = client.register_function("builtin-echo", "echo", "builtin", arguments=["message"])
        task_id = client.create_task(function_id, {"message": "moved with its platform"})
        client.invoke_task(task_id)
        assert client.get_task_result(task_id, timeout=60) == b"moved with its platform"
        audited: set[str] = set()
        deadline = time.monotonic() + 15
        while "invoke_task" not in " ".join(audited) and time.monotonic() < deadline:  # flushed every second
            time.sleep(0.2)
            audited = {entry.message for entry in client.query_audit_logs("*", 1000)}
        assert any("invoke_task" in message for message in audited), audited
    finally:
        platform.stop()

    with postgresql_schema() as dsn:
        monkeypatch.setenv("KETTLE_STORAGE_DSN", dsn)
        moved = platform.kettle("storage", "migrate", "--from", "sqlite", "--to", "postgresql",
                                env={"KETTLE_STORAGE_DSN": dsn})
        assert moved.returncode == 0, moved.stdout + moved.stderr
        assert "queue items" in moved.stdout and 'now set [storage] backend = "postgresql"' in moved.stdout
        again = platform.kettle("storage", "migrate", "--from", "sqlite", "--to", "postgresql",
                                env={"KETTLE_STORAGE_DSN": dsn})
        assert again.returncode != 0 and "is not empty" in again.stdout + again.stderr  # never merged twice

        toml = platform.home / "kettle.toml"
        toml.write_text(toml.read_text() + '\n[storage]\nbackend = "postgresql"\n')
        (platform.home / "storage").rename(tmp_path / "sqlite-kept-aside")  # prove nothing reads it
        platform.config = load_config(platform.home)
        try:
            platform.start(ALL_SERVICES)
            assert platform.auth_client().user_login("moving_user", "pw-moving")
            token = platform.auth_client().user_login("admin", "teaclave")
            client = FrontendClient(platform.frontend_address, platform.trust(), "admin", token)
            assert client.get_function(function_id).name == "builtin-echo"
            assert client.get_task_result(task_id, timeout=10) == b"moved with its platform"
            assert audited <= {entry.message for entry in client.query_audit_logs("*", 1000)}
            after = client.create_task(function_id, {"message": "and goes on"})
            client.invoke_task(after)
            assert client.get_task_result(after, timeout=60) == b"and goes on"
        finally:
            platform.stop()
