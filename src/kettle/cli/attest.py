"""``kettle attest``: a service's attestation, this machine's TEEs, and TEE evidence by hand.

- ``kettle attest HOST:PORT`` (the ``endpoint`` command, the default) shows a running
  service's evidence and whether it verifies; ``kettle attest --local`` which TEE
  backends this machine offers.
- ``kettle attest evidence FILE --kind sev-snp|tdx|sgx`` verifies a standalone SEV-SNP
  report or DCAP quote offline against the vendor roots shipped with the package, for
  auditors and operators (``docs/attestation.md``).
- ``kettle attest collateral import|export|status|fetch`` manages the collateral cache
  (VCEKs, Intel collateral) that verification uses when none is given by hand.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import typer
from cryptography import x509
from rich.markup import escape
from typer.core import TyperGroup

from ..config import load_config
from ..errors import KettleError
from .main import one_line_errors, out

if TYPE_CHECKING:
    from ..attestation.collateral import CollateralCache
    from ..attestation.hardware import HardwareVerdict
    from ..attestation.verifier import Check, Verdict
    from ..sdk.attested import HardwareTrust

DEFAULT_COMMAND = "endpoint"
EVIDENCE_KINDS = ("sev-snp", "tdx", "sgx")


class _AttestGroup(TyperGroup):
    """Subcommands beside the historical form: whatever is not a subcommand's name
    (``HOST:PORT``, ``--local``, ``--json``) goes to :data:`DEFAULT_COMMAND`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = [DEFAULT_COMMAND, *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_AttestGroup, no_args_is_help=True,
    help="Attestation: a service's (HOST:PORT), this machine's TEEs (--local), or a TEE report or quote (evidence FILE).",
)


