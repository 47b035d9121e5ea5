"""The file agent's egress policy: user URLs reach no internal host unless the operator allowlists it.

Two levels. The policy itself (pure, no connection is ever made) decides for
every kind of internal address, including private and link-local ones that no
test may send packets to. The agent is then shown to use it, against a real
HTTP server on loopback that holds a "secret": every spelling of loopback, a
name that resolves there (through the agent's resolver hook, no /etc/hosts
edit) and a redirect there are refused with the same text, and the server sees
none of those requests. Once allowlisted, the same server works.
"""

from __future__ import annotations

import ipaddress
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kettle.config import FileAgentConfig, parse_config
from kettle.errors import ConfigError, TransferError
from kettle.file_agent import UNREACHABLE, FileAgent
from kettle.file_agent.egress import (
    EgressPolicy,
    is_internal,
    is_local_address,
    parse_host_port,
    system_resolver,
)
from kettle.provisioning import DEV_CONFIG

SECRET = b"the node's internal secret"


class Secrets:
    """A loopback HTTP server that serves :data:`SECRET` and counts what it was asked."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.hosts: list[str] = []
        served = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _reply(self, status: int, body: bytes = b"", location: str = "") -> None:
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                served.hits[self.path] += 1
                served.hosts.append(self.headers.get("Host", ""))
                if self.path.startswith("/to/"):
                    self._reply(302, location=self.path.removeprefix("/to/"))
                else:
                    self._reply(200, SECRET)

            def do_PUT(self) -> None:
                served.hits[self.path] += 1
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self._reply(200)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def secrets() -> Iterator[Secrets]:
    server = Secrets()
    yield server
    server.close()


TEST_NAMES = {"internal.test": ["127.0.0.1"], "files.test": ["127.0.0.1"]}


def test_resolver(host: str, port: int) -> list[str]:
    """Names of the test's own (as a DNS zone would have them); everything else as the system resolves it."""
    return TEST_NAMES[host] if host in TEST_NAMES else system_resolver(host, port)


test_resolver.__test__ = False  # type: ignore[attr-defined] - a helper, not a test


def agent_for(home: Path, *allow: str, **overrides: object) -> FileAgent:
    settings: dict[str, object] = {"connect_timeout_secs": 2, "io_timeout_secs": 2, "retries": 0,
                                   "retry_backoff_ms": 10, "egress_allowlist": allow}
    settings.update(overrides)
    return FileAgent(FileAgentConfig(**settings), home, resolver=test_resolver)  # type: ignore[arg-type]


# -- the policy, pure ------------------------------------------------------------------------------


INTERNAL = [
    "127.0.0.1", "127.8.9.10", "0.0.0.0", "10.1.2.3", "172.16.0.1", "172.31.255.254", "192.168.1.1",
    "100.64.0.1", "100.127.255.254", "169.254.169.254", "169.254.0.1", "224.0.0.1", "239.255.255.250",
    "255.255.255.255", "192.0.2.7", "240.0.0.1",
    "::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "ff02::1", "ff0e::1",
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.0.0.1", "::ffff:0.0.0.0",
    "::127.0.0.1", "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "2002:7f00:1::1", "2002:a9fe:a9fe::",
]
PUBLIC = ["93.184.216.34", "8.8.8.8", "2606:2800:220:1:248:1893:25c8:1946", "::ffff:93.184.216.34", "2002:5db8:d822::1"]


@pytest.mark.parametrize("address", INTERNAL)
def test_internal_addresses_are_refused(address: str) -> None:
    assert is_internal(ipaddress.ip_address(address))
    policy = EgressPolicy([], resolver=lambda host, port: [address], is_local=lambda a: False)
    with pytest.raises(TransferError) as caught:
        policy.addresses("some.name", 80)
    assert str(caught.value) == UNREACHABLE


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert not is_internal(ipaddress.ip_address(address))
    policy = EgressPolicy([], resolver=lambda host, port: [address], is_local=lambda a: False)
    assert policy.addresses("some.name", 443) == [address]


def test_one_internal_address_among_public_ones_refuses_the_host() -> None:
    # The agent may connect to any address of the answer, so every one must pass.
    policy = EgressPolicy([], resolver=lambda host, port: ["93.184.216.34", "127.0.0.1"], is_local=lambda a: False)
    with pytest.raises(TransferError, match=UNREACHABLE):
        policy.addresses("mixed.example", 80)


