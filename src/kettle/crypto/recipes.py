"""What a data owner does with files outside the platform, for every schema of ``platform.md`` §5.1.

Before registering an input the owner encrypts it and registers the key, iv and
cmac; after a task the owner downloads an output and decrypts it with the key
they registered for it, checking the cmac the platform reported. The
primitives in :mod:`kettle.crypto.aes_gcm` and :mod:`kettle.crypto.protected_file`
work on open streams and leave atomicity, overwriting and naming to the
caller; these recipes make the safe choice for each of those once:

* **Nothing half-written.** Every result is written to a private (0600)
  temporary file in the destination's directory, fsync'ed and only then given
  its name. On any failure the temporary file is deleted and the destination
  is left as it was.
* **Verified before visible.** :func:`decrypt` publishes plaintext only after
  the whole file authenticated. For ``aes-gcm-*`` the unverified plaintext
  never touches the disk in clear: it goes through
  :func:`~kettle.crypto.aes_gcm.decrypt_to_staging` (encrypted scratch beside
  the destination), so decryption needs twice the file's size in free space
  for a moment. For ``teaclave-file-128`` every node is verified through the
  tree before its bytes are written.
* **No silent overwrite.** An existing destination is refused unless
  ``overwrite=True``; without it the final step is a hard link, which fails
  atomically if something appeared at the destination meanwhile.
* **Constant memory** whatever the file size (1 MiB buffers; protected files
  hold a few 4 KiB nodes).
* **No aes-gcm key/iv reuse.** GCM under a repeated key and iv leaks the XOR of
  the two plaintexts and lets anyone forge tags, and the iv is part of the
  registered key, so a :class:`FileKey` of an ``aes-gcm-*`` schema encrypts
  one file only: :func:`encrypt` refuses a second use in the same process.
  ``teaclave-file-128`` keys may be reused (each file draws fresh internal keys).

Decisions for the ``raw`` schema (plaintext, no integrity, inputs only):
encrypting or decrypting is a plain copy, so scripts can treat every schema
alike, and its cmac is :data:`RAW_CMAC`, 16 zero bytes: the platform requires a
16-byte cmac at registration (§5.3) but never checks it for ``raw`` (§7.5), and
a content hash would suggest an integrity check that nobody performs. For the
same reason :func:`decrypt` refuses to "verify" an expected cmac of a ``raw``
file.

Key file format (:meth:`FileKey.to_json`): one JSON object
``{"schema": "<schema>", "key": "<hex>", "iv": "<hex>"}`` with lowercase hex
(``iv`` is ``""`` for ``teaclave-file-128``, both are ``""`` for ``raw``). It
holds a secret key: :meth:`FileKey.save` creates it with mode 0600.

All refusals raise :class:`~kettle.crypto.schemas.FileCryptoError` (a
``ValueError``) naming the file, except an existing destination, which raises
:class:`FileExistsError`, and the ordinary ``OSError`` of a missing source.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final

from kettle.crypto.aes_gcm import cmac_of_file, decrypt_to_staging, encrypt_file
from kettle.crypto.protected_file import ProtectedFileReader, ProtectedFileWriter
from kettle.crypto.schemas import (
    AES_GCM_128,
    AES_GCM_256,
    CMAC_LENGTH,
    RAW,
    TEACLAVE_FILE_128,
    FileCryptoError,
    check_cmac,
    validate_crypto_info,
)

__all__ = ["RAW_CMAC", "FileKey", "cmac", "decrypt", "encrypt"]

RAW_CMAC: Final = bytes(CMAC_LENGTH)
"""The placeholder cmac of a ``raw`` file (module docstring: why)."""

_KEY_LENGTHS: Final = {AES_GCM_128: (16, 12), AES_GCM_256: (32, 12), TEACLAVE_FILE_128: (16, 0), RAW: (0, 0)}
_AES_GCM: Final = (AES_GCM_128, AES_GCM_256)
_CHUNK: Final = 1 << 20
_JSON_FIELDS: Final = frozenset({"schema", "key", "iv"})
_MAX_KEY_FILE: Final = 4096
# Filesystems without hard links answer one of these; there the no-clobber publish
# falls back to check-then-rename.
_NO_HARD_LINKS: Final = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP}

_used_gcm_nonces: set[bytes] = set()
_used_gcm_lock = threading.Lock()


@dataclass(frozen=True)
class FileKey:
    """The crypto info a data owner registers for one file: ``schema``, ``key`` and ``iv``.

    Validated on construction with the platform's own rules, so a key that
    would be rejected at registration is rejected here, before any file is
    written. ``repr`` never shows the key.
    """

    schema: str
    key: bytes
    iv: bytes = b""

    def __post_init__(self) -> None:
        for name in ("key", "iv"):
            value = getattr(self, name)
            if not isinstance(value, (bytes, bytearray, memoryview)):
                raise FileCryptoError(
                    f"{name} must be bytes, not {type(value).__name__} (hex text: use FileKey.from_hex)"
                )
            object.__setattr__(self, name, bytes(value))
        validate_crypto_info(self.schema, self.key, self.iv)

    def __repr__(self) -> str:
        return f"FileKey(schema={self.schema!r}, key=<{len(self.key)} secret bytes>, iv={self.iv.hex()!r})"

    @classmethod
    def generate(cls, schema: str) -> FileKey:
        """A fresh random key (and, for ``aes-gcm-*``, a random 12-byte iv) for ``schema``."""
        if schema not in _KEY_LENGTHS:
            validate_crypto_info(schema, b"", b"")  # raises Teaclave's "Invalid crypto schema" text
        key_length, iv_length = _KEY_LENGTHS[schema]
        return cls(schema, os.urandom(key_length), os.urandom(iv_length))

    @classmethod
    def from_hex(cls, schema: str, key_hex: str, iv_hex: str = "") -> FileKey:
        """Build a key from hex text, e.g. key material handed over by another tool."""
        return cls(schema, _unhex(key_hex, "key"), _unhex(iv_hex, "iv"))

    def to_json(self) -> str:
        """The key file format (module docstring); contains the secret key."""
        return json.dumps({"schema": self.schema, "key": self.key.hex(), "iv": self.iv.hex()})

    @classmethod
    def from_json(cls, text: str) -> FileKey:
        """Parse :meth:`to_json`'s format; ``key`` and ``iv`` may be omitted when empty."""
        try:
            document: Any = json.loads(text)
        except ValueError:
            raise FileCryptoError("not a key file: not JSON") from None
        if not isinstance(document, dict):
            raise FileCryptoError("not a key file: expected a JSON object")
        unknown = set(document) - _JSON_FIELDS
        if unknown:
            raise FileCryptoError(f"not a key file: unknown field(s) {', '.join(sorted(unknown))}")
        values = {name: document.get(name, "") for name in _JSON_FIELDS}
        for name, value in values.items():
            if not isinstance(value, str):
                raise FileCryptoError(f"not a key file: {name} must be a string")
        if "schema" not in document:
            raise FileCryptoError("not a key file: no schema")
        return cls.from_hex(values["schema"], values["key"], values["iv"])

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write the key file with mode 0600; an existing file is kept unless ``overwrite``."""
        with _publishing(Path(path), overwrite) as sink:
            sink.write(self.to_json().encode() + b"\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FileKey:
        """Read a key file written by :meth:`save` (or by hand in the same format).

        Reads at most a few KiB, so pointing it at a data file by mistake fails
        fast instead of loading gigabytes.
        """
        with Path(path).open("rb") as source:
            data = source.read(_MAX_KEY_FILE + 1)
        try:
            if len(data) > _MAX_KEY_FILE:
                raise FileCryptoError("not a key file: too large")
            try:
                text = data.decode()
            except UnicodeDecodeError:
                raise FileCryptoError("not a key file: not JSON") from None
            return cls.from_json(text)
        except FileCryptoError as exc:
            raise FileCryptoError(f"{path}: {exc}") from None


def encrypt(src: Path | BinaryIO, dst: Path, key: FileKey, *, name: str | None = None, overwrite: bool = False) -> bytes:
    """Encrypt ``src`` (a path, or a stream read from its position) into ``dst``; return the cmac to register.

    ``name`` is for ``teaclave-file-128`` only: the name bound into the file,
    which must equal the base name under which the platform opens it, i.e. the
    last path segment of the URL it will be uploaded to (default: ``dst``'s
    name). ``raw`` copies and returns :data:`RAW_CMAC`.
    """
    bound = _bound_name(key, name, dst)
    _refuse_existing(dst, overwrite)
    if key.schema in _AES_GCM:
        _claim_gcm_nonce(key)
    with _reading(src) as source, _publishing(dst, overwrite) as sink:
        if key.schema in _AES_GCM:
            return encrypt_file(source, sink, key.key, key.iv, _CHUNK)
        if key.schema == TEACLAVE_FILE_128:
            with _protected_errors(dst):
                writer = ProtectedFileWriter(sink, key.key, bound)
                while chunk := source.read(_CHUNK):
                    writer.write(chunk)
                return writer.close()
        shutil.copyfileobj(source, sink, _CHUNK)
        return RAW_CMAC


def decrypt(
    src: Path, dst: Path, key: FileKey, *, cmac: bytes | None = None, name: str | None = None, overwrite: bool = False
) -> bytes:
    """Decrypt ``src`` into ``dst`` after verifying all of it; return the file's cmac.

    With ``cmac`` (e.g. from ``get_output_file`` or a task's ``tags_map``), a
    file whose cmac differs is refused before anything is decrypted. ``name``
    (``teaclave-file-128`` only) is the name the file must have been created
    with, default ``src``'s name: pass the URL's last segment if the download
    was saved under another name.
    """
    expected = None if cmac is None else check_cmac(bytes(cmac))
    if key.schema == RAW and expected is not None:
        raise FileCryptoError(f"{src}: raw files have no integrity protection, a cmac cannot be verified")
    bound = _bound_name(key, name, src)
    _refuse_existing(dst, overwrite)
    with src.open("rb") as source:
        if key.schema in _AES_GCM:
            tag = _gcm_tag(src, source, key.schema)
            _check_expected(src, tag, expected)
            with _gcm_errors(src, key.schema):
                staged = decrypt_to_staging(source, key.key, key.iv, tag, dst.parent, chunk_size=_CHUNK)
            with staged, staged.open() as plaintext, _publishing(dst, overwrite) as sink:
                shutil.copyfileobj(plaintext, sink, _CHUNK)
            return tag
        if key.schema == TEACLAVE_FILE_128:
            with _protected_errors(src):
                reader = ProtectedFileReader(source, key.key, bound)
            _check_expected(src, reader.root_mac, expected)
            with _publishing(dst, overwrite) as sink, _protected_errors(src):
                for chunk in reader:
                    sink.write(chunk)
            return reader.root_mac
        with _publishing(dst, overwrite) as sink:
            shutil.copyfileobj(source, sink, _CHUNK)
        return RAW_CMAC


def cmac(path: Path, key: FileKey, *, name: str | None = None) -> bytes:
    """The cmac to register for an encrypted file, after checking that ``key`` opens all of it.

    A cmac is only useful together with a key that authenticates the file, so
    this makes a full authenticated pass: for ``aes-gcm-*`` the cmac is just
    the last 16 bytes, but a wrong key or a modified file would otherwise only
    be noticed by a failing task. ``name`` as for :func:`decrypt`.
    """
    bound = _bound_name(key, name, path)
    if key.schema == RAW:
        return RAW_CMAC
    with path.open("rb") as source:
        if key.schema in _AES_GCM:
            _gcm_tag(path, source, key.schema)
            with _gcm_errors(path, key.schema):
                return cmac_of_file(source, key.key, key.iv, _CHUNK)
        with _protected_errors(path):
            reader = ProtectedFileReader(source, key.key, bound)
            for _ in reader:  # every node, verified up to the root MAC
                pass
        return reader.root_mac


# --- helpers ------------------------------------------------------------------------


def _unhex(text: str, what: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except (TypeError, ValueError):
        raise FileCryptoError(f"{what} is not hex text") from None


def _bound_name(key: FileKey, name: str | None, path: Path) -> str:
    """The teaclave-file-128 name to embed or expect; refuse a name for schemas that bind none."""
    if key.schema != TEACLAVE_FILE_128:
        if name is not None:
            raise FileCryptoError(f"only teaclave-file-128 files are bound to a name, not {key.schema} files")
        return ""
    return path.name if name is None else name


def _refuse_existing(dst: Path, overwrite: bool) -> None:
    """Fail before doing any work; :func:`_publish` re-checks atomically at the end."""
    if not overwrite and os.path.lexists(dst):
        raise FileExistsError(f"{dst} exists; refusing to overwrite it")


def _claim_gcm_nonce(key: FileKey) -> None:
    """Record that ``key`` (with its iv) encrypted a file in this process; refuse a second time."""
    fingerprint = hashlib.sha256(b"\0".join((key.schema.encode(), key.key, key.iv))).digest()
    with _used_gcm_lock:
        if fingerprint in _used_gcm_nonces:
            raise FileCryptoError(
                f"this {key.schema} key and iv already encrypted a file: generate a new key for every file "
                "(a repeated GCM key and iv exposes both plaintexts)"
            )
        _used_gcm_nonces.add(fingerprint)


def _gcm_tag(path: Path, source: BinaryIO, schema: str) -> bytes:
    """The trailing tag of an aes-gcm file (its cmac); the source is left at offset 0."""
    size = source.seek(0, os.SEEK_END)
    if size < CMAC_LENGTH:
        raise FileCryptoError(f"{path}: not an {schema} file: {size} bytes is shorter than its 16-byte tag")
    source.seek(size - CMAC_LENGTH)
    tag = source.read(CMAC_LENGTH)
    source.seek(0)
    return tag


def _check_expected(path: Path, actual: bytes, expected: bytes | None) -> None:
    if expected is not None and not hmac.compare_digest(actual, expected):
        raise FileCryptoError(f"{path}: cmac mismatch: the file's cmac is {actual.hex()}, expected {expected.hex()}")


@contextmanager
def _gcm_errors(path: Path, schema: str) -> Iterator[None]:
    """Say what a failed tag check means to a data owner (the primitive uses Teaclave's task text)."""
    try:
        yield
    except FileCryptoError:
        raise FileCryptoError(
            f"{path}: {schema} authentication failed: wrong key or iv, or the file was modified"
        ) from None


@contextmanager
def _protected_errors(path: Path) -> Iterator[None]:
    """Name the file in protected-file refusals (wrong key, name, truncation, corrupted node)."""
    try:
        yield
    except ValueError as exc:  # ProtectedFileError, and the name checks' ValueError
        raise FileCryptoError(f"{path}: {TEACLAVE_FILE_128}: {exc}") from None


@contextmanager
def _reading(src: Path | BinaryIO) -> Iterator[BinaryIO]:
    """Open a path for reading, or lend a caller's stream without closing it."""
    if isinstance(src, Path):
        with src.open("rb") as source:
            yield source
    else:
        yield src


@contextmanager
def _publishing(dst: Path, overwrite: bool) -> Iterator[BinaryIO]:
    """A private temporary file beside ``dst`` that becomes ``dst`` only if the block succeeds."""
    fd, temp_name = tempfile.mkstemp(prefix=".kettle-", suffix=".part", dir=dst.parent)
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "w+b", buffering=_CHUNK) as sink:
            yield sink
            sink.flush()
            os.fsync(sink.fileno())
        _publish(temp, dst, overwrite)
    finally:
        temp.unlink(missing_ok=True)


def _publish(temp: Path, dst: Path, overwrite: bool) -> None:
    """Give ``temp`` the name ``dst``; without ``overwrite``, atomically refuse an existing ``dst``."""
    if overwrite:
        os.replace(temp, dst)
        return
    try:
        os.link(temp, dst)  # fails if dst exists, even if it appeared a moment ago
    except FileExistsError:
        raise FileExistsError(f"{dst} exists; refusing to overwrite it") from None
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        _refuse_existing(dst, overwrite=False)
        os.rename(temp, dst)
