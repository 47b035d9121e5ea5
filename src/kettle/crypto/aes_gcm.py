"""The ``aes-gcm-128`` / ``aes-gcm-256`` schemas, streamed in constant memory.

File layout (``spec/platform.md`` §5.1): the whole file is one AES-GCM
ciphertext (AAD = 8 zero bytes, the registered 12-byte iv) followed by the
16-byte GCM tag, and the tag is the file's "cmac". That is exactly what
``AESGCM(key).encrypt(iv, plaintext, bytes(8))`` produces, so files made by
Teaclave's tooling or any AEAD library interoperate.

Why decryption stages the plaintext (DESIGN.md §7): GCM is a one-pass mode
whose tag covers the *whole* ciphertext, and a streaming decryptor can only
check it in ``finalize_with_tag`` after the last byte. Every plaintext byte it
returned before that is unverified: a tampered file decrypts to attacker-
chosen bit flips which are detected only at the end. Handing those bytes to a
function as they come would let it compute on (and leak results of) forged
data before the task fails. :func:`decrypt_to_staging` therefore decrypts the
whole file into scratch space first and hands out a :class:`StagedPlaintext`
only after the tag verified; on failure the scratch file is deleted and the
function never starts. Holding a multi-gigabyte plaintext in memory is not an
option and writing it to disk in clear would put the data owner's plaintext
outside the enclave, so the scratch file is itself encrypted under a fresh
random AES-256-GCM key that exists only in this process's memory (see
:class:`_ScratchWriter` for its chunked format). Reading it back verifies each
chunk before returning its bytes, so the function only ever sees
authenticated plaintext.
"""

from __future__ import annotations

import hmac
import io
import os
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Final, Self

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kettle.crypto.schemas import (
    AES_GCM_128,
    AES_GCM_256,
    CMAC_LENGTH,
    FileCryptoError,
    validate_crypto_info,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "StagedPlaintext",
    "cmac_of_file",
    "decrypt_to_staging",
    "encrypt_file",
]

DEFAULT_CHUNK_SIZE: Final = 1 << 20
_AAD: Final = bytes(8)
_TAG_LENGTH: Final = CMAC_LENGTH

# Scratch format: records of nonce(12) || AES-256-GCM(chunk) || tag(16).
_SCRATCH_CHUNK: Final = 64 * 1024
_SCRATCH_NONCE: Final = 12
_SCRATCH_OVERHEAD: Final = _SCRATCH_NONCE + 16
_SCRATCH_AAD: Final = struct.Struct(">QB")  # chunk index, final-chunk flag


def _schema_for(key: bytes, iv: bytes) -> str:
    """Validate key/iv for the schema their length implies and return that schema."""
    schema = AES_GCM_256 if len(key) == 32 else AES_GCM_128
    validate_crypto_info(schema, key, iv)
    return schema


def _label(schema: str) -> str:
    return "AesGcm256" if schema == AES_GCM_256 else "AesGcm128"


def _source_name(source: BinaryIO) -> str:
    name = getattr(source, "name", None)
    return (
        os.fsdecode(name) if isinstance(name, (str, bytes, os.PathLike)) else "<stream>"
    )


def _ciphertext_length(source: BinaryIO, schema: str, path: str) -> int:
    """Length of the ciphertext before the trailing tag; the source is left at offset 0."""
    size = source.seek(0, io.SEEK_END)
    if size < _TAG_LENGTH:
        raise FileCryptoError(f"{_label(schema)} File, invalid length: {path}")
    source.seek(0)
    return size - _TAG_LENGTH


def _read_tag(source: BinaryIO, ciphertext_length: int) -> bytes:
    source.seek(ciphertext_length)
    tag = source.read(_TAG_LENGTH)
    source.seek(0)
    return tag


def _copy_chunks(source: BinaryIO, length: int, chunk_size: int) -> Iterator[bytes]:
    """Yield exactly ``length`` bytes of ``source`` in pieces of at most ``chunk_size``."""
    remaining = length
    while remaining:
        chunk = source.read(min(chunk_size, remaining))
        if not chunk:
            raise FileCryptoError("source file shrank while being read")
        remaining -= len(chunk)
        yield chunk


