"""Attestation cost: evidence verification per TEE kind, cold and warm, and the attested TLS handshake.

Measures, in one run:

* verifying each kind of evidence, against the baseline of a simulation quote
  (``verify_simulation_quote``, one ECDSA P-256 verification):
  - an SEV-SNP report: the real vector (``tests/data/tee/snp``, AMD's roots) and a report
    of the test hardware roots (fresh keys), VCEK chain, report signature and TCB;
  - a TDX and an SGX DCAP quote (the real vectors, Intel's root, at their collateral's time);
  - **cold**: the collateral cache is empty, so the VCEK or Intel collateral is fetched
    from a real HTTP server on 127.0.0.1 (KDS- and PCCS-shaped, serving the vectors'
    certificates and collateral), checked and written to disk, then the evidence verified;
  - **warm**: the same evidence with the collateral already cached (read from disk);
  - **given**: the same evidence with the collateral bytes handed in, no cache at all
    (what ``--cert``/``--collateral`` do), so warm minus given is the cache's own cost;
* the attested TLS handshake: a TLS handshake to a server presenting a Kettle attested
  certificate (issued by the attestation service's in-process issuer on simulation
  evidence) followed by ``Verifier.verify`` of that certificate, against a plain TLS
  handshake to a server with an ordinary P-256 certificate, both on loopback.

Each number is the median of ``--repeat`` runs (cold rows: a fifth of them, at least 3).

    .venv/bin/python bench/bench_attestation.py [--repeat 100] [--quick]
"""

from __future__ import annotations

import argparse
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))

from attested_identities import attested_home
from collateral_servers import CollateralServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from snp_test_roots import INSIDE, SnpTestHardware

from kettle.attestation.backends import (
    SimulationBackend,
    create_simulation_platform,
    load_simulation_platform_key,
    verify_simulation_quote,
)
from kettle.attestation.collateral import CollateralCache, quote_platform
from kettle.attestation.dcap import DcapPolicy, examine_dcap_quote
from kettle.attestation.snp import SnpTcb, examine_snp_report
from kettle.provisioning import create_dev_auditors
from kettle.sdk.attested import fetch_certificate

TEE = REPO / "tests" / "data" / "tee"
SGX_POLICY = DcapPolicy({"ConfigurationAndSWHardeningNeeded": frozenset({"INTEL-SA-00289", "INTEL-SA-00615"})})


def timed(runs: int, action: Callable[[], object], setup: Callable[[], object] = lambda: None) -> float:
    """Median seconds of ``runs`` calls of ``action``; ``setup`` runs untimed before each."""
    samples = []
    for _ in range(runs):
        setup()
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


class Evidence:
    """One piece of evidence: how to verify it with collateral from a cache, cold or warm."""

    def __init__(self, label: str, verify: Callable[[CollateralCache], bool], cache: Callable[[Path], CollateralCache]) -> None:
        self.label, self.verify, self.cache = label, verify, cache


class Given:
    """Collateral already in memory, handed to the verifier as a caller with files would."""

    def __init__(self, cache: CollateralCache) -> None:
        self.vcek: bytes | None = None
        self.collateral: bytes | None = None
        self._cache = cache

    def snp_certificate(self, report: bytes) -> bytes:
        if self.vcek is None:
            self.vcek = self._cache.snp_certificate(report)
        return self.vcek

    def dcap_collateral(self, quote: bytes) -> bytes:
        if self.collateral is None:
            self.collateral = self._cache.dcap_collateral(quote)
        return self.collateral


def evidence_kinds(server: CollateralServer) -> list[Evidence]:
    kinds = []

    report = (TEE / "snp" / "test-report.bin").read_bytes()
    server.serve_vcek("Milan", report[0x1A0:0x1E0], SnpTcb.from_bytes(report[0x180:0x188], "Milan"),
                      (TEE / "snp" / "test-vcek.der").read_bytes())
    snp_at = datetime(2025, 6, 1, tzinfo=UTC)
    kinds.append(Evidence(
        "SEV-SNP report, real vector (AMD roots)",
        lambda c: examine_snp_report(report, certificate=c.snp_certificate(report), at=snp_at).ok,
        lambda d: CollateralCache(d, amd_kds_url=server.url, clock=lambda: snp_at),
    ))

    hardware = SnpTestHardware.make("Milan")
    test_report = hardware.report()
    server.serve_vcek("Milan", hardware.chip_id, hardware.tcb, hardware.vcek)
    kinds.append(Evidence(
        "SEV-SNP report, test hardware roots",
        lambda c: examine_snp_report(test_report, certificate=c.snp_certificate(test_report), at=INSIDE, roots=hardware.roots).ok,
        lambda d: CollateralCache(d, amd_kds_url=server.url, clock=lambda: INSIDE, snp_roots=hardware.roots),
    ))

    for name, at, policy in (("tdx", "2025-06-19T11:16:03Z", DcapPolicy()), ("sgx", "2025-06-19T11:56:11Z", SGX_POLICY)):
        quote = (TEE / "dcap" / f"{name}_quote").read_bytes()
        tee, fmspc, ca = quote_platform(quote)
        server.serve_intel((TEE / "dcap" / f"{name}_quote_collateral.json").read_bytes(), tee=tee, fmspc=fmspc, ca=ca)
        moment = datetime.fromisoformat(at)

        def verify(c: CollateralCache, quote: bytes = quote, moment: datetime = moment, policy: DcapPolicy = policy) -> bool:
            return examine_dcap_quote(quote, collateral=c.dcap_collateral(quote), at=moment, policy=policy).ok

        kinds.append(Evidence(
            f"{name.upper()} quote, real vector (Intel root)",
            verify,
            lambda d, moment=moment: CollateralCache(d, intel_pcs_url=server.url, clock=lambda: moment),
        ))
    return kinds


