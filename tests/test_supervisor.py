"""Supervision under `kettle up`: a crashed service comes back, a crash loop stops the platform.

The restart policy is pure and tested on its own; the rest runs real service
processes: ``kettle up`` itself (with two execution nodes) for a SIGKILLed
service and ``kettle status``, and the :class:`Supervisor` on a small platform
for a service that can no longer start.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import Platform, make_home
from kettle.config import SupervisorConfig, load_config
from kettle.launcher import Supervisor
from kettle.model.restarts import RestartPolicy, RestartSettings
from kettle.platform_status import StatusFile
from kettle.sdk import FrontendClient

READY_LINE = "Kettle is ready"


def _settings(**changes: float) -> RestartSettings:
    base = {"restart_backoff": 0.5, "max_restart_backoff": 4.0, "stable": 30.0,
            "crash_loop_crashes": 5, "crash_loop_window": 60.0}
    return RestartSettings(**{**base, **changes})  # type: ignore[arg-type]


# --- the policy -----------------------------------------------------------------


def test_backoff_doubles_up_to_its_cap() -> None:
    policy = RestartPolicy(_settings(crash_loop_crashes=100))
    policy.started(0.0)
    delays = []
    for n in range(6):
        decision = policy.crashed(1.0 + n)
        assert not decision.give_up
        delays.append(decision.delay)
        policy.started(1.5 + n)
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert policy.restarts == 6


def test_a_service_that_ran_stably_starts_over_at_the_first_delay() -> None:
    policy = RestartPolicy(_settings(crash_loop_crashes=100, crash_loop_window=10.0))
    policy.started(0.0)
    assert policy.crashed(1.0).delay == 0.5
    policy.started(2.0)
    assert policy.crashed(3.0).delay == 1.0
    policy.started(4.0)
    assert policy.crashed(4.0 + 30.0).delay == 0.5  # ran 30 s: a new incident


def test_a_crash_loop_gives_up_with_the_reason() -> None:
    policy = RestartPolicy(_settings(crash_loop_crashes=3, crash_loop_window=60.0))
    assert not policy.crashed(0.0).give_up
    assert not policy.crashed(1.0).give_up
    decision = policy.crashed(2.0)
    assert decision.give_up
    assert decision.crashes_in_window == 3
    assert decision.reason == "it crashed 3 times within 60 s (a crash loop)"


def test_crashes_older_than_the_window_do_not_count() -> None:
    policy = RestartPolicy(_settings(crash_loop_crashes=3, crash_loop_window=60.0))
    assert not policy.crashed(0.0).give_up
    assert not policy.crashed(10.0).give_up
    decision = policy.crashed(65.0)  # the one at 0 s is out of the window
    assert not decision.give_up and decision.crashes_in_window == 2
    assert policy.crashed(66.0).give_up


def test_settings_come_from_the_supervisor_section() -> None:
    settings = RestartSettings.from_config(SupervisorConfig(restart_backoff_ms=250, max_restart_backoff_ms=3000))
    assert (settings.restart_backoff, settings.max_restart_backoff) == (0.25, 3.0)
    assert (settings.crash_loop_crashes, settings.crash_loop_window) == (5, 120.0)


# --- kettle up ------------------------------------------------------------------


def _status(home: Path) -> tuple[int, dict]:  # type: ignore[type-arg]
    result = subprocess.run(
        [sys.executable, "-m", "kettle", "status", "--json"],
        env={**os.environ, "KETTLE_HOME": str(home)}, capture_output=True, text=True, timeout=60,
    )
    return result.returncode, json.loads(result.stdout)


def _until(check, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:  # noqa: BLE001 - the platform may still be coming back
            last = exc
        else:
            if last:
                return last
        time.sleep(0.5)
    raise AssertionError(f"{what} did not happen within {timeout:.0f} s (last: {last!r})")


def test_a_killed_service_comes_back_and_the_platform_serves_again(
    tmp_path: Path, _auditor_cache: Path
) -> None:
    config = make_home(tmp_path / "home", _auditor_cache,
                       extra="[supervisor]\nexecution_nodes = 2\nrestart_backoff_ms = 200\n")
    up = subprocess.Popen(
        [sys.executable, "-m", "kettle", "up"],
        env={**os.environ, "KETTLE_HOME": str(config.home), "PYTHONUNBUFFERED": "1", "COLUMNS": "200"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(iter(up.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        _until(lambda: any(line.startswith(READY_LINE) for line in output) or up.poll() is not None, 240, "start")
        assert up.poll() is None, "".join(output)

        code, before = _status(config.home)
        assert code == 0, before
        names = [s["name"] for s in before["services"]]
        assert names == ["attestation", "storage", "access_control", "authentication", "management",
                         "scheduler", "execution", "execution-2", "frontend"]
        health = {s["name"]: s["health"] for s in before["services"]}
        assert health["frontend"] == health["authentication"] == "serving"
        assert health["storage"] == health["attestation"] == "listening"
        assert health["execution-2"] == "running"
        old_pid = next(s["pid"] for s in before["services"] if s["name"] == "management")

        os.kill(old_pid, signal.SIGKILL)

        platform = Platform(load_config(config.home))

        def serves() -> bool:
            token = platform.auth_client().user_login("admin", "teaclave")
            FrontendClient(platform.frontend_address, platform.trust(), user_id="admin", token=token).list_functions()
            return True

        _until(serves, 60, "a frontend call through the restarted management")
        assert up.poll() is None
        text = "".join(output)
        assert f"service management (pid {old_pid}) was killed by SIGKILL; restarting it in 0.2 s" in text, text
        assert "Last lines of" in text

        code, after = _status(config.home)
        management = next(s for s in after["services"] if s["name"] == "management")
        assert code == 0, after
        assert management["pid"] != old_pid and management["restarts"] == 1
        assert management["last_exit"] == f"(pid {old_pid}) was killed by SIGKILL"
        assert management["health"] == "listening"

        table = subprocess.run(
            [sys.executable, "-m", "kettle", "status"],
            env={**os.environ, "KETTLE_HOME": str(config.home), "COLUMNS": "200"},
            capture_output=True, text=True, timeout=60,
        ).stdout
        assert f"Kettle supervisor (pid {up.pid}) is running" in table
        rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in table.splitlines() if "│" in line]
        assert ["management", str(management["pid"]), "1", "listening", management["last_exit"]] in rows, table
    finally:
        os.kill(up.pid, signal.SIGTERM)
        up.wait(timeout=60)
    assert up.returncode == 0
    code, stopped = _status(config.home)
    assert code == 1 and stopped["state"] == "stopped"


def test_a_service_that_keeps_crashing_at_start_stops_the_platform(home_factory) -> None:  # type: ignore[no-untyped-def]
    platform: Platform = home_factory(
        extra="[supervisor]\nrestart_backoff_ms = 100\ncrash_loop_crashes = 3\ncrash_loop_window_secs = 300\n"
    )
    platform.start(("storage", "authentication"))
    # Outside dev mode the default admin password is refused at start: every restart fails.
    toml = platform.home / "kettle.toml"
    toml.write_text(toml.read_text().replace("dev_mode = true", "dev_mode = false"))
    victim = platform.child("authentication").process
    victim.send_signal(signal.SIGKILL)
    messages: list[str] = []
    supervisor = Supervisor(platform.config, platform.children, messages.append)
    started = time.monotonic()
    assert supervisor.run() == 1
    assert time.monotonic() - started < 120
    assert messages[0].startswith(f"service authentication (pid {victim.pid}) was killed by SIGKILL; restarting it")
    last = messages[-1]
    assert last.startswith(
        "service authentication failed to start: exited with status 1 before it was ready; "
        "it crashed 3 times within 300 s (a crash loop): giving up and stopping the platform."
    ), last
    assert "refusing to start: the bootstrap admin password is the default one" in last
    assert all(child.process.poll() is not None for child in supervisor.children)
    state = StatusFile(platform.home).read()
    assert state.state == "gave up" and "crash loop" in state.message
    assert next(s for s in state.services if s.name == "authentication").restarts == 2


def test_a_supervisor_in_another_thread_restarts_and_stops_on_request(home_factory) -> None:  # type: ignore[no-untyped-def]
    """How a test runs a supervised platform in-process: the platform's child list follows restarts."""
    platform: Platform = home_factory(extra="[supervisor]\nrestart_backoff_ms = 100\n")
    platform.start(("storage",))
    supervisor = Supervisor(platform.config, platform.children, lambda message: None)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(supervisor.run()))
    thread.start()
    try:
        old = platform.child("storage").process
        old.send_signal(signal.SIGKILL)
        _until(lambda: platform.child("storage").process.pid != old.pid, 60, "the restart of storage")
        assert platform.child("storage").process.poll() is None
    finally:
        supervisor.stop()
        thread.join(timeout=60)
    assert result == [0]
    assert all(child.process.poll() is not None for child in platform.children)


