"""The platform spread over test hosts (network namespaces, ``netns_hosts``), under load,
losing hosts and getting them back.

Every service runs as ``kettle service NAME`` on a host of its own, with its own address,
from a home that holds only what ``docs/deploy.md`` says a host needs: the one
configuration file and the trust files (plus, in simulation, the simulated CPU).
Storage, access control, authentication, management, scheduler and frontend run on two
hosts each, as replicas; two execution hosts; PostgreSQL on a host of its own. The test
process is the clients' machine, reaching the hosts over the bridge.

Under steady load from a few clients: one execution host's cable is pulled for longer
than a lease (its connections stall, its tasks are re-run elsewhere, its late reports are
discarded) and plugged back in; one replica host each of frontend, authentication,
access control and the scheduler is killed outright and started again; then one of
storage and one of management (an InvokeTask is one storage transaction, so whichever
moment they die at, a task is either invoked, counted once and queued, or untouched); a
storage replica's and a management replica's cables are pulled for a while. Every task
a client saw created must end Finished with its own message, carry a receipt that
verifies against it, and be invoked once (the function's usage counts each task once);
no client may stay stuck past a bounded wait.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest
from netns_hosts import HostNetwork, HostsUnavailable, PostgresHost, unavailable_reason

from kettle.config import API_PORTS, ATTESTATION_SERVICE_PORT, INTERNAL_PORTS
from kettle.errors import KettleError, Unavailable
from kettle.provisioning import init_dev_home
from kettle.sdk import (
    AuthenticationClient,
    ClientTrust,
    FrontendClient,
    TaskStatus,
    verify_receipt,
)

_UNAVAILABLE = unavailable_reason()
pytestmark = pytest.mark.skipif(_UNAVAILABLE is not None, reason=f"no test hosts here: {_UNAVAILABLE}")

T = TypeVar("T")

REPLICAS = {
    "storage": 2,
    "access_control": 2,
    "authentication": 2,
    "management": 2,
    "scheduler": 2,
    "execution": 2,
    "frontend": 2,
}
"""How many hosts run each platform service, each host one service."""
START_ORDER = (
    ("storage", "access_control"),
    ("authentication", "management", "scheduler"),
    ("execution", "frontend"),
)
"""Tiers started together, each once the one before it is ready (its dependencies first)."""
LEASE_SECS = 3
"""The scheduler's lease: short, so a task on a cut-off node is re-run soon."""
TASK_SLOTS = 2
"""Tasks each execution node runs at once: the cut-off node has several in flight."""
ADMIN_PASSWORD = "multi-host-admin-password"
CLIENTS = 3
READY_TIMEOUT_SECS = 90.0
RETRY_WINDOW_SECS = 45.0
"""How long a client keeps retrying one call that fails UNAVAILABLE."""


def host_names() -> list[str]:
    names = ["db", "attestation"]
    for service, count in REPLICAS.items():
        names += [f"{service.replace('_', '-')}-{n}" for n in range(1, count + 1)]
    return names


def hosts_of(service: str) -> list[str]:
    return [f"{service.replace('_', '-')}-{n}" for n in range(1, REPLICAS[service] + 1)]


def platform_config(network: HostNetwork, dsn: str) -> str:
    """The one kettle.toml every host gets: each service listens on all of its host's
    addresses and is advertised at its host's address."""

    def url(host: str, port: int) -> str:
        return f"https://{network[host].address}:{port}"

    def endpoint(service: str, port: int) -> str:
        replicas = [f'"{url(host, port)}"' for host in hosts_of(service)]
        advertised = replicas[0] if len(replicas) == 1 else f"[{', '.join(replicas)}]"
        return f'{service} = {{ listen_address = "0.0.0.0:{port}", advertised_address = {advertised} }}'

    lines = [
        "[platform]",
        "dev_mode = false",
        "",
        "[authentication]",
        f'admin_password = "{ADMIN_PASSWORD}"',
        "",
        "[attestation]",
        'backend = "simulation"',
        "unsafe_allow_simulation = true",
        f'service_url = "{url("attestation", ATTESTATION_SERVICE_PORT)}"',
        f'listen_address = "0.0.0.0:{ATTESTATION_SERVICE_PORT}"',
        "",
        "[api_endpoints]",
        *(endpoint(service, port) for service, port in API_PORTS.items()),
        "",
        "[internal_endpoints]",
        *(endpoint(service, port) for service, port in INTERNAL_PORTS.items()),
        "",
        "[storage]",
        'backend = "postgresql"',
        f'dsn = "{dsn}"',
        "",
        "[scheduler]",
        f"lease_secs = {LEASE_SECS}",
        "",
        "[execution]",
        f"concurrent_tasks = {TASK_SLOTS}",
        "",
    ]
    return "\n".join(lines)


