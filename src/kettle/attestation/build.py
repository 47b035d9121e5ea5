"""The measured build configuration: what Teaclave compiles into each enclave.

Teaclave compiles the auditors' public keys into every enclave, so a host cannot
swap them. Kettle's equivalent is ``$KETTLE_HOME/build/build.toml``: it is read
only at start-up and its bytes are part of every service's measurement
(:mod:`kettle.attestation.measurement`), so a service started with other auditor
keys has another measurement and the attestation service refuses it.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ..errors import ConfigError


@dataclass(frozen=True)
class BuildConfig:
    auditors: dict[str, rsa.RSAPublicKey]
    threshold: int
    raw: bytes
    """The exact file bytes, measured as they are."""

    @staticmethod
    def path_in(home: Path) -> Path:
        return home / "build" / "build.toml"

    @classmethod
    def load(cls, home: Path) -> BuildConfig:
        path = cls.path_in(home)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise ConfigError(f"build configuration {path} is missing (run `kettle up` or `kettle init`)") from None
        return cls.parse(raw)

    @classmethod
    def parse(cls, raw: bytes) -> BuildConfig:
        try:
            data = tomllib.loads(raw.decode())
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"build configuration is not valid TOML: {exc}") from None
        auditors: dict[str, rsa.RSAPublicKey] = {}
        for name, pem in (data.get("auditors") or {}).items():
            try:
                key = serialization.load_pem_public_key(pem.encode())
            except (ValueError, AttributeError):
                raise ConfigError(f"auditor {name!r}: not a PEM public key") from None
            if not isinstance(key, rsa.RSAPublicKey) or key.key_size < 2048:
                raise ConfigError(f"auditor {name!r}: must be an RSA key of at least 2048 bits")
            auditors[name] = key
        if not auditors:
            raise ConfigError("build configuration names no auditor")
        threshold = data.get("threshold", len(auditors))
        if not isinstance(threshold, int) or not 1 <= threshold <= len(auditors):
            raise ConfigError(f"build threshold must be between 1 and {len(auditors)}")
        return cls(auditors=auditors, threshold=threshold, raw=raw)

    @staticmethod
    def render(auditors: dict[str, rsa.RSAPublicKey], threshold: int) -> bytes:
        lines = [f"threshold = {threshold}", "", "[auditors]"]
        for name in sorted(auditors):
            pem = auditors[name].public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
            ).decode()
            lines.append(f'{name} = """\n{pem}"""')
        return ("\n".join(lines) + "\n").encode()
