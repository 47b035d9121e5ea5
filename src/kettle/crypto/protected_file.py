"""The ``teaclave-file-128`` schema: SGX protected files in user-key mode.

Byte-level specification: ``shared/spec/teaclave-file-128.md`` (section numbers
below refer to it). A protected file is a sequence of 4096-byte nodes: node 0
holds the metadata (file name, size, the first 3072 plaintext bytes and the key
and tag of the root MHT node), the other nodes are data nodes and Merkle-tree
(MHT) nodes, each AES-128-GCM encrypted under its own key stored, with its tag,
in its parent. The "cmac" Teaclave registers for such a file is the root MAC:
the GCM tag of the metadata node.

Both classes stream with memory bounded by the depth of the MHT tree (a few
4096-byte nodes), never by the file size, which is why they need random
access to the underlying file:

* :class:`ProtectedFileReader` reads the V2 layout (Teaclave >= 0.5.0) and the
  LEGACY Intel layout (Teaclave <= 0.4.0), detecting which one authenticates
  (§11.2). Every byte it returns comes from a node whose GCM tag was verified
  through the chain of tags up to the root MAC.
* :class:`ProtectedFileWriter` writes the V2 layout only, the one current
  Teaclave opens. It draws a fresh random metadata nonce and fresh random node
  keys for every node encryption (§5.3, §9), so its output (and root MAC) is
  never byte-identical to another encryption of the same plaintext.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import BinaryIO, Self

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.cmac import CMAC

__all__ = ["ProtectedFileError", "ProtectedFileReader", "ProtectedFileWriter"]

NODE_SIZE = 4096
FILE_ID = 0x5347585F46494C45
MAJOR_VERSION = 1
USER_KEY_FLAG = 1
INLINE_DATA_SIZE = 3072
FILENAME_FIELD_SIZE = 260
MAX_NAME_LENGTH = 258
DATA_ENTRIES_PER_MHT = 96
CHILD_ENTRIES_PER_MHT = 32
ENTRY_SIZE = 32
KEY_SIZE = 16
_ZERO_IV = bytes(12)
_METADATA_LABEL = b"SGX-PROTECTED-FS-METADATA-KEY"
_CHILD_AREA = DATA_ENTRIES_PER_MHT * ENTRY_SIZE  # child entries start at 3072
_EMPTY_ENTRY = bytes(ENTRY_SIZE)


class ProtectedFileError(ValueError):
    """The bytes are not a valid protected file for this key and name."""


@dataclass(frozen=True)
class _Layout:
    """Where one metadata-node layout keeps its fields (§3)."""

    label: str
    flag_offset: int
    update_flag_offset: int
    key_id_offset: int
    gmac_offset: int
    encrypted_offset: int
    encrypted_size: int

    @property
    def data_offset(self) -> int:
        """Offset of the inline data in the encrypted part (it ends the part)."""
        return self.encrypted_size - INLINE_DATA_SIZE

    @property
    def mht_entry_offset(self) -> int:
        """Offset of mht_key || mht_gmac in the encrypted part (just before the data)."""
        return self.data_offset - ENTRY_SIZE


V2 = _Layout("v2", 10, 11, 16, 80, 96, 3372)
LEGACY = _Layout("legacy", 60, 93, 10, 77, 94, 3392)


def _kdf(key: bytes, label: bytes, node_number: int, nonce: bytes) -> bytes:
    """One-block SP 800-108 counter-mode KDF with AES-CMAC as PRF (§5.1)."""
    cmac = CMAC(algorithms.AES(key))
    cmac.update(struct.pack("<I64sIQ32sII", 1, label, 0, node_number, nonce, 128, 0))
    return cmac.finalize()


def _data_count(size: int) -> int:
    """Number of data nodes for a plaintext of ``size`` bytes (§2)."""
    return 0 if size <= INLINE_DATA_SIZE else -(-(size - INLINE_DATA_SIZE) // NODE_SIZE)


def _mht_count(data_count: int) -> int:
    """Number of MHT nodes needed to index ``data_count`` data nodes (§2)."""
    return -(-data_count // DATA_ENTRIES_PER_MHT)


def _data_physical(d: int) -> int:
    """Physical node number of data node #d (§7)."""
    return d + 2 + d // DATA_ENTRIES_PER_MHT


