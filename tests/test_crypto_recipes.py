"""The data owner's recipes (``kettle.crypto.recipes``) and their SDK face, for every schema.

The primitives are tested in ``test_protected_file.py`` and ``test_file_crypto.py``;
here the point is what an owner relies on: the cmac returned is the one the
platform will check, a file only appears once it is complete and verified,
nothing (no temporary, no scratch) is left behind by a refusal, and existing
files are never replaced by accident.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import shutil
import stat
import tracemalloc
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kettle.crypto import recipes
from kettle.crypto.protected_file import ProtectedFileReader
from kettle.crypto.recipes import RAW_CMAC, FileKey, cmac, decrypt, encrypt
from kettle.crypto.schemas import (
    AES_GCM_128,
    AES_GCM_256,
    RAW,
    SCHEMAS,
    TEACLAVE_FILE_128,
    FileCryptoError,
)

KIB = 1024
MIB = 1024 * KIB
VECTORS = Path("/work/shared/vectors/teaclave-file-128")
K = bytes(range(16))
ZERO = bytes(16)
ENCRYPTED = (AES_GCM_128, AES_GCM_256, TEACLAVE_FILE_128)

# file, key, cmac (README.md of the vectors), plaintext file
VECTOR_CASES = [
    ("psi0.txt.enc", ZERO, "92f686d4ac2ba6b4ffd93bc7ac5dbf58", "psi0.txt"),
    ("gen_empty.bin.enc", K, "c356d0635f1f9fa2508e0a4036a31b70", "gen_empty.bin"),
    ("gen_3072.bin.enc", K, "eac29161934560f5cca86e5ef1fb2bd4", "gen_3072.bin"),
    ("gen_3073.bin.enc", K, "296d72e09cc38bcc03738e1991cc08f7", "gen_3073.bin"),
    ("gen_200k.bin.enc", K, "ab4a12a67b8d2344a31664370d749137", "gen_200k.bin"),
    ("gen_mht1.bin.enc", K, "9f6f15432045c14bdd723f4320427530", "gen_mht1.bin"),
    ("legacy_gen_psi0.txt.enc", ZERO, "318add31b96cc00a30fd8306ea1d327a", "psi0.txt"),
    ("legacy_gen_200k.bin.enc", K, "facd59d889ab3b059ea1c5ffab1e04e7", "gen_200k.bin"),
]


def disk_size(size: int) -> int:
    """teaclave-file-128 host file length 4096·(1 + D + M) (spec §2)."""
    data_nodes = 0 if size <= 3072 else -(-(size - 3072) // 4096)
    return 4096 * (1 + data_nodes + -(-data_nodes // 96))


def flipped(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def names(folder: Path) -> set[str]:
    return {entry.name for entry in folder.iterdir()}


@pytest.fixture
def plain(tmp_path: Path) -> Path:
    path = tmp_path / "data.bin"
    path.write_bytes(os.urandom(200 * KIB + 123))
    return path


def encrypted(plain: Path, schema: str, dst_name: str = "data.enc") -> tuple[Path, FileKey, bytes]:
    key = FileKey.generate(schema)
    dst = plain.with_name(dst_name)
    return dst, key, encrypt(plain, dst, key)


# --- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 3072, 3073, 200 * KIB, 5 * MIB])
@pytest.mark.parametrize("schema", SCHEMAS)
def test_round_trip(tmp_path: Path, schema: str, size: int) -> None:
    data = os.urandom(size)
    (tmp_path / "data.bin").write_bytes(data)
    key = FileKey.generate(schema)
    tag = encrypt(tmp_path / "data.bin", tmp_path / "data.enc", key)
    ciphertext = (tmp_path / "data.enc").read_bytes()
    if schema in (AES_GCM_128, AES_GCM_256):
        # The layout the platform expects (§5.1): one-shot AES-GCM, AAD = 8 zero bytes, tag last.
        assert ciphertext == AESGCM(key.key).encrypt(key.iv, data, bytes(8))
        assert tag == ciphertext[-16:]
    elif schema == TEACLAVE_FILE_128:
        assert len(ciphertext) == disk_size(size)
        reader = ProtectedFileReader(io.BytesIO(ciphertext), key.key, "data.enc")  # bound to dst's name
        assert reader.root_mac == tag and reader.size == size
    else:
        assert ciphertext == data and tag == RAW_CMAC

    assert cmac(tmp_path / "data.enc", key) == tag
    expected = None if schema == RAW else tag
    assert decrypt(tmp_path / "data.enc", tmp_path / "out.bin", key, cmac=expected) == tag
    assert (tmp_path / "out.bin").read_bytes() == data
    assert names(tmp_path) == {"data.bin", "data.enc", "out.bin"}  # no temporary or scratch left
    assert stat.S_IMODE((tmp_path / "out.bin").stat().st_mode) == 0o600


@pytest.mark.parametrize("schema", [AES_GCM_256, TEACLAVE_FILE_128])
def test_64_mib_in_constant_memory(tmp_path: Path, schema: str) -> None:
    size = 64 * MIB
    source = tmp_path / "big.bin"
    digest = hashlib.sha256()
    with source.open("wb") as sink:
        for i in range(size // MIB):
            block = hashlib.sha256(str(i).encode()).digest() * (MIB // 32)
            digest.update(block)
            sink.write(block)
    key = FileKey.generate(schema)
    tracemalloc.start()
    try:
        tag = encrypt(source, tmp_path / "big.enc", key)
        _, encrypt_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        assert decrypt(tmp_path / "big.enc", tmp_path / "big.out", key, cmac=tag) == tag
        _, decrypt_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    check = hashlib.sha256()
    with (tmp_path / "big.out").open("rb") as result:
        while block := result.read(MIB):
            check.update(block)
    assert check.digest() == digest.digest()
    assert encrypt_peak < 8 * MIB, encrypt_peak
    assert decrypt_peak < 8 * MIB, decrypt_peak
    assert names(tmp_path) == {"big.bin", "big.enc", "big.out"}


def test_encrypt_from_a_stream_starts_at_its_position(tmp_path: Path) -> None:
    stream = io.BytesIO(b"header|payload")
    stream.seek(7)
    key = FileKey.generate(TEACLAVE_FILE_128)
    tag = encrypt(stream, tmp_path / "p.enc", key)
    assert not stream.closed  # the caller's stream is lent, not taken
    assert decrypt(tmp_path / "p.enc", tmp_path / "p", key, cmac=tag) == tag
    assert (tmp_path / "p").read_bytes() == b"payload"


# --- the shared vectors, at the recipe level ------------------------------------------------


@pytest.mark.parametrize(("name", "key", "tag", "plaintext"), VECTOR_CASES)
def test_vectors_decrypt_with_their_published_cmac(tmp_path: Path, name: str, key: bytes, tag: str, plaintext: str) -> None:
    file_key = FileKey(TEACLAVE_FILE_128, key)
    assert cmac(VECTORS / name, file_key) == bytes.fromhex(tag)
    assert decrypt(VECTORS / name, tmp_path / "plain", file_key, cmac=bytes.fromhex(tag)) == bytes.fromhex(tag)
    assert (tmp_path / "plain").read_bytes() == (VECTORS / plaintext).read_bytes()


def test_renamed_vector_is_refused_unless_its_name_is_given(tmp_path: Path) -> None:
    renamed = tmp_path / "download.enc"
    shutil.copyfile(VECTORS / "gen_3073.bin.enc", renamed)
    key = FileKey(TEACLAVE_FILE_128, K)
    with pytest.raises(FileCryptoError, match="wrong file name: the file was created as 'gen_3073.bin.enc'"):
        decrypt(renamed, tmp_path / "plain", key)
    with pytest.raises(FileCryptoError, match="wrong file name"):
        cmac(renamed, key)
    assert names(tmp_path) == {"download.enc"}
    decrypt(renamed, tmp_path / "plain", key, name="gen_3073.bin.enc")
    assert (tmp_path / "plain").read_bytes() == (VECTORS / "gen_3073.bin").read_bytes()


def test_teaclave_name_is_the_url_segment_not_the_local_name(plain: Path) -> None:
    local, key, tag = encrypted(plain, TEACLAVE_FILE_128, "local-copy.enc")
    # Encrypted for upload to .../train.enc: the platform opens it as "train.enc".
    bound = plain.with_name("bound.enc")
    key2 = FileKey.generate(TEACLAVE_FILE_128)
    tag2 = encrypt(plain, bound, key2, name="train.enc")
    with pytest.raises(FileCryptoError, match="created as 'train.enc', expected 'bound.enc'"):
        decrypt(bound, plain.with_name("out"), key2)
    assert cmac(bound, key2, name="train.enc") == tag2
    assert cmac(local, key) == tag


# --- refusals leave nothing behind ---------------------------------------------------------------


@pytest.mark.parametrize("schema", ENCRYPTED)
def test_wrong_key(plain: Path, schema: str) -> None:
    enc, _, _ = encrypted(plain, schema)
    other = FileKey.generate(schema)
    message = "authentication failed: wrong key or iv" if schema != TEACLAVE_FILE_128 else "wrong key or corrupted metadata"
    with pytest.raises(FileCryptoError, match=message):
        decrypt(enc, plain.with_name("out"), other)
    with pytest.raises(FileCryptoError, match=message):
        cmac(enc, other)
    assert names(plain.parent) == {"data.bin", "data.enc"}


def test_wrong_iv(plain: Path) -> None:
    enc, key, _ = encrypted(plain, AES_GCM_128)
    with pytest.raises(FileCryptoError, match="authentication failed"):
        decrypt(enc, plain.with_name("out"), FileKey(AES_GCM_128, key.key, os.urandom(12)))
    assert names(plain.parent) == {"data.bin", "data.enc"}


@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("schema", ENCRYPTED)
def test_flipped_bit(plain: Path, schema: str, where: str) -> None:
    enc, key, tag = encrypted(plain, schema)
    size = enc.stat().st_size
    flipped(enc, {"first": 0, "middle": size // 2, "last": size - 1}[where])
    with pytest.raises(FileCryptoError, match=f"^{re.escape(str(enc))}: "):
        decrypt(enc, plain.with_name("out"), key)
    with pytest.raises(FileCryptoError, match=f"^{re.escape(str(enc))}: "):
        decrypt(enc, plain.with_name("out"), key, cmac=tag)  # the cmac the owner was given
    with pytest.raises(FileCryptoError):
        cmac(enc, key)
    assert names(plain.parent) == {"data.bin", "data.enc"}


def test_corruption_found_late_removes_the_partial_plaintext(plain: Path) -> None:
    """A protected file is streamed node by node; a bad last node must not leave the good prefix."""
    enc, key, tag = encrypted(plain, TEACLAVE_FILE_128)
    flipped(enc, enc.stat().st_size - 100)  # inside the last data node
    with pytest.raises(FileCryptoError, match="corrupted data node"):
        decrypt(enc, plain.with_name("out"), key, cmac=tag)  # the root MAC still matches
    assert names(plain.parent) == {"data.bin", "data.enc"}


@pytest.mark.parametrize(
    ("schema", "end", "message"),
    [
        (AES_GCM_128, -1, "authentication failed"),
        (AES_GCM_256, -16, "authentication failed"),
        (AES_GCM_128, 10, "not an aes-gcm-128 file: 10 bytes is shorter than its 16-byte tag"),
        (TEACLAVE_FILE_128, -1, "not a non-zero multiple of 4096"),
        (TEACLAVE_FILE_128, -4096, "truncated file"),
    ],
)
def test_truncated(plain: Path, schema: str, end: int, message: str) -> None:
    enc, key, _ = encrypted(plain, schema)
    enc.write_bytes(enc.read_bytes()[:end])
    with pytest.raises(FileCryptoError, match=message):
        decrypt(enc, plain.with_name("out"), key)
    assert names(plain.parent) == {"data.bin", "data.enc"}


@pytest.mark.parametrize("schema", ENCRYPTED)
def test_wrong_cmac_refused_before_decrypting(plain: Path, schema: str) -> None:
    enc, key, tag = encrypted(plain, schema)
    wrong = bytes([tag[0] ^ 1]) + tag[1:]
    with pytest.raises(FileCryptoError, match=f"cmac mismatch: the file's cmac is {tag.hex()}, expected {wrong.hex()}"):
        decrypt(enc, plain.with_name("out"), key, cmac=wrong)
    with pytest.raises(FileCryptoError, match="Invalid cmac length: 15"):
        decrypt(enc, plain.with_name("out"), key, cmac=tag[:15])
    assert names(plain.parent) == {"data.bin", "data.enc"}


def test_raw_has_no_cmac_to_verify(plain: Path) -> None:
    key = FileKey.generate(RAW)
    assert encrypt(plain, plain.with_name("copy"), key) == RAW_CMAC
    assert cmac(plain.with_name("copy"), key) == RAW_CMAC
    with pytest.raises(FileCryptoError, match="raw files have no integrity protection"):
        decrypt(plain.with_name("copy"), plain.with_name("out"), key, cmac=RAW_CMAC)
    assert not plain.with_name("out").exists()


@pytest.mark.parametrize("schema", [AES_GCM_128, AES_GCM_256, RAW])
def test_name_binding_is_teaclave_only(plain: Path, schema: str) -> None:
    key = FileKey.generate(schema)
    with pytest.raises(FileCryptoError, match=f"only teaclave-file-128 files are bound to a name, not {schema}"):
        encrypt(plain, plain.with_name("x"), key, name="x")
    with pytest.raises(FileCryptoError, match="only teaclave-file-128"):
        cmac(plain, key, name="x")
    assert names(plain.parent) == {"data.bin"}


def test_invalid_teaclave_name_is_refused(plain: Path) -> None:
    with pytest.raises(FileCryptoError, match="file name must be 1..258 bytes"):
        encrypt(plain, plain.with_name("x.enc"), FileKey.generate(TEACLAVE_FILE_128), name="n" * 259)
    assert names(plain.parent) == {"data.bin"}


# --- never replace a file by accident --------------------------------------------------------


@pytest.mark.parametrize("schema", SCHEMAS)
def test_existing_destination_is_kept(plain: Path, schema: str) -> None:
    enc, key, tag = encrypted(plain, schema)
    victim = plain.with_name("victim")
    victim.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="victim exists; refusing to overwrite it"):
        decrypt(enc, victim, key)
    with pytest.raises(FileExistsError):
        encrypt(plain, victim, FileKey.generate(schema))
    assert victim.read_bytes() == b"precious"
    assert decrypt(enc, victim, key, overwrite=True) == tag
    assert victim.read_bytes() == plain.read_bytes()


def test_refused_destination_does_not_use_up_an_aes_gcm_key(plain: Path) -> None:
    plain.with_name("taken").write_bytes(b"")
    key = FileKey.generate(AES_GCM_128)
    with pytest.raises(FileExistsError):
        encrypt(plain, plain.with_name("taken"), key)
    encrypt(plain, plain.with_name("free"), key)  # the key never encrypted anything before


@pytest.mark.parametrize("schema", ENCRYPTED)
def test_failed_overwrite_keeps_the_old_file(plain: Path, schema: str) -> None:
    enc, key, _ = encrypted(plain, schema)
    victim = plain.with_name("victim")
    victim.write_bytes(b"precious")
    flipped(enc, enc.stat().st_size - 1)
    with pytest.raises(FileCryptoError):
        decrypt(enc, victim, key, overwrite=True)
    assert victim.read_bytes() == b"precious"
    assert names(plain.parent) == {"data.bin", "data.enc", "victim"}


def test_symlink_destination_is_not_followed(plain: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = elsewhere / "target"
    target.write_bytes(b"not yours")
    link = tmp_path / "link"
    link.symlink_to(target)
    enc, key, _ = encrypted(plain, TEACLAVE_FILE_128)
    with pytest.raises(FileExistsError):
        decrypt(enc, link, key)
    decrypt(enc, link, key, overwrite=True)  # replaces the link itself
    assert not link.is_symlink() and link.read_bytes() == plain.read_bytes()
    assert target.read_bytes() == b"not yours"


class _Planting(io.RawIOBase):
    """A source that makes a file appear at the destination while it is being read."""

    def __init__(self, data: bytes, plant: Path) -> None:
        self._data = io.BytesIO(data)
        self._plant = plant

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if not self._plant.exists():
            self._plant.write_bytes(b"appeared meanwhile")
        return self._data.readinto(buffer)


@pytest.mark.parametrize("schema", SCHEMAS)
def test_file_appearing_during_encryption_is_not_replaced(tmp_path: Path, schema: str) -> None:
    dst = tmp_path / "out.enc"
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        encrypt(_Planting(b"secret data", dst), dst, FileKey.generate(schema))  # type: ignore[arg-type]
    assert dst.read_bytes() == b"appeared meanwhile"
    assert names(tmp_path) == {"out.enc"}


def test_without_hard_links_publishing_still_refuses_existing(plain: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(*_: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(recipes.os, "link", no_links)
    enc, key, tag = encrypted(plain, TEACLAVE_FILE_128)
    assert decrypt(enc, plain.with_name("out"), key) == tag
    with pytest.raises(FileExistsError):
        key.save(plain.with_name("out"))
    assert plain.with_name("out").read_bytes() == plain.read_bytes()
    assert names(plain.parent) == {"data.bin", "data.enc", "out"}


# --- keys ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "key_length", "iv_length"),
    [(AES_GCM_128, 16, 12), (AES_GCM_256, 32, 12), (TEACLAVE_FILE_128, 16, 0), (RAW, 0, 0)],
)
def test_generate(schema: str, key_length: int, iv_length: int) -> None:
    first, second = FileKey.generate(schema), FileKey.generate(schema)
    assert (first.schema, len(first.key), len(first.iv)) == (schema, key_length, iv_length)
    if key_length:
        assert first.key != second.key


def test_generate_unknown_schema() -> None:
    with pytest.raises(FileCryptoError, match="Invalid crypto schema: aes-gcm"):
        FileKey.generate("aes-gcm")


@pytest.mark.parametrize(
    ("schema", "key", "iv", "message"),
    [
        (AES_GCM_128, bytes(15), bytes(12), "Invalid key length for AesGcm128: 15"),
        (AES_GCM_256, bytes(16), bytes(12), "Invalid key length for AesGcm256: 16"),
        (AES_GCM_128, bytes(16), b"", "Invalid iv length for AesGcm128: 0"),
        (TEACLAVE_FILE_128, bytes(16), bytes(12), "IV is not empty for teaclave_file_128"),
        (TEACLAVE_FILE_128, bytes(32), b"", "Invalid key length for TeaclaveFile128: 32"),
        ("AES-GCM-128", bytes(16), bytes(12), "Invalid crypto schema: AES-GCM-128"),
    ],
)
def test_key_validation(schema: str, key: bytes, iv: bytes, message: str) -> None:
    with pytest.raises(FileCryptoError, match=message):
        FileKey(schema, key, iv)


def test_hex_text_is_not_a_key() -> None:
    with pytest.raises(FileCryptoError, match="key must be bytes, not str"):
        FileKey(TEACLAVE_FILE_128, "00" * 16)  # type: ignore[arg-type]
    assert FileKey.from_hex(TEACLAVE_FILE_128, "00" * 16).key == ZERO
    with pytest.raises(FileCryptoError, match="iv is not hex text"):
        FileKey.from_hex(AES_GCM_128, "00" * 16, "zz")


def test_repr_hides_the_key() -> None:
    key = FileKey.generate(AES_GCM_256)
    assert key.key.hex() not in repr(key) and key.key.hex() not in str(key)
    assert "<32 secret bytes>" in repr(key) and key.iv.hex() in repr(key)


@pytest.mark.parametrize("schema", SCHEMAS)
def test_json_round_trip(schema: str) -> None:
    key = FileKey.generate(schema)
    assert FileKey.from_json(key.to_json()) == key


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not JSON"),
        ("[]", "expected a JSON object"),
        ('{"schema": "raw", "key_hex": ""}', "unknown field"),
        ('{"schema": "teaclave-file-128", "key": 16}', "key must be a string"),
        ('{"key": "00"}', "no schema"),
        ('{"schema": "teaclave-file-128", "key": "0g"}', "key is not hex text"),
        ('{"schema": "teaclave-file-128", "key": "00"}', "Invalid key length for TeaclaveFile128: 1"),
    ],
)
def test_bad_key_json(text: str, message: str) -> None:
    with pytest.raises(FileCryptoError, match=message):
        FileKey.from_json(text)


def test_key_file_is_private_and_never_silently_replaced(tmp_path: Path) -> None:
    path = tmp_path / "key.json"
    key = FileKey.generate(AES_GCM_128)
    key.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert FileKey.load(path) == key
    with pytest.raises(FileExistsError):
        FileKey.generate(AES_GCM_128).save(path)
    assert FileKey.load(path) == key
    replacement = FileKey.generate(TEACLAVE_FILE_128)
    replacement.save(str(path), overwrite=True)
    assert FileKey.load(path) == replacement
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert names(tmp_path) == {"key.json"}
    path.write_text("{}")
    with pytest.raises(FileCryptoError, match=f"^{re.escape(str(path))}: not a key file: no schema"):
        FileKey.load(path)
    path.write_bytes(b"\xee\x00")
    with pytest.raises(FileCryptoError, match="not a key file: not JSON"):
        FileKey.load(path)
    path.write_bytes(b" " * 5000)  # e.g. a data file given as --key by mistake: not read whole
    with pytest.raises(FileCryptoError, match="not a key file: too large"):
        FileKey.load(path)


def test_aes_gcm_key_encrypts_one_file_only(plain: Path) -> None:
    key = FileKey.generate(AES_GCM_128)
    encrypt(plain, plain.with_name("a.enc"), key)
    same = FileKey(AES_GCM_128, key.key, key.iv)  # an equal key object is the same key
    with pytest.raises(FileCryptoError, match="already encrypted a file: generate a new key for every file"):
        encrypt(plain, plain.with_name("b.enc"), same)
    assert not plain.with_name("b.enc").exists()
    encrypt(plain, plain.with_name("c.enc"), FileKey(AES_GCM_128, key.key, os.urandom(12)))  # new iv: fine


def test_teaclave_key_may_encrypt_many_files(plain: Path) -> None:
    key = FileKey.generate(TEACLAVE_FILE_128)
    first = encrypt(plain, plain.with_name("a.enc"), key)
    second = encrypt(plain, plain.with_name("b.enc"), key)
    assert first != second  # fresh internal keys per file (spec §9)


# --- the SDK's face ------------------------------------------------------------------------------------


def test_sdk_helpers_take_str_paths(tmp_path: Path) -> None:
    from kettle import sdk

    source = tmp_path / "in.csv"
    source.write_bytes(b"a,b\n1,2\n")
    key = sdk.FileKey.generate("aes-gcm-256")
    tag = sdk.encrypt_file(str(source), str(tmp_path / "in.enc"), key)
    assert sdk.file_cmac(str(tmp_path / "in.enc"), key) == tag
    assert sdk.decrypt_file(str(tmp_path / "in.enc"), tmp_path / "out.csv", key, cmac=tag) == tag
    assert (tmp_path / "out.csv").read_bytes() == b"a,b\n1,2\n"
    with pytest.raises(sdk.FileCryptoError):
        sdk.decrypt_file(str(tmp_path / "in.enc"), str(tmp_path / "again.csv"), key, cmac=sdk.RAW_CMAC)