def test_supervisor_settings_are_checked(tmp_path: Path) -> None:
    from kettle.config import parse_config
    from kettle.errors import ConfigError

    with pytest.raises(ConfigError, match="supervisor.execution_nodes must be at least 1"):
        parse_config("[supervisor]\nexecution_nodes = 0\n", tmp_path)
    with pytest.raises(ConfigError, match="peers.connect_timeout_ms must be at least 100"):
        parse_config("[peers]\nconnect_timeout_ms = 5\n", tmp_path)
    assert parse_config("[supervisor]\nexecution_nodes = 3\n", tmp_path).supervisor.execution_nodes == 3


# --- a killed execution node's leftovers ----------------------------------------------

_NODE = """
import sys, time
from pathlib import Path
from kettle.services.execution.scratch import NodeScratch
scratch = NodeScratch(Path(sys.argv[1]), sys.argv[2])
scratch.root.mkdir()
(scratch.root / "staged-input").write_bytes(b"x")
print("ready", flush=True)
time.sleep(600)
"""


def test_a_new_node_removes_what_a_killed_node_left_and_nothing_of_a_live_one(tmp_path: Path) -> None:
    from kettle.services.execution.scratch import NodeScratch

    nodes = {
        name: subprocess.Popen([sys.executable, "-c", _NODE, str(tmp_path), name], stdout=subprocess.PIPE, text=True)
        for name in ("killed", "live")
    }
    try:
        for process in nodes.values():
            assert process.stdout is not None and process.stdout.readline() == "ready\n"
        nodes["killed"].send_signal(signal.SIGKILL)
        nodes["killed"].wait()
        assert (tmp_path / "killed" / "staged-input").exists()

        successor = NodeScratch(tmp_path, "successor")
        assert not (tmp_path / "killed").exists() and not (tmp_path / "killed.lock").exists()
        assert (tmp_path / "live" / "staged-input").exists()
        successor.root.mkdir()
        successor.release()
        assert not (tmp_path / "successor.lock").exists()
    finally:
        for process in nodes.values():
            process.kill()
            process.wait()


def test_status_without_a_running_supervisor_says_so(tmp_path: Path) -> None:
    env = {**os.environ, "KETTLE_HOME": str(tmp_path)}
    never = subprocess.run([sys.executable, "-m", "kettle", "status"], env=env, capture_output=True, text=True, timeout=60)
    assert never.returncode == 1
    assert never.stderr.strip() == f"error: Kettle has not been started with `kettle up` in {tmp_path}"

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    from kettle.platform_status import ServiceState

    StatusFile(tmp_path).write(dead.pid, "running", "", [ServiceState("storage", "storage", dead.pid, "running", 0, "")])
    gone = subprocess.run([sys.executable, "-m", "kettle", "status", "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert gone.returncode == 1
    report = json.loads(gone.stdout)
    assert report["state"] == "gone (the supervisor died without stopping the services)"
    assert report["services"][0]["health"] == "down: process is gone" and not report["healthy"]
