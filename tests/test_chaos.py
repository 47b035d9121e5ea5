"""Chaos under ``kettle up``: every service SIGKILLed in turn while tasks keep coming.

The platform runs as an operator runs it (``kettle up``, two execution nodes),
under a steady load of built-in echo tasks and Python tasks that spin a little
and write an encrypted output file. Each service in turn, the attestation
service and both nodes included, is SIGKILLed and must be brought back by the
supervisor while the load goes on (the load retries what an outage refuses).

At the end every task that was invoked has ended Finished with the right
result; a Python task's output file decrypts, under the tag its result names,
to what the function wrote, and the output record carries that same tag (a
result applied twice, or a late run overwriting the file, would break one of
these); no task is stuck in the queue or under a lease; and, after each node's
death, no process of a sandbox uid survives outside a living node.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from conftest import Platform, make_home, stored_tasks

from kettle.errors import KettleError
from kettle.model.records import TaskStatus
from kettle.platform_status import StatusFile, process_alive
from kettle.sandbox.zygote import UID_BASE, UIDS_PER_ZYGOTE
from kettle.sdk import FrontendClient, FunctionOutput
from kettle.sdk.files import FileKey, decrypt_file

READY_LINE = "Kettle is ready"
KILL_ORDER = ("storage", "authentication", "access_control", "management", "scheduler", "frontend",
              "execution", "execution-2", "attestation")
TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
MIN_TASKS = 40

PYTHON_PAYLOAD = b'''
import time


def entrypoint(argv):
    message = argv[argv.index("message") + 1]
    end = time.monotonic() + 0.4  # long enough that a node's death catches some tasks running
    while time.monotonic() < end:
        pass
    with teaclave_open("result", "wb") as f:
        f.write(message)
    return message
'''

T = TypeVar("T")


def _transient(exc: KettleError) -> bool:
    return exc.code in TRANSIENT


@dataclass
class Submitted:
    task_id: str
    message: str
    output: tuple[str, FileKey, Path] | None
    """A Python task's output: (file id, key, file the node writes)."""


@dataclass
class Load:
    """Creates, assigns, approves and invokes tasks in a loop until told to stop.

    Every call is retried while the platform answers that something is
    unavailable; a step that may have happened before its answer was lost is
    taken again only if the task's state says it did not.
    """

    platform: Platform
    files: Path
    echo_id: str
    python_id: str
    invoked: list[Submitted] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    _serial: itertools.count = field(default_factory=itertools.count)  # type: ignore[type-arg]
    _client: FrontendClient | None = None

    def client(self) -> FrontendClient:
        if self._client is None:
            self._client = _admin_client(self.platform)
        return self._client

    def retry(self, call: Callable[[FrontendClient], T]) -> T:
        deadline = time.monotonic() + 120
        while True:
            try:
                return call(self.client())
            except KettleError as exc:
                if not _transient(exc) or time.monotonic() > deadline:
                    raise
                self.refusals.append(f"{exc.code.name}: {exc.message}")
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise
                self.refusals.append(repr(exc))
                self._client = None  # a new login and channel
            time.sleep(0.3)

    def submit_one(self) -> None:
        n = next(self._serial)
        message = f"chaos {n}"
        output = None
        if n % 2:
            key = FileKey.generate("aes-gcm-128")
            path = self.files / f"result-{n}.enc"
            file_id = self.retry(lambda c: c.register_output_file(path.as_uri(), key.schema, key.key, key.iv))
            output = (file_id, key, path)
            task_id = self.retry(lambda c: c.create_task(
                self.python_id, {"message": message}, "mesapy", outputs_ownership={"result": ["admin"]}))
        else:
            task_id = self.retry(lambda c: c.create_task(self.echo_id, {"message": message}))
        while True:
            status = self.retry(lambda c: c.get_task(task_id)).status
            try:
                if status == TaskStatus.CREATED and output is not None:
                    self.retry(lambda c: c.assign_data(task_id, outputs={"result": output[0]}))
                elif status in (TaskStatus.CREATED, TaskStatus.DATA_ASSIGNED, TaskStatus.APPROVED):
                    # One participant: invoking approves on the way (spec §6.8's shortcuts).
                    self.retry(lambda c: c.invoke_task(task_id))
                else:
                    break
            except KettleError as exc:
                # The same step, taken before its answer was lost, moved the task on: look again.
                if exc.code != grpc.StatusCode.UNKNOWN:
                    raise
        self.invoked.append(Submitted(task_id, message, output))

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.submit_one()
                time.sleep(0.1)
        except BaseException as exc:  # noqa: BLE001 - reported by the test's thread
            self.error = exc

    def count(self) -> int:
        """Tasks invoked so far; raises what stopped the load."""
        if self.error is not None:
            raise AssertionError(f"the load stopped: {self.error!r}") from self.error
        return len(self.invoked)


def _admin_client(platform: Platform) -> FrontendClient:
    token = platform.auth_client().user_login("admin", "teaclave")
    return FrontendClient(platform.frontend_address, platform.trust(), "admin", token)


