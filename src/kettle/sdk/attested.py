"""The client side of attested TLS: verify a service before the first request, then pin it.

grpcio cannot show a client the server's certificate, so a connection is made in
two steps: a TLS handshake with Python's ``ssl`` fetches the certificate, which
:class:`~kettle.attestation.verifier.Verifier` checks in full; then the grpc
channel trusts only the AS root and pins the verified measurement through its
TLS target name (``<h>.<h>.mre.<domain>``), a name the AS writes only into
certificates for evidence with exactly that measurement.

A party that does not trust the operator's AS asks for the hardware too
(``ClientTrust.from_files(..., verify_hardware=True)``): the certificate's raw TEE
evidence must then verify against the vendor roots and the auditors' measurements
(:mod:`kettle.attestation.hardware`), and the grpc channel trusts exactly the verified
certificate instead of the AS root, so no certificate the AS issues later can take its
place. When the service presents another certificate (it rotates its certificate at
half its validity, or restarts with a new key), :class:`RepinningChannel` (and
:class:`AioRepinningChannel`) verifies the new one with the same checks before it sends
anything there, and re-pins to it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Generic, Self, TypeVar

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..attestation.collateral import CollateralSource
from ..attestation.dcap import DcapPolicy
from ..attestation.enclave_info import EnclaveInfo
from ..attestation.hardware import (
    STRICT_DCAP_POLICY,
    STRICT_SNP_POLICY,
    HardwareVerdict,
    examine_hardware,
)
from ..attestation.snp import SnpPolicy, SnpRoots
from ..attestation.trust import client_enclave_info, load_as_root
from ..attestation.verifier import AttestedPeer, Verdict, Verifier
from ..config import Config, load_config
from ..errors import AttestationError, ConfigError, Unavailable
from ..rpc.channel import channel_options

HANDSHAKE_TIMEOUT_SECS = 10.0
NOT_CONNECTED = "failed to connect to all addresses"
"""How grpc's status details begin for a call that failed because no connection (handshake) succeeded."""

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HardwareTrust:
    """What a party trusts to verify a service's TEE itself, instead of the operator's AS:
    AMD's and Intel's roots shipped with Kettle (None), where collateral comes from, and the
    TEE policies. The measurements are the auditors' (enclave info)."""

    snp_roots: SnpRoots | None = None
    intel_root_der: bytes | None = None
    collateral: CollateralSource | None = None
    snp_policy: SnpPolicy = STRICT_SNP_POLICY
    dcap_policy: DcapPolicy = STRICT_DCAP_POLICY

    @classmethod
    def for_config(
        cls,
        config: Config,
        *,
        unsafe_test_roots: Path | None = None,
        collateral: CollateralSource | None = None,
        snp_policy: SnpPolicy | None = None,
        dcap_policy: DcapPolicy | None = None,
    ) -> HardwareTrust:
        """The home's ``[attestation]`` judgement of real evidence (its SNP and DCAP policy
        settings, and its ``unsafe_test_roots`` if set: the vendor roots otherwise) and, unless
        ``collateral`` is given, its collateral cache, whose fetched items verify under the
        same roots. ``unsafe_test_roots``, ``snp_policy`` and ``dcap_policy`` override the home's."""
        from ..attestation.collateral import collateral_cache
        from ..attestation_service.server import load_test_roots, tee_policy

        policy = tee_policy(config.attestation)
        snp_roots, intel_root_der = policy.snp_roots, policy.intel_root_der
        if unsafe_test_roots is not None:
            snp_roots, intel_root_der = load_test_roots(unsafe_test_roots)
        if snp_roots is not None or intel_root_der is not None:
            log.warning("UNSAFE: hardware evidence is verified under test roots, not AMD's and Intel's")
        if collateral is None:
            collateral = collateral_cache(config, snp_roots=snp_roots, intel_root_der=intel_root_der)
        return cls(snp_roots, intel_root_der, collateral, snp_policy or policy.snp, dcap_policy or policy.dcap)

    def examine(self, cert: x509.Certificate, enclave_info: EnclaveInfo, service: str, at: datetime) -> HardwareVerdict:
        return examine_hardware(
            cert, enclave_info=enclave_info, service=service, at=at,
            snp_roots=self.snp_roots, intel_root_der=self.intel_root_der, collateral=self.collateral,
            snp_policy=self.snp_policy, dcap_policy=self.dcap_policy,
        )


