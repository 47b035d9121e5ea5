"""Ordered-set join, RSA sign, password check, online decrypt, PCA and face detection (functions.md §5.8, §5.11–5.15)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)
from staged import run_builtin

from kettle.functions import FunctionError
from kettle.functions._numbers import format_debug
from kettle.functions.online_decrypt import decode_base64

DATA = Path(__file__).parent / "data" / "functions"
IRIS = (DATA / "gbdt_train_iris.txt").read_text().splitlines()

# --- builtin-ordered-set-join ------------------------------------------------------------------

JOIN = "builtin-ordered-set-join"
ON_FIRST = {"left_column": 0, "right_column": 0, "ascending": True, "drop": True}


def join(tmp_path: Path, arguments: dict, left: bytes, right: bytes):  # type: ignore[no-untyped-def]
    return run_builtin(tmp_path, JOIN, arguments, {"input_data1": left, "input_data2": right}, ["output_result"])


def test_joining_two_halves_of_a_table_gives_it_back(tmp_path: Path) -> None:
    # as the reference's fixture: an id column, the first columns in one file, the rest in the other
    left = "".join(f"{i:04d},{','.join(row.split(',')[:2])}\n" for i, row in enumerate(IRIS)).encode()
    right = "".join(f"{i:04d},{','.join(row.split(',')[2:])}\r\n" for i, row in enumerate(IRIS) if i % 3).encode()
    outcome = join(tmp_path, ON_FIRST, left, right)
    assert outcome.return_value == f"{sum(1 for i in range(len(IRIS)) if i % 3)} records"
    assert outcome.outputs["output_result"] == "".join(r + "\n" for i, r in enumerate(IRIS) if i % 3).encode()


def test_descending_keys_compare_as_text_and_quoting_round_trips(tmp_path: Path) -> None:
    left = b'9,"a,b"\r\n\n10,"say ""hi"""\r5,x'
    right = b"9,one\n5,two\n10,three\n"
    outcome = join(tmp_path, {**ON_FIRST, "ascending": False, "drop": False}, left, right)
    # "10" < "9" as text, so "9, 10, 5" is descending; after 10 in file 1 comes 5 in file 2, then 10
    assert outcome.return_value == "2 records"
    assert outcome.outputs["output_result"] == b'9,"a,b",one\n10,"say ""hi""",three\n'
    empty = join(tmp_path / "e", {**ON_FIRST, "drop": True}, b"1\n", b"1\n")
    assert empty.outputs["output_result"] == b'""\n'


@pytest.mark.parametrize(("arguments", "left", "right", "reason"), [
    ({**ON_FIRST, "drop": "yes"}, b"1\n", b"1\n", "Cannot deserialize arguments"),
    ({k: v for k, v in ON_FIRST.items() if k != "ascending"}, b"1\n", b"1\n", "Cannot deserialize arguments"),
    ({**ON_FIRST, "left_column": -1}, b"1\n", b"1\n", "Cannot deserialize arguments"),
    (ON_FIRST, b"", b"1\n", "input1 is empty"),
    (ON_FIRST, b"\n\n", b"1\n", "input1 is empty"),
    (ON_FIRST, b"1\n", b"", "input2 is empty"),
    ({**ON_FIRST, "right_column": 3}, b"1\n", b"1,2\n", "invalid index"),
    (ON_FIRST, b"1,a\n2,b,c\n", b"1\n2\n", "CSV error: record 1 (line: 2, byte: 4): found record with 3 fields, "
                                             "but the previous record has 2 fields"),
    (ON_FIRST, b"1,a\n\n2,\xff\n", b"1\n2\n", "stream did not contain valid UTF-8"),
])
def test_bad_joins_fail_and_upload_nothing(tmp_path: Path, arguments: dict, left: bytes, right: bytes, reason: str) -> None:
    outcome = join(tmp_path, arguments, left, right)
    assert (outcome.failure, outcome.outputs) == (reason, {"output_result": None})


# --- builtin-rsa-sign ----------------------------------------------------------------------------

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def der(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, form: PrivateFormat = PrivateFormat.TraditionalOpenSSL,
        encoding: Encoding = Encoding.DER) -> bytes:
    return key.private_bytes(encoding, form, NoEncryption())


