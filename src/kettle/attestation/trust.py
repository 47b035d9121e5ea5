"""Loading what a party trusts: the pinned AS root and auditor-verified enclave info.

Services take auditor keys and the threshold from their measured build
configuration; clients take the auditor keys kept beside ``enclave_info.toml``
(``<auditor>.public.pem``) and a threshold from their own configuration.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from cryptography import x509

from ..config import Config
from ..errors import AttestationError
from .build import BuildConfig
from .enclave_info import EnclaveInfo, auditor_keys_beside, load_enclave_info
from .verifier import Verifier


def load_as_root(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise AttestationError(f"AS root certificate {path} is missing") from None
    except ValueError:
        raise AttestationError(f"AS root certificate {path} is not a PEM certificate") from None


def service_enclave_info(config: Config, build: BuildConfig) -> EnclaveInfo:
    return load_enclave_info(config.enclave_info_path, build.auditors, build.threshold)


def client_enclave_info(enclave_info_path: Path, threshold: int = 0) -> EnclaveInfo:
    """Enclave info as a client trusts it: ``threshold`` (0 = every known auditor) distinct signatures."""
    auditors = auditor_keys_beside(enclave_info_path)
    if not auditors:
        raise AttestationError(f"no auditor public keys (*.public.pem) beside {enclave_info_path}")
    return load_enclave_info(enclave_info_path, auditors, threshold or len(auditors))


def verifier_for(config: Config, enclave_info: EnclaveInfo) -> Verifier:
    return Verifier(
        load_as_root(config.as_root_path),
        enclave_info,
        unsafe_allow_simulation=config.attestation.unsafe_allow_simulation,
        unsafe_allow_test_roots=bool(config.attestation.unsafe_test_roots),
        accepted_statuses=config.attestation.accepted_statuses,
        max_report_age=timedelta(seconds=config.attestation.validity_secs),
        clock_skew=timedelta(seconds=config.attestation.clock_skew_secs),
    )
