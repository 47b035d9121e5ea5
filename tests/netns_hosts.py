"""Test hosts on this machine: Linux network namespaces on a private bridge.

Each host is a network namespace with one veth link to a bridge in the root
namespace, and its own address in a private /24 (``10.77.N.0/24``, N chosen per
run). The bridge holds ``10.77.N.1``, so the test process itself (the clients)
reaches every host directly, and nothing on the subnet reaches anything else:
the hosts have no default route, and a blackhole route for the subnet stays in
the root namespace until the very end of teardown, so a packet for a host whose
link is cut is dropped here rather than sent to the machine's default gateway.

Names carry the run's prefix (``kt<pid>``): two pytest workers never clash, and a
run that was killed leaves names that the next run recognises (their pid is gone)
and removes. Everything is torn down by :meth:`HostNetwork.close`, which the
context manager calls also when the test fails.

Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN for ``ip netns``) and ``ip`` from
iproute2; :func:`unavailable_reason` says why not when they are missing.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Self

PREFIX = "kt"
"""What every namespace, bridge and veth of these test hosts is named with, before the run's pid."""
SUBNET_BASE = "10.77"
"""The /16 the per-run /24s come from: private, and unlikely to be a real network on a test machine."""
LOCK_DIR = Path("/run/kettle-test-hosts")
"""Where runs hold a lock on the /24 each uses, so parallel runs never pick the same one."""
_NAME_PATTERN = re.compile(rf"^{PREFIX}(\d+)(?:br|[vh]\d+|-.*)$")


