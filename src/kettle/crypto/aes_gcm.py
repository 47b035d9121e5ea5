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
random AES-256 key (OCB3, an AEAD) that exists only in this process's memory
(see :class:`_ScratchWriter` for its record format). Reading it back verifies
each record before returning its bytes, so the function only ever sees
authenticated plaintext. :class:`StagingDecryptor` does the same for a file
whose bytes arrive as a stream (a download), so the ciphertext is never kept.
"""

from __future__ import annotations

import errno
import fcntl
import hmac
import io
import mmap
import os
import struct
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Final, Self

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESOCB3

from kettle.crypto.schemas import (
    AES_GCM_128,
    AES_GCM_256,
    CMAC_LENGTH,
    FileCryptoError,
    validate_crypto_info,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "SCRATCH_RECORD",
    "StagedPlaintext",
    "StagingDecryptor",
    "cmac_of_file",
    "decrypt_to_staging",
    "encrypt_file",
]

DEFAULT_CHUNK_SIZE: Final = 1 << 20
_AAD: Final = bytes(8)
_TAG_LENGTH: Final = CMAC_LENGTH

SCRATCH_RECORD: Final = (1 << 20) - 16
"""Plaintext bytes per record of a scratch file (see :class:`_ScratchWriter` for the format);
with its tag a record is exactly 1 MiB, a whole number of disk blocks."""
_SCRATCH_TAG: Final = 16
_SCRATCH_SEALED: Final = SCRATCH_RECORD + _SCRATCH_TAG
_BLOCK: Final = 4096
_READ_BUFFER: Final = 64 * 1024
_SCRATCH_NONCE: Final = 12
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
    """Write plaintext to an encrypted scratch file under a fresh random key.

    Format: a sequence of records ``AES-256-OCB3 ciphertext || tag(16)``. Every
    record but the last holds exactly :data:`SCRATCH_RECORD` plaintext bytes;
    the last holds 0..:data:`SCRATCH_RECORD` bytes and always exists (an empty
    plaintext is one empty final record). Record *i* is sealed with nonce *i*
    and AAD ``(i, is_final)``, so a reader detects reordered or duplicated
    records (wrong nonce), truncation at a record boundary (the new last record
    was sealed with ``is_final = 0``) and appended records (a record after one
    sealed as final). Each writer draws its own key, so a nonce is never used
    twice under one key, and records of other scratch files (or of an earlier
    try of the same fetch) cannot be spliced in.

    Why OCB3 in 1 MiB records: it is an AEAD like GCM, and about twice as fast
    as GCM on this kind of CPU (one AES pass and no GHASH); the staging copy is
    pure overhead over what the task must do anyway, so its speed is the data
    path's. Plaintext is gathered in one reused buffer (:meth:`room`) and
    sealed into another: no allocation per record.

    Why ``O_DIRECT`` (where the file system allows it, :func:`_direct`): the
    copy is read once or twice and deleted, so caching it only costs. Through
    the page cache it doubled what a task leaves for the kernel to write back,
    and the output's writes then competed with that writeback; written directly
    it costs the disk's time and little CPU. Hence records of exactly 1 MiB and
    page-aligned buffers; the last record is written padded to a block and the
    file cut back to its true length. A record is written by a helper thread
    while the next one is decrypted and sealed (two buffers, in order), so the
    disk's time overlaps the crypto's. :meth:`close` or :meth:`abandon` ends it.
    """

    def __init__(self, sink: BinaryIO) -> None:
        self.key = AESOCB3.generate_key(bit_length=256)
        self._sink = sink
        self._aead = AESOCB3(self.key)
        # GCM's update_into wants 15 bytes of room beyond its input: the slack is never sealed.
        self._record = bytearray(SCRATCH_RECORD + 15)
        self._view = memoryview(self._record)
        # Page-aligned, as O_DIRECT needs; one being written while the other is sealed.
        self._sealed = [memoryview(mmap.mmap(-1, _SCRATCH_SEALED)) for _ in range(2)]
        self._writes: list[Future[None] | None] = [None, None]
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scratch-write")  # one: in order
        self._filled = 0
        self._index = 0
        self._written = 0

    def room(self) -> memoryview:
        """Where the next plaintext bytes go (at least one byte, plus the 15 bytes of slack);
        :meth:`advance` says how many were put there."""
        if self._filled == SCRATCH_RECORD:
            # More plaintext follows, so the full record is not the last: seal it now.
            self._seal(final=False)
        return self._view[self._filled :]

    def advance(self, count: int) -> None:
        self._filled += count

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        while view:
            room = self.room()
            count = min(len(view), SCRATCH_RECORD - self._filled)
            room[:count] = view[:count]
            self.advance(count)
            view = view[count:]

    def close(self) -> None:
        """Seal the last record and wait until everything is written (OSError if it was not)."""
        try:
            self._seal(final=True)
            for write in self._writes:
                if write is not None:
                    write.result()
            if self._written % _BLOCK:
                self._sink.truncate(self._written)  # the last record went out padded
        finally:
            self._io.shutdown()

    def abandon(self) -> None:
        """Stop, once any write under way is done (its failure does not matter any more)."""
        self._io.shutdown(wait=True, cancel_futures=True)

    def _seal(self, *, final: bool) -> None:
        slot = self._index % 2
        previous = self._writes[slot]
        if previous is not None:
            previous.result()  # its buffer is free again (or the write failed: raise that)
        sealed = self._sealed[slot]
        size = self._filled + _SCRATCH_TAG
        self._aead.encrypt_into(
            _scratch_nonce(self._index), self._view[: self._filled],
            _SCRATCH_AAD.pack(self._index, final), sealed[:size],
        )
        padded = -(-size // _BLOCK) * _BLOCK
        sealed[size:padded] = bytes(padded - size)
        self._writes[slot] = self._io.submit(_write_all, self._sink, sealed[:padded])
        self._written += size
        self._filled = 0
        self._index += 1


def _write_all(sink: BinaryIO, view: memoryview) -> None:
    written = 0
    while written < len(view):
        written += sink.write(view[written:]) or 0


def _direct(fd: int) -> None:
    """Bypass the page cache for ``fd`` (see :class:`_ScratchWriter` for why), where the file
    system supports it; elsewhere the same I/O goes through the cache."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_DIRECT)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise


