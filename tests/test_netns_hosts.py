"""The test hosts themselves (``netns_hosts``): addresses that reach each other, a cable that
can be pulled and plugged back, and nothing left behind, also by a run that failed or died."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from netns_hosts import PREFIX, HostNetwork, remove_leftovers, unavailable_reason

_UNAVAILABLE = unavailable_reason()
pytestmark = pytest.mark.skipif(_UNAVAILABLE is not None, reason=f"no test hosts here: {_UNAVAILABLE}")

ECHO_SERVER = """
import socket, sys
server = socket.create_server(("0.0.0.0", 7000))
print("listening", flush=True)
while True:
    connection, _ = server.accept()
    connection.sendall(connection.recv(100))
    connection.close()
"""


def namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout


def links() -> str:
    return subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout


def echo(address: str, timeout: float = 2.0) -> bytes:
    with socket.create_connection((address, 7000), timeout=timeout) as connection:
        connection.sendall(b"hello")
        return connection.recv(100)


def test_hosts_reach_each_other_lose_their_cable_and_get_it_back(tmp_path: Path) -> None:
    with HostNetwork(["server", "client"]) as network:
        server = network.start("server", [sys.executable, "-c", ECHO_SERVER], log=tmp_path / "server.log")
        deadline = time.monotonic() + 10
        while "listening" not in (tmp_path / "server.log").read_text():
            assert server.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        address = network["server"].address
        assert address.startswith("10.77.") and address != network["client"].address
        assert echo(address) == b"hello"  # from the test process, over the bridge
        probe = f"import socket; c = socket.create_connection(({address!r}, 7000), timeout=2); c.sendall(b'hi'); print(c.recv(9).decode())"
        assert network.run("client", [sys.executable, "-c", probe]).stdout.strip() == "hi"  # host to host

        network.cut("server")
        with pytest.raises(OSError):
            echo(address, timeout=1)
        network.restore("server")
        assert echo(address, timeout=5) == b"hello"

        assert network.kill("server") == [server.pid]  # `ip netns exec` became the server
        assert server.poll() is not None
        with pytest.raises(OSError):
            echo(address, timeout=1)
    assert network.run_prefix not in namespaces() and network.run_prefix not in links()


def test_hosts_are_torn_down_when_the_test_fails(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="the test failed"), HostNetwork(["a"]) as network:
        process = network.start("a", ["sleep", "600"], log=tmp_path / "sleep.log")
        raise RuntimeError("the test failed")
    assert process.wait(timeout=10) != 0  # killed, not left running
    assert network.run_prefix not in namespaces() and network.run_prefix not in links()
    assert network.subnet not in subprocess.run(["ip", "route"], check=True, capture_output=True, text=True).stdout


def test_what_a_dead_run_left_behind_is_removed() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid now names a run that is gone
    leftover = f"{PREFIX}{dead.pid}-host"
    subprocess.run(["ip", "netns", "add", leftover], check=True)
    subprocess.run(["ip", "link", "add", f"{PREFIX}{dead.pid}br", "type", "bridge"], check=True)
    cluster = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{dead.pid}-postgres-"))
    try:
        remove_leftovers()
        assert leftover not in namespaces()
        assert f"{PREFIX}{dead.pid}br" not in links()
        assert not cluster.exists()
    finally:
        subprocess.run(["ip", "netns", "del", leftover], check=False, capture_output=True)
        subprocess.run(["ip", "link", "del", f"{PREFIX}{dead.pid}br"], check=False, capture_output=True)
        shutil.rmtree(cluster, ignore_errors=True)
