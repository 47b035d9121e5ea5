"""What every platform service does around its own job: trust, attestation, serving, shutdown.

A service refuses to start unless enclave info carries enough auditor
signatures (from the keys in its measured build configuration), measures its own
code, gets an attested certificate from the AS, and only then listens. It
signals readiness to a launcher through ``KETTLE_READY_FD`` and stops cleanly on
SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ..attestation.backends import SIMULATION, EvidenceProvider, SimulationBackend
from ..attestation.build import BuildConfig
from ..attestation.enclave_info import EnclaveInfo
from ..attestation.identity import IdentityManager
from ..attestation.measurement import SIMULATION_MR_SIGNER, measure_service
from ..attestation.providers import (
    AUTO,
    GRAMINE_SGX,
    SEV_SNP,
    TDX,
    TSM_PROVIDERS,
    ConfigfsTsmProvider,
    GramineProvider,
    choose_backend,
    guest_devices,
    probe_backends,
)
from ..attestation.sealing import KeyReleaseClient
from ..attestation.trust import service_enclave_info, verifier_for
from ..attestation.verifier import Verifier
from ..config import Config
from ..errors import ConfigError
from ..rpc.channel import PeerChannels
from ..rpc.interceptors import PeerAttestationInterceptor
from ..rpc.server import attested_server, max_message_bytes

log = logging.getLogger(__name__)

READY_FD_ENV = "KETTLE_READY_FD"


def evidence_provider(config: Config, service: str, mr_enclave: bytes) -> EvidenceProvider:
    settings = config.attestation
    backend = resolve_backend(config)
    if backend == SIMULATION:
        return SimulationBackend(config.home, mr_enclave, SIMULATION_MR_SIGNER, service)
    provider: ConfigfsTsmProvider | GramineProvider
    if backend in TSM_PROVIDERS:
        privlevel = settings.snp_privlevel if settings.snp_privlevel >= 0 else None
        provider = ConfigfsTsmProvider(
            backend, Path(settings.configfs_tsm_path), privlevel,
            Path(settings.snp_guest_device) if backend == SEV_SNP else None,
            service=service,
            key_release=KeyReleaseClient(settings.service_url, config.as_root_path) if backend == TDX else None,
        )
    elif backend == GRAMINE_SGX:
        provider = GramineProvider(Path(settings.gramine_attestation_path), service=service)
    else:
        raise ConfigError(f"unknown TEE backend {backend!r}")
    log.info("%s gets its evidence from the %s backend (%s)", service, backend, provider.source)
    return provider


def resolve_backend(config: Config) -> str:
    """The configured backend, with ``auto`` replaced by what this machine offers (or refused)."""
    settings = config.attestation
    if settings.backend != AUTO:
        return settings.backend
    probes = probe_backends(
        Path(settings.configfs_tsm_path), Path(settings.gramine_attestation_path), settings.unsafe_allow_simulation,
        guest_devices(Path(settings.snp_guest_device)),
    )
    backend = choose_backend(probes)
    if backend == SIMULATION:
        log.warning("attestation.backend = auto found no TEE and fell back to SIMULATION (unsafe_allow_simulation is on)")
    else:
        log.info("attestation.backend = auto chose %s", backend)
    return backend


class ServiceRuntime:
    def __init__(self, name: str, config: Config) -> None:
        self.name = name
        self.config = config
        self.build = BuildConfig.load(config.home)
        self.enclave_info: EnclaveInfo = service_enclave_info(config, self.build)
        self.measurement = measure_service(name, self.build.raw)
        self.provider = evidence_provider(config, name, self.measurement)
        self.verifier: Verifier = verifier_for(config, self.enclave_info)
        self.as_root_pem = config.as_root_path.read_bytes()
        self.identities = IdentityManager(
            name, self.provider, config.attestation.service_url, config.as_root_path
        )
        self.peers = PeerChannels(config, self.identities, self.enclave_info, self.as_root_pem)
        self._servers: list[grpc.aio.Server] = []
        self._health = health.aio.HealthServicer()

    async def attest(self) -> None:
        log.info("%s measurement %s", self.name, self.measurement.hex())
        await self.identities.obtain()
        self.identities.start_rotation()

    def internal_server(self, register: Callable[[grpc.aio.Server], None]) -> grpc.aio.Server:
        server = attested_server(
            self.identities,
            self.config.endpoint(self.name).listen_address,
            register,
            client_roots=self.as_root_pem,
            validity_secs=self.config.attestation.validity_secs,
            interceptors=[PeerAttestationInterceptor(self.name, self.verifier)],
            max_message=max_message_bytes(self.name),
        )
        self._servers.append(server)
        return server

    def api_server(self, register: Callable[[grpc.aio.Server], None]) -> grpc.aio.Server:
        def register_with_health(server: grpc.aio.Server) -> None:
            register(server)
            # The standard health service: what load balancers probe, and the cheapest
            # attested round trip (the baseline of the benchmarks).
            health_pb2_grpc.add_HealthServicer_to_server(self._health, server)

        server = attested_server(
            self.identities,
            self.config.endpoint(self.name, api=True).listen_address,
            register_with_health,
            client_roots=None,
            validity_secs=self.config.attestation.validity_secs,
            max_message=max_message_bytes(self.name),
        )
        self._servers.append(server)
        return server

    async def serve(self) -> None:
        """Start every server, signal readiness, and run until SIGTERM/SIGINT."""
        for server in self._servers:
            await server.start()
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        log.info("%s is serving", self.name)
        signal_ready()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("%s is stopping", self.name)
        await asyncio.gather(*(server.stop(grace=5) for server in self._servers))
        await self.identities.stop()
        await self.peers.close()


def signal_ready() -> None:
    fd = os.environ.pop(READY_FD_ENV, None)
    if fd is None:
        return
    try:
        os.write(int(fd), b"ready\n")
        os.close(int(fd))
    except OSError:
        pass
