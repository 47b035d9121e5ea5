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

A peer with several replicas (``advertised_address`` as a list) is one channel
over all of them: gRPC's round-robin spreads calls over the connected replicas
and leaves out one that is down, and gRPC's own retry sends a call that failed
UNAVAILABLE to another replica, for the methods where a second try cannot apply
anything twice (:data:`RETRY_SAFE_METHODS`). Any other call that fails mid-way
is the caller's UNAVAILABLE, as with one replica: whether it was applied is not
known, so it is not silently tried again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket

import grpc

from ..attestation.certificates import measurement_dns_name
from ..attestation.enclave_info import EnclaveInfo
from ..attestation.identity import Identity, IdentityManager
from ..config import SERVICES, Config
from ..errors import ServiceUnavailable, unavailable_message
from .server import MAX_PAYLOAD_MESSAGE_BYTES

log = logging.getLogger(__name__)

OLD_CHANNEL_GRACE_SECS = 30.0


RETRY_SAFE_METHODS: dict[str, tuple[str, ...]] = {
    # Not Put or Delete: a late second try could undo another writer's change made in between.
    "kettle_storage_proto.KettleStorage": ("Get", "GetKeysByPrefix", "Ack", "Watch"),
    "kettle_management_proto.KettleManagement": (
        "GetOutputFile", "GetInputFile", "GetFunction", "GetFunctionUsageStats", "ListFunctions", "GetTask",
        "QueryAuditLogs", "WaitTask", "ListMyTrail", "ListMyTasks", "ListMyFiles",
    ),
    "kettle_access_control_proto.KettleAccessControl": ("AuthorizeApi",),
    "teaclave_authentication_service_proto.TeaclaveAuthenticationInternal": ("UserAuthenticate",),
    # A repeated status or result is discarded by the scheduler's rules (only the lease holder's
    # first report counts), and a heartbeat only renews; a PullTask hands out work, so it is not here.
    "kettle_scheduler_proto.KettleScheduler": ("Heartbeat", "UpdateTaskStatus", "UpdateTaskResult"),
}
"""Per gRPC service, the methods a replica may be asked again after another failed UNAVAILABLE:
reads, and writes whose repetition changes nothing."""


def replica_service_config() -> str:
    """gRPC service config of a channel over several replicas: round-robin, and retry on
    UNAVAILABLE for :data:`RETRY_SAFE_METHODS`."""
    return json.dumps({
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [{
            "name": [{"service": service, "method": method} for service, methods in RETRY_SAFE_METHODS.items()
                     for method in methods],
            "retryPolicy": {
                "maxAttempts": 3,
                "initialBackoff": "0.05s",
                "maxBackoff": "0.5s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }],
    })


def replica_target(targets: tuple[str, ...]) -> str:
    """The gRPC target naming every replica (``ipv4:a:p,b:p``); names are resolved now.

    gRPC's round-robin balances over the addresses of one target, so the replicas'
    ``host:port`` are resolved into one address list. A replica whose name does not
    resolve is left out and logged (the others still serve); it is looked up again
    when the channel is next made, at the next certificate rotation.
    """
    if len(targets) == 1:
        return targets[0]
    v4: list[str] = []
    v6: list[str] = []
    for target in targets:
        host, _, port = target.rpartition(":")
        host = host.strip("[]")
        try:
            infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except (OSError, ValueError) as exc:
            log.warning("replica %s is left out: its name does not resolve (%s)", target, exc)
            continue
        for family, _, _, _, sockaddr in infos:
            address = ipaddress.ip_address(sockaddr[0])
            if family == socket.AF_INET and f"{address}:{port}" not in v4:
                v4.append(f"{address}:{port}")
            elif family == socket.AF_INET6 and f"[{address}]:{port}" not in v6:
                v6.append(f"[{address}]:{port}")
    # One URI holds one address family; IPv4 wherever a replica has it.
    if v4:
        return "ipv4:" + ",".join(v4)
    if v6:
        return "ipv6:" + ",".join(v6)
    return targets[0]  # nothing resolves: the first name, whose failure then reads as an outage


def channel_options(target_name: str, *, replicas: bool = False) -> list[tuple[str, object]]:
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
        *([("grpc.service_config", replica_service_config())] if replicas else []),
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
            log.warning("%s is unreachable at %s", peer_service, ", ".join(self._config.endpoint(peer_service).targets))
            raise ServiceUnavailable(peer_service) from None
        return channel

    def _make(self, peer_service: str, identity: Identity) -> grpc.aio.Channel:
        expected = self._enclave_info.measurement(peer_service)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self._as_root_pem,
            private_key=identity.key_pem,
            certificate_chain=identity.client_chain_pem,
        )
        targets = self._config.endpoint(peer_service).targets
        return grpc.aio.secure_channel(
            replica_target(targets),
            credentials,
            options=channel_options(measurement_dns_name(expected.mr_enclave, self._config.domain),
                                    replicas=len(targets) > 1),
        )

    async def close(self) -> None:
        for _, channel in self._channels.values():
            await channel.close()
        self._channels.clear()
