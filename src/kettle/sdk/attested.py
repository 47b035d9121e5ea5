"""The client side of attested TLS: verify a service before the first request, then pin it.

grpcio cannot show a client the server's certificate, so a connection is made in
two steps: a TLS handshake with Python's ``ssl`` fetches the certificate, which
:class:`~kettle.attestation.verifier.Verifier` checks in full; then the grpc
channel trusts only the AS root and pins the verified measurement through its
TLS target name (``<h>.<h>.mre.<domain>``), a name the AS writes only into
certificates for evidence with exactly that measurement.

A party that does not trust the operator's AS asks for the hardware too
(``ClientTrust.from_files(..., verify_hardware=True)``): the certificate's raw TEE
evidence must then verify against the vendor roots and the auditors' measurements
(:mod:`kettle.attestation.hardware`), and the grpc channel trusts exactly the verified
certificate instead of the AS root, so no certificate the AS issues later can take its
place. Such a channel holds until the service rotates its certificate; a new
connection after that is refused, and the client verifies again.
"""

from __future__ import annotations

import logging
import socket
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..attestation.collateral import CollateralSource
from ..attestation.dcap import DcapPolicy
from ..attestation.enclave_info import EnclaveInfo
from ..attestation.hardware import (
    STRICT_DCAP_POLICY,
    STRICT_SNP_POLICY,
    HardwareVerdict,
    examine_hardware,
)
from ..attestation.snp import SnpPolicy, SnpRoots
from ..attestation.trust import client_enclave_info, load_as_root
from ..attestation.verifier import AttestedPeer, Verdict, Verifier
from ..config import Config, load_config
from ..errors import AttestationError, ConfigError, Unavailable
from ..rpc.channel import channel_options

HANDSHAKE_TIMEOUT_SECS = 10.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HardwareTrust:
    """What a party trusts to verify a service's TEE itself, instead of the operator's AS:
    AMD's and Intel's roots shipped with Kettle (None), where collateral comes from, and the
    TEE policies. The measurements are the auditors' (enclave info)."""

    snp_roots: SnpRoots | None = None
    intel_root_der: bytes | None = None
    collateral: CollateralSource | None = None
    snp_policy: SnpPolicy = STRICT_SNP_POLICY
    dcap_policy: DcapPolicy = STRICT_DCAP_POLICY

    @classmethod
    def for_config(
        cls,
        config: Config,
        *,
        unsafe_test_roots: Path | None = None,
        collateral: CollateralSource | None = None,
        snp_policy: SnpPolicy | None = None,
        dcap_policy: DcapPolicy | None = None,
    ) -> HardwareTrust:
        """The home's ``[attestation]`` judgement of real evidence (its SNP and DCAP policy
        settings, and its ``unsafe_test_roots`` if set: the vendor roots otherwise) and, unless
        ``collateral`` is given, its collateral cache, whose fetched items verify under the
        same roots. ``unsafe_test_roots``, ``snp_policy`` and ``dcap_policy`` override the home's."""
        from ..attestation.collateral import collateral_cache
        from ..attestation_service.server import load_test_roots, tee_policy

        policy = tee_policy(config.attestation)
        snp_roots, intel_root_der = policy.snp_roots, policy.intel_root_der
        if unsafe_test_roots is not None:
            snp_roots, intel_root_der = load_test_roots(unsafe_test_roots)
        if snp_roots is not None or intel_root_der is not None:
            log.warning("UNSAFE: hardware evidence is verified under test roots, not AMD's and Intel's")
        if collateral is None:
            collateral = collateral_cache(config, snp_roots=snp_roots, intel_root_der=intel_root_der)
        return cls(snp_roots, intel_root_der, collateral, snp_policy or policy.snp, dcap_policy or policy.dcap)

    def examine(self, cert: x509.Certificate, enclave_info: EnclaveInfo, service: str, at: datetime) -> HardwareVerdict:
        return examine_hardware(
            cert, enclave_info=enclave_info, service=service, at=at,
            snp_roots=self.snp_roots, intel_root_der=self.intel_root_der, collateral=self.collateral,
            snp_policy=self.snp_policy, dcap_policy=self.dcap_policy,
        )