def tls_server(chain_pem: bytes, key_pem: bytes, work: Path) -> tuple[str, Callable[[], None]]:
    """A loopback TLS server that completes handshakes with ``chain_pem`` until stopped."""
    (work / "chain.pem").write_bytes(chain_pem)
    (work / "key.pem").write_bytes(key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(work / "chain.pem", work / "key.pem")
    context.set_alpn_protocols(["h2"])
    listener = socket.create_server(("127.0.0.1", 0))
    stopping = threading.Event()

    def serve() -> None:
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                with context.wrap_socket(conn, server_side=True):
                    pass
            except (OSError, ssl.SSLError):
                pass

    threading.Thread(target=serve, daemon=True).start()

    def stop() -> None:
        stopping.set()
        listener.close()

    return f"127.0.0.1:{listener.getsockname()[1]}", stop


def plain_certificate() -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "plain")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=100, help="runs per warm measurement (default 100); the median is reported")
    parser.add_argument("--quick", action="store_true", help="10 runs per measurement")
    args = parser.parse_args()
    runs = 10 if args.quick else args.repeat
    cold_runs = max(3, runs // 5)

    with tempfile.TemporaryDirectory(prefix="bench-attestation-") as temp, CollateralServer() as server:
        work = Path(temp)
        rows: list[tuple[str, float, str]] = []

        create_simulation_platform(work / "sim")
        backend = SimulationBackend(work / "sim", bytes(32), bytes(32), "bench")
        platform_key = load_simulation_platform_key(work / "sim")
        quote = backend.evidence(bytes(64)).quote
        baseline = timed(runs, lambda: verify_simulation_quote(quote, platform_key))
        rows.append(("simulation quote (baseline)", baseline, "1.0×"))

        counter = iter(range(1_000_000))
        for kind in evidence_kinds(server):
            cache_dir: list[Path] = []

            def fresh_cache(kind: Evidence = kind, cache_dir: list[Path] = cache_dir) -> None:
                cache_dir[:] = [work / f"cold-{next(counter)}"]

            cold = timed(cold_runs, lambda kind=kind, cache_dir=cache_dir: _check(kind.verify(kind.cache(cache_dir[0]))), fresh_cache)
            warm_cache = kind.cache(work / f"warm-{next(counter)}")
            _check(kind.verify(warm_cache))
            fetches = server.requests[:]
            warm = timed(runs, lambda kind=kind, warm_cache=warm_cache: _check(kind.verify(warm_cache)))
            assert server.requests == fetches, "a warm verification fetched"
            given_collateral = Given(warm_cache)
            _check(kind.verify(given_collateral))  # type: ignore[arg-type]
            given = timed(runs, lambda kind=kind, g=given_collateral: _check(kind.verify(g)))  # type: ignore[arg-type]
            rows.append((f"{kind.label}, cold (fetched from local HTTP)", cold, f"{cold / baseline:.0f}×"))
            rows.append((f"{kind.label}, warm (cached)", warm, f"{warm / baseline:.0f}×"))
            rows.append((f"{kind.label}, given (no cache)", given, f"{given / baseline:.0f}×"))

        create_dev_auditors(work / "auditors-cache")
        home = attested_home(work / "home", work / "auditors-cache" / "auditors")
        identity = home.identity("frontend", time.time())
        verifier = home.verifier(time.time())
        attested_address, stop_attested = tls_server(identity.chain_pem, identity.key_pem, work / "home")
        plain_pem, plain_key = plain_certificate()
        (work / "plain").mkdir()
        plain_address, stop_plain = tls_server(plain_pem, plain_key, work / "plain")
        (work / "plain" / "root.pem").write_bytes(plain_pem)
        try:
            plain = timed(runs, lambda: fetch_certificate(plain_address, work / "plain" / "root.pem"))
            attested = timed(runs, lambda: verifier.verify(fetch_certificate(attested_address, home.config.as_root_path),
                                                           expected_services={"frontend"}))
            alone = timed(runs, lambda: verifier.verify(identity.certificate, expected_services={"frontend"}))
        finally:
            stop_attested()
            stop_plain()
        handshake_rows = [
            ("plain TLS handshake, loopback (baseline)", plain, "1.0×"),
            ("attested TLS handshake + Verifier.verify", attested, f"{attested / plain:.1f}×"),
            ("Verifier.verify alone (attested certificate)", alone, f"{alone / plain:.2f}×"),
        ]

    print(f"evidence verification (median of {runs} warm, {cold_runs} cold runs; ratio to the simulation quote)")
    for label, seconds, ratio in rows:
        print(f"  {label:<70} {seconds * 1e3:9.3f} ms  {ratio:>8}")
    print(f"TLS handshakes (median of {runs}; ratio to plain TLS)")
    for label, seconds, ratio in handshake_rows:
        print(f"  {label:<70} {seconds * 1e3:9.3f} ms  {ratio:>8}")


def _check(ok: bool) -> None:
    if not ok:
        raise SystemExit("evidence that must verify was refused")


if __name__ == "__main__":
    main()
