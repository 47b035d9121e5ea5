"""The attestation service's HTTPS endpoint.

Its calls:

* ``POST /kettle/v1/certificate`` — Kettle's issuance: ``{"service", "csr", "tee_type",
  "evidence"}`` (CSR in PEM, evidence in base64) and optionally ``"certificates":
  [{"kind": "vcek"|"vlek"|"ask"|"ark", "der": base64}]`` (the SNP certificate table the
  host supplied with the report) → ``{"certificate_chain": PEM,
  "client_certificate_chain": PEM}`` (the server certificate and its compact
  client-authentication twin for the same key).
* ``POST /kettle/v1/sealing-key`` — a sealing key for a TEE without one (TDX), released to a
  caller that presents the client certificate this service issued it: ``{"service", "purpose"}``
  → ``{"key": base64}`` (:mod:`.key_release`).
* ``POST /sgx/dev/attestation/v4/report`` — the Teaclave DCAP reference AS's report
  call (``spec/attestation.md`` §2.4): ``{"isvEnclaveQuote": base64}`` → the report
  JSON with ``X-DCAPReport-Signature`` and ``X-DCAPReport-Signing-Certificate``.

Errors are ``400`` with ``{"error": reason}``; nothing a client sends can crash it.
Nor can a client hold it: every connection gets its own worker, a TLS handshake
deadline and a deadline for its whole request, and only ``max_connections`` are served
at once (``[attestation]`` settings, ``docs/attestation.md``).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import os
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..attestation.backends import SIMULATION, SnpCertificate, load_simulation_platform_key
from ..attestation.build import BuildConfig
from ..attestation.enclave_info import SIGNATURE_SUFFIX, EnclaveInfo, verify_enclave_info
from ..attestation.collateral import CollateralCache, collateral_cache
from ..attestation.dcap import DcapPolicy
from ..attestation.evidence_extension import CERTIFICATE_KINDS
from ..attestation.snp import CHAIN_FILE_SUFFIX, SnpPolicy, SnpRoots, SnpTcb, load_snp_roots
from ..config import AttestationConfig, Config, parse_allowed_tcb_status, parse_snp_minimum_tcb
from ..errors import (
    AttestationError,
    ConfigError,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from .authority import authority_dir, load_authority
from .issuer import IssueRequest, Issuer, TeePolicy
from .key_release import RELEASE_PATH, KeyRelease, build_key_release

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 64 * 1024
REFUSAL_LOG_INTERVAL_SECS = 10.0
RELEASE_REFUSAL_STATUS = {InvalidArgument: 400, PermissionDenied: 403, ResourceExhausted: 429, Unavailable: 503}


class EnclaveInfoSource:
    """Enclave info as the files on disk say now, re-verified whenever any file it rests on changes.

    Those files are enclave info itself, every signature beside it and the build
    configuration that holds the auditor keys. Auditors may publish new enclave info,
    and a signature that is removed or corrupted must stop issuance at once, so the
    cache is keyed on the bytes of all of them, not on metadata: a file rewritten in
    place with the same size within one timestamp tick must not go unnoticed either.
    They are a few kilobytes, read only when a certificate is asked for.
    """

    def __init__(self, path: Path, build_path: Path) -> None:
        self._path = path
        self._build_path = build_path
        self._lock = threading.Lock()
        self._snapshot: tuple[tuple[str, bytes], ...] | None = None
        self._info: EnclaveInfo | None = None
        self._refusal = ""

    def _read(self) -> tuple[tuple[str, bytes], ...]:
        """Every file involved with its bytes; a missing file is simply absent from the snapshot."""
        files = [self._path, self._build_path, *sorted(self._path.parent.glob("*" + SIGNATURE_SUFFIX))]
        snapshot = []
        for file in files:
            try:
                snapshot.append((str(file), file.read_bytes()))
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise AttestationError(f"cannot read {file}: {exc.strerror}") from None
        return tuple(snapshot)

    def _verify(self, snapshot: tuple[tuple[str, bytes], ...]) -> EnclaveInfo:
        contents = dict(snapshot)
        info = contents.pop(str(self._path), None)
        if info is None:
            raise AttestationError(f"enclave info {self._path} is missing")
        build_raw = contents.pop(str(self._build_path), None)
        if build_raw is None:
            raise AttestationError(f"build configuration {self._build_path} is missing")
        try:
            build = BuildConfig.parse(build_raw)
        except ConfigError as exc:
            raise AttestationError(exc.message) from None
        return verify_enclave_info(info, list(contents.values()), build.auditors, build.threshold)

    def __call__(self) -> EnclaveInfo:
        with self._lock:
            snapshot = self._read()
            if snapshot != self._snapshot:
                self._snapshot = snapshot
                try:
                    self._info, self._refusal = self._verify(snapshot), ""
                    log.info("enclave info verified (%d services)", len(self._info.services))
                except AttestationError as exc:
                    self._info, self._refusal = None, exc.reason
                    log.warning("enclave info refused, no certificate is issued until it verifies: %s", exc.reason)
            if self._info is None:
                raise AttestationError(self._refusal)
            return self._info


INTEL_TEST_ROOT_FILE = "intel_sgx_root_ca.der"


def load_test_roots(folder: Path) -> tuple[SnpRoots | None, bytes | None]:
    """``unsafe_test_roots``: AMD-form ``<product>_ask_ark_asvk.pem`` chains and/or an Intel-form root
    ``intel_sgx_root_ca.der``; whichever is there replaces that vendor's roots."""
    if not folder.is_dir():
        raise ConfigError(f"attestation.unsafe_test_roots {folder} is not a folder")
    snp_roots = load_snp_roots(folder) if any(folder.glob(f"*{CHAIN_FILE_SUFFIX}")) else None
    intel = folder / INTEL_TEST_ROOT_FILE
    intel_root = intel.read_bytes() if intel.is_file() else None
    if snp_roots is None and intel_root is None:
        raise ConfigError(
            f"attestation.unsafe_test_roots {folder} holds neither *{CHAIN_FILE_SUFFIX} nor {INTEL_TEST_ROOT_FILE}"
        )
    return snp_roots, intel_root


