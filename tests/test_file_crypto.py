"""File crypto schemas (platform.md §5.1) and the streaming AES-GCM schema with encrypted staging."""

from __future__ import annotations

import io
import os
import threading
import tracemalloc
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kettle.crypto.aes_gcm import (
    SCRATCH_RECORD as SCRATCH_RECORD_PLAINTEXT,
)
from kettle.crypto.aes_gcm import (
    StagedPlaintext,
    StagingDecryptor,
    cmac_of_file,
    decrypt_to_staging,
    encrypt_file,
)
from kettle.crypto.schemas import (
    AES_GCM_128,
    AES_GCM_256,
    RAW,
    TEACLAVE_FILE_128,
    FileCryptoError,
    check_cmac,
    check_output_schema,
    missing_output_error,
    validate_crypto_info,
)

MIB = 1 << 20
IV = bytes(range(12))
KEYS = {AES_GCM_128: bytes(range(16)), AES_GCM_256: bytes(range(32))}
LABEL = {AES_GCM_128: "AesGcm128", AES_GCM_256: "AesGcm256"}
SCRATCH_RECORD = SCRATCH_RECORD_PLAINTEXT + 16


@pytest.fixture
def staging(tmp_path: Path) -> Path:
    path = tmp_path / "staging"
    path.mkdir()
    return path


def _encrypted(
    tmp_path: Path, plaintext: bytes, key: bytes, iv: bytes = IV
) -> tuple[Path, bytes]:
    path = tmp_path / "input.enc"
    with path.open("wb") as sink:
        cmac = encrypt_file(io.BytesIO(plaintext), sink, key, iv)
    return path, cmac


def _read_all(staged: StagedPlaintext) -> bytes:
    with staged.open() as reader:
        return reader.read()


# --- schema validation -----------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "key_len", "iv_len", "error"),
    [
        (AES_GCM_128, 16, 12, None),
        (AES_GCM_128, 15, 12, "Invalid key length for AesGcm128: 15"),
        (AES_GCM_128, 32, 12, "Invalid key length for AesGcm128: 32"),
        (AES_GCM_128, 16, 0, "Invalid iv length for AesGcm128: 0"),
        (AES_GCM_128, 16, 16, "Invalid iv length for AesGcm128: 16"),
        (AES_GCM_256, 32, 12, None),
        (AES_GCM_256, 16, 12, "Invalid key length for AesGcm256: 16"),
        (AES_GCM_256, 32, 11, "Invalid iv length for AesGcm256: 11"),
        (TEACLAVE_FILE_128, 16, 0, None),
        (TEACLAVE_FILE_128, 16, 12, "IV is not empty for teaclave_file_128"),
        (TEACLAVE_FILE_128, 32, 0, "Invalid key length for TeaclaveFile128: 32"),
        (TEACLAVE_FILE_128, 0, 0, "Invalid key length for TeaclaveFile128: 0"),
        (RAW, 0, 0, None),
        (RAW, 7, 5, None),
    ],
)
def test_validate_crypto_info(
    schema: str, key_len: int, iv_len: int, error: str | None
) -> None:
    if error is None:
        validate_crypto_info(schema, bytes(key_len), bytes(iv_len))
    else:
        with pytest.raises(FileCryptoError) as info:
            validate_crypto_info(schema, bytes(key_len), bytes(iv_len))
        assert str(info.value) == error


@pytest.mark.parametrize(
    "schema", ["aes-gcm-512", "AES-GCM-128", "", "teaclave_file_128"]
)
def test_unknown_schema(schema: str) -> None:
    with pytest.raises(FileCryptoError) as info:
        validate_crypto_info(schema, bytes(16), bytes(12))
    assert str(info.value) == f"Invalid crypto schema: {schema}"


def test_cmac_must_be_16_bytes() -> None:
    assert check_cmac(bytes(16)) == bytes(16)
    for length in (0, 15, 17, 32):
        with pytest.raises(FileCryptoError, match=f"Invalid cmac length: {length}"):
            check_cmac(bytes(length))