@dataclass(frozen=True)
class ClientTrust:
    """The two trust files (and the auditor keys beside enclave info) plus the policy."""

    as_root_path: Path
    enclave_info: EnclaveInfo
    verifier: Verifier
    hardware: HardwareTrust | None = None
    """Set: every endpoint's hardware evidence must also verify (``verify_hardware``)."""

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
        verify_hardware: bool = False,
        hardware: HardwareTrust | None = None,
    ) -> ClientTrust:
        """``verify_hardware``: also verify each service's TEE evidence against the vendor
        roots (``hardware``, default AMD's and Intel's), for a party that distrusts the operator."""
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
        if hardware is not None and not verify_hardware:
            raise ConfigError("hardware trust is given but verify_hardware is off")
        return cls(as_root_path, info, verifier, (hardware or HardwareTrust()) if verify_hardware else None)

    @classmethod
    def from_config(
        cls, config: Config | None = None, *, verify_hardware: bool = False, hardware: HardwareTrust | None = None
    ) -> ClientTrust:
        """The trust files of a Kettle home (``$KETTLE_HOME/trust``) and its attestation policy."""
        config = config or load_config()
        if verify_hardware and hardware is None:
            hardware = HardwareTrust.for_config(config)
        return cls.from_files(
            config.as_root_path,
            config.enclave_info_path,
            auditor_threshold=config.audit.threshold,
            unsafe_allow_simulation=config.attestation.unsafe_allow_simulation,
            unsafe_allow_test_roots=bool(config.attestation.unsafe_test_roots),
            accepted_statuses=config.attestation.accepted_statuses,
            max_report_age=timedelta(seconds=config.attestation.validity_secs),
            verify_hardware=verify_hardware,
            hardware=hardware,
        )

    @property
    def as_root_pem(self) -> bytes:
        return self.as_root_path.read_bytes()


@dataclass(frozen=True)
class AttestedEndpoint:
    address: str
    peer: AttestedPeer
    target_name: str
    hardware: HardwareVerdict | None = None
    pinned_certificate: bytes | None = None
    """PEM of the verified certificate when the hardware was verified: the channel's only anchor."""

    def channel(self, trust: ClientTrust) -> grpc.Channel:
        return grpc.secure_channel(self.address, self._credentials(trust), options=channel_options(self.target_name))

    def aio_channel(self, trust: ClientTrust) -> grpc.aio.Channel:
        return grpc.aio.secure_channel(self.address, self._credentials(trust), options=channel_options(self.target_name))

    def _credentials(self, trust: ClientTrust) -> grpc.ChannelCredentials:
        # grpc's TLS accepts a trusted leaf as the whole chain; trusting only the certificate
        # whose evidence was verified keeps the AS from slipping in another one for the channel.
        return grpc.ssl_channel_credentials(root_certificates=self.pinned_certificate or trust.as_root_pem)


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address must be HOST:PORT, not {address!r}")
    return host.strip("[]") or "localhost", int(port)


def fetch_certificate(address: str, as_root_path: Path | None, timeout: float = HANDSHAKE_TIMEOUT_SECS) -> bytes:
    """The server's leaf certificate (DER), after a TLS handshake that chains it to the AS root.

    ``as_root_path`` None: no chain is checked, for a party that trusts only the hardware
    evidence in the certificate. The handshake still proves the server holds the
    certificate's key (it signs the handshake with it), which the evidence binds.
    """
    host, port = split_address(address)
    context = ssl.create_default_context(cafile=None if as_root_path is None else str(as_root_path))
    # Identity comes from the attestation report (measurement), not from a host name.
    context.check_hostname = False
    if as_root_path is None:
        context.verify_mode = ssl.CERT_NONE
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
    """Verify the service at ``address`` is ``service``'s audited code; raise AttestationError otherwise.

    With ``trust.hardware`` its TEE evidence must also verify against the vendor roots.
    """
    verdict, cert = examine_endpoint(address, service, trust)
    if not verdict.ok:
        raise AttestationError(f"{address}: {verdict.reason}")
    assert verdict.peer is not None
    target = measurement_name_of(cert, verdict.peer)
    if trust.hardware is None:
        return AttestedEndpoint(address, verdict.peer, target)
    hardware = trust.hardware.examine(cert, trust.enclave_info, service, datetime.now(UTC))
    if not hardware.ok:
        raise AttestationError(f"{address}: hardware: {hardware.reason}")
    return AttestedEndpoint(address, verdict.peer, target, hardware, cert.public_bytes(serialization.Encoding.PEM))


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
