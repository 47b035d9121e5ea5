"""``http://`` and ``https://``: presigned URLs and plain web servers, through httpx.

Matches Teaclave's file agent on the wire: a GET whose status must be 2xx, and a
PUT with ``Content-Type: application/x-binary`` and an explicit
``Content-Length`` whose status must be exactly 200. Bodies are streamed in
:data:`~kettle.file_agent.streams.CHUNK` pieces both ways, and bytes are moved as
they are stored (``Accept-Encoding: identity``, raw stream): the cmac a file was
registered with covers exactly those bytes.

Every connection goes through the :class:`~kettle.file_agent.egress.EgressPolicy`:
the host is resolved once, its addresses checked, and the request is sent to
one of exactly those addresses (the URL's name still goes in ``Host`` and in
TLS's SNI, and the certificate is checked against it). Redirects are followed
here, one hop at a time, so every hop is checked the same way, and at most
:data:`MAX_REDIRECTS` of them. The environment is not consulted (no proxy
settings, no ``.netrc``): the node's own credentials never go to a user's URL.

Transient failures (connection errors, timeouts, HTTP 5xx and 429) are retried
with exponential backoff; other refusals are final at once, since asking again
would only be refused again. A host that is refused, does not resolve or cannot
be connected to always fails with the same text (:data:`~kettle.file_agent.egress.UNREACHABLE`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from http import HTTPStatus
from typing import Final, TypeVar

import httpcore
import httpx

from ..config import FileAgentConfig
from ..errors import TransferError
from .egress import UNREACHABLE, EgressPolicy
from .streams import CHUNK, Sink, Source
from .urls import ParsedUrl, scrub

__all__ = ["MAX_REDIRECTS", "HttpTransport"]

MAX_REDIRECTS: Final = 10
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_T = TypeVar("_T")

# httpcore reads a response 64 KiB at a time, and every read costs a dozen Python-level calls in
# h11 and httpcore: a 1 GiB download spent most of its time there, not in recv. Reading CHUNK at a
# time makes a download 2-3x faster on loopback; memory stays one read's worth. The worker's HTTP
# traffic is all the file agent's, so the setting is process-wide on purpose.
# A release without the attribute just keeps its own read size.
if isinstance(getattr(httpcore.HTTP11Connection, "READ_NUM_BYTES", None), int):
    httpcore.HTTP11Connection.READ_NUM_BYTES = max(httpcore.HTTP11Connection.READ_NUM_BYTES, CHUNK)


class _Transient(Exception):
    """A failure worth another try; ``message`` is already fit to show.

    ``counted`` says whether the final message names the attempts: not for
    :data:`UNREACHABLE`, which must read the same as a refusal (never retried).
    """

    def __init__(self, message: str, *, counted: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.counted = counted


def _status_text(response: httpx.Response) -> str:
    try:
        phrase = HTTPStatus(response.status_code).phrase
    except ValueError:
        phrase = response.reason_phrase
    return f"HTTP {response.status_code} {phrase}".rstrip()


def _http_url(text: str) -> httpx.URL:
    """The URL as httpx reads it. A URL that urlsplit accepted and httpx does not has a host
    httpx cannot connect to (``0177.0.0.1``, a bad IDNA name...): unreachable, in the same words."""
    try:
        return httpx.URL(text)
    except (httpx.InvalidURL, UnicodeError, ValueError):
        raise TransferError(UNREACHABLE) from None


def _is_transient(status: int) -> bool:
    return status >= 500 or status == HTTPStatus.TOO_MANY_REQUESTS


class HttpTransport:
    """GET into a :class:`Sink`, PUT from a :class:`Source`, with timeouts, retries and the egress policy."""

    def __init__(self, config: FileAgentConfig, policy: EgressPolicy, allowed_schemes: tuple[str, ...]) -> None:
        self._policy = policy
        self._allowed = allowed_schemes
        self._retries = max(0, config.retries)
        self._backoff = max(0, config.retry_backoff_ms) / 1000
        self._io_timeout = config.io_timeout_secs
        # Per read/write, not per transfer: a slow but live download of a big file is fine,
        # a server that stops sending is not.
        self._timeout = httpx.Timeout(
            connect=config.connect_timeout_secs,
            read=config.io_timeout_secs,
            write=config.io_timeout_secs,
            pool=config.connect_timeout_secs,
        )

    def _client(self) -> httpx.Client:
        # One client per transfer: the agent is used from several threads and holds no
        # connections between tasks. trust_env=False: no proxy from the environment (it would
        # resolve and connect on its own) and no .netrc (the node's credentials).
        return httpx.Client(timeout=self._timeout, follow_redirects=False, trust_env=False)

    @contextlib.contextmanager
    def _send(
        self,
        client: httpx.Client,
        method: str,
        url: httpx.URL,
        headers: dict[str, str],
        content: Callable[[], Iterable[bytes]] | None = None,
    ) -> Iterator[httpx.Response]:
        """Send one request to one of the addresses the egress policy allows for the URL's host."""
        if url.scheme not in _DEFAULT_PORTS or not url.raw_host:
            raise TransferError(UNREACHABLE)
        host = url.raw_host.decode("ascii")
        addresses = self._policy.addresses(host, url.port or _DEFAULT_PORTS[url.scheme])
        # The URL's own name for the server: in Host, and for TLS in SNI and the certificate check.
        pinned_headers = {**headers, "Host": url.netloc.decode("ascii")}
        extensions = {"sni_hostname": host} if url.scheme == "https" else {}
        for address in addresses:
            request = client.build_request(
                method, url.copy_with(host=address.split("%", 1)[0]), headers=pinned_headers,
                content=None if content is None else content(), extensions=extensions,
            )
            try:
                response = client.send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout):
                continue  # the next address of the same resolution, if there is one
            try:
                yield response
            finally:
                response.close()
            return
        raise _Transient(UNREACHABLE, counted=False)

    def _transport_failure(self, exc: httpx.HTTPError, parsed: ParsedUrl) -> Exception:
        """Classify an httpx error: transient ones are retried, the rest end the transfer.

        Connection failures never get here: :meth:`_send` turns them into :data:`UNREACHABLE`."""
        shown = parsed.shown
        if isinstance(exc, httpx.TimeoutException):
            return _Transient(f"{shown} sent or accepted nothing for {self._io_timeout} s")
        if isinstance(exc, (httpx.NetworkError, httpx.RemoteProtocolError)):
            return _Transient(f"the connection to {shown} failed: {scrub(str(exc), parsed.raw)}")
        detail = scrub(str(exc), parsed.raw) or type(exc).__name__
        return TransferError(f"HTTP transfer of {shown} failed: {detail}")

    def _with_retries(self, parsed: ParsedUrl, attempt: Callable[[], _T], before_retry: Callable[[], None]) -> _T:
        tries = self._retries + 1
        for number in range(1, tries + 1):
            try:
                try:
                    return attempt()
                except httpx.HTTPError as exc:
                    raise self._transport_failure(exc, parsed) from None
            except _Transient as exc:
                if number == tries:
                    if not exc.counted:
                        raise TransferError(exc.message) from None
                    plural = "s" if tries > 1 else ""
                    raise TransferError(f"{exc.message} (gave up after {tries} attempt{plural})") from None
            time.sleep(self._backoff * 2 ** (number - 1))
            before_retry()
        raise AssertionError("unreachable")

    def _next_hop(self, url: httpx.URL, response: httpx.Response, parsed: ParsedUrl) -> httpx.URL:
        """Where a redirect points; only to http(s), and only where the URL's scheme is allowed."""
        target = _http_url(str(url.join(_http_url(response.headers["Location"]))))
        if target.scheme not in _DEFAULT_PORTS or target.scheme not in self._allowed:
            raise TransferError(f"{parsed.shown} redirects to a {target.scheme or 'relative'} URL, which is not followed")
        return target

    def fetch(self, parsed: ParsedUrl, sink: Sink, signed: Mapping[str, str] | None = None) -> None:
        """GET the URL into ``sink``; any 2xx is success (redirects followed, each hop checked, bounded).

        ``signed``: authorization headers for exactly this URL (an owner-credential s3 request);
        such a request follows no redirect, so they never go to another host."""
        headers = {"Accept-Encoding": "identity", **(signed or {})}
        with self._client() as client:

            def attempt() -> None:
                url = _http_url(parsed.raw)
                for _hop in range(MAX_REDIRECTS + 1):
                    with self._send(client, "GET", url, headers) as response:
                        if response.is_redirect and signed is None:
                            url = self._next_hop(url, response, parsed)
                            continue
                        if not response.is_success:
                            message = f"{_status_text(response)} from {parsed.shown}"
                            if _is_transient(response.status_code):
                                raise _Transient(message)
                            raise TransferError(message)
                        length = response.headers.get("Content-Length")
                        if length is not None and length.isdigit():
                            sink.announce(int(length))
                        # As received (at most a read's worth): re-chunking would only copy.
                        for chunk in response.iter_raw():
                            sink.write(chunk)
                        return
                raise TransferError(f"too many redirects from {parsed.shown} (more than {MAX_REDIRECTS})")

            self._with_retries(parsed, attempt, sink.reset)

    def store(self, source: Source, parsed: ParsedUrl, signed: Mapping[str, str] | None = None) -> None:
        """PUT the file with an explicit length; only 200 is success, as in Teaclave.

        ``signed``: authorization headers for exactly this URL, as for :meth:`fetch`."""
        headers = {"Content-Type": "application/x-binary", "Content-Length": str(source.size), **(signed or {})}
        url = _http_url(parsed.raw)
        # Redirects are not followed: a streamed body cannot be sent a second time.
        with self._client() as client:

            def attempt() -> None:
                with self._send(client, "PUT", url, headers, source.chunks) as response:
                    if response.status_code == HTTPStatus.OK:
                        return
                    message = f"{_status_text(response)} from {parsed.shown}, expected 200"
                    if _is_transient(response.status_code):
                        raise _Transient(message)
                    raise TransferError(message)

            self._with_retries(parsed, attempt, lambda: None)
