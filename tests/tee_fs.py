"""FUSE emulations of the TEE file ABIs the evidence providers drive (``spec/attestation.md`` §6.1, §6.2).

``python tests/tee_fs.py MOUNTPOINT tsm --provider sev_guest [--interfere N] [--auxblob FILE]``
mounts a configfs-tsm report directory that behaves like the kernel's:

- ``mkdir NAME`` creates an entry with ``inblob``, ``outblob``, ``auxblob``,
  ``provider``, ``generation``, ``privlevel`` and ``privlevel_floor``; ``rmdir``
  removes it with its attributes (which a plain directory would refuse);
- a binary attribute (``inblob``) is committed when the writer closes the file, a
  text attribute (``privlevel``) on write; each commit increments ``generation``;
  ``inblob`` takes at most 64 bytes (EFBIG beyond);
- ``outblob`` is EINVAL before ``inblob`` was written, and EINVAL unless it was
  exactly 64 bytes; otherwise it is a report for exactly the current ``inblob``: an
  SNP ATTESTATION_REPORT (1184 bytes, report data at 0x50) for ``sev_guest``, a
  TDX v4 quote (report data at 568) for ``tdx_guest``;
- ``--interfere N`` plays another writer for the first N reports of each entry:
  just before the report is generated it writes other data to the entry's
  ``inblob`` (so the report is for that data and the generation moved), as a
  second process sharing the entry would; with ``--interfere-same`` it writes the
  same bytes again, so only the moved generation shows it;
- an SNP report carries the entry's ``privlevel`` as its VMPL (offset 0x30);
- ``auxblob`` has the bytes of ``--auxblob`` (empty by default, as when the host
  supplies no certificates).

With ``--test-hardware KIT`` the reports are SIGNED, by test hardware that
``save_snp_hardware`` (``sev_guest``: an SNP report signed by the kit's VCEK, and
``auxblob`` the certificate table holding that VCEK) or ``save_dcap_roots``
(``tdx_guest``: a TDX v4 quote under the kit's PCK chain) wrote to KIT, with the
launch measurement ``--measurement HEX`` (SNP: 48 bytes; TDX: MRTD then RTMR0-3, 5 × 48
bytes). The attestation service verifies them under the kit's roots
(``unsafe_test_roots``); nothing real ever verifies them.

``python tests/tee_fs.py MOUNTPOINT gramine [--attestation-type dcap]
[--mrenclave HEX] [--mrsigner HEX] [--no-keys]`` mounts Gramine's ``/dev/attestation``:
``attestation_type``, ``user_report_data`` (64 bytes; shorter writes zero-padded,
longer ones truncated), ``quote`` (an SGX v3 quote whose report data, at 368, is
the current ``user_report_data``) and ``keys/`` with the SGX sealing keys
``_sgx_mrenclave`` and ``_sgx_mrsigner``: 16 bytes each, derived (HMAC of an
emulated CPU secret) from the emulated MRENCLAVE or MRSIGNER alone, as EGETKEY
derives them from the identity its key policy names. ``--no-keys`` plays a
Gramine older than 1.4, which has no ``keys/``.

Without a kit, evidence is shaped like the real thing but signed by nothing: the
providers under test do not verify evidence, the attestation service does. Every file is
opened with direct I/O so each read reaches this process, as configfs does.
"""

from __future__ import annotations

import argparse
import base64
import errno
import hashlib
import hmac
import json
import stat
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import mfusepy as fuse
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

TSM_ATTRIBUTES = {
    # name: (mode, binary)
    "inblob": (0o200, True),
    "outblob": (0o444, True),
    "auxblob": (0o444, True),
    "provider": (0o444, False),
    "generation": (0o444, False),
    "privlevel": (0o200, False),
    "privlevel_floor": (0o444, False),
}
OTHER_WRITER_DATA = b"\xee" * 64


def snp_report(report_data: bytes, vmpl: int) -> bytes:
    report = bytearray(0x4A0)
    struct.pack_into("<III", report, 0, 3, 0, 0)  # version 3, guest svn 0, policy low word
    struct.pack_into("<I", report, 0x30, vmpl)
    struct.pack_into("<I", report, 0x34, 1)  # ECDSA P-384 with SHA-384
    report[0x50:0x90] = report_data
    report[0x90:0xC0] = hashlib.sha384(b"emulated launch").digest()
    return bytes(report)


