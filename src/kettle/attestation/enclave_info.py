"""``enclave_info.toml``: the auditor-signed list of each service's measurement.

Format and signatures as Teaclave (``spec/attestation.md`` §4): one table per
service named ``teaclave_<service>_service`` with lowercase-hex ``mr_enclave`` and
``mr_signer``; each auditor signs the exact file bytes with RSA PKCS#1 v1.5 /
SHA-256 into ``<auditor>.sign.sha256`` beside the file. Kettle is stricter than
the reference: it requires ``threshold`` valid signatures from *distinct* known
auditors (zero signatures never pass, a repeated signature counts once), and
refuses any key it does not know.

A table may also list the service's measurements on real TEEs, one sub-table per
kind (``docs/attestation.md``, "Real TEE evidence at the attestation service")::

    [teaclave_storage_service]
    mr_enclave = "<tee_digest of the entries below>"
    mr_signer = "<64 hex>"

    [teaclave_storage_service.sev_snp]
    measurements = ["<96 hex>"]                       # SNP launch measurements

    [teaclave_storage_service.tdx]
    accepted = [{ mrtd = "<96 hex>", rtmr0 = "…", rtmr1 = "…", rtmr2 = "…", rtmr3 = "…" }]

    [teaclave_storage_service.sgx]
    mr_enclave = ["<64 hex>"]
    mr_signer = ["<64 hex>"]
    isv_prod_id = 0
    min_isv_svn = 1

Teaclave's clients read only ``mr_enclave`` and ``mr_signer``; for such a table
``mr_enclave`` must be :func:`tee_digest` of its entries, which is what the
attestation service puts where Teaclave expects MRENCLAVE once the evidence
matched one of them.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ..errors import AttestationError

if TYPE_CHECKING:
    from .dcap import DcapMeasurements

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX96 = re.compile(r"[0-9a-f]{96}")
SIGNATURE_SUFFIX = ".sign.sha256"
PUBLIC_KEY_SUFFIX = ".public.pem"

SERVICE_KEYS = ("mr_enclave", "mr_signer")
KIND_TABLES = {"sev-snp": "sev_snp", "tdx": "tdx", "sgx": "sgx"}
"""Evidence kind (``Evidence.tee_type``) → the sub-table that lists its measurements."""
TDX_FIELDS = ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3")
SGX_KEYS = ("mr_enclave", "mr_signer", "isv_prod_id", "min_isv_svn")
TEE_DIGEST_DOMAIN = "kettle enclave info tee measurements v1"

TdxMeasurement = tuple[bytes, bytes, bytes, bytes, bytes]
"""MRTD, RTMR0, RTMR1, RTMR2, RTMR3 (48 bytes each)."""


def table_name(service: str) -> str:
    return f"teaclave_{service}_service"


@dataclass(frozen=True)
class SgxMeasurement:
    """Accepted SGX enclaves; a field left None is not checked (at least one is set)."""

    mr_enclave: frozenset[bytes] | None = None
    mr_signer: frozenset[bytes] | None = None
    isv_prod_id: int | None = None
    min_isv_svn: int | None = None


@dataclass(frozen=True)
class TeeMeasurements:
    """A service's accepted measurements per real TEE kind; None: that kind is not accepted."""

    sev_snp: frozenset[bytes] | None = None
    tdx: frozenset[TdxMeasurement] | None = None
    sgx: SgxMeasurement | None = None

    @property
    def kinds(self) -> list[str]:
        return [kind for kind, attr in KIND_TABLES.items() if getattr(self, attr) is not None]

    def dcap(self, kind: str) -> DcapMeasurements | None:
        """What ``dcap.examine_dcap_quote(measurements=)`` takes for ``kind`` (``tdx``, ``sgx``)."""
        from .dcap import DcapMeasurements

        if kind == "tdx" and self.tdx is not None:
            return DcapMeasurements(td=self.tdx)
        if kind == "sgx" and self.sgx is not None:
            s = self.sgx
            return DcapMeasurements(
                mr_enclave=s.mr_enclave, mr_signer=s.mr_signer, isv_prod_id=s.isv_prod_id, min_isv_svn=s.min_isv_svn
            )
        return None

    def canonical(self) -> dict[str, Any]:
        """The entries as plain JSON values in one canonical order (what :func:`tee_digest` hashes)."""
        doc: dict[str, Any] = {}
        if self.sev_snp is not None:
            doc["sev-snp"] = sorted(m.hex() for m in self.sev_snp)
        if self.tdx is not None:
            doc["tdx"] = sorted([m.hex() for m in t] for t in self.tdx)
        if self.sgx is not None:
            s = self.sgx
            doc["sgx"] = {
                "mr_enclave": None if s.mr_enclave is None else sorted(m.hex() for m in s.mr_enclave),
                "mr_signer": None if s.mr_signer is None else sorted(m.hex() for m in s.mr_signer),
                "isv_prod_id": s.isv_prod_id,
                "min_isv_svn": s.min_isv_svn,
            }
        return doc


