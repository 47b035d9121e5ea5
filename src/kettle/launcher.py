"""``kettle up`` and ``kettle service``: run the platform's processes.

``kettle up`` starts the attestation service and every platform service as
separate processes (``[supervisor] execution_nodes`` execution nodes), in
dependency order, waits for each to be attested and serving (each signals
readiness on a pipe), checks the public endpoints the way a client would, and
then supervises (:class:`Supervisor`): a service that dies is reported with how
it ended and the end of its log, whatever is left of its process group is
killed, and it is restarted after a backoff; a crash loop (too many crashes of
one service in a window, :mod:`kettle.model.restarts`) stops the platform with
exit status 1. Ctrl-C or SIGTERM stops every service cleanly. The supervisor
keeps ``$KETTLE_HOME/supervisor.json`` (:mod:`kettle.platform_status`) for
``kettle status``.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .config import SERVICES, Config
from .errors import KettleError
from .model.restarts import RestartPolicy, RestartSettings
from .platform_status import ServiceState, StatusFile

log = logging.getLogger(__name__)

PLATFORM_SERVICES = (
    "storage", "access_control", "authentication", "management", "scheduler", "execution", "frontend",
)
"""The services ``kettle up`` starts, in start order (dependencies first)."""

READY_TIMEOUT_SECS = 60.0
STOP_TIMEOUT_SECS = 10.0
POLL_SECS = 0.2


def configure_logging(service: str, config: Config | None) -> None:
    simulation = config is not None and config.attestation.backend == "simulation"
    label = f"{service}{' [SIMULATION]' if simulation else ''}"
    logging.basicConfig(
        level=os.environ.get("KETTLE_LOG", "INFO").upper(),
        format=f"%(asctime)s {label} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_service(name: str, config: Config) -> None:
    """Run one service in this process until it is stopped."""
    configure_logging(name, config)
    if name == "attestation":
        from .attestation_service.server import serve
        from .services.runtime import signal_ready

        ready = threading.Event()
        threading.Thread(target=lambda: (ready.wait(), signal_ready()), daemon=True).start()
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            serve(config, ready)
        except KeyboardInterrupt:
            pass
        return
    if name not in SERVICES or importlib.util.find_spec(f"kettle.services.{name}.service") is None:
        raise KettleError(f"unknown or not yet available service {name!r}")
    module = importlib.import_module(f"kettle.services.{name}.service")
    asyncio.run(module.main(config))


@dataclass
class Child:
    name: str
    """Unique among the platform's processes: the service, or ``execution-2`` for a second node."""
    process: subprocess.Popen[bytes]
    log_path: Path
    service: str = ""
    """The service it runs (``kettle service SERVICE``); the name when empty."""

    def __post_init__(self) -> None:
        self.service = self.service or self.name


class StartFailed(KettleError):
    """A service exited, or did not become ready, before it was ready."""

    def __init__(self, message: str, why: str) -> None:
        super().__init__(message)
        self.why = why