def tdx_quote(report_data: bytes, _privlevel: int) -> bytes:  # TDX has no VMPL
    header = struct.pack("<HHI", 4, 2, 0x81).ljust(48, b"\0")
    body = bytearray(584)
    body[520:584] = report_data  # REPORTDATA is the body's last field: quote offset 568
    signature_data = b"\x01" * 64 + b"\x02" * 64
    return header + bytes(body) + struct.pack("<I", len(signature_data)) + signature_data


def sgx_quote(report_data: bytes) -> bytes:
    header = struct.pack("<HHI", 3, 2, 0).ljust(48, b"\0")
    body = bytearray(384)
    body[320:384] = report_data
    signature_data = b"\x03" * 64
    return header + bytes(body) + struct.pack("<I", len(signature_data)) + signature_data


REPORTS = {"sev_guest": snp_report, "tdx_guest": tdx_quote}

# --- signing test hardware (a kit the test and this process share) -------------------

# Run as a script, this file's folder is on sys.path, so the test-hardware modules beside it import.
from dcap_test_roots import DcapTestRoots, _Issued  # noqa: E402
from snp_test_roots import SnpTestHardware  # noqa: E402

from kettle.attestation.providers import SNP_CERT_GUIDS  # noqa: E402
from kettle.attestation.snp import SnpProductRoots, SnpTcb  # noqa: E402

SNP_GUEST_POLICY = 0x30000  # SMT allowed, reserved bit 17 set; no debug, no migration agent


def _key_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()


def _load_key(pem: str) -> Any:
    return serialization.load_pem_private_key(pem.encode(), password=None)


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def save_snp_hardware(hardware: SnpTestHardware, path: Path) -> None:
    """Write ``hardware`` (its private keys too) where ``--test-hardware`` reads it."""
    path.write_text(json.dumps({
        "kind": "sev-snp",
        "product": hardware.product,
        "keys": {name: _key_pem(getattr(hardware, f"{name}_key")) for name in ("ark", "ask", "asvk", "vcek", "vlek")},
        "chain": {name: _cert_pem(getattr(hardware.chain, name)) for name in ("ark", "ask", "asvk")},
        "chip_id": hardware.chip_id.hex(),
        "tcb": hardware.tcb.components(),
        "vcek": base64.b64encode(hardware.vcek).decode(),
        "vlek": base64.b64encode(hardware.vlek).decode(),
    }))


def load_snp_hardware(path: Path) -> SnpTestHardware:
    doc = json.loads(path.read_text())
    keys = {name: _load_key(pem) for name, pem in doc["keys"].items()}
    chain = {name: x509.load_pem_x509_certificate(pem.encode()) for name, pem in doc["chain"].items()}
    return SnpTestHardware(
        product=doc["product"], ark_key=keys["ark"], ask_key=keys["ask"], asvk_key=keys["asvk"],
        chain=SnpProductRoots(**chain), chip_id=bytes.fromhex(doc["chip_id"]), tcb=SnpTcb(**doc["tcb"]),
        vcek_key=keys["vcek"], vcek=base64.b64decode(doc["vcek"]), vlek_key=keys["vlek"], vlek=base64.b64decode(doc["vlek"]),
    )


def save_dcap_roots(roots: DcapTestRoots, path: Path) -> None:
    """Write ``roots`` (their private keys too) where ``--test-hardware`` reads them."""
    issued = {name: {"key": _key_pem(getattr(roots, name).key), "cert": _cert_pem(getattr(roots, name).cert)}
              for name in ("root", "pck_ca", "pck", "tcb_signing")}
    path.write_text(json.dumps({
        "kind": "tdx", "template": roots.template, "not_before": roots.not_before.isoformat(),
        "issued": issued, "attestation_key": _key_pem(roots.attestation_key),
    }))


def load_dcap_roots(path: Path) -> DcapTestRoots:
    doc = json.loads(path.read_text())
    issued = {name: _Issued(_load_key(v["key"]), x509.load_pem_x509_certificate(v["cert"].encode()))
              for name, v in doc["issued"].items()}
    return DcapTestRoots(
        issued["root"], issued["pck_ca"], issued["pck"], issued["tcb_signing"], _load_key(doc["attestation_key"]),
        datetime.fromisoformat(doc["not_before"]), doc["template"],
    )


def certificate_table(certificates: list[tuple[str, bytes]]) -> bytes:
    """An SNP certificate table as the host lays it out: entries, an all-zero entry, the DER blobs."""
    guid_of = {kind: guid for guid, kind in SNP_CERT_GUIDS.items()}
    offset = 24 * (len(certificates) + 1)
    header, body = b"", b""
    for kind, der in certificates:
        header += guid_of[kind].bytes + struct.pack("<II", offset + len(body), len(der))
        body += der
    return header + bytes(24) + body


