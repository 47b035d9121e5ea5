"""Attested signatures (``kettle.attestation.signed``): a service signs with its attested
key, anyone verifies offline with only the AS root and enclave info.

Real keys, a real in-process attestation service issuing real certificates on
simulation evidence; every refusal asserts the specific reason.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from attested_identities import AttestedHome, attested_home

from kettle.attestation.enclave_info import EnclaveInfo
from kettle.attestation.signed import (
    AttestedSignature,
    examine_signature,
    sign,
    signing_statement,
    verify_signature,
)
from kettle.errors import AttestationError

PURPOSE = "test statement v1"
PAYLOAD = b'{"hello":"world"}'


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, _auditor_cache: Path) -> AttestedHome:
    return attested_home(tmp_path_factory.mktemp("signed-home"), _auditor_cache)


@pytest.fixture(scope="module")
def issued_at() -> float:
    return time.time() - 60


@pytest.fixture(scope="module")
def signed(home: AttestedHome, issued_at: float) -> AttestedSignature:
    identity = home.identity("execution", issued_at)
    return sign(identity, PURPOSE, PAYLOAD, now=datetime.fromtimestamp(issued_at + 10, UTC))


def check(home: AttestedHome, signed: AttestedSignature, at: float, payload: bytes = PAYLOAD,
          service: str = "execution", info: EnclaveInfo | None = None) -> list[tuple[str, bool]]:
    verdict = examine_signature(signed, payload, purpose=PURPOSE, expected_service=service,
                                verifier=home.verifier(at, info=info))
    return [(c.name, c.ok) for c in verdict.checks]


def reason(home: AttestedHome, signed: AttestedSignature, at: float, payload: bytes = PAYLOAD,
           service: str = "execution", info: EnclaveInfo | None = None) -> str:
    with pytest.raises(AttestationError) as exc:
        verify_signature(signed, payload, purpose=PURPOSE, expected_service=service,
                         verifier=home.verifier(at, info=info))
    return exc.value.reason


def test_a_signature_verifies_with_every_check_named(home: AttestedHome, signed: AttestedSignature,
                                                     issued_at: float) -> None:
    assert check(home, signed, issued_at + 20) == [
        ("purpose", True), ("signing time", True), ("certificate validity", True), ("certificate chain", True),
        ("report signer", True), ("report signature", True), ("report data", True), ("quote status", True),
        ("report age", True), ("tee", True), ("measurement", True), ("signature", True),
    ]
    signer = verify_signature(signed, PAYLOAD, purpose=PURPOSE, expected_service="execution",
                              verifier=home.verifier(issued_at + 20))
    assert signer.service == "execution"


def test_the_json_form_round_trips_and_is_what_verifies(home: AttestedHome, signed: AttestedSignature,
                                                        issued_at: float) -> None:
    again = AttestedSignature.from_json(json.loads(json.dumps(signed.to_json())))
    assert again == signed
    verify_signature(again, PAYLOAD, purpose=PURPOSE, expected_service="execution",
                     verifier=home.verifier(issued_at + 20))


def test_a_signature_outlives_its_short_lived_certificate(home: AttestedHome, signed: AttestedSignature,
                                                          issued_at: float) -> None:
    """Judged as of the signing time: a year later the certificate has long expired, the receipt still verifies."""
    later = issued_at + 365 * 24 * 3600
    assert signed.certificates[0].not_valid_after_utc < datetime.fromtimestamp(later, UTC)
    verify_signature(signed, PAYLOAD, purpose=PURPOSE, expected_service="execution", verifier=home.verifier(later))


def test_changed_content_or_purpose_is_refused(home: AttestedHome, signed: AttestedSignature, issued_at: float) -> None:
    assert reason(home, signed, issued_at + 20, payload=PAYLOAD + b" ") == \
        "the signature does not match the signed content and the certificate's key"
    assert reason(home, replace(signed, purpose="other purpose"), issued_at + 20) == \
        "signed for 'other purpose', not 'test statement v1'"


def test_a_moved_signing_time_is_refused(home: AttestedHome, signed: AttestedSignature, issued_at: float) -> None:
    inside = replace(signed, signed_at=signed.signed_at + timedelta(seconds=1))
    assert reason(home, inside, issued_at + 20) == \
        "the signature does not match the signed content and the certificate's key"
    outside = replace(signed, signed_at=signed.signed_at + timedelta(hours=3))
    assert reason(home, outside, issued_at + 4 * 3600).startswith("certificate expired at ")
    future = replace(signed, signed_at=datetime.fromtimestamp(issued_at + 3600, UTC))
    assert reason(home, future, issued_at + 20).endswith("is in the future")


def test_another_service_is_not_the_expected_signer(home: AttestedHome, issued_at: float) -> None:
    """The management service's attested key makes a valid signature, but not an execution node's."""
    management = sign(home.identity("management", issued_at), PURPOSE, PAYLOAD,
                      now=datetime.fromtimestamp(issued_at + 5, UTC))
    assert reason(home, management, issued_at + 20) == "peer is management, expected execution"


def test_the_chain_must_reach_the_pinned_root(home: AttestedHome, signed: AttestedSignature, issued_at: float,
                                              tmp_path: Path, _auditor_cache: Path) -> None:
    assert reason(home, replace(signed, certificates=signed.certificates[:1]), issued_at + 20) == \
        "the signature carries no chain to the AS root"
    stranger = attested_home(tmp_path / "stranger", _auditor_cache)
    foreign = sign(stranger.identity("execution", issued_at), PURPOSE, PAYLOAD,
                   now=datetime.fromtimestamp(issued_at + 5, UTC))
    assert "does not chain to the pinned AS root" in reason(home, foreign, issued_at + 20)
    spliced = replace(signed, certificates=(foreign.certificates[0], *signed.certificates[1:]))
    assert "does not chain to the pinned AS root" in reason(home, spliced, issued_at + 20)


def test_a_measurement_no_longer_in_enclave_info_is_refused(home: AttestedHome, signed: AttestedSignature,
                                                            issued_at: float) -> None:
    without = EnclaveInfo({k: v for k, v in home.info.services.items() if k != "execution"})
    assert reason(home, signed, issued_at + 20, info=without).endswith("does not match enclave info for execution")


def test_a_service_cannot_sign_outside_its_certificate(home: AttestedHome, issued_at: float) -> None:
    identity = home.identity("execution", issued_at)
    with pytest.raises(AttestationError, match="certificate is not valid at"):
        sign(identity, PURPOSE, PAYLOAD, now=datetime.fromtimestamp(issued_at + 2 * 3600, UTC))


def test_the_statement_binds_purpose_time_and_payload() -> None:
    at = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)
    statement = signing_statement("p", at, b"x")
    assert statement == (b'kettle attested signature v1\n{"payload_sha256":'
                         b'"2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881",'
                         b'"purpose":"p","signed_at":"2026-01-31T12:00:00.000000Z"}')


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("purpose"), "signature must have exactly purpose"),
    (lambda d: d.update(purpose=""), "signature purpose must be 1 to 128 characters"),
    (lambda d: d.update(signed_at="2026-01-31 12:00:00"), "signed_at must be UTC like"),
    (lambda d: d.update(signature="***"), "signature is not valid base64"),
    (lambda d: d.update(signature="QUJD" * 40), "signature must be 1 to 80 bytes"),
    (lambda d: d.update(certificates=[]), "signature must carry 1 to 4 certificates"),
    (lambda d: d.update(certificates=["QUJD"]), "certificate 0 of the signature is not a DER certificate"),
])
def test_malformed_signatures_are_refused_specifically(signed: AttestedSignature, change: Any, message: str) -> None:
    doc = signed.to_json()
    change(doc)
    with pytest.raises(AttestationError, match=message):
        AttestedSignature.from_json(doc)
