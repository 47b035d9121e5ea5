"""Data-file rules of the management service (``spec/platform.md`` §5), as pure functions.

What a registration may contain (URL, cmac, crypto info), who may read, update
or derive a file, what a fusion output looks like, and whether a file may be
assigned to a task (§6.3 step 5–6). The servicer does the storage round trips
and passes in the fresh UUIDs and keys; every decision is taken here, in the
order the spec fixes, raising the exact errors of Appendix B.

Kettle's choices where the spec leaves room:

- Malformed content (URL, cmac, crypto info, a data ID in AssignData's lists)
  is INVALID_ARGUMENT with a specific sentence; Teaclave answers INTERNAL, which
  Kettle keeps for its own failures only (``docs/errors.md``).
- An unparsable ``data_id`` is INVALID_ARGUMENT "invalid data id", except in
  AssignData's lists ("malformed data id …", checked before any entry, §6.3 step 4).
- An output that already has a cmac cannot be assigned (§12 #11):
  PERMISSION_DENIED.
- URLs are checked like a WHATWG URL parser would (scheme, host, port), with
  the ``url`` crate's error texts where Teaclave would fail too; in addition
  Kettle refuses whitespace, control and other invisible characters (Teaclave
  silently strips or percent-encodes some of them) and URLs longer than
  :data:`MAX_URL_CHARS`. The URL is stored as given: it is never returned.
- Unlike Teaclave, the scheme is checked at registration (:class:`UrlPolicy`):
  only what an execution node would fetch, so a task is not approved by every
  party only to fail on a URL nobody can read. ``fusion:`` URLs are the
  platform's own (RegisterFusionOutput), an output cannot be a ``data:`` URL,
  and a ``file:`` URL must be absolute, without ``.``/``..`` segments, inside
  ``[file_agent] file_roots``.
- ``raw`` crypto info is stored without key and iv (Teaclave's ``Raw`` has none).
- A fusion output needs at least two *distinct*, non-empty owner IDs; Teaclave
  only counts raw list entries, so ``["alice", "alice"]`` would pass there.
- An ``s3://`` file may carry credentials its owner registers with it
  (:func:`check_s3_credentials`); they stay with that record: RegisterInputFromOutput
  keeps them (same URL, same owner), an update takes them again or has none
  (``docs/data.md``).
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..config import FileAgentConfig
from ..crypto.schemas import (
    MISSING_CRYPTO_INFO,
    RAW,
    SCHEMAS,
    TEACLAVE_FILE_128,
    FileCryptoError,
    check_cmac,
    validate_crypto_info,
)
from ..errors import InvalidArgument, PermissionDenied
from .functions import MAX_ITEMS, MAX_NAME_CHARS, PERMISSION_DENIED, Caller, shown
from .ids import Kind, parse_bare_uuid
from .object_store import credentials_problem, s3_location
from .records import CryptoInfo, FileRecord, ObjectStoreCredentials

__all__ = [
    "FUSION_KEY_BYTES",
    "FUSION_URL_PREFIX",
    "INVALID_DATA_ID",
    "INVALID_OUTPUT_FILE",
    "MAX_URL_CHARS",
    "RELATIVE_URL",
    "FileView",
    "UrlPolicy",
    "assigned_file_id",
    "check_assignable",
    "check_crypto_info",
    "check_file_cmac",
    "check_s3_credentials",
    "check_url",
    "file_view",
    "fusion_url",
    "input_from_output",
    "parse_data_id",
    "register_fusion_output",
    "register_input_file",
    "register_output_file",
    "split_data_id",
    "update_file",
]

INVALID_DATA_ID = "invalid data id"
INVALID_OUTPUT_FILE = "invalid output file"
RELATIVE_URL = "relative URL without a base"

FUSION_URL_PREFIX = "fusion:///TEACLAVE_FUSION_BASE/"
FUSION_KEY_BYTES = 16

MAX_URL_CHARS = 8192
"""Longest URL Kettle stores. Teaclave has no bound; presigned object-store URLs
stay well below it, and a task stores a copy of each of its files' records."""

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
_SPECIAL_SCHEMES = frozenset({"http", "https", "ws", "wss", "ftp"})
"""WHATWG special schemes that need a host (``file`` is special but may have none)."""
_FORBIDDEN_HOST = frozenset(" #%/:<>?@[\\]^|")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_FILE_URL = re.compile(r"file://(localhost)?/", re.IGNORECASE)
"""A file URL with an absolute path and no host but the local one (what a node opens)."""


