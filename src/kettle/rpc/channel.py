"""Channels from one service to another over mutually attested TLS.

The channel trusts only the AS root and pins the peer's exact measurement: the
TLS target name is the measurement name (``<h>.<h>.mre.<domain>``) of the peer
service's entry in the verified enclave info, a name only the AS puts in a
certificate, and only after checking the peer's evidence. The channel presents
this service's own attested certificate, and is rebuilt when it rotates.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from ..attestation.certificates import measurement_dns_name
from ..attestation.enclave_info import EnclaveInfo
from ..attestation.identity import Identity, IdentityManager
from ..config import Config
from .server import MAX_PAYLOAD_MESSAGE_BYTES

log = logging.getLogger(__name__)

OLD_CHANNEL_GRACE_SECS = 30.0


def channel_options(target_name: str) -> list[tuple[str, object]]:
    return [
        ("grpc.ssl_target_name_override", target_name),
        # The largest any endpoint accepts: each endpoint enforces its own limit.
        ("grpc.max_send_message_length", MAX_PAYLOAD_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_PAYLOAD_MESSAGE_BYTES),
        ("grpc.enable_retries", 1),
        # A restarted peer is found again within about 2 s, not after grpc's default
        # backoff that grows to two minutes.
        ("grpc.initial_reconnect_backoff_ms", 250),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]


class PeerChannels:
    """One cached channel per peer service, re-made whenever this service's identity rotates."""

    def __init__(self, config: Config, identities: IdentityManager, enclave_info: EnclaveInfo, as_root_pem: bytes) -> None:
        self._config = config
        self._identities = identities
        self._enclave_info = enclave_info
        self._as_root_pem = as_root_pem
        self._channels: dict[str, tuple[int, grpc.aio.Channel]] = {}

    def channel(self, peer_service: str) -> grpc.aio.Channel:
        identity = self._identities.current
        cached = self._channels.get(peer_service)
        if cached is not None and cached[0] == identity.generation:
            return cached[1]
        channel = self._make(peer_service, identity)
        self._channels[peer_service] = (identity.generation, channel)
        if cached is not None:
            # In-flight calls on the old channel finish; it closes after a grace period.
            asyncio.get_running_loop().call_later(
                OLD_CHANNEL_GRACE_SECS, lambda: asyncio.ensure_future(cached[1].close())
            )
        return channel

    def _make(self, peer_service: str, identity: Identity) -> grpc.aio.Channel:
        expected = self._enclave_info.measurement(peer_service)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self._as_root_pem,
            private_key=identity.key_pem,
            certificate_chain=identity.client_chain_pem,
        )
        target = self._config.endpoint(peer_service).target
        return grpc.aio.secure_channel(
            target,
            credentials,
            options=channel_options(measurement_dns_name(expected.mr_enclave, self._config.domain)),
        )

    async def close(self) -> None:
        for _, channel in self._channels.values():
            await channel.close()
        self._channels.clear()