@app.command("endpoint")
@one_line_errors
def attest_endpoint(
    address: str = typer.Argument(None, help="HOST:PORT of a Kettle API endpoint"),
    service_name: str = typer.Option(None, "--service", help="the service expected there (default: any in enclave info)"),
    local: bool = typer.Option(False, "--local", help="instead: which TEE backends this machine offers, and why not the others"),
    hardware: bool = typer.Option(
        False, "--hardware", help="also verify the service's TEE evidence yourself, against AMD's and Intel's roots"
    ),
    without_as: bool = typer.Option(
        False, "--without-as", help="verify only the TEE evidence: trust neither the AS root nor its report (needs --service)"
    ),
    collateral: Path = typer.Option(None, "--collateral", help="--hardware, tdx/sgx: Intel's collateral (JSON, as dcap-qvl reads it)"),
    vcek: Path = typer.Option(None, "--vcek", help="--hardware, sev-snp: the VCEK or VLEK, when the certificate carries none"),
    allow_status: list[str] = typer.Option(
        [], "--allow-status", help="--hardware, tdx/sgx: also accept this TCB status: STATUS[:ADVISORY,ADVISORY...]"
    ),
    unsafe_test_roots: Path = typer.Option(
        None, "--unsafe-test-roots", help="--hardware: test hardware roots instead of AMD's and Intel's (proves nothing)"
    ),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Show a service's attestation evidence and whether it verifies, with reasons (or, with --local, this machine's TEEs).

    The default: ``kettle attest HOST:PORT`` and ``kettle attest --local`` run this.
    With ``--hardware`` the TEE evidence in the certificate is also checked against the
    vendor roots; with ``--without-as`` only that. Exit status 1 when anything is refused.
    """
    if local:
        if address is not None:
            raise typer.BadParameter("--local takes no address")
        _attest_local(as_json)
        return
    if address is None:
        raise typer.BadParameter("give HOST:PORT of an endpoint, or --local")
    hardware = hardware or without_as
    if not hardware and (collateral or vcek or allow_status or unsafe_test_roots):
        raise typer.BadParameter("--collateral, --vcek, --allow-status and --unsafe-test-roots go with --hardware")
    if without_as and not service_name:
        # The AS report names the service otherwise; without it the caller says which one it expects.
        raise typer.BadParameter("--without-as needs --service (which service's measurements to expect)")
    from ..attestation.trust import client_enclave_info
    from ..sdk.attested import examine_endpoint, fetch_certificate

    hardware_trust = _hardware_trust(collateral, vcek, allow_status, unsafe_test_roots) if hardware else None
    verdict = None
    if without_as:
        config = load_config()
        enclave_info = client_enclave_info(config.enclave_info_path, config.audit.threshold)
        cert = x509.load_der_x509_certificate(fetch_certificate(address, None))
    else:
        from ..sdk.attested import ClientTrust

        trust = ClientTrust.from_config()
        verdict, cert = examine_endpoint(address, service_name, trust)
        enclave_info = trust.enclave_info
    hardware_verdict = None
    if hardware_trust is not None:
        from ..attestation.hardware import HardwareVerdict
        from ..attestation.verifier import Check

        service = service_name or (verdict.peer.service if verdict and verdict.peer else "")
        if service:
            hardware_verdict = hardware_trust.examine(cert, enclave_info, service, datetime.now(UTC))
        else:  # the AS checks above say why; the hardware checks need to know which service to expect
            hardware_verdict = HardwareVerdict([Check(
                "service", False, "the attestation service's report names no service of enclave info; give --service"
            )])
    ok = (verdict is None or verdict.ok) and (hardware_verdict is None or hardware_verdict.ok)
    if as_json:
        data: dict[str, Any] = {"address": address, "verified": ok,
                                "certificate_not_after": cert.not_valid_after_utc.isoformat()}
        if verdict is not None:
            data.update(_as_verdict_json(verdict))
        if hardware_verdict is not None:
            data["hardware"] = _hardware_json(hardware_verdict)
        out.print_json(data=data)
    else:
        out.print(f"[bold]{address}[/bold]  certificate: {escape(cert.subject.rfc4514_string())}", highlight=False)
        if verdict is not None:
            _print_as_verdict(verdict)
        if hardware_verdict is not None:
            _print_hardware_verdict(hardware_verdict)
        reason = next((v.reason for v in (verdict, hardware_verdict) if v is not None and not v.ok), "")
        out.print("[bold green]verified[/bold green]" if ok else f"[bold red]NOT verified[/bold red]: {escape(reason)}",
                  highlight=False)
    if not ok:
        raise typer.Exit(1)


def _as_verdict_json(verdict: Verdict) -> dict[str, Any]:
    peer = verdict.peer
    return {
        "reason": verdict.reason,
        "service": peer.service if peer else None,
        "mr_enclave": peer.mr_enclave.hex() if peer else None,
        "mr_signer": peer.mr_signer.hex() if peer else None,
        "tee_type": peer.tee_type if peer else None,
        "simulation": peer.simulation if peer else None,
        "checks": [{"check": c.name, "ok": c.ok, "detail": c.detail} for c in verdict.checks],
    }


def _hardware_json(verdict: HardwareVerdict) -> dict[str, Any]:
    return {
        "verified": verdict.ok,
        "reason": verdict.reason,
        "evidence": verdict.summary,
        "checks": [{"check": c.name, "ok": c.ok, "detail": c.detail} for c in verdict.checks],
    }


def _print_checks(checks: list[Check]) -> None:
    for check in checks:
        mark = "[green]ok[/green]  " if check.ok else "[red]FAIL[/red]"
        out.print(f"  {mark} {check.name}: {escape(check.detail)}", highlight=False)


def _print_as_verdict(verdict: Verdict) -> None:
    peer = verdict.peer
    out.print("[bold]attestation service[/bold] (pinned AS root)")
    if peer:
        out.print(f"  service     {peer.service or '(unknown)'}")
        out.print(f"  tee         {peer.tee_type}{'  [bold yellow]SIMULATION (not a TEE)[/bold yellow]' if peer.simulation else ''}")
        out.print(f"  mr_enclave  {peer.mr_enclave.hex()}")
        out.print(f"  mr_signer   {peer.mr_signer.hex()}")
        out.print(f"  status      {peer.status}, report time {peer.report_time:%Y-%m-%d %H:%M:%S} UTC")
    _print_checks(verdict.checks)


def _print_hardware_verdict(verdict: HardwareVerdict) -> None:
    out.print("[bold]hardware[/bold] (vendor roots, not the attestation service)")
    for name, value in verdict.summary.items():
        out.print(f"  {name:<12}{escape(str(value))}", highlight=False)
    _print_checks(verdict.checks)


def _hardware_trust(collateral: Path | None, vcek: Path | None, allow_status: list[str],
                    unsafe_test_roots: Path | None) -> HardwareTrust:
    """The vendor roots (or test roots); collateral from the given files, else the home's collateral cache."""
    from ..attestation.dcap import DcapPolicy
    from ..attestation.hardware import FixedCollateral
    from ..sdk.attested import HardwareTrust

    source = None
    if collateral is not None or vcek is not None:
        source = FixedCollateral(dcap=collateral.read_bytes() if collateral else None,
                                 snp=vcek.read_bytes() if vcek else None)
    # --allow-status replaces the home's allowed_tcb_status; without it the home's setting holds.
    dcap_policy = DcapPolicy(allowed=_allowed_statuses(allow_status)) if allow_status else None
    return HardwareTrust.for_config(load_config(), unsafe_test_roots=unsafe_test_roots, collateral=source,
                                    dcap_policy=dcap_policy)


