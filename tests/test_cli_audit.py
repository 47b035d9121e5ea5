"""The auditor CLI: ``kettle audit sign`` and ``kettle audit verify``, run as a user runs them.

The CLI runs as a subprocess (``python -m kettle``) against a small home that
holds enclave info and the dev auditors' public keys, as a client's trust
directory does. Signatures are checked independently with ``openssl dgst`` to
prove they are Teaclave's format (RSA PKCS#1 v1.5 / SHA-256 over the file bytes).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import fast_private_key
from cryptography.hazmat.primitives import serialization

from kettle.attestation.enclave_info import (
    PUBLIC_KEY_SUFFIX,
    SIGNATURE_SUFFIX,
    EnclaveInfo,
    Measurement,
)

INFO = EnclaveInfo(
    {
        "authentication": Measurement(bytes.fromhex("11" * 32), bytes.fromhex("22" * 32)),
        "frontend": Measurement(bytes.fromhex("33" * 32), bytes.fromhex("22" * 32)),
    }
)
AUDITORS = ("albus_dumbledore", "godzilla", "optimus_prime")

Kettle = Callable[..., subprocess.CompletedProcess[str]]


def flat(text: str) -> str:
    """Whitespace-normalised text (a console may wrap long lines)."""
    return " ".join(text.split())


def make_trust_home(home: Path, auditor_cache: Path) -> Path:
    """A home with enclave info in trust/, the auditors' PKCS#1 public keys beside it, keys in auditors/."""
    trust = home / "trust"
    trust.mkdir(parents=True)
    shutil.copytree(auditor_cache, home / "auditors")
    for name in AUDITORS:
        key = fast_private_key(home / "auditors" / f"{name}.key.pem")
        (trust / f"{name}{PUBLIC_KEY_SUFFIX}").write_bytes(
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
        )
    (trust / "enclave_info.toml").write_bytes(INFO.render())
    return trust / "enclave_info.toml"


def runner(home: Path) -> Kettle:
    """Run the kettle CLI with KETTLE_HOME set to ``home``."""
    env = {k: v for k, v in os.environ.items() if k != "KETTLE_CONFIG"}
    env["KETTLE_HOME"] = str(home)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "kettle", *args], env=env, capture_output=True, text=True, timeout=60
        )

    return run


@pytest.fixture(scope="module")
def signed_template(tmp_path_factory: pytest.TempPathFactory, _auditor_cache: Path) -> Path:
    """A home whose enclave info every dev auditor signed with ``kettle audit sign`` (default path and output)."""
    home = tmp_path_factory.mktemp("cli-audit") / "home"
    make_trust_home(home, _auditor_cache)
    kettle = runner(home)
    for name in AUDITORS:
        result = kettle("audit", "sign", "--key", str(home / "auditors" / f"{name}.key.pem"))
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        assert f"{name}{SIGNATURE_SUFFIX}" in flat(result.stdout)
    return home


@pytest.fixture
def home(tmp_path: Path, signed_template: Path) -> Path:
    """A private copy of the signed home (tests delete and rewrite signatures)."""
    return Path(shutil.copytree(signed_template, tmp_path / "home"))


@pytest.fixture
def unsigned_home(home: Path) -> Path:
    """The home without any signature."""
    for p in (home / "trust").glob("*" + SIGNATURE_SUFFIX):
        p.unlink()
    return home


@pytest.fixture
def kettle(home: Path) -> Kettle:
    """The CLI run against the test's home."""
    return runner(home)


