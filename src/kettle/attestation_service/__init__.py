"""The reference attestation service: verifies TEE evidence and issues attested certificates."""
