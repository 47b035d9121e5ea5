"""``kettle audit measure``: SEV-SNP on real Debian inputs, TDX MRTD/RTMRs, SGX SIGSTRUCT.

The SEV-SNP inputs are real and prepared outside the timed tests by ``make tee-inputs``
(``.ci/run`` calls it): the AmdSevX64 firmware built from Debian's edk2 source by
``deploy/tee/build-ovmf-amdsev.sh``, the vmlinuz of Debian's linux-image package and the
initrd of the recipe ``deploy/tee/build-initrd.sh``. A missing input fails the test with
the target that provides it; nothing is skipped.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from typer.testing import CliRunner, Result

from kettle.attestation import launch_measure as lm
from kettle.attestation.enclave_info import EnclaveInfo, tee_digest
from kettle.cli.main import app
from kettle.config import SERVICES
from kettle.errors import AttestationError

REPO = Path(__file__).resolve().parent.parent
TEE = REPO / "build" / "tee"
AMDSEV_OVMF = TEE / "ovmf" / "OVMF.fd"
KERNEL = TEE / "kernel" / "vmlinuz"
INITRD = TEE / "initrd" / "kettle-initrd.img"
DEBIAN_OVMF = Path("/usr/share/ovmf/OVMF.fd")
SEV_SNP_MEASURE = Path(sys.executable).parent / "sev-snp-measure"
APPEND = "console=ttyS0 kettle.services=all"
SIGNER = hashlib.sha256(b"kettle deployment signer").hexdigest()


def need(path: Path, provider: str) -> Path:
    if not path.is_file():
        pytest.fail(f"{path} is missing: {provider} provides it")
    return path


def kettle(*args: object) -> Result:
    return CliRunner().invoke(app, ["audit", "measure", *map(str, args)])


def snp_args(ovmf: Path, kernel: Path, initrd: Path, append: str = APPEND, vcpus: int = 4) -> list[object]:
    return ["--ovmf", ovmf, "--kernel", kernel, "--initrd", initrd, "--append", append,
            "--vcpus", vcpus, "--vcpu-type", "EPYC-v4"]


def kettle_snp_json(*args: object) -> dict:
    result = kettle("--kind", "sev-snp", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# --- SEV-SNP on real inputs ------------------------------------------------------


@pytest.fixture(scope="module")
def real_inputs() -> tuple[Path, Path, Path]:
    return (
        need(AMDSEV_OVMF, "`make tee-inputs` (deploy/tee/build-ovmf-amdsev.sh)"),
        need(KERNEL, "`make tee-inputs` (Debian's linux-image package)"),
        need(INITRD, "`make tee-inputs` (deploy/tee/build-initrd.sh)"),
    )


@pytest.mark.parametrize("vcpus", [1, 4])
def test_snp_measurement_of_real_image_equals_sev_snp_measure_command_line(real_inputs, vcpus):
    ovmf, kernel, initrd = real_inputs
    need(SEV_SNP_MEASURE, "`make` (sev-snp-measure is a dependency in pyproject.toml)")
    cli = subprocess.run(
        [SEV_SNP_MEASURE, "--mode", "snp", "--vcpus", str(vcpus), "--vcpu-type", "EPYC-v4", "--ovmf", ovmf,
         "--kernel", kernel, "--initrd", initrd, "--append", APPEND],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    result = kettle_snp_json(*snp_args(ovmf, kernel, initrd, vcpus=vcpus))
    assert len(cli) == 96
    assert result["measurement"] == cli
    assert result["inputs"]["initrd"]["sha256"] == hashlib.sha256(initrd.read_bytes()).hexdigest()
    assert result["inputs"]["append"] == APPEND


def test_snp_text_output_prints_the_hex_and_pasteable_tables(real_inputs):
    ovmf, kernel, initrd = real_inputs
    measurement = lm.snp_measurement(ovmf, 4, "EPYC-v4", kernel, initrd, APPEND).hex()
    text = kettle("--kind", "sev-snp", *snp_args(ovmf, kernel, initrd), "--service", "storage")
    assert text.exit_code == 0, text.output
    assert f"measurement  {measurement}" in text.stdout
    tables = kettle("--kind", "sev-snp", *snp_args(ovmf, kernel, initrd), "--toml", "--mr-signer", SIGNER)
    assert tables.exit_code == 0, tables.output
    info = EnclaveInfo.parse(tables.stdout.encode())  # the strict parser the platform uses
    assert sorted(info.services) == sorted(SERVICES)
    for name, entry in info.services.items():
        assert entry.tee.sev_snp == {bytes.fromhex(measurement)}
        assert entry.mr_enclave == tee_digest(name, entry.tee)
        assert entry.mr_signer.hex() == SIGNER
    # SEV-SNP has no signer of its own: tables need one.
    unsigned = kettle("--kind", "sev-snp", *snp_args(ovmf, kernel, initrd), "--toml")
    assert unsigned.exit_code == 1
    assert "give --mr-signer" in unsigned.output


def test_measurements_are_added_to_an_enclave_info_file(real_inputs, tmp_path):
    ovmf, kernel, initrd = real_inputs
    path = tmp_path / "enclave_info.toml"
    first = kettle("--kind", "sev-snp", *snp_args(ovmf, kernel, initrd), "--service", "storage",
                   "--mr-signer", SIGNER, "--enclave-info", path)
    assert first.exit_code == 0, first.output
    # A second image (another vCPU count) is accepted too; the table keeps its signer.
    second = kettle("--kind", "sev-snp", *snp_args(ovmf, kernel, initrd, vcpus=8), "--service", "storage",
                    "--enclave-info", path)
    assert second.exit_code == 0, second.output
    assert "must sign it again" in second.output
    entry = EnclaveInfo.parse(path.read_bytes()).services["storage"]
    assert entry.tee.sev_snp == {lm.snp_measurement(ovmf, n, "EPYC-v4", kernel, initrd, APPEND) for n in (4, 8)}
    assert entry.mr_enclave == tee_digest("storage", entry.tee)
    assert entry.mr_signer.hex() == SIGNER
    # A service not yet in the file needs a signer; the file is left as it was.
    before = path.read_bytes()
    third = kettle("--kind", "sev-snp", *snp_args(ovmf, kernel, initrd), "--service", "frontend",
                   "--enclave-info", path)
    assert third.exit_code == 1
    assert "no entry for frontend" in third.output
    assert path.read_bytes() == before


def test_one_changed_byte_of_the_initrd_kernel_or_command_line_changes_the_measurement(real_inputs, tmp_path):
    ovmf, kernel, initrd = real_inputs
    base = lm.snp_measurement(ovmf, 4, "EPYC-v4", kernel, initrd, APPEND)
    changed_initrd = tmp_path / "initrd"
    data = bytearray(initrd.read_bytes())
    data[len(data) // 2] ^= 0x01
    changed_initrd.write_bytes(bytes(data))
    changed_kernel = tmp_path / "vmlinuz"
    data = bytearray(kernel.read_bytes())
    data[-1] ^= 0x80
    changed_kernel.write_bytes(bytes(data))
    variants = {
        "initrd": lm.snp_measurement(ovmf, 4, "EPYC-v4", kernel, changed_initrd, APPEND),
        "kernel": lm.snp_measurement(ovmf, 4, "EPYC-v4", changed_kernel, initrd, APPEND),
        "command line": lm.snp_measurement(ovmf, 4, "EPYC-v4", kernel, initrd, APPEND + " "),
        "no initrd": lm.snp_measurement(ovmf, 4, "EPYC-v4", kernel, None, APPEND),
        "vcpus": lm.snp_measurement(ovmf, 3, "EPYC-v4", kernel, initrd, APPEND),
        "vcpu type": lm.snp_measurement(ovmf, 4, "EPYC-Milan", kernel, initrd, APPEND),
    }
    for what, value in variants.items():
        assert value != base, what
    assert len(set(variants.values())) == len(variants)


def test_recipe_initrd_carries_kettle_and_its_init(real_inputs):
    # The measured initrd is the recipe's: Kettle's code, the init, the baked-in config.
    _, _, initrd = real_inputs
    listing = subprocess.run(
        f"gzip -dc '{initrd}' | cpio -t --quiet", shell=True, capture_output=True, text=True, check=True
    ).stdout.split()
    for required in ("init", "etc/kettle/home/kettle.toml", "etc/kettle/image-manifest.txt", "opt/kettle/site/kettle/cli/audit_measure.py",
                     "usr/bin/python3.11", "bin/busybox"):
        assert required in listing, required


def test_generic_debian_ovmf_cannot_measure_a_kernel():
    # Debian's packaged OVMF has no SNP kernel-hashes page: measuring a kernel with it would
    # sign a value the firmware never checks the kernel against.
    ovmf = need(DEBIAN_OVMF, ".ci/run (Debian's ovmf package)")
    result = kettle("--kind", "sev-snp", "--ovmf", ovmf, "--kernel", ovmf, "--vcpus", 1, "--vcpu-type", "EPYC-v4")
    assert result.exit_code == 1
    assert "SNP_KERNEL_HASHES" in result.output
    # The firmware alone is measurable (and equals the command line's value).
    alone = kettle_snp_json("--ovmf", ovmf, "--vcpus", 2, "--vcpu-type", "EPYC-v4")
    assert alone["measurement"] == subprocess.run(
        [need(SEV_SNP_MEASURE, "`make`"), "--mode", "snp", "--vcpus", "2", "--vcpu-type", "EPYC-v4",
         "--ovmf", ovmf], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--kind", "sev-snp", "--vcpus", 1, "--vcpu-type", "EPYC-v4"], "--kind sev-snp needs --ovmf"),
        (["--kind", "sev-snp", "--ovmf", "x", "--vcpus", 1, "--vcpu-type", "EPYC-v9"], "unknown vCPU type"),
        (["--kind", "sev-snp", "--ovmf", "x", "--vcpus", 0, "--vcpu-type", "EPYC-v4"], "at least 1"),
        (["--kind", "sev-snp", "--ovmf", "/nonexistent", "--vcpus", 1, "--vcpu-type", "EPYC-v4"], "is not a file"),
        (["--kind", "sev-snp", "--ovmf", "x", "--initrd", "x", "--vcpus", 1, "--vcpu-type", "EPYC-v4"],
         "only with a kernel"),
        (["--kind", "sev-snp", "--ovmf", "x", "--vcpus", 1, "--vcpu-type", "EPYC-v4", "--guest-features", "one"],
         "not an integer"),
        (["--kind", "tdx", "--tdvf", "x", "--ovmf", "x"], "--ovmf do(es) not apply to --kind tdx"),
        (["--kind", "sgx", "--sigstruct", "x", "--event-log", "x"], "--event-log do(es) not apply"),
        (["--kind", "sgx"], "--kind sgx needs --sigstruct"),
        (["--kind", "sev"], "unknown kind"),
        (["--kind", "sgx", "--sigstruct", "x", "--service", "nope"], "unknown service(s) nope"),
        (["--kind", "sgx", "--sigstruct", "x", "--toml", "--json"], "exclude each other"),
        (["--kind", "sgx", "--sigstruct", "x", "--mr-signer", "abcd"], "--mr-signer must be 64 hex"),
    ],
)
def test_bad_arguments_are_refused_with_a_reason(args, message):
    result = kettle(*args)
    assert result.exit_code == 1
    assert message in " ".join(result.output.split())


def test_a_file_that_is_not_firmware_is_refused(tmp_path):
    junk = tmp_path / "junk.fd"
    junk.write_bytes(b"\x00" * 8192)
    result = kettle("--kind", "sev-snp", "--ovmf", junk, "--vcpus", 1, "--vcpu-type", "EPYC-v4")
    assert result.exit_code == 1
    assert "cannot measure" in result.output


# --- TDX: MRTD --------------------------------------------------------------------


def test_mrtd_of_debians_ovmf_covers_the_boot_firmware_volume_only():
    image = need(DEBIAN_OVMF, ".ci/run (Debian's ovmf package)").read_bytes()
    sections = lm.tdvf_sections(image)
    kinds = [(s.type_name, s.extended) for s in sections]
    assert kinds[0] == ("BFV", True)
    assert ("CFV", False) in kinds
    assert {"TD_HOB", "TempMem"} <= {k for k, _ in kinds}
    value = lm.mrtd(image)
    assert len(value) == 48
    bfv = sections[0]
    changed = bytearray(image)
    changed[bfv.data_offset + bfv.raw_size // 2] ^= 1
    assert lm.mrtd(bytes(changed)) != value
    # The variable store (CFV) is not in MRTD: TDVF measures it into RTMR0 itself.
    cfv = next(s for s in sections if s.type_name == "CFV")
    changed = bytearray(image)
    changed[cfv.data_offset + 100] ^= 1
    assert lm.mrtd(bytes(changed)) == value


def _tdvf_image(sections: list[tuple[int, int, int, int, int, int]], payload: bytes) -> bytes:
    """A firmware image with only a footer table and TDVF metadata, in edk2's layout."""
    meta = struct.pack("<4sIII", b"TDVF", 16 + 32 * len(sections), 1, len(sections))
    meta += b"".join(struct.pack("<IIQQII", *s) for s in sections)
    body = payload + meta
    offset_entry = struct.pack("<I", 0)  # patched below: distance from the end to the metadata
    entry = offset_entry + struct.pack("<H16s", 4 + 18, uuid.UUID("e47a6535-984a-4798-865e-4685a7bf8ec2").bytes_le)
    footer = entry + struct.pack("<H16s", len(entry) + 18, uuid.UUID("96b582de-1fb2-45f7-baea-a366c55a082d").bytes_le)
    image = bytearray(body + footer + bytes(32))
    distance = len(image) - len(payload)
    image[len(body) : len(body) + 4] = struct.pack("<I", distance)
    return bytes(image)