def _mht_physical(m: int) -> int:
    """Physical node number of MHT node #m (§7)."""
    return 1 + (DATA_ENTRIES_PER_MHT + 1) * m


def _child_entry_offset(m: int) -> int:
    """Offset, inside the parent MHT of MHT #m (m >= 1), of m's entry."""
    return _CHILD_AREA + ENTRY_SIZE * ((m - 1) % CHILD_ENTRIES_PER_MHT)


def _mht_path(m: int) -> list[int]:
    """MHT #m and its ancestors up to the root, deepest first (§7)."""
    path = [m]
    while m:
        m = (m - 1) // CHILD_ENTRIES_PER_MHT
        path.append(m)
    return path


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_SIZE:
        raise ValueError("teaclave-file-128 key must be exactly 16 bytes")
    return bytes(key)


def _encode_name(name: str) -> bytes:
    """Validate a file name the way the SDK does (§10) and return its UTF-8 bytes."""
    if not isinstance(name, str):
        raise ValueError("file name must be a str")
    encoded = name.encode("utf-8")
    if not 1 <= len(encoded) <= MAX_NAME_LENGTH:
        raise ValueError(f"file name must be 1..{MAX_NAME_LENGTH} bytes of UTF-8, got {len(encoded)}")
    if "/" in name or "\0" in name:
        raise ValueError("file name must be a base name without '/' or NUL")
    return encoded


def _gcm_encrypt(key: bytes, plaintext: bytes | bytearray) -> tuple[bytes, bytes]:
    """AES-128-GCM with the format's fixed zero IV and no AAD (§6): (ciphertext, tag)."""
    sealed = AESGCM(key).encrypt(_ZERO_IV, bytes(plaintext), None)
    return sealed[:-16], sealed[-16:]