def test_rsa_signatures_verify_and_are_deterministic(tmp_path: Path) -> None:
    first = run_builtin(tmp_path / "1", "builtin-rsa-sign", {"data": "Hello, Teaclave! ünïcode"}, {"rsa_key": der(KEY)})
    again = run_builtin(tmp_path / "2", "builtin-rsa-sign", {"data": "Hello, Teaclave! ünïcode"}, {"rsa_key": der(KEY)})
    assert first.return_value == again.return_value and len(first.return_value) == 344
    KEY.public_key().verify(base64.b64decode(first.return_value), "Hello, Teaclave! ünïcode".encode(),
                            padding.PKCS1v15(), hashes.SHA256())


@pytest.mark.parametrize(("key", "reason"), [
    (der(KEY, PrivateFormat.PKCS8), "InvalidEncoding"),
    (der(KEY, encoding=Encoding.PEM), "InvalidEncoding"),
    (der(ec.generate_private_key(ec.SECP256R1())), "InvalidEncoding"),
    (der(rsa.generate_private_key(public_exponent=65537, key_size=1024)),
     "InvalidKeyLength: the modulus has 1024 bits, not 2048 to 4096"),
    (b"\x30\x82\x01\x00\x02\x01\x00\x02" + bytes(300), "InvalidEncoding"),
    (b"", "InvalidEncoding"),
    (bytes(100_000), "InvalidEncoding"),
])
def test_keys_that_are_not_pkcs1_rsa_2048_to_4096_are_refused(tmp_path: Path, key: bytes, reason: str) -> None:
    assert run_builtin(tmp_path, "builtin-rsa-sign", {"data": "x"}, {"rsa_key": key}).failure == reason


def test_rsa_sign_needs_its_argument_and_its_key(tmp_path: Path) -> None:
    assert run_builtin(tmp_path / "a", "builtin-rsa-sign", {"data": 1}, {"rsa_key": der(KEY)}).failure == (
        "Cannot deserialize arguments")
    assert run_builtin(tmp_path / "b", "builtin-rsa-sign", {"data": "x"}).failure == "Invalid input file identifier."


# --- builtin-password-check -------------------------------------------------------------------------


@pytest.mark.parametrize(("password", "exposed", "expected"), [
    (b"password", b"123456\npassword\n", "true"),  # the example: 8 bytes, no newline
    (b"password\n", b"123456\npassword", "true"),  # the fixture
    (b"  password \r\nsecond line\n", b"\t password\n", "true"),
    (b"Password", b"password\n", "false"),
    (b"\n", b"a\n\nb\n", "true"),  # a blank line is the empty password, and a member
    (b"x", b"", "false"),
])
def test_password_check(tmp_path: Path, password: bytes, exposed: bytes, expected: str) -> None:
    outcome = run_builtin(tmp_path, "builtin-password-check", {"anything": [1]},
                          {"password": password, "exposed_passwords": exposed})
    assert outcome.return_value == expected


@pytest.mark.parametrize(("password", "exposed", "reason"), [
    (b"", b"a\n", "Empty password file"),
    (b"\xff\xfe", b"a\n", "stream did not contain valid UTF-8"),
    (b"b", b"a\n\xff\n", "stream did not contain valid UTF-8"),
])
def test_bad_password_files_fail(tmp_path: Path, password: bytes, exposed: bytes, reason: str) -> None:
    outcome = run_builtin(tmp_path, "builtin-password-check", {}, {"password": password, "exposed_passwords": exposed})
    assert outcome.failure == reason


# --- builtin_online_decrypt ---------------------------------------------------------------------------

VECTOR = {"key": "aqUdgZ0lJnuz9yiPkoDxM6ZcTcVVpd4KKLqzbHD88Lg=", "nonce": "AAECAwQFBgcICQoL",
          "encrypted_data": "CaZd8qSMMlBp8SjSXj2I4dQIuC9KkZ5DI/ATo1sWJw==", "algorithm": "aes256gcm"}


@pytest.mark.parametrize(("changes", "result"), [
    ({}, "Hello Teaclave!"),
    ({"key": "aqUdgZ0lJnuz9yiPkoDxMw==", "algorithm": "aes128gcm",
      "encrypted_data": "OqMscYqxk1CshHQZulTrrDlJjS/v6BE/clWJyTerUw=="}, "Hello Teaclave!"),
    ({"nonce": "AAECAwQFBgcICQoLDA0="}, "Hello Teaclave!"),  # bytes past the 12th are ignored
])
def test_online_decrypt_vectors(tmp_path: Path, changes: dict, result: str) -> None:
    assert run_builtin(tmp_path, "builtin_online_decrypt", {**VECTOR, **changes}).return_value == result


