"""Setting up ``$KETTLE_HOME`` for a development platform: the simulated TEE, dev auditors,
the measured build configuration, the AS hierarchy, and signed enclave info.

Dev auditor key pairs are generated here on first use and never leave
``$KETTLE_HOME/auditors`` (git-ignored). In dev mode, enclave info is re-measured
and re-signed by the dev auditors whenever the code changed; a production
deployment instead receives enclave info signed by independent auditors.
"""

from __future__ import annotations

import logging
import os
import urllib.parse
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .attestation.backends import create_simulation_platform
from .attestation.build import BuildConfig
from .attestation.enclave_info import (
    PUBLIC_KEY_SUFFIX,
    SIGNATURE_SUFFIX,
    EnclaveInfo,
    Measurement,
    sign_enclave_info,
)
from .attestation.measurement import SIMULATION_MR_SIGNER, measure_service
from .attestation_service.authority import create_authority
from .config import ATTESTATION_SERVICE_PORT, SERVICES, Config, load_config

log = logging.getLogger(__name__)

DEV_AUDITORS = ("godzilla", "optimus_prime", "albus_dumbledore")

DEV_CONFIG = f"""\
# Kettle runtime configuration (development: simulation TEE, embedded storage).
[platform]
dev_mode = true

[attestation]
backend = "simulation"
service_url = "https://localhost:{ATTESTATION_SERVICE_PORT}"
listen_address = "127.0.0.1:{ATTESTATION_SERVICE_PORT}"
# UNSAFE outside development: accept evidence from the simulated TEE.
unsafe_allow_simulation = true

[storage]
backend = "sqlite"
path = "storage/kettle.db"

[file_agent]
# Development only: where Teaclave's examples serve their fixture files. Nothing
# else on this machine or its network is reachable from a task's URLs.
egress_allowlist = ["localhost:6789", "127.0.0.1:6789"]
"""


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def auditor_dir(home: Path) -> Path:
    return home / "auditors"


def create_dev_auditors(home: Path, names: tuple[str, ...] = DEV_AUDITORS) -> dict[str, rsa.RSAPublicKey]:
    """The dev auditors' public keys; their key pairs are made where missing.

    Each public half is kept beside its private key (``NAME.public.pem``): setting a
    home up again reads it rather than loading the RSA-4096 private key, whose
    consistency check costs far more than anything else here. The private keys are
    loaded only to sign enclave info that changed (:func:`publish_enclave_info`).
    """
    directory = auditor_dir(home)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    keys: dict[str, rsa.RSAPublicKey] = {}
    for name in names:
        path = directory / f"{name}.key.pem"
        public_path = directory / f"{name}{PUBLIC_KEY_SUFFIX}"
        if path.exists() and public_path.exists():
            public = serialization.load_pem_public_key(public_path.read_bytes())
            if not isinstance(public, rsa.RSAPublicKey):
                raise ValueError(f"{public_path} is not an RSA public key")
            keys[name] = public
            continue
        if path.exists():
            key = load_auditor_private_key(path)
        else:
            key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
            # PKCS#1 "RSA PRIVATE KEY", as Teaclave's auditor keys.
            _write_private(path, key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            ))
        keys[name] = key.public_key()
        public_path.write_bytes(keys[name].public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1))
    return keys


def load_auditor_private_key(path: Path) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{path} is not an RSA private key")
    return key


def measure_all(home: Path) -> EnclaveInfo:
    build = BuildConfig.load(home)
    return EnclaveInfo(
        {s: Measurement(measure_service(s, build.raw), SIMULATION_MR_SIGNER) for s in SERVICES}
    )


def publish_enclave_info(home: Path, info: EnclaveInfo, config: Config) -> bool:
    """Write enclave info and dev auditor signatures if it changed; True if it did."""
    path = config.enclave_info_path
    data = info.render()
    if path.exists() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    for key_path in sorted(auditor_dir(home).glob("*.key.pem")):
        name = key_path.name.removesuffix(".key.pem")
        signature = sign_enclave_info(data, load_auditor_private_key(key_path))
        (path.parent / f"{name}{SIGNATURE_SUFFIX}").write_bytes(signature)
    return True


def attestation_service_names(config: Config) -> list[str]:
    """The names the AS's TLS certificate is valid for: loopback, and the host of
    ``[attestation] service_url``, which services on other machines dial (and check)."""
    names = ["localhost", "127.0.0.1", "::1"]
    host = urllib.parse.urlsplit(config.attestation.service_url).hostname
    if host and host not in names:
        names.append(host)
    return names


def init_dev_home(home: Path) -> Config:
    """Create whatever is missing in a development home and refresh enclave info; idempotent."""
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    config_file = home / "kettle.toml"
    if not config_file.exists() and not os.environ.get("KETTLE_CONFIG"):
        config_file.write_text(DEV_CONFIG)
    config = load_config(home)
    create_simulation_platform(home)
    auditors = create_dev_auditors(home)
    build_path = BuildConfig.path_in(home)
    if not build_path.exists():
        build_path.parent.mkdir(parents=True, exist_ok=True)
        build_path.write_bytes(BuildConfig.render(auditors, threshold=len(auditors)))
    trust = home / "trust"
    trust.mkdir(parents=True, exist_ok=True)
    for name, key in auditors.items():
        (trust / f"{name}{PUBLIC_KEY_SUFFIX}").write_bytes(
            key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
        )
    create_authority(home, simulation=True, server_names=attestation_service_names(config))
    if publish_enclave_info(home, measure_all(home), config):
        log.info("enclave info re-measured and signed by the dev auditors")
    return config