@dataclass(frozen=True)
class ClientTrust:
    """The two trust files (and the auditor keys beside enclave info) plus the policy."""

    as_root_path: Path
    enclave_info: EnclaveInfo
    verifier: Verifier
    hardware: HardwareTrust | None = None
    """Set: every endpoint's hardware evidence must also verify (``verify_hardware``)."""

    @classmethod
    def from_files(
        cls,
        as_root_path: Path | str,
        enclave_info_path: Path | str,
        *,
        auditor_threshold: int = 0,
        unsafe_allow_simulation: bool = False,
        unsafe_allow_test_roots: bool = False,
        accepted_statuses: tuple[str, ...] = ("OK",),
        max_report_age: timedelta = timedelta(hours=1),
        verify_hardware: bool = False,
        hardware: HardwareTrust | None = None,
    ) -> ClientTrust:
        """``verify_hardware``: also verify each service's TEE evidence against the vendor
        roots (``hardware``, default AMD's and Intel's), for a party that distrusts the operator."""
        as_root_path = Path(as_root_path)
        info = client_enclave_info(Path(enclave_info_path), auditor_threshold)
        verifier = Verifier(
            load_as_root(as_root_path),
            info,
            unsafe_allow_simulation=unsafe_allow_simulation,
            unsafe_allow_test_roots=unsafe_allow_test_roots,
            accepted_statuses=accepted_statuses,
            max_report_age=max_report_age,
        )
        if hardware is not None and not verify_hardware:
            raise ConfigError("hardware trust is given but verify_hardware is off")
        return cls(as_root_path, info, verifier, (hardware or HardwareTrust()) if verify_hardware else None)

    @classmethod
    def from_config(
        cls, config: Config | None = None, *, verify_hardware: bool = False, hardware: HardwareTrust | None = None
    ) -> ClientTrust:
        """The trust files of a Kettle home (``$KETTLE_HOME/trust``) and its attestation policy."""
        config = config or load_config()
        if verify_hardware and hardware is None:
            hardware = HardwareTrust.for_config(config)
        return cls.from_files(
            config.as_root_path,
            config.enclave_info_path,
            auditor_threshold=config.audit.threshold,
            unsafe_allow_simulation=config.attestation.unsafe_allow_simulation,
            unsafe_allow_test_roots=bool(config.attestation.unsafe_test_roots),
            accepted_statuses=config.attestation.accepted_statuses,
            max_report_age=timedelta(seconds=config.attestation.validity_secs),
            verify_hardware=verify_hardware,
            hardware=hardware,
        )

    @property
    def as_root_pem(self) -> bytes:
        return self.as_root_path.read_bytes()


@dataclass(frozen=True)
class AttestedEndpoint:
    address: str
    peer: AttestedPeer
    target_name: str
    hardware: HardwareVerdict | None = None
    pinned_certificate: bytes | None = None
    """PEM of the verified certificate when the hardware was verified: the channel's only anchor."""

    def channel(self, trust: ClientTrust) -> grpc.Channel:
        """A channel to this endpoint; pinned to the verified certificate, one that re-verifies
        and re-pins when the service presents another (:class:`RepinningChannel`)."""
        if self.pinned_certificate is not None:
            return RepinningChannel(self, trust)
        return self.fixed_channel(trust)

    def fixed_channel(self, trust: ClientTrust) -> grpc.Channel:
        """A channel that trusts the AS root, or only the pinned certificate, for good."""
        return grpc.secure_channel(self.address, self._credentials(trust), options=channel_options(self.target_name))

    def aio_channel(self, trust: ClientTrust) -> grpc.aio.Channel:
        """:meth:`channel` for asyncio (:class:`AioRepinningChannel`)."""
        if self.pinned_certificate is not None:
            return AioRepinningChannel(self, trust)
        return self.fixed_aio_channel(trust)

    def fixed_aio_channel(self, trust: ClientTrust) -> grpc.aio.Channel:
        return grpc.aio.secure_channel(self.address, self._credentials(trust), options=channel_options(self.target_name))

    def _credentials(self, trust: ClientTrust) -> grpc.ChannelCredentials:
        # grpc's TLS accepts a trusted leaf as the whole chain; trusting only the certificate
        # whose evidence was verified keeps the AS from slipping in another one for the channel.
        return grpc.ssl_channel_credentials(root_certificates=self.pinned_certificate or trust.as_root_pem)


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address must be HOST:PORT, not {address!r}")
    return host.strip("[]") or "localhost", int(port)