def tee_policy(settings: AttestationConfig) -> TeePolicy:
    """How this attestation service judges real evidence, from ``[attestation]``."""
    minimum = parse_snp_minimum_tcb(settings.snp_minimum_tcb)
    snp = SnpPolicy(
        max_vmpl=settings.snp_max_vmpl,
        allow_migration_agent=settings.snp_allow_migration_agent,
        minimum_tcb=SnpTcb(**minimum) if minimum else None,
    )
    dcap = DcapPolicy(allowed=parse_allowed_tcb_status(settings.allowed_tcb_status))
    if not settings.unsafe_test_roots:
        return TeePolicy(snp, dcap)
    snp_roots, intel_root = load_test_roots(Path(settings.unsafe_test_roots))
    log.warning(
        "UNSAFE: real TEE evidence is verified under TEST roots from %s (unsafe_test_roots), not AMD's or Intel's; "
        "it proves nothing about real hardware, and every report says kettleUnsafeTestRoots",
        settings.unsafe_test_roots,
    )
    return TeePolicy(snp, dcap, snp_roots, intel_root)


def build_issuer(
    config: Config, collateral: CollateralCache | None = None, policy: TeePolicy | None = None
) -> Issuer:
    """The issuer ``[attestation]`` describes; real evidence takes its collateral from ``collateral``
    (default: the cache of the settings, under the same roots as the verifiers)."""
    policy = policy or tee_policy(config.attestation)
    if collateral is None:
        collateral = collateral_cache(config, snp_roots=policy.snp_roots, intel_root_der=policy.intel_root_der)
    enclave_info = EnclaveInfoSource(config.enclave_info_path, BuildConfig.path_in(config.home))
    enclave_info()  # refuse to start on unsigned or malformed enclave info
    allow = config.attestation.unsafe_allow_simulation
    if allow:
        log.warning("UNSAFE: this attestation service accepts SIMULATION evidence (no TEE); development only")
    return Issuer(
        load_authority(config.home),
        enclave_info,
        simulation_platform_key=load_simulation_platform_key(config.home) if allow else None,
        unsafe_allow_simulation=allow,
        domain=config.domain,
        validity=timedelta(seconds=config.attestation.validity_secs),
        issued_log=authority_dir(config.home) / "issued.jsonl",
        collateral=collateral,
        tee_policy=policy,
    )


class _DeadlineReader(io.RawIOBase):
    """Reads a connection until one fixed deadline.

    A timeout per read alone would let a client that sends its request one byte at a
    time hold a connection, and so a worker, for as long as it likes.
    """

    def __init__(self, connection: socket.socket, deadline: float) -> None:
        self._connection = connection
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request was not received in time")
        self._connection.settimeout(remaining)
        return self._connection.recv_into(buffer)