@pytest.mark.parametrize(("changes", "reason"), [
    ({"algorithm": "aes192gcm"}, "Invalid algorithm"),
    ({"key": "aqUd!Z0l"}, "Invalid byte 33, offset 4."),
    ({"key": "aqUdgZ0lJnuz9yiPkoDxMw=="}, "decryption error"),  # a 128-bit key for aes256gcm
    ({"nonce": "AAECAwQF"}, "decryption error"),  # shorter than 12 bytes
    ({"encrypted_data": "CaZd8qSMMlBp8SjSXj2I4dQIuC9KkZ5DI/ATo1sWJx=="}, "Invalid last symbol 120, offset 41."),
    ({"encrypted_data": "DaZd8qSMMlBp8SjSXj2I4dQIuC9KkZ5DI/ATo1sWJw=="}, "decryption error"),
    ({"algorithm": None}, "Cannot deserialize arguments"),
])
def test_online_decrypt_refusals(tmp_path: Path, changes: dict, reason: str) -> None:
    assert run_builtin(tmp_path, "builtin_online_decrypt", {**VECTOR, **changes}).failure == reason


def test_base64_errors_carry_the_reference_librarys_texts() -> None:
    for text, message in (("A", "Encoded text cannot have a 6-bit remainder."), ("AA=A", "Invalid byte 61, offset 2."),
                          ("AB==", "Invalid last symbol 66, offset 1."), ("AAAA=", "Invalid byte 61, offset 4.")):
        with pytest.raises(FunctionError, match=f"^{message}$".replace(".", r"\.")):
            decode_base64(text)
    assert decode_base64("AAE") == b"\x00\x01" and decode_base64("") == b""


def test_plaintext_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key, nonce = bytes(16), bytes(12)
    sealed = AESGCM(key).encrypt(nonce, b"\xff\xfe", None)
    arguments = {"key": base64.b64encode(key).decode(), "nonce": base64.b64encode(nonce).decode(),
                 "encrypted_data": base64.b64encode(sealed).decode(), "algorithm": "aes128gcm"}
    assert run_builtin(tmp_path, "builtin_online_decrypt", arguments).failure == "base64 decoded error"


# --- builtin_principal_components_analysis --------------------------------------------------------------

PCA = "builtin_principal_components_analysis"


def test_pca_projects_on_the_leading_components(tmp_path: Path) -> None:
    table = np.array([[float(v) for v in row.split(",")] for row in IRIS])
    data = "".join(row + "\n" for row in IRIS).encode()
    outcome = run_builtin(tmp_path, PCA, {"n": 2, "center": True, "feature_size": 4}, {"input_data": data}, ["output_data"])
    assert outcome.return_value == "transform 120 rows * 2 cols lines of data."
    text = (outcome.outputs["output_data"] or b"").decode()
    got = np.array([[float(v) for v in line.split(",")] for line in text.splitlines()])
    centred = table[:, :4] - table[:, :4].mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    # up to each component's sign, the projection on the top two right singular vectors
    expected = centred @ vt[:2].T
    assert np.allclose(np.abs(got), np.abs(expected), rtol=1e-9, atol=1e-12)
    assert np.allclose(np.linalg.norm(got, axis=0), singular[:2], rtol=1e-9)
    assert text.splitlines()[0] == ",".join(format_debug(v) for v in got[0])


@pytest.mark.parametrize(("arguments", "data", "reason"), [
    ({"n": 5, "center": True, "feature_size": 4}, "1,2,3,4,0\n", "Input data must have equal or larger number of "
                                                                  "columns than n"),
    ({"n": 1, "center": "true", "feature_size": 2}, "1,2,0\n", "Cannot deserialize arguments"),
    ({"n": 1, "center": True, "feature_size": 2}, "", "Empty input data"),
    ({"n": 1, "center": True, "feature_size": 3}, "1,2,3,0\n4,5,6,0\n",
     "Input data must have at least as many rows (2) as features (3)"),
    ({"n": 1, "center": True, "feature_size": 2}, "1,2\n", "Data format error: column len = 2, expected = 3"),
    ({"n": 1, "center": False, "feature_size": 1}, "inf,0\n1,0\n", "Could not compute SVD."),
])
def test_bad_pca_tasks_fail_and_upload_nothing(tmp_path: Path, arguments: dict, data: str, reason: str) -> None:
    outcome = run_builtin(tmp_path, PCA, arguments, {"input_data": data.encode()}, ["output_data"])
    assert (outcome.failure, outcome.outputs) == (reason, {"output_data": None})