def test_mrtd_follows_the_tdx_module_records():
    payload = bytes(range(256)) * 32  # two pages of firmware volume
    image = _tdvf_image([(0, 8192, 0xFFFFE000, 8192, 0, 1), (0, 0, 0x800000, 4096, 3, 0)], payload)
    # TDH.MEM.PAGE.ADD: "MEM.PAGE.ADD" and the GPA at byte 16 of a 128-byte record; TDH.MR.EXTEND:
    # "MR.EXTEND" and the chunk's GPA, then the 256-byte chunk.
    expected = hashlib.sha384()
    for page in (0xFFFFE000, 0xFFFFF000):
        expected.update(b"MEM.PAGE.ADD\0\0\0\0" + page.to_bytes(8, "little") + bytes(104))
        for chunk in range(16):
            expected.update(b"MR.EXTEND" + bytes(7) + (page + 256 * chunk).to_bytes(8, "little") + bytes(104))
            start = page - 0xFFFFE000 + 256 * chunk
            expected.update(payload[start : start + 256])
    expected.update(b"MEM.PAGE.ADD\0\0\0\0" + (0x800000).to_bytes(8, "little") + bytes(104))
    assert lm.mrtd(image) == expected.digest()
    # A section the guest accepts later (PAGE_AUG) is not added by the VMM.
    aug = _tdvf_image([(0, 8192, 0xFFFFE000, 8192, 0, 1), (0, 0, 0x800000, 4096, 3, 2)], payload)
    assert lm.mrtd(aug) != lm.mrtd(image)


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ([(0, 8192, 0xFFFFE000, 8192, 4, 0)], "section type 4 is not covered"),
        ([(0, 8192, 0xFFFFE001, 8192, 0, 1)], "not whole 4 KiB pages"),
        ([(0, 8192, 0xFFFFE000, 4096, 0, 1)], "exceeds the memory range"),
        ([(0, 1 << 30, 0xFFFFE000, 1 << 30, 0, 1)], "outside the firmware"),
        ([(0, 8192, 0xFFFFE000, 8192, 0, 0x10)], "unknown attributes"),
        ([(0, 4096, 0x800000, 4096, 2, 1)], "only firmware volumes"),
        ([(0, 0, 0xFFFFE000, 8192, 0, 1)], "without data"),
    ],
)
def test_hostile_tdvf_metadata_is_refused(sections, message):
    image = _tdvf_image(sections, bytes(8192))
    with pytest.raises(AttestationError, match=message):
        lm.mrtd(image)


