"""Unit tests of the runtime configuration (``kettle.config``): defaults, parsing, refusals, environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from kettle.config import (
    AttestationConfig,
    AuditConfig,
    AuthenticationConfig,
    Config,
    Endpoint,
    StorageConfig,
    config_path,
    kettle_home,
    load_config,
    parse_config,
)
from kettle.errors import ConfigError

HOME = Path("/srv/kettle-home")


def parse(text: str) -> Config:
    return parse_config(text, HOME)


def refused(text: str) -> str:
    """The message of the ConfigError that parsing ``text`` raises."""
    with pytest.raises(ConfigError) as exc:
        parse(text)
    return exc.value.message


# --- defaults -------------------------------------------------------------------


def test_defaults_ports() -> None:
    """Teaclave's default ports: API 7776/7777, internal 17770-17780, AS 17790."""
    config = parse("")
    assert {n: e.port for n, e in config.api_endpoints.items()} == {"authentication": 7776, "frontend": 7777}
    assert {n: e.port for n, e in config.internal_endpoints.items()} == {
        "authentication": 17776,
        "management": 17777,
        "storage": 17778,
        "access_control": 17779,
        "execution": 17770,
        "scheduler": 17780,
    }
    for endpoint in [*config.api_endpoints.values(), *config.internal_endpoints.values()]:
        assert endpoint.listen_address == f"0.0.0.0:{endpoint.port}"
        assert endpoint.advertised_address == f"https://localhost:{endpoint.port}"
        assert endpoint.target == f"localhost:{endpoint.port}"
    assert config.attestation.service_url == "https://localhost:17790"
    assert config.attestation.listen_address == "127.0.0.1:17790"


def test_defaults_settings() -> None:
    """Secure defaults: no simulation, validity 3600, only OK statuses, every auditor required."""
    config = parse("")
    assert config.home == HOME and config.dev_mode is False and config.domain == "kettle.internal"
    assert config.attestation == AttestationConfig()
    assert config.attestation.validity_secs == 3600
    assert config.attestation.unsafe_allow_simulation is False
    assert config.attestation.accepted_statuses == ("OK",)
    assert config.attestation.backend == "simulation"
    assert config.audit == AuditConfig(enclave_info="trust/enclave_info.toml", threshold=0)
    assert config.storage == StorageConfig(backend="sqlite", path="storage/kettle.db")
    assert config.authentication == AuthenticationConfig("admin", "teaclave", 86400)
    assert config.enclave_info_path == HOME / "trust" / "enclave_info.toml"
    assert config.as_root_path == HOME / "trust" / "as_root_ca.pem"


def test_paths_relative_to_home() -> None:
    """Relative paths resolve under the home; absolute ones are kept."""
    config = parse('[audit]\nenclave_info = "/etc/kettle/enclave_info.toml"\n')
    assert config.enclave_info_path == Path("/etc/kettle/enclave_info.toml")
    assert config.path("storage/x.db") == HOME / "storage" / "x.db"


def test_endpoint_lookup() -> None:
    """Endpoints are looked up by service; a missing one is a ConfigError naming it."""
    config = parse("")
    assert config.endpoint("frontend", api=True).port == 7777
    assert config.endpoint("storage").port == 17778
    with pytest.raises(ConfigError, match="no api endpoint configured for service 'storage'"):
        config.endpoint("storage", api=True)


# --- full parse -----------------------------------------------------------------------

FULL = """\
[platform]
dev_mode = true
domain = "mesh.example"

[api_endpoints]
authentication = { listen_address = "127.0.0.1:9776" }
frontend = { listen_address = "127.0.0.1:9777", advertised_address = "https://front.example:443" }

[internal_endpoints]
storage = { listen_address = "10.0.0.5:19778", advertised_address = "https://teaclave-storage-service:19778" }
access_control = { listen_address = "0.0.0.0:19779" }

[attestation]
backend = "simulation"
service_url = "https://as.example:9790"
listen_address = "0.0.0.0:9790"
validity_secs = 120
unsafe_allow_simulation = true
accepted_statuses = ["OK", "SW_HARDENING_NEEDED"]
clock_skew_secs = 5

[audit]
enclave_info = "audited/enclave_info.toml"
threshold = 2

[storage]
backend = "sqlite"
path = "/var/lib/kettle/db.sqlite"

[authentication]
admin_id = "root"
admin_password = "s3cret"
token_validity_secs = 600
"""