@dataclass(frozen=True)
class UrlPolicy:
    """Which URLs registration accepts: what an execution node of this platform would open.

    Built from management's own ``[file_agent]`` section (:meth:`from_config`): the
    nodes' schemes minus ``fusion`` (the platform's own files), and ``file`` only when
    ``file_roots`` names directories, each URL inside one of them. Management cannot
    see a node's disk, so the root check is lexical (the path as written, no
    symlinks followed); the node checks the real location again before it opens
    anything. In a deployment where nodes have their own configuration, management's
    ``[file_agent]`` must match theirs.
    """

    schemes: frozenset[str] = frozenset({"http", "https", "s3", "data"})
    file_roots: tuple[str, ...] = ()
    """Absolute, normalised directories; ``file`` URLs are accepted only inside them."""

    @classmethod
    def from_config(cls, config: FileAgentConfig, home: Path) -> UrlPolicy:
        roots = tuple(posixpath.normpath(str(home / root)) for root in config.file_roots)
        schemes = {scheme.lower() for scheme in config.allowed_schemes} - {"fusion"}
        if not roots:
            schemes.discard("file")
        return cls(frozenset(schemes), roots if "file" in schemes else ())


STRICT_URLS = UrlPolicy()
"""The policy of a default configuration: no file URLs."""


# --- data IDs ------------------------------------------------------------------------


def split_data_id(text: str) -> tuple[str, str] | None:
    """(prefix, canonical bare UUID) if ``text`` parses as an external ID, else None.

    Split at the first ``-``; the rest must be a UUID in any form Python accepts
    (re-rendered lowercase and hyphenated, ``spec/platform.md`` §0.1). The prefix
    is not checked here: a well-formed ID of the wrong kind is "not found"."""
    prefix, sep, rest = text.partition("-")
    bare = parse_bare_uuid(rest) if sep and rest else None
    return None if bare is None else (prefix, bare)


def parse_data_id(text: str, kind: Kind) -> str:
    """The bare UUID of an ``input-…`` / ``output-…`` ID; unparsable, or another kind:
    INVALID_ARGUMENT "invalid data id" (a wrong prefix behaves like "not found")."""
    parsed = split_data_id(text)
    if parsed is None or parsed[0] != kind.value:
        raise InvalidArgument(INVALID_DATA_ID)
    return parsed[1]


def assigned_file_id(text: str, kind: Kind) -> str | None:
    """An AssignData list entry's ID (§6.3 step 4): unparsable → INVALID_ARGUMENT; the bare UUID
    if it names a file of ``kind``; None for another kind (then "invalid data id")."""
    parsed = split_data_id(text)
    if parsed is None:
        raise InvalidArgument(f"malformed data id {shown(text)!r}")
    return parsed[1] if parsed[0] == kind.value else None


# --- registration contents --------------------------------------------------------------


def _character_problem(text: str) -> str | None:
    for position, char in enumerate(text):
        if char.isspace() or not char.isprintable():
            return f"invalid URL character U+{ord(char):04X} at position {position}"
    return None


def _check_authority(scheme: str, authority: str) -> None:
    host_port = authority.rpartition("@")[2]
    if host_port.startswith("["):
        end = host_port.find("]")
        if end < 0:
            raise InvalidArgument("invalid IPv6 address")
        try:
            ipaddress.IPv6Address(host_port[1:end])
        except ValueError:
            raise InvalidArgument("invalid IPv6 address") from None
        host, rest = host_port[: end + 1], host_port[end + 1 :]
        if rest and not rest.startswith(":"):
            raise InvalidArgument("invalid IPv6 address")
        port = rest[1:] if rest else None
    else:
        host, sep, port_text = host_port.partition(":")
        port = port_text if sep else None
        forbidden = _FORBIDDEN_HOST if scheme in _SPECIAL_SCHEMES or scheme == "file" else _FORBIDDEN_HOST - {"%"}
        if any(c in forbidden for c in host):
            raise InvalidArgument("invalid domain character")
        if scheme in _SPECIAL_SCHEMES and host and _looks_like_ipv4(host):
            try:
                ipaddress.IPv4Address(host.rstrip("."))
            except ValueError:
                raise InvalidArgument("invalid IPv4 address") from None
    if port:
        if not port.isascii() or not port.isdigit() or int(port) > 65535:
            raise InvalidArgument("invalid port number")
    if not host and scheme in _SPECIAL_SCHEMES:
        raise InvalidArgument("empty host")