def test_tdvf_without_metadata_or_with_a_broken_footer_is_refused():
    good = _tdvf_image([(0, 4096, 0xFFFFF000, 4096, 0, 1)], bytes(4096))
    with pytest.raises(AttestationError, match="no OVMF footer table"):
        lm.mrtd(good[:-1])
    with pytest.raises(AttestationError, match="too small"):
        lm.mrtd(b"\0" * 10)
    bad_signature = bytearray(good)
    bad_signature[4096:4100] = b"TDVX"
    with pytest.raises(AttestationError, match="no TDVF signature"):
        lm.mrtd(bytes(bad_signature))
    other_entry = bytearray(good)
    guid = uuid.UUID("e47a6535-984a-4798-865e-4685a7bf8ec2").bytes_le
    at = other_entry.index(guid)
    other_entry[at] ^= 0xFF  # the footer table holds only an entry of another GUID
    with pytest.raises(AttestationError, match="no TDX metadata"):
        lm.mrtd(bytes(other_entry))


# --- TDX: RTMRs from a CC event log -------------------------------------------------


def _spec_id_event(algorithms: list[tuple[int, int]]) -> bytes:
    spec = b"Spec ID Event03\0" + struct.pack("<IBBBB", 0, 0, 2, 0, 2) + struct.pack("<I", len(algorithms))
    spec += b"".join(struct.pack("<HH", alg, size) for alg, size in algorithms) + b"\0"
    return struct.pack("<II", 0, 3) + bytes(20) + struct.pack("<I", len(spec)) + spec


