"""A service's measurement, derived from the code it runs.

In a real TEE the CPU measures what it loads. In simulation Kettle measures the
installed ``kettle`` package as it is on disk: every ``.py`` file, except other
services' own packages (so a change in one service does not move the others),
plus the measured build configuration. Changing one byte of any of those files
changes MRENCLAVE. The interpreter and third-party libraries are not measured in
simulation; a real-TEE deployment measures the whole image.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import kettle

_DOMAIN = b"kettle-measurement-v1\0"
SIMULATION_MR_SIGNER = hashlib.sha256(b"kettle simulation signer v1").digest()


def package_root() -> Path:
    return Path(kettle.__file__).resolve().parent


def measured_files(service: str, root: Path | None = None) -> list[Path]:
    """The files that make up ``service``'s code, sorted by their path in the package."""
    root = root or package_root()
    services_dir = root / "services"
    files = []
    for path in sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix()):
        rel = path.relative_to(root)
        if "__pycache__" in rel.parts:
            continue
        if path.is_relative_to(services_dir) and len(rel.parts) > 2 and rel.parts[1] != service:
            continue
        files.append(path)
    return files


def measure_service(service: str, build_config: bytes, root: Path | None = None) -> bytes:
    """MRENCLAVE of ``service``: SHA-256 over its file names and contents and the build config."""
    root = root or package_root()
    digest = hashlib.sha256(_DOMAIN + service.encode() + b"\0")
    for path in measured_files(service, root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    digest.update(b"build\0" + hashlib.sha256(build_config).digest())
    return digest.digest()