def test_parse_full_config() -> None:
    """Every section and setting is read into the typed configuration."""
    config = parse(FULL)
    assert config.dev_mode is True and config.domain == "mesh.example"
    assert config.api_endpoints["authentication"] == Endpoint("127.0.0.1:9776", "https://localhost:9776")
    assert config.api_endpoints["frontend"] == Endpoint("127.0.0.1:9777", "https://front.example:443")
    assert config.api_endpoints["frontend"].target == "front.example:443"
    assert config.internal_endpoints["storage"] == Endpoint(
        "10.0.0.5:19778", "https://teaclave-storage-service:19778"
    )
    assert config.internal_endpoints["access_control"] == Endpoint("0.0.0.0:19779", "https://localhost:19779")
    assert config.internal_endpoints["scheduler"] == Endpoint("0.0.0.0:17780", "https://localhost:17780")
    assert config.attestation == AttestationConfig(
        backend="simulation",
        service_url="https://as.example:9790",
        listen_address="0.0.0.0:9790",
        validity_secs=120,
        unsafe_allow_simulation=True,
        accepted_statuses=("OK", "SW_HARDENING_NEEDED"),
        clock_skew_secs=5,
    )
    assert config.audit == AuditConfig("audited/enclave_info.toml", 2)
    assert config.enclave_info_path == HOME / "audited" / "enclave_info.toml"
    assert config.storage == StorageConfig("sqlite", "/var/lib/kettle/db.sqlite")
    assert config.authentication == AuthenticationConfig("root", "s3cret", 600)


# --- Teaclave compatibility ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '[attestation]\nalgorithm = "sgx_epid"\nurl = "https://api.trustedservices.intel.com:443"\n'
        f'key = "{"0" * 32}"\nspid = "{"0" * 32}"\n',
        '[attestation]\nalgorithm = "sgx_ecdsa"\n',
        '[mount]\nanything = { at = "all" }\n',
        '[audit]\nauditor_signatures = [\n  { path = "auditors/godzilla/godzilla.sign.sha256" },\n'
        '  { path = "auditors/optimus_prime/optimus_prime.sign.sha256" },\n]\n',
    ],
    ids=["attestation-epid", "attestation-ecdsa", "mount-any", "audit-signatures"],
)
def test_teaclave_keys_accepted_and_ignored(text: str) -> None:
    """Teaclave's SGX/IAS keys and unknown mount keys load and change nothing."""
    assert parse(text) == parse("")


def test_teaclave_fusion_base_dir_sets_fusion_dir() -> None:
    config = parse('[mount]\nfusion_base_dir = "/tmp/fusion_data"\n')
    assert config.file_agent.fusion_dir == "/tmp/fusion_data"
    assert parse("").file_agent.fusion_dir == "fusion"


def test_file_agent_is_strict_by_default() -> None:
    """No file:// access and no unknown scheme unless configured."""
    agent = parse("").file_agent
    assert "file" not in agent.allowed_schemes and agent.file_roots == ()
    configured = parse('[file_agent]\nfile_roots = ["/srv/data"]\nmax_file_bytes = 1024\n').file_agent
    assert configured.file_roots == ("/srv/data",) and configured.max_file_bytes == 1024
    with pytest.raises(ConfigError, match="file_agent.retries"):
        parse("[file_agent]\nretries = -1\n")


def test_teaclave_keys_mixed_with_kettle_keys() -> None:
    """Ignored Teaclave keys sit beside real settings without disturbing them."""
    config = parse('[attestation]\nalgorithm = "sgx_epid"\nvalidity_secs = 60\n[audit]\nauditor_signatures = []\nthreshold = 1\n')
    assert config.attestation.validity_secs == 60
    assert config.audit.threshold == 1