def _event(mr_index: int, event_type: int, digests: list[tuple[int, bytes]], data: bytes) -> bytes:
    out = struct.pack("<III", mr_index, event_type, len(digests))
    out += b"".join(struct.pack("<H", alg) + digest for alg, digest in digests)
    return out + struct.pack("<I", len(data)) + data


def _digests(data: bytes) -> list[tuple[int, bytes]]:
    return [(0x000B, hashlib.sha256(data).digest()), (0x000C, hashlib.sha384(data).digest())]


ALGS = [(0x000B, 32), (0x000C, 48)]


def test_rtmrs_replay_the_measured_events_of_a_cc_event_log(tmp_path):
    events = [
        (1, 0x80000008, b"firmware volume"),
        (1, 0x8000000A, b"variable"),
        (2, 0x80000003, b"kernel"),
        (3, 0x0000000D, b"initrd"),
        (4, 0x0000000D, b"application"),
        (2, 0x3, b"no action: not extended"),
    ]
    log = _spec_id_event(ALGS) + b"".join(_event(i, t, _digests(d), d) for i, t, d in events) + b"\xff" * 64
    rtmrs = [bytes(48)] * 4
    for index, event_type, data in events:
        if event_type != 3:
            rtmrs[index - 1] = hashlib.sha384(rtmrs[index - 1] + hashlib.sha384(data).digest()).digest()
    replay = lm.replay_rtmrs(log)
    assert replay.rtmrs == tuple(rtmrs)
    assert len(replay.events) == len(events)
    # The CLI prints them with MRTD, and the complete enclave-info table.
    path = tmp_path / "ccel.bin"
    path.write_bytes(log)
    result = kettle("--kind", "tdx", "--tdvf", need(DEBIAN_OVMF, ".ci/run"), "--event-log", path, "--toml",
                    "--service", "execution", "--mr-signer", SIGNER)
    assert result.exit_code == 0, result.output
    accepted = tomllib.loads(result.stdout)["teaclave_execution_service"]["tdx"]["accepted"]
    assert accepted == [{"mrtd": lm.mrtd(DEBIAN_OVMF.read_bytes()).hex(),
                         **{f"rtmr{i}": rtmrs[i].hex() for i in range(4)}}]
    entry = EnclaveInfo.parse(result.stdout.encode()).services["execution"]
    assert entry.mr_enclave == tee_digest("execution", entry.tee)