def signed_reports(provider: str, kit: Path, measurement: bytes) -> tuple[Callable[[bytes, int], bytes], bytes]:
    """The report maker for ``provider`` signing with the kit at ``kit``, and the ``auxblob`` it comes with."""
    if provider == "sev_guest":
        hardware = load_snp_hardware(kit)
        if len(measurement) != 48:
            raise SystemExit("--measurement: an SNP launch measurement is 48 bytes")

        def snp(report_data: bytes, vmpl: int) -> bytes:
            return hardware.report(report_data=report_data, measurement=measurement, vmpl=vmpl, policy=SNP_GUEST_POLICY)

        return snp, certificate_table([("vcek", hardware.vcek)])
    roots = load_dcap_roots(kit)
    if len(measurement) != 5 * 48:
        raise SystemExit("--measurement: a TDX measurement is MRTD, RTMR0, RTMR1, RTMR2, RTMR3 (5 x 48 bytes)")
    parts = [measurement[i : i + 48] for i in range(0, 240, 48)]

    def tdx(report_data: bytes, _privlevel: int) -> bytes:
        return roots.tdx_quote(report_data=report_data, mr_td=parts[0], rtmrs=(parts[1], parts[2], parts[3], parts[4]))

    return tdx, b""


@dataclass
class Entry:
    inblob: bytes | None = None
    generation: int = 0
    privlevel: int = 0
    outblob: bytes | None = None
    outblob_generation: int = -1
    reports: int = 0


@dataclass
class Handle:
    path: str
    written: bytearray = field(default_factory=bytearray)
    content: bytes | None = None


class _Base(fuse.Operations):
    use_ns = True

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self.handles: dict[int, Handle] = {}
        self.next_fh = 1
        self.started = time.time_ns()

    def _stat(self, mode: int, size: int = 0) -> dict[str, Any]:
        now = self.started
        return {"st_mode": mode, "st_nlink": 2 if stat.S_ISDIR(mode) else 1, "st_size": size,
                "st_atime": now, "st_mtime": now, "st_ctime": now, "st_uid": 0, "st_gid": 0}

    def _new_handle(self, path: str, fi: Any) -> int:
        fi.direct_io = True
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = Handle(path)
        fi.fh = fh
        return 0


