"""The client side of attested TLS: verify a service before the first request, then pin it.

grpcio cannot show a client the server's certificate, so a connection is made in
two steps: a TLS handshake with Python's ``ssl`` fetches the certificate, which
:class:`~kettle.attestation.verifier.Verifier` checks in full; then the grpc
channel trusts only the AS root and pins the verified measurement through its
TLS target name (``<h>.<h>.mre.<domain>``), a name the AS writes only into
certificates for evidence with exactly that measurement.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import grpc
from cryptography import x509

from ..attestation.enclave_info import EnclaveInfo
from ..attestation.trust import client_enclave_info, load_as_root
from ..attestation.verifier import AttestedPeer, Verdict, Verifier
from ..config import Config, load_config
from ..errors import AttestationError, Unavailable
from ..rpc.channel import channel_options

HANDSHAKE_TIMEOUT_SECS = 10.0


@dataclass(frozen=True)
class ClientTrust:
    """The two trust files (and the auditor keys beside enclave info) plus the policy."""

    as_root_path: Path
    enclave_info: EnclaveInfo
    verifier: Verifier

    @classmethod
    def from_files(
        cls,
        as_root_path: Path | str,
        enclave_info_path: Path | str,
        *,
        auditor_threshold: int = 0,
        unsafe_allow_simulation: bool = False,
        unsafe_allow_test_roots: bool = False,
        accepted_statuses: tuple[str, ...] = ("OK",),
        max_report_age: timedelta = timedelta(hours=1),
    ) -> ClientTrust:
        as_root_path = Path(as_root_path)
        info = client_enclave_info(Path(enclave_info_path), auditor_threshold)
        verifier = Verifier(
            load_as_root(as_root_path),
            info,
            unsafe_allow_simulation=unsafe_allow_simulation,
            unsafe_allow_test_roots=unsafe_allow_test_roots,
            accepted_statuses=accepted_statuses,
            max_report_age=max_report_age,
        )
        return cls(as_root_path, info, verifier)

    @classmethod
    def from_config(cls, config: Config | None = None) -> ClientTrust:
        """The trust files of a Kettle home (``$KETTLE_HOME/trust``) and its attestation policy."""
        config = config or load_config()
        return cls.from_files(
            config.as_root_path,
            config.enclave_info_path,
            auditor_threshold=config.audit.threshold,
            unsafe_allow_simulation=config.attestation.unsafe_allow_simulation,
            unsafe_allow_test_roots=bool(config.attestation.unsafe_test_roots),
            accepted_statuses=config.attestation.accepted_statuses,
            max_report_age=timedelta(seconds=config.attestation.validity_secs),
        )

    @property
    def as_root_pem(self) -> bytes:
        return self.as_root_path.read_bytes()


@dataclass(frozen=True)
class AttestedEndpoint:
    address: str
    peer: AttestedPeer
    target_name: str

    def channel(self, trust: ClientTrust) -> grpc.Channel:
        return grpc.secure_channel(self.address, self._credentials(trust), options=channel_options(self.target_name))

    def aio_channel(self, trust: ClientTrust) -> grpc.aio.Channel:
        return grpc.aio.secure_channel(self.address, self._credentials(trust), options=channel_options(self.target_name))

    @staticmethod
    def _credentials(trust: ClientTrust) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=trust.as_root_pem)


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address must be HOST:PORT, not {address!r}")
    return host.strip("[]") or "localhost", int(port)


def fetch_certificate(address: str, as_root_path: Path, timeout: float = HANDSHAKE_TIMEOUT_SECS) -> bytes:
    """The server's leaf certificate (DER), after a TLS handshake that chains it to the AS root."""
    host, port = split_address(address)
    context = ssl.create_default_context(cafile=str(as_root_path))
    # Identity comes from the attestation report (measurement), not from a host name.
    context.check_hostname = False
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            with context.wrap_socket(sock) as tls:
                der = tls.getpeercert(binary_form=True)
    except ssl.SSLCertVerificationError as exc:
        raise AttestationError(f"{address}: TLS certificate does not chain to the pinned AS root ({exc.verify_message})") from None
    except (OSError, ssl.SSLError) as exc:
        raise Unavailable(f"cannot reach {address}: {exc}") from None
    if not der:
        raise AttestationError(f"{address} presented no certificate")
    return der


def examine_endpoint(address: str, service: str | None, trust: ClientTrust) -> tuple[Verdict, x509.Certificate]:
    der = fetch_certificate(address, trust.as_root_path)
    expected = {service} if service else None
    return trust.verifier.examine(der, expected_services=expected), x509.load_der_x509_certificate(der)


def verify_endpoint(address: str, service: str, trust: ClientTrust) -> AttestedEndpoint:
    """Verify the service at ``address`` is ``service``'s audited code; raise AttestationError otherwise."""
    verdict, cert = examine_endpoint(address, service, trust)
    if not verdict.ok:
        raise AttestationError(f"{address}: {verdict.reason}")
    assert verdict.peer is not None
    return AttestedEndpoint(address, verdict.peer, measurement_name_of(cert, verdict.peer))


def measurement_name_of(cert: x509.Certificate, peer: AttestedPeer) -> str:
    """The certificate's measurement SAN, which must name the verified measurement."""
    h = peer.mr_enclave.hex()
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    for name in names:
        if name.startswith(f"{h[:32]}.{h[32:]}.mre."):
            return name
    raise AttestationError("certificate has no measurement name for its verified measurement")
