"""The runtime configuration: one TOML file, every setting with a sane default.

Where it lives: ``$KETTLE_CONFIG`` if set, else ``$KETTLE_HOME/kettle.toml``
(``KETTLE_HOME`` defaults to ``./.kettle``). Everything the platform writes lives
under ``KETTLE_HOME``; relative paths in the file are relative to it.

Security-relevant rules are *not* configuration: the inbound rules of internal
endpoints are compiled into the code (``kettle.rpc.inbound``), and the auditor
keys a service trusts are part of its measured build (``kettle.attestation.build``).
Teaclave's ``runtime.config.toml`` keys that have no meaning here (SGX attestation
algorithm, SPID) are accepted and ignored so existing files load; ``[mount]``'s
``fusion_base_dir`` sets ``file_agent.fusion_dir``.
"""

from __future__ import annotations

import logging
import os
import tomllib
import urllib.parse
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError

log = logging.getLogger(__name__)

SERVICES = (
    "authentication",
    "frontend",
    "management",
    "storage",
    "access_control",
    "scheduler",
    "execution",
)
"""Every platform service, by the name used in enclave info and inbound rules."""

API_PORTS = {"authentication": 7776, "frontend": 7777}
INTERNAL_PORTS = {
    "authentication": 17776,
    "management": 17777,
    "storage": 17778,
    "access_control": 17779,
    "execution": 17770,
    "scheduler": 17780,
}
ATTESTATION_SERVICE_PORT = 17790
DEFAULT_DOMAIN = "kettle.internal"
DEFAULT_ADMIN_PASSWORD = "teaclave"
MAX_CONCURRENT_TASKS = 256
"""A sanity bound on ``[execution] concurrent_tasks``: each running task holds a worker process."""

_IGNORED_TEACLAVE_KEYS = {"algorithm", "url", "key", "spid"}
_DERIVED = {"file_agent": {"platform_endpoints"}}
"""Fields filled in from the rest of the configuration, never read from the file."""


def kettle_home() -> Path:
    """The platform's state directory (``$KETTLE_HOME``, default ``./.kettle``)."""
    return Path(os.environ.get("KETTLE_HOME", ".kettle")).absolute()


def _url_target(url: str) -> str:
    return url.split("://", 1)[-1].rstrip("/")


@dataclass(frozen=True)
class Endpoint:
    listen_address: str
    advertised_address: str
    """The URL peers dial (``https://host:port``); the first replica's when there are several."""
    replica_addresses: tuple[str, ...] = ()
    """Every replica's URL, when the configuration lists several as ``advertised_address``:
    peers balance their calls over them and fail over from one that is down."""

    @property
    def port(self) -> int:
        return int(self.listen_address.rsplit(":", 1)[1])

    @property
    def target(self) -> str:
        """``host:port`` that peers dial (the advertised URL without its scheme); the first
        replica's when there are several."""
        return _url_target(self.advertised_address)

    @property
    def targets(self) -> tuple[str, ...]:
        """``host:port`` of every replica (just :attr:`target` when there is one)."""
        return tuple(_url_target(url) for url in self.replica_addresses) or (self.target,)


