"""``kettle up`` and ``kettle service``: run the platform's processes.

``kettle up`` starts the attestation service and every platform service built
so far as separate processes, in dependency order, waits for each to be attested
and serving (each signals readiness on a pipe), checks the public endpoints the
way a client would, and then supervises: a service that dies is reported with
the end of its log and the platform stops, exit status 1, rather than running on
with a hole. Ctrl-C or SIGTERM stops every service cleanly.
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

log = logging.getLogger(__name__)

PLATFORM_SERVICES = (
    "storage", "access_control", "authentication", "management", "scheduler", "execution", "frontend",
)
"""The services ``kettle up`` starts, in start order (dependencies first)."""

READY_TIMEOUT_SECS = 60.0
STOP_TIMEOUT_SECS = 10.0


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
    process: subprocess.Popen[bytes]
    log_path: Path


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def spawn(name: str, config: Config) -> Child:
    """Start ``kettle service NAME`` and wait until it says it is ready (or dies)."""
    logs = config.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{name}.log"
    read_fd, write_fd = os.pipe()
    env = dict(os.environ, KETTLE_HOME=str(config.home), KETTLE_READY_FD=str(write_fd))
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "kettle", "service", name],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            pass_fds=(write_fd,),
            start_new_session=True,  # Ctrl-C reaches the launcher only; it stops children in order
        )
    os.close(write_fd)
    child = Child(name, process, log_path)
    deadline = time.monotonic() + READY_TIMEOUT_SECS
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                stop_all([child])
                raise KettleError(f"{name} did not become ready in {READY_TIMEOUT_SECS:.0f} s:\n{log_tail(log_path)}")
            readable, _, _ = select.select([read_fd], [], [], min(remaining, 0.5))
            if readable:
                if os.read(read_fd, 64).startswith(b"ready"):
                    return child
                process.wait(timeout=STOP_TIMEOUT_SECS)
            if process.poll() is not None:
                raise KettleError(
                    f"{name} exited with status {process.returncode} before it was ready:\n{log_tail(log_path)}"
                )
    finally:
        os.close(read_fd)


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
    children: list[Child] = []
    try:
        for name in ("attestation", *services):
            children.append(spawn(name, config))
    except BaseException:
        stop_all(children)
        raise
    return children


def supervise(children: list[Child], report: Callable[[str], None]) -> int:
    """Block until a signal or a child's death; stop everything; return the exit status."""
    stopping: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopping.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stopping:
            for child in children:
                code = child.process.poll()
                if code is not None:
                    report(
                        f"service {child.name} exited unexpectedly with status {code}; stopping the platform.\n"
                        f"Last lines of {child.log_path}:\n{log_tail(child.log_path)}"
                    )
                    stop_all(children)
                    return 1
            time.sleep(0.2)
        report("stopping Kettle ...")
        stop_all(children)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