def fetch_certificate(address: str, as_root_path: Path | None, timeout: float = HANDSHAKE_TIMEOUT_SECS) -> bytes:
    """The server's leaf certificate (DER), after a TLS handshake that chains it to the AS root.

    ``as_root_path`` None: no chain is checked, for a party that trusts only the hardware
    evidence in the certificate. The handshake still proves the server holds the
    certificate's key (it signs the handshake with it), which the evidence binds.
    """
    host, port = split_address(address)
    context = ssl.create_default_context(cafile=None if as_root_path is None else str(as_root_path))
    # Identity comes from the attestation report (measurement), not from a host name.
    context.check_hostname = False
    if as_root_path is None:
        context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            with context.wrap_socket(sock) as tls:
                der = tls.getpeercert(binary_form=True)
    except ssl.SSLCertVerificationError as exc:
        raise AttestationError(f"{address}: TLS certificate does not chain to the pinned AS root ({exc.verify_message})") from None
    except (OSError, ssl.SSLError) as exc:
        raise Unavailable(f"cannot reach {address}: {exc}") from None
    if not der:
        raise AttestationError(f"{address} presented no certificate")
    return der


def examine_endpoint(address: str, service: str | None, trust: ClientTrust) -> tuple[Verdict, x509.Certificate]:
    der = fetch_certificate(address, trust.as_root_path)
    expected = {service} if service else None
    return trust.verifier.examine(der, expected_services=expected), x509.load_der_x509_certificate(der)


def verify_endpoint(address: str, service: str, trust: ClientTrust) -> AttestedEndpoint:
    """Verify the service at ``address`` is ``service``'s audited code; raise AttestationError otherwise.

    With ``trust.hardware`` its TEE evidence must also verify against the vendor roots.
    """
    der = fetch_certificate(address, trust.as_root_path)
    try:
        return endpoint_of(address, service, trust, der)
    except AttestationError as exc:
        raise AttestationError(f"{address}: {exc.reason}") from None


def endpoint_of(address: str, service: str, trust: ClientTrust, der: bytes) -> AttestedEndpoint:
    """The endpoint ``address`` serving certificate ``der``, if that certificate passes every check."""
    verdict = trust.verifier.examine(der, expected_services={service})
    if not verdict.ok:
        raise AttestationError(verdict.reason)
    assert verdict.peer is not None
    cert = x509.load_der_x509_certificate(der)
    target = measurement_name_of(cert, verdict.peer)
    if trust.hardware is None:
        return AttestedEndpoint(address, verdict.peer, target)
    hardware = trust.hardware.examine(cert, trust.enclave_info, service, datetime.now(UTC))
    if not hardware.ok:
        failed = next((c.name for c in hardware.checks if not c.ok), "hardware evidence")
        log.warning("%s: certificate refused by the hardware check %r: %s", address, failed, hardware.reason)
        raise AttestationError(f"hardware: {hardware.reason}")
    return AttestedEndpoint(address, verdict.peer, target, hardware, cert.public_bytes(serialization.Encoding.PEM))


def measurement_name_of(cert: x509.Certificate, peer: AttestedPeer) -> str:
    """The certificate's measurement SAN, which must name the verified measurement."""
    h = peer.mr_enclave.hex()
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    for name in names:
        if name.startswith(f"{h[:32]}.{h[32:]}.mre."):
            return name
    raise AttestationError("certificate has no measurement name for its verified measurement")


C = TypeVar("C")