TEACLAVE_RUNTIME_CONFIG = """\
[api_endpoints]
authentication = { listen_address = "0.0.0.0:7776" }
frontend = { listen_address = "0.0.0.0:7777" }

[internal_endpoints]
authentication = { listen_address = "0.0.0.0:17776", advertised_address = "https://localhost:17776" }
management = { listen_address = "0.0.0.0:17777", advertised_address = "https://localhost:17777" }
storage = { listen_address = "0.0.0.0:17778", advertised_address = "https://localhost:17778" }
access_control = { listen_address = "0.0.0.0:17779", advertised_address = "https://localhost:17779" }
execution = { listen_address = "0.0.0.0:17770", advertised_address = "https://localhost:17770" }
scheduler = { listen_address = "0.0.0.0:17780", advertised_address = "https://localhost:17780" }

[audit]
enclave_info = { path = "enclave_info.toml" }
auditor_signatures = [
    { path = "auditors/godzilla/godzilla.sign.sha256" },
    { path = "auditors/optimus_prime/optimus_prime.sign.sha256" },
    { path = "auditors/albus_dumbledore/albus_dumbledore.sign.sha256" },
]

[attestation]
algorithm = "sgx_epid"
url = "https://api.trustedservices.intel.com:443"
key = "00000000000000000000000000000000"
spid = "00000000000000000000000000000000"

[mount]
fusion_base_dir = "/tmp/fusion_data"
"""


def test_teaclave_runtime_config_loads() -> None:
    """Teaclave's own runtime.config.toml loads (spec/platform.md §10.2: existing files SHOULD load)."""
    config = parse(TEACLAVE_RUNTIME_CONFIG)
    assert config.enclave_info_path == HOME / "enclave_info.toml"


def test_teaclave_runtime_config_endpoints() -> None:
    """Teaclave's endpoint tables parse as they are (the rest of its runtime config without [audit])."""
    text = TEACLAVE_RUNTIME_CONFIG.split("[audit]")[0] + "[attestation]" + TEACLAVE_RUNTIME_CONFIG.split("[attestation]")[1]
    config = parse(text)
    defaults = parse("")
    assert config.api_endpoints == defaults.api_endpoints
    assert config.internal_endpoints == defaults.internal_endpoints


# --- refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, message",
    [
        ("[nosuch]\nx = 1\n", "unknown configuration section [nosuch]"),
        ("dev_mode = true\n", "unknown configuration section [dev_mode]"),
        ("[attestation]\nnosuch = 1\n", "unknown setting attestation.nosuch"),
        ("[attestation]\nvalidity = 60\n", "unknown setting attestation.validity"),
        ("[audit]\nauditors = []\n", "unknown setting audit.auditors"),
        ('[storage]\nalgorithm = "x"\n', "unknown setting storage.algorithm"),
        ('[authentication]\nadmin = "x"\n', "unknown setting authentication.admin"),
        ("[platform]\ntest_mode = true\n", "invalid setting platform.test_mode"),
        ('[api_endpoints]\nstorage_api = { listen_address = "0.0.0.0:1" }\n',
         "[api_endpoints] names unknown service 'storage_api'"),
        ('[internal_endpoints]\nfrontend_internal = { listen_address = "0.0.0.0:1" }\n',
         "[internal_endpoints] names unknown service 'frontend_internal'"),
    ],
)
def test_unknown_section_or_key_rejected(text: str, message: str) -> None:
    """Typos are errors that name the offending section or key."""
    assert refused(text) == message