def _looks_like_ipv4(host: str) -> bool:
    """WHATWG: a host whose last label is numeric is an IPv4 address (or invalid)."""
    labels = host.rstrip(".").split(".")
    return bool(labels[-1]) and labels[-1].isascii() and labels[-1].isdigit()


def check_url(text: str, policy: UrlPolicy = STRICT_URLS, *, output: bool = False) -> str:
    """``text`` if it is an absolute URL that ``policy`` lets a node read (or, for an
    ``output``, write); otherwise INVALID_ARGUMENT with a specific sentence.

    A URL without a scheme is "relative URL without a base", as in Teaclave.
    Teaclave accepts any scheme here (``spec/platform.md`` §5.2) and fails the task
    when it runs; Kettle refuses what no node would open (``docs/errors.md``)."""
    if len(text) > MAX_URL_CHARS:
        raise InvalidArgument(f"URL is too long: {len(text)} characters, at most {MAX_URL_CHARS}")
    problem = _character_problem(text)
    if problem is not None:
        raise InvalidArgument(problem)
    match = _SCHEME.match(text)
    if match is None:
        raise InvalidArgument(RELATIVE_URL)
    scheme = match.group()[:-1].lower()
    rest = text[match.end() :]
    if rest.startswith("//"):
        authority = re.split(r"[/?#]", rest[2:], maxsplit=1)[0]
        _check_authority(scheme, authority)
    elif scheme in _SPECIAL_SCHEMES:
        raise InvalidArgument(f"{scheme} URL without a host: expected {scheme}://HOST/...")
    _check_scheme(scheme, text, policy, output=output)
    return text


def _check_scheme(scheme: str, text: str, policy: UrlPolicy, *, output: bool) -> None:
    if scheme == "fusion":
        raise InvalidArgument("fusion URLs name files the platform holds: only RegisterFusionOutput creates them")
    if scheme not in policy.schemes:
        allowed = ", ".join(sorted(policy.schemes))
        hint = "; file URLs need [file_agent] file_roots" if scheme == "file" else ""
        raise InvalidArgument(f"URL scheme not allowed: {shown(scheme)} (allowed: {allowed}){hint}")
    if scheme == "data" and output:
        raise InvalidArgument("an output cannot be written to a data URL")
    if scheme == "file":
        _check_file_url(text, policy.file_roots)


def _check_file_url(text: str, roots: tuple[str, ...]) -> None:
    """Absolute (``file:///PATH`` or ``file://localhost/PATH``), no query or fragment, no
    ``.``/``..`` segment (percent-encoded ones included), inside a root. Never echoes the
    path: where a file is, is nobody else's business."""
    if not _FILE_URL.match(text):
        raise InvalidArgument("a file URL must be absolute, like file:///PATH (no other host, no relative path)")
    parts = urlsplit(text)
    if parts.query or parts.fragment:
        raise InvalidArgument("a file URL takes no query string or fragment")
    try:
        path = unquote(parts.path, errors="strict")
    except UnicodeDecodeError:
        raise InvalidArgument("the path of a file URL is not UTF-8") from None
    if _CONTROL.search(path):
        raise InvalidArgument("the path of a file URL contains control characters")
    if any(segment in (".", "..") for segment in path.split("/")):
        raise InvalidArgument("a file URL must not contain '.' or '..' segments")
    if not any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots):
        raise InvalidArgument("file URL is outside the directories file URLs may use ([file_agent] file_roots)")


def check_file_cmac(cmac: bytes) -> bytes:
    """Exactly 16 bytes, else INVALID_ARGUMENT "Invalid cmac length: N"."""
    try:
        return check_cmac(cmac)
    except FileCryptoError as exc:
        raise InvalidArgument(str(exc)) from None