class StartAborted(KettleError):
    """The launcher was asked to stop while a service was starting."""


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def describe_exit(code: int) -> str:
    """``exited with status 1`` or ``was killed by SIGKILL``."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def instances(config: Config, services: tuple[str, ...]) -> list[tuple[str, str]]:
    """(name, service) of every process to run: ``execution``, ``execution-2``, … for
    ``[supervisor] execution_nodes`` nodes; one of every other service."""
    result: list[tuple[str, str]] = []
    for service in services:
        count = config.supervisor.execution_nodes if service == "execution" else 1
        result.extend((service if n == 1 else f"{service}-{n}", service) for n in range(1, count + 1))
    return result


@dataclass
class Starting:
    """A service process launched and not yet known to be ready."""

    child: Child
    ready_fd: int
    deadline: float


def launch(name: str, config: Config, service: str | None = None) -> Starting:
    """Start ``kettle service SERVICE`` as ``name``; :func:`await_ready` then waits for it."""
    service = service or name
    logs = config.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{name}.log"
    read_fd, write_fd = os.pipe()
    env = dict(os.environ, KETTLE_HOME=str(config.home), KETTLE_READY_FD=str(write_fd))
    try:
        with log_path.open("ab") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "kettle", "service", service],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                pass_fds=(write_fd,),
                start_new_session=True,  # Ctrl-C reaches the launcher only; it stops children in order
            )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    return Starting(Child(name, process, log_path, service), read_fd, time.monotonic() + READY_TIMEOUT_SECS)


def await_ready(starting: Starting, abort: Callable[[], bool] | None = None) -> Child:
    """Wait until a launched service says it is ready; stop it and raise :class:`StartFailed`
    if it dies or takes too long first.

    ``abort`` is asked while waiting; when it says so the half-started service is
    stopped and :class:`StartAborted` raised.
    """
    child, read_fd = starting.child, starting.ready_fd
    name, process = child.name, child.process
    try:
        while True:
            remaining = starting.deadline - time.monotonic()
            if remaining <= 0:
                stop_all([child])
                why = f"did not become ready in {READY_TIMEOUT_SECS:.0f} s"
                raise StartFailed(f"{name} {why}:\n{log_tail(child.log_path)}", why)
            if abort is not None and abort():
                stop_all([child])
                raise StartAborted(f"{name} was stopped while starting")
            readable, _, _ = select.select([read_fd], [], [], min(remaining, 0.5))
            if readable:
                if os.read(read_fd, 64).startswith(b"ready"):
                    return child
                process.wait(timeout=STOP_TIMEOUT_SECS)
            if process.poll() is not None:
                kill_leftovers(process.pid)
                why = f"{describe_exit(process.returncode)} before it was ready"
                raise StartFailed(f"{name} {why}:\n{log_tail(child.log_path)}", why)
    finally:
        os.close(read_fd)


def spawn(
    name: str, config: Config, service: str | None = None, abort: Callable[[], bool] | None = None
) -> Child:
    """Start ``kettle service SERVICE`` as ``name`` and wait until it says it is ready (or dies)."""
    return await_ready(launch(name, config, service), abort)


def kill_leftovers(pid: int) -> None:
    """Kill what is left of a dead service's process group (its session: workers, zygotes), so
    that its successor does not share the machine with orphans of the one that crashed."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # nothing left, or the id is no longer that group's


def stop_all(children: list[Child]) -> None:
    """Stop services one at a time, last started first: each can still reach the services
    it depends on while it shuts down (the frontend flushes its audit log to management)."""
    for child in reversed(children):
        if child.process.poll() is not None:
            continue
        child.process.send_signal(signal.SIGTERM)
        try:
            child.process.wait(timeout=STOP_TIMEOUT_SECS)
        except subprocess.TimeoutExpired:
            log.error("%s did not stop in time; killing it", child.name)
            child.process.kill()
            child.process.wait()


def start_platform(config: Config, services: tuple[str, ...] = PLATFORM_SERVICES) -> list[Child]:
    """Start the attestation service, then every other service at once.

    Only the attestation service must be up before the others start (each obtains its
    certificate from it at start); a service that needs a peer at start waits for it
    (see ``when_storage_answers``), so the rest start side by side. ``children`` keeps
    the dependency order, which :func:`stop_all` reverses.
    """
    children: list[Child] = []
    starting: list[Starting] = []
    try:
        first, *rest = instances(config, ("attestation", *services))
        name, service = first
        children.append(spawn(name, config, service))
        for name, service in rest:
            starting.append(launch(name, config, service))
        while starting:
            pending = starting.pop(0)  # await_ready closes its pipe and stops it if it fails
            children.append(await_ready(pending))
    except BaseException:
        for pending in starting:
            os.close(pending.ready_fd)
        stop_all(children + [pending.child for pending in starting])
        raise
    return children


