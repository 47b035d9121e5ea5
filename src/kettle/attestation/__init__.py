"""Attestation: TEE evidence, reports, attested certificates, enclave info and their verification."""