def check_crypto_info(crypto_info: CryptoInfo | None) -> CryptoInfo:
    """A valid crypto info (§5.1), with the texts of :func:`validate_crypto_info`; absent →
    INVALID_ARGUMENT "missing crypto_info". ``raw`` is kept without key and iv."""
    if crypto_info is None:
        raise InvalidArgument(MISSING_CRYPTO_INFO)
    if crypto_info.schema not in SCHEMAS:
        raise InvalidArgument(f"Invalid crypto schema: {shown(crypto_info.schema)}")
    try:
        validate_crypto_info(crypto_info.schema, crypto_info.key, crypto_info.iv)
    except FileCryptoError as exc:
        raise InvalidArgument(str(exc)) from None
    return CryptoInfo(RAW) if crypto_info.schema == RAW else crypto_info


def check_s3_credentials(
    url: str, credentials: ObjectStoreCredentials | None, policy: UrlPolicy = STRICT_URLS
) -> ObjectStoreCredentials | None:
    """Owner credentials for the (already checked) ``url``: only for an ``s3://BUCKET/KEY``
    URL, each field well-formed, an endpoint only with a scheme the nodes may use; else
    INVALID_ARGUMENT with a sentence that quotes none of them (``model/object_store.py``)."""
    if credentials is None:
        return None
    try:
        s3_location(url)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None
    problem = credentials_problem(credentials)
    if problem is not None:
        raise InvalidArgument(problem)
    scheme = urlsplit(credentials.endpoint_url).scheme
    if credentials.endpoint_url and scheme not in policy.schemes:
        allowed = ", ".join(sorted(policy.schemes))
        raise InvalidArgument(f"s3 credentials: endpoint_url scheme not allowed: {scheme} (allowed: {allowed})")
    return credentials


def register_input_file(
    caller: Caller,
    url: str,
    cmac: bytes,
    crypto_info: CryptoInfo | None,
    bare_uuid: str,
    policy: UrlPolicy = STRICT_URLS,
    s3_credentials: ObjectStoreCredentials | None = None,
) -> FileRecord:
    """RegisterInputFile (§5.3): url, then cmac, then crypto info, then (Kettle) the
    owner's s3 credentials; owned by the caller."""
    url = check_url(url, policy)
    cmac = check_file_cmac(cmac)
    crypto_info = check_crypto_info(crypto_info)
    credentials = check_s3_credentials(url, s3_credentials, policy)
    return FileRecord(bare_uuid, url, crypto_info, (caller.user_id,), cmac, credentials)


def register_output_file(
    caller: Caller,
    url: str,
    crypto_info: CryptoInfo | None,
    bare_uuid: str,
    policy: UrlPolicy = STRICT_URLS,
    s3_credentials: ObjectStoreCredentials | None = None,
) -> FileRecord:
    """RegisterOutputFile (§5.3): url, then crypto info, then (Kettle) the owner's s3
    credentials; owned by the caller, no cmac yet.

    ``raw`` is accepted here, as in Teaclave; such an output fails when a task uploads it."""
    url = check_url(url, policy, output=True)
    crypto_info = check_crypto_info(crypto_info)
    credentials = check_s3_credentials(url, s3_credentials, policy)
    return FileRecord(bare_uuid, url, crypto_info, (caller.user_id,), None, credentials)


# --- reading and changing files -------------------------------------------------------------


def _check_owner(record: FileRecord, caller: Caller) -> FileRecord:
    if caller.user_id not in record.owner:
        raise PermissionDenied(PERMISSION_DENIED)
    return record


def _found(record: FileRecord | None) -> FileRecord:
    if record is None:
        raise InvalidArgument(INVALID_DATA_ID)
    return record