def _until(check: Callable[[], T], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last  # type: ignore[return-value]
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen within {timeout:.0f} s (last: {last!r})")


def _processes() -> dict[int, tuple[int, int]]:
    """Every live process: pid → (parent pid, uid)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if "zombie" not in fields.get("State", ""):
            found[int(entry.name)] = (int(fields["PPid"]), int(fields["Uid"].split()[0]))
    return found


def _task_uids(node_pids: set[int]) -> set[range]:
    """The uid ranges the nodes' sandboxes give their tasks: each zygote (a process below a node)
    hands out ``UIDS_PER_ZYGOTE`` uids derived from its pid."""
    table = _processes()
    below, grew = set(node_pids), True
    while grew:
        new = {pid for pid, (parent, _) in table.items() if parent in below} - below
        below |= new
        grew = bool(new)
    return {range(UID_BASE + (pid % 2_000_000) * UIDS_PER_ZYGOTE,
                  UID_BASE + (pid % 2_000_000 + 1) * UIDS_PER_ZYGOTE) for pid in below - node_pids}


def _survivors(uids: set[range], timeout: float) -> list[int]:
    """Processes still running under one of ``uids`` once ``timeout`` has passed (or none is left)."""
    deadline = time.monotonic() + timeout
    while True:
        left = [pid for pid, (_, uid) in _processes().items() if any(uid in r for r in uids)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


@pytest.mark.timeout(600)
def test_every_service_killed_in_turn_under_load_loses_repeats_and_leaves_nothing(
    tmp_path: Path, _auditor_cache: Path
) -> None:
    files = tmp_path / "files"
    files.mkdir()
    config = make_home(tmp_path / "home", _auditor_cache, extra="\n".join([
        "[supervisor]", "execution_nodes = 2", "restart_backoff_ms = 200", "",
        "[file_agent]", 'allowed_schemes = ["file"]', f'file_roots = ["{files}"]', "",
        "[management]", "max_tasks_in_flight_per_user = 10000", "",
    ]))
    platform = Platform(config)
    up = subprocess.Popen(
        [sys.executable, "-m", "kettle", "up"],
        env={**os.environ, "KETTLE_HOME": str(config.home), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(iter(up.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    load: Load | None = None
    loader: threading.Thread | None = None
    try:
        _until(lambda: any(line.startswith(READY_LINE) for line in output) or up.poll() is not None, 240, "start")
        assert up.poll() is None, "".join(output)
        status = StatusFile(config.home)

        publisher = _admin_client(platform)
        echo_id = publisher.register_function("builtin-echo", arguments=["message"])
        python_id = publisher.register_function(
            "chaos-python", "", "python", payload=PYTHON_PAYLOAD, arguments=["message"],
            outputs=[FunctionOutput("result")])
        publisher.close()

        load = Load(platform, files, echo_id, python_id)
        loader = threading.Thread(target=load.run, daemon=True)
        loader.start()
        _until(lambda: load.count() >= 6, 120, "the first tasks")

        for name in KILL_ORDER:
            before = {s.name: s for s in status.read().services}
            victim = before[name]
            assert victim.state == "running" and process_alive(victim.pid), victim
            invoked = load.count()
            its_tasks = _task_uids({victim.pid}) if victim.service == "execution" else set()
            os.kill(victim.pid, signal.SIGKILL)
            # Its sandboxed functions die with it (each runs in a session of its own, so this is the
            # sandbox's doing: its zygote dies with the node, and each function with its zygote).
            assert _survivors(its_tasks, 10) == [], f"functions of {name} outlived it"
            back = _until(lambda: next((s for s in status.read().services if s.name == name
                                        and s.state == "running" and s.pid != victim.pid), None), 120,
                          f"{name}'s restart")
            assert back.restarts == victim.restarts + 1, back
            # The platform takes work again before the next service dies.
            _until(lambda: load.count() >= invoked + 2, 120, f"new tasks after {name}'s restart")

        _until(lambda: load.count() >= MIN_TASKS, 120, f"{MIN_TASKS} tasks")
        load.stop.set()
        loader.join(timeout=180)
        assert not loader.is_alive(), "the load did not stop"

        client = _admin_client(platform)
        deadline = time.monotonic() + 240
        for submitted in load.invoked:
            task = client.wait_task(submitted.task_id, timeout=max(1.0, deadline - time.monotonic()))
            assert task.status == TaskStatus.FINISHED, (submitted.message, task.task_id, task.result)
            outputs = task.outputs_or_raise()
            assert outputs.return_value == submitted.message.encode(), (submitted, task)
            if submitted.output is not None:
                file_id, key, path = submitted.output
                tag = outputs.tags_map["result"]
                assert client.get_output_file(file_id).cmac == tag, submitted
                decrypt_file(path, path.with_suffix(".plain"), key, cmac=tag)
                assert path.with_suffix(".plain").read_bytes() == submitted.message.encode()
        client.close()

        records, queue_empty, leases = stored_tasks(platform, [s.task_id for s in load.invoked])
        assert all(r.status == TaskStatus.FINISHED for r in records)
        # A run cut short by a node's death is run again; nothing runs endlessly.
        assert all(1 <= r.attempts <= 3 for r in records), [r.attempts for r in records]
        assert queue_empty and leases == []

        final = {s.name: s for s in status.read().services}
        assert all(final[name].restarts == 1 and final[name].state == "running" for name in KILL_ORDER), final
        all_tasks = _task_uids({s.pid for s in final.values() if s.service == "execution"})
    finally:
        if load is not None:
            load.stop.set()
        os.killpg(up.pid, signal.SIGINT)
        try:
            up.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
    assert up.returncode == 0, "".join(output[-40:])
    assert _survivors(all_tasks, 10) == []