class ProtectedFileReader:
    """Decrypts a protected file as a stream of authenticated plaintext.

    ``source`` must be readable and seekable (the tree is walked with seeks so
    that memory stays bounded); the protected file starts at its current
    position. ``name`` is the name the file must have been created with,
    normally the base name of the path or URL it came from (§10); pass ``None``
    only when the name is unknown and the binding deliberately not checked.

    Opening verifies the header, the metadata tag (the root MAC), the name, the
    length implied by the size and the root MHT node, as the SDK does. Later
    nodes are verified as they are read, so a corrupted node raises
    :class:`ProtectedFileError` when reached: plaintext returned before it is
    authentic, but the content is only known complete once the end is reached
    without error. The caller compares :attr:`root_mac` with the registered
    cmac.
    """

    def __init__(self, source: BinaryIO, key: bytes, name: str | None) -> None:
        user_key = _check_key(key)
        expected_name = None if name is None else _encode_name(name)
        self._source = source
        self._base = source.tell()
        length = source.seek(0, os.SEEK_END) - self._base
        if length < NODE_SIZE or length % NODE_SIZE:
            raise ProtectedFileError(
                f"truncated or malformed file: length {length} is not a non-zero multiple of {NODE_SIZE}"
            )
        node0 = self._read_node(0)
        if int.from_bytes(node0[:8], "little") != FILE_ID:
            raise ProtectedFileError("not an SGX protected file (bad file id)")
        if node0[8] != MAJOR_VERSION:
            raise ProtectedFileError(f"unsupported major version {node0[8]}")
        self.layout, metadata = self._open_metadata(node0, user_key)
        self.root_mac: bytes = node0[self.layout.gmac_offset : self.layout.gmac_offset + 16]
        """The 16-byte root MAC, i.e. the cmac Teaclave registers (§9)."""
        stored_name = metadata[:FILENAME_FIELD_SIZE].split(b"\0", 1)[0]
        if expected_name is not None and stored_name != expected_name:
            raise ProtectedFileError(
                f"wrong file name: the file was created as {stored_name.decode('utf-8', 'replace')!r}, "
                f"expected {name!r}"
            )
        self.name: str = stored_name.decode("utf-8", "replace")
        self.size: int = int.from_bytes(metadata[FILENAME_FIELD_SIZE : FILENAME_FIELD_SIZE + 8], "little")
        self._data_count = _data_count(self.size)
        needed = NODE_SIZE * (1 + self._data_count + _mht_count(self._data_count))
        if length < needed:
            raise ProtectedFileError(
                f"truncated file: size {self.size} needs {needed} bytes on disk, found {length}"
            )
        data_offset = self.layout.data_offset
        inline = metadata[data_offset : data_offset + min(self.size, INLINE_DATA_SIZE)]
        self._root_entry = metadata[self.layout.mht_entry_offset : data_offset]
        self._path: dict[int, bytes] = {}
        if self._data_count:
            self._enter_mht(0)
        self._chunks = self._generate(inline)
        self._buffer = memoryview(b"")

    def _open_metadata(self, node0: bytes, user_key: bytes) -> tuple[_Layout, bytes]:
        """Find the layout whose metadata tag verifies and return its decrypted part (§11.2)."""
        refusals = []
        for layout in (V2, LEGACY):
            if node0[layout.flag_offset] != USER_KEY_FLAG:
                refusals.append(
                    f"unsupported encryption mode flag {node0[layout.flag_offset]} "
                    f"(teaclave-file-128 needs user key = {USER_KEY_FLAG})"
                )
                continue
            if node0[layout.update_flag_offset] != 0:
                refusals.append("interrupted update: the file needs SGX recovery, which is not supported")
                continue
            key_id = node0[layout.key_id_offset : layout.key_id_offset + 32]
            meta_key = _kdf(user_key, _METADATA_LABEL, 0, key_id)
            start = layout.encrypted_offset
            ciphertext = node0[start : start + layout.encrypted_size]
            tag = node0[layout.gmac_offset : layout.gmac_offset + 16]
            try:
                return layout, AESGCM(meta_key).decrypt(_ZERO_IV, ciphertext + tag, None)
            except InvalidTag:
                refusals.append("wrong key or corrupted metadata")
        if "wrong key or corrupted metadata" in refusals:
            raise ProtectedFileError("wrong key or corrupted metadata")
        raise ProtectedFileError(refusals[0])

    def _read_node(self, physical: int) -> bytes:
        self._source.seek(self._base + physical * NODE_SIZE)
        node = self._source.read(NODE_SIZE)
        if len(node) != NODE_SIZE:
            raise ProtectedFileError(f"truncated file: physical node {physical} is incomplete")
        return node

    def _decrypt_node(self, physical: int, entry: bytes, what: str) -> bytes:
        try:
            return AESGCM(entry[:KEY_SIZE]).decrypt(
                _ZERO_IV, self._read_node(physical) + entry[KEY_SIZE:], None
            )
        except InvalidTag:
            raise ProtectedFileError(f"corrupted {what} (physical node {physical})") from None

    def _enter_mht(self, m: int) -> None:
        """Keep exactly MHT #m and its ancestors decrypted, re-reading evicted ones."""
        if m in self._path:
            return
        path = _mht_path(m)
        self._path = {n: node for n, node in self._path.items() if n in path}
        for n in reversed(path):
            if n not in self._path:
                if n == 0:
                    entry = self._root_entry
                else:
                    parent = self._path[(n - 1) // CHILD_ENTRIES_PER_MHT]
                    entry = parent[_child_entry_offset(n) : _child_entry_offset(n) + ENTRY_SIZE]
                self._path[n] = self._decrypt_node(_mht_physical(n), entry, f"MHT node #{n}")

    def _generate(self, inline: bytes) -> Iterator[bytes]:
        if inline:
            yield inline
        remaining = self.size - len(inline)
        for d in range(self._data_count):
            m, index = divmod(d, DATA_ENTRIES_PER_MHT)
            self._enter_mht(m)
            entry = self._path[m][ENTRY_SIZE * index : ENTRY_SIZE * (index + 1)]
            plaintext = self._decrypt_node(_data_physical(d), entry, f"data node #{d}")
            yield plaintext[: min(NODE_SIZE, remaining)]
            remaining -= NODE_SIZE

    def read(self, n: int = -1) -> bytes:
        """Return up to ``n`` plaintext bytes (all remaining ones if ``n`` < 0); b"" at the end."""
        parts = []
        while n != 0:
            if not self._buffer:
                chunk = next(self._chunks, None)
                if chunk is None:
                    break
                self._buffer = memoryview(chunk)
            take = len(self._buffer) if n < 0 else min(n, len(self._buffer))
            parts.append(self._buffer[:take].tobytes())
            self._buffer = self._buffer[take:]
            if n > 0:
                n -= take
        return b"".join(parts)

    def __iter__(self) -> Iterator[bytes]:
        """Yield the remaining plaintext in chunks of at most one node."""
        if self._buffer:
            rest, self._buffer = self._buffer.tobytes(), memoryview(b"")
            yield rest
        yield from self._chunks


class ProtectedFileWriter:
    """Encrypts a stream into a new V2 protected file (§12) and returns its root MAC.

    ``sink`` must be readable, writable and seekable (e.g. a file opened
    ``"w+b"``, or ``io.BytesIO``): data nodes are written in place as they fill,
    and MHT nodes, which are only final once all their descendants are, are
    written out encrypted and read back when they change, like the SDK's node
    cache does. This keeps memory bounded by the tree depth whatever the file
    size. The protected file starts at the sink's current position and the
    sink is truncated after its end by :meth:`close`.

    ``name`` is embedded and must equal the base name under which Teaclave will
    open the file (§10): for an input, the last path segment of its URL.

    Node 0 is zeroed until :meth:`close` writes the metadata, so a file whose
    writer was not closed (or whose ``with`` block raised) is rejected by
    readers instead of looking complete. Not crash-safe by itself: write to a
    temporary file and rename it for atomicity (the embedded name must be the
    final one).
    """

    def __init__(self, sink: BinaryIO, key: bytes, name: str) -> None:
        self._key = _check_key(key)
        self._name = _encode_name(name)
        if not (sink.readable() and sink.writable() and sink.seekable()):
            raise ValueError("sink must be readable, writable and seekable (e.g. opened 'w+b')")
        self._sink = sink
        self._base = sink.tell()
        self._size = 0
        self._inline = bytearray()
        self._pending = bytearray()
        self._data_written = 0
        self._path: dict[int, bytearray] = {}
        self._root_mac: bytes | None = None
        self._closed = False
        self._write_node(0, bytes(NODE_SIZE))

    @property
    def root_mac(self) -> bytes:
        """The root MAC (cmac) of the finished file; only known after :meth:`close`."""
        if self._root_mac is None:
            raise ValueError("the root MAC is only known once the writer is closed")
        return self._root_mac

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append plaintext; full data nodes are encrypted and written immediately."""
        if self._closed:
            raise ValueError("write to a closed ProtectedFileWriter")
        view = memoryview(data).cast("B")
        self._size += len(view)
        room = INLINE_DATA_SIZE - len(self._inline)
        if room > 0:
            self._inline += view[:room]
            view = view[room:]
        while view:
            take = NODE_SIZE - len(self._pending)
            self._pending += view[:take]
            view = view[take:]
            if len(self._pending) == NODE_SIZE:
                self._flush_data_node()
        return len(data)

    def close(self) -> bytes:
        """Write the remaining nodes and the metadata; return the root MAC (idempotent)."""
        if self._closed:
            return self.root_mac
        self._closed = True
        if self._pending:
            self._pending += bytes(NODE_SIZE - len(self._pending))
            self._flush_data_node()
        root_entry = bytes(ENTRY_SIZE)
        if self._data_written:
            self._evict(keep=[0])
            root_key = os.urandom(KEY_SIZE)
            ciphertext, tag = _gcm_encrypt(root_key, self._path.pop(0))
            self._write_node(_mht_physical(0), ciphertext)
            root_entry = root_key + tag
        metadata = (
            self._name.ljust(FILENAME_FIELD_SIZE, b"\0")
            + self._size.to_bytes(8, "little")
            + root_entry
            + bytes(self._inline).ljust(INLINE_DATA_SIZE, b"\0")
        )
        key_id = os.urandom(32)
        ciphertext, tag = _gcm_encrypt(_kdf(self._key, _METADATA_LABEL, 0, key_id), metadata)
        header = struct.pack(
            "<QBBBBHH32s32x16s", FILE_ID, MAJOR_VERSION, 0, USER_KEY_FLAG, 0, 0, 0, key_id, tag
        )
        self._write_node(0, (header + ciphertext).ljust(NODE_SIZE, b"\0"))
        self._sink.seek(self._base + NODE_SIZE * (1 + self._data_written + _mht_count(self._data_written)))
        self._sink.truncate()
        self._root_mac = tag
        return tag

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Finish the file on success; on an exception leave it unfinished (and unreadable)."""
        if exc_type is None:
            self.close()
        else:
            self._closed = True

    def _write_node(self, physical: int, node: bytes) -> None:
        self._sink.seek(self._base + physical * NODE_SIZE)
        self._sink.write(node)

    def _flush_data_node(self) -> None:
        d = self._data_written
        m, index = divmod(d, DATA_ENTRIES_PER_MHT)
        self._enter_mht(m)
        key = os.urandom(KEY_SIZE)
        ciphertext, tag = _gcm_encrypt(key, self._pending)
        self._write_node(_data_physical(d), ciphertext)
        self._path[m][ENTRY_SIZE * index : ENTRY_SIZE * (index + 1)] = key + tag
        self._data_written += 1
        self._pending = bytearray()

    def _evict(self, keep: list[int]) -> None:
        """Encrypt and write out every cached MHT node not in ``keep``, children first.

        A child always has a larger number than its parent, and the cache is a
        single root path, so descending order updates each parent entry while
        the parent is still cached. Every write uses a fresh key (§5.3).
        """
        for n in sorted((n for n in self._path if n not in keep), reverse=True):
            key = os.urandom(KEY_SIZE)
            ciphertext, tag = _gcm_encrypt(key, self._path.pop(n))
            self._write_node(_mht_physical(n), ciphertext)
            parent = self._path[(n - 1) // CHILD_ENTRIES_PER_MHT]
            parent[_child_entry_offset(n) : _child_entry_offset(n) + ENTRY_SIZE] = key + tag

    def _enter_mht(self, m: int) -> None:
        """Make the cache hold exactly MHT #m and its ancestors."""
        if m in self._path:
            return
        path = _mht_path(m)
        self._evict(keep=path)
        for n in reversed(path):
            if n in self._path:
                continue
            if n == 0:
                self._path[0] = bytearray(NODE_SIZE)
                continue
            entry = bytes(self._path[(n - 1) // CHILD_ENTRIES_PER_MHT][_child_entry_offset(n) :][:ENTRY_SIZE])
            self._path[n] = bytearray(NODE_SIZE) if entry == _EMPTY_ENTRY else self._reload_mht(n, entry)

    def _reload_mht(self, n: int, entry: bytes) -> bytearray:
        """Read back an MHT node this writer evicted earlier, verifying it was not altered."""
        self._sink.seek(self._base + _mht_physical(n) * NODE_SIZE)
        try:
            plaintext = AESGCM(entry[:KEY_SIZE]).decrypt(
                _ZERO_IV, self._sink.read(NODE_SIZE) + entry[KEY_SIZE:], None
            )
        except InvalidTag:
            raise ProtectedFileError(f"sink was modified while writing (MHT node #{n})") from None
        return bytearray(plaintext)