def tee_digest(service: str, tee: TeeMeasurements) -> bytes:
    """The 32-byte value that stands for ``service``'s TEE measurements where Teaclave expects MRENCLAVE.

    SHA-256 over the compact, key-sorted JSON of ``{"domain": TEE_DIGEST_DOMAIN,
    "service": service, "measurements": tee.canonical()}``. It covers the TEE kinds
    and every measurement field (a change to any accepted value changes it, as a code
    change changes an enclave's MRENCLAVE), the domain (never equal to a simulation
    code hash or an SGX MRENCLAVE) and the service name: services booted from one
    VM image share the hardware measurement, and peers pin each other by this value,
    so without the name the storage service could be taken for the frontend.
    """
    doc = {"domain": TEE_DIGEST_DOMAIN, "service": service, "measurements": tee.canonical()}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).digest()


@dataclass(frozen=True)
class Measurement:
    mr_enclave: bytes
    mr_signer: bytes
    tee: TeeMeasurements | None = None


@dataclass(frozen=True)
class EnclaveInfo:
    """Measurements by service name (``authentication``, not the table name)."""

    services: dict[str, Measurement]

    def services_matching(self, mr_enclave: bytes, mr_signer: bytes) -> list[str]:
        return sorted(
            name
            for name, m in self.services.items()
            if m.mr_enclave == mr_enclave and m.mr_signer == mr_signer
        )

    def measurement(self, service: str) -> Measurement:
        try:
            return self.services[service]
        except KeyError:
            raise AttestationError(f"enclave info has no entry for service {service!r}") from None

    def tee_measurements(self, service: str, kind: str) -> TeeMeasurements:
        """The service's TEE measurements, refusing when it lists none of ``kind``."""
        tee = self.measurement(service).tee
        if tee is None or kind not in tee.kinds:
            table = f"[{table_name(service)}.{KIND_TABLES.get(kind, kind)}]"
            raise AttestationError(f"enclave info lists no {kind} measurements for {service} (no {table})")
        return tee

    @classmethod
    def parse(cls, data: bytes) -> EnclaveInfo:
        try:
            doc = tomllib.loads(data.decode())
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise AttestationError(f"enclave info is not valid TOML: {exc}") from None
        services: dict[str, Measurement] = {}
        for table, entry in doc.items():
            match = re.fullmatch(r"teaclave_(\w+)_service", table)
            if not match or not isinstance(entry, dict):
                raise AttestationError(f"enclave info has an unexpected entry [{table}]")
            _only_keys(f"[{table}]", entry, (*SERVICE_KEYS, *KIND_TABLES.values()))
            values = []
            for key in SERVICE_KEYS:
                value = entry.get(key)
                if not isinstance(value, str) or not _HEX64.fullmatch(value):
                    raise AttestationError(f"[{table}] {key} must be 64 lowercase hex characters")
                values.append(bytes.fromhex(value))
            tee = _parse_tee(table, entry)
            service = match.group(1)
            if tee is not None:
                digest = tee_digest(service, tee)
                if values[0] != digest:
                    raise AttestationError(
                        f"[{table}] mr_enclave is not the digest of its TEE measurements ({digest.hex()}): "
                        "write it with `kettle audit add-measurement` or kettle.attestation.enclave_info.tee_digest"
                    )
            services[service] = Measurement(values[0], values[1], tee)
        return cls(services)

    def render(self) -> bytes:
        lines = []
        for name in sorted(self.services):
            m = self.services[name]
            lines += [
                f"[{table_name(name)}]",
                f'mr_enclave = "{m.mr_enclave.hex()}"',
                f'mr_signer = "{m.mr_signer.hex()}"',
                "",
            ]
            if m.tee is not None:
                lines += _render_tee(table_name(name), m.tee)
        return "\n".join(lines).encode()