@dataclass(frozen=True)
class AttestationConfig:
    backend: str = "simulation"
    """``simulation``, ``sev-snp``, ``tdx``, ``gramine-sgx``, or ``auto`` (whatever the machine offers)."""
    configfs_tsm_path: str = "/sys/kernel/config/tsm/report"
    """Where configfs-tsm's report directory is (``sev-snp`` and ``tdx``)."""
    gramine_attestation_path: str = "/dev/attestation"
    """Where Gramine's attestation pseudo-files are (``gramine-sgx``)."""
    snp_privlevel: int = -1
    """The VMPL an SNP report is requested at (0..3); unset (-1) leaves the kernel's default."""
    snp_guest_device: str = "/dev/sev-guest"
    """The sev-guest driver's device, whose SNP_GET_DERIVED_KEY ioctl gives ``sev-snp`` sealing keys."""
    service_url: str = f"https://localhost:{ATTESTATION_SERVICE_PORT}"
    listen_address: str = f"127.0.0.1:{ATTESTATION_SERVICE_PORT}"
    validity_secs: int = 3600
    unsafe_allow_simulation: bool = False
    accepted_statuses: tuple[str, ...] = ("OK",)
    clock_skew_secs: int = 60
    handshake_timeout_secs: int = 10
    """The attestation service closes a connection whose TLS handshake takes longer than this."""
    request_timeout_secs: int = 10
    """...and one that has not sent its whole request this long after the handshake."""
    max_connections: int = 64
    """Connections the attestation service serves at once; one more is closed as soon as it is accepted."""
    unsafe_test_roots: str = ""
    """A folder of test hardware roots the attestation service verifies real evidence under
    instead of the vendors' (``<product>_ask_ark_asvk.pem`` for SEV-SNP, ``intel_sgx_root_ca.der``
    for DCAP); a client with this set accepts reports that say so. Tests only."""
    snp_max_vmpl: int = 0
    """The highest VMPL an SEV-SNP report may come from."""
    snp_allow_migration_agent: bool = False
    snp_minimum_tcb: str = ""
    """The lowest SEV-SNP TCB accepted, e.g. ``"bootloader=4,tee=0,snp=24,microcode=217"`` (unset: any)."""
    allowed_tcb_status: tuple[str, ...] = ()
    """DCAP TCB statuses accepted besides UpToDate, each with the advisories it may carry:
    ``"STATUS:INTEL-SA-00289,INTEL-SA-00615"``."""
    collateral_dir: str = "attestation/collateral"
    """The collateral cache (VCEKs, Intel collateral), relative to ``KETTLE_HOME`` unless absolute."""
    amd_kds_url: str = "https://kdsintf.amd.com"
    """AMD's Key Distribution Service, where VCEKs are fetched."""
    intel_pcs_url: str = "https://api.trustedservices.intel.com"
    """Intel's PCS, or a PCCS, serving the API v4 collateral of DCAP quotes."""
    collateral_offline: bool = False
    """Never fetch collateral: only what was imported into the cache is used."""
    unsafe_allow_expired_collateral: bool = False
    """Accept expired collateral and CRLs (revoked platforms may pass)."""


@dataclass(frozen=True)
class AuditConfig:
    enclave_info: str = "trust/enclave_info.toml"
    threshold: int = 0
    """Distinct valid auditor signatures a client requires; 0 means all known auditors."""


@dataclass(frozen=True)
class StorageConfig:
    backend: str = "sqlite"
    """``sqlite`` (the file at ``path``) or ``postgresql`` (the database a DSN names)."""
    path: str = "storage/kettle.db"
    dsn: str = ""
    """PostgreSQL connection string without a password (``postgresql://user@host/db``); a
    password goes in ``dsn_file`` or the ``KETTLE_STORAGE_DSN`` environment variable."""
    dsn_file: str = ""
    """A file (relative to the home) holding the whole connection string, password included."""


@dataclass(frozen=True)
class AuthenticationConfig:
    admin_id: str = "admin"
    admin_password: str = DEFAULT_ADMIN_PASSWORD
    token_validity_secs: int = 86400
    login_max_failures_per_user: int = 5
    """Failed logins of one user id within ``login_failure_window_secs`` that lock it; 0 = no limit."""
    login_max_failures_per_source: int = 30
    """Failed logins from one client address within the window that lock it; 0 = no limit."""
    login_failure_window_secs: int = 60
    login_lockout_secs: int = 30
    """The first lockout; each further one of the same user or address doubles it..."""
    login_max_lockout_secs: int = 900
    """...up to this, so the real user is never locked out for longer."""


@dataclass(frozen=True)
class ManagementConfig:
    """Per-user quotas checked by the management service (``docs/limits.md``); 0 = no limit."""

    max_stored_bytes_per_user: int = 256 << 20
    """Bytes of function records (payloads included) and file records one user may keep."""
    max_tasks_in_flight_per_user: int = 100
    """Tasks one user may have created and not yet seen Finished, Failed or Canceled."""