def _attest_local(as_json: bool) -> None:
    """Probe every backend; exit 1 when the configured one could not start here."""
    from ..attestation.providers import (
        AUTO,
        choose_backend,
        guest_devices,
        probe_backends,
    )

    settings = load_config().attestation
    probes = probe_backends(
        Path(settings.configfs_tsm_path), Path(settings.gramine_attestation_path), settings.unsafe_allow_simulation,
        guest_devices(Path(settings.snp_guest_device)),
    )
    try:
        chosen: str | None = choose_backend(probes)
        refusal = None
    except KettleError as exc:
        chosen, refusal = None, exc.message
    usable = {p.backend for p in probes if p.usable}
    configured_ok = chosen is not None if settings.backend == AUTO else settings.backend in usable
    if as_json:
        out.print_json(data={
            "configured": settings.backend,
            "configured_usable": configured_ok,
            "auto_choice": chosen,
            "auto_refusal": refusal,
            "backends": [{"backend": p.backend, "usable": p.usable, "detail": p.detail} for p in probes],
        })
    else:
        for probe in probes:
            mark = "[green]found[/green]" if probe.usable else "[red]no[/red]   "
            out.print(f"  {mark} {probe.backend}: {escape(probe.detail)}", highlight=False)
        out.print(f"auto would choose: {chosen}" if chosen else f"auto would refuse: {escape(refusal or '')}", highlight=False)
        state = "[green]usable here[/green]" if configured_ok else "[bold red]NOT usable here[/bold red]"
        out.print(f"configured backend: {settings.backend} ({state})", highlight=False)
    if not configured_ok:
        raise typer.Exit(1)


