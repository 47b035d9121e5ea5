"""gRPC servers over attested TLS, with certificate rotation that never drops the service.

API endpoints (user-facing) present the service's attested certificate and do not
ask for a client certificate, so Teaclave's SDK can connect. Internal endpoints
require a client certificate under the AS root and run
:class:`~kettle.rpc.interceptors.PeerAttestationInterceptor`. Both pick up a
rotated certificate for every new handshake (``dynamic_ssl_server_credentials``),
and connections are aged out so old certificates stop being used.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from ..attestation.identity import Identity, IdentityManager
from .interceptors import MalformedRequestInterceptor

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""What an endpoint accepts by default (gRPC's own default): enough for every request
that carries no function payload, e.g. a login."""
MAX_PAYLOAD_MESSAGE_BYTES = 64 * 1024 * 1024
"""What endpoints on a function payload's way accept, and what every channel sends and
receives. A payload (at most ``kettle.model.functions.MAX_PAYLOAD_BYTES``, 16 MiB) grows
on the way: base64 in the staged task (4/3), again in the scheduler's lease record."""
PAYLOAD_SERVICES = frozenset({"frontend", "management", "storage", "scheduler"})


def max_message_bytes(service: str) -> int:
    """The largest message ``service``'s endpoints accept."""
    return MAX_PAYLOAD_MESSAGE_BYTES if service in PAYLOAD_SERVICES else MAX_MESSAGE_BYTES


class RotatingCredentials:
    """Hands grpc the newest certificate; grpc calls the fetcher from its own threads on each handshake."""

    def __init__(self, identities: IdentityManager, client_roots: bytes | None) -> None:
        self._lock = threading.Lock()
        self._served_generation = identities.current.generation
        self._latest: Identity = identities.current
        self._client_roots = client_roots
        identities.on_rotate(self._rotated)
        self.credentials = grpc.dynamic_ssl_server_credentials(
            self._configuration(self._latest),
            self._fetch,
            require_client_authentication=client_roots is not None,
        )

    def _configuration(self, identity: Identity) -> Any:
        return grpc.ssl_server_certificate_configuration(
            [(identity.key_pem, identity.chain_pem)], root_certificates=self._client_roots
        )

    def _rotated(self, identity: Identity) -> None:
        with self._lock:
            self._latest = identity

    def _fetch(self) -> Any:
        with self._lock:
            if self._latest.generation == self._served_generation:
                return None
            self._served_generation = self._latest.generation
            return self._configuration(self._latest)


def server_options(validity_secs: int, max_message: int = MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    # Connections older than a quarter of the validity are closed gracefully, so no
    # connection outlives the certificate it was made with.
    age_ms = max(1000, validity_secs * 1000 // 4)
    return [
        ("grpc.max_send_message_length", max_message),
        ("grpc.max_receive_message_length", max_message),
        ("grpc.max_connection_age_ms", age_ms),
        ("grpc.max_connection_age_grace_ms", 30_000),
        ("grpc.so_reuseport", 0),
    ]


def attested_server(
    identities: IdentityManager,
    listen_address: str,
    register: Callable[[grpc.aio.Server], None],
    *,
    client_roots: bytes | None,
    validity_secs: int,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    max_message: int = MAX_MESSAGE_BYTES,
) -> grpc.aio.Server:
    """A grpc.aio server (not yet started) bound to ``listen_address`` with attested TLS."""
    # The attestation gate (internal endpoints) runs first; then malformed bytes are refused.
    chain = [*interceptors, MalformedRequestInterceptor()]
    server = grpc.aio.server(interceptors=chain, options=server_options(validity_secs, max_message))
    register(server)
    credentials = RotatingCredentials(identities, client_roots)
    if server.add_secure_port(listen_address, credentials.credentials) == 0:
        raise OSError(f"cannot listen on {listen_address}")
    return server