class _Pin(Generic[C]):
    """The certificate a hardware-pinned channel trusts, and how it moves to a rotated one.

    A call that failed UNAVAILABLE asks :meth:`repin` to look at the certificate the service
    presents now. The same certificate: the failure is the call's (an outage). Another one:
    it must pass every check the first one passed (AS, then hardware) before the channel is
    re-pinned to it; one that fails them raises AttestationError with the reason, and no
    channel to it is made, so nothing is sent to it. Callers failing together wait for one
    re-verification and then use its channel.
    """

    def __init__(self, endpoint: AttestedEndpoint, trust: ClientTrust, make: Callable[[AttestedEndpoint], C]) -> None:
        if endpoint.pinned_certificate is None:
            raise ConfigError("a re-pinning channel needs an endpoint whose hardware was verified")
        self._trust, self._make = trust, make
        self._lock = threading.Lock()
        # One tuple, replaced whole: callers read it without the lock, so no call (nor an
        # event loop) waits while a rotated certificate is being verified.
        self._state: tuple[int, AttestedEndpoint] = (0, endpoint)
        # Made in the caller's thread (an asyncio channel belongs to its loop), one per pin,
        # and kept open until the channel closes: calls in flight on an old connection finish there.
        self._made: dict[int, C] = {}
        self._making = threading.Lock()
        self._closed = False

    @property
    def endpoint(self) -> AttestedEndpoint:
        return self._state[1]

    def current(self) -> tuple[int, C]:
        """The generation of the pin and its channel."""
        generation, endpoint = self._state
        with self._making:
            if self._closed:
                raise ValueError("the channel is closed")  # as grpc says of a closed channel
            channel = self._made.get(generation)
            if channel is None:
                channel = self._made[generation] = self._make(endpoint)
        return generation, channel

    def repin(self, failed_generation: int) -> bool:
        """After a call on ``failed_generation`` failed UNAVAILABLE: whether a verified new
        certificate is pinned now. Raises AttestationError when the service presents a
        certificate that fails verification."""
        with self._lock:
            generation, endpoint = self._state
            if generation != failed_generation:
                return True  # another caller re-verified while this one waited
            try:
                der = fetch_certificate(endpoint.address, self._trust.as_root_path)
            except Unavailable:
                return False  # the service is down: the call's own error says so
            except AttestationError as exc:
                raise self._refused(endpoint.address, exc) from None
            pinned = x509.load_pem_x509_certificate(endpoint.pinned_certificate or b"")
            if der == pinned.public_bytes(serialization.Encoding.DER):
                return False  # still the verified certificate: not a rotation
            try:
                verified = endpoint_of(endpoint.address, endpoint.peer.service, self._trust, der)
            except AttestationError as exc:
                raise self._refused(endpoint.address, exc) from None
            log.info("%s presents a new certificate; it passed the hardware checks and the channel is re-pinned to it",
                     endpoint.address)
            self._state = (generation + 1, verified)
            return True

    @staticmethod
    def _refused(address: str, exc: AttestationError) -> AttestationError:
        return AttestationError(
            f"{address} presents a new certificate that fails verification, so nothing is sent to it "
            f"({exc.reason}); verify the service again once it presents a verifiable certificate"
        )

    def made(self) -> list[C]:
        with self._making:
            return list(self._made.values())

    def close(self) -> list[C]:
        """Every channel made, to close; no call is made afterwards."""
        with self._making:
            made = list(self._made.values())
            self._made.clear()
            self._closed = True
        return made


def _never_sent(exc: grpc.RpcError) -> bool:
    """Whether a failed call may be made again: grpc never connected, so never sent it. A call
    cut off on a connection (a service restarting with a new key mid-call) may have taken effect."""
    return (exc.details() or "").startswith(NOT_CONNECTED)  # type: ignore[attr-defined]


def _unavailable(exc: grpc.RpcError) -> bool:
    return exc.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined,no-any-return]


