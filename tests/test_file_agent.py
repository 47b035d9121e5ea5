"""The execution node's file agent against real servers: an HTTP server, moto's S3, real files.

Nothing is mocked: the HTTP cases run against a ``ThreadingHTTPServer`` on a
loopback port whose handlers misbehave on purpose (errors, flakiness, stalls,
redirect loops, lying sizes), S3 runs against moto's server, and the local
schemes against real directories, symlinks and FIFOs in a temporary home.
Loopback is refused by default, so the agents here allowlist the server's
``host:port`` (the egress rules themselves: ``test_egress.py``).
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kettle.config import FileAgentConfig
from kettle.errors import TransferError
from kettle.file_agent import UNREACHABLE, FileAgent, display_url, file_name_of
from kettle.file_agent.local import OUTPUT_MARK_XATTR, OutputMark

PAYLOAD = os.urandom(3 * 1024 * 1024 + 17)  # several chunks, not a multiple of the chunk size
BIG_SIZE = 32 * 1024 * 1024
STALL_SECS = 4.0


def fast_config(**overrides: object) -> FileAgentConfig:
    """Small timeouts and backoff so hostile cases finish quickly."""
    settings: dict[str, object] = {
        "connect_timeout_secs": 2,
        "io_timeout_secs": 1,
        "retries": 2,
        "retry_backoff_ms": 10,
    }
    settings.update(overrides)
    return FileAgentConfig(**settings)  # type: ignore[arg-type]


# -- the HTTP server ---------------------------------------------------------------------


@dataclass
class Served:
    """What the HTTP server saw; handlers misbehave according to the request path."""

    base: str
    hits: Counter[str] = field(default_factory=Counter)
    puts: dict[str, tuple[dict[str, str], bytes]] = field(default_factory=dict)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return self.base + path

    @property
    def authority(self) -> str:
        """The server's ``host:port``, as an egress allowlist entry."""
        return self.base.removeprefix("http://")


def _make_handler(served: Served) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def handle(self) -> None:
            # Clients that give up (timeouts, size limits) hang up mid-reply; that is expected.
            try:
                super().handle()
            except (BrokenPipeError, ConnectionResetError):
                pass

        def _count(self) -> int:
            path = self.path.split("?", 1)[0]
            with served.lock:
                served.hits[path] += 1
                return served.hits[path]

        def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            hits = self._count()
            path = self.path.split("?", 1)[0]
            if path.startswith("/ok/"):
                self._reply(200, PAYLOAD)
            elif path.startswith("/empty/"):
                self._reply(200, b"")
            elif path.startswith("/missing/"):
                self._reply(404, b"no such file")
            elif path.startswith("/forbidden/"):
                self._reply(403, b"signature mismatch")
            elif path.startswith("/always500/"):
                self._reply(500, b"broken")
            elif path.startswith("/flaky/"):
                if hits <= 2:
                    self._reply(500 if hits == 1 else 503, b"try again")
                else:
                    self._reply(200, PAYLOAD)
            elif path.startswith("/busy/"):
                if hits == 1:
                    self._reply(429, b"slow down", {"Retry-After": "0"})
                else:
                    self._reply(200, PAYLOAD)
            elif path.startswith("/half-then-drop/"):
                # First try: promise the whole file, send half, hang up. Then behave.
                if hits == 1:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(PAYLOAD)))
                    self.end_headers()
                    self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
                    self.close_connection = True
                else:
                    self._reply(200, PAYLOAD)
            elif path.startswith("/stall-headers/"):
                served.release.wait(STALL_SECS)
                self._reply(200, b"late")
            elif path.startswith("/stall-body/"):
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self.wfile.write(b"x" * 100)
                self.wfile.flush()
                served.release.wait(STALL_SECS)
            elif path.startswith("/big/"):
                self.send_response(200)
                self.send_header("Content-Length", str(BIG_SIZE))
                self.end_headers()
                block = b"\xab" * (256 * 1024)
                for _ in range(BIG_SIZE // len(block)):
                    self.wfile.write(block)
            elif path.startswith("/unsized/"):
                # No Content-Length: HTTP/1.0, body ends when the connection closes.
                self.send_response(200)
                self.end_headers()
                block = b"\xcd" * 65536
                try:
                    for _ in range(64):
                        self.wfile.write(block)
                except OSError:
                    pass  # the client stopped reading, as it should
            elif path.startswith("/redirect/"):
                self._reply(302, b"", {"Location": "/ok/redirected.enc"})
            elif path.startswith("/loop/"):
                self._reply(302, b"", {"Location": path})
            elif path.startswith("/to-file/"):
                self._reply(302, b"", {"Location": "file:///etc/passwd"})
            else:
                self._reply(404)

        def do_PUT(self) -> None:
            hits = self._count()
            path = self.path.split("?", 1)[0]
            if self.headers.get("Transfer-Encoding"):
                self._reply(411, b"chunked bodies are not accepted here")
                return
            length = int(self.headers.get("Content-Length", "0"))
            if path.startswith("/put-sink/"):
                # Count and checksum without keeping the body: the upload's memory is what is measured.
                digest, received = hashlib.sha256(), 0
                while received < length:
                    block = self.rfile.read(min(65536, length - received))
                    if not block:
                        break
                    digest.update(block)
                    received += len(block)
                with served.lock:
                    served.puts[path] = ({k.lower(): v for k, v in self.headers.items()}, digest.digest())
                self._reply(200)
                return
            body = self.rfile.read(length)
            with served.lock:
                served.puts[path] = ({k.lower(): v for k, v in self.headers.items()}, body)
            if path.startswith("/put/"):
                self._reply(200)
            elif path.startswith("/created/"):
                self._reply(201)
            elif path.startswith("/nocontent/"):
                self._reply(204)
            elif path.startswith("/put-flaky/"):
                self._reply(500 if hits == 1 else 200)
            elif path.startswith("/put500/"):
                self._reply(500)
            elif path.startswith("/put-denied/"):
                self._reply(403)
            elif path.startswith("/put-redirect/"):
                self._reply(307, b"", {"Location": "/put/elsewhere.enc"})
            else:
                self._reply(404)

    return Handler


@pytest.fixture(scope="module")
def http_server() -> Iterator[Served]:
    served = Served(base="")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(served))
    server.daemon_threads = True
    served.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served
    served.release.set()
    server.shutdown()
    server.server_close()