def assert_one_line_error(result: subprocess.CompletedProcess[str], text: str) -> None:
    """Exit 1, a single 'error:' line containing ``text``, no traceback."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert text in lines[0]


def test_sign_then_verify(kettle: Kettle, home: Path) -> None:
    """Three auditors signed with the CLI; verify passes and lists the measurements."""
    trust = home / "trust"
    assert sorted(p.name for p in trust.glob("*" + SIGNATURE_SUFFIX)) == [f"{n}{SIGNATURE_SUFFIX}" for n in AUDITORS]
    for name in AUDITORS:
        assert len((trust / f"{name}{SIGNATURE_SUFFIX}").read_bytes()) == 512  # RSA-4096, raw binary
    result = kettle("audit", "verify")
    assert result.returncode == 0, result.stderr
    out = flat(result.stdout)
    assert "enclave info verified" in out
    assert f"authentication mr_enclave {'11' * 32} mr_signer {'22' * 32}" in out
    assert f"frontend mr_enclave {'33' * 32}" in out
    explicit = kettle("audit", "verify", str(trust / "enclave_info.toml"))
    assert explicit.returncode == 0 and "enclave info verified" in explicit.stdout


def test_verify_missing_signature(kettle: Kettle, home: Path) -> None:
    """With one signature deleted verify fails in one line; --threshold 2 then passes."""
    (home / "trust" / f"godzilla{SIGNATURE_SUFFIX}").unlink()
    result = kettle("audit", "verify")
    assert_one_line_error(result, "enclave info has 2 valid auditor signature(s), 3 required")
    assert "(valid: albus_dumbledore, optimus_prime)" in result.stderr
    assert "enclave info verified" not in result.stdout
    relaxed = kettle("audit", "verify", "--threshold", "2")
    assert relaxed.returncode == 0, relaxed.stderr
    assert "enclave info verified" in relaxed.stdout
    strict = kettle("audit", "verify", "--threshold", "3")
    assert_one_line_error(strict, "2 valid auditor signature(s), 3 required")


def test_verify_after_file_changed(kettle: Kettle, home: Path) -> None:
    """Editing one byte of the signed file voids every signature."""
    path = home / "trust" / "enclave_info.toml"
    path.write_bytes(path.read_bytes().replace(b"11", b"12", 1))
    result = kettle("audit", "verify", "--threshold", "1")
    assert_one_line_error(result, "enclave info has 0 valid auditor signature(s), 1 required")


def test_verify_without_signatures_or_keys(kettle: Kettle, unsigned_home: Path) -> None:
    """Zero signatures never pass; a directory without auditor keys is refused."""
    home = unsigned_home
    result = kettle("audit", "verify", "--threshold", "1")
    assert_one_line_error(result, "enclave info has 0 valid auditor signature(s), 1 required")
    for p in (home / "trust").glob("*" + PUBLIC_KEY_SUFFIX):
        p.unlink()
    result = kettle("audit", "verify")
    assert_one_line_error(result, "no auditor public keys (*.public.pem) beside")


@pytest.mark.parametrize(
    "content, reason",
    [
        pytest.param(b"[platform]\ndev_mode = true\n", "enclave info has an unexpected entry [platform]"),
        (b"[platform]\ndev_mode = true\n", "enclave info has an unexpected entry"),
        (b"not = toml = at all\n", "enclave info is not valid TOML"),
        pytest.param(b'[teaclave_frontend_service]\nmr_enclave = "ABC"\nmr_signer = "x"\n',
                     "[teaclave_frontend_service] mr_enclave must be 64 lowercase hex characters"),
        (b'[teaclave_frontend_service]\nmr_enclave = "ABC"\nmr_signer = "x"\n',
         "mr_enclave must be 64 lowercase hex characters"),
    ],
    ids=["other-toml-named", "other-toml", "not-toml", "bad-hex-named", "bad-hex"],
)
def test_sign_refuses_non_enclave_info(kettle: Kettle, home: Path, tmp_path: Path, content: bytes, reason: str) -> None:
    """Signing something that is not enclave info is refused and writes no signature."""
    target = tmp_path / "other" / "kettle.toml"
    target.parent.mkdir()
    target.write_bytes(content)
    result = kettle("audit", "sign", "--key", str(home / "auditors" / "godzilla.key.pem"), str(target))
    assert_one_line_error(result, reason)
    assert list(target.parent.glob("*" + SIGNATURE_SUFFIX)) == []


def test_sign_with_explicit_output(kettle: Kettle, unsigned_home: Path, tmp_path: Path) -> None:
    """--out writes the signature where asked, not beside the file."""
    home = unsigned_home
    out = tmp_path / "sig.bin"
    result = kettle("audit", "sign", "--key", str(home / "auditors" / "godzilla.key.pem"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert len(out.read_bytes()) == 512
    assert list((home / "trust").glob("*" + SIGNATURE_SUFFIX)) == []


def test_sign_with_missing_key_is_one_line(kettle: Kettle, home: Path) -> None:
    """A missing key file is a one-line error, not a traceback."""
    result = kettle("audit", "sign", "--key", str(home / "auditors" / "nobody.key.pem"))
    assert_one_line_error(result, "nobody.key.pem")


def test_config_error_names_section(kettle: Kettle, home: Path) -> None:
    """A configuration error reaches the user with the offending section named."""
    (home / "kettle.toml").write_text("[nosuch]\nx = 1\n")
    assert_one_line_error(kettle("audit", "verify"), "unknown configuration section [nosuch]")


def test_error_with_bracketed_path_is_one_line(kettle: Kettle, home: Path) -> None:
    """A path that looks like a closing markup tag still gives a one-line error."""
    result = kettle("audit", "verify", str(home / "[/x]" / "enclave_info.toml"))
    assert_one_line_error(result, "[/x]")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
def test_signature_verifies_with_openssl(kettle: Kettle, home: Path, tmp_path: Path) -> None:
    """Each signature the CLI wrote verifies with `openssl dgst -sha256 -verify` (Teaclave's format)."""
    trust = home / "trust"
    for name in AUDITORS:
        pkcs1 = trust / f"{name}{PUBLIC_KEY_SUFFIX}"
        assert pkcs1.read_text().startswith("-----BEGIN RSA PUBLIC KEY-----")
        spki = tmp_path / f"{name}.spki.pem"
        subprocess.run(
            ["openssl", "rsa", "-RSAPublicKey_in", "-in", str(pkcs1), "-pubout", "-out", str(spki)],
            check=True, capture_output=True,
        )
        verified = subprocess.run(
            ["openssl", "dgst", "-sha256", "-verify", str(spki), "-signature",
             str(trust / f"{name}{SIGNATURE_SUFFIX}"), str(trust / "enclave_info.toml")],
            capture_output=True, text=True,
        )
        assert verified.returncode == 0 and verified.stdout.strip() == "Verified OK", verified.stderr
    # and a signature by another auditor does not verify under this key
    wrong = subprocess.run(
        ["openssl", "dgst", "-sha256", "-verify", str(tmp_path / "godzilla.spki.pem"), "-signature",
         str(trust / f"optimus_prime{SIGNATURE_SUFFIX}"), str(trust / "enclave_info.toml")],
        capture_output=True, text=True,
    )
    assert wrong.returncode == 1 and "Verification failure" in wrong.stdout + wrong.stderr
