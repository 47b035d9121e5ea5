"""TEE-derived sealing keys: SEV-SNP through the sev-guest ioctl, Gramine-SGX through its key files.

Both run against emulations of the real ABIs in processes of their own, so the
provider's open, ioctl and read calls go through the kernel as on a machine with
the TEE: ``tests/sev_guest_fs.py`` answers ``SNP_GET_DERIVED_KEY`` (request and
response passed by address, as the sev-guest driver takes them) and
``tests/tee_fs.py gramine`` serves ``/dev/attestation/keys``. Each emulation
derives its keys from the emulated measurement, so "sealed under one
measurement, refused under another" is tested through the real path.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import tee_fs
from conftest import make_home, reload

from kettle.attestation.providers import SEV_SNP, TDX, ConfigfsTsmProvider, GramineProvider
from kettle.attestation.sealing import (
    SNP_DERIVED_KEY_REQ,
    SNP_FIELD_MEASUREMENT,
    SNP_FIELD_POLICY,
    SNP_GET_DERIVED_KEY,
    SNP_GUEST_REQUEST,
    SNP_SEAL_FIELDS,
    purpose_key,
    snp_derived_key,
)
from kettle.config import Config
from kettle.errors import AttestationError, ConfigError, SealingError
from kettle.services.runtime import ServiceRuntime
from kettle.services.storage.sealing import Sealer
from kettle.services.storage.service import open_store

TESTS = Path(__file__).parent
MOUNT_DEADLINE_SECS = 30.0
MEASUREMENT_A = bytes(range(48))
MEASUREMENT_B = bytes(range(1, 49))
AAD = b"record\0platform\0key"


@contextmanager
def mounted(path: Path, script: str, *args: str) -> Iterator[Path]:
    """Mount an emulation (``tests/<script>`` with its arguments) at ``path`` until the block ends."""
    path.mkdir()
    process = subprocess.Popen([sys.executable, str(TESTS / script), str(path), *args], stderr=subprocess.PIPE)
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


@contextmanager
def sev_guest(path: Path, measurement: bytes, *args: str) -> Iterator[Path]:
    with mounted(path, "sev_guest_fs.py", "--measurement", measurement.hex(), *args) as root:
        yield root / "sev-guest"


def snp_provider(tmp_path: Path, device: Path, service: str = "storage", privlevel: int | None = None) -> ConfigfsTsmProvider:
    tsm = tmp_path / "tsm"
    tsm.mkdir(exist_ok=True)  # evidence is not asked for here; sealing uses only the device
    return ConfigfsTsmProvider(SEV_SNP, tsm, privlevel, device, service=service)


# --- SEV-SNP ------------------------------------------------------------------------------


def test_snp_ioctl_layout_is_linux_uapi() -> None:
    # include/uapi/linux/sev-guest.h: _IOWR('S', 0x1, struct snp_guest_request_ioctl), 32-byte structs.
    assert SNP_GET_DERIVED_KEY == 0xC0205301
    assert SNP_GUEST_REQUEST.size == 32 and SNP_DERIVED_KEY_REQ.size == 32
    packed = SNP_GUEST_REQUEST.pack(1, 0x1122334455667788, 0x99AABBCCDDEEFF00, 0x0000000500000016)
    assert packed[0] == 1 and packed[1:8] == bytes(7)  # msg_version, then padding up to the u64s
    assert packed[8:16] == (0x1122334455667788).to_bytes(8, "little")
    assert packed[24:28] == (0x16).to_bytes(4, "little")  # fw_error is exitinfo2's low half
    assert SNP_SEAL_FIELDS == SNP_FIELD_POLICY | SNP_FIELD_MEASUREMENT == 0b1001


def test_snp_sealed_data_opens_under_the_same_measurement_only(tmp_path: Path) -> None:
    with sev_guest(tmp_path / "a", MEASUREMENT_A) as device:
        key_a = snp_provider(tmp_path, device).sealing_key("storage")
        sealed = Sealer(key_a).seal(AAD, b"user records")
    with sev_guest(tmp_path / "a-again", MEASUREMENT_A) as device:  # same code, started again
        assert Sealer(snp_provider(tmp_path, device).sealing_key("storage")).open(AAD, sealed) == b"user records"
    with sev_guest(tmp_path / "b", MEASUREMENT_B) as device:  # one changed byte of code
        key_b = snp_provider(tmp_path, device).sealing_key("storage")
    assert key_b != key_a
    with pytest.raises(SealingError, match="wrong sealing key"):
        Sealer(key_b).open(AAD, sealed)


def test_snp_key_is_bound_to_policy_service_and_purpose(tmp_path: Path) -> None:
    with sev_guest(tmp_path / "a", MEASUREMENT_A) as device:
        hardware = snp_derived_key(device)
        keys = {
            snp_provider(tmp_path, device).sealing_key("storage"),
            snp_provider(tmp_path, device).sealing_key("other"),
            snp_provider(tmp_path, device, service="authentication").sealing_key("storage"),
        }
        assert snp_provider(tmp_path, device).sealing_key("storage") == purpose_key(hardware, SEV_SNP, "storage", "storage")
    with sev_guest(tmp_path / "debug", MEASUREMENT_A, "--policy", "0xB0000") as device:  # debugging allowed
        assert snp_derived_key(device) != hardware
    assert len(keys) == 3 and all(len(k) == 32 for k in keys)


def test_snp_key_is_requested_at_the_reports_vmpl(tmp_path: Path) -> None:
    with sev_guest(tmp_path / "vmpl2", MEASUREMENT_A, "--vmpl", "2") as device:
        assert len(snp_provider(tmp_path, device, privlevel=2).sealing_key("storage")) == 32
        with pytest.raises(AttestationError) as refused:
            snp_provider(tmp_path, device, privlevel=0).sealing_key("storage")
    assert refused.value.reason == (
        "the SNP firmware refused the derived-key request: status 0x16 (invalid parameters; VMPL 0, fields 0x9)"
    )


def test_snp_driver_errors_are_reported_with_their_codes(tmp_path: Path) -> None:
    with sev_guest(tmp_path / "a", MEASUREMENT_A) as device:
        with pytest.raises(AttestationError, match=r"status 0x16 \(invalid parameters; VMPL 0, fields 0x200\)"):
            snp_derived_key(device, fields=1 << 9)  # a field the firmware does not know
        with pytest.raises(AttestationError, match="SNP VMPL must be 0..3"):
            snp_derived_key(device, vmpl=4)
    with pytest.raises(AttestationError) as missing:
        snp_provider(tmp_path, tmp_path / "nothing" / "sev-guest").sealing_key("storage")
    assert "sev-guest driver (CONFIG_SEV_GUEST) through SNP_GET_DERIVED_KEY" in missing.value.reason
    not_a_device = tmp_path / "plain-file"
    not_a_device.write_bytes(b"")
    with pytest.raises(AttestationError, match="SNP_GET_DERIVED_KEY on .* failed: ENOTTY"):
        snp_derived_key(not_a_device)


def test_tdx_without_key_release_refuses(tmp_path: Path) -> None:
    (tmp_path / "tsm").mkdir()
    with pytest.raises(AttestationError, match="attestation service's key release"):
        ConfigfsTsmProvider(TDX, tmp_path / "tsm").sealing_key("storage")


@pytest.mark.parametrize("purpose", ["", "a\0b"])
def test_purpose_names_are_checked(purpose: str) -> None:
    with pytest.raises(AttestationError, match="sealing purpose must be a non-empty name without NUL"):
        purpose_key(bytes(32), SEV_SNP, "storage", purpose)


# --- Gramine-SGX --------------------------------------------------------------------------


@contextmanager
def gramine(path: Path, mrenclave: bytes, mrsigner: bytes, *args: str) -> Iterator[Path]:
    with mounted(path, "tee_fs.py", "gramine", "--mrenclave", mrenclave.hex(), "--mrsigner", mrsigner.hex(), *args) as root:
        yield root


def test_gramine_seals_by_signer_so_an_audited_update_still_opens_the_data(tmp_path: Path) -> None:
    signer, other_signer = b"\x22" * 32, b"\x33" * 32
    with gramine(tmp_path / "v1", b"\x01" * 32, signer) as root:
        assert (root / "keys" / "_sgx_mrsigner").read_bytes() == tee_fs.sgx_sealing_key("mrsigner", signer)
        sealed = Sealer(GramineProvider(root, service="storage").sealing_key("storage")).seal(AAD, b"user records")
    with gramine(tmp_path / "v2", b"\x02" * 32, signer) as root:  # new code, same signer
        assert Sealer(GramineProvider(root, service="storage").sealing_key("storage")).open(AAD, sealed) == b"user records"
        other_service = GramineProvider(root, service="authentication").sealing_key("storage")
    with pytest.raises(SealingError):
        Sealer(other_service).open(AAD, sealed)
    with gramine(tmp_path / "other", b"\x01" * 32, other_signer) as root:  # same code, another signer
        with pytest.raises(SealingError):
            Sealer(GramineProvider(root, service="storage").sealing_key("storage")).open(AAD, sealed)


def test_gramine_without_sealing_keys_is_refused(tmp_path: Path) -> None:
    with gramine(tmp_path / "old", b"\x01" * 32, b"\x22" * 32, "--no-keys") as root:
        with pytest.raises(AttestationError) as refused:
            GramineProvider(root, service="storage").sealing_key("storage")
    assert refused.value.reason == (
        f"{root}/keys/_sgx_mrsigner does not exist (Gramine 1.4 or later exposes SGX sealing keys there)"
    )


# --- the storage service on SEV-SNP ------------------------------------------------------


def test_storage_on_snp_refuses_data_sealed_by_other_code(tmp_path: Path, _auditor_cache: Path) -> None:
    """Configuration to provider to ioctl to storage: a code update on SNP cannot open the old data."""
    config = make_home(tmp_path / "home", _auditor_cache)
    (tmp_path / "tsm").mkdir()
    settings = config.home / "kettle.toml"
    simulation = settings.read_text()

    def storage_on(device: Path) -> Config:
        settings.write_text(simulation.replace('backend = "simulation"', (
            f'backend = "sev-snp"\nconfigfs_tsm_path = "{tmp_path / "tsm"}"\nsnp_guest_device = "{device}"'
        )))
        return reload(config)

    with sev_guest(tmp_path / "v1", MEASUREMENT_A) as device:
        snp = storage_on(device)
        store = open_store(snp, ServiceRuntime("storage", snp))
        store.put("authentication", b"secret/jwt-hs512", b"token-signing secret")
        store.close()
    with sev_guest(tmp_path / "v2", MEASUREMENT_B) as device:
        snp = storage_on(device)
        with pytest.raises(ConfigError) as refused:
            open_store(snp, ServiceRuntime("storage", snp))
    assert refused.value.message.startswith(
        f"{snp.path(snp.storage.path)} was sealed under another sealing key, so this storage service cannot open it"
    )
    assert b"token-signing secret" not in snp.path(snp.storage.path).read_bytes()
    with sev_guest(tmp_path / "v1-again", MEASUREMENT_A) as device:
        snp = storage_on(device)
        store = open_store(snp, ServiceRuntime("storage", snp))
        assert store.get("authentication", b"secret/jwt-hs512") == b"token-signing secret"
        store.close()