def served_agent(home: Path, served: Served, **overrides: object) -> FileAgent:
    """An agent that may reach the test's HTTP server (loopback, so refused unless allowlisted)."""
    return FileAgent(fast_config(egress_allowlist=(served.authority,), **overrides), home)


@pytest.fixture
def agent(tmp_path: Path, http_server: Served) -> FileAgent:
    return served_agent(tmp_path, http_server)


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    folder = tmp_path / "scratch"
    folder.mkdir()
    return folder


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- HTTP fetch ----------------------------------------------------------------------------


def test_http_fetch_streams_the_body(agent: FileAgent, http_server: Served, scratch: Path) -> None:
    target = scratch / "in.enc"
    assert agent.fetch(http_server.url("/ok/in.enc"), target) == len(PAYLOAD)
    assert target.read_bytes() == PAYLOAD


def test_http_fetch_of_an_empty_body_makes_an_empty_file(agent: FileAgent, http_server: Served, scratch: Path) -> None:
    target = scratch / "empty.enc"
    assert agent.fetch(http_server.url("/empty/e.enc"), target) == 0
    assert target.read_bytes() == b""


def test_http_404_fails_once_without_retry(agent: FileAgent, http_server: Served, scratch: Path) -> None:
    url = http_server.url("/missing/in.enc")
    target = scratch / "in.enc"
    with pytest.raises(TransferError) as caught:
        agent.fetch(url, target)
    assert str(caught.value) == f"HTTP 404 Not Found from {url}"
    assert http_server.hits["/missing/in.enc"] == 1
    assert not target.exists()


def test_http_500_is_retried_then_reports_the_attempts(agent: FileAgent, http_server: Served, scratch: Path) -> None:
    url = http_server.url("/always500/in.enc")
    with pytest.raises(TransferError) as caught:
        agent.fetch(url, scratch / "in.enc")
    assert str(caught.value) == f"HTTP 500 Internal Server Error from {url} (gave up after 3 attempts)"
    assert http_server.hits["/always500/in.enc"] == 3
    assert not (scratch / "in.enc").exists()


def test_http_5xx_twice_then_200_succeeds(agent: FileAgent, http_server: Served, scratch: Path) -> None:
    target = scratch / "in.enc"
    assert agent.fetch(http_server.url("/flaky/in.enc"), target) == len(PAYLOAD)
    assert target.read_bytes() == PAYLOAD
    assert http_server.hits["/flaky/in.enc"] == 3


def test_http_retries_are_bounded_by_config(tmp_path: Path, http_server: Served, scratch: Path) -> None:
    agent = served_agent(tmp_path, http_server, retries=1)
    with pytest.raises(TransferError, match=r"HTTP 503 Service Unavailable .*gave up after 2 attempts"):
        agent.fetch(http_server.url("/flaky/bounded.enc"), scratch / "in.enc")
    assert http_server.hits["/flaky/bounded.enc"] == 2


def test_http_429_is_retried(agent: FileAgent, http_server: Served, scratch: Path) -> None:
    target = scratch / "in.enc"
    assert agent.fetch(http_server.url("/busy/in.enc"), target) == len(PAYLOAD)
    assert http_server.hits["/busy/in.enc"] == 2


def test_http_retry_after_a_broken_body_restarts_into_an_empty_target(
    agent: FileAgent, http_server: Served, scratch: Path
) -> None:
    target = scratch / "in.enc"
    assert agent.fetch(http_server.url("/half-then-drop/in.enc"), target) == len(PAYLOAD)
    # Not the first half followed by the whole file: exactly the file.
    assert target.read_bytes() == PAYLOAD
    assert http_server.hits["/half-then-drop/in.enc"] == 2


def test_http_fetch_follows_redirects(agent: FileAgent, http_server: Served, scratch: Path) -> None:
    target = scratch / "in.enc"
    assert agent.fetch(http_server.url("/redirect/in.enc"), target) == len(PAYLOAD)
    assert target.read_bytes() == PAYLOAD
    assert http_server.hits["/ok/redirected.enc"] >= 1


def test_http_redirect_loop_is_bounded(agent: FileAgent, http_server: Served, scratch: Path) -> None:
    url = http_server.url("/loop/in.enc")
    with pytest.raises(TransferError, match="too many redirects") as caught:
        agent.fetch(url, scratch / "in.enc")
    assert url in str(caught.value)
    assert 1 < http_server.hits["/loop/in.enc"] <= 11
    assert not (scratch / "in.enc").exists()


def test_http_redirect_to_a_file_url_is_not_followed(agent: FileAgent, http_server: Served, scratch: Path) -> None:
    with pytest.raises(TransferError) as caught:
        agent.fetch(http_server.url("/to-file/in.enc"), scratch / "in.enc")
    assert http_server.url("/to-file/in.enc") in str(caught.value)
    assert not (scratch / "in.enc").exists()


def test_http_stalled_headers_time_out(http_server: Served, scratch: Path) -> None:
    agent = served_agent(scratch, http_server, retries=0)
    started = time.monotonic()
    with pytest.raises(TransferError, match=r"sent or accepted nothing for 1 s \(gave up after 1 attempt\)"):
        agent.fetch(http_server.url("/stall-headers/in.enc"), scratch / "in.enc")
    assert time.monotonic() - started < STALL_SECS - 1
    assert not (scratch / "in.enc").exists()


def test_http_stalled_body_times_out_and_removes_the_partial_file(http_server: Served, scratch: Path) -> None:
    agent = served_agent(scratch, http_server, retries=0)
    started = time.monotonic()
    with pytest.raises(TransferError, match="sent or accepted nothing"):
        agent.fetch(http_server.url("/stall-body/in.enc"), scratch / "in.enc")
    assert time.monotonic() - started < STALL_SECS - 1
    assert not (scratch / "in.enc").exists()