def test_tdx_without_an_event_log_prints_no_entry_to_sign():
    result = kettle("--kind", "tdx", "--tdvf", need(DEBIAN_OVMF, ".ci/run"), "--toml", "--mr-signer", SIGNER)
    assert result.exit_code == 1
    assert "--event-log" in result.output
    summary = kettle("--kind", "tdx", "--tdvf", DEBIAN_OVMF)
    assert summary.exit_code == 0
    assert "rtmr0-3      not computed" in summary.stdout
    assert "[teaclave_" not in summary.stdout


@pytest.mark.parametrize(
    ("log", "message"),
    [
        (b"", "ends inside the header event"),
        (_spec_id_event([(0x000B, 32)]), "does not declare SHA-384"),
        (struct.pack("<II", 0, 4) + bytes(24), "does not start with a Spec ID"),
        (_spec_id_event(ALGS)[:-3], "ends inside"),
        (_spec_id_event(ALGS) + _event(0, 1, _digests(b"x"), b"x"), "MR index 0"),
        (_spec_id_event(ALGS) + _event(5, 1, _digests(b"x"), b"x"), "MR index 5"),
        (_spec_id_event(ALGS) + _event(1, 1, [(0x0004, bytes(20))], b"x"), "undeclared algorithm 0x0004"),
        (_spec_id_event(ALGS) + _event(1, 1, _digests(b"x")[:1], b"x"), "no SHA-384 digest"),
        (_spec_id_event(ALGS) + _event(1, 1, _digests(b"x"), b"xy")[:-1], "ends inside an event's data"),
        (struct.pack("<II", 0, 3) + bytes(20) + struct.pack("<I", 20) + b"Spec ID Event02\0" + bytes(4),
         "not in the crypto-agile format"),
    ],
)
def test_hostile_event_logs_are_refused(log, message):
    with pytest.raises(AttestationError, match=message):
        lm.replay_rtmrs(log)


