"""Sealing keys for TEEs without one (TDX): released by the attestation service to attested callers only.

A TDX guest has no hardware sealing key, so the attestation service derives one
for it: ``HKDF-SHA256(release root, info = domain || service || measurement || purpose)``.
The caller proves who it is with the client certificate this service issued it
(mutual TLS): the certificate is verified as every internal peer is
(:class:`~kettle.attestation.verifier.Verifier`: the pinned AS root, the signed report,
a fresh report, the measurement in enclave info *as the files say now*), and the
key is released only for the service that measurement belongs to. A caller whose
code changed gets another key; a caller whose measurement was withdrawn from
enclave info gets none.

The release root never leaves this process in the clear: on disk it is sealed
(AES-256-GCM) with the attestation service's own sealing key from its TEE backend
(in simulation, the file-based simulation key).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..attestation.build import BuildConfig
from ..attestation.enclave_info import EnclaveInfo
from ..attestation.measurement import measure_service
from ..attestation.providers import TDX
from ..attestation.sealing import RELEASE_PATH
from ..attestation.verifier import Verifier
from ..config import Config
from ..errors import (
    AttestationError,
    ConfigError,
    InvalidArgument,
    KettleError,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from ..services.runtime import evidence_provider, resolve_backend
from .authority import authority_dir

log = logging.getLogger(__name__)

__all__ = ["RELEASE_PATH", "KeyRelease", "build_key_release", "released_key"]

AS_SERVICE = "attestation"
RELEASE_DOMAIN = b"kettle-key-release-v1\0"
ROOT_FILE = "key_release_root.sealed"
ROOT_FORMAT = b"KRR1"
ROOT_AAD = b"kettle attestation service key-release root v1"
AS_SEALING_PURPOSE = "key-release-root"
NONCE_BYTES = 12
MAX_NAME_BYTES = 64

RATE_LIMIT_REQUESTS = 20
RATE_LIMIT_WINDOW_SECS = 60.0
"""A service asks once per purpose at start, so 20 a minute from one address is far above any
legitimate need, and low enough that nobody can use the endpoint to grind on anything."""


def check_name(what: str, value: object) -> str:
    """A service or purpose name as the release takes it: a short string without NUL (NUL separates fields)."""
    if not isinstance(value, str):
        raise InvalidArgument("service and purpose are required strings")
    if len(value.encode()) > MAX_NAME_BYTES:
        raise InvalidArgument(f"service and purpose are at most {MAX_NAME_BYTES} bytes")
    if not value or "\0" in value:
        raise InvalidArgument(f"{what} must be a non-empty name without NUL characters")
    return value


def released_key(root: bytes, service: str, measurement: bytes, purpose: str) -> bytes:
    """The sealing key of ``service`` at ``measurement`` (a fixed-size digest) for ``purpose``."""
    check_name("service", service)
    check_name("purpose", purpose)
    info = RELEASE_DOMAIN + service.encode() + b"\0" + measurement + purpose.encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(root)


def load_or_create_root(path: Path, sealing_key: bytes) -> bytes:
    """The release root sealed in ``path``, made (and sealed) on first use."""
    aead = AESGCM(sealing_key)
    try:
        sealed = path.read_bytes()
    except FileNotFoundError:
        root = os.urandom(32)
        nonce = os.urandom(NONCE_BYTES)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(ROOT_FORMAT + nonce + aead.encrypt(nonce, root, ROOT_AAD))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        log.info("created the key-release root, sealed in %s", path)
        return root
    if not sealed.startswith(ROOT_FORMAT) or len(sealed) != len(ROOT_FORMAT) + NONCE_BYTES + 32 + 16:
        raise AttestationError(f"{path} is not a sealed key-release root")
    nonce = sealed[len(ROOT_FORMAT):len(ROOT_FORMAT) + NONCE_BYTES]
    try:
        return aead.decrypt(nonce, sealed[len(ROOT_FORMAT) + NONCE_BYTES:], ROOT_AAD)
    except InvalidTag:
        raise AttestationError(
            f"{path} does not open with this attestation service's sealing key (sealed by another "
            "platform or code identity, or tampered with); keys released before cannot be released again"
        ) from None


class RateLimiter:
    """At most ``limit`` requests per ``window`` seconds from one client address."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._limit = limit
        self._window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[str, deque[float]] = {}

    def admit(self, client: str) -> None:
        now = self._clock()
        with self._lock:
            for key in [k for k, times in self._seen.items() if times[-1] <= now - self._window]:
                del self._seen[key]  # forget idle clients, so the table stays small
            times = self._seen.setdefault(client, deque())
            while times and times[0] <= now - self._window:
                times.popleft()
            if len(times) >= self._limit:
                retry = max(1, math.ceil(times[0] + self._window - now))
                raise ResourceExhausted(
                    f"too many sealing-key requests from {client} ({self._limit} per {int(self._window)} s); "
                    f"retry in {retry} s"
                )
            times.append(now)


