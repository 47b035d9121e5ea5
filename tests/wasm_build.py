"""The C test payloads (``tests/data/wasm``) compiled for wasm32 at test time with clang and wasm-ld.

No prebuilt module is kept in the repository: each is built from its source
here, freestanding (no libc, no WASI), so that its only imports are the host
functions it declares in ``teaclave_wasm.h``. ``.ci/run`` installs the
toolchain (Debian's ``clang``, ``lld`` and ``wasi-libc``).
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from pathlib import Path

PAYLOADS = Path(__file__).parent / "data" / "wasm"
FLAGS = ("--target=wasm32", "-O2", "-nostdlib", "-Wl,--no-entry", "-Wall", "-Werror")
"""The reference's flags for its C examples, with explicit imports instead of ``--allow-undefined``."""


@functools.cache
def _build_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="kettle-wasm-"))


@functools.cache
def compile_c(name: str) -> bytes:
    """``tests/data/wasm/<name>.c`` as a WebAssembly module."""
    for tool in ("clang", "wasm-ld"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is missing: the WebAssembly tests build their payloads with it "
                               "(.ci/run installs clang, lld and wasi-libc)")
    target = _build_dir() / f"{name}.wasm"
    result = subprocess.run(["clang", *FLAGS, "-o", str(target), str(PAYLOADS / f"{name}.c")],
                            capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"compiling {name}.c failed:\n{result.stderr}")
    return target.read_bytes()