class _Handler(BaseHTTPRequestHandler):
    server: AttestationHTTPServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # One request per connection (every answer closes it), so this deadline covers
        # the request line, the headers and the body together.
        deadline = time.monotonic() + self.server.limits.request_timeout_secs
        self.rfile.close()
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, deadline))

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s " + format, self.address_string(), *args)

    def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        # Reading left the socket with what remained of the request deadline; writing gets its own.
        self.connection.settimeout(self.server.limits.request_timeout_secs)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def _error(self, status: int, reason: str) -> None:
        self._reply(status, json.dumps({"error": reason}).encode())

    def _json_body(self) -> dict[str, object] | None:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if length <= 0 or length > MAX_REQUEST_BYTES:
            self._error(400, f"request body must be between 1 and {MAX_REQUEST_BYTES} bytes")
            return None
        try:
            raw = self.rfile.read(length)
        except OSError as exc:  # too slow, or gone: nothing can be answered on this connection
            log.debug("dropped %s before its request body arrived: %s", self.address_string(), exc)
            self.close_connection = True
            return None
        try:
            body = json.loads(raw)
        except ValueError:
            self._error(400, "request body is not valid JSON")
            return None
        except RecursionError:  # json's decoder recurses once per nesting level
            self._error(400, "request body is JSON nested too deeply")
            return None
        if not isinstance(body, dict):
            self._error(400, "request body must be a JSON object")
            return None
        return body

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        if self.path == "/kettle/v1/health":
            self._reply(200, b'{"status":"serving"}')
        else:
            self._error(404, "no such endpoint")

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        try:
            if self.path == "/kettle/v1/certificate":
                self._certificate()
            elif self.path == "/sgx/dev/attestation/v4/report":
                self._teaclave_report()
            elif self.path == RELEASE_PATH:
                self._sealing_key()
            else:
                self._error(404, "no such endpoint")
        except AttestationError as exc:
            log.warning("refused %s: %s", self.path, exc.reason)
            self._error(400, exc.reason)
        except Exception:  # a bug must cost one request, never the service
            log.exception("internal error on %s", self.path)
            self._error(500, "internal error")

    def _certificate(self) -> None:
        body = self._json_body()
        if body is None:
            return
        service, csr, tee_type, evidence = (body.get(k) for k in ("service", "csr", "tee_type", "evidence"))
        if not all(isinstance(v, str) for v in (service, csr, tee_type, evidence)):
            self._error(400, "service, csr, tee_type and evidence are required strings")
            return
        try:
            raw_evidence = base64.b64decode(str(evidence), validate=True)
        except binascii.Error:
            self._error(400, "evidence is not base64")
            return
        certificates = _evidence_certificates(body.get("certificates", []))
        if certificates is None:
            self._error(400, 'certificates must be a list of {"kind": "vcek"|"vlek"|"ask"|"ark", "der": base64}')
            return
        issued = self.server.issuer.issue(
            IssueRequest(str(service), str(csr).encode(), str(tee_type), raw_evidence, certificates)
        )
        self._reply(
            200,
            json.dumps(
                {
                    "certificate_chain": issued.chain_pem().decode(),
                    "client_certificate_chain": issued.chain_pem(client=True).decode(),
                }
            ).encode(),
        )

    def _sealing_key(self) -> None:
        body = self._json_body()
        if body is None:
            return
        if self.server.key_release is None:
            self._error(503, "key release is not configured on this attestation service")
            return
        assert isinstance(self.connection, ssl.SSLSocket)
        try:
            key = self.server.key_release.release(
                self.client_address[0], self.connection.getpeercert(binary_form=True), body
            )
        except (InvalidArgument, PermissionDenied, ResourceExhausted, Unavailable) as exc:
            # Past the rate limit, a flood of requests must not become a flood of log lines.
            level = logging.DEBUG if isinstance(exc, ResourceExhausted) else logging.WARNING
            log.log(level, "refused a sealing key to %s: %s", self.client_address[0], exc.message)
            self._error(RELEASE_REFUSAL_STATUS[type(exc)], exc.message)
            return
        self._reply(200, json.dumps({"key": base64.b64encode(key).decode()}).encode())

    def _teaclave_report(self) -> None:
        body = self._json_body()
        if body is None:
            return
        quote = body.get("isvEnclaveQuote")
        try:
            raw = base64.b64decode(str(quote), validate=True) if isinstance(quote, str) else None
        except binascii.Error:
            raw = None
        if not raw:
            self._error(400, "isvEnclaveQuote must be a base64 quote")
            return
        issuer = self.server.issuer
        endorsed = issuer.endorse(issuer.verify_evidence(SIMULATION, raw).quote, SIMULATION, {})
        signing_pem = b"".join(
            x509.load_der_x509_certificate(c).public_bytes(serialization.Encoding.PEM) for c in endorsed.certs
        )
        self._reply(
            200,
            endorsed.report,
            {
                "X-DCAPReport-Signature": base64.b64encode(endorsed.signature).decode(),
                "X-DCAPReport-Signing-Certificate": urllib.parse.quote(signing_pem.decode(), safe=""),
            },
        )