def test_http_connection_refused_reads_like_a_refusal(tmp_path: Path, scratch: Path) -> None:
    # Allowed, and still the same text as a refused host: failures never tell an open port from a closed one.
    port = closed_port()
    agent = FileAgent(fast_config(retries=1, egress_allowlist=(f"127.0.0.1:{port}",)), tmp_path)
    with pytest.raises(TransferError) as caught:
        agent.fetch(f"http://127.0.0.1:{port}/in.enc", scratch / "in.enc")
    assert str(caught.value) == UNREACHABLE
    assert not (scratch / "in.enc").exists()


def test_http_large_fetch_keeps_memory_flat(agent: FileAgent, http_server: Served, scratch: Path) -> None:
    target = scratch / "big.enc"
    tracemalloc.start()
    try:
        count = agent.fetch(http_server.url("/big/big.enc"), target)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == BIG_SIZE == target.stat().st_size
    assert peak < 8 * 1024 * 1024, f"peak Python memory {peak} bytes for a {BIG_SIZE}-byte file"


def test_http_parallel_fetches_share_one_agent(agent: FileAgent, http_server: Served, scratch: Path) -> None:
    # A worker fetches a task's inputs a few at a time with one agent.
    names = [f"par-{i}.enc" for i in range(6)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        counts = list(pool.map(lambda n: agent.fetch(http_server.url(f"/flaky/{n}"), scratch / n), names))
    assert counts == [len(PAYLOAD)] * len(names)
    assert all((scratch / n).read_bytes() == PAYLOAD for n in names)
    assert all(http_server.hits[f"/flaky/{n}"] == 3 for n in names)


def test_http_announced_size_over_the_limit_is_refused_up_front(
    tmp_path: Path, http_server: Served, scratch: Path
) -> None:
    agent = served_agent(tmp_path, http_server, max_file_bytes=1024)
    url = http_server.url("/big/limit.enc")
    with pytest.raises(TransferError) as caught:
        agent.fetch(url, scratch / "in.enc")
    assert str(caught.value) == f"input {url} is larger than the limit of 1024 bytes"
    assert http_server.hits["/big/limit.enc"] == 1  # the limit is not worth a retry
    assert not (scratch / "in.enc").exists()


def test_http_unannounced_size_over_the_limit_stops_the_stream(
    tmp_path: Path, http_server: Served, scratch: Path
) -> None:
    agent = served_agent(tmp_path, http_server, max_file_bytes=100_000)
    url = http_server.url("/unsized/in.enc")
    with pytest.raises(TransferError) as caught:
        agent.fetch(url, scratch / "in.enc")
    assert str(caught.value) == f"input {url} is larger than the limit of 100000 bytes"
    assert not (scratch / "in.enc").exists()


# -- HTTP store ----------------------------------------------------------------------------


def test_http_store_puts_with_exact_headers(agent: FileAgent, http_server: Served, tmp_path: Path) -> None:
    source = tmp_path / "out.enc"
    source.write_bytes(PAYLOAD)
    agent.store(source, http_server.url("/put/out.enc?X-Amz-Signature=s3cr3t"))
    headers, body = http_server.puts["/put/out.enc"]
    assert headers["content-type"] == "application/x-binary"
    assert headers["content-length"] == str(len(PAYLOAD))
    assert "transfer-encoding" not in headers
    assert body == PAYLOAD


def test_http_large_store_keeps_memory_flat(agent: FileAgent, http_server: Served, tmp_path: Path) -> None:
    source = tmp_path / "big.enc"
    digest = hashlib.sha256()
    with source.open("wb") as file:
        for _ in range(BIG_SIZE // (1 << 20)):
            block = os.urandom(1 << 20)
            digest.update(block)
            file.write(block)
    tracemalloc.start()
    try:
        agent.store(source, http_server.url("/put-sink/big.enc"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    headers, body_digest = http_server.puts["/put-sink/big.enc"]
    assert headers["content-length"] == str(BIG_SIZE)
    assert body_digest == digest.digest()
    assert peak < 8 * 1024 * 1024, f"peak Python memory {peak} bytes for a {BIG_SIZE}-byte file"


def test_http_store_of_an_empty_file(agent: FileAgent, http_server: Served, tmp_path: Path) -> None:
    source = tmp_path / "empty.enc"
    source.write_bytes(b"")
    agent.store(source, http_server.url("/put/empty.enc"))
    headers, body = http_server.puts["/put/empty.enc"]
    assert headers["content-length"] == "0"
    assert body == b""


@pytest.mark.parametrize(
    ("path", "status"),
    [("/created/out.enc", "201 Created"), ("/nocontent/out.enc", "204 No Content"),
     ("/put-redirect/out.enc", "307 Temporary Redirect")],
)
def test_http_store_accepts_only_200(
    agent: FileAgent, http_server: Served, tmp_path: Path, path: str, status: str
) -> None:
    source = tmp_path / "out.enc"
    source.write_bytes(b"ciphertext")
    url = http_server.url(path)
    with pytest.raises(TransferError) as caught:
        agent.store(source, url)
    assert str(caught.value) == f"HTTP {status} from {url}, expected 200"
    assert http_server.hits[path] == 1


def test_http_store_retries_5xx_and_resends_the_whole_body(
    agent: FileAgent, http_server: Served, tmp_path: Path
) -> None:
    source = tmp_path / "out.enc"
    source.write_bytes(PAYLOAD)
    agent.store(source, http_server.url("/put-flaky/out.enc"))
    assert http_server.hits["/put-flaky/out.enc"] == 2
    assert http_server.puts["/put-flaky/out.enc"][1] == PAYLOAD


def test_http_store_gives_up_on_persistent_5xx(agent: FileAgent, http_server: Served, tmp_path: Path) -> None:
    source = tmp_path / "out.enc"
    source.write_bytes(b"ciphertext")
    url = http_server.url("/put500/out.enc")
    with pytest.raises(TransferError) as caught:
        agent.store(source, url)
    assert str(caught.value) == f"HTTP 500 Internal Server Error from {url}, expected 200 (gave up after 3 attempts)"
    assert http_server.hits["/put500/out.enc"] == 3


def test_http_store_4xx_is_not_retried(agent: FileAgent, http_server: Served, tmp_path: Path) -> None:
    source = tmp_path / "out.enc"
    source.write_bytes(b"ciphertext")
    with pytest.raises(TransferError, match="HTTP 403 Forbidden"):
        agent.store(source, http_server.url("/put-denied/out.enc"))
    assert http_server.hits["/put-denied/out.enc"] == 1


def test_http_store_over_the_limit_sends_nothing(tmp_path: Path, http_server: Served) -> None:
    agent = served_agent(tmp_path, http_server, max_file_bytes=10)
    source = tmp_path / "out.enc"
    source.write_bytes(b"x" * 11)
    url = http_server.url("/put/too-big.enc")
    with pytest.raises(TransferError) as caught:
        agent.store(source, url)
    assert str(caught.value) == f"output {url} is larger than the limit of 10 bytes"
    assert http_server.hits["/put/too-big.enc"] == 0


def test_store_of_a_missing_or_odd_source_fails(agent: FileAgent, http_server: Served, tmp_path: Path) -> None:
    url = http_server.url("/put/none.enc")
    with pytest.raises(TransferError, match="cannot read the output for"):
        agent.store(tmp_path / "absent.enc", url)
    with pytest.raises(TransferError, match="is not a regular file"):
        agent.store(tmp_path, url)
    assert http_server.hits["/put/none.enc"] == 0


# -- redaction -----------------------------------------------------------------------------


def test_display_url_removes_credentials() -> None:
    assert display_url("https://alice:pa55w0rd@example.com:8443/b/in.enc?X-Amz-Signature=abc&t=1#frag") == (
        "https://example.com:8443/b/in.enc"
    )
    assert display_url("https://example.com/in.enc?token=secret") == "https://example.com/in.enc"
    assert display_url("https://example.com/in.enc#secret") == "https://example.com/in.enc"
    assert display_url("s3://bucket/key/in.enc") == "s3://bucket/key/in.enc"
    assert display_url("file:///data/in.enc") == "file:///data/in.enc"
    assert display_url("fusion:///TEACLAVE_FUSION_BASE/x/y") == "fusion:///TEACLAVE_FUSION_BASE/x/y"
    assert display_url("https://u:p@host/p%20q") == "https://host/p%20q"
    # A password with an unescaped '@' still does not survive.
    assert "pa" not in display_url("https://user:pa@ss@host/in.enc").split("//", 1)[1].split("/")[0]
    # Data URLs show their media type, never their content.
    assert display_url("data:text/plain;base64,c2VjcmV0") == "data:text/plain;base64,…"
    # Not even parseable: still no query, no userinfo.
    assert display_url("http://u:pw@[::1/x?sig=1") == "http://[::1/x"
    # No forged lines in a failure reason.
    assert "\n" not in display_url("https://host/a\x00b\x1bc")


def test_presigned_url_errors_never_show_the_query(agent: FileAgent, http_server: Served, scratch: Path) -> None:
    secret = "X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature=deadbeefcafe"
    url = http_server.url(f"/forbidden/in.enc?{secret}")
    with pytest.raises(TransferError) as caught:
        agent.fetch(url, scratch / "in.enc")
    message = str(caught.value)
    assert message == f"HTTP 403 Forbidden from {http_server.url('/forbidden/in.enc')}"
    assert "deadbeef" not in message and "AKIA" not in message


def test_userinfo_never_appears_in_errors(agent: FileAgent, http_server: Served, scratch: Path) -> None:
    port = http_server.authority.rpartition(":")[2]
    with pytest.raises(TransferError) as caught:
        agent.fetch(f"http://alice:hunter2secret@127.0.0.1:{port}/forbidden/in.enc?sig=topsecret", scratch / "in.enc")
    message = str(caught.value)
    assert message == f"HTTP 403 Forbidden from http://127.0.0.1:{port}/forbidden/in.enc"
    assert "hunter2" not in message and "alice" not in message and "topsecret" not in message


def test_file_name_of() -> None:
    assert file_name_of("https://host/a/b/in.enc?X-Amz-Signature=x#f") == "in.enc"
    assert file_name_of("https://host/a/in%20put.enc") == "in%20put.enc"  # as written, not decoded
    assert file_name_of("s3://bucket/dir/out.enc") == "out.enc"
    assert file_name_of("fusion:///TEACLAVE_FUSION_BASE/abc/def") == "def"
    assert file_name_of("file:///data/in.enc") == "in.enc"
    for url in ("https://host", "https://host/", "file:///dir/", "https://host/a/..", "https://host/.",
                "data:text/plain;base64,AAAA"):
        with pytest.raises(TransferError) as caught:
            file_name_of(url)
        assert str(caught.value) == f"{display_url(url)} has no file name in its path"
    with pytest.raises(TransferError) as caught:
        file_name_of("https://u:pw@host/?token=abc")
    assert str(caught.value) == "https://host/ has no file name in its path"
    with pytest.raises(TransferError, match="longer than 255 bytes"):
        file_name_of("https://host/" + "n" * 256)


# -- URL and target checks -----------------------------------------------------------------


def test_scheme_not_allowed(agent: FileAgent, scratch: Path, tmp_path: Path) -> None:
    with pytest.raises(TransferError) as caught:
        agent.fetch("ftp://host/in.enc", scratch / "in.enc")
    assert str(caught.value) == "URL scheme not allowed: ftp (allowed: data, fusion, http, https, s3)"
    assert not (scratch / "in.enc").exists()
    source = tmp_path / "out.enc"
    source.write_bytes(b"x")
    with pytest.raises(TransferError, match="URL scheme not allowed: file"):
        agent.store(source, f"file://{tmp_path}/copy.enc")
    assert not (tmp_path / "copy.enc").exists()


def test_relative_and_unparsable_urls_are_refused(agent: FileAgent, scratch: Path) -> None:
    with pytest.raises(TransferError, match="URL is not absolute: in.enc"):
        agent.fetch("in.enc", scratch / "a")
    with pytest.raises(TransferError, match=r"invalid URL: http://\[::1/x"):
        agent.fetch("http://[::1/x?sig=secret", scratch / "b")
    with pytest.raises(TransferError, match="invalid URL"):
        agent.fetch("http://127.0.0.1:99999/x", scratch / "c")
    assert list(scratch.iterdir()) == []


def test_unknown_scheme_is_unsupported(tmp_path: Path, scratch: Path) -> None:
    agent = FileAgent(fast_config(allowed_schemes=("nosuchscheme", "local")), tmp_path)
    with pytest.raises(TransferError) as caught:
        agent.fetch("nosuchscheme://host/in.enc", scratch / "in.enc")
    assert str(caught.value) == "unsupported URL scheme: nosuchscheme"
    # fsspec's own local-disk scheme would bypass file_roots: refused.
    (tmp_path / "key.pem").write_bytes(b"node secret")
    with pytest.raises(TransferError, match="unsupported URL scheme: local"):
        agent.fetch(f"local://{tmp_path}/key.pem", scratch / "in.enc")
    assert not (scratch / "in.enc").exists()


def test_other_fsspec_schemes_are_streamed_generically(tmp_path: Path, scratch: Path) -> None:
    agent = FileAgent(fast_config(allowed_schemes=("memory",)), tmp_path)
    source = tmp_path / "out.enc"
    source.write_bytes(PAYLOAD)
    agent.store(source, "memory://kettle-file-agent-test/out.enc")
    assert agent.fetch("memory://kettle-file-agent-test/out.enc", scratch / "in.enc") == len(PAYLOAD)
    assert (scratch / "in.enc").read_bytes() == PAYLOAD
    with pytest.raises(TransferError) as caught:
        agent.fetch("memory://kettle-file-agent-test/absent.enc", scratch / "absent.enc")
    assert str(caught.value) == "no object at memory://kettle-file-agent-test/absent.enc"
    assert not (scratch / "absent.enc").exists()
    with pytest.raises(TransferError, match="chained fsspec URLs are not supported"):
        agent.fetch("memory::file:///etc/passwd", scratch / "chained.enc")
    assert not (scratch / "chained.enc").exists()


def test_fetch_into_an_existing_target_leaves_it_alone(agent: FileAgent, http_server: Served, scratch: Path) -> None:
    target = scratch / "in.enc"
    target.write_bytes(b"precious")
    with pytest.raises(TransferError) as caught:
        agent.fetch(http_server.url("/ok/exists.enc"), target)
    assert "already exists" in str(caught.value)
    assert target.read_bytes() == b"precious"
    assert http_server.hits["/ok/exists.enc"] == 0
    # A symlink planted as the target is not followed either.
    elsewhere = scratch / "elsewhere"
    elsewhere.write_bytes(b"untouched")
    link = scratch / "link.enc"
    link.symlink_to(elsewhere)
    with pytest.raises(TransferError, match="already exists"):
        agent.fetch(http_server.url("/ok/link.enc"), link)
    assert elsewhere.read_bytes() == b"untouched" and link.is_symlink()


def test_fetch_into_a_missing_directory_fails(agent: FileAgent, http_server: Served, scratch: Path) -> None:
    with pytest.raises(TransferError, match="cannot create the local file for .*No such file or directory"):
        agent.fetch(http_server.url("/ok/in.enc"), scratch / "nodir" / "in.enc")


# -- data: ---------------------------------------------------------------------------------


def test_data_url_round_trip_and_refusals(agent: FileAgent, scratch: Path, tmp_path: Path) -> None:
    content = b"\x00\x01 ciphertext \xff" * 10
    url = "data:text/plain;base64," + base64.b64encode(content).decode()
    assert agent.fetch(url, scratch / "a") == len(content)
    assert (scratch / "a").read_bytes() == content
    assert agent.fetch("data:text/plain;base64,", scratch / "empty") == 0
    with pytest.raises(TransferError) as caught:
        agent.fetch("data:text/plain;base64,not*base64!", scratch / "b")
    assert str(caught.value) == "data URL data:text/plain;base64,… does not hold valid base64"
    with pytest.raises(TransferError, match="does not hold valid base64"):
        agent.fetch("data:text/plain;base64,QUJD=", scratch / "c")  # data after the padding
    with pytest.raises(TransferError, match="does not hold valid base64"):
        agent.fetch("data:text/plain;base64,QUI", scratch / "c")  # missing padding
    with pytest.raises(TransferError, match="does not hold valid base64"):
        agent.fetch("data:text/plain;base64,QU JD", scratch / "c")  # not in the alphabet
    with pytest.raises(TransferError, match="does not hold valid base64"):
        agent.fetch("data:text/plain;base64,QUJDé===", scratch / "c")  # not even ASCII
    with pytest.raises(TransferError, match="only data:text/plain;base64,<content> is accepted"):
        agent.fetch("data:text/plain,hello", scratch / "d")
    source = tmp_path / "out.enc"
    source.write_bytes(b"x")
    with pytest.raises(TransferError, match="cannot store to a data URL"):
        agent.store(source, "data:text/plain;base64,eA==")
    assert sorted(p.name for p in scratch.iterdir()) == ["a", "empty"]


def test_data_url_over_the_limit(tmp_path: Path, scratch: Path) -> None:
    agent = FileAgent(fast_config(max_file_bytes=3), tmp_path)
    assert agent.fetch("data:text/plain;base64,YWJj", scratch / "ok") == 3
    with pytest.raises(TransferError, match="is larger than the limit of 3 bytes"):
        agent.fetch("data:text/plain;base64,YWJjZA==", scratch / "big")
    assert not (scratch / "big").exists()


# -- file:// -------------------------------------------------------------------------------


@pytest.fixture
def rooted(tmp_path: Path) -> tuple[FileAgent, Path]:
    """An agent whose file URLs may use ``<home>/shared`` (given relative to home)."""
    home = tmp_path / "home"
    (home / "shared").mkdir(parents=True)
    config = fast_config(allowed_schemes=("file",), file_roots=("shared",))
    return FileAgent(config, home), home / "shared"


def test_file_url_inside_a_root_round_trips(rooted: tuple[FileAgent, Path], scratch: Path, tmp_path: Path) -> None:
    agent, root = rooted
    (root / "in.enc").write_bytes(PAYLOAD)
    assert agent.fetch(f"file://{root}/in.enc", scratch / "in.enc") == len(PAYLOAD)
    assert (scratch / "in.enc").read_bytes() == PAYLOAD
    (root / "sp ace.enc").write_bytes(b"spaced")
    assert agent.fetch(f"file://localhost{root}/sp%20ace.enc", scratch / "sp.enc") == 6
    source = tmp_path / "out.enc"
    source.write_bytes(PAYLOAD)
    agent.store(source, f"file://{root}/out.enc")
    assert (root / "out.enc").read_bytes() == PAYLOAD


def test_file_url_outside_the_roots_is_refused(rooted: tuple[FileAgent, Path], scratch: Path, tmp_path: Path) -> None:
    agent, root = rooted
    secret = tmp_path / "home" / "node-key.pem"
    secret.write_bytes(b"private key")
    refusals = [
        f"file://{secret}",
        f"file://{root}/../node-key.pem",
        f"file://{root}/%2E%2E/node-key.pem",
        "file:///etc/passwd",
    ]
    for url in refusals:
        with pytest.raises(TransferError) as caught:
            agent.fetch(url, scratch / "in.enc")
        assert "outside the directories file URLs may use (file_agent.file_roots)" in str(caught.value), url
        assert not (scratch / "in.enc").exists()
    source = tmp_path / "out.enc"
    source.write_bytes(b"x")
    with pytest.raises(TransferError, match="outside the directories"):
        agent.store(source, f"file://{root}/../planted.enc")
    assert not (tmp_path / "home" / "planted.enc").exists()


def test_file_url_symlink_escaping_the_root_is_refused(
    rooted: tuple[FileAgent, Path], scratch: Path, tmp_path: Path
) -> None:
    agent, root = rooted
    secret = tmp_path / "node-key.pem"
    secret.write_bytes(b"private key")
    (root / "innocent.enc").symlink_to(secret)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "subdir").symlink_to(outside)
    with pytest.raises(TransferError, match="outside the directories"):
        agent.fetch(f"file://{root}/innocent.enc", scratch / "in.enc")
    assert not (scratch / "in.enc").exists()
    source = tmp_path / "out.enc"
    source.write_bytes(b"x")
    with pytest.raises(TransferError, match="outside the directories"):
        agent.store(source, f"file://{root}/subdir/escaped.enc")
    assert not (outside / "escaped.enc").exists()
    # A symlink that stays inside the root is fine.
    (root / "real.enc").write_bytes(b"inside")
    (root / "alias.enc").symlink_to(root / "real.enc")
    assert agent.fetch(f"file://{root}/alias.enc", scratch / "alias.enc") == 6


def test_file_url_without_roots_is_refused(tmp_path: Path, scratch: Path) -> None:
    agent = FileAgent(fast_config(allowed_schemes=("file",)), tmp_path)
    (tmp_path / "in.enc").write_bytes(b"x")
    with pytest.raises(TransferError) as caught:
        agent.fetch(f"file://{tmp_path}/in.enc", scratch / "in.enc")
    assert str(caught.value) == (
        f"file URLs need file_agent.file_roots, and none is configured: file://{tmp_path}/in.enc is refused"
    )
    assert not (scratch / "in.enc").exists()


def test_file_url_fetch_needs_an_existing_regular_file(rooted: tuple[FileAgent, Path], scratch: Path) -> None:
    agent, root = rooted
    with pytest.raises(TransferError) as caught:
        agent.fetch(f"file://{root}/absent.enc", scratch / "a")
    assert str(caught.value) == f"no file at file://{root}/absent.enc"
    (root / "dir").mkdir()
    with pytest.raises(TransferError, match="is not a regular file"):
        agent.fetch(f"file://{root}/dir", scratch / "b")
    os.mkfifo(root / "fifo")
    started = time.monotonic()
    with pytest.raises(TransferError, match="is not a regular file"):
        agent.fetch(f"file://{root}/fifo", scratch / "c")
    assert time.monotonic() - started < 1  # a FIFO must not hang the worker
    with pytest.raises(TransferError, match="must not name a host"):
        agent.fetch(f"file://otherhost{root}/x", scratch / "d")
    assert list(scratch.iterdir()) == []


def test_file_url_store_never_overwrites(rooted: tuple[FileAgent, Path], tmp_path: Path) -> None:
    agent, root = rooted
    existing = root / "out.enc"
    existing.write_bytes(b"someone else's output")
    source = tmp_path / "out.enc"
    source.write_bytes(b"new")
    with pytest.raises(TransferError) as caught:
        agent.store(source, f"file://{root}/out.enc")
    assert str(caught.value) == f"file://{root}/out.enc already exists; a stored file never replaces one"
    assert existing.read_bytes() == b"someone else's output"
    # Nor through a dangling symlink planted at the target.
    (root / "dangling.enc").symlink_to(root / "would-be-created")
    with pytest.raises(TransferError, match="already exists"):
        agent.store(source, f"file://{root}/dangling.enc")
    assert not (root / "would-be-created").exists()
    with pytest.raises(TransferError, match="directory of .* does not exist"):
        agent.store(source, f"file://{root}/nodir/out.enc")
    assert not (root / "nodir").exists()


def test_a_retry_replaces_only_what_an_earlier_attempt_of_the_same_output_stored(
    rooted: tuple[FileAgent, Path], tmp_path: Path
) -> None:
    """A node that died after storing an output but before reporting leaves the file behind;
    the task's next attempt must be able to store it again, and nothing else may be replaced:
    not another output's file, not an unmarked one, and not a later attempt's file by a late
    earlier attempt."""
    agent, root = rooted
    url = f"file://{root}/out.enc"
    first, second = tmp_path / "first.enc", tmp_path / "second.enc"
    first.write_bytes(b"attempt 1, cut short")
    second.write_bytes(b"attempt 2")
    agent.store(first, url, mark=OutputMark("output-record-1", 1))
    assert os.getxattr(root / "out.enc", OUTPUT_MARK_XATTR) == b"1:output-record-1"
    agent.store(second, url, mark=OutputMark("output-record-1", 2))
    assert (root / "out.enc").read_bytes() == b"attempt 2"
    assert os.getxattr(root / "out.enc", OUTPUT_MARK_XATTR) == b"2:output-record-1"
    for mark in (OutputMark("output-record-1", 1), OutputMark("output-record-1", 2),
                 OutputMark("output-record-2", 3), None):
        with pytest.raises(TransferError, match="already exists; a stored file never replaces one"):
            agent.store(first, url, mark=mark)
        assert (root / "out.enc").read_bytes() == b"attempt 2"
    (root / "theirs.enc").write_bytes(b"someone else's")
    with pytest.raises(TransferError, match="already exists"):
        agent.store(first, f"file://{root}/theirs.enc", mark=OutputMark("output-record-1", 9))
    assert (root / "theirs.enc").read_bytes() == b"someone else's"
    (root / "link.enc").symlink_to(root / "out.enc")
    with pytest.raises(TransferError, match="already exists"):
        agent.store(first, f"file://{root}/link.enc", mark=OutputMark("output-record-1", 9))
    assert (root / "link.enc").is_symlink() and (root / "out.enc").read_bytes() == b"attempt 2"


class Collected:
    """A fetch target that keeps what it is given (a copy: the agent reuses its buffers)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.resets = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.data += data

    def reset(self) -> None:
        self.data.clear()
        self.resets += 1


def test_fetch_into_streams_to_a_consumer_and_restarts_it_on_retry(
    agent: FileAgent, http_server: Served, rooted: tuple[FileAgent, Path]
) -> None:
    target = Collected()
    assert agent.fetch_into(http_server.url("/half-then-drop/into.enc"), target) == len(PAYLOAD)
    assert bytes(target.data) == PAYLOAD and target.resets == 1
    local, root = rooted
    (root / "in.enc").write_bytes(PAYLOAD)
    target = Collected()
    assert local.fetch_into(f"file://{root}/in.enc", target) == len(PAYLOAD)
    assert bytes(target.data) == PAYLOAD and target.resets == 0
    with pytest.raises(TransferError, match="HTTP 500 Internal Server Error .*gave up after 3 attempts"):
        agent.fetch_into(http_server.url("/always500/into.enc"), Collected())


def test_an_upload_in_place_is_invisible_until_committed(rooted: tuple[FileAgent, Path]) -> None:
    agent, root = rooted
    upload = agent.open_upload(f"file://{root}/out.enc", mark=OutputMark("record", 1))
    assert upload is not None
    upload.file.write(PAYLOAD)
    assert list(root.iterdir()) == [], "nothing shows before the commit, not even a temporary name"
    upload.file.close()  # the writer may close its stream; the commit still has the file
    upload.commit()
    assert (root / "out.enc").read_bytes() == PAYLOAD
    assert os.getxattr(root / "out.enc", OUTPUT_MARK_XATTR) == b"1:record"
    dropped = agent.open_upload(f"file://{root}/dropped.enc")
    assert dropped is not None
    dropped.file.write(b"partial output of a failed task")
    dropped.discard()
    assert sorted(p.name for p in root.iterdir()) == ["out.enc"]


def test_an_upload_in_place_follows_the_store_rules(rooted: tuple[FileAgent, Path], tmp_path: Path) -> None:
    agent, root = rooted

    def put(name: str, data: bytes, mark: OutputMark | None = None) -> None:
        upload = agent.open_upload(f"file://{root}/{name}", mark=mark)
        assert upload is not None
        upload.file.write(data)
        upload.commit()

    (root / "theirs.enc").write_bytes(b"someone else's")
    with pytest.raises(TransferError, match="theirs.enc already exists; a stored file never replaces one"):
        put("theirs.enc", b"mine", OutputMark("record", 5))
    assert (root / "theirs.enc").read_bytes() == b"someone else's"
    put("out.enc", b"attempt 1", OutputMark("record", 1))
    put("out.enc", b"attempt 2", OutputMark("record", 2))
    assert (root / "out.enc").read_bytes() == b"attempt 2"
    with pytest.raises(TransferError, match="already exists"):
        put("out.enc", b"late attempt 1", OutputMark("record", 1))
    (root / "dangling.enc").symlink_to(root / "would-be-created")
    with pytest.raises(TransferError, match="already exists"):
        put("dangling.enc", b"x", OutputMark("record", 9))
    assert not (root / "would-be-created").exists()
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "escape").symlink_to(outside)
    with pytest.raises(TransferError, match="outside the directories file URLs may use"):
        agent.open_upload(f"file://{root}/escape/out.enc")
    with pytest.raises(TransferError, match="directory of .* does not exist"):
        agent.open_upload(f"file://{root}/nodir/out.enc")
    assert list(outside.iterdir()) == []
    small = FileAgent(fast_config(allowed_schemes=("file",), file_roots=(str(root),), max_file_bytes=10), tmp_path)
    upload = small.open_upload(f"file://{root}/big.enc")
    assert upload is not None
    upload.file.write(bytes(11))
    with pytest.raises(TransferError, match="larger than the limit of 10 bytes"):
        upload.commit()
    assert not (root / "big.enc").exists()


def test_only_local_targets_are_uploaded_in_place(agent: FileAgent, http_server: Served, tmp_path: Path) -> None:
    # A PUT states its length up front, so remote outputs are stored from a finished file.
    assert agent.open_upload(http_server.url("/put/out.enc")) is None
    fusion = FileAgent(fast_config(), tmp_path)
    upload = fusion.open_upload("fusion:///TEACLAVE_FUSION_BASE/a/b/out.enc")
    assert upload is not None
    upload.file.write(b"fused")
    upload.commit()
    assert (tmp_path / "fusion" / "a" / "b" / "out.enc").read_bytes() == b"fused"


# -- fusion:// -----------------------------------------------------------------------------


def test_fusion_round_trip_creates_directories(tmp_path: Path, scratch: Path) -> None:
    agent = FileAgent(fast_config(), tmp_path)
    source = tmp_path / "out.enc"
    source.write_bytes(PAYLOAD)
    url = "fusion:///TEACLAVE_FUSION_BASE/task-1/out.enc"
    agent.store(source, url)
    assert (tmp_path / "fusion" / "task-1" / "out.enc").read_bytes() == PAYLOAD
    assert agent.fetch(url, scratch / "in.enc") == len(PAYLOAD)
    assert (scratch / "in.enc").read_bytes() == PAYLOAD
    with pytest.raises(TransferError) as caught:
        agent.store(source, url)
    assert "already exists" in str(caught.value)
    with pytest.raises(TransferError) as caught:
        agent.fetch("fusion:///TEACLAVE_FUSION_BASE/task-1/absent.enc", scratch / "absent")
    assert str(caught.value) == "no fusion file at fusion:///TEACLAVE_FUSION_BASE/task-1/absent.enc"
    assert not (scratch / "absent").exists()


def test_fusion_refusals(tmp_path: Path, scratch: Path) -> None:
    agent = FileAgent(fast_config(fusion_dir="fusion-base"), tmp_path)
    (tmp_path / "fusion-base").mkdir()
    (tmp_path / "node-key.pem").write_bytes(b"private key")
    (tmp_path / "fusion-base" / "link").symlink_to(tmp_path)
    for url in (
        "fusion:///TEACLAVE_FUSION_BASE/../node-key.pem",
        "fusion:///TEACLAVE_FUSION_BASE/a/../../node-key.pem",
        "fusion:///TEACLAVE_FUSION_BASE/%2e%2e/node-key.pem",
        "fusion:///TEACLAVE_FUSION_BASE/link/node-key.pem",
    ):
        with pytest.raises(TransferError) as caught:
            agent.fetch(url, scratch / "in.enc")
        assert str(caught.value) == f"{display_url(url)} points outside the fusion directory"
        assert not (scratch / "in.enc").exists()
    for url in ("fusion:///other/x.enc", "fusion://host/TEACLAVE_FUSION_BASE/x.enc", "fusion:///TEACLAVE_FUSION_BASEx"):
        with pytest.raises(TransferError, match="does not start with fusion:///TEACLAVE_FUSION_BASE/"):
            agent.fetch(url, scratch / "in.enc")
    source = tmp_path / "out.enc"
    source.write_bytes(b"x")
    with pytest.raises(TransferError, match="points outside the fusion directory"):
        agent.store(source, "fusion:///TEACLAVE_FUSION_BASE/link/planted.enc")
    assert not (tmp_path / "planted.enc").exists()
    with pytest.raises(TransferError, match="points outside the fusion directory"):
        agent.store(source, "fusion:///TEACLAVE_FUSION_BASE/../planted.enc")
    assert not (tmp_path / "planted.enc").exists()


# -- s3:// (moto's real server) -------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = closed_port()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        patch.delenv("AWS_PROFILE", raising=False)
        patch.delenv("AWS_SESSION_TOKEN", raising=False)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
        server.start()
        try:
            endpoint = f"http://127.0.0.1:{port}"
            import boto3

            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="kettle")
            yield endpoint
        finally:
            server.stop()


def s3_agent(home: Path, endpoint: str, **overrides: object) -> FileAgent:
    """An agent that opens the test buckets with the node's own (environment) credentials."""
    buckets = ("kettle", "no-such-bucket")
    config = fast_config(allowed_schemes=("s3",), s3_endpoint_url=endpoint, s3_node_credential_buckets=buckets,
                         **overrides)
    return FileAgent(config, home)


def test_s3_round_trip_across_agents(s3_endpoint: str, tmp_path: Path, scratch: Path) -> None:
    writer = s3_agent(tmp_path, s3_endpoint)
    reader = s3_agent(tmp_path, s3_endpoint)
    url = "s3://kettle/task-1/out.enc"
    # The reader looks first and finds nothing: no cache may hide the object stored next.
    with pytest.raises(TransferError) as caught:
        reader.fetch(url, scratch / "early.enc")
    assert str(caught.value) == f"no object at {url}"
    assert not (scratch / "early.enc").exists()
    source = tmp_path / "out.enc"
    source.write_bytes(PAYLOAD)
    writer.store(source, url)
    assert reader.fetch(url, scratch / "in.enc") == len(PAYLOAD)
    assert (scratch / "in.enc").read_bytes() == PAYLOAD
    # Replaced object: the reader sees the new bytes, not a cached size or block.
    source.write_bytes(b"second version")
    writer.store(source, url)
    assert reader.fetch(url, scratch / "again.enc") == len(b"second version")
    assert (scratch / "again.enc").read_bytes() == b"second version"


def test_s3_multipart_upload(s3_endpoint: str, tmp_path: Path, scratch: Path) -> None:
    agent = s3_agent(tmp_path, s3_endpoint)
    content = os.urandom(9 * 1024 * 1024)  # over one upload block: a multipart upload
    source = tmp_path / "big.enc"
    source.write_bytes(content)
    agent.store(source, "s3://kettle/big.enc")
    assert agent.fetch("s3://kettle/big.enc", scratch / "big.enc") == len(content)
    assert (scratch / "big.enc").read_bytes() == content


def test_s3_missing_bucket_and_bad_urls(s3_endpoint: str, tmp_path: Path, scratch: Path) -> None:
    agent = s3_agent(tmp_path, s3_endpoint)
    with pytest.raises(TransferError, match="s3://no-such-bucket/in.enc"):
        agent.fetch("s3://no-such-bucket/in.enc", scratch / "in.enc")
    assert not (scratch / "in.enc").exists()
    with pytest.raises(TransferError, match="names no object"):
        agent.fetch("s3://kettle/", scratch / "in.enc")
    with pytest.raises(TransferError, match="names no bucket"):
        agent.fetch("s3:///key.enc", scratch / "in.enc")
    with pytest.raises(TransferError) as caught:
        agent.fetch("s3://AKIA:secretkey@kettle/in.enc", scratch / "in.enc")
    assert str(caught.value) == "s3 URLs must not carry credentials: s3://kettle/in.enc"


def test_s3_size_limit(s3_endpoint: str, tmp_path: Path, scratch: Path) -> None:
    big = s3_agent(tmp_path, s3_endpoint)
    source = tmp_path / "out.enc"
    source.write_bytes(b"y" * 100)
    big.store(source, "s3://kettle/limit.enc")
    small = s3_agent(tmp_path, s3_endpoint, max_file_bytes=10)
    with pytest.raises(TransferError) as caught:
        small.fetch("s3://kettle/limit.enc", scratch / "in.enc")
    assert str(caught.value) == "input s3://kettle/limit.enc is larger than the limit of 10 bytes"
    assert not (scratch / "in.enc").exists()
    with pytest.raises(TransferError) as caught:
        small.store(source, "s3://kettle/not-stored.enc")
    assert str(caught.value) == "output s3://kettle/not-stored.enc is larger than the limit of 10 bytes"
    with pytest.raises(TransferError, match="no object at"):
        big.fetch("s3://kettle/not-stored.enc", scratch / "absent.enc")