def encrypt_file(
    source: BinaryIO,
    sink: BinaryIO,
    key: bytes,
    iv: bytes,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> bytes:
    """Encrypt ``source`` to ``sink`` as ciphertext followed by the tag; return the tag (the cmac).

    The schema (128 or 256) follows from the key length. Memory use is one
    chunk regardless of the file size.
    """
    _schema_for(key, iv)
    encryptor = Cipher(algorithms.AES(key), modes.GCM(iv)).encryptor()
    encryptor.authenticate_additional_data(_AAD)
    while chunk := source.read(chunk_size):
        sink.write(encryptor.update(chunk))
    sink.write(encryptor.finalize())
    tag = encryptor.tag
    sink.write(tag)
    return tag


def cmac_of_file(
    source: BinaryIO, key: bytes, iv: bytes, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> bytes:
    """Return the cmac of an encrypted file after checking that ``key``/``iv`` authenticate it.

    The cmac is merely the last 16 bytes, but a data owner who registers it
    wants to know the file opens with the key they register alongside it;
    this decrypts (streaming, discarding the plaintext) to find out.
    """
    schema = _schema_for(key, iv)
    path = _source_name(source)
    length = _ciphertext_length(source, schema, path)
    tag = _read_tag(source, length)
    decryptor = Cipher(algorithms.AES(key), modes.GCM(iv)).decryptor()
    decryptor.authenticate_additional_data(_AAD)
    for chunk in _copy_chunks(source, length, chunk_size):
        decryptor.update(chunk)
    try:
        decryptor.finalize_with_tag(tag)
    except InvalidTag:
        raise FileCryptoError(f"{_label(schema)} File, invalid tag: {path}") from None
    return tag


class _ScratchWriter:
    """Write plaintext to an encrypted scratch file under a per-file random key.

    Format: a sequence of records ``nonce(12) || AES-256-GCM ciphertext || tag(16)``.
    Every record but the last holds exactly ``_SCRATCH_CHUNK`` plaintext bytes;
    the last holds 0..``_SCRATCH_CHUNK`` bytes and always exists (an empty
    plaintext is one empty final record). The AAD of record *i* is
    ``(i, is_final)``, so a reader detects reordered or duplicated records
    (wrong index), truncation at a record boundary (the new last record was
    sealed with ``is_final = 0``) and appended records (a record after one
    sealed as final). Since the key is used for this one file only, records of
    other scratch files cannot be spliced in. Nonces are random: 96 bits per
    record under a single-use key are far from the collision bound.
    """

    def __init__(self, sink: BinaryIO, key: bytes) -> None:
        self._sink = sink
        self._aead = AESGCM(key)
        self._pending = bytearray()
        self._index = 0

    def write(self, data: bytes) -> None:
        self._pending += data
        start = 0
        # Keep at least one byte back: only close() knows which record is final.
        while len(self._pending) - start > _SCRATCH_CHUNK:
            self._seal(self._pending[start : start + _SCRATCH_CHUNK], final=False)
            start += _SCRATCH_CHUNK
        del self._pending[:start]

    def close(self) -> None:
        self._seal(self._pending, final=True)
        self._pending.clear()

    def _seal(self, chunk: bytes | bytearray, *, final: bool) -> None:
        nonce = os.urandom(_SCRATCH_NONCE)
        self._sink.write(
            nonce
            + self._aead.encrypt(nonce, chunk, _SCRATCH_AAD.pack(self._index, final))
        )
        self._index += 1


class _ScratchReader(io.RawIOBase):
    """Sequential plaintext reader over a scratch file; every byte comes from a verified record."""

    def __init__(self, path: Path, key: bytes) -> None:
        super().__init__()
        self._file = path.open("rb")
        self._size = os.fstat(self._file.fileno()).st_size
        self._aead = AESGCM(key)
        self._index = 0
        self._offset = 0
        self._buffer = memoryview(b"")
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buffer and not self._done:
            self._buffer = memoryview(self._next_record())
        count = min(len(target), len(self._buffer))
        target[:count] = self._buffer[:count]
        self._buffer = self._buffer[count:]
        return count

    def _next_record(self) -> bytes:
        length = min(_SCRATCH_CHUNK + _SCRATCH_OVERHEAD, self._size - self._offset)
        final = self._offset + length == self._size
        record = self._file.read(length)
        if length < _SCRATCH_OVERHEAD or len(record) != length:
            raise FileCryptoError(
                f"staged plaintext is corrupted (record {self._index})"
            )
        aad = _SCRATCH_AAD.pack(self._index, final)
        try:
            chunk = self._aead.decrypt(
                record[:_SCRATCH_NONCE], record[_SCRATCH_NONCE:], aad
            )
        except InvalidTag:
            raise FileCryptoError(
                f"staged plaintext is corrupted (record {self._index})"
            ) from None
        self._offset += length
        self._index += 1
        self._done = final
        return chunk

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()


class StagedPlaintext:
    """A verified plaintext held in an encrypted scratch file; the key lives only in this object.

    Exists only for files whose GCM tag verified. :meth:`open` may be called
    any number of times, each reader starting at byte 0, which is what the
    runtime's ``open_input`` needs (functions.md §4.2). :meth:`delete` (or
    leaving the ``with`` block) removes the scratch file and forgets the key.
    """

    def __init__(self, path: Path, key: bytes) -> None:
        self.path = path
        self._key: bytes | None = key

    def open(self) -> io.BufferedReader:
        """Return a new buffered plaintext reader positioned at byte 0."""
        if self._key is None:
            raise ValueError("staged plaintext was deleted")
        return io.BufferedReader(_ScratchReader(self.path, self._key), _SCRATCH_CHUNK)

    def delete(self) -> None:
        """Remove the scratch file and forget the key; no new reader can be opened afterwards."""
        self._key = None
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.delete()


def decrypt_to_staging(
    source: BinaryIO,
    key: bytes,
    iv: bytes,
    expected_cmac: bytes,
    staging_dir: Path,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    display_path: str | None = None,
) -> StagedPlaintext:
    """Decrypt an ``aes-gcm-*`` file into encrypted scratch space, verified, in constant memory.

    ``source`` must be seekable: the tag sits at the end. It is compared with
    the registered ``expected_cmac`` before anything is decrypted, so a file
    replaced behind the data owner's back costs no work. Decryption then
    verifies against that same tag in ``finalize_with_tag``; only if that
    succeeds is a :class:`StagedPlaintext` returned (module docstring: why).
    Errors name ``display_path`` (default: the source's file name) like
    Teaclave does: ``AesGcm128 File, invalid tag: <path>`` for a wrong key,
    wrong cmac or tampered file, ``... invalid length: <path>`` for a file
    shorter than a tag. On any failure no scratch file remains.
    """
    schema = _schema_for(key, iv)
    path = display_path if display_path is not None else _source_name(source)
    invalid_tag = FileCryptoError(f"{_label(schema)} File, invalid tag: {path}")
    length = _ciphertext_length(source, schema, path)
    tag = _read_tag(source, length)
    if not hmac.compare_digest(tag, expected_cmac):
        raise invalid_tag

    scratch_key = AESGCM.generate_key(bit_length=256)
    fd, name = tempfile.mkstemp(prefix="staged-", suffix=".enc", dir=staging_dir)
    scratch = Path(name)
    try:
        with os.fdopen(fd, "wb") as sink:
            writer = _ScratchWriter(sink, scratch_key)
            decryptor = Cipher(algorithms.AES(key), modes.GCM(iv)).decryptor()
            decryptor.authenticate_additional_data(_AAD)
            for chunk in _copy_chunks(source, length, chunk_size):
                writer.write(decryptor.update(chunk))
            try:
                writer.write(decryptor.finalize_with_tag(tag))
            except InvalidTag:
                raise invalid_tag from None
            writer.close()
    except BaseException:
        scratch.unlink(missing_ok=True)
        raise
    return StagedPlaintext(scratch, scratch_key)
