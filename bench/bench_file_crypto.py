"""File crypto throughput and memory, against one-shot ``cryptography`` AES-GCM on the same bytes.

Measures, on one plaintext file of SIZE random bytes:

* ``teaclave-file-128`` write (``ProtectedFileWriter``) and full verified read
  (``ProtectedFileReader``);
* ``aes-gcm-256`` streaming encrypt (``encrypt_file``) and
  ``decrypt_to_staging`` (verified decryption into encrypted scratch);
* the data owner's recipes (``kettle.crypto.recipes.encrypt`` / ``decrypt``:
  temp file, fsync, atomic publish; aes-gcm decrypt = staging + copy out);
* the baseline, in the same run on the same bytes: ``AESGCM.encrypt`` /
  ``AESGCM.decrypt`` one-shot in memory, AES-256 (for aes-gcm-256) and AES-128
  (what teaclave-file-128 uses for every node).

MB/s is 10^6 plaintext bytes per second, the median of ``--repeat`` runs; the
ratio is against the one-shot baseline of the same AES key size. Peak RSS
growth is ``ru_maxrss`` now minus before the first measurement: the streaming
rows run first, so a small number there shows memory does not grow with SIZE;
the baseline rows run last and show what holding the file in memory costs.

    .venv/bin/python bench/bench_file_crypto.py [--size-mib 256] [--quick] [--repeat 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from kettle.crypto import recipes  # noqa: E402
from kettle.crypto.aes_gcm import decrypt_to_staging, encrypt_file  # noqa: E402
from kettle.crypto.protected_file import ProtectedFileReader, ProtectedFileWriter  # noqa: E402

MIB = 1 << 20
CHUNK = MIB
AAD = bytes(8)


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def timed(runs: int, action: Callable[[], object], cleanup: Callable[[], object] = lambda: None) -> float:
    """Median seconds of ``runs`` calls of ``action``; ``cleanup`` runs untimed after each."""
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
        cleanup()
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256, help="plaintext size in MiB (default 256)")
    parser.add_argument("--quick", action="store_true", help="32 MiB, one run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the median is reported")
    parser.add_argument("--dir", type=Path, default=None, help="where the files go (default: the system temp dir)")
    args = parser.parse_args()
    size = (32 if args.quick else args.size_mib) * MIB
    runs = 1 if args.quick else args.repeat

    with tempfile.TemporaryDirectory(prefix="bench-file-crypto-", dir=args.dir) as temp:
        work = Path(temp)
        plain = work / "plain.bin"
        with plain.open("wb") as sink:
            for _ in range(size // MIB):
                sink.write(os.urandom(MIB))
            sink.write(os.urandom(size % MIB))
        key128, key256, iv = os.urandom(16), os.urandom(32), os.urandom(12)
        pf, gcm = work / "plain.pf", work / "plain.gcm"
        rows: list[tuple[str, float, str, float]] = []
        baseline_started = max_rss_mib()

        def row(label: str, seconds: float, against: str) -> None:
            rows.append((label, size / seconds / 1e6, against, max_rss_mib() - baseline_started))

        def pf_write() -> None:
            with plain.open("rb") as source, pf.open("w+b") as sink:
                writer = ProtectedFileWriter(sink, key128, pf.name)
                while chunk := source.read(CHUNK):
                    writer.write(chunk)
                writer.close()

        def pf_read() -> None:
            with pf.open("rb") as source:
                for _ in ProtectedFileReader(source, key128, pf.name):
                    pass

        def gcm_encrypt() -> None:
            with plain.open("rb") as source, gcm.open("wb") as sink:
                encrypt_file(source, sink, key256, iv)

        tag = b""

        def gcm_stage() -> None:
            with gcm.open("rb") as source:
                decrypt_to_staging(source, key256, iv, tag, work).delete()

        row("teaclave-file-128 write (ProtectedFileWriter)", timed(runs, pf_write), "AES-128")
        row("teaclave-file-128 read, verified (ProtectedFileReader)", timed(runs, pf_read), "AES-128")
        row("aes-gcm-256 encrypt (encrypt_file)", timed(runs, gcm_encrypt), "AES-256")
        tag = _tail(gcm)
        row("aes-gcm-256 decrypt_to_staging", timed(runs, gcm_stage), "AES-256")

        out = work / "recipe.out"
        for schema, against in (("teaclave-file-128", "AES-128"), ("aes-gcm-256", "AES-256")):
            encrypted = work / f"recipe-{schema}.enc"
            keys: list[recipes.FileKey] = []

            def recipe_encrypt(schema: str = schema, encrypted: Path = encrypted, keys: list[recipes.FileKey] = keys) -> None:
                keys.append(recipes.FileKey.generate(schema))  # aes-gcm: a fresh key per file, as the recipe demands
                recipes.encrypt(plain, encrypted, keys[-1], overwrite=True)

            row(f"{schema} recipes.encrypt", timed(runs, recipe_encrypt), against)
            row(
                f"{schema} recipes.decrypt",
                timed(runs, lambda e=encrypted, k=keys: recipes.decrypt(e, out, k[-1]), lambda: out.unlink()),
                against,
            )
        streaming_peak = max_rss_mib() - baseline_started

        data = plain.read_bytes()
        for label, key, against in (("AES-128", key128, "AES-128"), ("AES-256", key256, "AES-256")):
            aead = AESGCM(key)
            sealed = aead.encrypt(iv, data, AAD)
            row(f"baseline one-shot AESGCM encrypt ({label})", timed(runs, lambda a=aead: a.encrypt(iv, data, AAD)), against)
            row(f"baseline one-shot AESGCM decrypt ({label})", timed(runs, lambda a=aead, s=sealed: a.decrypt(iv, s, AAD)), against)
            del sealed

    def kind(label: str) -> str:
        return "decrypt" if "read" in label or "decrypt" in label else "encrypt"

    baseline = {(against, kind(label)): mbps for label, mbps, against, _ in rows if label.startswith("baseline")}
    print(f"plaintext {size / MIB:.0f} MiB, median of {runs} run(s), files in {args.dir or tempfile.gettempdir()}")
    print(f"cryptography {_version('cryptography')}, Python {sys.version.split()[0]}, {os.cpu_count()} CPU(s)")
    print(f"{'operation':58} {'MB/s':>8} {'vs one-shot':>14} {'peak RSS growth':>16}")
    for label, mbps, against, rss in rows:
        ratio = f"{mbps / baseline[against, kind(label)]:.2f}x {against}"
        print(f"{label:58} {mbps:8.0f} {ratio:>14} {rss:13.1f} MiB")
    print(f"streaming rows together: peak RSS growth {streaming_peak:.1f} MiB for a {size / MIB:.0f} MiB file")


def _tail(path: Path) -> bytes:
    with path.open("rb") as source:
        source.seek(-16, os.SEEK_END)
        return source.read()


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    main()