@pytest.mark.parametrize(
    "text, message",
    [
        ('[attestation]\nvalidity_secs = "3600"\n', "attestation.validity_secs must be a non-negative integer"),
        ("[attestation]\nvalidity_secs = true\n", "attestation.validity_secs must be a non-negative integer"),
        ("[attestation]\nvalidity_secs = 60.0\n", "attestation.validity_secs must be a non-negative integer"),
        ("[attestation]\nvalidity_secs = -60\n", "attestation.validity_secs must be a non-negative integer"),
        ('[attestation]\nunsafe_allow_simulation = "true"\n', "attestation.unsafe_allow_simulation must be true or false"),
        ("[attestation]\nunsafe_allow_simulation = 1\n", "attestation.unsafe_allow_simulation must be true or false"),
        ('[attestation]\naccepted_statuses = "OK"\n', "attestation.accepted_statuses must be a list of strings"),
        ("[attestation]\naccepted_statuses = [1]\n", "attestation.accepted_statuses must be a list of strings"),
        ("[attestation]\nbackend = 5\n", "attestation.backend must be a str"),
        ("[attestation]\nclock_skew_secs = -1\n", "attestation.clock_skew_secs must be a non-negative integer"),
        ("[audit]\nthreshold = 1.5\n", "audit.threshold must be a non-negative integer"),
        ("[execution]\nconcurrent_tasks = -1\n", "execution.concurrent_tasks must be a non-negative integer"),
        ("[execution]\nconcurrent_tasks = 257\n", "execution.concurrent_tasks must be at most 256"),
        ("[audit]\nenclave_info = 3\n", "audit.enclave_info must be a str"),
        ("[storage]\npath = 3\n", "storage.path must be a str"),
        ('[storage]\nbackend = "mysql"\n', "storage.backend must be one of sqlite, postgresql, not 'mysql'"),
        ('[storage]\nbackend = "postgresql"\ndsn = "postgresql://kettle:pw@db/kettle"\n',
         "storage.dsn must not carry a password (the configuration is not a secret): put the connection "
         "string in storage.dsn_file or the KETTLE_STORAGE_DSN environment variable"),
        ('[storage]\nbackend = "postgresql"\ndsn = "host=db password=pw"\n',
         "storage.dsn must not carry a password (the configuration is not a secret): put the connection "
         "string in storage.dsn_file or the KETTLE_STORAGE_DSN environment variable"),
        ('[storage]\ndsn = "postgresql://kettle@db/kettle"\ndsn_file = "dsn"\n',
         "storage.dsn and storage.dsn_file name the same thing: set one of them"),
        ('[storage]\ndsn = "not a dsn = ="\n',
         'storage.dsn is not a PostgreSQL connection string: missing "=" after "not" in connection info string'),
        ('[authentication]\ntoken_validity_secs = "1d"\n', "authentication.token_validity_secs must be a non-negative integer"),
        ("attestation = 5\n", "[attestation] must be a table"),
        ('audit = "x"\n', "[audit] must be a table"),
        ("storage = []\n", "[storage] must be a table"),
        ('[platform]\ndev_mode = "yes"\n', "invalid setting platform.dev_mode"),
        ('[platform]\ndomain = ""\n', "invalid setting platform.domain"),
        ("[platform]\ndomain = 7\n", "invalid setting platform.domain"),
        ('api_endpoints = "x"\n', "[api_endpoints] must be a table"),
        ('[internal_endpoints]\nstorage = "0.0.0.0:1"\n', "internal_endpoints.storage must be a table"),
        ('[internal_endpoints]\nstorage = { listen_address = "no-port" }\n',
         "internal_endpoints.storage.listen_address must be 'host:port'"),
        ("[internal_endpoints]\nstorage = { listen_address = 17778 }\n",
         "internal_endpoints.storage.listen_address must be 'host:port'"),
        ('[internal_endpoints]\nstorage = { advertised_address = "localhost:17778" }\n',
         "internal_endpoints.storage.advertised_address must be a URL like https://host:port"),
        ("not toml = = 1\n", None),
    ],
)
def test_wrong_types_rejected(text: str, message: str | None) -> None:
    """Values of the wrong type are errors naming the setting and what it must be."""
    got = refused(text)
    if message is None:
        assert got.startswith("invalid TOML in configuration:")
    else:
        assert got == message


@pytest.mark.parametrize("text", ["platform = true\n", 'platform = "dev"\n'])
def test_platform_must_be_a_table(text: str) -> None:
    """``platform`` that is not a table is refused like the other sections."""
    assert refused(text) == "[platform] must be a table"


def test_endpoint_port_must_be_numeric() -> None:
    """A listen address whose port is not a number is refused at load time."""
    assert "listen_address" in refused('[internal_endpoints]\nstorage = { listen_address = "0.0.0.0:http" }\n')


@pytest.mark.parametrize("validity, ok", [(0, False), (1, False), (3, False), (4, True), (5, True), (86400, True)])
def test_validity_minimum(validity: int, ok: bool) -> None:
    """attestation.validity_secs below 4 is refused (re-attestation runs at half of it)."""
    text = f"[attestation]\nvalidity_secs = {validity}\n"
    if ok:
        assert parse(text).attestation.validity_secs == validity
    else:
        assert refused(text) == "attestation.validity_secs must be at least 4"


# --- environment ------------------------------------------------------------------------


