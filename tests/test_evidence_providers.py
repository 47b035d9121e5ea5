"""The real-TEE evidence providers, driven through the kernel's and Gramine's file ABIs.

``tests/tee_fs.py`` mounts FUSE emulations of configfs-tsm's report directory and
of Gramine's ``/dev/attestation`` (in a process of their own, so every open,
write, read, mkdir and rmdir of the provider goes through the kernel's VFS as on
a real machine). Tests check what the provider returned against what the
emulated kernel produced for exactly the written report data.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import tee_fs
from typer.testing import CliRunner, Result

from kettle.attestation.backends import SIMULATION
from kettle.attestation.providers import (
    GRAMINE_SGX,
    SEV_SNP,
    SGX,
    SNP_CERT_GUIDS,
    TDX,
    TSM_ATTEMPTS,
    ConfigfsTsmProvider,
    GramineProvider,
    parse_snp_certificate_table,
    probe_backends,
)
from kettle.cli.main import app
from kettle.config import Config, parse_config
from kettle.errors import AttestationError, ConfigError
from kettle.services.runtime import evidence_provider, resolve_backend

EMULATOR = Path(__file__).parent / "tee_fs.py"
MOUNT_DEADLINE_SECS = 30.0  # generous: two cores shared by many test processes
REPORT_DATA = bytes(range(64))


@contextmanager
def mounted(path: Path, *args: str) -> Iterator[Path]:
    """Mount an emulation (``tee_fs.py`` arguments) at ``path`` until the block ends."""
    path.mkdir()
    process = subprocess.Popen([sys.executable, str(EMULATOR), str(path), *args], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + MOUNT_DEADLINE_SECS
        while not os.path.ismount(path):
            if process.poll() is not None:
                raise AssertionError(f"FUSE emulation did not mount: {process.stderr.read().decode()}")  # type: ignore[union-attr]
            if time.monotonic() > deadline:
                raise AssertionError("FUSE emulation did not mount in time")
            time.sleep(0.05)
        yield path
    finally:
        subprocess.run(["fusermount3", "-u", str(path)], check=False)
        try:
            process.wait(timeout=MOUNT_DEADLINE_SECS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def certificate_table(entries: list[tuple[uuid.UUID, bytes]]) -> bytes:
    """An SNP certificate table as the host lays it out: entries, zero entry, then the DER blobs."""
    offset = 24 * (len(entries) + 1)
    header, body = b"", b""
    for guid, der in entries:
        header += guid.bytes + struct.pack("<II", offset + len(body), len(der))
        body += der
    return header + bytes(24) + body


GUID_OF = {kind: guid for guid, kind in SNP_CERT_GUIDS.items()}


# --- configfs-tsm -----------------------------------------------------------------------


def test_snp_report_is_the_kernels_report_for_exactly_our_data_and_the_entry_is_removed(tmp_path: Path) -> None:
    with mounted(tmp_path / "tsm", "tsm", "--provider", "sev_guest") as root:
        evidence = ConfigfsTsmProvider(SEV_SNP, root).evidence(REPORT_DATA)
        assert os.listdir(root) == []
    assert evidence.quote == tee_fs.snp_report(REPORT_DATA, 0)
    assert evidence.quote[0x50:0x90] == REPORT_DATA
    assert evidence.tee_type == SEV_SNP
    assert evidence.source == f"configfs-tsm {root}"
    assert evidence.certificates == ()  # the host supplied no certificate table


def test_snp_privlevel_is_requested_when_configured(tmp_path: Path) -> None:
    with mounted(tmp_path / "tsm", "tsm", "--provider", "sev_guest") as root:
        evidence = ConfigfsTsmProvider(SEV_SNP, root, privlevel=2).evidence(REPORT_DATA)
    assert struct.unpack_from("<I", evidence.quote, 0x30) == (2,)
    assert evidence.quote == tee_fs.snp_report(REPORT_DATA, 2)


def test_snp_certificate_table_from_auxblob(tmp_path: Path) -> None:
    certs = {"vcek": b"\x30\x82vcek-der", "ask": b"\x30\x82ask-der", "ark": b"\x30\x82ark-der"}
    table = tmp_path / "auxblob"
    table.write_bytes(certificate_table([(GUID_OF[kind], der) for kind, der in certs.items()]))
    with mounted(tmp_path / "tsm", "tsm", "--provider", "sev_guest", "--auxblob", str(table)) as root:
        evidence = ConfigfsTsmProvider(SEV_SNP, root).evidence(REPORT_DATA)
    assert [(c.kind, c.der) for c in evidence.certificates] == list(certs.items())


def test_tdx_quote_is_the_kernels_quote_for_exactly_our_data(tmp_path: Path) -> None:
    with mounted(tmp_path / "tsm", "tsm", "--provider", "tdx_guest") as root:
        evidence = ConfigfsTsmProvider(TDX, root).evidence(REPORT_DATA)
        assert os.listdir(root) == []
    assert evidence.quote == tee_fs.tdx_quote(REPORT_DATA, 0)
    assert evidence.quote[568:632] == REPORT_DATA  # REPORTDATA of a v4 quote (spec §6.3)
    assert evidence.tee_type == TDX


@pytest.mark.parametrize("same_data", [False, True], ids=["other-data", "same-data"])
def test_a_moved_generation_is_retried_and_the_result_is_ours(
    tmp_path: Path, same_data: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # Another writer touches our entry between our write and our read once; with the same
    # bytes only the generation shows it, and the provider must still take a fresh report.
    flags = ["--interfere", "1", *(["--interfere-same"] if same_data else [])]
    with mounted(tmp_path / "tsm", "tsm", "--provider", "sev_guest", *flags) as root, caplog.at_level(logging.WARNING):
        evidence = ConfigfsTsmProvider(SEV_SNP, root).evidence(REPORT_DATA)
    assert evidence.quote == tee_fs.snp_report(REPORT_DATA, 0)
    retries = [m for m in caplog.messages if "changed under us" in m]
    assert len(retries) == 1 and "generation 0 -> 2, attempt 1" in retries[0]


def test_an_entry_that_keeps_changing_is_refused_and_removed(tmp_path: Path) -> None:
    with mounted(tmp_path / "tsm", "tsm", "--provider", "sev_guest", "--interfere", str(TSM_ATTEMPTS), "--interfere-same") as root:
        with pytest.raises(AttestationError, match=f"changed during each of {TSM_ATTEMPTS} attempts"):
            ConfigfsTsmProvider(SEV_SNP, root).evidence(REPORT_DATA)
        assert os.listdir(root) == []


def test_a_wrong_provider_is_refused_and_the_entry_removed(tmp_path: Path) -> None:
    with mounted(tmp_path / "tsm", "tsm", "--provider", "tdx_guest") as root:
        with pytest.raises(AttestationError, match="provided by 'tdx_guest', not 'sev_guest'"):
            ConfigfsTsmProvider(SEV_SNP, root).evidence(REPORT_DATA)
        assert os.listdir(root) == []


def test_missing_configfs_names_the_kernel_and_the_unusable_device(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"sev-snp: .*absent does not exist \(configfs-tsm needs Linux 6\.7 .*\), nor does .*no-sev-guest \(the sev-guest driver"):
        ConfigfsTsmProvider(SEV_SNP, tmp_path / "absent", device=tmp_path / "no-sev-guest")
    device = tmp_path / "tdx_guest"
    device.touch()
    with pytest.raises(ConfigError, match=r"configfs-tsm needs Linux 6\.7 .*tdx_guest exists, but Kettle cannot use it for TDX"):
        ConfigfsTsmProvider(TDX, tmp_path / "absent", device=device)


def test_report_data_must_be_64_bytes(tmp_path: Path) -> None:
    with mounted(tmp_path / "tsm", "tsm", "--provider", "sev_guest") as root:
        with pytest.raises(ValueError, match="exactly 64 bytes"):
            ConfigfsTsmProvider(SEV_SNP, root).evidence(b"short")
        assert os.listdir(root) == []


# --- the certificate table ----------------------------------------------------------------


def test_certificate_table_keeps_unknown_guids_and_refuses_entries_outside_it() -> None:
    other = uuid.UUID("00112233-4455-6677-8899-aabbccddeeff")
    table = certificate_table([(GUID_OF["vlek"], b"vlek"), (other, b"extra")])
    assert [(c.kind, c.der) for c in parse_snp_certificate_table(table)] == [("vlek", b"vlek"), (str(other), b"extra")]
    assert parse_snp_certificate_table(b"") == ()
    outside = GUID_OF["vcek"].bytes + struct.pack("<II", 48, 100) + bytes(24)
    with pytest.raises(AttestationError, match="points outside the table"):
        parse_snp_certificate_table(outside)
    with pytest.raises(AttestationError, match="not terminated"):
        parse_snp_certificate_table(GUID_OF["vcek"].bytes + struct.pack("<II", 24, 4) + b"cert")


# --- Gramine ------------------------------------------------------------------------------


def test_gramine_quote_carries_exactly_our_report_data(tmp_path: Path) -> None:
    with mounted(tmp_path / "attestation", "gramine") as root:
        evidence = GramineProvider(root).evidence(REPORT_DATA)
    assert evidence.quote == tee_fs.sgx_quote(REPORT_DATA)
    assert evidence.quote[368:432] == REPORT_DATA
    assert (evidence.tee_type, evidence.source) == (SGX, f"gramine {root}")


def test_gramine_without_dcap_is_refused(tmp_path: Path) -> None:
    with mounted(tmp_path / "attestation", "gramine", "--attestation-type", "none") as root, pytest.raises(
        ConfigError, match="attestation type .* is 'none', not 'dcap'"
    ):
        GramineProvider(root)


# --- auto and the backend setting ----------------------------------------------------------


def _config(home: Path, tsm: Path, gramine: Path, backend: str = "auto", allow_simulation: bool = False) -> Config:
    return parse_config(
        f'[attestation]\nbackend = "{backend}"\nconfigfs_tsm_path = "{tsm}"\n'
        f'gramine_attestation_path = "{gramine}"\nunsafe_allow_simulation = {str(allow_simulation).lower()}\n',
        home,
    )


@pytest.mark.parametrize(("provider", "backend"), [("sev_guest", SEV_SNP), ("tdx_guest", TDX)])
def test_auto_picks_what_configfs_tsm_offers(tmp_path: Path, provider: str, backend: str) -> None:
    with mounted(tmp_path / "tsm", "tsm", "--provider", provider) as root:
        config = _config(tmp_path, root, tmp_path / "no-gramine", allow_simulation=True)
        assert resolve_backend(config) == backend
        chosen = evidence_provider(config, "storage", bytes(32))
        assert isinstance(chosen, ConfigfsTsmProvider)
        assert chosen.evidence(REPORT_DATA).tee_type == backend
        assert os.listdir(root) == []  # the probe's entry is gone too


def test_auto_picks_gramine_then_simulation_only_when_allowed(tmp_path: Path) -> None:
    with mounted(tmp_path / "attestation", "gramine") as root:
        assert resolve_backend(_config(tmp_path, tmp_path / "no-tsm", root)) == GRAMINE_SGX
    assert resolve_backend(_config(tmp_path, tmp_path / "no-tsm", tmp_path / "none", allow_simulation=True)) == SIMULATION
    with pytest.raises(ConfigError) as refused:
        resolve_backend(_config(tmp_path, tmp_path / "no-tsm", tmp_path / "none"))
    message = refused.value.message
    assert message.startswith('attestation.backend = "auto" found no usable TEE backend')
    for part in (f"sev-snp: {tmp_path}/no-tsm does not exist", "tdx:", f"gramine-sgx: {tmp_path}/none/attestation_type does not exist",
                 "simulation: no hardware protection; needs attestation.unsafe_allow_simulation = true"):
        assert part in message


def test_probe_says_a_guest_device_is_not_used(tmp_path: Path) -> None:
    device = tmp_path / "tdx_guest"
    device.touch()
    probes = probe_backends(tmp_path / "no-tsm", tmp_path / "none", False, {SEV_SNP: tmp_path / "x", TDX: device})
    tdx = next(p for p in probes if p.backend == TDX)
    assert not tdx.usable and f"{device} exists, but Kettle cannot use it for TDX: upstream Linux" in tdx.detail


def test_backend_setting_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="attestation.backend must be one of auto, sev-snp, tdx, gramine-sgx, simulation"):
        parse_config('[attestation]\nbackend = "sgx"\n', tmp_path)
    with pytest.raises(ConfigError, match="snp_privlevel must be between 0 and 3"):
        parse_config("[attestation]\nsnp_privlevel = 4\n", tmp_path)
    assert parse_config("[attestation]\nsnp_privlevel = 0\n", tmp_path).attestation.snp_privlevel == 0


# --- kettle attest --local ------------------------------------------------------------------


def _attest_local(home: Path, text: str, *args: str) -> Result:
    (home / "kettle.toml").write_text(text)
    return CliRunner().invoke(app, ["attest", "--local", *args], env={"KETTLE_HOME": str(home), "KETTLE_CONFIG": ""})


def test_attest_local_reports_every_backend(tmp_path: Path) -> None:
    with mounted(tmp_path / "tsm", "tsm", "--provider", "tdx_guest") as root:
        text = f'[attestation]\nbackend = "sev-snp"\nconfigfs_tsm_path = "{root}"\ngramine_attestation_path = "{tmp_path}/none"\n'
        human = _attest_local(tmp_path, text)
        machine = _attest_local(tmp_path, text, "--json")
    # sev-snp is configured but this machine offers TDX: exit 1, and say why.
    assert human.exit_code == 1, human.output
    assert "found tdx: configfs-tsm provider tdx_guest" in human.output
    assert "no    sev-snp: configfs-tsm is provided by 'tdx_guest', not 'sev_guest'" in human.output
    assert "no    gramine-sgx:" in human.output and "no    simulation:" in human.output
    assert "auto would choose: tdx" in human.output
    assert "configured backend: sev-snp (NOT usable here)" in human.output
    assert machine.exit_code == 1
    report = json.loads(machine.stdout)
    assert (report["configured"], report["configured_usable"], report["auto_choice"]) == ("sev-snp", False, "tdx")
    assert {b["backend"]: b["usable"] for b in report["backends"]} == {
        SEV_SNP: False, TDX: True, GRAMINE_SGX: False, SIMULATION: False
    }


def test_attest_local_with_nothing_usable_says_why(tmp_path: Path) -> None:
    result = _attest_local(
        tmp_path, f'[attestation]\nbackend = "auto"\nconfigfs_tsm_path = "{tmp_path}/no-tsm"\n'
        f'gramine_attestation_path = "{tmp_path}/none"\n', "--json",
    )
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["auto_choice"] is None
    assert "found no usable TEE backend" in report["auto_refusal"]
    assert not any(b["usable"] for b in report["backends"])