@dataclass(frozen=True)
class SchedulerConfig:
    lease_secs: int = 10
    """An execution node silent for this long loses its task (the task is re-queued)."""
    max_attempts: int = 3
    """Runs a task gets in total before a lost node makes it Failed."""


@dataclass(frozen=True)
class FileAgentConfig:
    """How execution nodes fetch inputs and upload outputs by URL (``docs/data.md``).

    Strict by default: ``file://`` URLs are refused unless ``file_roots`` names the
    directories they may touch, because a task input is chosen by a user and a
    path on the node could otherwise read the platform's own secrets.
    """

    allowed_schemes: tuple[str, ...] = ("http", "https", "s3", "fusion", "data")
    file_roots: tuple[str, ...] = ()
    """Directories ``file://`` URLs may read from and write to; listing one allows the scheme."""
    fusion_dir: str = "fusion"
    """Where ``fusion:///TEACLAVE_FUSION_BASE/...`` files live (Teaclave's ``mount.fusion_base_dir``)."""
    max_file_bytes: int = 8 << 30
    """Largest input a task may download and largest output it may upload."""
    connect_timeout_secs: int = 10
    io_timeout_secs: int = 60
    """Longest a transfer may wait for the next bytes (not the whole transfer)."""
    retries: int = 2
    """Further tries after a connection failure, a timeout or an HTTP 5xx/429."""
    retry_backoff_ms: int = 500
    s3_endpoint_url: str = ""
    """An S3-compatible endpoint instead of AWS (credentials come from the usual AWS settings)."""
    s3_node_credential_buckets: tuple[str, ...] = ()
    """The only buckets ``s3://`` URLs may name: the node opens them with its own credentials.
    Any other bucket needs a presigned ``https://`` URL; the node is no user's deputy."""
    egress_allowlist: tuple[str, ...] = ()
    """``host:port`` entries the agent may reach although they are internal (loopback, private,
    link-local, this node, the platform's own endpoints); the host as URLs write it."""
    platform_endpoints: tuple[str, ...] = ()
    """Not a setting: the platform's own ``host:port`` endpoints, filled in from the rest of the
    configuration when it is loaded, which the agent refuses unless ``egress_allowlist`` names them."""


@dataclass(frozen=True)
class ExecutionConfig:
    scratch_dir: str = "execution/scratch"
    """Per-task working space; everything a task stages there is encrypted and removed after it."""
    max_task_input_bytes: int = 4 << 30
    """Bytes one task may stage in the scratch directory for its inputs, over all of them."""
    min_free_disk_bytes: int = 1 << 30
    """Staging stops (the task fails) rather than leave less than this free on the scratch disk."""
    concurrent_tasks: int = 0
    """Tasks one node runs at once, each in its own worker; 0 = one per CPU core the node may use."""

    def task_slots(self) -> int:
        """How many tasks this node runs at once (``concurrent_tasks``, or the usable cores)."""
        return self.concurrent_tasks or len(os.sched_getaffinity(0))


@dataclass(frozen=True)
class SandboxConfig:
    """Limits of the sandbox that runs user functions, per task (``docs/sandbox.md``).

    Exceeding one ends the task Failed with a named reason. The sandbox refuses
    to run when one of its required layers is missing; ``unsafe_allow_degraded``
    runs it anyway with what there is, and says so loudly in the log and in
    every task's result.
    """

    wall_time_secs: int = 3600
    cpu_time_secs: int = 600
    memory_mib: int = 1024
    output_mib: int = 1024
    """Total bytes a task may write to its outputs, over all of them."""
    return_value_bytes: int = 20480
    """The reference's return buffer size."""
    log_bytes: int = 65536
    """What is kept of the function's stdout and stderr (for the task log, with ``save_log``)."""
    open_files: int = 64
    wasm_fuel: int = 500_000_000_000
    """A WebAssembly task's budget of fuel (about one unit per instruction): ``FuelExhausted`` past it."""
    unsafe_allow_degraded: bool = False


