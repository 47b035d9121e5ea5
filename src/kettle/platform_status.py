"""What ``kettle status`` shows: the supervisor's status file, and each service's health checked live.

Two sources, each for what only it can know:

- The supervisor writes ``$KETTLE_HOME/supervisor.json`` (atomically, on every
  change): which processes it runs, their pids, restarts and last exits, and
  its own pid and state. Nothing else knows restarts or which pid is which.
- Health is *not* taken from the file, which can only say what the supervisor
  last saw (and nothing, once the supervisor itself is gone). ``kettle status``
  checks it when asked: the process must be alive; an API endpoint must
  answer the standard gRPC health check over attested TLS, exactly as a client
  would reach it; an internal endpoint (mutually attested, so not callable
  without a service identity) and the attestation service must accept a
  connection. An execution node serves nothing, so a live process is its health.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .config import Config
from .errors import ConfigError, KettleError

STATUS_FILE = "supervisor.json"
PROBE_TIMEOUT_SECS = 3.0
API_SERVICES = ("authentication", "frontend")


@dataclass(frozen=True)
class ServiceState:
    name: str
    service: str
    pid: int
    state: str
    """``running``, ``restarting`` (waiting out its backoff) or ``stopped``."""
    restarts: int
    last_exit: str
    """How its last run ended (``(pid 12) was killed by SIGKILL``), empty if it never crashed."""


@dataclass(frozen=True)
class PlatformState:
    launcher_pid: int
    state: str
    """``running``, ``stopped`` or ``gave up``."""
    message: str
    updated: float
    services: tuple[ServiceState, ...]


class StatusFile:
    def __init__(self, home: Path) -> None:
        self.path = home / STATUS_FILE

    def write(self, launcher_pid: int, state: str, message: str, services: list[ServiceState]) -> None:
        data = {
            "launcher_pid": launcher_pid,
            "state": state,
            "message": message,
            "updated": time.time(),
            "services": [asdict(s) for s in services],
        }
        # Written whole and renamed into place: a reader never sees half a file.
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        temporary.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(temporary, self.path)

    def read(self) -> PlatformState:
        try:
            data: Any = json.loads(self.path.read_text())
            return PlatformState(
                launcher_pid=int(data["launcher_pid"]),
                state=str(data["state"]),
                message=str(data["message"]),
                updated=float(data["updated"]),
                services=tuple(ServiceState(**s) for s in data["services"]),
            )
        except FileNotFoundError:
            raise ConfigError(f"Kettle has not been started with `kettle up` in {self.path.parent}") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{self.path} is unreadable: {exc}") from None


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def accepts_connections(target: str, timeout: float = PROBE_TIMEOUT_SECS) -> bool:
    """Whether something accepts a TCP connection at ``host:port`` within ``timeout``."""
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def _api_health(config: Config, service: str) -> str:
    from .sdk.attested import ClientTrust, verify_endpoint

    address = config.endpoint(service, api=True).target
    try:
        trust = ClientTrust.from_config(config)
        endpoint = verify_endpoint(address, service, trust)
        with endpoint.channel(trust) as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=PROBE_TIMEOUT_SECS
            )
    except KettleError as exc:
        return f"down: {exc.message}"
    except grpc.RpcError as exc:
        return f"down: health check {exc.code().name}"
    return "serving" if answer.status == health_pb2.HealthCheckResponse.SERVING else "not serving"


def health(config: Config, state: ServiceState) -> str:
    """``serving`` (API health check), ``listening`` (accepts connections), ``running`` (alive, no
    endpoint), ``restarting``, or ``down: why``."""
    if state.state == "restarting":
        return "restarting"
    if not process_alive(state.pid):
        return "down: process is gone"
    if state.service in API_SERVICES:
        return _api_health(config, state.service)
    if state.service == "execution":
        return "running"
    if state.service == "attestation":
        target = config.attestation.service_url.split("://", 1)[-1].rstrip("/")
    else:
        target = config.endpoint(state.service).target
    return "listening" if accepts_connections(target) else f"down: nothing accepts connections at {target}"


def healthy(text: str) -> bool:
    return text in ("serving", "listening", "running")