class HostsUnavailable(Exception):
    """Network namespaces cannot be made here (the reason says why)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], check=False, capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def unavailable_reason() -> str | None:
    """Why test hosts cannot be made on this machine, or None when they can.

    Tried for real (a namespace made and removed) rather than guessed from the user
    id: a root without CAP_SYS_ADMIN (a restricted container) cannot mount one."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN, CAP_SYS_ADMIN)"
    run = f"{PREFIX}{os.getpid()}"
    steps = [
        ("create a network namespace", ["netns", "add", f"{run}-probe"]),
        ("create a bridge", ["link", "add", f"{run}br", "type", "bridge"]),
        ("create a veth pair", ["link", "add", f"{run}v0", "type", "veth", "peer", "name", f"{run}h0"]),
        ("move a link into a namespace", ["link", "set", f"{run}h0", "netns", f"{run}-probe"]),
    ]
    try:
        for what, args in steps:
            made = _ip(*args, check=False)
            if made.returncode != 0:
                return f"cannot {what}: {made.stderr.strip()}"
        return None
    finally:
        _ip("netns", "del", f"{run}-probe", check=False)
        _ip("link", "del", f"{run}br", check=False)
        _ip("link", "del", f"{run}v0", check=False)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers() -> None:
    """Remove namespaces, links, routes and database directories of runs that ended without
    tearing down (their pid is gone), and anything named with this run's own pid (a dead
    run's, when a pid was reused)."""
    namespaces = [line.split()[0] for line in _ip("netns", "list").stdout.splitlines() if line.strip()]
    links = re.findall(r"^\d+: ([^:@]+)", _ip("-o", "link", "show").stdout, re.MULTILINE)
    for name in namespaces + links:
        match = _NAME_PATTERN.match(name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid != os.getpid() and _pid_alive(pid):
            continue
        if name in namespaces:
            _kill_namespace_processes(name)
            _ip("netns", "del", name, check=False)
        else:
            _ip("link", "del", name, check=False)
    for directory in Path(tempfile.gettempdir()).glob(f"{PREFIX}*-postgres-*"):
        match = re.match(rf"^{PREFIX}(\d+)-postgres-", directory.name)
        if match and (int(match.group(1)) == os.getpid() or not _pid_alive(int(match.group(1)))):
            shutil.rmtree(directory, ignore_errors=True)  # a dead run's database cluster
    routes = _ip("-4", "route", "show", "type", "blackhole").stdout
    for line in routes.splitlines():
        # The blackhole route of a dead run: its /24 has no bridge any more.
        match = re.match(rf"blackhole ({re.escape(SUBNET_BASE)}\.\d+\.0/24)", line)
        if match and not _subnet_locked(match.group(1)):
            _ip("route", "del", "blackhole", match.group(1), check=False)


def _kill_namespace_processes(namespace: str) -> list[int]:
    pids = [int(p) for p in _ip("netns", "pids", namespace, check=False).stdout.split()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


def _lock_path(subnet: str) -> Path:
    return LOCK_DIR / f"{subnet.replace('/', '_')}.lock"


def _subnet_locked(subnet: str) -> bool:
    path = _lock_path(subnet)
    if not path.exists():
        return False
    with path.open("a") as probe:
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(probe, fcntl.LOCK_UN)
    return False


def _claim_subnet() -> tuple[str, IO[str]]:
    """A /24 under SUBNET_BASE that no other run holds and no route of this machine touches,
    with the open, locked file that holds it for this run."""
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    in_use = _ip("-4", "route", "show", "table", "all").stdout + _ip("-4", "-o", "addr", "show").stdout
    for third in range(256):
        subnet = f"{SUBNET_BASE}.{third}.0/24"
        if f"{SUBNET_BASE}.{third}." in in_use:
            continue
        held = _lock_path(subnet).open("a")
        try:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held.close()
            continue
        return subnet, held
    raise HostsUnavailable(f"no free /24 left in {SUBNET_BASE}.0.0/16")


@dataclass
class Host:
    """One test host: a network namespace with one link to the bridge."""

    name: str
    """What the test calls it (``storage-1``)."""
    namespace: str
    address: str
    bridge_side: str
    """The veth end on the bridge: pulling it down is pulling the host's cable."""
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` as run on this host."""
        return ["ip", "netns", "exec", self.namespace, *argv]


class HostNetwork:
    """The bridge and hosts of one test run; a context manager that always tears them down."""

    def __init__(self, names: Sequence[str]) -> None:
        if len(set(names)) != len(names) or len(names) > 250:
            raise ValueError("host names must be distinct, at most 250 of them")
        self.run_prefix = f"{PREFIX}{os.getpid()}"
        self.bridge = f"{self.run_prefix}br"
        if len(self.bridge) > 15:  # the kernel's limit on interface names
            raise HostsUnavailable(f"process id {os.getpid()} is too long for interface names")
        self._names = list(names)
        self.hosts: dict[str, Host] = {}
        self.subnet = ""
        self.gateway = ""
        self._lock: IO[str] | None = None

    def __enter__(self) -> Self:
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def _create(self) -> None:
        remove_leftovers()
        self.subnet, self._lock = _claim_subnet()
        base = self.subnet.rsplit(".", 1)[0]
        self.gateway = f"{base}.1"
        _ip("route", "add", "blackhole", self.subnet, "metric", "4242")
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for index, name in enumerate(self._names, start=2):
            namespace = f"{self.run_prefix}-{name}"
            bridge_side = f"{self.run_prefix}v{index}"
            inside = f"{self.run_prefix}h{index}"
            _ip("netns", "add", namespace)
            self.hosts[name] = host = Host(name, namespace, f"{base}.{index}", bridge_side)
            _ip("link", "add", bridge_side, "type", "veth", "peer", "name", inside)
            _ip("link", "set", inside, "netns", namespace)
            _ip("-n", namespace, "link", "set", inside, "name", "eth0")
            _ip("-n", namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
            _ip("-n", namespace, "link", "set", "eth0", "up")
            _ip("-n", namespace, "link", "set", "lo", "up")
            _ip("link", "set", bridge_side, "master", self.bridge, "up")

    def start(
        self,
        host: str,
        argv: Sequence[str],
        *,
        log: Path,
        env: dict[str, str] | None = None,
        pass_fds: Sequence[int] = (),
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` on ``host``, its output appended to ``log``; kept for :meth:`kill`."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            process = subprocess.Popen(
                self.hosts[host].command(argv), env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                pass_fds=tuple(pass_fds), start_new_session=True,
            )
        self.hosts[host].processes.append(process)
        return process

    def run(self, host: str, argv: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` on ``host`` to its end."""
        return subprocess.run(self.hosts[host].command(argv), check=False, capture_output=True, text=True, timeout=timeout)

    def kill(self, host: str) -> list[int]:
        """Kill every process running on ``host`` at once (SIGKILL: no goodbye); their pids.

        The processes started here are killed by their own pid too: one started a moment
        ago may not have entered the namespace yet, so the namespace does not list it."""
        started = [p for p in self.hosts[host].processes if p.poll() is None]
        for process in started:
            process.kill()
        pids = sorted({*(p.pid for p in started), *_kill_namespace_processes(self.hosts[host].namespace)})
        for process in self.hosts[host].processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        self.hosts[host].processes = [p for p in self.hosts[host].processes if p.poll() is None]
        return pids

    def cut(self, host: str) -> None:
        """Pull ``host``'s cable: its packets are dropped, its connections stall (no reset)."""
        _ip("link", "set", self.hosts[host].bridge_side, "down")

    def restore(self, host: str) -> None:
        """Plug ``host``'s cable back in; stalled connections resume where TCP still holds them."""
        _ip("link", "set", self.hosts[host].bridge_side, "up")

    def close(self) -> None:
        """Stop every process on every host, then remove the hosts, the bridge and the route."""
        for host in self.hosts.values():
            self.kill(host.name)
        for host in self.hosts.values():
            _ip("netns", "del", host.namespace, check=False)  # its veth pair goes with it
        _ip("link", "del", self.bridge, check=False)
        # Wait until the kernel has let go of the namespaces' links before the subnet's
        # blackhole goes: nothing may reach the subnet without a bridge to catch it.
        deadline = time.monotonic() + 10
        while self.run_prefix in _ip("-o", "link", "show").stdout and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.subnet:
            _ip("route", "del", "blackhole", self.subnet, check=False)
        if self._lock is not None:
            self._lock.close()
            self._lock = None



class PostgresHost:
    """A private PostgreSQL cluster on one test host, reachable from the whole subnet.

    Made with the machine's own ``initdb`` and ``postgres`` binaries, run as the
    ``postgres`` user in a directory of the test's, listening only on the host's
    address, trusting the subnet: the machine's own cluster and its configuration
    are never touched. A context manager that stops the cluster on the way out.
    """

    def __init__(self, network: HostNetwork, host: str, database: str = "kettle") -> None:
        self.network = network
        self.host = host
        # Under /tmp, not the test's own (root-only) tmp path, which the postgres user cannot enter.
        self.directory = Path(tempfile.mkdtemp(prefix=f"{network.run_prefix}-postgres-"))
        self.database = database
        self.port = 5432
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def dsn(self) -> str:
        """The connection string every service uses: trust on the subnet, so no password."""
        return f"postgresql://postgres@{self.network[self.host].address}:{self.port}/{self.database}"

    @staticmethod
    def binaries() -> Path:
        """The newest installed server's bin directory."""
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name))
        if not found:
            raise HostsUnavailable("no PostgreSQL server binaries under /usr/lib/postgresql")
        return found[-1].parent

    def __enter__(self) -> Self:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _as_postgres(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv]

    def _start(self) -> None:
        bin_dir = self.binaries()
        data = self.directory / "data"
        shutil.chown(self.directory, "postgres", "postgres")
        made = subprocess.run(
            self._as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                               "-E", "UTF8", "--no-sync", "--no-instructions"]),
            check=False, capture_output=True, text=True, timeout=120,
        )
        if made.returncode != 0:
            raise RuntimeError(f"initdb failed: {made.stderr.strip()}")
        with (data / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {self.network.subnet} trust\n")
        self._launch()
        self._wait_until_accepting(f'CREATE DATABASE "{self.database}"')

    def _launch(self) -> None:
        """Start the postmaster on the cluster's data directory (made by :meth:`_start`)."""
        address = self.network[self.host].address
        self._process = self.network.start(
            self.host,
            self._as_postgres([str(self.binaries() / "postgres"), "-D", str(self.directory / "data"),
                               "-p", str(self.port), "-c", f"listen_addresses={address}",
                               "-c", f"unix_socket_directories={self.directory}", "-c", "max_connections=200"]),
            log=self.directory / "postgres.log",
        )

    def _wait_until_accepting(self, statement: str = "SELECT 1") -> None:
        """Wait until the postmaster accepts connections, then run ``statement`` on it."""
        import psycopg

        assert self._process is not None
        deadline = time.monotonic() + 60
        admin = f"postgresql://postgres@{self.network[self.host].address}:{self.port}/postgres"
        while True:
            try:
                with psycopg.connect(admin, autocommit=True, connect_timeout=2) as connection:
                    connection.execute(statement)
                return
            except psycopg.OperationalError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    log = (self.directory / "postgres.log").read_text(errors="replace")
                    raise RuntimeError(f"PostgreSQL did not start on {self.host}:\n{log[-2000:]}") from None
                time.sleep(0.2)

    def _shut_down(self) -> bool:
        """A fast shutdown (SIGINT to the postmaster: clients are cut off, nothing waited for,
        every commit kept); whether the postmaster ended within 20 s."""
        if self._process is None or self._process.poll() is not None:
            return True
        try:
            # The postmaster is runuser's child, not the process started: its own pid is in its file.
            postmaster = int((self.directory / "data" / "postmaster.pid").read_text().split()[0])
            os.kill(postmaster, signal.SIGINT)
            self._process.wait(timeout=20)
        except (FileNotFoundError, ValueError, ProcessLookupError, subprocess.TimeoutExpired):
            return False
        return True

    def restart(self, down_secs: float = 0.0) -> None:
        """Restart the database server as an operator would: a fast shutdown, ``down_secs``
        with no server (a slow start, a maintenance), then the same data directory started
        again; returns once it accepts connections."""
        if not self._shut_down():
            raise RuntimeError(f"PostgreSQL on {self.host} did not shut down within 20 s")
        time.sleep(down_secs)
        self._launch()
        self._wait_until_accepting()

    def close(self) -> None:
        if not self._shut_down():
            self.network.kill(self.host)
        self._process = None
        shutil.rmtree(self.directory, ignore_errors=True)