def test_output_schema_texts() -> None:
    for schema in (AES_GCM_128, AES_GCM_256, TEACLAVE_FILE_128):
        check_output_schema(schema)
    with pytest.raises(FileCryptoError, match="^OutputFile: unsupported type$"):
        check_output_schema(RAW)
    assert (
        str(missing_output_error(AES_GCM_128))
        == "Convert aes-gcm-128: failed to open src file"
    )
    assert (
        str(missing_output_error(AES_GCM_256))
        == "Convert aes-gcm-256: failed to open src file"
    )
    assert (
        str(missing_output_error(TEACLAVE_FILE_128))
        == "Convert teaclave_file: failed to open src file"
    )


def test_file_crypto_error_is_a_value_error() -> None:
    assert issubclass(FileCryptoError, ValueError)


# --- AES-GCM round trips and interoperability ---------------------------------------


@pytest.mark.parametrize("schema", [AES_GCM_128, AES_GCM_256])
@pytest.mark.parametrize("size", [0, 1, MIB - 1, MIB, MIB + 1, 5 * MIB])
def test_round_trip(tmp_path: Path, staging: Path, schema: str, size: int) -> None:
    key = KEYS[schema]
    plaintext = os.urandom(size)
    path, cmac = _encrypted(tmp_path, plaintext, key)
    assert path.stat().st_size == size + 16
    assert path.read_bytes()[-16:] == cmac
    with path.open("rb") as source:
        staged = decrypt_to_staging(source, key, IV, cmac, staging)
    with staged:
        assert _read_all(staged) == plaintext
        assert _read_all(staged) == plaintext  # every open() starts at byte 0
    assert list(staging.iterdir()) == []
    # The helper threads that write and read ahead end with their writer and readers.
    assert [t.name for t in threading.enumerate() if t.name.startswith("scratch-")] == []


@pytest.mark.parametrize("schema", [AES_GCM_128, AES_GCM_256])
@pytest.mark.parametrize("size", [0, 1, 100_000])
def test_interoperates_with_one_shot_aesgcm(
    tmp_path: Path, staging: Path, schema: str, size: int
) -> None:
    key = KEYS[schema]
    plaintext = os.urandom(size)
    reference = AESGCM(key).encrypt(IV, plaintext, bytes(8))
    sink = io.BytesIO()
    assert (
        encrypt_file(io.BytesIO(plaintext), sink, key, IV, chunk_size=4096)
        == reference[-16:]
    )
    assert sink.getvalue() == reference
    with decrypt_to_staging(
        io.BytesIO(reference), key, IV, reference[-16:], staging
    ) as staged:
        assert _read_all(staged) == plaintext


def test_small_reads_cross_scratch_records(tmp_path: Path, staging: Path) -> None:
    plaintext = os.urandom(3 * SCRATCH_RECORD_PLAINTEXT + 123)
    path, cmac = _encrypted(tmp_path, plaintext, KEYS[AES_GCM_128])
    with (
        path.open("rb") as source,
        decrypt_to_staging(source, KEYS[AES_GCM_128], IV, cmac, staging) as staged,
        staged.open() as reader,
    ):
        pieces = []
        while piece := reader.read(1000):
            pieces.append(piece)
    assert b"".join(pieces) == plaintext


def test_cmac_of_file(tmp_path: Path) -> None:
    path, cmac = _encrypted(tmp_path, b"hello", KEYS[AES_GCM_256])
    with path.open("rb") as source:
        assert cmac_of_file(source, KEYS[AES_GCM_256], IV) == cmac
    with (
        path.open("rb") as source,
        pytest.raises(FileCryptoError, match="^AesGcm256 File, invalid tag: "),
    ):
        cmac_of_file(source, bytes(32), IV)


def test_encrypt_rejects_bad_key_and_iv() -> None:
    with pytest.raises(FileCryptoError, match="Invalid key length for AesGcm128: 17"):
        encrypt_file(io.BytesIO(b""), io.BytesIO(), bytes(17), IV)
    with pytest.raises(FileCryptoError, match="Invalid iv length for AesGcm256: 16"):
        encrypt_file(io.BytesIO(b""), io.BytesIO(), bytes(32), bytes(16))


# --- failures: specific error, nothing left in staging -------------------------------