# --- SGX: SIGSTRUCT -------------------------------------------------------------------


def make_sigstruct(key: rsa.RSAPrivateKey, *, mr_enclave: bytes, prod_id: int, svn: int, debug: bool = False,
                   vendor: int = 0, date: int = 0x20261207) -> bytes:
    """A SIGSTRUCT per Intel SDM vol. 3D §38.13 (the layout gramine-sgx-sign writes)."""
    n = key.public_key().public_numbers().n
    s = bytearray(1808)
    s[0:16] = bytes.fromhex("06000000e10000000000010000000000")
    s[16:24] = struct.pack("<II", vendor, date)
    s[24:40] = bytes.fromhex("01010000600000006000000001000000")
    s[128:512] = n.to_bytes(384, "little")
    s[512:516] = struct.pack("<I", 3)
    s[900:908] = struct.pack("<II", 0, 0xFFFFFFFF)  # MISCSELECT, MISCMASK
    s[928:944] = struct.pack("<QQ", 0x4 | (0x2 if debug else 0), 0x3)  # ATTRIBUTES: MODE64BIT (+DEBUG), XFRM
    s[944:960] = struct.pack("<QQ", 0xFFFFFFFFFFFFFFFD if not debug else 0xFFFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF)
    s[960:992] = mr_enclave
    s[1024:1028] = struct.pack("<HH", prod_id, svn)
    signed = bytes(s[0:128]) + bytes(s[900:1028])
    signature = int.from_bytes(key.sign(signed, padding.PKCS1v15(), hashes.SHA256()), "big")
    s[516:900] = signature.to_bytes(384, "little")
    q1 = signature * signature // n
    q2 = (signature**3 - q1 * signature * n) // n
    s[1040:1424] = q1.to_bytes(384, "little")
    s[1424:1808] = q2.to_bytes(384, "little")
    return bytes(s)