def client_config(platform: str) -> str:
    """A client's kettle.toml (docs/deploy.md): where the API is, and the attestation policy;
    none of the hosts' settings (the initial admin password among them)."""
    api = platform[platform.index("[api_endpoints]"):platform.index("[internal_endpoints]")]
    return f"[attestation]\nunsafe_allow_simulation = true\n\n{api}"


def host_home(provisioning: Path, home: Path, service: str) -> Path:
    """A host's home with only what a host of ``service`` needs (docs/deploy.md): the
    configuration, the trust files, the measured build configuration, and the simulated
    CPU (on real hardware, the machine's own); the attestation host also its keys."""
    home.mkdir(parents=True, mode=0o700)
    shutil.copy2(provisioning / "kettle.toml", home / "kettle.toml")
    shutil.copytree(provisioning / "trust", home / "trust")
    shutil.copytree(provisioning / "build", home / "build")
    shutil.copytree(provisioning / "simulation", home / "simulation")
    if service == "attestation":
        shutil.copytree(provisioning / "attestation_service", home / "attestation_service")
    return home


def service_environment(home: Path) -> dict[str, str]:
    """The environment of a service on a host: none of this machine's KETTLE_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KETTLE_")}
    env["KETTLE_HOME"] = str(home)
    return env


@dataclass
class Deployment:
    network: HostNetwork
    homes: dict[str, Path]
    """Host name → its home."""
    services: dict[str, str]
    """Host name → the service it runs."""

    def start(self, hosts: list[str]) -> None:
        """Start each host's service at once and wait until every one says it is ready."""
        waiting: dict[int, str] = {}
        for host in hosts:
            read_fd, write_fd = os.pipe()
            env = service_environment(self.homes[host]) | {"KETTLE_READY_FD": str(write_fd)}
            self.network.start(
                host, [sys.executable, "-m", "kettle", "service", self.services[host]],
                log=self.homes[host] / "service.log", env=env, pass_fds=(write_fd,),
            )
            os.close(write_fd)
            waiting[read_fd] = host
        deadline = time.monotonic() + READY_TIMEOUT_SECS
        try:
            while waiting:
                remaining = deadline - time.monotonic()
                readable, _, _ = select.select(list(waiting), [], [], max(0.0, min(remaining, 1.0)))
                for fd in readable:
                    host = waiting.pop(fd)
                    said = os.read(fd, 64)
                    os.close(fd)
                    if not said.startswith(b"ready"):
                        pytest.fail(f"{self.services[host]} on {host} died before it was ready:\n{self.log_tail(host)}")
                if remaining <= 0 and waiting:
                    late = ", ".join(sorted(waiting.values()))
                    pytest.fail(f"not ready in {READY_TIMEOUT_SECS:.0f} s: {late}\n" +
                                "\n".join(self.log_tail(h) for h in waiting.values()))
        finally:
            for fd in waiting:
                os.close(fd)

    def log_tail(self, host: str, lines: int = 20) -> str:
        path = self.homes[host] / "service.log"
        text = path.read_text(errors="replace") if path.exists() else "(no log)"
        return f"--- {host}:\n" + "\n".join(text.splitlines()[-lines:])