@app.command("evidence")
@one_line_errors
def attest_evidence(
    file: Path = typer.Argument(..., help="the report (SEV-SNP, 1184 bytes) or quote (TDX, SGX), raw bytes"),
    kind: str = typer.Option(..., "--kind", help="sev-snp, tdx or sgx"),
    cert: Path = typer.Option(None, "--cert", help="sev-snp: the VCEK or VLEK that signed the report (DER or PEM)"),
    collateral: Path = typer.Option(None, "--collateral", help="tdx, sgx: Intel's collateral (JSON, as dcap-qvl reads it)"),
    at: str = typer.Option(None, "--at", help="judge as of this time (ISO-8601; default: now)"),
    allow_status: list[str] = typer.Option(
        [], "--allow-status",
        help="tdx, sgx: also accept this TCB status, with the advisories it may carry: STATUS[:ADVISORY,ADVISORY...]",
    ),
    enclave_info: Path = typer.Option(
        None, "--enclave-info", help="check the measurement against this auditor-signed enclave info (keys beside it)"
    ),
    collateral_dir: Path = typer.Option(
        None, "--collateral-dir",
        help="without --cert/--collateral: the collateral cache to take them from (default: attestation.collateral_dir)",
    ),
    fetch: bool = typer.Option(False, "--fetch", help="without --cert/--collateral: fetch what the cache lacks (default: offline)"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Verify a TEE report or quote offline against the vendor roots shipped with Kettle; exit 0 accepted, 1 refused.

    Without --cert (sev-snp) or --collateral (tdx, sgx) the VCEK or Intel collateral comes
    from the collateral cache, judged as of --at; it is fetched only with --fetch.
    """
    if kind not in EVIDENCE_KINDS:
        raise typer.BadParameter(f"--kind must be one of {', '.join(EVIDENCE_KINDS)}")
    when = _parse_time(at)
    evidence = file.read_bytes()
    given = cert if kind == "sev-snp" else collateral
    if given is not None and (collateral_dir is not None or fetch):
        raise typer.BadParameter("--collateral-dir and --fetch are for evidence verified without --cert/--collateral")

    def cached() -> CollateralCache:
        return _cache(collateral_dir, offline=not fetch, clock=lambda: when)

    if kind == "sev-snp":
        if allow_status or collateral is not None:
            raise typer.BadParameter("--allow-status and --collateral are for tdx and sgx quotes")
        certificate = cert.read_bytes() if cert is not None else _from_cache(lambda: cached().snp_certificate(evidence), "--cert")
        verdict, subject = _examine_snp(evidence, certificate, when, enclave_info)
    else:
        if cert is not None:
            raise typer.BadParameter("--cert is for sev-snp reports")
        collateral_json = (
            collateral.read_bytes() if collateral is not None
            else _from_cache(lambda: cached().dcap_collateral(evidence), "--collateral")
        )
        verdict, subject = _examine_dcap(evidence, kind, collateral_json, when, allow_status, enclave_info)
    if as_json:
        out.print_json(data={
            "file": str(file), "kind": kind, "at": when.isoformat(), "accepted": verdict.ok,
            "reason": None if verdict.ok else verdict.reason, "evidence": subject,
            "checks": [{"check": c.name, "ok": c.ok, "detail": c.detail} for c in verdict.checks],
        })
    else:
        out.print(f"[bold]{escape(str(file))}[/bold]  {kind} evidence, judged as of {when:%Y-%m-%d %H:%M:%S} UTC",
                  highlight=False)
        for name, value in subject.items():
            out.print(f"  {name:<12}{escape(str(value))}", highlight=False)
        for check in verdict.checks:
            mark = "[green]ok[/green]  " if check.ok else "[red]FAIL[/red]"
            out.print(f"  {mark} {check.name}: {escape(check.detail)}", highlight=False)
        out.print("[bold green]accepted[/bold green]" if verdict.ok
                  else f"[bold red]refused[/bold red]: {escape(verdict.reason)}", highlight=False)
    if not verdict.ok:
        raise typer.Exit(1)


def _from_cache(take: Callable[[], bytes], option: str) -> bytes:
    """What the cache holds for the evidence; its refusal says how else to provide it."""
    from ..errors import AttestationError

    try:
        return take()
    except AttestationError as exc:
        raise KettleError(f"{exc.reason} (give {option} FILE, or --fetch)") from None


def _parse_time(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"--at is not an ISO-8601 time: {text!r}") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)  # a time without a zone is UTC


def _measurement_check(kind: str, evidence: Any, path: Path) -> Any:
    """The measurement check against auditor-signed enclave info (every auditor key beside it must
    have signed): which services list the evidence's measurement, in their entries of its kind."""
    from ..attestation.dcap import DcapMeasurements
    from ..attestation.enclave_info import KIND_TABLES
    from ..attestation.trust import client_enclave_info
    from ..attestation.verifier import Check

    info = client_enclave_info(path)
    candidates: dict[str, Any] = {}
    for service, m in sorted(info.services.items()):
        if kind == "sev-snp" and m.tee is not None and m.tee.sev_snp is not None:
            candidates[service] = m.tee.sev_snp
        elif kind == "tdx" and m.tee is not None and m.tee.tdx is not None:
            candidates[service] = m.tee.dcap("tdx")
        elif kind == "sgx" and m.tee is not None and m.tee.sgx is not None:
            candidates[service] = m.tee.dcap("sgx")
        elif kind == "sgx" and m.tee is None:  # a Teaclave-style table: its pair is the enclave's own
            candidates[service] = DcapMeasurements(mr_enclave=frozenset({m.mr_enclave}), mr_signer=frozenset({m.mr_signer}))
    if not candidates:
        table = KIND_TABLES[kind]
        raise KettleError(f"enclave info lists no {kind} measurements (no [teaclave_<service>_service.{table}] table)")
    if kind == "sev-snp":
        measurement = evidence.measurement
        matched = [s for s, accepted in candidates.items() if measurement in accepted]
        if matched:
            return Check("measurement", True, f"{measurement.hex()}, listed for {', '.join(matched)}")
        return Check("measurement", False, f"measurement {measurement.hex()} is not listed for any service in enclave info")
    problems = {s: accepted.problem(evidence) for s, accepted in candidates.items()}
    matched = [s for s, (why, _) in problems.items() if why is None]
    if matched:
        return Check("measurement", True, f"{problems[matched[0]][1]}, listed for {', '.join(matched)}")
    return Check("measurement", False, next(iter(problems.values()))[0])


def _examine_snp(report: bytes, certificate: bytes, when: datetime, enclave_info: Path | None) -> tuple[Any, dict[str, Any]]:
    from ..attestation.snp import examine_snp_report, parse_snp_report

    verdict = examine_snp_report(report, certificate=certificate, at=when)
    if enclave_info is not None and verdict.report is not None:
        verdict.checks.append(_measurement_check("sev-snp", verdict.report, enclave_info))
    subject: dict[str, Any] = {}
    if verdict.report is not None:
        parsed = parse_snp_report(report)
        subject = {"product": verdict.product, "version": parsed.version, "vmpl": parsed.vmpl,
                   "policy": f"{parsed.policy:#x}", "measurement": parsed.measurement.hex(),
                   "report data": parsed.report_data.hex()}
    return verdict, subject


def _examine_dcap(quote: bytes, kind: str, collateral: bytes, when: datetime, allow_status: list[str],
                  enclave_info: Path | None) -> tuple[Any, dict[str, Any]]:
    from ..attestation.dcap import DcapPolicy, examine_dcap_quote

    allowed: dict[str, frozenset[str]] = {}
    for entry in allow_status:
        status, _, advisories = entry.partition(":")
        allowed[status] = frozenset(a for a in advisories.split(",") if a)
    verdict = examine_dcap_quote(quote, collateral=collateral, at=when, policy=DcapPolicy(allowed=allowed))
    if enclave_info is not None and verdict.quote is not None and verdict.quote.kind == kind:
        verdict.checks.append(_measurement_check(kind, verdict.quote, enclave_info))
    subject: dict[str, Any] = {}
    if verdict.quote is not None:
        if verdict.quote.kind != kind:
            raise KettleError(f"the file is a {verdict.quote.kind} quote, not {kind}")
        subject = {"quote": verdict.quote.describe(), "tcb status": verdict.tcb_status,
                   "advisories": ", ".join(verdict.advisory_ids) or "none"}
    return verdict, subject


# ---------------------------------------------------------------- the collateral cache

collateral_app = typer.Typer(
    no_args_is_help=True,
    help="The collateral cache: AMD VCEKs and Intel collateral the verifiers use (import, export, status, fetch).",
)
app.add_typer(collateral_app, name="collateral")

_DIR_OPTION = typer.Option(None, "--collateral-dir", help="the cache directory (default: attestation.collateral_dir)")


def _cache(directory: Path | None, *, offline: bool | None = None, clock: Callable[[], datetime] | None = None) -> CollateralCache:
    from ..attestation.collateral import collateral_cache

    config = load_config()
    if clock is None:
        return collateral_cache(config, directory=directory, offline=offline)
    return collateral_cache(config, directory=directory, offline=offline, clock=clock)


def _short_key(kind: str, key: str) -> str:
    """Keys for display: a VCEK's 64-byte chip id is shortened to its first 8 bytes."""
    if kind == "vcek":
        product, chip, tcb = key.split("/")
        return f"{product}/{chip[:16]}…/{tcb}"
    return key


def _when(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


@collateral_app.command("import")
@one_line_errors
def collateral_import(
    source: Path = typer.Argument(..., help="an export bundle, a VCEK (DER/PEM), Intel collateral JSON, or a directory of them"),
    collateral_dir: Path = _DIR_OPTION,
) -> None:
    """Check and add collateral (every file of a directory); nothing is added unless every file is usable."""
    from ..attestation.collateral import CollateralCache

    files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
    if not files:
        raise KettleError(f"{source} holds no files to import")
    cache = _cache(collateral_dir)
    with tempfile.TemporaryDirectory() as staging_dir:
        # Everything is checked in a staging cache first, so one bad file adds nothing.
        staging = CollateralCache(
            Path(staging_dir), offline=True, clock=cache.clock,
            unsafe_allow_expired_collateral=cache.unsafe_allow_expired_collateral,
        )
        problems = []
        for path in files:
            try:
                staging.import_bytes(path.read_bytes(), source=f"import {path.name}")
            except KettleError as exc:
                problems.append(f"{path}: {exc.message}")
            except OSError as exc:
                problems.append(f"{path}: {exc.strerror}")
        if problems:
            raise KettleError("nothing imported: " + "; ".join(problems))
        added = cache.import_bytes(staging.export_bytes())
    for entry in added:
        out.print(f"  added {entry.kind} {_short_key(entry.kind, entry.key)}, expires {_when(entry.expires)}", highlight=False)
    out.print(f"{len(added)} entr{'y' if len(added) == 1 else 'ies'} imported into {cache.directory}", highlight=False)


@collateral_app.command("export")
@one_line_errors
def collateral_export(
    file: Path = typer.Argument(..., help="where to write the bundle (JSON)"),
    collateral_dir: Path = _DIR_OPTION,
) -> None:
    """Write every cached entry into one bundle, which `kettle attest collateral import` reads elsewhere."""
    cache = _cache(collateral_dir)
    bundle = cache.export_bytes()
    file.write_bytes(bundle)
    count = len(list(cache.entries()))
    out.print(f"{count} entr{'y' if count == 1 else 'ies'} exported to {file}", highlight=False)


@collateral_app.command("status")
@one_line_errors
def collateral_status(
    collateral_dir: Path = _DIR_OPTION,
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Each cached entry: kind, key, when fetched, when it expires, and fresh, expiring or expired."""
    cache = _cache(collateral_dir)
    now = cache.clock()
    entries = list(cache.entries())
    if as_json:
        out.print_json(data={"directory": str(cache.directory), "offline": cache.offline, "entries": [
            {"kind": e.kind, "key": e.key, "fetched": e.fetched.isoformat(), "expires": e.expires.isoformat(),
             "state": e.state(now), "source": e.source} for e in entries
        ]})
        return
    out.print(f"[bold]{escape(str(cache.directory))}[/bold]{'  (offline)' if cache.offline else ''}", highlight=False)
    colours = {"fresh": "green", "expiring": "yellow", "expired": "red"}
    for e in entries:
        state = e.state(now)
        out.print(f"  {e.kind:<5} {_short_key(e.kind, e.key):<40} fetched {_when(e.fetched)}  expires {_when(e.expires)}  "
                  f"[{colours[state]}]{state}[/{colours[state]}]", highlight=False)
    if not entries:
        out.print("  (empty)")


@collateral_app.command("fetch")
@one_line_errors
def collateral_fetch(
    file: Path = typer.Argument(..., help="the report (SEV-SNP) or quote (TDX, SGX) to fetch collateral for"),
    kind: str = typer.Option(..., "--kind", help="sev-snp, tdx or sgx"),
    collateral_dir: Path = _DIR_OPTION,
) -> None:
    """Fetch the VCEK or Intel collateral for this evidence into the cache (even when collateral_offline is on)."""
    from ..attestation.collateral import KIND_VCEK, quote_platform, snp_products
    from ..attestation.snp import parse_snp_report

    if kind not in EVIDENCE_KINDS:
        raise typer.BadParameter(f"--kind must be one of {', '.join(EVIDENCE_KINDS)}")
    evidence = file.read_bytes()
    cache = _cache(collateral_dir, offline=False)
    if kind == "sev-snp":
        report = parse_snp_report(evidence)
        cache.snp_certificate(evidence)
        keys = [(KIND_VCEK, f"{p}/{report.chip_id.hex()}/{report.reported_tcb.hex()}") for p in snp_products(report, cache.snp_roots)]
    else:
        tee, fmspc, ca = quote_platform(evidence)
        if tee != kind:
            raise KettleError(f"{file} is a {tee} quote, not {kind}")
        cache.dcap_collateral(evidence)
        keys = [(tee, f"{fmspc}/{ca}")]
    for entry in filter(None, (cache.get(k, key) for k, key in keys)):
        out.print(f"{entry.kind} {_short_key(entry.kind, entry.key)}: fetched {_when(entry.fetched)}, "
                  f"expires {_when(entry.expires)}, from {entry.source}", highlight=False)


def _allowed_statuses(allow_status: list[str]) -> dict[str, frozenset[str]]:
    """``STATUS[:ADVISORY,ADVISORY...]`` options as a DcapPolicy's ``allowed``."""
    allowed: dict[str, frozenset[str]] = {}
    for entry in allow_status:
        status, _, advisories = entry.partition(":")
        allowed[status] = frozenset(a for a in advisories.split(",") if a)
    return allowed