@pytest.fixture(scope="module")
def sgx_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=3, key_size=3072)


def test_sigstruct_fields_are_read_and_its_signature_checked(sgx_key, tmp_path):
    mr_enclave = hashlib.sha256(b"kettle enclave").digest()
    data = make_sigstruct(sgx_key, mr_enclave=mr_enclave, prod_id=7, svn=3, vendor=0x8086)
    s = lm.parse_sigstruct(data)
    modulus_le = sgx_key.public_key().public_numbers().n.to_bytes(384, "little")
    assert s.mr_enclave == mr_enclave
    assert s.mr_signer == hashlib.sha256(modulus_le).digest()
    assert (s.isv_prod_id, s.isv_svn, s.vendor, s.date) == (7, 3, 0x8086, 0x20261207)
    assert s.debug is False
    assert s.misc_select == 0
    assert s.attributes == struct.pack("<QQ", 0x4, 0x3)
    path = tmp_path / "kettle.sig"
    path.write_bytes(data)
    result = kettle("--kind", "sgx", "--sigstruct", path, "--toml", "--service", "storage", "--service", "frontend")
    assert result.exit_code == 0, result.output
    doc = tomllib.loads(result.stdout)
    expected = {"mr_enclave": [mr_enclave.hex()], "mr_signer": [s.mr_signer.hex()], "isv_prod_id": 7,
                "min_isv_svn": 3}
    assert sorted(doc) == ["teaclave_frontend_service", "teaclave_storage_service"]
    for name in ("storage", "frontend"):
        table = doc[f"teaclave_{name}_service"]
        assert table["sgx"] == expected
        assert table["mr_signer"] == s.mr_signer.hex()  # an SGX table's signer is the enclave's MRSIGNER
        assert table["mr_enclave"] == tee_digest(name, EnclaveInfo.parse(result.stdout.encode()).services[name].tee).hex()
    as_json = json.loads(kettle("--kind", "sgx", "--sigstruct", path, "--json").stdout)
    assert as_json["mr_signer"] == s.mr_signer.hex() and as_json["debug"] is False


def test_a_debug_enclave_is_flagged(sgx_key, tmp_path):
    path = tmp_path / "debug.sig"
    path.write_bytes(make_sigstruct(sgx_key, mr_enclave=bytes(32), prod_id=0, svn=0, debug=True))
    assert lm.parse_sigstruct(path.read_bytes()).debug is True
    result = kettle("--kind", "sgx", "--sigstruct", path)
    assert result.exit_code == 0
    assert "debug enclave" in result.output