def _evidence_certificates(value: object) -> tuple[SnpCertificate, ...] | None:
    """The request's evidence certificates, or None when malformed (old requests have none)."""
    if not isinstance(value, list):
        return None
    certificates = []
    for entry in value:
        if not isinstance(entry, dict) or set(entry) != {"kind", "der"} or entry["kind"] not in CERTIFICATE_KINDS:
            return None
        if not isinstance(entry["der"], str):
            return None
        try:
            certificates.append(SnpCertificate(entry["kind"], base64.b64decode(entry["der"], validate=True)))
        except binascii.Error:
            return None
    return tuple(certificates)


class AttestationHTTPServer(ThreadingHTTPServer):
    """One worker thread per connection, at most ``max_connections`` at once.

    The listening socket is plain TCP and each worker makes its own TLS handshake,
    under ``handshake_timeout_secs``: done inside ``accept()`` on the serve loop, one
    client that never sent a ClientHello would stop the service, and with it every
    certificate rotation of the platform. Each connection is therefore bounded in time
    (handshake, then the whole request) and in number, so slow clients can only delay
    others until their deadlines, never starve the service.
    """

    daemon_threads = True
    request_queue_size = 128  # connections the kernel holds while the serve loop accepts
    key_release: KeyRelease | None = None

    def __init__(
        self, address: tuple[str, int], issuer: Issuer, context: ssl.SSLContext, limits: AttestationConfig
    ) -> None:
        super().__init__(address, _Handler)
        self.issuer = issuer
        self.limits = limits
        self._context = context
        self._slots = threading.BoundedSemaphore(limits.max_connections)
        self._refusals = 0
        self._next_refusal_log = 0.0

    def verify_request(self, request: socket.socket, client_address: object) -> bool:
        """Runs on the serve loop, so it never waits: a connection over the limit is closed at once."""
        if self._slots.acquire(blocking=False):
            return True
        self._refusals += 1
        now = time.monotonic()
        if now >= self._next_refusal_log:  # a flood of connections must not become a flood of log lines
            log.warning(
                "closed %d connection(s): %d are open already (attestation.max_connections)",
                self._refusals, self.limits.max_connections,
            )
            self._refusals, self._next_refusal_log = 0, now + REFUSAL_LOG_INTERVAL_SECS
        return False

    def process_request(self, request: socket.socket, client_address: object) -> None:
        try:
            super().process_request(request, client_address)
        except BaseException:  # no worker started, so none will give the slot back
            self._slots.release()
            raise

    def process_request_thread(self, request: socket.socket, client_address: object) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def finish_request(self, request: socket.socket, client_address: object) -> None:
        request.settimeout(self.limits.handshake_timeout_secs)
        try:
            connection = self._context.wrap_socket(request, server_side=True)
        except OSError as exc:  # timed out, not TLS, or gone; the socket is closed by the caller
            log.debug("TLS handshake with %s failed: %s", client_address, exc)
            return
        try:
            self.RequestHandlerClass(connection, client_address, self)
        finally:
            self.shutdown_request(connection)

    def handle_error(self, request: socket.socket, client_address: object) -> None:
        exc = sys.exception()
        if isinstance(exc, OSError):  # the client went away or stalled mid-request: not the service's fault
            log.debug("connection from %s ended: %s", client_address, exc)
        else:
            log.exception("internal error serving %s", client_address)


def tls_context(home: Path) -> ssl.SSLContext:
    directory = authority_dir(home)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(directory / "tls_chain.pem", directory / "tls.key.pem")
    # Only the sealing-key release needs the caller's attested certificate: ask for one,
    # verify it under the AS root when given, and let the endpoints decide.
    context.verify_mode = ssl.CERT_OPTIONAL
    context.load_verify_locations(directory / "root.pem")
    return context


def serve(config: Config, ready: threading.Event | None = None) -> None:
    """Run the attestation service until interrupted."""
    policy = tee_policy(config.attestation)
    collateral = collateral_cache(config, snp_roots=policy.snp_roots, intel_root_der=policy.intel_root_der)
    issuer = build_issuer(config, collateral, policy)
    host, port = config.attestation.listen_address.rsplit(":", 1)
    server = AttestationHTTPServer((host, int(port)), issuer, tls_context(config.home), config.attestation)
    server.key_release = build_key_release(
        config, EnclaveInfoSource(config.enclave_info_path, BuildConfig.path_in(config.home)),
        load_authority(config.home).root,
    )
    log.info("attestation service listening on %s (pid %d)", config.attestation.listen_address, os.getpid())
    if ready is not None:
        ready.set()
    collateral.start_refresh()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        collateral.stop()
        server.server_close()