class TsmReport(_Base):
    """configfs ``tsm/report`` with one provider."""

    def __init__(
        self, provider: str, interfere: int, interfere_same: bool, auxblob: bytes,
        report: Callable[[bytes, int], bytes] | None = None,
    ) -> None:
        super().__init__()
        self.provider = provider
        self.report = report or REPORTS[provider]
        self.interfere = interfere
        self.interfere_same = interfere_same
        self.auxblob = auxblob
        self.entries: dict[str, Entry] = {}

    def _split(self, path: str) -> tuple[str, str | None]:
        parts = path.strip("/").split("/")
        if len(parts) == 1:
            return parts[0], None
        if len(parts) == 2:
            return parts[0], parts[1]
        raise fuse.FuseOSError(errno.ENOENT)

    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        with self._mutex:
            if path == "/":
                return self._stat(stat.S_IFDIR | 0o755)
            name, attribute = self._split(path)
            if name not in self.entries or (attribute is not None and attribute not in TSM_ATTRIBUTES):
                raise fuse.FuseOSError(errno.ENOENT)
            if attribute is None:
                return self._stat(stat.S_IFDIR | 0o755)
            mode, _ = TSM_ATTRIBUTES[attribute]
            # configfs reports 4096 for text attributes and 0 for binary ones; reads run to EOF.
            return self._stat(stat.S_IFREG | mode, 0 if TSM_ATTRIBUTES[attribute][1] else 4096)

    def readdir(self, path: str, fh: Any) -> list[str]:
        with self._mutex:
            if path == "/":
                return [".", "..", *self.entries]
            name, attribute = self._split(path)
            if attribute is not None or name not in self.entries:
                raise fuse.FuseOSError(errno.ENOTDIR)
            return [".", "..", *TSM_ATTRIBUTES]

    def mkdir(self, path: str, mode: int) -> int:
        with self._mutex:
            name, attribute = self._split(path)
            if attribute is not None:
                raise fuse.FuseOSError(errno.EPERM)
            if name in self.entries:
                raise fuse.FuseOSError(errno.EEXIST)
            self.entries[name] = Entry()
            return 0

    def rmdir(self, path: str) -> int:
        with self._mutex:
            name, attribute = self._split(path)
            if attribute is not None or name not in self.entries:
                raise fuse.FuseOSError(errno.ENOENT)
            del self.entries[name]
            return 0

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        raise fuse.FuseOSError(errno.EPERM)  # configfs: only the kernel makes attributes

    def unlink(self, path: str) -> int:
        raise fuse.FuseOSError(errno.EPERM)

    def truncate(self, path: str, length: int, fh: Any = None) -> int:
        return 0  # O_TRUNC on an attribute is accepted and means nothing, as in configfs

    def open(self, path: str, fi: Any) -> int:
        with self._mutex:
            name, attribute = self._split(path)
            if name not in self.entries or attribute not in TSM_ATTRIBUTES:
                raise fuse.FuseOSError(errno.ENOENT)
            mode, _ = TSM_ATTRIBUTES[attribute]
            writing = fi.flags & 3 != 0
            if (writing and not mode & 0o200) or (fi.flags & 3 != 1 and not mode & 0o444):
                raise fuse.FuseOSError(errno.EACCES)
            return self._new_handle(path, fi)

    def _content(self, entry: Entry, attribute: str) -> bytes:
        if attribute == "provider":
            return f"{self.provider}\n".encode()
        if attribute == "generation":
            return f"{entry.generation}\n".encode()
        if attribute == "privlevel_floor":
            return b"0\n"
        if attribute == "auxblob":
            return self.auxblob
        if attribute == "outblob":
            if entry.reports < self.interfere:
                # Another process sharing this entry writes its own data just now (or, with
                # --interfere-same, rewrites the same bytes: only the generation tells).
                if not self.interfere_same or entry.inblob is None:
                    entry.inblob = OTHER_WRITER_DATA
                entry.generation += 1
            entry.reports += 1
            if entry.inblob is None or len(entry.inblob) != 64:
                raise fuse.FuseOSError(errno.EINVAL)
            if entry.outblob_generation != entry.generation:
                entry.outblob = self.report(entry.inblob, entry.privlevel)
                entry.outblob_generation = entry.generation
            assert entry.outblob is not None
            return entry.outblob
        raise fuse.FuseOSError(errno.EACCES)

    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        with self._mutex:
            handle = self.handles[fi.fh]
            name, attribute = self._split(path)
            entry = self.entries.get(name)
            if entry is None or attribute is None:
                raise fuse.FuseOSError(errno.ENOENT)
            if handle.content is None:  # configfs fills an open file's buffer once, on its first read
                handle.content = self._content(entry, attribute)
            return handle.content[offset:offset + size]

    def write(self, path: str, data: bytes, offset: int, fi: Any) -> int:
        with self._mutex:
            handle = self.handles[fi.fh]
            name, attribute = self._split(path)
            entry = self.entries.get(name)
            if entry is None or attribute is None:
                raise fuse.FuseOSError(errno.ENOENT)
            if attribute == "privlevel":
                try:
                    level = int(data.decode().strip())
                except ValueError:
                    raise fuse.FuseOSError(errno.EINVAL) from None
                if not 0 <= level <= 3:
                    raise fuse.FuseOSError(errno.EINVAL)
                entry.privlevel = level
                entry.generation += 1
                return len(data)
            if offset + len(data) > 64:
                raise fuse.FuseOSError(errno.EFBIG)
            handle.written[offset:offset + len(data)] = data
            return len(data)

    def flush(self, path: str, fi: Any) -> int:
        # configfs commits a binary attribute when its file is closed; FUSE's flush is the
        # part of close() the closing process waits for (release arrives asynchronously).
        with self._mutex:
            handle = self.handles[fi.fh]
            name, attribute = self._split(path)
            entry = self.entries.get(name)
            if entry is not None and attribute == "inblob" and handle.written:
                entry.inblob = bytes(handle.written)
                entry.generation += 1
                handle.written.clear()
            return 0

    def release(self, path: str, fi: Any) -> int:
        with self._mutex:
            self.handles.pop(fi.fh, None)
            return 0


SGX_CPU_SECRET = b"emulated SGX CPU secret"


def sgx_sealing_key(policy: str, identity: bytes) -> bytes:
    """The emulated EGETKEY seal key for ``policy`` (``mrenclave`` or ``mrsigner``) and that identity."""
    return hmac.new(SGX_CPU_SECRET, policy.encode() + b"\0" + identity, hashlib.sha256).digest()[:16]