@pytest.mark.parametrize("schema", [AES_GCM_128, AES_GCM_256])
def test_wrong_key(tmp_path: Path, staging: Path, schema: str) -> None:
    path, cmac = _encrypted(tmp_path, os.urandom(200_000), KEYS[schema])
    wrong = bytes(len(KEYS[schema]))
    with path.open("rb") as source, pytest.raises(FileCryptoError) as info:
        decrypt_to_staging(source, wrong, IV, cmac, staging)
    assert str(info.value) == f"{LABEL[schema]} File, invalid tag: {path}"
    assert list(staging.iterdir()) == []


def test_wrong_iv(tmp_path: Path, staging: Path) -> None:
    path, cmac = _encrypted(tmp_path, b"data", KEYS[AES_GCM_128])
    with (
        path.open("rb") as source,
        pytest.raises(FileCryptoError, match="^AesGcm128 File, invalid tag: "),
    ):
        decrypt_to_staging(source, KEYS[AES_GCM_128], bytes(12), cmac, staging)
    assert list(staging.iterdir()) == []


@pytest.mark.parametrize("schema", [AES_GCM_128, AES_GCM_256])
def test_wrong_cmac_is_rejected_before_staging(
    tmp_path: Path, staging: Path, schema: str
) -> None:
    path, cmac = _encrypted(tmp_path, b"data", KEYS[schema])
    for registered in (bytes(16), cmac[:-1] + bytes([cmac[-1] ^ 1]), cmac[:15]):
        with path.open("rb") as source, pytest.raises(FileCryptoError) as info:
            decrypt_to_staging(
                source, KEYS[schema], IV, registered, staging, display_path="s3://b/in"
            )
        assert str(info.value) == f"{LABEL[schema]} File, invalid tag: s3://b/in"
    assert list(staging.iterdir()) == []


@pytest.mark.parametrize("position", [0, 70_000, 199_999, 200_000, 200_015])
def test_tampered_byte(tmp_path: Path, staging: Path, position: int) -> None:
    path, cmac = _encrypted(tmp_path, os.urandom(200_000), KEYS[AES_GCM_128])
    data = bytearray(path.read_bytes())
    data[position] ^= 0x01
    path.write_bytes(bytes(data))
    with (
        path.open("rb") as source,
        pytest.raises(FileCryptoError, match="^AesGcm128 File, invalid tag: "),
    ):
        decrypt_to_staging(source, KEYS[AES_GCM_128], IV, cmac, staging)
    assert list(staging.iterdir()) == []


@pytest.mark.parametrize("schema", [AES_GCM_128, AES_GCM_256])
def test_truncated(tmp_path: Path, staging: Path, schema: str) -> None:
    path, cmac = _encrypted(tmp_path, os.urandom(1000), KEYS[schema])
    data = path.read_bytes()
    path.write_bytes(data[:-1])
    with (
        path.open("rb") as source,
        pytest.raises(FileCryptoError, match=f"^{LABEL[schema]} File, invalid tag: "),
    ):
        decrypt_to_staging(source, KEYS[schema], IV, cmac, staging)
    for length in (0, 15):
        path.write_bytes(data[:length])
        with path.open("rb") as source, pytest.raises(FileCryptoError) as info:
            decrypt_to_staging(source, KEYS[schema], IV, cmac, staging)
        assert str(info.value) == f"{LABEL[schema]} File, invalid length: {path}"
    assert list(staging.iterdir()) == []


def test_invalid_key_length_is_validated(staging: Path) -> None:
    with pytest.raises(FileCryptoError, match="Invalid key length for AesGcm128: 24"):
        decrypt_to_staging(io.BytesIO(bytes(32)), bytes(24), IV, bytes(16), staging)


# --- the encrypted scratch file -------------------------------------------------------


