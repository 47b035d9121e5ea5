"""Shared fixtures: real Kettle platforms in temporary homes, on free ports.

Every platform here is the real thing: the attestation service and each
platform service run as separate ``kettle service`` processes, talking gRPC over
attested TLS, with SQLite storage on disk. Nothing in the trust path is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from kettle.attestation.enclave_info import SIGNATURE_SUFFIX
from kettle.config import Config, load_config
from kettle.errors import KettleError
from kettle.launcher import Child, spawn, start_platform, stop_all
from kettle.model.ids import Kind, parse_external_id
from kettle.model.records import (
    STAGED_TASK_QUEUE,
    FileRecord,
    StagedTask,
    TaskRecord,
    task_key,
)
from kettle.provisioning import init_dev_home
from kettle.services.platform_store import PlatformStore
from kettle.services.runtime import ServiceRuntime

REPO = Path(__file__).resolve().parents[1]


class Clock:
    """A wall clock the test moves by hand (e.g. the storage backend's, for queue leases)."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


T = TypeVar("T")

@pytest.fixture
def clock() -> Clock:
    return Clock()


def free_ports(count: int) -> list[int]:
    """Ports nothing listens on now, for services a test starts a little later.

    They come from below the kernel's ephemeral range: a port from inside it may be
    handed to some client's outgoing connection (another test's, on the other worker)
    between this choice and the service binding it, and the service then fails to start.
    """
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports: list[int] = []
    while len(ports) < count:
        port = random.randrange(20_000, ephemeral_low)  # above the defaults (7776-17790) of a developer's platform
        if port in ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
    return ports


def platform_config_text(validity_secs: int = 3600, extra: str = "") -> str:
    """A dev configuration on free loopback ports (never the defaults a developer's `make up` uses)."""
    api_auth, api_frontend, auth, mgmt, storage, ac, sched, execution, as_port = free_ports(9)
    internal = {
        "authentication": auth, "management": mgmt, "storage": storage,
        "access_control": ac, "scheduler": sched, "execution": execution,
    }
    lines = [
        "[platform]", "dev_mode = true", "",
        "[api_endpoints]",
        f'authentication = {{ listen_address = "127.0.0.1:{api_auth}" }}',
        f'frontend = {{ listen_address = "127.0.0.1:{api_frontend}" }}', "",
        "[internal_endpoints]",
        *(f'{name} = {{ listen_address = "127.0.0.1:{port}", advertised_address = "https://localhost:{port}" }}'
          for name, port in internal.items()),
        "",
        "[attestation]",
        'backend = "simulation"',
        f'service_url = "https://localhost:{as_port}"',
        f'listen_address = "127.0.0.1:{as_port}"',
        f"validity_secs = {validity_secs}",
        "unsafe_allow_simulation = true",
        "",
        extra,
    ]
    return "\n".join(lines) + "\n"


def fast_private_key(path: Path) -> rsa.RSAPrivateKey:
    """Load a trusted dev auditor key without the (slow, RSA-4096) consistency check: only
    for the tests' own keys, which this session generated."""
    key = serialization.load_pem_private_key(path.read_bytes(), password=None, unsafe_skip_rsa_key_validation=True)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


@pytest.fixture(scope="session")
def _auditor_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Dev auditor keys generated once per session (RSA-4096), copied into each home; beside
    them, a home set up once whose signed enclave info :func:`make_home` copies too."""
    home = tmp_path_factory.mktemp("auditor-cache")
    init_dev_home(home)
    return home / "auditors"


def make_home(path: Path, auditor_cache: Path, validity_secs: int = 3600, extra: str = "") -> Config:
    """A configured dev home. Its auditors, build configuration and signed enclave info come
    from the session's template home (the same code measures the same in every home), so
    setting it up signs nothing; its attestation service hierarchy is its own."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "kettle.toml").write_text(platform_config_text(validity_secs, extra))
    shutil.copytree(auditor_cache, path / "auditors", dirs_exist_ok=True)
    template = auditor_cache.parent
    if (template / "build").is_dir():
        shutil.copytree(template / "build", path / "build", dirs_exist_ok=True)
        (path / "trust").mkdir(exist_ok=True)
        for signed in (template / "trust").glob(f"*{SIGNATURE_SUFFIX}"):
            shutil.copy2(signed, path / "trust" / signed.name)
        shutil.copy2(template / "trust" / "enclave_info.toml", path / "trust" / "enclave_info.toml")
    return init_dev_home(path)


@dataclass
class Platform:
    config: Config
    children: list[Child] = field(default_factory=list)

    @property
    def home(self) -> Path:
        return self.config.home

    @property
    def auth_address(self) -> str:
        return self.config.endpoint("authentication", api=True).target

    @property
    def frontend_address(self) -> str:
        return self.config.endpoint("frontend", api=True).target

    def child(self, name: str) -> Child:
        return next(c for c in self.children if c.name == name)

    def start(self, services: tuple[str, ...] = ("storage", "authentication")) -> None:
        self.children = start_platform(self.config, services)

    def start_service(self, name: str) -> None:
        """Start ``name`` again; its old process, when still running, is stopped first (it
        would otherwise hold the address and the database, and outlive the test). The new
        process takes the old one's place in :attr:`children`, so :meth:`stop` still stops
        services before what they depend on (a scheduler left without its storage would
        wait out its stop timeout)."""
        old = [i for i, c in enumerate(self.children) if c.name == name]
        stop_all([self.children[i] for i in old])
        child = spawn(name, self.config)
        if old:
            self.children = [c for i, c in enumerate(self.children) if i not in old[1:]]
            self.children[old[0]] = child
        else:
            self.children.append(child)

    def stop(self) -> None:
        stop_all(self.children)
        self.children = []

    def trust(self):  # type: ignore[no-untyped-def]
        from kettle.sdk import ClientTrust

        return ClientTrust.from_config(self.config)

    def auth_client(self):  # type: ignore[no-untyped-def]
        from kettle.sdk import AuthenticationClient

        return AuthenticationClient(self.auth_address, self.trust())

    def admin(self):  # type: ignore[no-untyped-def]
        client = self.auth_client()
        client.user_login("admin", "teaclave")
        return client

    def kettle(self, *args: str, input: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run the ``kettle`` CLI against this platform's home."""
        return subprocess.run(
            [sys.executable, "-m", "kettle", *args],
            env={**os.environ, "KETTLE_HOME": str(self.home), **(env or {})},
            input=input, capture_output=True, text=True, timeout=120,
        )


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory, _auditor_cache: Path) -> Iterator[Platform]:
    """One running platform shared by the tests that only talk to it."""
    p = Platform(make_home(tmp_path_factory.mktemp("platform"), _auditor_cache))
    p.start()
    yield p
    p.stop()


ALL_SERVICES = ("storage", "access_control", "authentication", "management", "scheduler", "execution", "frontend")


@pytest.fixture(scope="session")
def full_platform(tmp_path_factory: pytest.TempPathFactory, _auditor_cache: Path) -> Iterator[Platform]:
    """One running platform with every service, shared by the tests that only use it."""
    p = Platform(make_home(tmp_path_factory.mktemp("full-platform"), _auditor_cache))
    p.start(ALL_SERVICES)
    yield p
    p.stop()


@pytest.fixture
def fresh_platform(tmp_path: Path, _auditor_cache: Path) -> Iterator[Platform]:
    """A platform of the test's own (not started), for tests that restart or break things."""
    p = Platform(make_home(tmp_path / "home", _auditor_cache))
    yield p
    p.stop()


@pytest.fixture
def home_factory(tmp_path: Path, _auditor_cache: Path):  # type: ignore[no-untyped-def]
    """Make configured homes with custom settings: ``home_factory(validity_secs=8, extra=...)``."""
    counter = iter(range(100))

    def make(validity_secs: int = 3600, extra: str = "") -> Platform:
        return Platform(make_home(tmp_path / f"home{next(counter)}", _auditor_cache, validity_secs, extra))

    made: list[Platform] = []
    yield lambda **kw: made.append(make(**kw)) or made[-1]
    for p in made:
        p.stop()


@pytest.fixture(scope="module")
def node():  # type: ignore[no-untyped-def]
    """A node's sandbox (a real zygote) for one test module: ``sandbox_node.Node``."""
    from sandbox_node import Node

    started = Node()
    yield started
    started.close()


def reload(config: Config) -> Config:
    return load_config(config.home)


def with_platform_store(config: Config, service: str, work: Callable[[PlatformStore], Awaitable[T]]) -> T:
    """Run ``work`` against the storage service with ``service``'s attested identity, as that service would."""

    async def run() -> T:
        runtime = ServiceRuntime(service, config)
        await runtime.attest()
        try:
            return await work(PlatformStore(runtime.peers))
        finally:
            await runtime.identities.stop()
            await runtime.peers.close()

    return asyncio.run(run())


def fails_with(action: Callable[[], Any], code: grpc.StatusCode, *phrases: str) -> str:
    """``action`` raises a KettleError of ``code`` whose message holds every phrase; its message."""
    with pytest.raises(KettleError) as info:
        action()
    assert info.value.code == code, info.value.message
    for phrase in phrases:
        assert phrase in info.value.message, info.value.message
    return info.value.message


def stored_tasks(platform: Platform, task_ids: list[str]) -> tuple[list[TaskRecord], bool, list[bytes]]:
    """The task records, whether the staged-task queue is empty, and leftover lease keys,
    read straight from storage as the scheduler would (with the scheduler's identity)."""

    async def read(store: PlatformStore) -> tuple[list[TaskRecord], bool, list[bytes]]:
        records = []
        for task_id in task_ids:
            bare = parse_external_id(task_id, Kind.TASK)
            assert bare is not None
            record = await store.get_task(task_key(bare))
            assert record is not None
            records.append(record)
        queued = await store.dequeue(STAGED_TASK_QUEUE, 1)
        leases = await store.keys_with_prefix(b"scheduler-lease-")
        return records, queued is None, leases

    return with_platform_store(platform.config, "scheduler", read)


def staged(
    name: str = "builtin-echo",
    arguments: Any = None,
    executor_type: str = "builtin",
    executor: str = "builtin",
    **files: dict[str, FileRecord],
) -> StagedTask:
    """A staged task as the scheduler hands it to a node (builtin-echo unless said otherwise)."""
    args = {"message": "Hello, Teaclave Tests!"} if arguments is None else arguments
    return StagedTask(
        task_id=str(uuid.uuid4()), function_id=str(uuid.uuid4()), user_id="alice",
        executor=executor, executor_type=executor_type, function_name=name,
        function_arguments=args if isinstance(args, str) else json.dumps(args, sort_keys=True, separators=(",", ":")),
        function_payload=b"ignored by built-ins",
        input_data=files.get("inputs", {}), output_data=files.get("outputs", {}),
    )


POSTGRESQL_DSN = os.environ.get("KETTLE_TEST_POSTGRESQL_DSN", "postgresql://postgres@127.0.0.1:5432/test")
"""The test database (.ci/run starts PostgreSQL when it is not running)."""


@contextlib.contextmanager
def postgresql_schema() -> Iterator[str]:
    """A DSN whose tables live in a fresh schema of the test database, dropped afterwards."""
    import psycopg

    schema = f"kettle_test_{uuid.uuid4().hex}"
    try:
        admin = psycopg.connect(POSTGRESQL_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {POSTGRESQL_DSN} (.ci/run starts it): {exc}")
    with admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            yield psycopg.conninfo.make_conninfo(POSTGRESQL_DSN, options=f"-csearch_path={schema}")
        finally:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


@contextlib.contextmanager
def patched_environment(**values: str) -> Iterator[None]:
    """Set environment variables (inherited by the processes started meanwhile), then restore them."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    """Headless Debian chromium driven by Playwright, for the console's tests (one per test module).

    Not one per session: Playwright's sync API keeps an event loop running in the thread while it
    is open, and every later test of the worker that calls ``asyncio.run`` would fail."""
    from console_harness import chromium_path
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_path(), headless=True)
        yield launched
        launched.close()
