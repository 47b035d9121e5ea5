"""SEV-SNP evidence through ``/dev/sev-guest`` where configfs-tsm is absent.

``tests/sev_guest_fs.py`` answers ``SNP_GET_REPORT`` / ``SNP_GET_EXT_REPORT`` through
the kernel (the request, response and certificate buffers are the caller's own
memory), so these tests drive the provider's real ioctls end to end.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from tee_fs import certificate_table
from test_tee_sealing import sev_guest
from typer.testing import CliRunner

from kettle.attestation.providers import SEV_SNP, TDX, ConfigfsTsmProvider
from kettle.cli.main import app
from kettle.config import parse_config
from kettle.errors import AttestationError, ConfigError
from kettle.services.runtime import evidence_provider, resolve_backend

MEASUREMENT = bytes(range(48))
REPORT_DATA = bytes(range(64, 128))
SMALL_TABLE = [("vcek", b"v" * 1200)]
LARGE_TABLE = [("vcek", b"v" * 1400), ("ask", b"a" * 1500), ("ark", b"r" * 1500)]  # two pages


def _certs(tmp_path: Path, entries: list[tuple[str, bytes]]) -> str:
    path = tmp_path / "certs.bin"
    path.write_bytes(certificate_table(entries))
    return str(path)


def _provider(tmp_path: Path, device: Path, privlevel: int | None = None) -> ConfigfsTsmProvider:
    return ConfigfsTsmProvider(SEV_SNP, tmp_path / "no-tsm", privlevel, device, service="storage")


def test_report_for_exactly_our_data_with_the_hosts_certificates(tmp_path: Path) -> None:
    with sev_guest(tmp_path / "dev", MEASUREMENT, "--certs", _certs(tmp_path, SMALL_TABLE)) as device:
        provider = _provider(tmp_path, device)
        evidence = provider.evidence(REPORT_DATA)
        key = provider.sealing_key("records")
    assert provider.source == evidence.source == f"ioctl {device}"
    assert (evidence.tee_type, len(evidence.quote)) == (SEV_SNP, 0x4A0)
    assert evidence.quote[0x50:0x90] == REPORT_DATA
    assert evidence.quote[0x90:0xC0] == MEASUREMENT
    assert int.from_bytes(evidence.quote[0x30:0x34], "little") == 0
    assert [(c.kind, c.der) for c in evidence.certificates] == SMALL_TABLE
    assert len(key) == 32  # sealing still works through the same device


def test_report_at_the_configured_vmpl(tmp_path: Path) -> None:
    with sev_guest(tmp_path / "dev", MEASUREMENT, "--vmpl", "1") as device:
        evidence = _provider(tmp_path, device, privlevel=2).evidence(REPORT_DATA)
        with pytest.raises(AttestationError, match=r"status 0x16 \(invalid parameters; VMPL 0\)"):
            _provider(tmp_path, device).evidence(REPORT_DATA)  # more privileged than the guest
    assert int.from_bytes(evidence.quote[0x30:0x34], "little") == 2


def test_host_without_certificates_gives_an_empty_table(tmp_path: Path) -> None:
    with sev_guest(tmp_path / "dev", MEASUREMENT) as device:
        evidence = _provider(tmp_path, device).evidence(REPORT_DATA)
    assert evidence.quote[0x50:0x90] == REPORT_DATA
    assert evidence.certificates == ()


def test_short_certificate_buffer_is_retried_with_the_size_the_driver_asks_for(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kettle.attestation.providers")
    with sev_guest(tmp_path / "dev", MEASUREMENT, "--certs", _certs(tmp_path, LARGE_TABLE)) as device:
        evidence = _provider(tmp_path, device).evidence(REPORT_DATA)
    assert [(c.kind, c.der) for c in evidence.certificates] == LARGE_TABLE
    assert "needs 8192 bytes, not 4096; asking again" in caplog.text


def test_a_certificate_table_larger_than_the_driver_takes_is_refused(tmp_path: Path) -> None:
    huge = [("vcek", b"v" * 17000)]
    with sev_guest(tmp_path / "dev", MEASUREMENT, "--certs", _certs(tmp_path, huge)) as device, pytest.raises(
        AttestationError, match=r"asked for a 20480-byte certificate buffer after 4096 bytes .* up to 16384 bytes"
    ):
        _provider(tmp_path, device).evidence(REPORT_DATA)


def test_driver_without_extended_reports_falls_back_to_a_plain_report(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kettle.attestation.providers")
    with sev_guest(tmp_path / "dev", MEASUREMENT, "--no-ext-report") as device:
        evidence = _provider(tmp_path, device).evidence(REPORT_DATA)
    assert evidence.quote[0x50:0x90] == REPORT_DATA
    assert evidence.certificates == ()
    assert "using SNP_GET_REPORT, without certificates" in caplog.text


def test_firmware_errors_are_refused(tmp_path: Path) -> None:
    with sev_guest(tmp_path / "dev", MEASUREMENT, "--fw-error", "0x27") as device, pytest.raises(
        AttestationError, match=r"SNP_GET_EXT_REPORT on .* failed: EIO .*firmware error 0x27, VMM error 0x0"
    ):
        _provider(tmp_path, device).evidence(REPORT_DATA)
    with sev_guest(tmp_path / "dev2", MEASUREMENT, "--status", "0x5") as device, pytest.raises(
        AttestationError, match=r"refused the report request .* status 0x5 \(unknown status; VMPL 0\)"
    ):
        _provider(tmp_path, device).evidence(REPORT_DATA)


def test_report_for_other_data_is_refused(tmp_path: Path) -> None:
    with sev_guest(tmp_path / "dev", MEASUREMENT, "--wrong-report-data") as device, pytest.raises(
        AttestationError, match="report for other report data than was asked for"
    ):
        _provider(tmp_path, device).evidence(REPORT_DATA)


def test_report_data_and_vmpl_are_checked_before_any_ioctl(tmp_path: Path) -> None:
    device = tmp_path / "sev-guest"
    device.touch()  # a regular file: any ioctl on it would fail with ENOTTY
    with pytest.raises(ValueError, match="exactly 64 bytes"):
        _provider(tmp_path, device).evidence(b"short")
    with pytest.raises(AttestationError, match="SNP VMPL must be 0..3"):
        _provider(tmp_path, device, privlevel=4).evidence(REPORT_DATA)


def test_tdx_guest_device_alone_is_refused_with_the_reason(tmp_path: Path) -> None:
    device = tmp_path / "tdx_guest"
    device.touch()
    with pytest.raises(ConfigError, match="TDX_CMD_GET_REPORT0 returns a TDREPORT .* TDX_CMD_GET_QUOTE was never merged"):
        ConfigfsTsmProvider(TDX, tmp_path / "no-tsm", device=device)


def _config_text(tmp_path: Path, device: Path, backend: str = "auto") -> str:
    return (f'[attestation]\nbackend = "{backend}"\nconfigfs_tsm_path = "{tmp_path}/no-tsm"\n'
            f'gramine_attestation_path = "{tmp_path}/none"\nsnp_guest_device = "{device}"\n')


def test_auto_and_attest_local_use_sev_guest_without_configfs_tsm(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    with sev_guest(tmp_path / "dev", MEASUREMENT) as device:
        config = parse_config(_config_text(tmp_path, device), home)
        assert resolve_backend(config) == SEV_SNP
        provider = evidence_provider(config, "storage", bytes(32))
        assert provider.source == f"ioctl {device}"
        assert provider.evidence(REPORT_DATA).quote[0x50:0x90] == REPORT_DATA
        (home / "kettle.toml").write_text(_config_text(tmp_path, device))
        env = {"KETTLE_HOME": str(home), "KETTLE_CONFIG": ""}
        human = CliRunner().invoke(app, ["attest", "--local"], env=env)
        machine = CliRunner().invoke(app, ["attest", "--local", "--json"], env=env)
    assert human.exit_code == 0, human.output
    assert f"found sev-snp: ioctl {device} ({tmp_path}/no-tsm does not exist, so no configfs-tsm)" in human.output
    assert "auto would choose: sev-snp" in human.output
    report = json.loads(machine.stdout)
    assert (report["auto_choice"], report["configured_usable"]) == (SEV_SNP, True)
    tdx = next(b for b in report["backends"] if b["backend"] == TDX)
    assert not tdx["usable"]
