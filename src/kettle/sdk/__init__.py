"""Kettle's Python SDK: attested channels to the platform and clients for its APIs.

Every client verifies the service it talks to before its first request: chain to
the pinned AS root only, the report's signature, report data bound to the TLS
key, the measurement against auditor-signed enclave info, report status and age.
"""

from .attested import AttestedEndpoint, ClientTrust, verify_endpoint
from .authentication import AsyncAuthenticationClient, AuthenticationClient

__all__ = [
    "AsyncAuthenticationClient",
    "AttestedEndpoint",
    "AuthenticationClient",
    "ClientTrust",
    "verify_endpoint",
]