@dataclass(frozen=True)
class PeersConfig:
    """How a service reaches the services it depends on (``docs/operations.md``)."""

    connect_timeout_ms: int = 2000
    """How long a call waits for a peer that is not connected before failing UNAVAILABLE
    naming it; a peer restarted within this window is found again without an error."""


@dataclass(frozen=True)
class SupervisorConfig:
    """How ``kettle up`` runs and restarts the platform's processes (``docs/operations.md``)."""

    execution_nodes: int = 1
    """Execution nodes ``kettle up`` starts (each pulls tasks from the scheduler)."""
    restart_backoff_ms: int = 500
    """Delay before restarting a crashed service; doubles with each crash in a row."""
    max_restart_backoff_ms: int = 10_000
    stable_secs: int = 30
    """A service that ran this long before crashing is restarted after the first delay again."""
    crash_loop_crashes: int = 5
    """This many crashes of one service within ``crash_loop_window_secs`` is a crash loop:
    the supervisor gives up and stops the platform."""
    crash_loop_window_secs: int = 120


@dataclass(frozen=True)
class Config:
    home: Path
    dev_mode: bool = False
    domain: str = DEFAULT_DOMAIN
    api_endpoints: dict[str, Endpoint] = field(default_factory=dict)
    internal_endpoints: dict[str, Endpoint] = field(default_factory=dict)
    attestation: AttestationConfig = AttestationConfig()
    audit: AuditConfig = AuditConfig()
    storage: StorageConfig = StorageConfig()
    authentication: AuthenticationConfig = AuthenticationConfig()
    management: ManagementConfig = ManagementConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    file_agent: FileAgentConfig = FileAgentConfig()
    execution: ExecutionConfig = ExecutionConfig()
    sandbox: SandboxConfig = SandboxConfig()
    peers: PeersConfig = PeersConfig()
    supervisor: SupervisorConfig = SupervisorConfig()

    def path(self, relative: str) -> Path:
        p = Path(relative)
        return p if p.is_absolute() else self.home / p

    def endpoint(self, service: str, *, api: bool = False) -> Endpoint:
        table = self.api_endpoints if api else self.internal_endpoints
        try:
            return table[service]
        except KeyError:
            kind = "api" if api else "internal"
            raise ConfigError(f"no {kind} endpoint configured for service {service!r}") from None

    @property
    def as_root_path(self) -> Path:
        return self.home / "trust" / "as_root_ca.pem"

    @property
    def enclave_info_path(self) -> Path:
        return self.path(self.audit.enclave_info)


def _default_api() -> dict[str, Endpoint]:
    return {
        name: Endpoint(f"0.0.0.0:{port}", f"https://localhost:{port}")
        for name, port in API_PORTS.items()
    }


def _default_internal() -> dict[str, Endpoint]:
    return {
        name: Endpoint(f"0.0.0.0:{port}", f"https://localhost:{port}")
        for name, port in INTERNAL_PORTS.items()
    }


def _section(cls: type, data: Any, name: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"[{name}] must be a table")
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in _IGNORED_TEACLAVE_KEYS and name == "attestation":
            continue
        if key not in known or key in _DERIVED.get(name, ()):
            raise ConfigError(f"unknown setting {name}.{key}")
        default = getattr(cls(), key)
        if isinstance(default, tuple):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{name}.{key} must be a list of strings")
            value = tuple(value)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{name}.{key} must be true or false")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name}.{key} must be a non-negative integer")
        elif not isinstance(value, type(default)):
            raise ConfigError(f"{name}.{key} must be a {type(default).__name__}")
        kwargs[key] = value
    return cls(**kwargs)