def test_kettle_home_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without KETTLE_HOME the home is ./.kettle, made absolute."""
    monkeypatch.delenv("KETTLE_HOME", raising=False)
    monkeypatch.delenv("KETTLE_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    assert kettle_home() == tmp_path / ".kettle"
    assert config_path() == tmp_path / ".kettle" / "kettle.toml"
    assert load_config().home == tmp_path / ".kettle"


def test_kettle_home_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """KETTLE_HOME chooses the home; its kettle.toml is the configuration."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "kettle.toml").write_text("[attestation]\nvalidity_secs = 77\n")
    monkeypatch.delenv("KETTLE_CONFIG", raising=False)
    monkeypatch.setenv("KETTLE_HOME", str(home))
    assert kettle_home() == home
    config = load_config()
    assert config.home == home and config.attestation.validity_secs == 77
    assert config.enclave_info_path == home / "trust" / "enclave_info.toml"


def test_kettle_home_relative_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A relative KETTLE_HOME is taken from the working directory and made absolute."""
    monkeypatch.delenv("KETTLE_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KETTLE_HOME", "rel/home")
    assert kettle_home() == tmp_path / "rel" / "home"
    assert kettle_home().is_absolute()


def test_missing_config_file_gives_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A home without kettle.toml runs on defaults."""
    monkeypatch.delenv("KETTLE_CONFIG", raising=False)
    config = load_config(tmp_path)
    assert config == parse_config("", tmp_path)


def test_kettle_config_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """KETTLE_CONFIG names the file; the home (for relative paths) stays KETTLE_HOME."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "kettle.toml").write_text("[attestation]\nvalidity_secs = 77\n")
    elsewhere = tmp_path / "etc" / "kettle.toml"
    elsewhere.parent.mkdir()
    elsewhere.write_text('[attestation]\nvalidity_secs = 99\n[storage]\npath = "db/k.sqlite"\n')
    monkeypatch.setenv("KETTLE_HOME", str(home))
    monkeypatch.setenv("KETTLE_CONFIG", str(elsewhere))
    assert config_path() == elsewhere
    config = load_config()
    assert config.attestation.validity_secs == 99
    assert config.home == home
    assert config.path(config.storage.path) == home / "db" / "k.sqlite"
    assert load_config(tmp_path / "other").attestation.validity_secs == 99


def test_kettle_config_relative_and_empty(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A relative KETTLE_CONFIG is resolved from the working directory; an empty one is ignored."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KETTLE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KETTLE_CONFIG", "conf/k.toml")
    assert config_path() == tmp_path / "conf" / "k.toml"
    monkeypatch.setenv("KETTLE_CONFIG", "")
    assert config_path() == tmp_path / "home" / "kettle.toml"


def test_invalid_config_file_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Errors in the file on disk surface from load_config."""
    monkeypatch.delenv("KETTLE_CONFIG", raising=False)
    (tmp_path / "kettle.toml").write_text("[attestation]\nvalidty_secs = 60\n")
    with pytest.raises(ConfigError, match="unknown setting attestation.validty_secs"):
        load_config(tmp_path)


# --- replicas -------------------------------------------------------------------


def test_an_advertised_address_list_names_the_replicas() -> None:
    """A list as ``advertised_address`` is the service's replicas: peers dial all of them;
    one URL stays one replica, as in Teaclave's configuration."""
    config = parse(
        "[internal_endpoints]\n"
        'management = { listen_address = "0.0.0.0:17777", '
        'advertised_address = ["https://10.77.0.21:17777", "https://mgmt-b.internal:17777"] }\n'
    )
    management = config.endpoint("management")
    assert management.targets == ("10.77.0.21:17777", "mgmt-b.internal:17777")
    assert management.target == "10.77.0.21:17777"
    assert config.endpoint("storage").targets == ("localhost:17778",)


@pytest.mark.parametrize(
    "value, message",
    [
        ("[]", " must be a URL like https://host:port, or a non-empty list of them (one per replica)"),
        ('["https://a:1", 7]', " must be a URL like https://host:port, or a non-empty list of them (one per replica)"),
        ('["https://a:1", "b:2"]', " must be a URL like https://host:port, or a non-empty list of them (one per replica)"),
        ('["https://a:1", "https://b"]', ": replica 'https://b' needs a host and a port"),
        ('["https://a:1", "https://b:0"]', ": replica 'https://b:0' needs a host and a port"),
        ('["https://a:1", "https://a:1"]', " lists a replica twice"),
    ],
)
def test_a_bad_replica_list_is_refused(value: str, message: str) -> None:
    got = refused(f'[internal_endpoints]\nscheduler = {{ advertised_address = {value} }}\n')
    assert got == "internal_endpoints.scheduler.advertised_address" + message
