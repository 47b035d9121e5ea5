"""The attestation service's HTTPS API: Teaclave's DCAP-AS report call, and hostile requests."""

from __future__ import annotations

import base64
import http.client
import json
import urllib.parse

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from conftest import Platform
from kettle.attestation.backends import SimulationBackend
from kettle.attestation.identity import as_tls_context
from kettle.attestation.measurement import SIMULATION_MR_SIGNER
from kettle.attestation.quote import QuoteBody
from kettle.attestation.report import ReportContent
from kettle.attestation.verifier import chain_to_root


def _post(platform: Platform, path: str, body: bytes, content_length: str | None = None) -> tuple[int, dict[str, str], bytes]:
    url = urllib.parse.urlsplit(platform.config.attestation.service_url)
    conn = http.client.HTTPSConnection(url.hostname, url.port, timeout=10, context=as_tls_context(platform.config.as_root_path))
    try:
        conn.putrequest("POST", path)
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", content_length if content_length is not None else str(len(body)))
        conn.endheaders()
        conn.send(body)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def test_teaclave_report_endpoint_signs_a_verifiable_report(platform: Platform) -> None:
    """spec/attestation.md §2.4/§2.5: same endpoint, request and response shape as Teaclave's DCAP AS."""
    backend = SimulationBackend(platform.home, b"\x11" * 32, SIMULATION_MR_SIGNER, "authentication")
    quote = backend.evidence(b"\x22" * 64).quote
    body = json.dumps({"isvEnclaveQuote": base64.b64encode(quote).decode()}).encode()
    status, headers, report = _post(platform, "/sgx/dev/attestation/v4/report", body)
    assert status == 200, report
    signature = base64.b64decode(headers["x-dcapreport-signature"])
    signing = x509.load_pem_x509_certificates(urllib.parse.unquote(headers["x-dcapreport-signing-certificate"]).encode())
    signing[0].public_key().verify(signature, report, padding.PKCS1v15(), hashes.SHA256())  # type: ignore[call-arg, union-attr]
    root = x509.load_pem_x509_certificate(platform.config.as_root_path.read_bytes())
    assert chain_to_root(signing[0], signing[1:], root, signing[0].not_valid_before_utc) is None
    content = ReportContent.parse(report)
    assert content.status == "OK" and content.simulation
    body_fields = QuoteBody.parse(content.quote_body)
    assert body_fields.mr_enclave == b"\x11" * 32 and body_fields.report_data == b"\x22" * 64
    assert sorted(json.loads(report))[:5] == ["id", "isvEnclaveQuoteBody", "isvEnclaveQuoteStatus", "kettleSimulation", "kettleTeeType"]


@pytest.mark.parametrize(
    ("path", "body", "length", "status", "reason"),
    [
        ("/kettle/v1/certificate", b"{not json", None, 400, "request body is not valid JSON"),
        ("/kettle/v1/certificate", b"[1, 2]", None, 400, "request body must be a JSON object"),
        ("/kettle/v1/certificate", b"[" * 60000, None, 400, "request body is JSON nested too deeply"),
        ("/kettle/v1/certificate", b'{"service": "storage"}', None, 400, "service, csr, tee_type and evidence are required strings"),
        ("/kettle/v1/certificate", b'{"service":"storage","csr":"x","tee_type":"simulation","evidence":"@@"}', None, 400, "evidence is not base64"),
        ("/kettle/v1/certificate", b'{"service":"nope","csr":"x","tee_type":"simulation","evidence":"AA=="}', None, 400, "unknown service 'nope'"),
        ("/kettle/v1/certificate", b'{"service":"storage","csr":"x","tee_type":"simulation","evidence":"AA=="}', None, 400, "certificate signing request is not valid PEM"),
        ("/kettle/v1/certificate", b"{}", "999999999", 400, "request body must be between 1 and 65536 bytes"),
        ("/sgx/dev/attestation/v4/report", b'{"isvEnclaveQuote": 5}', None, 400, "isvEnclaveQuote must be a base64 quote"),
        ("/sgx/dev/attestation/v4/report", b'{"isvEnclaveQuote": "AAAA"}', None, 400, "simulation quote is truncated"),
        ("/nowhere", b"{}", None, 404, "no such endpoint"),
    ],
)
def test_hostile_requests_get_specific_errors(
    platform: Platform, path: str, body: bytes, length: str | None, status: int, reason: str
) -> None:
    got_status, _, got_body = _post(platform, path, body, length)
    assert (got_status, json.loads(got_body)["error"]) == (status, reason)
    assert platform.child("attestation").process.poll() is None
