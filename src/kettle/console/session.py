"""The console's link to the platform: whether it is the audited code, and a client for the user.

A browser cannot check TEE evidence, so this process does it, with the same trust
files and policy as the ``kettle`` commands of the same home: every API endpoint
is examined as ``kettle attest HOST:PORT`` would, and the console shows nothing
from the platform unless every endpoint verified (:attr:`PlatformStatus.ok`).
The verdict is kept for :data:`STATUS_TTL_SECS` and examined again after that,
so a platform that stops verifying is refused within a minute; the SDK client
verifies its endpoint again on its own whenever it connects.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from ..attestation.enclave_info import auditor_keys_beside, count_valid_signatures, signatures_beside
from ..attestation.verifier import AttestedPeer, Check
from ..cli import api_target
from ..config import Config
from ..credentials import credentials_path, save_credentials, saved_credentials
from ..errors import AuthenticationError, KettleError
from ..sdk.attested import ClientTrust, examine_endpoint
from ..sdk.authentication import AuthenticationClient
from ..sdk.frontend import FrontendClient

STATUS_TTL_SECS = 60.0
API_SERVICES = ("authentication", "frontend")


@dataclass(frozen=True)
class EndpointStatus:
    service: str
    address: str
    checks: tuple[Check, ...]
    peer: AttestedPeer | None
    problem: str
    """Why it could not be examined at all (unreachable, no trust files), else empty."""

    @property
    def ok(self) -> bool:
        return not self.problem and bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def reason(self) -> str:
        if self.problem:
            return self.problem
        failed = next((c for c in self.checks if not c.ok), None)
        return "" if failed is None else f"{failed.name}: {failed.detail}"


@dataclass(frozen=True)
class PlatformStatus:
    endpoints: tuple[EndpointStatus, ...]
    auditors_known: tuple[str, ...]
    auditors_signed: tuple[str, ...]
    """The auditors whose signature on enclave info verifies with their key beside it."""
    checked_at: datetime
    trust_problem: str
    """Why the trust files themselves are unusable (enclave info not signed enough, no AS root)."""

    @property
    def ok(self) -> bool:
        return not self.trust_problem and bool(self.endpoints) and all(e.ok for e in self.endpoints)

    @property
    def simulation(self) -> bool:
        return any(e.peer is not None and e.peer.simulation for e in self.endpoints)

    @property
    def reason(self) -> str:
        if self.trust_problem:
            return self.trust_problem
        failed = next((e for e in self.endpoints if not e.ok), None)
        return "" if failed is None else f"{failed.service} at {failed.address}: {failed.reason}"


def examine_platform(config: Config) -> PlatformStatus:
    """Every API endpoint of the home's configuration, examined now."""
    known: tuple[str, ...] = ()
    signed: tuple[str, ...] = ()
    try:
        auditors = auditor_keys_beside(config.enclave_info_path)
        known = tuple(sorted(auditors))
        signed = tuple(sorted(count_valid_signatures(
            config.enclave_info_path.read_bytes(), signatures_beside(config.enclave_info_path), auditors)))
        trust = ClientTrust.from_config(config)
    except (KettleError, OSError, ValueError) as exc:
        return PlatformStatus((), known, signed, datetime.now(UTC), _message(exc))
    endpoints = []
    for service in API_SERVICES:
        address = api_target(config, service)
        try:
            verdict, _ = examine_endpoint(address, service, trust)
        except (KettleError, OSError) as exc:
            endpoints.append(EndpointStatus(service, address, (), None, _message(exc)))
            continue
        endpoints.append(EndpointStatus(service, address, tuple(verdict.checks), verdict.peer, ""))
    return PlatformStatus(tuple(endpoints), known, signed, datetime.now(UTC), "")


def _message(exc: BaseException) -> str:
    return exc.message if isinstance(exc, KettleError) else str(exc) or type(exc).__name__


class PlatformSession:
    """The attestation verdict and the logged-in user's client, shared by every request of one console."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._status: PlatformStatus | None = None
        self._status_time = 0.0
        self._client: FrontendClient | None = None
        self._client_login: tuple[str, str] | None = None

    def status(self, *, fresh: bool = False) -> PlatformStatus:
        with self._lock:
            stale = self._status is None or time.monotonic() - self._status_time > STATUS_TTL_SECS
            if fresh or stale:
                self._status = examine_platform(self.config)
                self._status_time = time.monotonic()
                if not self._status.ok:
                    self._drop_client()
            assert self._status is not None
            return self._status

    def user_id(self) -> str | None:
        try:
            return saved_credentials(self.config)[0]
        except AuthenticationError:
            return None

    def client(self) -> FrontendClient:
        """The frontend client of the saved login (AuthenticationError when there is none)."""
        with self._lock:
            user_id, token = saved_credentials(self.config)
            if self._client_login != (user_id, token):  # `kettle user login` in another terminal
                self._drop_client()
            if self._client is None:
                self._client = FrontendClient(api_target(self.config, "frontend"), ClientTrust.from_config(self.config),
                                              user_id=user_id, token=token)
                self._client_login = (user_id, token)
            return self._client

    def login(self, user_id: str, password: str) -> None:
        """Log in and save the token where ``kettle user login`` keeps it."""
        client = AuthenticationClient(api_target(self.config, "authentication"), ClientTrust.from_config(self.config))
        try:
            token = client.user_login(user_id, password)
        finally:
            client.close()
        with self._lock:
            save_credentials(self.config, user_id, token)
            self._drop_client()

    def logout(self) -> None:
        with self._lock:
            credentials_path(self.config).unlink(missing_ok=True)
            self._drop_client()

    def close(self) -> None:
        with self._lock:
            self._drop_client()

    def _drop_client(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = None
        self._client_login = None
