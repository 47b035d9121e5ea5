"""Channels from one service to another over mutually attested TLS.

The channel trusts only the AS root and pins the peer's exact measurement: the
TLS target name is the measurement name (``<h>.<h>.mre.<domain>``) of the peer
service's entry in the verified enclave info, a name only the AS puts in a
certificate, and only after checking the peer's evidence. The channel presents
this service's own attested certificate, and is rebuilt when it rotates.

A call to a peer first asks :meth:`PeerChannels.ready`: a connected channel
answers at once; otherwise the channel gets ``[peers] connect_timeout_ms`` to
(re)connect, so a peer restarted within that window is found again without an
error, and a peer that stays down is :class:`ServiceUnavailable` naming it. The
call itself then runs without ``wait_for_ready``: a connection lost mid-call
fails at once (UNAVAILABLE) instead of waiting out the call's deadline, which
stays long for calls that are legitimately slow once connected.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from ..attestation.certificates import measurement_dns_name
from ..attestation.enclave_info import EnclaveInfo
from ..attestation.identity import Identity, IdentityManager
from ..config import SERVICES, Config
from ..errors import ServiceUnavailable, unavailable_message
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
        # A restarted peer is found again within about a second, not after grpc's default
        # backoff that grows to two minutes; well inside the connect timeout of a call.
        ("grpc.initial_reconnect_backoff_ms", 250),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]


_OUTAGE_SENTENCES = frozenset(unavailable_message(service) for service in SERVICES)


def names_unavailable_service(details: str | None) -> bool:
    """Whether a status text is a Kettle service's own outage sentence ("the storage service
    is unavailable; ..."), which a caller passes on as it is, rather than a transport error
    of the call itself, which the caller reports as its peer being unavailable."""
    return details in _OUTAGE_SENTENCES


def peer_outage(peer_service: str, exc: grpc.RpcError) -> ServiceUnavailable | None:
    """The outage a failed call to ``peer_service`` shows, if it shows one.

    UNAVAILABLE naming a service (the peer's own dependency is down) keeps that name;
    any other UNAVAILABLE, or a deadline the connected peer let pass, means the peer
    itself is unavailable. Every other status is the peer's answer, not an outage.
    """
    code = exc.code()
    if code == grpc.StatusCode.UNAVAILABLE and names_unavailable_service(exc.details()):
        named = next(s for s in SERVICES if unavailable_message(s) == exc.details())
        return ServiceUnavailable(named)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return ServiceUnavailable(peer_service)
    return None


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

    async def ready(self, peer_service: str) -> grpc.aio.Channel:
        """The channel to ``peer_service`` once it is connected.

        Raises :class:`ServiceUnavailable` naming the peer when it cannot be connected
        within ``[peers] connect_timeout_ms``.
        """
        channel = self.channel(peer_service)
        if channel.get_state(try_to_connect=True) == grpc.ChannelConnectivity.READY:
            return channel
        try:
            await asyncio.wait_for(channel.channel_ready(), self._config.peers.connect_timeout_ms / 1000)
        except TimeoutError:
            log.warning("%s is unreachable at %s", peer_service, self._config.endpoint(peer_service).target)
            raise ServiceUnavailable(peer_service) from None
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