def with_tee_measurement(
    info: EnclaveInfo,
    service: str,
    *,
    sev_snp: bytes | None = None,
    tdx: TdxMeasurement | None = None,
    sgx: SgxMeasurement | None = None,
    mr_signer: bytes | None = None,
) -> EnclaveInfo:
    """``info`` with one more accepted SNP measurement or TDX tuple, or the SGX entry set, for
    ``service``, and its ``mr_enclave`` recomputed (what ``kettle audit add-measurement`` writes).

    A service's simulation entry is replaced by a TEE entry; ``mr_signer`` is kept unless given
    (a new entry needs one).
    """
    if sum(x is not None for x in (sev_snp, tdx, sgx)) != 1:
        raise AttestationError("give exactly one of an SNP measurement, a TDX measurement or an SGX entry")
    if sev_snp is not None and len(sev_snp) != 48:
        raise AttestationError("an SNP measurement is 48 bytes")
    if tdx is not None and (len(tdx) != 5 or any(len(v) != 48 for v in tdx)):
        raise AttestationError("a TDX measurement is five 48-byte values: MRTD, RTMR0, RTMR1, RTMR2, RTMR3")
    if mr_signer is not None and len(mr_signer) != 32:
        raise AttestationError("mr_signer is 32 bytes")
    current = info.services.get(service)
    signer = mr_signer or (current.mr_signer if current else None)
    if signer is None:
        raise AttestationError(f"enclave info has no entry for {service}: give its mr_signer")
    tee = (current.tee if current else None) or TeeMeasurements()
    if sev_snp is not None:
        tee = replace(tee, sev_snp=(tee.sev_snp or frozenset()) | {sev_snp})
    elif tdx is not None:
        tee = replace(tee, tdx=(tee.tdx or frozenset()) | {tdx})
    else:
        tee = replace(tee, sgx=sgx)
    services = dict(info.services)
    services[service] = Measurement(tee_digest(service, tee), signer, tee)
    # Round trip through the strict parser: what is written is exactly what will be read.
    return EnclaveInfo.parse(EnclaveInfo(services).render())