class RepinningChannel(grpc.Channel):
    """A channel pinned to the verified certificate that follows the service's certificate rotation.

    A blocking unary call that fails UNAVAILABLE lets :class:`_Pin` re-verify and re-pin; the
    call is then made again, once, if it was never sent (:func:`_never_sent`). The old pinned
    channel cannot complete a handshake with another certificate, and servers retire old
    connections gracefully, so calls in flight on them finish. ``future()`` and streaming
    calls use the current pin; the next blocking call re-pins.
    """

    def __init__(self, endpoint: AttestedEndpoint, trust: ClientTrust) -> None:
        self._pin = _Pin(endpoint, trust, lambda e: e.fixed_channel(trust))

    @property
    def endpoint(self) -> AttestedEndpoint:
        """The endpoint as last verified; its ``pinned_certificate`` is the one trusted now."""
        return self._pin.endpoint

    def unary_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                    _registered_method: bool | None = False) -> grpc.UnaryUnaryMultiCallable:
        return _RepinningUnaryUnary(self._pin, lambda c: c.unary_unary(method, request_serializer, response_deserializer))

    def unary_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> grpc.UnaryStreamMultiCallable:
        return _OnCurrent(self._pin, lambda c: c.unary_stream(method, request_serializer, response_deserializer))  # type: ignore[return-value]

    def stream_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> grpc.StreamUnaryMultiCallable:
        return _OnCurrent(self._pin, lambda c: c.stream_unary(method, request_serializer, response_deserializer))  # type: ignore[return-value]

    def stream_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                      _registered_method: bool | None = False) -> grpc.StreamStreamMultiCallable:
        return _OnCurrent(self._pin, lambda c: c.stream_stream(method, request_serializer, response_deserializer))  # type: ignore[return-value]

    def subscribe(self, callback: Callable[[grpc.ChannelConnectivity], None], try_to_connect: bool = False) -> None:
        self._pin.current()[1].subscribe(callback, try_to_connect)

    def unsubscribe(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        # From whichever pin it subscribed to; nothing once closed (grpc's channel_ready_future
        # unsubscribes when collected, after the channel may have closed).
        for channel in self._pin.made():
            channel.unsubscribe(callback)

    def close(self) -> None:
        for channel in self._pin.close():
            channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _OnCurrent:
    """A call on the channel pinned now, without re-pinning."""

    def __init__(self, pin: _Pin[Any], callable_on: Callable[[Any], Any]) -> None:
        self._pin, self._callable_on = pin, callable_on

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._callable_on(self._pin.current()[1])(*args, **kwargs)


class _RepinningUnaryUnary(grpc.UnaryUnaryMultiCallable):
    def __init__(self, pin: _Pin[grpc.Channel], callable_on: Callable[[grpc.Channel], Any]) -> None:
        self._pin, self._callable_on = pin, callable_on

    def _made_again(self, call: Callable[[grpc.UnaryUnaryMultiCallable], Any]) -> Any:
        generation, channel = self._pin.current()
        try:
            return call(self._callable_on(channel))
        except grpc.RpcError as exc:
            if not _unavailable(exc) or not self._pin.repin(generation) or not _never_sent(exc):
                raise
        return call(self._callable_on(self._pin.current()[1]))

    def __call__(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        return self._made_again(lambda c: c(request, *args, **kwargs))

    def with_call(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        return self._made_again(lambda c: c.with_call(request, *args, **kwargs))

    def future(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        # A future's failure arrives after this returns: it cannot be made again here.
        return self._callable_on(self._pin.current()[1]).future(request, *args, **kwargs)


class AioRepinningChannel(grpc.aio.Channel):
    """:class:`RepinningChannel` for asyncio: a unary call re-pins and is made again the same way
    (its verification runs in a thread, so the event loop keeps serving other calls). The
    call returns an awaitable of the response rather than grpc's call object."""

    def __init__(self, endpoint: AttestedEndpoint, trust: ClientTrust) -> None:
        self._pin = _Pin(endpoint, trust, lambda e: e.fixed_aio_channel(trust))

    @property
    def endpoint(self) -> AttestedEndpoint:
        return self._pin.endpoint

    def unary_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                    _registered_method: bool | None = False) -> Any:
        return _AioRepinningUnaryUnary(self._pin, lambda c: c.unary_unary(method, request_serializer, response_deserializer))

    def unary_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> Any:
        return _OnCurrent(self._pin, lambda c: c.unary_stream(method, request_serializer, response_deserializer))

    def stream_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> Any:
        return _OnCurrent(self._pin, lambda c: c.stream_unary(method, request_serializer, response_deserializer))

    def stream_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                      _registered_method: bool | None = False) -> Any:
        return _OnCurrent(self._pin, lambda c: c.stream_stream(method, request_serializer, response_deserializer))

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._pin.current()[1].get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._pin.current()[1].wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self._pin.current()[1].channel_ready()

    async def close(self, grace: float | None = None) -> None:
        for channel in self._pin.close():
            await channel.close(grace)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class _AioRepinningUnaryUnary:
    def __init__(self, pin: _Pin[grpc.aio.Channel], callable_on: Callable[[grpc.aio.Channel], Any]) -> None:
        self._pin, self._callable_on = pin, callable_on

    def __call__(self, request: Any, **kwargs: Any) -> Any:
        return self._made_again(request, kwargs)

    async def _made_again(self, request: Any, kwargs: dict[str, Any]) -> Any:
        generation, channel = self._pin.current()
        try:
            return await self._callable_on(channel)(request, **kwargs)
        except grpc.RpcError as exc:
            if not _unavailable(exc) or not await asyncio.to_thread(self._pin.repin, generation) or not _never_sent(exc):
                raise
        return await self._callable_on(self._pin.current()[1])(request, **kwargs)