def _endpoints(data: Any, name: str, defaults: dict[str, Endpoint]) -> dict[str, Endpoint]:
    if not isinstance(data, dict):
        raise ConfigError(f"[{name}] must be a table")
    result = dict(defaults)
    for service, value in data.items():
        if service not in SERVICES:
            raise ConfigError(f"[{name}] names unknown service {service!r}")
        if not isinstance(value, dict):
            raise ConfigError(f"{name}.{service} must be a table")
        base = result.get(service)
        listen = value.get("listen_address", base.listen_address if base else None)
        if not isinstance(listen, str) or ":" not in listen:
            raise ConfigError(f"{name}.{service}.listen_address must be 'host:port'")
        port = listen.rsplit(":", 1)[1]
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{name}.{service}.listen_address has no valid port: {listen!r}")
        advertised = value.get("advertised_address", f"https://localhost:{port}")
        replicas = _advertised_urls(advertised, f"{name}.{service}.advertised_address")
        result[service] = Endpoint(listen, replicas[0], replicas if len(replicas) > 1 else ())
    return result


def _advertised_urls(value: Any, where: str) -> tuple[str, ...]:
    """One URL, or a list of the URLs of a service's replicas."""
    if isinstance(value, str):
        if "://" not in value:
            raise ConfigError(f"{where} must be a URL like https://host:port")
        return (value,)
    if not isinstance(value, list) or not value or not all(isinstance(url, str) and "://" in url for url in value):
        raise ConfigError(f"{where} must be a URL like https://host:port, or a non-empty list of them (one per replica)")
    for url in value:
        host, _, port = _url_target(url).rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{where}: replica {url!r} needs a host and a port")
    if len(set(value)) != len(value):
        raise ConfigError(f"{where} lists a replica twice")
    return tuple(value)


def _teaclave_audit(value: Any) -> Any:
    """Teaclave writes ``enclave_info = { path = "..." }`` and lists signature files, which Kettle
    finds beside enclave info; accept that form."""
    if not isinstance(value, dict):
        return value
    audit = {k: v for k, v in value.items() if k != "auditor_signatures"}
    info = audit.get("enclave_info")
    if isinstance(info, dict) and set(info) == {"path"}:
        audit["enclave_info"] = info["path"]
    return audit


def _check_file_agent(agent: FileAgentConfig) -> None:
    from .file_agent.egress import parse_host_port

    for entry in agent.egress_allowlist:
        try:
            parse_host_port(entry)
        except ValueError as exc:
            raise ConfigError(f"file_agent.egress_allowlist: {exc}") from None
    for bucket in agent.s3_node_credential_buckets:
        if not bucket or "/" in bucket or any(c.isspace() for c in bucket):
            raise ConfigError(f"file_agent.s3_node_credential_buckets: {bucket!r} is not a bucket name")


def _platform_endpoints(config: Config) -> tuple[str, ...]:
    """Every ``host:port`` the platform's services listen on or are reached at."""
    addresses = [config.attestation.listen_address, config.attestation.service_url.split("://", 1)[-1].rstrip("/")]
    for endpoint in (*config.api_endpoints.values(), *config.internal_endpoints.values()):
        addresses += [endpoint.listen_address, *endpoint.targets]
    return tuple(dict.fromkeys(addresses))