class Supervisor:
    """Keeps the platform's processes running until a signal or a crash loop.

    The decisions are :class:`RestartPolicy`'s; this class only watches processes,
    reports, waits out backoffs (without blocking: other services are watched
    meanwhile), restarts and keeps the status file.
    """

    def __init__(
        self,
        config: Config,
        children: list[Child],
        report: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._children = children
        self._report = report
        self._clock = clock
        settings = RestartSettings.from_config(config.supervisor)
        self._policies = {child.name: RestartPolicy(settings) for child in children}
        for policy in self._policies.values():
            policy.started(clock())
        self._due: dict[str, float] = {}
        """Crashed services waiting out their backoff: name → when to restart."""
        self._last_exit: dict[str, str] = {}
        self._stopping: list[int] = []
        self._status = StatusFile(config.home)

    @property
    def children(self) -> list[Child]:
        return self._children

    def stop(self) -> None:
        """Ask :meth:`run` to stop every service and return 0 (safe from another thread)."""
        self._stopping.append(0)

    def run(self) -> int:
        """Supervise until SIGINT/SIGTERM or :meth:`stop` (exit status 0) or a crash loop (1);
        stop everything. Signals are handled only when run in the main thread (``kettle up``);
        a test may run it in another thread and call :meth:`stop`."""

        def on_signal(signum: int, _frame: object) -> None:
            self._stopping.append(signum)

        previous = (
            {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
            if threading.current_thread() is threading.main_thread()
            else {}
        )
        try:
            self._write_status("running")
            while not self._stopping:
                gave_up = self._check()
                if gave_up is not None:
                    stop_all(self._children)
                    self._write_status("gave up", gave_up)
                    return 1
                time.sleep(POLL_SECS)
            self._report("stopping Kettle ...")
            stop_all(self._children)
            self._write_status("stopped", "stopped on request")
            return 0
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _check(self) -> str | None:
        """One round: note deaths, restart what is due. The give-up message, if it came to that."""
        for child in list(self._children):
            if child.name in self._due:
                continue
            code = child.process.poll()
            if code is not None:
                kill_leftovers(child.process.pid)
                gave_up = self._crashed(child, f"(pid {child.process.pid}) {describe_exit(code)}")
                if gave_up is not None:
                    return gave_up
        for name, due in list(self._due.items()):
            if due <= self._clock() and not self._stopping:
                gave_up = self._restart(name)
                if gave_up is not None:
                    return gave_up
        return None

    def _crashed(self, child: Child, why: str) -> str | None:
        decision = self._policies[child.name].crashed(self._clock())
        self._last_exit[child.name] = why
        tail = f"Last lines of {child.log_path}:\n{log_tail(child.log_path)}"
        if decision.give_up:
            message = f"service {child.name} {why}; {decision.reason}: giving up and stopping the platform."
            self._report(f"{message}\n{tail}")
            return message
        self._report(
            f"service {child.name} {why}; restarting it in {decision.delay:.1f} s ({decision.reason}).\n{tail}"
        )
        self._due[child.name] = self._clock() + decision.delay
        self._write_status("running")
        return None

    def _restart(self, name: str) -> str | None:
        del self._due[name]
        index = next(i for i, c in enumerate(self._children) if c.name == name)
        old = self._children[index]
        try:
            new = spawn(name, self._config, old.service, abort=lambda: bool(self._stopping))
        except StartAborted:
            return None
        except StartFailed as failed:
            return self._crashed(old, f"failed to start: {failed.why}")
        self._children[index] = new
        self._policies[name].started(self._clock())
        self._report(f"service {name} restarted (pid {new.process.pid})")
        self._write_status("running")
        return None

    def _write_status(self, state: str, message: str = "") -> None:
        services = [
            ServiceState(
                name=child.name,
                service=child.service,
                pid=child.process.pid,
                state="restarting" if child.name in self._due else ("stopped" if state != "running" else "running"),
                restarts=self._policies[child.name].restarts,
                last_exit=self._last_exit.get(child.name, ""),
            )
            for child in self._children
        ]
        try:
            self._status.write(os.getpid(), state, message, services)
        except OSError as exc:  # the platform runs on without a status file
            log.error("cannot write %s: %s", self._status.path, exc)