class GramineAttestation(_Base):
    """Gramine's ``/dev/attestation`` (the subset the provider uses)."""

    FILES: ClassVar[dict[str, int]] = {"attestation_type": 0o444, "user_report_data": 0o644, "quote": 0o444}

    def __init__(self, attestation_type: str, mrenclave: bytes, mrsigner: bytes, keys: bool) -> None:
        super().__init__()
        self.attestation_type = attestation_type
        self.user_report_data = bytes(64)
        self.keys = {
            "_sgx_mrenclave": sgx_sealing_key("mrenclave", mrenclave),
            "_sgx_mrsigner": sgx_sealing_key("mrsigner", mrsigner),
        } if keys else None

    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        if path == "/":
            return self._stat(stat.S_IFDIR | 0o755)
        name = path.strip("/")
        if self.keys is not None and name == "keys":
            return self._stat(stat.S_IFDIR | 0o755)
        if self.keys is not None and name.removeprefix("keys/") in self.keys:
            return self._stat(stat.S_IFREG | 0o444, 16)
        if name not in self.FILES or (name == "quote" and self.attestation_type == "none"):
            raise fuse.FuseOSError(errno.ENOENT)
        return self._stat(stat.S_IFREG | self.FILES[name])

    def readdir(self, path: str, fh: Any) -> list[str]:
        if path.strip("/") == "keys" and self.keys is not None:
            return [".", "..", *self.keys]
        return [".", "..", *self.FILES, *(["keys"] if self.keys is not None else [])]

    def open(self, path: str, fi: Any) -> int:
        self.getattr(path)
        with self._mutex:
            return self._new_handle(path, fi)

    def truncate(self, path: str, length: int, fh: Any = None) -> int:
        return 0

    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        with self._mutex:
            handle = self.handles[fi.fh]
            if handle.content is None:
                name = path.strip("/")
                if name == "attestation_type":
                    handle.content = f"{self.attestation_type}\n".encode()
                elif name == "user_report_data":
                    handle.content = self.user_report_data
                elif name.startswith("keys/"):
                    assert self.keys is not None  # open() found the file
                    handle.content = self.keys[name.removeprefix("keys/")]
                else:
                    handle.content = sgx_quote(self.user_report_data)
            return handle.content[offset:offset + size]

    def write(self, path: str, data: bytes, offset: int, fi: Any) -> int:
        if path.strip("/") != "user_report_data":
            raise fuse.FuseOSError(errno.EACCES)
        with self._mutex:
            handle = self.handles[fi.fh]
            handle.written[offset:offset + len(data)] = data
            return len(data)

    def flush(self, path: str, fi: Any) -> int:
        with self._mutex:
            handle = self.handles[fi.fh]
            if path.strip("/") == "user_report_data" and handle.written:
                self.user_report_data = bytes(handle.written[:64]).ljust(64, b"\0")
                handle.written.clear()
            return 0

    def release(self, path: str, fi: Any) -> int:
        with self._mutex:
            self.handles.pop(fi.fh, None)
            return 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mountpoint")
    parser.add_argument("kind", choices=("tsm", "gramine"))
    parser.add_argument("--provider", default="sev_guest")
    parser.add_argument("--interfere", type=int, default=0)
    parser.add_argument("--interfere-same", action="store_true")
    parser.add_argument("--auxblob", default="")
    parser.add_argument("--test-hardware", default="", help="tsm: sign reports with this kit (save_snp_hardware / save_dcap_roots)")
    parser.add_argument("--measurement", default="", help="tsm with --test-hardware: the launch measurement (hex)")
    parser.add_argument("--attestation-type", default="dcap")
    parser.add_argument("--mrenclave", default="11" * 32, help="the emulated enclave's MRENCLAVE (hex)")
    parser.add_argument("--mrsigner", default="22" * 32, help="the emulated enclave's MRSIGNER (hex)")
    parser.add_argument("--no-keys", action="store_true", help="no keys/ directory (Gramine before 1.4)")
    args = parser.parse_args()
    operations: fuse.Operations
    if args.kind == "tsm":
        auxblob = Path(args.auxblob).read_bytes() if args.auxblob else b""
        report = None
        if args.test_hardware:
            report, table = signed_reports(args.provider, Path(args.test_hardware), bytes.fromhex(args.measurement))
            auxblob = auxblob or table
        operations = TsmReport(args.provider, args.interfere, args.interfere_same, auxblob, report)
    else:
        operations = GramineAttestation(
            args.attestation_type, bytes.fromhex(args.mrenclave), bytes.fromhex(args.mrsigner), not args.no_keys
        )
    fuse.FUSE(operations, args.mountpoint, foreground=True, raw_fi=True, nothreads=True,
              attr_timeout=0, entry_timeout=0, negative_timeout=0)


if __name__ == "__main__":
    main()