def _only_keys(where: str, table: dict[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise AttestationError(
            f"{where} has unknown key(s) {', '.join(unknown)} (allowed: {', '.join(allowed)})"
        )


def _hex_list(where: str, value: object, pattern: re.Pattern[str], size: int) -> frozenset[bytes]:
    if not isinstance(value, list) or not value:
        raise AttestationError(f"{where} must be a non-empty list of {size * 2} lowercase hex characters")
    for item in value:
        if not isinstance(item, str) or not pattern.fullmatch(item):
            raise AttestationError(f"{where} must be a non-empty list of {size * 2} lowercase hex characters")
    return frozenset(bytes.fromhex(item) for item in value)


def _parse_tee(table: str, entry: dict[str, Any]) -> TeeMeasurements | None:
    parts: dict[str, Any] = {}
    for kind_table in KIND_TABLES.values():
        sub = entry.get(kind_table)
        if sub is None:
            continue
        where = f"[{table}.{kind_table}]"
        if not isinstance(sub, dict):
            raise AttestationError(f"{where} must be a table")
        if kind_table == "sev_snp":
            _only_keys(where, sub, ("measurements",))
            parts["sev_snp"] = _hex_list(f"{where} measurements", sub.get("measurements"), _HEX96, 48)
        elif kind_table == "tdx":
            _only_keys(where, sub, ("accepted",))
            accepted = sub.get("accepted")
            if not isinstance(accepted, list) or not accepted:
                raise AttestationError(f"{where} accepted must be a non-empty list of {{ {', '.join(TDX_FIELDS)} }} tables")
            tds: set[TdxMeasurement] = set()
            for item in accepted:
                if not isinstance(item, dict) or set(item) != set(TDX_FIELDS):
                    raise AttestationError(f"{where} accepted entries have exactly the keys {', '.join(TDX_FIELDS)}")
                for key in TDX_FIELDS:
                    if not isinstance(item[key], str) or not _HEX96.fullmatch(item[key]):
                        raise AttestationError(f"{where} {key} must be 96 lowercase hex characters")
                mrtd, r0, r1, r2, r3 = (bytes.fromhex(item[k]) for k in TDX_FIELDS)
                tds.add((mrtd, r0, r1, r2, r3))
            parts["tdx"] = frozenset(tds)
        else:
            _only_keys(where, sub, SGX_KEYS)
            if not sub:
                raise AttestationError(f"{where} must set at least one of {', '.join(SGX_KEYS)}")
            sgx: dict[str, Any] = {}
            for key in ("mr_enclave", "mr_signer"):
                if key in sub:
                    sgx[key] = _hex_list(f"{where} {key}", sub[key], _HEX64, 32)
            for key in ("isv_prod_id", "min_isv_svn"):
                if key in sub:
                    value = sub[key]
                    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0xFFFF:
                        raise AttestationError(f"{where} {key} must be an integer 0..65535")
                    sgx[key] = value
            parts["sgx"] = SgxMeasurement(**sgx)
    return TeeMeasurements(**parts) if parts else None


def _render_tee(table: str, tee: TeeMeasurements) -> list[str]:
    lines: list[str] = []
    if tee.sev_snp is not None:
        lines += [f"[{table}.sev_snp]", "measurements = ["]
        lines += [f'  "{m.hex()}",' for m in sorted(tee.sev_snp)]
        lines += ["]", ""]
    if tee.tdx is not None:
        lines += [f"[{table}.tdx]", "accepted = ["]
        for td in sorted(tee.tdx):
            fields = ", ".join(f'{k} = "{v.hex()}"' for k, v in zip(TDX_FIELDS, td, strict=True))
            lines.append(f"  {{ {fields} }},")
        lines += ["]", ""]
    if tee.sgx is not None:
        lines.append(f"[{table}.sgx]")
        for key in ("mr_enclave", "mr_signer"):
            values = getattr(tee.sgx, key)
            if values is not None:
                lines.append(f"{key} = {json.dumps(sorted(v.hex() for v in values))}")
        for key in ("isv_prod_id", "min_isv_svn"):
            value = getattr(tee.sgx, key)
            if value is not None:
                lines.append(f"{key} = {value}")
        lines.append("")
    return lines


def sign_enclave_info(data: bytes, key: rsa.RSAPrivateKey) -> bytes:
    return key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def count_valid_signatures(
    data: bytes, signatures: list[bytes], auditors: dict[str, rsa.RSAPublicKey]
) -> set[str]:
    """Names of the distinct auditor *keys* that signed ``data`` among ``signatures``.

    One key listed under two names counts once (by its first name in sorted order),
    so a threshold cannot be met by renaming an auditor.
    """
    by_key: dict[bytes, str] = {}
    for name in sorted(auditors):
        der = auditors[name].public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
        by_key.setdefault(der, name)
    signed: set[str] = set()
    for signature in signatures:
        for name in by_key.values():
            try:
                auditors[name].verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
            except (InvalidSignature, ValueError):
                continue
            signed.add(name)
    return signed


def verify_enclave_info(
    data: bytes, signatures: list[bytes], auditors: dict[str, rsa.RSAPublicKey], threshold: int
) -> EnclaveInfo:
    """Parse ``data`` only if at least ``threshold`` distinct known auditors signed it."""
    if threshold < 1:
        raise AttestationError("auditor threshold must be at least 1")
    signed = count_valid_signatures(data, signatures, auditors)
    if len(signed) < threshold:
        raise AttestationError(
            f"enclave info has {len(signed)} valid auditor signature(s), {threshold} required"
            + (f" (valid: {', '.join(sorted(signed))})" if signed else "")
        )
    return EnclaveInfo.parse(data)


def signatures_beside(path: Path) -> list[bytes]:
    """Every ``*.sign.sha256`` file in the enclave info's directory."""
    return [p.read_bytes() for p in sorted(path.parent.glob("*" + SIGNATURE_SUFFIX))]


def auditor_keys_beside(path: Path) -> dict[str, rsa.RSAPublicKey]:
    """The auditor public keys a client keeps beside enclave info (``<name>.public.pem``)."""
    keys: dict[str, rsa.RSAPublicKey] = {}
    for p in sorted(path.parent.glob("*" + PUBLIC_KEY_SUFFIX)):
        key = serialization.load_pem_public_key(p.read_bytes())
        if not isinstance(key, rsa.RSAPublicKey):
            raise AttestationError(f"auditor key {p.name} is not an RSA public key")
        keys[p.name.removesuffix(PUBLIC_KEY_SUFFIX)] = key
    return keys


def load_enclave_info(
    path: Path, auditors: dict[str, rsa.RSAPublicKey], threshold: int
) -> EnclaveInfo:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise AttestationError(f"enclave info {path} is missing") from None
    return verify_enclave_info(data, signatures_beside(path), auditors, threshold)