def _scratch_nonce(index: int) -> bytes:
    return index.to_bytes(_SCRATCH_NONCE, "big")


class _ScratchReader(io.RawIOBase):
    """Sequential plaintext reader over a scratch file; every byte comes from a verified record.

    A record is decrypted into this reader's own buffer and copied out only once its
    tag verified: decrypting straight into the caller's buffer would leave forged
    plaintext there when the tag fails (``readinto`` may be handed the function's buffer).
    The next record is read by a helper thread while this one is decrypted and handed
    out (see :class:`_ScratchWriter` on direct I/O); :meth:`close` ends it.
    """

    def __init__(self, path: Path, key: bytes) -> None:
        super().__init__()
        self._file = path.open("rb", buffering=0)
        self._fd = self._file.fileno()
        _direct(self._fd)
        self._size = os.fstat(self._fd).st_size
        self._aead = AESOCB3(key)
        self._index = 0
        # Page-aligned, as O_DIRECT needs; one being read while the other is decrypted.
        self._raw = [memoryview(mmap.mmap(-1, _SCRATCH_SEALED)) for _ in range(2)]
        self._plain = memoryview(bytearray(SCRATCH_RECORD))
        self._buffer = self._plain[:0]
        self._done = False
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scratch-read")
        self._ahead: Future[int] | None = self._io.submit(self._read, 0)

    def readable(self) -> bool:
        return True

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buffer and not self._done:
            self._buffer = self._next_record()
        count = min(len(target), len(self._buffer))
        target[:count] = self._buffer[:count]
        self._buffer = self._buffer[count:]
        return count

    def _corrupted(self) -> FileCryptoError:
        return FileCryptoError(f"staged plaintext is corrupted (record {self._index})")

    def _read(self, index: int) -> int:
        """Read record ``index`` into its buffer; how many bytes there were."""
        offset = index * _SCRATCH_SEALED
        length = max(0, min(_SCRATCH_SEALED, self._size - offset))
        # Whole blocks asked for (O_DIRECT): the file's end makes the last read short.
        span = self._raw[index % 2][: -(-length // _BLOCK) * _BLOCK]
        got = 0
        while got < length:
            count = os.preadv(self._fd, [span[got:]], offset + got)
            if not count:
                break
            got += count
        return min(got, length)

    def _next_record(self) -> memoryview:
        assert self._ahead is not None
        got = self._ahead.result()
        offset = self._index * _SCRATCH_SEALED
        length = min(_SCRATCH_SEALED, self._size - offset)
        final = offset + length == self._size
        if length < _SCRATCH_TAG or got != length:
            raise self._corrupted()
        self._ahead = None if final else self._io.submit(self._read, self._index + 1)
        record = self._raw[self._index % 2][:length]
        plain = self._plain[: length - _SCRATCH_TAG]
        try:
            self._aead.decrypt_into(_scratch_nonce(self._index), record, _SCRATCH_AAD.pack(self._index, final), plain)
        except InvalidTag:
            raise self._corrupted() from None
        self._index += 1
        self._done = final
        return plain

    def close(self) -> None:
        if not self.closed:
            self._io.shutdown(wait=True, cancel_futures=True)
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
        # A small buffer: reads of any larger size go straight from the record into the caller's
        # buffer (one copy), whatever their alignment with the records; small ones are buffered.
        return io.BufferedReader(_ScratchReader(self.path, self._key), _READ_BUFFER)

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


class StagingDecryptor:
    """Decrypt an ``aes-gcm-*`` file *as its bytes arrive* into encrypted scratch space.

    For a fetch that streams: :meth:`write` takes the file's bytes in order (whatever
    the pieces), :meth:`reset` starts over (a retried download), :meth:`finish`
    checks the tag and returns the :class:`StagedPlaintext`, only if the whole file
    authenticated against ``expected_cmac``. The last 16 bytes seen are held back,
    since only the end of the stream tells which bytes are the tag. The plaintext
    goes straight from the GCM decryptor into the scratch writer's record buffer, so
    nothing is copied on the way. Nothing is readable from the scratch file before
    :meth:`finish` succeeded (the key stays inside this object until then);
    :meth:`discard` (or leaving the ``with`` block without finishing) removes it.
    """

    def __init__(
        self, key: bytes, iv: bytes, expected_cmac: bytes, staging_dir: Path, *, display_path: str
    ) -> None:
        schema = _schema_for(key, iv)
        self._key, self._iv, self._cmac = key, iv, expected_cmac
        self._invalid_tag = FileCryptoError(f"{_label(schema)} File, invalid tag: {display_path}")
        self._invalid_length = FileCryptoError(f"{_label(schema)} File, invalid length: {display_path}")
        fd, name = tempfile.mkstemp(prefix="staged-", suffix=".enc", dir=staging_dir)
        _direct(fd)
        self.path = Path(name)
        self._file: BinaryIO = os.fdopen(fd, "wb", buffering=0)
        self._start()

    def _start(self) -> None:
        self._writer = _ScratchWriter(self._file)  # (ended by finish, reset or discard)
        self._decryptor = Cipher(algorithms.AES(self._key), modes.GCM(self._iv)).decryptor()
        self._decryptor.authenticate_additional_data(_AAD)
        self._tail = b""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Take the next bytes of the file."""
        view = memoryview(data).cast("B")
        if len(view) < _TAG_LENGTH:
            joined = self._tail + view.tobytes()
            self._decrypt(memoryview(joined)[: -_TAG_LENGTH])
            self._tail = joined[-_TAG_LENGTH:]
            return
        self._decrypt(memoryview(self._tail))
        self._decrypt(view[: -_TAG_LENGTH])
        self._tail = view[-_TAG_LENGTH:].tobytes()

    def _decrypt(self, view: memoryview) -> None:
        while view:
            room = self._writer.room()
            count = min(len(view), len(room) - 15)
            self._writer.advance(self._decryptor.update_into(view[:count], room))
            view = view[count:]

    def reset(self) -> None:
        """Forget everything written so far (a fresh scratch key too: no record is ever re-sealed)."""
        self._writer.abandon()
        self._file.seek(0)
        self._file.truncate()
        self._start()

    def finish(self) -> StagedPlaintext:
        """Check the tag; the staged plaintext if the file authenticated, else FileCryptoError
        (an ``invalid length`` for a file shorter than a tag, an ``invalid tag`` otherwise)."""
        if len(self._tail) < _TAG_LENGTH:
            raise self._invalid_length
        # The file's own tag must be the registered cmac, and the ciphertext must authenticate
        # against it.
        if not hmac.compare_digest(self._tail, self._cmac):
            raise self._invalid_tag
        try:
            remainder = self._decryptor.finalize_with_tag(self._cmac)
        except InvalidTag:
            raise self._invalid_tag from None
        self._writer.write(remainder)
        self._writer.close()
        self._file.close()
        return StagedPlaintext(self.path, self._writer.key)

    def discard(self) -> None:
        """Remove the scratch file (whatever state it is in)."""
        self._writer.abandon()
        self._file.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.discard()


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
    shorter than a tag. On any failure no scratch file remains. A file that
    arrives as a stream goes through :class:`StagingDecryptor` instead.
    """
    schema = _schema_for(key, iv)
    path = display_path if display_path is not None else _source_name(source)
    length = _ciphertext_length(source, schema, path)
    if not hmac.compare_digest(_read_tag(source, length), expected_cmac):
        raise FileCryptoError(f"{_label(schema)} File, invalid tag: {path}")
    with StagingDecryptor(key, iv, expected_cmac, staging_dir, display_path=path) as staging:
        for chunk in _copy_chunks(source, length + _TAG_LENGTH, chunk_size):
            staging.write(chunk)
        return staging.finish()