@pytest.fixture
def staged(tmp_path: Path, staging: Path) -> tuple[StagedPlaintext, bytes]:
    """A staged plaintext of 3 full scratch records and a short final one."""
    marker = b"KETTLE-PLAINTEXT-MARKER\n"
    plaintext = marker * (3 * SCRATCH_RECORD_PLAINTEXT // len(marker) + 1000)
    path, cmac = _encrypted(tmp_path, plaintext, KEYS[AES_GCM_128])
    with path.open("rb") as source:
        return decrypt_to_staging(
            source, KEYS[AES_GCM_128], IV, cmac, staging
        ), plaintext


def test_scratch_holds_no_plaintext(
    staged: tuple[StagedPlaintext, bytes], staging: Path
) -> None:
    staged_plaintext, plaintext = staged
    assert list(staging.iterdir()) == [staged_plaintext.path]
    on_disk = staged_plaintext.path.read_bytes()
    assert b"KETTLE-PLAINTEXT-MARKER" not in on_disk
    assert len(on_disk) == len(plaintext) + 4 * 16
    assert _read_all(staged_plaintext) == plaintext
    staged_plaintext.delete()
    assert list(staging.iterdir()) == []
    with pytest.raises(ValueError):
        staged_plaintext.open()


def _records(path: Path) -> list[bytes]:
    data = path.read_bytes()
    return [data[i : i + SCRATCH_RECORD] for i in range(0, len(data), SCRATCH_RECORD)]


def _assert_corrupted(staged_plaintext: StagedPlaintext) -> None:
    with pytest.raises(FileCryptoError, match="^staged plaintext is corrupted"):
        _read_all(staged_plaintext)


def test_scratch_reordering_detected(staged: tuple[StagedPlaintext, bytes]) -> None:
    staged_plaintext, _ = staged
    records = _records(staged_plaintext.path)
    assert len(records) == 4
    records[0], records[1] = records[1], records[0]
    staged_plaintext.path.write_bytes(b"".join(records))
    _assert_corrupted(staged_plaintext)


def test_scratch_truncation_at_record_boundary_detected(
    staged: tuple[StagedPlaintext, bytes],
) -> None:
    staged_plaintext, _ = staged
    staged_plaintext.path.write_bytes(b"".join(_records(staged_plaintext.path)[:3]))
    _assert_corrupted(staged_plaintext)


def test_scratch_truncation_inside_record_detected(
    staged: tuple[StagedPlaintext, bytes],
) -> None:
    staged_plaintext, _ = staged
    staged_plaintext.path.write_bytes(staged_plaintext.path.read_bytes()[:-5])
    _assert_corrupted(staged_plaintext)


def test_scratch_appended_record_detected(
    staged: tuple[StagedPlaintext, bytes],
) -> None:
    staged_plaintext, _ = staged
    records = _records(staged_plaintext.path)
    staged_plaintext.path.write_bytes(b"".join(records + records[1:2]))
    _assert_corrupted(staged_plaintext)


def test_scratch_flipped_byte_detected(staged: tuple[StagedPlaintext, bytes]) -> None:
    staged_plaintext, _ = staged
    data = bytearray(staged_plaintext.path.read_bytes())
    data[100] ^= 0x80
    staged_plaintext.path.write_bytes(bytes(data))
    _assert_corrupted(staged_plaintext)


def test_scratch_keys_differ_per_file(tmp_path: Path, staging: Path) -> None:
    path, cmac = _encrypted(tmp_path, b"same plaintext", KEYS[AES_GCM_128])
    with path.open("rb") as a, path.open("rb") as b:
        first = decrypt_to_staging(a, KEYS[AES_GCM_128], IV, cmac, staging)
        second = decrypt_to_staging(b, KEYS[AES_GCM_128], IV, cmac, staging)
    # Swapping scratch files between staged plaintexts must not authenticate.
    first.path.write_bytes(second.path.read_bytes())
    _assert_corrupted(first)
    assert _read_all(second) == b"same plaintext"


# --- constant memory ---------------------------------------------------------------------


def test_decrypt_memory_is_constant(tmp_path: Path, staging: Path) -> None:
    size = 30 * MIB
    plain_path = tmp_path / "plain"
    with plain_path.open("wb") as sink:
        block = os.urandom(MIB)
        for _ in range(size // MIB):
            sink.write(block)
    enc_path = tmp_path / "plain.enc"
    with plain_path.open("rb") as source, enc_path.open("wb") as sink:
        cmac = encrypt_file(source, sink, KEYS[AES_GCM_256], IV)

    tracemalloc.start()
    try:
        with enc_path.open("rb") as source:
            staged_plaintext = decrypt_to_staging(
                source, KEYS[AES_GCM_256], IV, cmac, staging
            )
        total = 0
        with staged_plaintext, staged_plaintext.open() as reader:
            while piece := reader.read(256 * 1024):
                total += len(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == size
    assert peak < 6 * MIB, peak


# --- decrypting a stream as it arrives ------------------------------------------------------


def _feed(staging: StagingDecryptor, data: bytes, sizes: list[int]) -> None:
    """Write ``data`` in pieces of the given sizes, cycling (the rest in one piece)."""
    view, index = memoryview(data), 0
    while view:
        size = sizes[index % len(sizes)]
        staging.write(view[:size])
        view, index = view[size:], index + 1


@pytest.mark.parametrize("sizes", [[1], [15, 16, 17], [MIB + 3], [5 * MIB]], ids=str)
def test_a_stream_in_any_pieces_stages_the_plaintext(tmp_path: Path, staging: Path, sizes: list[int]) -> None:
    plaintext = os.urandom(SCRATCH_RECORD_PLAINTEXT + 1000 if sizes != [1] else 5000)
    sealed = AESGCM(KEYS[AES_GCM_256]).encrypt(IV, plaintext, bytes(8))
    with StagingDecryptor(KEYS[AES_GCM_256], IV, sealed[-16:], staging, display_path="in.enc") as streamed:
        _feed(streamed, sealed, sizes)
        staged = streamed.finish()
    with staged:
        assert _read_all(staged) == plaintext
    assert list(staging.iterdir()) == []


def test_a_restarted_stream_stages_only_what_came_after_the_reset(staging: Path) -> None:
    plaintext = os.urandom(3 * MIB)
    sealed = AESGCM(KEYS[AES_GCM_128]).encrypt(IV, plaintext, bytes(8))
    with StagingDecryptor(KEYS[AES_GCM_128], IV, sealed[-16:], staging, display_path="in.enc") as streamed:
        streamed.write(sealed[: 2 * MIB + 5])  # a download that broke off
        streamed.reset()
        _feed(streamed, sealed, [MIB])
        staged = streamed.finish()
    with staged:
        assert _read_all(staged) == plaintext


@pytest.mark.parametrize("damage", ["flipped", "truncated", "wrong-cmac", "wrong-trailer"])
def test_a_damaged_stream_never_yields_a_staged_plaintext(staging: Path, damage: str) -> None:
    plaintext = os.urandom(2 * MIB)
    sealed = bytearray(AESGCM(KEYS[AES_GCM_128]).encrypt(IV, plaintext, bytes(8)))
    cmac = bytes(sealed[-16:])
    if damage == "flipped":
        sealed[MIB] ^= 1
    elif damage == "truncated":
        del sealed[-100:]
    elif damage == "wrong-cmac":
        cmac = bytes(16)
    else:  # the ciphertext authenticates against the cmac, but the file ends in other bytes
        sealed[-16:] = bytes(16)
    streamed = StagingDecryptor(KEYS[AES_GCM_128], IV, cmac, staging, display_path="in.enc")
    _feed(streamed, bytes(sealed), [MIB])
    with pytest.raises(FileCryptoError, match="^AesGcm128 File, invalid tag: in.enc$"):
        streamed.finish()
    streamed.discard()
    assert list(staging.iterdir()) == []
    assert [t.name for t in threading.enumerate() if t.name.startswith("scratch-")] == []


def test_a_stream_shorter_than_a_tag_has_an_invalid_length(staging: Path) -> None:
    with (
        pytest.raises(FileCryptoError, match="^AesGcm256 File, invalid length: tiny$"),
        StagingDecryptor(KEYS[AES_GCM_256], IV, bytes(16), staging, display_path="tiny") as streamed,
    ):
        streamed.write(b"short")
        streamed.finish()
    assert list(staging.iterdir()) == []


def test_a_corrupted_record_leaves_nothing_in_the_readers_buffer(staged: tuple[StagedPlaintext, bytes]) -> None:
    """``readinto`` may be handed the function's own buffer: a record whose tag fails must not
    have been decrypted into it."""
    staged_plaintext, _ = staged
    data = bytearray(staged_plaintext.path.read_bytes())
    data[10] ^= 0x01
    staged_plaintext.path.write_bytes(bytes(data))
    target = bytearray(SCRATCH_RECORD_PLAINTEXT)
    with staged_plaintext.open() as reader, pytest.raises(FileCryptoError, match="corrupted"):
        reader.readinto(target)
    assert target == bytearray(SCRATCH_RECORD_PLAINTEXT)