def test_names_that_do_not_resolve_read_like_a_refusal() -> None:
    def nothing(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    for resolver in (nothing, lambda host, port: []):
        with pytest.raises(TransferError) as caught:
            EgressPolicy([], resolver=resolver).addresses("nowhere.example", 80)
        assert str(caught.value) == UNREACHABLE


def test_the_nodes_own_and_the_platforms_addresses_are_refused() -> None:
    public = "93.184.216.34"
    resolve = lambda host, port: [public]
    node = EgressPolicy([], resolver=resolve, is_local=lambda a: str(a) == public)
    with pytest.raises(TransferError, match=UNREACHABLE):
        node.addresses("me.example", 8080)
    platform = EgressPolicy([], ["frontend.example:7777", "0.0.0.0:17777", "no-port"], resolver=resolve,
                            is_local=lambda a: False)
    with pytest.raises(TransferError, match=UNREACHABLE):
        platform.addresses("alias.example", 7777)
    assert platform.addresses("alias.example", 8443) == [public]  # same machine, not a platform port
    allowed = EgressPolicy(["alias.example:7777"], ["frontend.example:7777"], resolver=resolve)
    assert allowed.addresses("alias.example", 7777) == [public]


def test_is_local_address_binds_to_tell() -> None:
    assert is_local_address(ipaddress.ip_address("127.0.0.1"))
    assert not is_local_address(ipaddress.ip_address("192.0.2.1"))  # TEST-NET-1 is on no interface


def test_allowlist_entries_name_the_host_as_written() -> None:
    policy = EgressPolicy(["Files.Internal:8080", "[::1]:6789"],
                          resolver=lambda host, port: ["10.0.0.5" if "files" in host.lower() else "::1"])
    assert policy.addresses("files.internal", 8080) == ["10.0.0.5"]
    assert policy.addresses("FILES.INTERNAL.", 8080) == ["10.0.0.5"]
    assert policy.addresses("[::1]", 6789) == ["::1"]
    with pytest.raises(TransferError, match=UNREACHABLE):
        policy.addresses("files.internal", 8081)  # another port of the same host


@pytest.mark.parametrize("entry", ["localhost", "localhost:", "localhost:0", "localhost:70000", "::1:80", ":80",
                                   "a/b:80", "user@host:80", "[::1]x:80"])
def test_malformed_allowlist_entries(entry: str) -> None:
    with pytest.raises(ValueError):
        parse_host_port(entry)
    with pytest.raises(ConfigError, match="file_agent.egress_allowlist"):
        parse_config(f'[file_agent]\negress_allowlist = ["{entry}"]\n', Path("/tmp"))


def test_settings() -> None:
    defaults = parse_config("", Path("/tmp")).file_agent
    assert defaults.egress_allowlist == () and defaults.s3_node_credential_buckets == ()
    assert "localhost:7777" in defaults.platform_endpoints and "127.0.0.1:17790" in defaults.platform_endpoints
    with pytest.raises(ConfigError, match="unknown setting file_agent.platform_endpoints"):
        parse_config('[file_agent]\nplatform_endpoints = ["x:1"]\n', Path("/tmp"))
    with pytest.raises(ConfigError, match="s3_node_credential_buckets: 'a/b' is not a bucket name"):
        parse_config('[file_agent]\ns3_node_credential_buckets = ["a/b"]\n', Path("/tmp"))
    # `make up`'s development platform reaches exactly where Teaclave's examples serve their files.
    assert parse_config(DEV_CONFIG, Path("/tmp")).file_agent.egress_allowlist == ("localhost:6789", "127.0.0.1:6789")


# -- the agent, against a real server on loopback ----------------------------------------------------


def refused_urls(port: int) -> list[str]:
    return [
        f"http://127.0.0.1:{port}/secret/plain",
        f"http://127.9.9.9:{port}/secret/other-loopback",
        f"http://localhost:{port}/secret/localhost",
        f"http://LOCALHOST.:{port}/secret/localhost-dot",
        f"http://0.0.0.0:{port}/secret/unspecified",
        f"http://[::1]:{port}/secret/v6",
        f"http://[::]:{port}/secret/v6-unspecified",
        f"http://[::ffff:127.0.0.1]:{port}/secret/mapped",
        f"http://[::ffff:7f00:1]:{port}/secret/mapped-hex",
        f"http://2130706433:{port}/secret/decimal",
        f"http://0177.0.0.1:{port}/secret/octal",
        f"http://0x7f.1:{port}/secret/hex",
        f"http://127.1:{port}/secret/short",
        f"http://internal.test:{port}/secret/name",
        f"https://internal.test:{port}/secret/tls",
        f"http://user:pw@127.0.0.1:{port}/secret/userinfo?sig=1",
    ]


def test_every_internal_spelling_is_refused_with_one_text_and_nothing_is_sent(
    secrets: Secrets, tmp_path: Path
) -> None:
    agent = agent_for(tmp_path)
    for number, url in enumerate(refused_urls(secrets.port)):
        target = tmp_path / f"in{number}"
        with pytest.raises(TransferError) as caught:
            agent.fetch(url, target)
        assert str(caught.value) == UNREACHABLE, url
        assert not target.exists()
    source = tmp_path / "out.enc"
    source.write_bytes(b"ciphertext")
    with pytest.raises(TransferError) as caught:
        agent.store(source, f"http://127.0.0.1:{secrets.port}/secret/put")
    assert str(caught.value) == UNREACHABLE
    assert not any(path.startswith("/secret/") for path in secrets.hits), secrets.hits


def test_an_open_and_a_closed_internal_port_read_the_same(secrets: Secrets, tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    agent = agent_for(tmp_path)
    texts = set()
    for port in (secrets.port, closed):
        with pytest.raises(TransferError) as caught:
            agent.fetch(f"http://127.0.0.1:{port}/secret/probe", tmp_path / f"p{port}")
        texts.add(str(caught.value))
    # Allowed but nothing listening: still the same text.
    with pytest.raises(TransferError) as caught:
        agent_for(tmp_path, f"127.0.0.1:{closed}").fetch(f"http://127.0.0.1:{closed}/x", tmp_path / "c")
    texts.add(str(caught.value))
    assert texts == {UNREACHABLE}


def test_an_allowlisted_internal_host_works(secrets: Secrets, tmp_path: Path) -> None:
    agent = agent_for(tmp_path, f"127.0.0.1:{secrets.port}")
    assert agent.fetch(f"http://127.0.0.1:{secrets.port}/allowed/ip", tmp_path / "a") == len(SECRET)
    assert (tmp_path / "a").read_bytes() == SECRET
    source = tmp_path / "out.enc"
    source.write_bytes(b"ciphertext")
    agent.store(source, f"http://127.0.0.1:{secrets.port}/allowed/put")
    assert secrets.hits["/allowed/put"] == 1
    # The entry names the host as written: another spelling of the same address stays refused.
    with pytest.raises(TransferError, match=UNREACHABLE):
        agent.fetch(f"http://2130706433:{secrets.port}/secret/decimal-allowed", tmp_path / "b")
    assert secrets.hits["/secret/decimal-allowed"] == 0


def test_a_name_is_resolved_once_and_its_address_connected_to(secrets: Secrets, tmp_path: Path) -> None:
    # files.test exists only in the agent's resolver: had the HTTP client looked the name up again
    # at connect time (the DNS-rebinding window), it could not have connected at all.
    asked: list[str] = []

    def counting(host: str, port: int) -> list[str]:
        asked.append(host)
        return test_resolver(host, port)

    agent = FileAgent(FileAgentConfig(egress_allowlist=(f"files.test:{secrets.port}",), retries=0), tmp_path,
                      resolver=counting)
    assert agent.fetch(f"http://files.test:{secrets.port}/allowed/name", tmp_path / "n") == len(SECRET)
    assert asked == ["files.test"]
    assert secrets.hosts[-1] == f"files.test:{secrets.port}"  # the server still sees the URL's name


def test_each_redirect_hop_is_checked(secrets: Secrets, tmp_path: Path) -> None:
    port = secrets.port
    agent = agent_for(tmp_path, f"127.0.0.1:{port}")
    # Allowed hop to allowed hop.
    assert agent.fetch(f"http://127.0.0.1:{port}/to//allowed/hop", tmp_path / "ok") == len(SECRET)
    # An allowed server redirecting to a host that is not allowed (same socket, other name).
    for number, location in enumerate([f"http://localhost:{port}/secret/redirected",
                                       f"http://internal.test:{port}/secret/redirected-name",
                                       f"http://[::ffff:127.0.0.1]:{port}/secret/redirected-mapped"]):
        with pytest.raises(TransferError) as caught:
            agent.fetch(f"http://127.0.0.1:{port}/to/{location}", tmp_path / f"r{number}")
        assert str(caught.value) == UNREACHABLE
        assert not (tmp_path / f"r{number}").exists()
    assert not any(path.startswith("/secret/") for path in secrets.hits), secrets.hits