def parse_config(text: str, home: Path) -> Config:
    """Build a :class:`Config` from TOML text; unknown settings are errors (typos should not pass)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML in configuration: {exc}") from None
    config = Config(home=home, api_endpoints=_default_api(), internal_endpoints=_default_internal())
    for key, value in data.items():
        if key == "platform":
            if not isinstance(value, dict):
                raise ConfigError("[platform] must be a table")
            for pkey, pval in value.items():
                if pkey == "dev_mode" and isinstance(pval, bool):
                    config = replace(config, dev_mode=pval)
                elif pkey == "domain" and isinstance(pval, str) and pval:
                    config = replace(config, domain=pval)
                else:
                    raise ConfigError(f"invalid setting platform.{pkey}")
        elif key == "api_endpoints":
            config = replace(config, api_endpoints=_endpoints(value, key, config.api_endpoints))
        elif key == "internal_endpoints":
            config = replace(config, internal_endpoints=_endpoints(value, key, config.internal_endpoints))
        elif key == "attestation":
            config = replace(config, attestation=_section(AttestationConfig, value, key))
        elif key == "audit":
            config = replace(config, audit=_section(AuditConfig, _teaclave_audit(value), key))
        elif key == "storage":
            config = replace(config, storage=_section(StorageConfig, value, key))
        elif key == "authentication":
            config = replace(config, authentication=_section(AuthenticationConfig, value, key))
        elif key == "management":
            config = replace(config, management=_section(ManagementConfig, value, key))
        elif key == "scheduler":
            config = replace(config, scheduler=_section(SchedulerConfig, value, key))
        elif key == "file_agent":
            config = replace(config, file_agent=_section(FileAgentConfig, value, key))
        elif key == "execution":
            config = replace(config, execution=_section(ExecutionConfig, value, key))
        elif key == "sandbox":
            config = replace(config, sandbox=_section(SandboxConfig, value, key))
        elif key == "peers":
            config = replace(config, peers=_section(PeersConfig, value, key))
        elif key == "supervisor":
            config = replace(config, supervisor=_section(SupervisorConfig, value, key))
        elif key == "mount":
            fusion = value.get("fusion_base_dir") if isinstance(value, dict) else None
            if isinstance(fusion, str) and fusion:
                config = replace(config, file_agent=replace(config.file_agent, fusion_dir=fusion))
        else:
            raise ConfigError(f"unknown configuration section [{key}]")
    _check_file_agent(config.file_agent)
    config = replace(config, file_agent=replace(config.file_agent, platform_endpoints=_platform_endpoints(config)))
    from .attestation.providers import BACKENDS

    if config.attestation.backend not in BACKENDS:
        raise ConfigError(f"attestation.backend must be one of {', '.join(BACKENDS)}, not {config.attestation.backend!r}")
    if not -1 <= config.attestation.snp_privlevel <= 3:
        raise ConfigError("attestation.snp_privlevel must be between 0 and 3")
    if config.attestation.snp_max_vmpl > 3:
        raise ConfigError("attestation.snp_max_vmpl must be between 0 and 3")
    parse_snp_minimum_tcb(config.attestation.snp_minimum_tcb)
    parse_allowed_tcb_status(config.attestation.allowed_tcb_status)
    if config.attestation.validity_secs < 4:
        raise ConfigError("attestation.validity_secs must be at least 4")
    for name in ("handshake_timeout_secs", "request_timeout_secs", "max_connections"):
        if getattr(config.attestation, name) < 1:
            raise ConfigError(f"attestation.{name} must be at least 1")
    _check_collateral(config.attestation)
    auth = config.authentication
    if auth.login_failure_window_secs < 1 or not 1 <= auth.login_lockout_secs <= auth.login_max_lockout_secs:
        raise ConfigError(
            "authentication.login_failure_window_secs and login_lockout_secs must be at least 1, "
            "and login_lockout_secs at most login_max_lockout_secs"
        )
    if not 1 <= config.sandbox.wasm_fuel < 2**63:
        raise ConfigError("sandbox.wasm_fuel must be between 1 and 2**63 - 1")
    if config.peers.connect_timeout_ms < 100:
        raise ConfigError("peers.connect_timeout_ms must be at least 100")
    _check_storage(config.storage)
    if config.execution.concurrent_tasks > MAX_CONCURRENT_TASKS:
        raise ConfigError(f"execution.concurrent_tasks must be at most {MAX_CONCURRENT_TASKS}")
    if config.supervisor.execution_nodes < 1:
        raise ConfigError("supervisor.execution_nodes must be at least 1")
    if config.supervisor.crash_loop_crashes < 1:
        raise ConfigError("supervisor.crash_loop_crashes must be at least 1")
    if config.supervisor.max_restart_backoff_ms < config.supervisor.restart_backoff_ms:
        raise ConfigError("supervisor.max_restart_backoff_ms must not be below supervisor.restart_backoff_ms")
    return config


STORAGE_BACKENDS = ("sqlite", "postgresql")
STORAGE_DSN_ENV = "KETTLE_STORAGE_DSN"


def _check_storage(storage: StorageConfig) -> None:
    if storage.backend not in STORAGE_BACKENDS:
        raise ConfigError(f"storage.backend must be one of {', '.join(STORAGE_BACKENDS)}, not {storage.backend!r}")
    if storage.dsn:
        try:
            import psycopg.conninfo

            password = psycopg.conninfo.conninfo_to_dict(storage.dsn).get("password")
        except psycopg.ProgrammingError as exc:
            raise ConfigError(f"storage.dsn is not a PostgreSQL connection string: {' '.join(str(exc).split())}") from None
        if password:
            raise ConfigError(
                f"storage.dsn must not carry a password (the configuration is not a secret): put the "
                f"connection string in storage.dsn_file or the {STORAGE_DSN_ENV} environment variable"
            )
    if storage.dsn and storage.dsn_file:
        raise ConfigError("storage.dsn and storage.dsn_file name the same thing: set one of them")


def _check_collateral(attestation: AttestationConfig) -> None:
    for name in ("amd_kds_url", "intel_pcs_url"):
        url = getattr(attestation, name)
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ConfigError(f"attestation.{name} must be an http:// or https:// URL without query, not {url!r}")
        if parts.scheme == "http":
            log.warning("attestation.%s is plain http (%s): collateral is still verified, but anyone on the path can withhold it", name, url)
    if not attestation.collateral_dir:
        raise ConfigError("attestation.collateral_dir must not be empty")
    if attestation.unsafe_allow_expired_collateral:
        log.warning("UNSAFE: attestation.unsafe_allow_expired_collateral is on: expired collateral and CRLs are accepted, so revoked platforms may pass")


def config_path(home: Path | None = None) -> Path:
    explicit = os.environ.get("KETTLE_CONFIG")
    if explicit:
        return Path(explicit).absolute()
    return (home or kettle_home()) / "kettle.toml"


def load_config(home: Path | None = None) -> Config:
    """Load the configuration of ``home`` (defaults apply when the file is absent)."""
    home = home or kettle_home()
    path = config_path(home)
    if os.environ.get("KETTLE_CONFIG") and not path.exists():
        raise ConfigError(f"KETTLE_CONFIG names {path}, which does not exist")
    text = path.read_text() if path.exists() else ""
    return parse_config(text, home)


SNP_TCB_COMPONENTS = ("bootloader", "tee", "snp", "microcode", "fmc")


def parse_snp_minimum_tcb(text: str) -> dict[str, int] | None:
    """``attestation.snp_minimum_tcb`` as SEV-SNP TCB components (None when unset)."""
    if not text:
        return None
    components: dict[str, int] = {}
    for part in text.split(","):
        name, _, value = part.strip().partition("=")
        if name not in SNP_TCB_COMPONENTS or not value.strip().isdigit() or name in components:
            raise ConfigError(
                "attestation.snp_minimum_tcb is comma-separated NAME=NUMBER with each of "
                f"{', '.join(SNP_TCB_COMPONENTS[:4])} (and fmc on Turin) at most once, not {text!r}"
            )
        components[name] = int(value)
    missing = [n for n in SNP_TCB_COMPONENTS[:4] if n not in components]
    if missing:
        raise ConfigError(f"attestation.snp_minimum_tcb lacks {', '.join(missing)}")
    if any(v > 255 for v in components.values()):
        raise ConfigError("attestation.snp_minimum_tcb components are 0..255")
    return components


def parse_allowed_tcb_status(entries: tuple[str, ...]) -> dict[str, frozenset[str]]:
    """``attestation.allowed_tcb_status`` as status -> accepted advisory ids."""
    allowed: dict[str, frozenset[str]] = {}
    for entry in entries:
        status, _, advisories = entry.partition(":")
        ids = frozenset(a.strip() for a in advisories.split(",") if a.strip())
        if not status or status in allowed:
            raise ConfigError(f"attestation.allowed_tcb_status entries are 'STATUS[:ADVISORY,...]', each status once, not {entry!r}")
        allowed[status] = ids
    from .attestation.dcap import DcapPolicy

    DcapPolicy(allowed=allowed)  # unknown statuses and Revoked are refused here, at load
    return allowed