# --- builtin-face-detection ----------------------------------------------------------------------------

FACES = "builtin-face-detection"
ASTRONAUT = list((DATA / "faces" / "astronaut.jpg").read_bytes())


def test_the_astronauts_face_is_found(tmp_path: Path) -> None:
    outcome = run_builtin(tmp_path, FACES, {"image": ASTRONAUT})
    assert outcome.return_value == ('[{"bbox":{"x":174,"y":64,"width":97,"height":97},'
                                    '"roll":0.0,"pitch":0.0,"yaw":0.0,"score":18.0}]')


def test_parameters_change_what_is_found(tmp_path: Path) -> None:
    def faces(**parameters: object) -> list[dict]:
        return json.loads(run_builtin(tmp_path / str(len(list(tmp_path.iterdir()))), FACES,
                                      {"image": ASTRONAUT, **parameters}).return_value)

    lenient, strict = faces(score_thresh=1.0), faces(score_thresh=30.0)
    assert len(lenient) >= 1 and strict == []
    assert faces(max_face_size=60) == []
    assert faces(window_size=24, slide_window_step_x=2, slide_window_step_y=2, min_face_size=20)


def blank_jpeg() -> list[int]:
    import cv2

    ok, encoded = cv2.imencode(".jpg", np.full((120, 160, 3), 128, dtype=np.uint8))
    assert ok
    return list(encoded.tobytes())


def huge_header() -> list[int]:
    data = bytearray((DATA / "faces" / "astronaut.jpg").read_bytes())
    at = next(i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC2))
    data[at + 5:at + 9] = (60000).to_bytes(2, "big") * 2
    return list(data)


@pytest.mark.parametrize(("arguments", "result"), [
    ({"image": blank_jpeg()}, "[]"),
    ({"image": ASTRONAUT, "max_face_size": 0}, None),  # 0 = unlimited
])
def test_images_without_faces_and_defaults(tmp_path: Path, arguments: dict, result: str | None) -> None:
    outcome = run_builtin(tmp_path, FACES, arguments)
    assert outcome.failure is None and (result is None or outcome.return_value == result)


@pytest.mark.parametrize(("arguments", "reason"), [
    ({}, "Cannot deserialize arguments"),
    ({"image": [1, 256]}, "Cannot deserialize arguments"),
    ({"image": "base64?"}, "Cannot deserialize arguments"),
    ({"image": ASTRONAUT, "slide_window_step_x": 1.5}, "Cannot deserialize arguments"),
    ({"image": ASTRONAUT, "window_size": 19}, "window_size must be at least 20, not 19"),
    ({"image": ASTRONAUT, "slide_window_step_x": 0, "slide_window_step_y": 4},
     "slide_window_step_x and slide_window_step_y must be at least 1"),
    ({"image": ASTRONAUT, "min_face_size": 10}, "min_face_size must be at least 20, not 10"),
    ({"image": ASTRONAUT, "pyramid_scale_factor": 1.0}, "pyramid_scale_factor must be between 0.01 and 0.99, not 1.0"),
    ({"image": ASTRONAUT, "score_thresh": 0}, "score_thresh must be greater than 0, not 0.0"),
    ({"image": []}, "The image is not a JPEG file"),
    ({"image": list(b"\x89PNG\r\n\x1a\n" + bytes(50))}, "The image is not a JPEG file"),
    ({"image": ASTRONAUT[:100]}, "The image is not a valid JPEG file: no frame header"),
    ({"image": ASTRONAUT[:2000]}, "The image could not be decoded"),
    ({"image": huge_header()}, "The image is 60000×60000 pixels; at most 64000000 pixels are allowed"),
])
def test_bad_images_and_parameters_fail(tmp_path: Path, arguments: dict, reason: str) -> None:
    assert run_builtin(tmp_path, FACES, arguments).failure == reason
