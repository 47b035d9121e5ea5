"""The collateral cache: what the TEE verifiers need besides the evidence, fetched once and kept.

An SEV-SNP report is verified with the VCEK of its chip and reported TCB (AMD's Key
Distribution Service serves it); a DCAP quote with Intel's collateral for its platform
(PCK CRL, TCB info, QE identity, root CA CRL, from Intel's PCS or a PCCS). The
:class:`CollateralCache` keeps both on disk, one JSON file per entry with its expiry, and
hands them to the verifiers:

* ``snp_certificate(report, supplied)``: the VCEK or VLEK that signed ``report``. One the
  host supplied (the SNP certificate table) wins; else a fresh cached VCEK; else one
  fetched from AMD KDS. A VLEK is never fetched: AMD provisions it to the cloud provider,
  not to the public KDS, so only the host can supply it.
* ``dcap_collateral(quote)``: Intel's collateral JSON (what
  ``dcap_qvl.QuoteCollateralV3.from_json`` reads) for the quote's TEE, FMSPC and PCK CA.

Nothing fetched is trusted for what it claims: a VCEK is cached only if it chains to the
pinned roots and states exactly the chip id and TCB it was fetched for; Intel collateral
only if its TCB info and QE identity are for the quote's TEE and FMSPC and every signature
in it (TCB info, QE identity, both CRLs) verifies under the pinned root. An entry expires
at the earliest ``nextUpdate`` (or certificate end) of what it holds; expired entries are
refused unless ``unsafe_allow_expired_collateral`` is on. In ``offline`` mode nothing is
ever fetched: the cache must have been seeded (``kettle attest collateral import``).

``dcap_qvl`` 0.7.0 has a collateral fetcher (``get_collateral``), but it is async only,
needs a running event loop, returns one bundle without the expiry of its parts, and the
process crashed at interpreter exit after using it; the fetcher here is synchronous,
bounded and reports the URL and HTTP status of a failure.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import logging
import os
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import dcap_qvl
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from ..errors import AttestationError
from .backends import SnpCertificate
from .dcap import TEE_TYPE_TDX, intel_root_ca_der, parse_quote
from .snp import (
    PRODUCT_FAMILIES,
    SIGNING_KEY_VCEK,
    SIGNING_KEY_VLEK,
    TURIN_LAYOUT,
    SnpReport,
    SnpRoots,
    SnpTcb,
    _chain,
    amd_roots,
    load_snp_certificate,
    parse_snp_report,
    snp_certificate_info,
)

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger(__name__)

AMD_KDS_URL = "https://kdsintf.amd.com"
INTEL_PCS_URL = "https://api.trustedservices.intel.com"
FETCH_TIMEOUT_SECS = 10.0
MAX_RESPONSE_BYTES = 4 << 20  # Intel's largest PCK CRLs are a few hundred KiB
REFRESH_AT = 0.8  # an entry is renewed once 80% of its life (fetched .. expires) has passed
RETRY_SECS = 60.0  # after a failed renewal; doubled after each further failure
MAX_RETRY_SECS = 3600.0
ENTRY_FORMAT = 1

KIND_VCEK = "vcek"
KIND_TDX = "tdx"
KIND_SGX = "sgx"
KINDS = (KIND_VCEK, KIND_TDX, KIND_SGX)

# Response headers of Intel's PCS/PCCS API v4 that carry the (URL-encoded PEM) issuer chain of
# the body; v3 names first where PCS kept them, so a PCCS of either generation is read.
_PCK_CRL_CHAIN_HEADERS = ("SGX-PCK-CRL-Issuer-Chain",)
_TCB_INFO_CHAIN_HEADERS = ("TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain")
_QE_IDENTITY_CHAIN_HEADERS = ("SGX-Enclave-Identity-Issuer-Chain", "Enclave-Identity-Issuer-Chain")


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(text: str) -> datetime:
    moment = datetime.fromisoformat(text)  # Python 3.11 reads a trailing Z
    if moment.tzinfo is None:
        raise ValueError(f"time {text!r} has no timezone")
    return moment.astimezone(UTC)


# ---------------------------------------------------------------- entries


@dataclass(frozen=True)
class CollateralEntry:
    """One cached item: a VCEK (DER) or one platform's Intel collateral (JSON)."""

    kind: str  # vcek, tdx or sgx
    key: str  # vcek: "<product>/<chip id hex>/<reported TCB hex>"; tdx/sgx: "<FMSPC>/<processor|platform>"
    data: bytes
    fetched: datetime
    expires: datetime
    source: str  # the URL it came from, or "import"

    def state(self, now: datetime) -> str:
        """``fresh``, ``expiring`` (past the point where it is renewed) or ``expired``."""
        if now >= self.expires:
            return "expired"
        return "expiring" if now >= self.refresh_at else "fresh"

    @property
    def refresh_at(self) -> datetime:
        life = max(self.expires - self.fetched, timedelta(0))
        return self.fetched + life * REFRESH_AT

    def to_json(self) -> dict[str, Any]:
        return {
            "format": ENTRY_FORMAT,
            "kind": self.kind,
            "key": self.key,
            "fetched": _iso(self.fetched),
            "expires": _iso(self.expires),
            "source": self.source,
            "data": base64.b64encode(self.data).decode(),
        }

    @classmethod
    def from_json(cls, value: Any) -> CollateralEntry:
        try:
            if value["format"] != ENTRY_FORMAT or value["kind"] not in KINDS:
                raise ValueError("unknown format or kind")
            return cls(
                kind=value["kind"],
                key=str(value["key"]),
                data=base64.b64decode(value["data"], validate=True),
                fetched=_parse_iso(value["fetched"]),
                expires=_parse_iso(value["expires"]),
                source=str(value["source"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise AttestationError(f"not a collateral cache entry ({exc})") from None

    def file_name(self) -> str:
        return entry_file(self.kind, self.key)


def entry_file(kind: str, key: str) -> str:
    """Where an entry lives under the cache directory: ``<kind>/<hash of key>.json`` (keys are
    long hex strings; the hash keeps names short and free of path characters)."""
    return f"{kind}/{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"


# ---------------------------------------------------------------- SEV-SNP


def snp_products(report: SnpReport, roots: SnpRoots) -> list[str]:
    """The products whose VCEK may have signed ``report``, in the order to try.

    From version 3 the report states its CPUID family and model (combined extended model
    and model): family 19h models 00h-0Fh are Milan, 10h-1Fh and A0h-AFh Genoa; family 1Ah
    is Turin. A version 2 report does not say: Milan and Genoa are tried in turn (Turin
    only produces version 3 and later)."""
    if report.cpuid_family is None:
        products = [p for p in ("Milan", "Genoa") if p in roots]
        if not products:
            raise AttestationError("the report (version 2) is from a Milan or Genoa CPU, and neither root is pinned")
        return products
    family, model = report.cpuid_family, report.cpuid_model or 0
    product = None
    if family == PRODUCT_FAMILIES["Milan"] and model <= 0x0F:
        product = "Milan"
    elif family == PRODUCT_FAMILIES["Genoa"] and (0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF):
        product = "Genoa"
    elif family == PRODUCT_FAMILIES["Turin"]:
        product = "Turin"
    if product is None:
        raise AttestationError(f"the report's CPU family {family:#x} model {model:#x} is not an SEV-SNP product known here (Milan, Genoa, Turin)")
    if product not in roots:
        raise AttestationError(f"the report is from a {product} CPU, and no {product} root is pinned")
    return [product]


def vcek_url(kds_url: str, product: str, chip_id: bytes, tcb: SnpTcb) -> str:
    """AMD KDS's VCEK URL (KDS interface specification, document 57230).

    ``/vcek/v1/{product}/{hwid}?blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..``: the hwid is the
    report's 64-byte chip id in hex, for Turin only its first 8 bytes, and Turin adds
    ``fmcSPL``. Each SPL is the decimal security patch level, zero-padded to two digits as
    AMD's examples and tools write them. KDS answers with the DER certificate; it limits
    the request rate (HTTP 429), which the cache keeps from mattering."""
    hwid = chip_id[:8] if product in TURIN_LAYOUT else chip_id
    params = {}
    if product in TURIN_LAYOUT:
        params["fmcSPL"] = f"{tcb.fmc or 0:02d}"
    params.update(blSPL=f"{tcb.bootloader:02d}", teeSPL=f"{tcb.tee:02d}", snpSPL=f"{tcb.snp:02d}", ucodeSPL=f"{tcb.microcode:02d}")
    return f"{kds_url.rstrip('/')}/vcek/v1/{product}/{hwid.hex()}?{urllib.parse.urlencode(params)}"


def _vcek_key(product: str, chip_id: bytes, reported_tcb: bytes) -> str:
    return f"{product}/{chip_id.hex()}/{reported_tcb.hex()}"


def check_vcek(der: bytes, product: str, chip_id: bytes, reported_tcb: bytes, roots: SnpRoots, at: datetime) -> datetime:
    """Refuse a VCEK that is not ``product``'s, not for this chip and TCB, or not valid at ``at``; return its end."""
    cert = load_snp_certificate(der)
    chain = _chain(cert, SIGNING_KEY_VCEK, {product: roots[product]})
    if isinstance(chain, str):
        raise AttestationError(chain)
    info = snp_certificate_info(cert, product)
    if info.tcb.to_bytes(product) != reported_tcb:
        raise AttestationError(f"the VCEK is for TCB {info.tcb}, not the reported {SnpTcb.from_bytes(reported_tcb, product)}")
    if info.hwid != chip_id:
        raise AttestationError("the VCEK is for another chip (its hwID is not the report's chip id)")
    if not cert.not_valid_before_utc <= at:
        raise AttestationError(f"the VCEK is not valid before {_iso(cert.not_valid_before_utc)}")
    return cert.not_valid_after_utc


def vcek_entry_key(der: bytes, roots: SnpRoots) -> tuple[str, bytes, bytes]:
    """(product, chip id, TCB bytes) a VCEK was issued for, read from its extensions (for imports)."""
    cert = load_snp_certificate(der)
    for product in roots:
        chain = _chain(cert, SIGNING_KEY_VCEK, {product: roots[product]})
        if isinstance(chain, str):
            continue
        info = snp_certificate_info(cert, product)
        if info.hwid is None:
            raise AttestationError("the VCEK has no hwID extension")
        return product, info.hwid, info.tcb.to_bytes(product)
    raise AttestationError(f"the certificate is not a VCEK issued by a pinned AMD ASK (products: {', '.join(roots)})")


# ---------------------------------------------------------------- Intel


def _pem_chain(text: str, what: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(text.encode())
    except ValueError:
        certs = []
    if not certs:
        raise AttestationError(f"the {what} issuer chain is not PEM certificates")
    return certs


def _issued_by_root(cert: x509.Certificate, root: x509.Certificate, what: str) -> None:
    try:
        cert.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        raise AttestationError(f"the {what} signer is not issued by the trusted Intel root") from None


def _raw_ecdsa_ok(cert: x509.Certificate, signature_hex: str, data: bytes) -> bool:
    try:
        raw = bytes.fromhex(signature_hex)
        key = cert.public_key()
        if len(raw) != 64 or not isinstance(key, ec.EllipticCurvePublicKey):
            return False
        signature = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
        key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        return True
    except (ValueError, InvalidSignature):
        return False


def _crl(hex_der: str, what: str) -> x509.CertificateRevocationList:
    try:
        return x509.load_der_x509_crl(bytes.fromhex(hex_der))
    except ValueError:
        raise AttestationError(f"the {what} is not a DER CRL") from None


def check_intel_collateral(
    collateral: bytes, tee: str, fmspc: str, ca: str, root_der: bytes, at: datetime
) -> datetime:
    """Refuse collateral that is not for ``tee`` (tdx, sgx), ``fmspc`` and the PCK ``ca``
    (processor, platform), or whose signatures do not verify under ``root_der``; return when
    it expires: the earliest next update of its TCB info, QE identity and CRLs and the end of
    its certificates. Whether it is still valid at ``at`` is the caller's rule."""
    try:
        value = json.loads(collateral)
        fields = {name: value[name] for name in (
            "pck_crl_issuer_chain", "root_ca_crl", "pck_crl", "tcb_info_issuer_chain", "tcb_info",
            "tcb_info_signature", "qe_identity_issuer_chain", "qe_identity", "qe_identity_signature",
        )}
        if not all(isinstance(v, str) for v in fields.values()):
            raise TypeError("a field is not a string")
        tcb_info = json.loads(fields["tcb_info"])
        qe_identity = json.loads(fields["qe_identity"])
        dcap_qvl.QuoteCollateralV3.from_json(collateral.decode())
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError) as exc:
        raise AttestationError(f"the collateral is not Intel collateral JSON ({exc})") from None
    if not isinstance(tcb_info, dict) or not isinstance(qe_identity, dict):
        raise AttestationError("the collateral's TCB info or QE identity is not a JSON object")
    want_id, want_qe = ("TDX", "TD_QE") if tee == KIND_TDX else ("SGX", "QE")
    if tcb_info.get("id", "SGX") != want_id:
        raise AttestationError(f"the collateral's TCB info is for {tcb_info.get('id')}, not {want_id}")
    if str(tcb_info.get("fmspc", "")).upper() != fmspc.upper():
        raise AttestationError(f"the collateral's TCB info is for FMSPC {tcb_info.get('fmspc')}, not {fmspc}")
    if qe_identity.get("id") != want_qe:
        raise AttestationError(f"the collateral's QE identity is for {qe_identity.get('id')}, not {want_qe}")

    root = x509.load_der_x509_certificate(root_der)
    tcb_chain = _pem_chain(fields["tcb_info_issuer_chain"], "TCB info")
    qe_chain = _pem_chain(fields["qe_identity_issuer_chain"], "QE identity")
    pck_chain = _pem_chain(fields["pck_crl_issuer_chain"], "PCK CRL")
    _issued_by_root(tcb_chain[0], root, "TCB info")
    _issued_by_root(qe_chain[0], root, "QE identity")
    _issued_by_root(pck_chain[0], root, "PCK CRL")
    if not _raw_ecdsa_ok(tcb_chain[0], fields["tcb_info_signature"], fields["tcb_info"].encode()):
        raise AttestationError("the TCB info signature does not verify")
    if not _raw_ecdsa_ok(qe_chain[0], fields["qe_identity_signature"], fields["qe_identity"].encode()):
        raise AttestationError("the QE identity signature does not verify")
    pck_crl = _crl(fields["pck_crl"], "PCK CRL")
    root_crl = _crl(fields["root_ca_crl"], "root CA CRL")
    for crl, signer, problem in (
        (pck_crl, pck_chain[0], "the PCK CRL signature does not verify"),
        (root_crl, root, "the root CA CRL is not signed by the trusted Intel root"),
    ):
        try:
            valid = crl.is_signature_valid(signer.public_key())  # type: ignore[arg-type]
        except (TypeError, ValueError):
            valid = False
        if not valid:
            raise AttestationError(problem)
    issuer = pck_crl.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not issuer or ca.lower() not in str(issuer[0].value).lower():
        raise AttestationError(f"the PCK CRL is not the {ca} CA's")

    ends = []
    try:
        ends += [_parse_iso(tcb_info["nextUpdate"]), _parse_iso(qe_identity["nextUpdate"])]
    except (KeyError, TypeError, ValueError):
        raise AttestationError("the collateral's TCB info or QE identity has no valid nextUpdate") from None
    for crl, what in ((pck_crl, "PCK CRL"), (root_crl, "root CA CRL")):
        if crl.next_update_utc is None:
            raise AttestationError(f"the {what} has no next update")
        ends.append(crl.next_update_utc)
    ends += [c.not_valid_after_utc for c in (*tcb_chain, *qe_chain, *pck_chain)]
    return min(ends)


def quote_platform(quote: bytes) -> tuple[str, str, str]:
    """(tee, FMSPC, PCK CA) of a DCAP quote: ``tdx``/``sgx``, 12 hex digits, ``processor``/``platform``."""
    parsed = parse_quote(quote)
    tee = KIND_TDX if parsed.header.tee_type == TEE_TYPE_TDX else KIND_SGX
    leaf = parsed.pck_chain[0]
    try:
        extension = dcap_qvl.parse_pck_extension_from_pem(leaf.public_bytes(Encoding.PEM))
        fmspc = bytes(extension.fmspc).hex().upper()
    except ValueError as exc:
        raise AttestationError(f"the quote's PCK certificate has no readable SGX extension ({exc})") from None
    issuer = leaf.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = str(issuer[0].value) if issuer else ""
    if "Processor" in name:
        ca = "processor"
    elif "Platform" in name:
        ca = "platform"
    else:
        raise AttestationError(f"the quote's PCK certificate is issued by {name!r}, neither Intel's Processor nor Platform CA")
    return tee, fmspc, ca


def collateral_platform(collateral: bytes) -> tuple[str, str, str]:
    """(tee, FMSPC, PCK CA) that collateral JSON is for (for imports)."""
    try:
        value = json.loads(collateral)
        tcb_info = json.loads(value["tcb_info"])
        crl = x509.load_der_x509_crl(bytes.fromhex(value["pck_crl"]))
        tee = KIND_TDX if tcb_info.get("id") == "TDX" else KIND_SGX
        fmspc = str(tcb_info["fmspc"]).upper()
        issuer = str(crl.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError) as exc:
        raise AttestationError(f"not Intel collateral JSON ({exc})") from None
    ca = "processor" if "Processor" in issuer else "platform"
    return tee, fmspc, ca


def _raw_member(body: str, member: str) -> str:
    """The exact text of top-level ``member`` of a JSON object: Intel signs those bytes, so
    they must not be re-serialised."""
    value = json.loads(body)
    if not isinstance(value, dict) or member not in value:
        raise ValueError(f"no {member!r} member")
    decoder = json.JSONDecoder()
    at = 0
    while True:
        at = body.index(f'"{member}"', at) + len(member) + 2
        colon = at
        while body[colon] in " \t\r\n":
            colon += 1
        if body[colon] != ":":
            continue
        start = colon + 1
        while body[start] in " \t\r\n":
            start += 1
        parsed, end = decoder.raw_decode(body, start)
        if parsed == value[member]:
            return body[start:end]


# ---------------------------------------------------------------- HTTP


@dataclass(frozen=True)
class _Response:
    url: str
    body: bytes
    headers: dict[str, str]

    def header(self, names: Sequence[str], what: str) -> str:
        for name in names:
            if name.lower() in self.headers:
                return urllib.parse.unquote(self.headers[name.lower()])
        raise AttestationError(f"{self.url} answered without the {what} issuer chain header ({names[0]})")


class _NotFound(AttestationError):
    pass


def _get(url: str, timeout: float) -> _Response:
    request = urllib.request.Request(url, headers={"Accept": "*/*", "User-Agent": "kettle-collateral"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read(MAX_RESPONSE_BYTES + 1)
            headers = {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as exc:
        exc.close()
        error = _NotFound if exc.code == 404 else AttestationError
        raise error(f"fetching {url} failed: HTTP {exc.code}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or str(exc) or exc.__class__.__name__
        raise AttestationError(f"fetching {url} failed: {reason}") from None
    if len(body) > MAX_RESPONSE_BYTES:
        raise AttestationError(f"fetching {url} failed: the answer is larger than {MAX_RESPONSE_BYTES} bytes")
    stated = headers.get("content-length", "")
    if stated.isdigit() and int(stated) != len(body):
        raise AttestationError(f"fetching {url} failed: the answer was cut short ({len(body)} of {stated} bytes)")
    return _Response(url, body, headers)


def _crl_der(response: _Response, what: str) -> bytes:
    """A CRL as PCS (DER with ``encoding=der``), a PCCS (DER or hex) or a CA (DER or PEM) serves it."""
    body = response.body.strip()
    candidates = [response.body]
    try:
        candidates.append(bytes.fromhex(body.decode("ascii")))
    except (ValueError, UnicodeDecodeError):
        pass
    for candidate in candidates:
        try:
            return x509.load_der_x509_crl(candidate).public_bytes(Encoding.DER)
        except ValueError:
            pass
    try:
        return x509.load_pem_x509_crl(body).public_bytes(Encoding.DER)
    except ValueError:
        raise AttestationError(f"{response.url} did not answer with a {what} (DER, PEM or hex)") from None


# ---------------------------------------------------------------- the cache


class CollateralSource(Protocol):
    """Where the vendor endorsements not carried with a piece of evidence come from: a
    :class:`CollateralCache` (AMD KDS, Intel PCS), or collateral a party fetched itself
    (:class:`kettle.attestation.hardware.FixedCollateral`)."""

    def snp_certificate(self, report: bytes, supplied: Sequence[SnpCertificate] = ()) -> bytes:
        """DER (or PEM) of the VCEK or VLEK that signed ``report``; ``supplied`` are the host's certificates."""
        ...

    def dcap_collateral(self, quote: bytes) -> bytes:
        """Intel's collateral JSON for ``quote``'s platform."""
        ...


class CollateralCache:
    """VCEKs and Intel collateral on disk under ``directory``, fetched when missing or expired.

    ``clock`` gives the time every expiry is judged at. ``offline`` never fetches.
    ``snp_roots`` / ``intel_root_der`` are the roots fetched items must verify under
    (default AMD's and Intel's pinned roots; tests pass test roots).
    """

    def __init__(
        self,
        directory: Path,
        *,
        amd_kds_url: str = AMD_KDS_URL,
        intel_pcs_url: str = INTEL_PCS_URL,
        clock: Callable[[], datetime] = _now,
        offline: bool = False,
        unsafe_allow_expired_collateral: bool = False,
        snp_roots: SnpRoots | None = None,
        intel_root_der: bytes | None = None,
        timeout: float = FETCH_TIMEOUT_SECS,
    ) -> None:
        self.directory = Path(directory)
        self.amd_kds_url = amd_kds_url.rstrip("/")
        self.intel_pcs_url = intel_pcs_url.rstrip("/")
        self.clock = clock
        self.offline = offline
        self.unsafe_allow_expired_collateral = unsafe_allow_expired_collateral
        self._snp_roots = snp_roots
        self._intel_root_der = intel_root_der
        self.timeout = timeout
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._retry: dict[tuple[str, str], tuple[int, datetime]] = {}  # failures so far, next attempt
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None
        if unsafe_allow_expired_collateral:
            log.warning("UNSAFE: expired attestation collateral is accepted (unsafe_allow_expired_collateral): revoked platforms and certificates may pass")

    @property
    def snp_roots(self) -> SnpRoots:
        return amd_roots() if self._snp_roots is None else self._snp_roots

    @property
    def intel_root_der(self) -> bytes:
        return intel_root_ca_der() if self._intel_root_der is None else self._intel_root_der

    # -- storage

    def _path(self, kind: str, key: str) -> Path:
        return self.directory / entry_file(kind, key)

    def get(self, kind: str, key: str) -> CollateralEntry | None:
        """The cached entry for ``kind`` and ``key``, whatever its state; None when absent or unreadable."""
        path = self._path(kind, key)
        try:
            entry = CollateralEntry.from_json(json.loads(path.read_bytes()))
        except FileNotFoundError:
            return None
        except (ValueError, AttestationError) as exc:
            log.warning("collateral cache entry %s is unreadable and is ignored: %s", path, exc)
            return None
        return entry if (entry.kind, entry.key) == (kind, key) else None

    def put(self, entry: CollateralEntry) -> None:
        """Write ``entry`` atomically (a reader sees the old or the new file, never a part)."""
        path = self.directory / entry.file_name()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(entry.to_json(), f)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def entries(self) -> Iterator[CollateralEntry]:
        """Every readable entry, by kind then key."""
        found = []
        for kind in KINDS:
            for path in sorted((self.directory / kind).glob("*.json")):
                try:
                    found.append(CollateralEntry.from_json(json.loads(path.read_bytes())))
                except (ValueError, AttestationError) as exc:
                    log.warning("collateral cache entry %s is unreadable: %s", path, exc)
        yield from sorted(found, key=lambda e: (KINDS.index(e.kind), e.key))

    def _lock(self, kind: str, key: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault((kind, key), threading.Lock())

    def _usable(self, entry: CollateralEntry | None, now: datetime) -> bool:
        return entry is not None and now < entry.expires

    def _expired_fallback(self, entry: CollateralEntry | None, what: str, why: str) -> bytes:
        """An expired entry when the unsafe setting allows it, else the refusal."""
        if entry is not None and self.unsafe_allow_expired_collateral:
            log.warning("UNSAFE: using %s that expired at %s (unsafe_allow_expired_collateral): %s", what, _iso(entry.expires), why)
            return entry.data
        if entry is not None:
            raise AttestationError(f"the cached {what} expired at {_iso(entry.expires)} and no fresh one is available: {why}")
        raise AttestationError(f"no {what} is cached in {self.directory}, and {why}")

    # -- SEV-SNP

    def snp_certificate(self, report: bytes, supplied: Sequence[SnpCertificate] = ()) -> bytes:
        """DER (or PEM, as supplied) of the VCEK or VLEK to verify ``report`` with.

        A certificate the host supplied for the report's signing key wins; else a fresh
        cached VCEK; else one fetched from AMD KDS (not in offline mode)."""
        parsed = parse_snp_report(report)
        if parsed.signing_key == SIGNING_KEY_VLEK:
            for cert in supplied:
                if cert.kind == "vlek":
                    return cert.der
            raise AttestationError(
                "the report is signed by a VLEK, which AMD's KDS does not serve (AMD provisions it to the "
                "cloud provider): the host must supply it in the report's certificate table"
            )
        if parsed.signing_key != SIGNING_KEY_VCEK:
            raise AttestationError(f"the report's signing key is {parsed.signing_key_name}, not a VCEK or VLEK")
        for cert in supplied:
            if cert.kind == "vcek":
                return cert.der
        if parsed.chip_key_masked or not any(parsed.chip_id):
            raise AttestationError("the report masks its chip id, so its VCEK cannot be looked up; the host must supply it")
        products = snp_products(parsed, self.snp_roots)
        now = self.clock()
        for product in products:
            entry = self.get(KIND_VCEK, _vcek_key(product, parsed.chip_id, parsed.reported_tcb))
            if self._usable(entry, now):
                assert entry is not None
                return entry.data
        return self._fetch_vcek(parsed, products)

    def _fetch_vcek(self, report: SnpReport, products: list[str]) -> bytes:
        what = f"VCEK for chip {report.chip_id[:8].hex()}… at TCB {report.reported_tcb.hex()}"
        keys = [_vcek_key(p, report.chip_id, report.reported_tcb) for p in products]
        cached = next((e for e in (self.get(KIND_VCEK, k) for k in keys) if e is not None), None)
        if self.offline:
            return self._expired_fallback(cached, what, "collateral is offline (import one with `kettle attest collateral import`)")
        problems = []
        for product, key in zip(products, keys, strict=True):
            with self._lock(KIND_VCEK, key):
                entry = self.get(KIND_VCEK, key)  # another caller may have fetched it meanwhile
                if self._usable(entry, self.clock()):
                    assert entry is not None
                    return entry.data
                try:
                    return self.refresh_vcek(product, report.chip_id, report.reported_tcb).data
                except _NotFound as exc:
                    problems.append(exc.reason)
                except AttestationError as exc:
                    problems.append(exc.reason)
                    break
        return self._expired_fallback(cached, what, "; ".join(problems))

    def refresh_vcek(self, product: str, chip_id: bytes, reported_tcb: bytes) -> CollateralEntry:
        """Fetch the VCEK from KDS, check it is the one asked for, and cache it."""
        tcb = SnpTcb.from_bytes(reported_tcb, product)
        url = vcek_url(self.amd_kds_url, product, chip_id, tcb)
        response = _get(url, self.timeout)
        now = self.clock()
        try:
            expires = check_vcek(response.body, product, chip_id, reported_tcb, self.snp_roots, now)
        except AttestationError as exc:
            raise AttestationError(f"{url} served a certificate that is refused: {exc.reason}") from None
        if now >= expires:
            raise AttestationError(f"{url} served a VCEK that expired at {_iso(expires)}")
        der = load_snp_certificate(response.body).public_bytes(Encoding.DER)
        entry = CollateralEntry(KIND_VCEK, _vcek_key(product, chip_id, reported_tcb), der, now, expires, url)
        self.put(entry)
        return entry

    # -- Intel

    def dcap_collateral(self, quote: bytes) -> bytes:
        """Intel's collateral JSON for ``quote``'s TEE, FMSPC and PCK CA: cached while fresh, else fetched."""
        tee, fmspc, ca = quote_platform(quote)
        key = f"{fmspc}/{ca}"
        entry = self.get(tee, key)
        if self._usable(entry, self.clock()):
            assert entry is not None
            return entry.data
        what = f"{tee.upper()} collateral for FMSPC {fmspc} ({ca} CA)"
        if self.offline:
            return self._expired_fallback(entry, what, "collateral is offline (import it with `kettle attest collateral import`)")
        with self._lock(tee, key):
            entry = self.get(tee, key)
            if self._usable(entry, self.clock()):
                assert entry is not None
                return entry.data
            try:
                return self.refresh_intel(tee, fmspc, ca).data
            except AttestationError as exc:
                return self._expired_fallback(entry, what, exc.reason)

    def refresh_intel(self, tee: str, fmspc: str, ca: str) -> CollateralEntry:
        """Fetch a platform's collateral from the PCS/PCCS (API v4), check it, and cache it."""
        base = self.intel_pcs_url
        sgx = f"{base}/sgx/certification/v4"
        tee_base = f"{base}/{tee}/certification/v4"
        pck = self._fetch(f"{sgx}/pckcrl?ca={ca}&encoding=der")
        tcb = self._fetch(f"{tee_base}/tcb?fmspc={fmspc}")
        qe = self._fetch(f"{tee_base}/qe/identity")
        root_crl = self._root_ca_crl(sgx)
        try:
            tcb_text, qe_text = tcb.body.decode(), qe.body.decode()
            tcb_info, qe_identity = _raw_member(tcb_text, "tcbInfo"), _raw_member(qe_text, "enclaveIdentity")
            tcb_signature, qe_signature = json.loads(tcb_text)["signature"], json.loads(qe_text)["signature"]
        except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError, RecursionError) as exc:
            raise AttestationError(f"{tcb.url} or {qe.url} did not answer with Intel's signed JSON ({exc})") from None
        collateral = json.dumps({
            "pck_crl_issuer_chain": pck.header(_PCK_CRL_CHAIN_HEADERS, "PCK CRL"),
            "root_ca_crl": root_crl.hex(),
            "pck_crl": _crl_der(pck, "PCK CRL").hex(),
            "tcb_info_issuer_chain": tcb.header(_TCB_INFO_CHAIN_HEADERS, "TCB info"),
            "tcb_info": tcb_info,
            "tcb_info_signature": tcb_signature,
            "qe_identity_issuer_chain": qe.header(_QE_IDENTITY_CHAIN_HEADERS, "QE identity"),
            "qe_identity": qe_identity,
            "qe_identity_signature": qe_signature,
        }).encode()
        now = self.clock()
        try:
            expires = check_intel_collateral(collateral, tee, fmspc, ca, self.intel_root_der, now)
        except AttestationError as exc:
            raise AttestationError(f"{base} served collateral that is refused: {exc.reason}") from None
        if now >= expires:
            raise AttestationError(f"{base} served collateral that expired at {_iso(expires)}")
        entry = CollateralEntry(tee, f"{fmspc}/{ca}", collateral, now, expires, tcb.url)
        self.put(entry)
        return entry

    def _fetch(self, url: str) -> _Response:
        return _get(url, self.timeout)

    def _root_ca_crl(self, sgx_base: str) -> bytes:
        """A PCCS serves the root CA CRL at ``rootcacrl``; Intel's PCS does not, the CRL is then
        fetched from the distribution point named in the trusted root certificate."""
        try:
            return _crl_der(self._fetch(f"{sgx_base}/rootcacrl"), "root CA CRL")
        except _NotFound as not_found:
            root = x509.load_der_x509_certificate(self.intel_root_der)
            try:
                points = root.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
                url = next(str(n.value) for p in points for n in (p.full_name or ()) if isinstance(n, x509.UniformResourceIdentifier))
            except (x509.ExtensionNotFound, StopIteration):
                raise AttestationError(f"{not_found.reason}, and the trusted root names no CRL distribution point") from None
            if not url.startswith(("https://", "http://")):
                raise AttestationError(f"the root's CRL distribution point {url} is not an http(s) URL") from None
            return _crl_der(self._fetch(url), "root CA CRL")

    # -- background refresh

    def refresh(self, kind: str, key: str) -> CollateralEntry:
        """Fetch the entry for ``kind`` and ``key`` again (one fetch at a time per key)."""
        with self._lock(kind, key):
            if kind == KIND_VCEK:
                product, chip_hex, tcb_hex = key.split("/")
                return self.refresh_vcek(product, bytes.fromhex(chip_hex), bytes.fromhex(tcb_hex))
            fmspc, ca = key.split("/")
            return self.refresh_intel(kind, fmspc, ca)

    def refresh_due(self) -> list[CollateralEntry]:
        """Renew every entry past its refresh point (80% of its life) whose back-off allows a
        try now; a failure is logged and retried after 60 s, doubling up to an hour. Returns
        the entries renewed. Nothing is fetched in offline mode."""
        if self.offline:
            return []
        renewed = []
        for entry in list(self.entries()):
            now = self.clock()
            slot = (entry.kind, entry.key)
            failures, next_try = self._retry.get(slot, (0, now))
            if now < entry.refresh_at or now < next_try:
                continue
            try:
                renewed.append(self.refresh(entry.kind, entry.key))
                self._retry.pop(slot, None)
            except AttestationError as exc:
                delay = min(RETRY_SECS * 2**failures, MAX_RETRY_SECS)
                self._retry[slot] = (failures + 1, self.clock() + timedelta(seconds=delay))
                state = entry.state(self.clock())
                log.warning("renewing the %s collateral %s (%s, expires %s) failed, next try in %d s: %s",
                            entry.kind, entry.key, state, _iso(entry.expires), delay, exc.reason)
        return renewed

    def start_refresh(self, poll_secs: float = 60.0) -> None:
        """Renew entries in a daemon thread, checking every ``poll_secs``, until :meth:`stop`."""
        if self.offline:
            log.info("collateral is offline: entries are not renewed in the background")
            return
        if self._refresher is not None:
            return
        self._stop.clear()

        def run() -> None:
            while not self._stop.is_set():
                try:
                    self.refresh_due()
                except Exception:  # the thread must outlive any one bad entry or disk error
                    log.exception("collateral refresh pass failed")
                self._stop.wait(poll_secs)

        self._refresher = threading.Thread(target=run, name="collateral-refresh", daemon=True)
        self._refresher.start()

    def stop(self) -> None:
        """Stop the background refresh and wait for its current pass to end."""
        self._stop.set()
        if self._refresher is not None:
            self._refresher.join()
            self._refresher = None

    # -- import and export

    def import_bytes(self, data: bytes, source: str = "import") -> list[CollateralEntry]:
        """Add what ``data`` holds: an export bundle, a cache entry, a VCEK (DER or PEM) or
        Intel collateral JSON. Everything is checked as if fetched; expired items are refused
        (unless unsafe_allow_expired_collateral). Returns the entries added."""
        now = self.clock()
        text: Any = None
        try:
            text = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError):
            pass  # not JSON: a VCEK, or refused below
        if isinstance(text, dict) and "entries" in text:
            items = text["entries"]
            if not isinstance(items, list):
                raise AttestationError("the bundle's entries are not a list")
            # Every entry is checked before any is written: a bundle with one bad entry adds nothing.
            checked = [self._checked(CollateralEntry.from_json(item), now) for item in items]
        elif isinstance(text, dict) and "format" in text:
            checked = [self._checked(CollateralEntry.from_json(text), now)]
        elif isinstance(text, dict):
            tee, fmspc, ca = collateral_platform(data)
            expires = check_intel_collateral(data, tee, fmspc, ca, self.intel_root_der, now)
            checked = [self._unexpired(CollateralEntry(tee, f"{fmspc}/{ca}", data, now, expires, source), now)]
        else:
            product, chip_id, tcb = vcek_entry_key(data, self.snp_roots)
            expires = check_vcek(data, product, chip_id, tcb, self.snp_roots, now)
            der = load_snp_certificate(data).public_bytes(Encoding.DER)
            checked = [self._unexpired(CollateralEntry(KIND_VCEK, _vcek_key(product, chip_id, tcb), der, now, expires, source), now)]
        added = []
        for entry in checked:
            current = self.get(entry.kind, entry.key)
            if current is not None and current.expires > entry.expires:
                continue  # what the cache holds lasts longer
            self.put(entry)
            added.append(entry)
        return added

    def _checked(self, entry: CollateralEntry, now: datetime) -> CollateralEntry:
        """A bundle's entry with its data checked again; its stated expiry is not trusted either."""
        try:
            if entry.kind == KIND_VCEK:
                product, chip_hex, tcb_hex = entry.key.split("/")
                if product not in self.snp_roots:
                    raise AttestationError(f"no {product} root is pinned")
                expires = check_vcek(entry.data, product, bytes.fromhex(chip_hex), bytes.fromhex(tcb_hex), self.snp_roots, now)
            else:
                fmspc, ca = entry.key.split("/")
                expires = check_intel_collateral(entry.data, entry.kind, fmspc, ca, self.intel_root_der, now)
        except ValueError:
            raise AttestationError(f"the {entry.kind} entry's key {entry.key!r} is malformed") from None
        except AttestationError as exc:
            raise AttestationError(f"the {entry.kind} entry {entry.key[:40]} is refused: {exc.reason}") from None
        return self._unexpired(replace(entry, expires=min(expires, entry.expires)), now)

    def _unexpired(self, entry: CollateralEntry, now: datetime) -> CollateralEntry:
        if now >= entry.expires and not self.unsafe_allow_expired_collateral:
            raise AttestationError(f"the {entry.kind} entry {entry.key[:40]} expired at {_iso(entry.expires)}")
        return entry

    def export_bytes(self) -> bytes:
        """Every entry as one JSON bundle, which ``import_bytes`` reads on another machine."""
        return json.dumps({"kettle_collateral": 1, "entries": [e.to_json() for e in self.entries()]}, indent=1).encode()


def collateral_cache(
    config: Config,
    *,
    directory: Path | None = None,
    offline: bool | None = None,
    clock: Callable[[], datetime] = _now,
    snp_roots: SnpRoots | None = None,
    intel_root_der: bytes | None = None,
) -> CollateralCache:
    """The cache the ``[attestation]`` settings describe; ``directory`` and ``offline``
    override ``collateral_dir`` and ``collateral_offline``."""
    attestation = config.attestation
    return CollateralCache(
        directory or config.path(attestation.collateral_dir),
        clock=clock,
        amd_kds_url=attestation.amd_kds_url,
        intel_pcs_url=attestation.intel_pcs_url,
        offline=attestation.collateral_offline if offline is None else offline,
        unsafe_allow_expired_collateral=attestation.unsafe_allow_expired_collateral,
        snp_roots=snp_roots,
        intel_root_der=intel_root_der,
    )
