"""``kettle audit measure``: the measurement an auditor derives from a deployment image.

Added to the ``kettle audit`` group of :mod:`kettle.cli.main`. Auditors run it on
the image they reviewed (``docs/deploy-tee.md``) and sign enclave info only with
values it printed: ``--kind sev-snp`` from firmware, kernel, initrd and command
line; ``--kind tdx`` from the TDVF firmware and a CC event log; ``--kind sgx``
from Gramine's signed SIGSTRUCT. The result is an enclave-info entry per ``--service``
in the format of :mod:`kettle.attestation.enclave_info` (TEE sub-tables, ``mr_enclave``
their digest): ``--toml`` prints only those tables, ``--enclave-info FILE`` adds the
measurement to a file as ``kettle audit add-measurement`` does, ``--json`` prints all.
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path
from typing import Any

import typer

from ..attestation import launch_measure as lm
from ..attestation.enclave_info import EnclaveInfo, SgxMeasurement, with_tee_measurement
from ..config import SERVICES
from ..errors import AttestationError
from .main import audit_app, one_line_errors

KINDS = ("sev-snp", "tdx", "sgx")
_OPTIONS_BY_KIND = {
    "sev-snp": {"ovmf", "kernel", "initrd", "append", "vcpus", "vcpu_type", "guest_features"},
    "tdx": {"tdvf", "event_log"},
    "sgx": {"sigstruct"},
}
_REQUIRED = {"sev-snp": ("ovmf", "vcpus", "vcpu_type"), "tdx": ("tdvf",), "sgx": ("sigstruct",)}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _snp(ovmf: Path, kernel: Path | None, initrd: Path | None, append: str | None, vcpus: int, vcpu_type: str,
         guest_features: int) -> dict[str, Any]:
    measurement = lm.snp_measurement(ovmf, vcpus, vcpu_type, kernel, initrd, append, guest_features)
    inputs: dict[str, Any] = {"firmware": {"path": str(ovmf), "sha256": _file_digest(ovmf)}}
    if kernel is not None:
        inputs["kernel"] = {"path": str(kernel), "sha256": _file_digest(kernel)}
        inputs["initrd"] = {"path": str(initrd), "sha256": _file_digest(initrd)} if initrd is not None else None
        inputs["append"] = append or ""
    inputs.update(vcpus=vcpus, vcpu_type=vcpu_type, guest_features=f"{guest_features:#x}", vmm="QEMU",
                  tool=f"sev-snp-measure {metadata.version('sev-snp-measure')}")
    return {"kind": "sev-snp", "measurement": measurement.hex(), "inputs": inputs}


def _tdx(tdvf: Path, event_log: Path | None) -> dict[str, Any]:
    image = tdvf.read_bytes()
    result: dict[str, Any] = {
        "kind": "tdx",
        "mrtd": lm.mrtd(image).hex(),
        "inputs": {"firmware": {"path": str(tdvf), "sha256": hashlib.sha256(image).hexdigest()}},
        "sections": [
            {"type": s.type_name, "address": f"{s.address:#x}", "size": s.size, "mr_extend": s.extended}
            for s in lm.tdvf_sections(image)
        ],
    }
    if event_log is not None:
        replay = lm.replay_rtmrs(event_log.read_bytes())
        result["inputs"]["event_log"] = {"path": str(event_log), "sha256": _file_digest(event_log)}
        result.update({f"rtmr{i}": value.hex() for i, value in enumerate(replay.rtmrs)})
        result["events"] = [
            {"mr_index": e.mr_index, "type": f"{e.event_type:#x}", "sha384": e.sha384.hex()} for e in replay.events
        ]
    return result


def _sgx(sigstruct: Path) -> dict[str, Any]:
    s = lm.parse_sigstruct(sigstruct.read_bytes())
    return {
        "kind": "sgx",
        "mr_enclave": s.mr_enclave.hex(),
        "mr_signer": s.mr_signer.hex(),
        "isv_prod_id": s.isv_prod_id,
        "isv_svn": s.isv_svn,
        "debug": s.debug,
        "attributes": s.attributes.hex(),
        "attribute_mask": s.attribute_mask.hex(),
        "misc_select": f"{s.misc_select:#010x}",
        "inputs": {"sigstruct": {"path": str(sigstruct), "sha256": _file_digest(sigstruct)}},
    }


def _tee_entry(result: dict[str, Any]) -> dict[str, Any] | None:
    """The measurement as :func:`enclave_info.with_tee_measurement` takes it; None for TDX without RTMRs.

    MRTD alone does not pin the kernel, initrd or command line, so there is nothing
    complete to sign until the event log gives the RTMRs.
    """
    kind = result["kind"]
    if kind == "sev-snp":
        return {"sev_snp": bytes.fromhex(result["measurement"])}
    if kind == "tdx":
        if "rtmr0" not in result:
            return None
        return {"tdx": tuple(bytes.fromhex(result[k]) for k in ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3"))}
    return {"sgx": SgxMeasurement(
        mr_enclave=frozenset({bytes.fromhex(result["mr_enclave"])}),
        mr_signer=frozenset({bytes.fromhex(result["mr_signer"])}),
        isv_prod_id=result["isv_prod_id"],
        min_isv_svn=result["isv_svn"],
    )}


def with_measurement(info: EnclaveInfo, result: dict[str, Any], services: list[str],
                     mr_signer: bytes | None) -> EnclaveInfo:
    """``info`` with the measured entry added to each service (``docs/attestation.md``).

    Each table's ``mr_enclave`` becomes the digest of its TEE entries. Its ``mr_signer``
    is ``mr_signer`` when given, else the one the table has, else, for SGX, the
    enclave's MRSIGNER; SEV-SNP and TDX have no signer of their own, so a new entry
    needs ``--mr-signer``.
    """
    entry = _tee_entry(result)
    if entry is None:
        raise AttestationError("no complete TDX entry without RTMRs: give the boot's CC event log with --event-log")
    if mr_signer is None and result["kind"] == "sgx":
        mr_signer = bytes.fromhex(result["mr_signer"])
    for service in services:
        signer = mr_signer
        if signer is None and service not in info.services:
            raise AttestationError(f"enclave info has no entry for {service}: give --mr-signer (64 hex)")
        info = with_tee_measurement(info, service, mr_signer=signer, **entry)
    return info


def _summary(result: dict[str, Any]) -> list[str]:
    kind = result["kind"]
    lines = []
    for name, value in result["inputs"].items():
        if isinstance(value, dict):
            lines.append(f"{name:12} sha256 {value['sha256']}  {value['path']}")
        elif value is not None:
            lines.append(f"{name:12} {value}")
    if kind == "sev-snp":
        lines.append(f"measurement  {result['measurement']}")
    elif kind == "tdx":
        for s in result["sections"]:
            lines.append(f"section      {s['type']:8} {s['address']:>12} {s['size']:>9} bytes"
                         + ("  extended into MRTD" if s["mr_extend"] else ""))
        lines.append(f"mrtd         {result['mrtd']}")
        if "rtmr0" in result:
            lines.append(f"events       {len(result['events'])}")
            lines += [f"rtmr{i}        {result[f'rtmr{i}']}" for i in range(4)]
        else:
            lines.append("rtmr0-3      not computed: give the boot's CC event log with --event-log")
    else:
        lines += [f"{k:12} {result[k]}" for k in ("mr_enclave", "mr_signer", "isv_prod_id", "isv_svn", "debug")]
    return lines


@audit_app.command("measure")
@one_line_errors
def audit_measure(
    kind: str = typer.Option(..., "--kind", help="sev-snp, tdx or sgx"),
    ovmf: Path = typer.Option(None, "--ovmf", help="sev-snp: the guest firmware (edk2 AmdSevX64 build for --kernel)"),
    kernel: Path = typer.Option(None, "--kernel", help="sev-snp: the kernel QEMU boots directly"),
    initrd: Path = typer.Option(None, "--initrd", help="sev-snp: the initrd (needs --kernel)"),
    append: str = typer.Option(None, "--append", help="sev-snp: the kernel command line (needs --kernel)"),
    vcpus: int = typer.Option(None, "--vcpus", help="sev-snp: number of vCPUs"),
    vcpu_type: str = typer.Option(None, "--vcpu-type", help="sev-snp: QEMU CPU model, e.g. EPYC-v4"),
    guest_features: str = typer.Option(None, "--guest-features", help="sev-snp: VMSA SEV_FEATURES (default 0x1)"),
    tdvf: Path = typer.Option(None, "--tdvf", help="tdx: the TDVF firmware"),
    event_log: Path = typer.Option(None, "--event-log", help="tdx: the boot's CC event log (CCEL) for RTMR0-3"),
    sigstruct: Path = typer.Option(None, "--sigstruct", help="sgx: gramine-sgx-sign's .sig (SIGSTRUCT)"),
    service: list[str] = typer.Option(None, "--service", help="enclave-info table(s) to print (default: every service)"),
    mr_signer: str = typer.Option(None, "--mr-signer", help="the tables' mr_signer (64 hex; SGX default: MRSIGNER)"),
    enclave_info: Path = typer.Option(None, "--enclave-info", help="add the measurement to this enclave_info.toml"),
    toml: bool = typer.Option(False, "--toml", help="print only the enclave-info tables"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
) -> None:
    """Compute a deployment image's expected TEE measurement, as enclave-info tables to sign."""
    given = {
        "ovmf": ovmf, "kernel": kernel, "initrd": initrd, "append": append, "vcpus": vcpus, "vcpu_type": vcpu_type,
        "guest_features": guest_features, "tdvf": tdvf, "event_log": event_log, "sigstruct": sigstruct,
    }
    if kind not in KINDS:
        raise AttestationError(f"unknown kind {kind!r} (known: {', '.join(KINDS)})")
    foreign = [_flag(name) for name, value in given.items() if value is not None and name not in _OPTIONS_BY_KIND[kind]]
    if foreign:
        raise AttestationError(f"{', '.join(foreign)} do(es) not apply to --kind {kind}")
    missing = [_flag(name) for name in _REQUIRED[kind] if given[name] is None]
    if missing:
        raise AttestationError(f"--kind {kind} needs {', '.join(missing)}")
    if toml and as_json:
        raise AttestationError("--toml and --json exclude each other")
    signer = None
    if mr_signer is not None:
        try:
            signer = bytes.fromhex(mr_signer)
        except ValueError:
            signer = b""
        if len(signer) != 32:
            raise AttestationError("--mr-signer must be 64 hex characters")
    services = list(service) if service else list(SERVICES)
    unknown = sorted(set(services) - set(SERVICES))
    if unknown:
        raise AttestationError(f"unknown service(s) {', '.join(unknown)} (known: {', '.join(SERVICES)})")

    if kind == "sev-snp":
        try:
            features = lm.DEFAULT_GUEST_FEATURES if guest_features is None else int(guest_features, 0)
        except ValueError:
            raise AttestationError(f"--guest-features {guest_features!r} is not an integer (e.g. 0x1)") from None
        result = _snp(ovmf, kernel, initrd, append, vcpus, vcpu_type, features)
    elif kind == "tdx":
        result = _tdx(tdvf, event_log)
    else:
        result = _sgx(sigstruct)

    if enclave_info is not None:
        info = EnclaveInfo.parse(enclave_info.read_bytes()) if enclave_info.exists() else EnclaveInfo({})
        enclave_info.write_bytes(with_measurement(info, result, services, signer).render())
    tables = None
    if _tee_entry(result) is not None and (signer is not None or kind == "sgx"):
        tables = with_measurement(EnclaveInfo({}), result, services, signer).render().decode()

    if as_json:
        typer.echo(json.dumps({**result, "enclave_info": tables}, indent=1))
    elif toml:
        if tables is None:
            with_measurement(EnclaveInfo({}), result, services, signer)  # raises the reason
        typer.echo(tables, nl=False)
    else:
        typer.echo("\n".join(_summary(result)))
        if tables is not None:
            typer.echo("\n# enclave info (review, then sign with `kettle audit sign`):\n" + tables, nl=False)
        elif kind != "tdx" or "rtmr0" in result:
            typer.echo("\n(give --mr-signer to print enclave-info tables, or --enclave-info FILE to add the entry)")
    if result.get("debug"):
        typer.echo("WARNING: this SIGSTRUCT signs a debug enclave; verifiers refuse debug enclaves' quotes", err=True)
    if enclave_info is not None:
        typer.echo(f"added to {enclave_info}; every auditor must sign it again (kettle audit sign)", err=True)
