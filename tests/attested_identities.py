"""Real attested identities without starting a service: the attestation service's
``Issuer`` runs in-process on a dev home, on simulation evidence, at a chosen time.

Used by the tests of attested signatures and execution receipts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from conftest import make_home
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kettle.attestation.backends import SimulationBackend, load_simulation_platform_key
from kettle.attestation.build import BuildConfig
from kettle.attestation.certificates import report_data_for
from kettle.attestation.enclave_info import EnclaveInfo
from kettle.attestation.identity import Identity
from kettle.attestation.measurement import SIMULATION_MR_SIGNER
from kettle.attestation.trust import service_enclave_info
from kettle.attestation.verifier import Verifier
from kettle.attestation_service.authority import Authority, load_authority
from kettle.attestation_service.issuer import Issuer, IssueRequest
from kettle.config import Config


@dataclass(frozen=True)
class AttestedHome:
    """A dev home's AS hierarchy and signed enclave info (nothing started)."""

    config: Config
    authority: Authority
    info: EnclaveInfo

    @property
    def home(self) -> Path:
        return self.config.home

    def identity(self, service: str, at: float) -> Identity:
        """``service``'s attested identity as the AS issues it at Unix time ``at``."""
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"teaclave_{service}_service")]))
            .sign(key, hashes.SHA256())
        )
        backend = SimulationBackend(self.home, self.info.measurement(service).mr_enclave, SIMULATION_MR_SIGNER, service)
        evidence = backend.evidence(report_data_for(key.public_key()))
        issuer = Issuer(
            self.authority,
            lambda: self.info,
            simulation_platform_key=load_simulation_platform_key(self.home),
            unsafe_allow_simulation=True,
            domain=self.config.domain,
            validity=timedelta(seconds=self.config.attestation.validity_secs),
            clock=lambda: at,
        )
        issued = issuer.issue(IssueRequest(service, csr.public_bytes(serialization.Encoding.PEM), "simulation",
                                           evidence.quote))
        return Identity(service, key, issued.certificate, issued.client_certificate, tuple(issued.chain), 0)

    def verifier(self, at: float, *, info: EnclaveInfo | None = None) -> Verifier:
        """What a client trusts (the AS root, enclave info), judging at Unix time ``at``."""
        return Verifier(self.authority.root, info or self.info, unsafe_allow_simulation=True,
                        max_report_age=timedelta(seconds=self.config.attestation.validity_secs),
                        clock=lambda: at)


def attested_home(path: Path, auditor_cache: Path) -> AttestedHome:
    config = make_home(path, auditor_cache)
    return AttestedHome(config, load_authority(config.home), service_enclave_info(config, BuildConfig.load(config.home)))
