"""teaclave-file-128 reader and writer against the shared vectors and the spec.

The vectors (``/work/shared/vectors/teaclave-file-128``) were checked against
Teaclave's fixtures and the SGX SDK's own code, so the reader decrypting them is
the interoperability proof; the writer is proven by the validated reader
accepting its output and, given the vectors' own randomness, by reproducing
them byte for byte.
"""

from __future__ import annotations

import hashlib
import io
import os
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kettle.crypto import protected_file
from kettle.crypto.protected_file import ProtectedFileError, ProtectedFileReader, ProtectedFileWriter

VECTORS = Path("/work/shared/vectors/teaclave-file-128")
K = bytes(range(16))
ZERO = bytes(16)

# file, layout, key, cmac, plaintext file (README.md of the vectors)
CASES = [
    ("psi0.txt.enc", "v2", ZERO, "92f686d4ac2ba6b4ffd93bc7ac5dbf58", "psi0.txt"),
    ("gen_empty.bin.enc", "v2", K, "c356d0635f1f9fa2508e0a4036a31b70", "gen_empty.bin"),
    ("gen_3072.bin.enc", "v2", K, "eac29161934560f5cca86e5ef1fb2bd4", "gen_3072.bin"),
    ("gen_3073.bin.enc", "v2", K, "296d72e09cc38bcc03738e1991cc08f7", "gen_3073.bin"),
    ("gen_200k.bin.enc", "v2", K, "ab4a12a67b8d2344a31664370d749137", "gen_200k.bin"),
    ("gen_mht1.bin.enc", "v2", K, "9f6f15432045c14bdd723f4320427530", "gen_mht1.bin"),
    ("legacy_gen_psi0.txt.enc", "legacy", ZERO, "318add31b96cc00a30fd8306ea1d327a", "psi0.txt"),
    ("legacy_gen_200k.bin.enc", "legacy", K, "facd59d889ab3b059ea1c5ffab1e04e7", "gen_200k.bin"),
]
V2_CASES = [case for case in CASES if case[1] == "v2"]
MHT1 = "gen_mht1.bin.enc"  # nodes: 0 metadata, 1 root MHT, 2 data #0, 98 MHT #1, 99 data #96


