"""``kettle file keygen|encrypt|decrypt|cmac``: a data owner's offline file commands.

Run in-process with typer's CliRunner (stdout and stderr apart), plus one real
subprocess to prove the command is wired into the installed ``kettle``. What
is asserted: the printed cmac is the one the file has, key files are private
and never replaced silently, every refusal is one line on stderr with exit
status 1 and leaves no output file behind.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from kettle.cli.main import app
from kettle.crypto.recipes import FileKey
from kettle.crypto.schemas import AES_GCM_128, RAW, SCHEMAS, TEACLAVE_FILE_128

PLAINTEXT = os.urandom(10_000)


def kettle(*args: str | Path) -> Result:
    return CliRunner().invoke(app, ["file", *map(str, args)])


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.stdout


def refused(result: Result, text: str) -> None:
    """Exit status 1, nothing on stdout, exactly one error line on stderr containing ``text``."""
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ") and text in lines[0], lines[0]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "data.csv").write_bytes(PLAINTEXT)
    return tmp_path


def names(folder: Path) -> set[str]:
    return {entry.name for entry in folder.iterdir()}


def keygen(folder: Path, schema: str, name: str = "key.json") -> Path:
    ok(kettle("keygen", "--schema", schema, "--out", folder / name))
    return folder / name


@pytest.mark.parametrize("schema", SCHEMAS)
def test_round_trip(folder: Path, schema: str) -> None:
    key = keygen(folder, schema)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    encrypted = ok(kettle("encrypt", folder / "data.csv", folder / "data.enc", "--key", key)).strip()
    assert len(bytes.fromhex(encrypted)) == 16
    assert ok(kettle("cmac", folder / "data.enc", "--key", key)).strip() == encrypted
    cmac_option = [] if schema == RAW else ["--cmac", encrypted]
    assert ok(kettle("decrypt", folder / "data.enc", folder / "out.csv", "--key", key, *cmac_option)).strip() == encrypted
    assert (folder / "out.csv").read_bytes() == PLAINTEXT
    assert names(folder) == {"data.csv", "data.enc", "out.csv", "key.json"}


def test_raw_warns_after_success_only(folder: Path) -> None:
    result = kettle("encrypt", folder / "data.csv", folder / "copy", "--schema", RAW)
    assert ok(result).strip() == "00" * 16
    assert result.stderr.startswith("warning: raw files are neither encrypted nor integrity-protected")
    refused(kettle("decrypt", folder / "copy", folder / "out", "--schema", RAW, "--cmac", "00" * 16), "raw files have no integrity protection")


def test_inline_key_material(folder: Path) -> None:
    printed = json.loads(ok(kettle("keygen", "--schema", AES_GCM_128)))
    assert set(printed) == {"schema", "key", "iv"} and printed["schema"] == AES_GCM_128
    inline = ["--schema", AES_GCM_128, "--key-hex", printed["key"], "--iv-hex", printed["iv"]]
    encrypted = ok(kettle("encrypt", folder / "data.csv", folder / "data.enc", *inline)).strip()
    key_file = folder / "key.json"
    key_file.write_text(json.dumps(printed))
    assert ok(kettle("decrypt", folder / "data.enc", folder / "out.csv", "--key", key_file)).strip() == encrypted
    assert (folder / "out.csv").read_bytes() == PLAINTEXT


def test_json_output_names_the_bound_file_name(folder: Path) -> None:
    key = keygen(folder, TEACLAVE_FILE_128)
    result = json.loads(ok(kettle("encrypt", folder / "data.csv", folder / "local.enc", "--key", key, "--name", "train.enc", "--json")))
    assert result["schema"] == TEACLAVE_FILE_128 and result["name"] == "train.enc"
    assert result["output"] == str(folder / "local.enc")
    refused(kettle("decrypt", folder / "local.enc", folder / "out", "--key", key), "created as 'train.enc', expected 'local.enc'")
    decrypted = json.loads(ok(kettle("decrypt", folder / "local.enc", folder / "out", "--key", key, "--name", "train.enc", "--json")))
    assert decrypted["cmac"] == result["cmac"]


# --- key files are secrets -----------------------------------------------------------------------


def test_keygen_never_replaces_a_key_file_without_force(folder: Path) -> None:
    key = keygen(folder, TEACLAVE_FILE_128)
    before = key.read_text()
    refused(kettle("keygen", "--schema", AES_GCM_128, "--out", key), "exists; refusing to overwrite it (use --force")
    assert key.read_text() == before
    ok(kettle("keygen", "--schema", AES_GCM_128, "--out", key, "--force"))
    assert FileKey.load(key).schema == AES_GCM_128
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert names(folder) == {"data.csv", "key.json"}


# --- refusals: one line, exit 1, nothing written -----------------------------------------------


def test_wrong_key(folder: Path) -> None:
    key, other = keygen(folder, AES_GCM_128), keygen(folder, AES_GCM_128, "other.json")
    ok(kettle("encrypt", folder / "data.csv", folder / "data.enc", "--key", key))
    refused(kettle("decrypt", folder / "data.enc", folder / "out", "--key", other), "authentication failed: wrong key or iv")
    refused(kettle("cmac", folder / "data.enc", "--key", other), "authentication failed")
    assert "out" not in names(folder)


@pytest.mark.parametrize(
    ("cmac", "text"),
    [
        ("00" * 16, "cmac mismatch: the file's cmac is"),
        ("00" * 15, "--cmac: Invalid cmac length: 15"),
        ("xyz", "--cmac is not hex text"),
    ],
)
def test_bad_cmac(folder: Path, cmac: str, text: str) -> None:
    key = keygen(folder, TEACLAVE_FILE_128)
    ok(kettle("encrypt", folder / "data.csv", folder / "data.enc", "--key", key))
    refused(kettle("decrypt", folder / "data.enc", folder / "out", "--key", key, "--cmac", cmac), text)
    assert "out" not in names(folder)


def test_tampered_file(folder: Path) -> None:
    key = keygen(folder, TEACLAVE_FILE_128)
    tag = ok(kettle("encrypt", folder / "data.csv", folder / "data.enc", "--key", key)).strip()
    data = bytearray((folder / "data.enc").read_bytes())
    data[-1] ^= 1
    (folder / "data.enc").write_bytes(bytes(data))
    refused(kettle("decrypt", folder / "data.enc", folder / "out", "--key", key, "--cmac", tag), "corrupted data node")
    assert names(folder) == {"data.csv", "data.enc", "key.json"}


@pytest.mark.parametrize(
    ("arguments", "text"),
    [
        (["--schema", TEACLAVE_FILE_128], "Invalid key length for TeaclaveFile128: 0"),
        (["--schema", "aes-gcm-512", "--key-hex", "00"], "Invalid crypto schema: aes-gcm-512"),
        (["--schema", AES_GCM_128, "--key-hex", "00" * 16], "Invalid iv length for AesGcm128: 0"),
        (["--key-hex", "00" * 16], "no key: give --key FILE"),
        ([], "no key: give --key FILE"),
        (["--key", "KEYFILE", "--schema", RAW], "not both"),
        (["--key", "MISSING"], "No such file or directory"),
        (["--key", "data.csv"], "not a key file: too large"),
        (["--schema", AES_GCM_128, "--key-hex", "00" * 16, "--iv-hex", "00" * 12, "--name", "x"], "only teaclave-file-128 files are bound to a name"),
    ],
)
def test_bad_key_options(folder: Path, arguments: list[str], text: str) -> None:
    keygen(folder, TEACLAVE_FILE_128, "KEYFILE")
    arguments = [str(folder / a) if a in ("KEYFILE", "MISSING", "data.csv") else a for a in arguments]
    refused(kettle("encrypt", folder / "data.csv", folder / "data.enc", *arguments), text)
    assert names(folder) == {"data.csv", "KEYFILE"}


def test_missing_input(folder: Path) -> None:
    key = keygen(folder, TEACLAVE_FILE_128)
    refused(kettle("encrypt", folder / "nope.csv", folder / "data.enc", "--key", key), "No such file or directory")
    assert names(folder) == {"data.csv", "key.json"}


# --- hostile: decrypting over an existing file ------------------------------------------------------


def test_decrypt_over_an_existing_file(folder: Path) -> None:
    """Refused without --force; with --force only a fully verified plaintext replaces it."""
    key = keygen(folder, TEACLAVE_FILE_128)
    tag = ok(kettle("encrypt", folder / "data.csv", folder / "data.enc", "--key", key)).strip()
    victim = folder / "report.txt"
    victim.write_bytes(b"keep me")

    refused(kettle("decrypt", folder / "data.enc", victim, "--key", key), "exists; refusing to overwrite it (use --force")
    assert victim.read_bytes() == b"keep me"

    # The input is its own output: refused, the encrypted file is untouched.
    before = (folder / "data.enc").read_bytes()
    refused(kettle("decrypt", folder / "data.enc", folder / "data.enc", "--key", key), "refusing to overwrite")
    assert (folder / "data.enc").read_bytes() == before

    refused(kettle("decrypt", folder / "data.enc", victim, "--key", key, "--cmac", "11" * 16, "--force"), "cmac mismatch")
    assert victim.read_bytes() == b"keep me"

    assert ok(kettle("decrypt", folder / "data.enc", victim, "--key", key, "--cmac", tag, "--force")).strip() == tag
    assert victim.read_bytes() == PLAINTEXT
    assert names(folder) == {"data.csv", "data.enc", "key.json", "report.txt"}


def test_encrypt_refuses_to_replace_its_output(folder: Path) -> None:
    key = keygen(folder, TEACLAVE_FILE_128)
    (folder / "data.enc").write_bytes(b"previous upload")
    refused(kettle("encrypt", folder / "data.csv", folder / "data.enc", "--key", key), "refusing to overwrite")
    assert (folder / "data.enc").read_bytes() == b"previous upload"


# --- the installed command --------------------------------------------------------------------------


def test_real_kettle_process(folder: Path) -> None:
    def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "kettle", "file", *map(str, args)], capture_output=True, text=True, timeout=60
        )

    assert run("keygen", "--schema", TEACLAVE_FILE_128, "--out", folder / "key.json").returncode == 0
    encrypted = run("encrypt", folder / "data.csv", folder / "data.enc", "--key", folder / "key.json")
    assert encrypted.returncode == 0 and len(bytes.fromhex(encrypted.stdout.strip())) == 16
    failed = run("decrypt", folder / "data.enc", folder / "out", "--key", folder / "key.json", "--cmac", "00" * 16)
    assert failed.returncode == 1 and failed.stdout == ""
    assert failed.stderr.count("\n") == 1 and failed.stderr.startswith("error: ") and "cmac mismatch" in failed.stderr
    assert not (folder / "out").exists()