def test_every_signed_byte_and_the_signature_are_checked(sgx_key):
    good = make_sigstruct(sgx_key, mr_enclave=bytes(range(32)), prod_id=1, svn=1)
    # Every byte the vendor signs (except the header constants and the fields checked by
    # value before the signature) and every signature byte: a change is refused.
    for offset in [*range(40, 44), *range(900, 1028), *range(516, 900, 7), *range(1040, 1808, 97)]:
        changed = bytearray(good)
        changed[offset] ^= 0x01
        with pytest.raises(AttestationError):
            lm.parse_sigstruct(bytes(changed))


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [
        (0, b"\x07", "Intel's constants"),
        (24, b"\x02", "Intel's constants"),
        (16, b"\x01", "vendor"),
        (60, b"\x01", "reserved (44..128) is not zero"),
        (1030, b"\x01", "reserved (1028..1040) is not zero"),
        (512, b"\x11", "exponent is 17"),
        (1100, b"\x00\x01", "Q1/Q2"),
    ],
)
def test_malformed_sigstructs_are_refused(sgx_key, offset, value, message):
    data = bytearray(make_sigstruct(sgx_key, mr_enclave=bytes(32), prod_id=1, svn=1))
    data[offset : offset + len(value)] = value
    with pytest.raises(AttestationError, match=re.escape(message)):
        lm.parse_sigstruct(bytes(data))


def test_sigstruct_of_another_key_size_or_length_is_refused(sgx_key):
    good = make_sigstruct(sgx_key, mr_enclave=bytes(32), prod_id=1, svn=1)
    with pytest.raises(AttestationError, match="must be 1808 bytes"):
        lm.parse_sigstruct(good + b"\0")
    short_key = rsa.generate_private_key(public_exponent=3, key_size=2048)
    n = short_key.public_key().public_numbers().n
    data = bytearray(good)
    data[128:512] = n.to_bytes(384, "little")
    with pytest.raises(AttestationError, match="3072-bit"):
        lm.parse_sigstruct(bytes(data))


def test_sigstruct_copied_with_only_the_enclave_hash_changed_is_refused(sgx_key, tmp_path):
    # What an operator would do to have a different enclave accepted under the same signer.
    data = bytearray(make_sigstruct(sgx_key, mr_enclave=bytes(32), prod_id=1, svn=1))
    data[960:992] = hashlib.sha256(b"other enclave").digest()
    path = tmp_path / "forged.sig"
    path.write_bytes(bytes(data))
    result = kettle("--kind", "sgx", "--sigstruct", path)
    assert result.exit_code == 1
    assert "does not verify" in result.output


# --- the Gramine manifest template -----------------------------------------------------


def test_gramine_manifest_template_renders_to_a_strict_manifest():
    import jinja2

    class Gramine:  # what gramine-manifest passes to the template
        libos = "/usr/lib/x86_64-linux-gnu/gramine/libsysdb.so"

        @staticmethod
        def runtimedir() -> str:
            return "/usr/lib/x86_64-linux-gnu/gramine/runtime/glibc"

    template = (REPO / "deploy" / "gramine" / "kettle.manifest.template").read_text()
    rendered = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(template).render(
        gramine=Gramine, service="storage", arch_libdir="/lib/x86_64-linux-gnu", site="/opt/kettle/site"
    )
    manifest = tomllib.loads(rendered)
    sgx = manifest["sgx"]
    assert sgx["remote_attestation"] == "dcap"
    assert sgx["debug"] is False
    assert manifest["loader"]["argv"] == ["/usr/bin/python3.11", "-m", "kettle", "service", "storage"]
    # Code and the measured home are trusted (hashed into MRENCLAVE); only enclave info is not.
    for measured in ("file:/opt/kettle/site/", "file:/usr/lib/python3.11/", "file:/usr/bin/python3.11",
                     "file:/etc/kettle/home/"):
        assert measured in sgx["trusted_files"]
    assert sgx["allowed_files"] == ["file:/etc/kettle/enclave-info/"]
    mounts = {m["path"]: m for m in manifest["fs"]["mounts"]}
    assert mounts["/var/lib/kettle"]["type"] == "encrypted"
    assert mounts["/var/lib/kettle"]["key_name"] == "_sgx_mrenclave"
    home = tomllib.loads((REPO / "deploy" / "gramine" / "home" / "kettle.toml").read_text())
    assert home["attestation"]["backend"] == "gramine-sgx"
    assert home["audit"]["enclave_info"].startswith("/etc/kettle/enclave-info/")