def vector(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


def disk_size(size: int) -> int:
    """Host file length 4096·(1 + D + M) from spec §2."""
    data_nodes = 0 if size <= 3072 else -(-(size - 3072) // 4096)
    return 4096 * (1 + data_nodes + -(-data_nodes // 96))


def encrypt(
    plaintext: bytes, key: bytes = K, name: str = "out.enc", chunk: int = 65536
) -> tuple[bytes, bytes]:
    sink = io.BytesIO()
    writer = ProtectedFileWriter(sink, key, name)
    for start in range(0, len(plaintext), chunk):
        writer.write(plaintext[start : start + chunk])
    mac = writer.close()
    return sink.getvalue(), mac


def open_bytes(data: bytes, key: bytes = K, name: str | None = "out.enc") -> ProtectedFileReader:
    return ProtectedFileReader(io.BytesIO(data), key, name)


def flipped(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


def counter_stream(size: int) -> Iterator[bytes]:
    """Deterministic, incompressible plaintext in 64 KiB chunks, without holding it all."""
    block = 0
    while size > 0:
        chunk = b"".join(hashlib.sha256(f"{block}:{i}".encode()).digest() for i in range(2048))[:size]
        block += 1
        size -= len(chunk)
        yield chunk


# --- reading the vectors ---------------------------------------------------


@pytest.mark.parametrize(("name", "layout", "key", "cmac", "plain"), CASES, ids=[c[0] for c in CASES])
def test_vector_decrypts_with_its_cmac(name: str, layout: str, key: bytes, cmac: str, plain: str) -> None:
    expected = vector(plain)
    with open(VECTORS / name, "rb") as source:
        reader = ProtectedFileReader(source, key, name)
        assert reader.layout.label == layout
        assert reader.root_mac.hex() == cmac
        assert reader.size == len(expected)
        assert reader.name == name
        assert reader.read() == expected
        assert reader.read() == b""


def test_read_in_odd_pieces_and_iterate() -> None:
    expected = vector("gen_mht1.bin")
    reader = open_bytes(vector(MHT1), name=MHT1)
    pieces = [reader.read(1), reader.read(5000)]
    chunks = list(reader)
    assert all(len(chunk) <= 4096 for chunk in chunks)
    assert b"".join(pieces + chunks) == expected


def test_name_check_can_be_skipped_explicitly() -> None:
    reader = open_bytes(vector("psi0.txt.enc"), key=ZERO, name=None)
    assert reader.name == "psi0.txt.enc"
    assert reader.read() == vector("psi0.txt")


def test_extra_trailing_nodes_are_ignored() -> None:
    """The SDK accepts them (spec §11.1 step 9)."""
    reader = open_bytes(vector("gen_3073.bin.enc") + bytes(4096), name="gen_3073.bin.enc")
    assert reader.read() == vector("gen_3073.bin")


# --- refusals --------------------------------------------------------------


@pytest.mark.parametrize("name", ["psi0.txt.enc", "legacy_gen_200k.bin.enc", MHT1])
def test_wrong_key(name: str) -> None:
    with pytest.raises(ProtectedFileError, match="^wrong key or corrupted metadata$"):
        open_bytes(vector(name), key=bytes(15) + b"\x07", name=name)


@pytest.mark.parametrize("name", ["psi0.txt.enc", "legacy_gen_psi0.txt.enc"])
def test_wrong_name(name: str) -> None:
    key = ZERO
    with pytest.raises(ProtectedFileError, match=f"wrong file name: the file was created as '{name}'"):
        open_bytes(vector(name), key=key, name="renamed.enc")


@pytest.mark.parametrize(
    ("offset", "message"),
    [
        (20, "wrong key or corrupted metadata"),  # key_id (KDF nonce)
        (85, "wrong key or corrupted metadata"),  # meta_gmac (root MAC)
        (96, "wrong key or corrupted metadata"),  # encrypted file name
        (400, "wrong key or corrupted metadata"),  # encrypted inline data
        (4096 + 7, r"corrupted MHT node #0 \(physical node 1\)"),
    ],
)
def test_flipped_byte_refused_on_open(offset: int, message: str) -> None:
    with pytest.raises(ProtectedFileError, match=message):
        open_bytes(flipped(vector(MHT1), offset), name=MHT1)


@pytest.mark.parametrize(
    ("offset", "message"),
    [
        (2 * 4096 + 100, r"corrupted data node #0 \(physical node 2\)"),
        (98 * 4096 + 3100, r"corrupted MHT node #1 \(physical node 98\)"),
        (99 * 4096 + 4095, r"corrupted data node #96 \(physical node 99\)"),
    ],
)
def test_flipped_byte_refused_when_reached(offset: int, message: str) -> None:
    reader = open_bytes(flipped(vector(MHT1), offset), name=MHT1)
    with pytest.raises(ProtectedFileError, match=message):
        reader.read()


def test_flipped_byte_in_legacy_data_node() -> None:
    name = "legacy_gen_200k.bin.enc"
    reader = open_bytes(flipped(vector(name), 10 * 4096), name=name)
    with pytest.raises(ProtectedFileError, match=r"corrupted data node #8 \(physical node 10\)"):
        reader.read()


@pytest.mark.parametrize("length", [0, 100, 4095, 3 * 4096 + 5])
def test_length_not_a_node_multiple(length: int) -> None:
    with pytest.raises(ProtectedFileError, match="^truncated or malformed file: length"):
        open_bytes(vector(MHT1)[:length], name=MHT1)


def test_truncated_at_a_node_boundary() -> None:
    with pytest.raises(
        ProtectedFileError, match="^truncated file: size 396289 needs 409600 bytes on disk, found 204800"
    ):
        open_bytes(vector(MHT1)[: 50 * 4096], name=MHT1)


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [
        (0, 0x46, r"not an SGX protected file \(bad file id\)"),
        (8, 2, "unsupported major version 2"),
        (10, 0, "unsupported encryption mode flag 0"),
        (10, 2, "unsupported encryption mode flag 2"),
        (11, 1, "interrupted update: the file needs SGX recovery"),
    ],
)
def test_bad_header(offset: int, value: int, message: str) -> None:
    data = bytearray(vector("psi0.txt.enc"))
    data[offset] = value
    with pytest.raises(ProtectedFileError, match=message):
        open_bytes(bytes(data), key=ZERO, name="psi0.txt.enc")


def test_protected_file_error_is_a_value_error() -> None:
    assert issubclass(ProtectedFileError, ValueError)


# --- writing ---------------------------------------------------------------


@pytest.mark.parametrize(
    "size",
    [0, 1, 3072, 3073, 3072 + 4096, 3072 + 96 * 4096, 4096 * 96 + 3072 + 1, 2 * 1024 * 1024 + 5],
)
def test_writer_round_trip(size: int) -> None:
    plaintext = b"".join(counter_stream(size))
    data, mac = encrypt(plaintext, chunk=1000)
    assert len(data) == disk_size(size)
    reader = open_bytes(data)
    assert (reader.layout.label, reader.root_mac, reader.size) == ("v2", mac, size)
    assert reader.read() == plaintext


def test_writer_byte_writes() -> None:
    plaintext = bytes(range(256)) * 13
    sink = io.BytesIO()
    writer = ProtectedFileWriter(sink, K, "bytes.enc")
    for byte in plaintext:
        assert writer.write(bytes([byte])) == 1
    mac = writer.close()
    assert writer.close() == mac == writer.root_mac
    assert open_bytes(sink.getvalue(), name="bytes.enc").read() == plaintext


def test_writer_v2_header_fields() -> None:
    data, mac = encrypt(b"hello")
    assert data[:16] == bytes.fromhex("454c49465f5847530100010000000000")
    assert data[48:80] == bytes(32)
    assert data[80:96] == mac
    assert data[3468:] == bytes(4096 - 3468)


@pytest.mark.parametrize(("name", "layout", "key", "cmac", "plain"), V2_CASES, ids=[c[0] for c in V2_CASES])
def test_writer_output_for_vector_plaintexts(
    name: str, layout: str, key: bytes, cmac: str, plain: str
) -> None:
    plaintext = vector(plain)
    first, first_mac = encrypt(plaintext, key, name)
    second, second_mac = encrypt(plaintext, key, name)
    assert len(first) == len(vector(name))
    reader = open_bytes(first, key, name)
    assert reader.root_mac == first_mac
    assert reader.read() == plaintext
    # Fresh key_id and node keys on every write (spec §9): never the same bytes twice.
    assert first_mac != second_mac and first_mac.hex() != cmac and first != second


def vector_randomness(data: bytes, key: bytes) -> list[bytes]:
    """The vector's node keys and key_id in the order the writer draws them.

    The vectors have at most two MHT nodes, both on one root path, so the writer
    draws one key per data node in order, then MHT keys from the last to the
    root, then the metadata key_id.
    """
    reader = ProtectedFileReader(io.BytesIO(data), key, None)
    metadata_key = protected_file._kdf(key, b"SGX-PROTECTED-FS-METADATA-KEY", 0, data[16:48])
    metadata = AESGCM(metadata_key).decrypt(bytes(12), data[96:3468] + data[80:96], None)
    data_nodes = 0 if reader.size <= 3072 else -(-(reader.size - 3072) // 4096)
    mht_entries = [metadata[268:300]]
    if data_nodes > 96:
        root = AESGCM(mht_entries[0][:16]).decrypt(bytes(12), data[4096:8192] + mht_entries[0][16:], None)
        mht_entries.append(root[3072:3104])
    mhts = []
    for m, entry in enumerate(mht_entries[: -(-data_nodes // 96)]):
        start = (1 + 97 * m) * 4096
        mhts.append(AESGCM(entry[:16]).decrypt(bytes(12), data[start : start + 4096] + entry[16:], None))
    data_keys = [mhts[d // 96][32 * (d % 96) : 32 * (d % 96) + 16] for d in range(data_nodes)]
    mht_keys = [entry[:16] for entry in mht_entries[: len(mhts)]]
    return data_keys + mht_keys[::-1] + [data[16:48]]


@pytest.mark.parametrize(("name", "layout", "key", "cmac", "plain"), V2_CASES, ids=[c[0] for c in V2_CASES])
def test_writer_reproduces_vectors_with_their_randomness(
    name: str, layout: str, key: bytes, cmac: str, plain: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spec §12: with the same key_id and node keys the encoding is byte-exact."""
    original = vector(name)
    draws = vector_randomness(original, key)

    def urandom(size: int) -> bytes:
        value = draws.pop(0)
        assert len(value) == size
        return value

    monkeypatch.setattr(protected_file, "os", SimpleNamespace(urandom=urandom, SEEK_END=os.SEEK_END))
    data, mac = encrypt(vector(plain), key, name)
    assert draws == []
    assert mac.hex() == cmac
    assert data == original


def test_writer_starts_at_sink_position_and_truncates_leftovers() -> None:
    sink = io.BytesIO(b"PREFIX" + bytes(50_000))
    sink.seek(6)
    with ProtectedFileWriter(sink, K, "x.enc") as writer:
        writer.write(b"a" * 5000)
    assert len(sink.getvalue()) == 6 + disk_size(5000)
    source = io.BytesIO(sink.getvalue())
    source.seek(6)
    assert ProtectedFileReader(source, K, "x.enc").read() == b"a" * 5000


def test_writer_aborted_by_exception_leaves_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "x.enc"
    with (
        pytest.raises(RuntimeError),
        open(path, "w+b") as sink,
        ProtectedFileWriter(sink, K, "x.enc") as writer,
    ):
        writer.write(b"b" * 10_000)
        raise RuntimeError("boom")
    with open(path, "rb") as source, pytest.raises(ProtectedFileError, match="bad file id"):
        ProtectedFileReader(source, K, "x.enc")
    with pytest.raises(ValueError, match="closed"):
        writer.write(b"more")
    with pytest.raises(ValueError, match="only known once the writer is closed"):
        _ = writer.root_mac


@pytest.mark.parametrize("key", [b"", bytes(15), bytes(17), "0" * 16])
def test_key_must_be_16_bytes(key: bytes) -> None:
    with pytest.raises(ValueError, match="key must be exactly 16 bytes"):
        ProtectedFileWriter(io.BytesIO(), key, "x.enc")
    with pytest.raises(ValueError, match="key must be exactly 16 bytes"):
        open_bytes(vector("psi0.txt.enc"), key=key, name="psi0.txt.enc")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "1..258 bytes"),
        ("a" * 259, "1..258 bytes"),
        ("é" * 130, "1..258 bytes"),
        ("dir/x.enc", "base name"),
        ("x\0.enc", "base name"),
    ],
)
def test_name_validation(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        ProtectedFileWriter(io.BytesIO(), K, name)
    assert not isinstance(raised.value, ProtectedFileError)


def test_longest_name_round_trips() -> None:
    name = "n" * 258
    data, _ = encrypt(b"x", name=name)
    assert open_bytes(data, name=name).read() == b"x"


def test_sink_must_be_readable_and_seekable(tmp_path: Path) -> None:
    with (
        open(tmp_path / "w.enc", "wb") as sink,
        pytest.raises(ValueError, match="readable, writable and seekable"),
    ):
        ProtectedFileWriter(sink, K, "w.enc")


# --- bounded memory (also covers the second MHT level: M = 54 > 33) --------------


def test_20mb_write_and_read_keep_memory_bounded(tmp_path: Path) -> None:
    size = 20 * 1024 * 1024
    path = tmp_path / "big.enc"
    digest = hashlib.sha256()
    tracemalloc.start()
    try:
        with open(path, "w+b") as sink:
            writer = ProtectedFileWriter(sink, K, "big.enc")
            for chunk in counter_stream(size):
                digest.update(chunk)
                writer.write(chunk)
            mac = writer.close()
        _, write_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        check = hashlib.sha256()
        with open(path, "rb") as source:
            reader = ProtectedFileReader(source, K, "big.enc")
            while chunk := reader.read(65536):
                check.update(chunk)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert path.stat().st_size == disk_size(size)
    assert reader.root_mac == mac
    assert check.digest() == digest.digest()
    assert write_peak < 1024 * 1024, write_peak
    assert read_peak < 1024 * 1024, read_peak