@pytest.fixture
def deployment(tmp_path: Path, _auditor_cache: Path) -> Iterator[Deployment]:
    with contextlib.ExitStack() as stack:
        try:
            network = stack.enter_context(HostNetwork(host_names()))
        except HostsUnavailable as exc:
            pytest.skip(f"no test hosts here: {exc}")
        database = stack.enter_context(PostgresHost(network, "db"))
        provisioning = tmp_path / "provisioning"
        provisioning.mkdir(mode=0o700)
        shutil.copytree(_auditor_cache, provisioning / "auditors")
        (provisioning / "kettle.toml").write_text(platform_config(network, database.dsn))
        init_dev_home(provisioning)
        services = {"attestation": "attestation"}
        for service in REPLICAS:
            services |= dict.fromkeys(hosts_of(service), service)
        homes = {host: host_home(provisioning, tmp_path / "hosts" / host, service) for host, service in services.items()}
        homes["client"] = tmp_path / "client"  # what a client's machine gets: no secret
        shutil.copytree(provisioning / "trust", homes["client"] / "trust")
        (homes["client"] / "kettle.toml").write_text(client_config((provisioning / "kettle.toml").read_text()))
        deployed = Deployment(network, homes, services)
        deployed.start(["attestation"])
        for tier in START_ORDER:
            deployed.start([host for service in tier for host in hosts_of(service)])
        yield deployed
        for host in services:
            network.kill(host)  # before the database goes, so nothing logs its loss as a failure


@dataclass
class LoadClient:
    """One user creating, invoking and waiting for echo tasks, one after another, through
    the frontend replicas it knows: one that answers UNAVAILABLE is left for the next, and
    the call made again, as a user would (for a bounded time)."""

    name: str
    frontends: list[FrontendClient]
    """One client per frontend replica, this user's credential on each."""
    function_id: str
    stop: threading.Event
    tasks: dict[str, str] = field(default_factory=dict)
    """Every task this client saw created → the message it carries."""
    finished_at: list[float] = field(default_factory=list)
    unavailable: int = 0
    """Calls that failed UNAVAILABLE and were made again."""
    error: Exception | None = None
    _current: int = 0

    def retried(self, call: Callable[[FrontendClient], T], what: str) -> T:
        deadline = time.monotonic() + RETRY_WINDOW_SECS
        while True:
            try:
                return call(self.frontends[self._current])
            except Unavailable:
                assert time.monotonic() < deadline, f"{what} stayed UNAVAILABLE for {RETRY_WINDOW_SECS:.0f} s"
                self.unavailable += 1
                self._current = (self._current + 1) % len(self.frontends)
                time.sleep(0.2)

    def run(self) -> None:
        try:
            for n in range(1000):  # bounded even if the stop never comes
                if self.stop.is_set():
                    return
                self.one_task(f"{self.name} task {n}")
        except Exception as exc:  # handed to the test, which fails with it
            self.error = exc

    def one_task(self, message: str) -> None:
        # A create that failed UNAVAILABLE may still have created a task that this client
        # never learns of; it stays Created, invoked by no one, and is no task of the test's.
        task_id = self.retried(lambda f: f.create_task(self.function_id, {"message": message}), "CreateTask")
        self.tasks[task_id] = message
        self.invoke_once(task_id)
        result = self.retried(lambda f: f.get_task_result(task_id, timeout=60), "waiting for the task")
        assert result == message.encode(), (task_id, result, message)
        self.finished_at.append(time.monotonic())

    def invoke_once(self, task_id: str) -> None:
        """Invoke, retrying UNAVAILABLE. An invoke that failed UNAVAILABLE may have taken
        effect before the answer was lost: its retry is then refused (the task is no longer
        waiting to be invoked), and the task's status says that the first one did."""
        before = self.unavailable
        try:
            self.retried(lambda f: f.invoke_task(task_id), "InvokeTask")
        except KettleError:
            if self.unavailable == before:
                raise
            status = self.retried(lambda f: f.get_task(task_id), "GetTask").status
            if status in (TaskStatus.CREATED, TaskStatus.DATA_ASSIGNED, TaskStatus.APPROVED):
                raise

    def check(self) -> None:
        if self.error is not None:
            raise self.error


def finished_since(clients: list[LoadClient], moment: float) -> int:
    return sum(1 for c in clients for t in c.finished_at if t > moment)


def wait_for_progress(clients: list[LoadClient], moment: float, count: int, timeout: float) -> None:
    """Until the clients together finished ``count`` tasks after ``moment``."""
    deadline = time.monotonic() + timeout
    while finished_since(clients, moment) < count:
        for c in clients:
            c.check()
        assert time.monotonic() < deadline, f"fewer than {count} tasks finished in {timeout:.0f} s"
        time.sleep(0.2)