def update_file(
    record: FileRecord | None,
    caller: Caller,
    url: str,
    bare_uuid: str,
    *,
    output: bool,
    policy: UrlPolicy = STRICT_URLS,
    s3_credentials: ObjectStoreCredentials | None = None,
) -> FileRecord:
    """UpdateInputFile / UpdateOutputFile (§5.3 steps 2–5).

    Not found → "invalid data id"; owners ≠ {caller} → PERMISSION_DENIED (so
    multi-owner files cannot be updated); bad URL or credentials → INVALID_ARGUMENT.
    The result is a *new* record (``bare_uuid``) with the new URL and the old crypto
    info and owners; an input keeps its cmac, an output copy has none.

    Kettle: the old record's s3 credentials do **not** carry over; the new record has
    those given with the update, or none. An update names a new location, and
    credentials registered for one URL must not silently open another; it is also how
    an owner rotates them (same URL, new credentials, new data id)."""
    record = _found(record)
    if record.owner != (caller.user_id,):
        raise PermissionDenied(PERMISSION_DENIED)
    url = check_url(url, policy, output=output)
    credentials = check_s3_credentials(url, s3_credentials, policy)
    return FileRecord(bare_uuid, url, record.crypto_info, record.owner, None if output else record.cmac, credentials)


def fusion_url(path_uuid: str) -> str:
    return f"{FUSION_URL_PREFIX}{path_uuid}.fusion"


def register_fusion_output(
    caller: Caller, owner_list: Iterable[str], bare_uuid: str, path_uuid: str, key: bytes
) -> FileRecord:
    """RegisterFusionOutput (§5.3): more than one entry (raw length) including the caller,
    else PERMISSION_DENIED; then Kettle's bounds (distinct non-empty owners, sizes),
    INVALID_ARGUMENT. The platform's random key is never revealed."""
    owners = list(owner_list)
    if len(owners) <= 1 or caller.user_id not in owners:
        raise PermissionDenied(PERMISSION_DENIED)
    if len(owners) > MAX_ITEMS:
        raise InvalidArgument(f"owner_list has {len(owners)} entries, at most {MAX_ITEMS}")
    if any(not owner for owner in owners):
        raise InvalidArgument("owner_list contains an empty user id")
    if any(len(owner) > MAX_NAME_CHARS for owner in owners):
        raise InvalidArgument(f"owner_list contains a user id longer than {MAX_NAME_CHARS} characters")
    distinct = tuple(sorted(set(owners)))
    if len(distinct) < 2:
        raise InvalidArgument("a fusion output needs at least two distinct owners")
    if path_uuid == bare_uuid or len(key) != FUSION_KEY_BYTES:
        raise ValueError("a fusion output needs its own path UUID and a 16-byte key")
    return FileRecord(bare_uuid, fusion_url(path_uuid), CryptoInfo(TEACLAVE_FILE_128, key, b""), distinct, None)


def input_from_output(output: FileRecord | None, caller: Caller) -> FileRecord:
    """RegisterInputFromOutput (§5.3 steps 1–4): found, caller an owner, cmac set
    ("invalid output file" before a task wrote it); the input has the same UUID, and
    (Kettle) the output's s3 credentials: the same owners read the same URL."""
    output = _check_owner(_found(output), caller)
    if output.cmac is None:
        raise InvalidArgument(INVALID_OUTPUT_FILE)
    return FileRecord(output.uuid, output.url, output.crypto_info, output.owner, output.cmac, output.s3_credentials)


FileView = tuple[tuple[str, ...], bytes]
"""(owners, cmac) as GetInputFile / GetOutputFile answer: cmac empty until written."""


def file_view(record: FileRecord | None, caller: Caller) -> FileView:
    """GetInputFile / GetOutputFile: owners only (PlatformAdmin is not exempt). URL and key
    are never returned."""
    record = _check_owner(_found(record), caller)
    return record.owner, record.cmac or b""


# --- assignment to a task (§6.3) --------------------------------------------------------------


def check_assignable(
    record: FileRecord | None,
    caller: Caller,
    name: str,
    ownership: Mapping[str, tuple[str, ...]],
    assigned: Mapping[str, FileRecord],
    *,
    output: bool,
) -> FileRecord:
    """One AssignData entry (§6.3 steps 5–6): unknown → "invalid data id"; then caller an
    owner, ``name`` declared, the declared owners equal the file's exactly, ``name``
    not assigned yet and (outputs, Kettle) no cmac yet — else PERMISSION_DENIED."""
    record = _check_owner(_found(record), caller)
    declared = ownership.get(name)
    if declared is None or set(declared) != set(record.owner) or name in assigned:
        raise PermissionDenied(PERMISSION_DENIED)
    if output and record.cmac is not None:
        raise PermissionDenied(PERMISSION_DENIED)
    return record
