"""`kettle data ...`: option parsing, and the data-file commands against a full platform,
as two data owners."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from conftest import Platform
from kettle.cli.data import parse_cmac
from kettle.cli.files import file_key
from kettle.crypto.recipes import FileKey
from kettle.model.records import ObjectStoreCredentials
from test_data_api import Storage

CMAC = bytes(range(16))


# --- option parsing -------------------------------------------------------------------


def test_key_options(tmp_path: Path) -> None:
    key = FileKey.generate("aes-gcm-256")
    path = tmp_path / "key.json"
    key.save(path)
    assert file_key(path, None, None, None) == key
    inline = file_key(None, "aes-gcm-128", "00" * 16, "11" * 12)
    assert (inline.schema, inline.key, inline.iv) == ("aes-gcm-128", bytes(16), b"\x11" * 12)
    assert file_key(None, "raw", None, None).schema == "raw"
    with pytest.raises(ValueError, match="not both"):
        file_key(path, "raw", None, None)
    with pytest.raises(ValueError, match="no key"):
        file_key(None, None, "00", None)
    with pytest.raises(ValueError, match="Invalid key length for AesGcm128: 15"):
        file_key(None, "aes-gcm-128", "00" * 15, "11" * 12)
    with pytest.raises(ValueError, match="Invalid crypto schema: rot13"):
        file_key(None, "rot13", "", "")


def test_cmac_option() -> None:
    assert parse_cmac(CMAC.hex()) == CMAC
    assert parse_cmac(":".join(f"{b:02X}" for b in CMAC)) == CMAC
    with pytest.raises(ValueError, match="Invalid cmac length: 15"):
        parse_cmac(CMAC.hex()[:30])
    with pytest.raises(ValueError, match="not hex"):
        parse_cmac("zz" * 16)


# --- against a platform ---------------------------------------------------------------------


def test_data_commands(full_platform: Platform, tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    alice, bob = f"cli-alice-{suffix}", f"cli-bob-{suffix}"

    def run(*args: str, password: str = "teaclave") -> tuple[int, str, str]:
        result = full_platform.kettle(*args, env={"KETTLE_PASSWORD": password})
        return result.returncode, result.stdout, result.stderr

    def ok(*args: str, password: str = "teaclave") -> str:
        code, stdout, stderr = run(*args, password=password)
        assert code == 0, stdout + stderr
        return stdout

    def error(*args: str) -> str:
        code, stdout, stderr = run(*args)
        assert code == 1 and stdout == "" and "Traceback" not in stderr, stdout + stderr
        return stderr.strip().splitlines()[-1]

    ok("user", "login", "admin")
    for user in (alice, bob):
        ok("user", "register", user, "--role", "DataOwner", "--attribute", "bank", password="pw")
    ok("user", "login", alice, password="pw")

    key_file = tmp_path / "in.key.json"
    FileKey.generate("aes-gcm-128").save(key_file)
    url = f"https://files.example/srv/{alice}/in.enc"
    created = json.loads(ok("data", "register-input", url, "--key-file", str(key_file), "--cmac-hex", CMAC.hex(), "--json"))
    input_id = created["data_id"]
    assert input_id.startswith("input-")
    plain = ok("data", "register-input", url, "--schema", "aes-gcm-256", "--key-hex", "ab" * 32, "--iv-hex", "cd" * 12,
               "--cmac-hex", CMAC.hex())
    assert plain.strip().startswith("input-") and len(plain.strip().splitlines()) == 1

    assert json.loads(ok("data", "get-input", input_id, "--json")) == {"data_id": input_id, "owners": [alice], "cmac": CMAC.hex()}
    table = ok("data", "get-input", input_id)
    assert alice in table and CMAC.hex() in table

    output_id = ok("data", "register-output", f"https://files.example/srv/{alice}/out.enc", "--schema", "teaclave-file-128",
                   "--key-hex", "00" * 16).strip()
    assert output_id.startswith("output-")
    assert json.loads(ok("data", "get-output", output_id, "--json"))["cmac"] is None
    assert "not written yet" in ok("data", "get-output", output_id)

    moved = json.loads(ok("data", "update-input", input_id, f"https://files.example/srv/{alice}/moved.enc", "--json"))
    assert moved["previous"] == input_id and moved["data_id"] not in (input_id, "") and moved["data_id"].startswith("input-")
    assert ok("data", "update-output", output_id, f"https://files.example/srv/{alice}/o2.enc").strip().startswith("output-")

    fusion = json.loads(ok("data", "register-fusion-output", alice, bob, "--json"))["data_id"]
    assert sorted(json.loads(ok("data", "get-output", fusion, "--json"))["owners"]) == sorted([alice, bob])

    # errors: one line, exit status 1; client-side checks before anything is sent, then the server's texts
    assert error("data", "input-from-output", output_id) == "error: invalid output file"
    assert error("data", "register-input", "relative.enc", "--key-file", str(key_file), "--cmac-hex", CMAC.hex()) == (
        "error: relative URL without a base")
    assert error("data", "register-input", url, "--key-file", str(key_file), "--cmac-hex", CMAC.hex()[:30]) == (
        "error: Invalid cmac length: 15")
    assert error("data", "register-output", url, "--key-file", str(key_file), "--schema", "raw") == (
        "error: give either --key FILE or --schema/--key-hex/--iv-hex, not both")
    assert error("data", "register-output", url, "--schema", "rot13") == "error: Invalid crypto schema: rot13"
    assert error("data", "register-fusion-output", alice) == "error: permission denied"
    assert error("data", "get-input", output_id) == "error: invalid data id"
    assert error("data", "get-output", "output-not-a-uuid") == "error: invalid data id"

    # an s3:// file in the owner's own bucket, with the owner's credentials from a file: stored with
    # the record (read back from storage, since the platform never returns them) and never printed
    secret = "owner-secret-" + suffix
    creds_file = tmp_path / "s3.json"
    creds_file.write_text(json.dumps({"access_key_id": "AKIAOWNER", "secret_access_key": secret,
                                      "endpoint_url": "https://minio.example:9000", "region": "eu-west-1"}))
    s3_url = f"s3://{alice}-bucket/in.enc"
    s3_args = ("--key-file", str(key_file), "--s3-credentials-file", str(creds_file))
    s3_input = ok("data", "register-input", s3_url, *s3_args, "--cmac-hex", CMAC.hex()).strip()
    s3_output = ok("data", "register-output", f"s3://{alice}-bucket/out.enc", *s3_args).strip()
    s3_moved = ok("data", "update-input", s3_input, f"s3://{alice}-bucket/moved.enc").strip()
    s3_rotated = ok("data", "update-output", s3_output, f"s3://{alice}-bucket/out.enc",
                    "--s3-credentials-file", str(creds_file)).strip()
    wrong_file = tmp_path / "wrong.json"
    wrong_file.write_text(json.dumps({"access_key_id": "AKIAOWNER", "secret": secret}))
    assert error("data", "register-input", s3_url, "--key-file", str(key_file), "--cmac-hex", CMAC.hex(),
                 "--s3-credentials-file", str(wrong_file)) == (
        "error: s3 credentials: unknown fields 'secret' (known: access_key_id, secret_access_key, session_token, "
        "endpoint_url, region)")
    wrong_file.write_text(json.dumps({"access_key_id": "AKIAOWNER", "secret_access_key": f"{secret} x"}))
    assert error("data", "register-input", s3_url, "--key-file", str(key_file), "--cmac-hex", CMAC.hex(),
                 "--s3-credentials-file", str(wrong_file)) == (
        "error: s3 credentials: secret_access_key must be 1 to 256 printable ASCII characters without spaces")
    assert error("data", "register-input", url, "--key-file", str(key_file), "--cmac-hex", CMAC.hex(),
                 "--s3-credentials-file", str(creds_file)) == "error: s3 credentials are only for s3:// URLs"

    storage = Storage(full_platform)
    try:
        def stored(data_id: str) -> ObjectStoreCredentials | None:
            kind, bare = data_id.split("-", 1)
            record = storage.file(f"{kind}-{bare}".encode())
            assert record is not None
            return record.s3_credentials

        owners = ObjectStoreCredentials("AKIAOWNER", secret, "", "https://minio.example:9000", "eu-west-1")
        assert [stored(i) for i in (s3_input, s3_output, s3_moved, s3_rotated)] == [owners, owners, None, owners]
        assert secret not in ok("data", "get-input", s3_input, "--json") + ok("data", "get-output", s3_output)
        # a written output becomes an input (the scheduler records the cmac when a task finishes)
        storage.finish_output(output_id, CMAC)
    finally:
        storage.close()
    derived = json.loads(ok("data", "input-from-output", output_id, "--json"))
    assert derived == {"data_id": "input-" + output_id.split("-", 1)[1], "output": output_id}

    ok("user", "login", bob, password="pw")
    assert error("data", "get-input", input_id) == "error: permission denied"
    assert error("data", "update-input", input_id, "https://files.example/x") == "error: permission denied"
    assert json.loads(ok("data", "get-output", fusion, "--json"))["data_id"] == fusion