def test_tasks_survive_losing_hosts_and_getting_them_back(deployment: Deployment) -> None:
    network = deployment.network
    client_trust = deployment.homes["client"] / "trust"
    trust = ClientTrust.from_files(client_trust / "as_root_ca.pem", client_trust / "enclave_info.toml",
                                   unsafe_allow_simulation=True)
    frontends = [f"{network[h].address}:{API_PORTS['frontend']}" for h in hosts_of("frontend")]
    logins = [f"{network[h].address}:{API_PORTS['authentication']}" for h in hosts_of("authentication")]
    # The command line on the clients' machine, from its home of trust files and configuration.
    cli = {**service_environment(deployment.homes["client"]), "KETTLE_PASSWORD": ADMIN_PASSWORD}
    for command in (["attest", frontends[-1]], ["user", "login", "admin"]):
        done = subprocess.run([sys.executable, "-m", "kettle", *command], check=False, env=cli,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
    admin_auth = AuthenticationClient(logins[0], trust)
    admin = FrontendClient(frontends[0], trust, "admin", admin_auth.user_login("admin", ADMIN_PASSWORD))
    function_id = admin.register_function("builtin-echo", "echo", "builtin", arguments=["message"])

    stop = threading.Event()
    clients: list[LoadClient] = []
    for n in range(CLIENTS):
        user, password = f"load-user-{n}", f"load-user-{n}-password"
        admin_auth.user_register(user, password, "DataOwner", "load")
        token = AuthenticationClient(logins[n % len(logins)], trust).user_login(user, password)
        # Each user starts on its own frontend replica (so both carry load) and knows the others.
        ordered = frontends[n % len(frontends):] + frontends[:n % len(frontends)]
        clients.append(LoadClient(user, [FrontendClient(a, trust, user, token) for a in ordered], function_id, stop))
    threads = [threading.Thread(target=c.run, name=c.name) for c in clients]
    for thread in threads:
        thread.start()
    try:
        wait_for_progress(clients, time.monotonic(), 6, timeout=60)

        # An execution host drops off the network for longer than a lease: whatever it was
        # running is re-run elsewhere; when it comes back its late reports must not count.
        network.cut("execution-1")
        time.sleep(LEASE_SECS + 2)
        network.restore("execution-1")
        wait_for_progress(clients, time.monotonic(), 3, timeout=60)

        # One replica host each of frontend, authentication, access control and the
        # scheduler dies outright, with calls in flight; the other replicas carry on; the
        # dead ones are started again.
        dead = ["frontend-1", "authentication-1", "access-control-1", "scheduler-1"]
        for host in dead:
            assert network.kill(host), f"nothing ran on {host}"
        wait_for_progress(clients, time.monotonic(), 6, timeout=60)
        deployment.start(dead)

        # A storage replica and a management replica die outright, mid-call.
        dead = ["storage-2", "management-1"]
        for host in dead:
            assert network.kill(host), f"nothing ran on {host}"
        wait_for_progress(clients, time.monotonic(), 6, timeout=60)
        deployment.start(dead)

        # A storage replica and a management replica drop off the network for a while:
        # calls on their stalled connections wait for them, new calls go to the others.
        for host in ("storage-1", "management-2"):
            network.cut(host)
            time.sleep(3)
            network.restore(host)
            wait_for_progress(clients, time.monotonic(), 6, timeout=60)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a load client is stuck"
    for c in clients:
        c.check()

    for c in clients:  # a task is its participants' to read: each client reads its own
        for task_id, message in c.tasks.items():
            task = c.retried(lambda f, task_id=task_id: f.get_task(task_id), "GetTask")
            assert task.status is TaskStatus.FINISHED, (task_id, task.status)
            assert task.outputs_or_raise().return_value == message.encode()
            verify_receipt(task.receipt, trust, task=task)  # signed by the node whose result counted
    created = sum(len(c.tasks) for c in clients)
    assert created >= 20
    # Each task was invoked once, a retried invoke included: the function counts each once.
    assert admin.get_function_usage_stats(function_id).current_usage == created