@dataclass(frozen=True)
class VerifierPolicy:
    """How callers' certificates are judged: the same policy as every service's verifier."""

    unsafe_allow_simulation: bool
    accepted_statuses: tuple[str, ...]
    max_report_age: timedelta
    clock_skew: timedelta
    unsafe_allow_test_roots: bool = False


class KeyRelease:
    """Decides whether a caller gets a sealing key, and derives it."""

    def __init__(
        self,
        root: bytes | None,
        unavailable: str,
        as_root: x509.Certificate,
        enclave_info: Callable[[], EnclaveInfo],
        policy: VerifierPolicy,
        limiter: RateLimiter,
    ) -> None:
        self._root = root
        self._unavailable = unavailable
        self._as_root = as_root
        self._enclave_info = enclave_info
        self._policy = policy
        self._limiter = limiter
        self._verifier: tuple[EnclaveInfo, Verifier] | None = None

    def _verifier_for(self, info: EnclaveInfo) -> Verifier:
        # One verifier per verified enclave info (the source returns the same object
        # until its files change), so its construction warning is not logged per request.
        if self._verifier is None or self._verifier[0] is not info:
            verifier = Verifier(
                self._as_root, info,
                unsafe_allow_simulation=self._policy.unsafe_allow_simulation,
                unsafe_allow_test_roots=self._policy.unsafe_allow_test_roots,
                accepted_statuses=self._policy.accepted_statuses,
                max_report_age=self._policy.max_report_age,
                clock_skew=self._policy.clock_skew,
            )
            self._verifier = (info, verifier)
        return self._verifier[1]

    def release(self, client: str, peer_certificate: bytes | None, body: dict[str, object]) -> bytes:
        """The key for ``body``'s service and purpose, or a refusal that says why."""
        self._limiter.admit(client)
        service = check_name("service", body.get("service"))
        purpose = check_name("purpose", body.get("purpose"))
        if peer_certificate is None:
            raise PermissionDenied(
                "sealing keys are released only to attested services: present the client certificate "
                "this attestation service issued (mutual TLS)"
            )
        info = self._enclave_info()
        if service not in info.services:
            raise InvalidArgument(f"unknown service {service!r}")
        verdict = self._verifier_for(info).examine(peer_certificate, expected_services={service})
        if verdict.peer is None:
            raise PermissionDenied(f"the client certificate does not verify: {verdict.reason}")
        peer = verdict.peer
        if peer.service and peer.service != service:
            raise PermissionDenied(
                f"the caller is attested as {peer.service}; the sealing key of {service} is released only to {service}"
            )
        if not verdict.ok:
            raise PermissionDenied(f"the caller is refused: {verdict.reason}")
        if self._root is None:
            raise Unavailable(f"key release is unavailable: {self._unavailable}")
        key = released_key(self._root, service, peer.mr_enclave, purpose)
        log.info("released the %r sealing key of %s to measurement %s", purpose, service, peer.mr_enclave.hex())
        return key


def own_sealing_key(config: Config) -> bytes:
    """The attestation service's own sealing key, from the TEE backend it runs on."""
    backend = resolve_backend(config)
    if backend == TDX:
        # On TDX its own key would have to come from its own key release.
        raise ConfigError(
            "the attestation service cannot seal its key-release root on the tdx backend (TDX has no "
            "sealing key, and it cannot release one to itself); run it on sev-snp, gramine-sgx or simulation"
        )
    measurement = measure_service(AS_SERVICE, BuildConfig.load(config.home).raw)
    return evidence_provider(config, AS_SERVICE, measurement).sealing_key(AS_SEALING_PURPOSE)


def build_key_release(config: Config, enclave_info: Callable[[], EnclaveInfo], as_root: x509.Certificate) -> KeyRelease:
    """Key release as configured; when the AS's own sealing key is unavailable it refuses every
    request with the reason, and the AS keeps issuing certificates."""
    settings = config.attestation
    policy = VerifierPolicy(
        unsafe_allow_simulation=settings.unsafe_allow_simulation,
        accepted_statuses=settings.accepted_statuses,
        max_report_age=timedelta(seconds=settings.validity_secs),
        clock_skew=timedelta(seconds=settings.clock_skew_secs),
        # Callers attested under the AS's own test roots are judged as every service judges them.
        unsafe_allow_test_roots=bool(settings.unsafe_test_roots),
    )
    root: bytes | None = None
    unavailable = ""
    try:
        root = load_or_create_root(authority_dir(config.home) / ROOT_FILE, own_sealing_key(config))
    except KettleError as exc:
        unavailable = exc.message
        log.error("sealing keys cannot be released: %s", unavailable)
    limiter = RateLimiter(RATE_LIMIT_REQUESTS, RATE_LIMIT_WINDOW_SECS)
    return KeyRelease(root, unavailable, as_root, enclave_info, policy, limiter)
