"""``http://`` and ``https://``: presigned URLs and plain web servers, through httpx.

Matches Teaclave's file agent on the wire: a GET whose status must be 2xx, and a
PUT with ``Content-Type: application/x-binary`` and an explicit
``Content-Length`` whose status must be exactly 200. Bodies are streamed in
:data:`~kettle.file_agent.streams.CHUNK` pieces both ways, and bytes are moved as
they are stored (``Accept-Encoding: identity``, raw stream): the cmac a file was
registered with covers exactly those bytes.

Transient failures (connection errors, timeouts, HTTP 5xx and 429) are retried
with exponential backoff; other refusals are final at once, since asking again
would only be refused again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Final, TypeVar

import httpx

from ..config import FileAgentConfig
from ..errors import TransferError
from .streams import CHUNK, Sink, Source
from .urls import ParsedUrl, scrub

__all__ = ["HttpTransport"]

_MAX_REDIRECTS: Final = 10
_T = TypeVar("_T")


class _Transient(Exception):
    """A failure worth another try; ``message`` is already fit to show."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _status_text(response: httpx.Response) -> str:
    try:
        phrase = HTTPStatus(response.status_code).phrase
    except ValueError:
        phrase = response.reason_phrase
    return f"HTTP {response.status_code} {phrase}".rstrip()


def _is_transient(status: int) -> bool:
    return status >= 500 or status == HTTPStatus.TOO_MANY_REQUESTS


class HttpTransport:
    """GET into a :class:`Sink`, PUT from a :class:`Source`, with timeouts and retries."""

    def __init__(self, config: FileAgentConfig) -> None:
        self._retries = max(0, config.retries)
        self._backoff = max(0, config.retry_backoff_ms) / 1000
        self._io_timeout = config.io_timeout_secs
        self._connect_timeout = config.connect_timeout_secs
        # Per read/write, not per transfer: a slow but live download of a big file is fine,
        # a server that stops sending is not.
        self._timeout = httpx.Timeout(
            connect=config.connect_timeout_secs,
            read=config.io_timeout_secs,
            write=config.io_timeout_secs,
            pool=config.connect_timeout_secs,
        )

    def _client(self, *, follow_redirects: bool) -> httpx.Client:
        # One client per transfer: the agent is used from several threads and
        # holds no connections between tasks.
        return httpx.Client(
            timeout=self._timeout, follow_redirects=follow_redirects, max_redirects=_MAX_REDIRECTS
        )

    def _transport_failure(self, exc: httpx.HTTPError, parsed: ParsedUrl) -> Exception:
        """Classify an httpx error: transient ones are retried, the rest end the transfer."""
        shown = parsed.shown
        if isinstance(exc, httpx.ConnectTimeout):
            return _Transient(f"connecting to {shown} timed out after {self._connect_timeout} s")
        if isinstance(exc, httpx.TimeoutException):
            return _Transient(f"{shown} sent or accepted nothing for {self._io_timeout} s")
        if isinstance(exc, httpx.ConnectError):
            return _Transient(f"cannot connect to {shown}: {scrub(str(exc), parsed.raw)}")
        if isinstance(exc, (httpx.NetworkError, httpx.RemoteProtocolError)):
            return _Transient(f"the connection to {shown} failed: {scrub(str(exc), parsed.raw)}")
        if isinstance(exc, httpx.TooManyRedirects):
            return TransferError(f"too many redirects from {shown} (more than {_MAX_REDIRECTS})")
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
                    plural = "s" if tries > 1 else ""
                    raise TransferError(f"{exc.message} (gave up after {tries} attempt{plural})") from None
            time.sleep(self._backoff * 2 ** (number - 1))
            before_retry()
        raise AssertionError("unreachable")

    def fetch(self, parsed: ParsedUrl, sink: Sink) -> None:
        """GET the URL into ``sink``; any 2xx is success (redirects followed, bounded)."""
        with self._client(follow_redirects=True) as client:

            def attempt() -> None:
                headers = {"Accept-Encoding": "identity"}
                with client.stream("GET", parsed.raw, headers=headers) as response:
                    if not response.is_success:
                        message = f"{_status_text(response)} from {parsed.shown}"
                        if _is_transient(response.status_code):
                            raise _Transient(message)
                        raise TransferError(message)
                    length = response.headers.get("Content-Length")
                    if length is not None and length.isdigit():
                        sink.announce(int(length))
                    for chunk in response.iter_raw(CHUNK):
                        sink.write(chunk)

            self._with_retries(parsed, attempt, sink.reset)

    def store(self, source: Source, parsed: ParsedUrl) -> None:
        """PUT the file with an explicit length; only 200 is success, as in Teaclave."""
        headers = {"Content-Type": "application/x-binary", "Content-Length": str(source.size)}
        # Redirects are not followed: a streamed body cannot be sent a second time.
        with self._client(follow_redirects=False) as client:

            def attempt() -> None:
                request = client.build_request("PUT", parsed.raw, headers=headers, content=source.chunks())
                response = client.send(request, stream=True)
                try:
                    if response.status_code == HTTPStatus.OK:
                        return
                    message = f"{_status_text(response)} from {parsed.shown}, expected 200"
                    if _is_transient(response.status_code):
                        raise _Transient(message)
                    raise TransferError(message)
                finally:
                    response.close()

            self._with_retries(parsed, attempt, lambda: None)
