"""Replicas of a service on one machine: its peers balance over them and fail over.

Two management replicas serve one platform: the frontend's channel holds a connection
to each, a replica killed mid-call has its long-polls taken over by the other without
the client seeing an error, and a replica that comes back serves again while the other
is down, all without restarting the frontend.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ALL_SERVICES, Platform, free_ports, make_home

from kettle.cli import api_target
from kettle.config import load_config, parse_config
from kettle.launcher import Child, spawn, stop_all
from kettle.rpc.channel import replica_target
from kettle.sdk import FrontendClient


def _connected_ports(pid: int) -> set[int]:
    """Remote ports of the established TCP connections process ``pid`` holds (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "01" and fields[9] in inodes:  # 01: ESTABLISHED
                ports.add(int(fields[2].rsplit(":", 1)[1], 16))
    return ports


@pytest.fixture
def two_managements(tmp_path: Path, _auditor_cache: Path) -> Iterator[tuple[Platform, list[Child], tuple[int, int]]]:
    """A platform whose management has two replicas, ``a`` from the home's configuration and
    ``b`` from a second file that differs only in where it listens."""
    port_a, port_b = free_ports(2)
    home = tmp_path / "home"
    make_home(home, _auditor_cache)
    text = (home / "kettle.toml").read_text()
    text, replaced = re.subn(
        r"^management = \{.*\}$",
        f'management = {{ listen_address = "127.0.0.1:{port_a}", '
        f'advertised_address = ["https://localhost:{port_a}", "https://127.0.0.1:{port_b}"] }}',
        text, flags=re.MULTILINE,
    )
    assert replaced == 1
    (home / "kettle.toml").write_text(text)
    (home / "management-b.toml").write_text(text.replace(f'listen_address = "127.0.0.1:{port_a}"',
                                                         f'listen_address = "127.0.0.1:{port_b}"'))
    platform = Platform(load_config(home))
    replicas: list[Child] = []
    try:
        platform.start(ALL_SERVICES)
        replicas.append(platform.child("management"))
        replicas.append(_start_replica_b(platform))
        yield platform, replicas, (port_a, port_b)
    finally:
        stop_all([r for r in replicas if r not in platform.children])
        platform.stop()


def _start_replica_b(platform: Platform) -> Child:
    os.environ["KETTLE_CONFIG"] = str(platform.home / "management-b.toml")
    try:
        return spawn("management-b", platform.config, service="management")
    finally:
        del os.environ["KETTLE_CONFIG"]


def _kill(child: Child) -> None:
    child.process.kill()
    child.process.wait()


def test_the_frontend_balances_over_management_replicas_and_fails_over_mid_call(
    two_managements: tuple[Platform, list[Child], tuple[int, int]],
) -> None:
    platform, (replica_a, replica_b), (port_a, port_b) = two_managements
    token = platform.auth_client().user_login("admin", "teaclave")
    client = FrontendClient(platform.frontend_address, platform.trust(), "admin", token)
    function_id = client.register_function("builtin-echo", "echo", "builtin", arguments=["message"])
    tasks = {client.create_task(function_id, {"message": f"message {i}"}): f"message {i}" for i in range(6)}
    assert {port_a, port_b} <= _connected_ports(platform.child("frontend").process.pid)

    # Six long-polls through the frontend, spread over both replicas; then one replica dies.
    results: dict[str, bytes | BaseException] = {}

    def wait(task_id: str) -> None:
        try:
            results[task_id] = client.get_task_result(task_id, timeout=60)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            results[task_id] = exc

    waiters = [threading.Thread(target=wait, args=(task_id,)) for task_id in tasks]
    for waiter in waiters:
        waiter.start()
    threading.Event().wait(1.0)  # the waits reach management
    _kill(replica_a)
    threading.Event().wait(1.0)  # the frontend sees the connection gone
    for task_id in tasks:
        client.invoke_task(task_id)
    for waiter in waiters:
        waiter.join(90)
    assert results == {task_id: message.encode() for task_id, message in tasks.items()}

    # Replica a comes back on its own address; then b dies: a serves, the frontend finds it again.
    platform.start_service("management")
    _kill(replica_b)
    again = client.create_task(function_id, {"message": "after the swap"})
    client.invoke_task(again)
    assert client.get_task_result(again, timeout=60) == b"after the swap"


def test_replica_names_resolve_into_one_balanced_target() -> None:
    assert replica_target(("localhost:7000",)) == "localhost:7000"  # one replica: gRPC's own resolver
    assert replica_target(("127.0.0.1:7000", "localhost:7001")) == "ipv4:127.0.0.1:7000,127.0.0.1:7001"
    # A name that does not resolve is left out; the others still serve.
    assert replica_target(("no-such-host.invalid:7000", "127.0.0.2:7000")) == "ipv4:127.0.0.2:7000"
    assert replica_target(("[::1]:7000", "[::1]:7001")) == "ipv6:[::1]:7000,[::1]:7001"


def test_a_command_uses_the_first_api_replica_that_answers() -> None:
    down, up = free_ports(2)
    config = parse_config(
        "[api_endpoints]\n"
        f'frontend = {{ listen_address = "0.0.0.0:{down}", '
        f'advertised_address = ["https://127.0.0.1:{down}", "https://127.0.0.1:{up}"] }}\n',
        Path("/nonexistent"),
    )
    assert api_target(config, "frontend") == f"127.0.0.1:{down}"  # none answers: the first, named by the error
    with socket.create_server(("127.0.0.1", up)):
        assert api_target(config, "frontend") == f"127.0.0.1:{up}"
    assert api_target(config, "authentication") == "localhost:7776"  # one replica: no probing
