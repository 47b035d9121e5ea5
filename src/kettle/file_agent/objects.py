"""Object stores through fsspec: ``s3://`` (s3fs) and any other scheme fsspec knows.

Reads and writes go through fsspec file objects a chunk at a time, so memory is
bounded by one chunk plus the store's block buffer whatever the object size. A
failed upload is discarded (an S3 multipart upload is aborted), never committed
half-written.

``s3://`` is read and written with the execution node's own credentials, so
only for the buckets the operator listed in ``s3_node_credential_buckets``: for
any other bucket the node would be the user's deputy, reading or writing what
the node may but the user may not. Such a URL is refused before anything is
sent; the data owner gives a presigned ``https://`` URL instead (the
reference's own model), which the HTTP transport fetches under the egress policy,
or registers credentials of its own with the file (:class:`OwnerS3Store`).

With owner credentials nothing ambient takes part: the request is signed here
(AWS Signature V4, botocore's signer given exactly those keys, no botocore
session, so no environment variable, ``~/.aws`` file or instance metadata is
ever consulted) and sent by the HTTP transport, which resolves the store's host
once, applies the egress policy to it like to any URL (an owner's endpoint may
not make the node reach an internal store unless the operator allowlists it),
ignores proxy settings, and follows no redirect for it.

fsspec caches filesystem instances and directory listings between calls; an
execution node serves many tasks, so the agent opts out of both
(``skip_instance_cache``, ``use_listings_cache=False``): a fetch must see the
object as it is now, and credentials are read when the agent is made.
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote, urlsplit

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ..config import FileAgentConfig
from ..errors import TransferError
from ..model.object_store import (
    MAX_SINGLE_PUT_BYTES,
    credentials_problem,
    region_of,
    request_url,
    s3_location,
)
from ..model.records import ObjectStoreCredentials
from .streams import CHUNK, Sink, Source
from .urls import ParsedUrl, scrub

if TYPE_CHECKING:
    from .http import HttpTransport

__all__ = ["GenericStore", "OwnerS3Store", "S3Store"]

_READ_BLOCK: Final = 4 * CHUNK
"""Read-ahead of a fetched object: a few chunks per request instead of one request per chunk."""
_WRITE_BLOCK: Final = 8 * CHUNK
"""Multipart part size of an upload (S3 requires at least 5 MiB); also the upload's buffer."""


def _failure(exc: Exception, parsed: ParsedUrl, what: str) -> TransferError:
    if isinstance(exc, TransferError):
        return exc
    if isinstance(exc, FileNotFoundError):
        return TransferError(f"no object at {parsed.shown}")
    if isinstance(exc, PermissionError):
        return TransferError(f"access to {parsed.shown} was denied")
    detail = scrub(str(exc), parsed.raw) or type(exc).__name__
    return TransferError(f"{what} {parsed.shown} failed: {detail}")


def _fetch(fs: Any, path: str, parsed: ParsedUrl, sink: Sink, options: dict[str, Any]) -> None:
    try:
        with fs.open(path, "rb", **options) as file:
            size = getattr(file, "size", None)
            sink.announce(size if isinstance(size, int) else None)
            while chunk := file.read(CHUNK):
                sink.write(chunk)
    except IsADirectoryError:
        raise TransferError(f"{parsed.shown} is not an object but a directory") from None
    except Exception as exc:  # noqa: BLE001 - every failure becomes a redacted TransferError
        raise _failure(exc, parsed, "fetching") from None


def _store(fs: Any, path: str, source: Source, parsed: ParsedUrl, block_size: int | None) -> None:
    options = {} if block_size is None else {"block_size": block_size}
    try:
        file = fs.open(path, "wb", **options)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a redacted TransferError
        raise _failure(exc, parsed, "storing") from None
    try:
        for chunk in source.chunks():
            file.write(chunk)
    except BaseException as exc:
        # Closing would commit what was written so far; throw it away instead.
        discard = getattr(file, "discard", None)
        if callable(discard):
            with contextlib.suppress(Exception):  # the original failure is the one to report
                discard()
        with contextlib.suppress(AttributeError):  # plain file objects have a read-only `closed`
            file.closed = True  # keep fsspec's finaliser from committing the remains
        if isinstance(exc, Exception):
            raise _failure(exc, parsed, "storing") from None
        raise
    try:
        file.close()
    except Exception as exc:  # noqa: BLE001 - every failure becomes a redacted TransferError
        raise _failure(exc, parsed, "storing") from None


class S3Store:
    """``s3://bucket/key`` through s3fs, optionally at an S3-compatible endpoint."""

    def __init__(self, config: FileAgentConfig) -> None:
        self._config = config
        self._buckets = frozenset(config.s3_node_credential_buckets)
        self._lock = threading.Lock()
        self._fs: Any = None

    def _filesystem(self) -> Any:
        with self._lock:
            if self._fs is None:
                import s3fs  # imported on first use: botocore is slow to import

                config = self._config
                client_kwargs = {"endpoint_url": config.s3_endpoint_url} if config.s3_endpoint_url else {}
                self._fs = s3fs.S3FileSystem(
                    skip_instance_cache=True,
                    use_listings_cache=False,
                    client_kwargs=client_kwargs,
                    config_kwargs={
                        "connect_timeout": config.connect_timeout_secs,
                        "read_timeout": config.io_timeout_secs,
                        "retries": {"max_attempts": max(0, config.retries) + 1, "mode": "standard"},
                    },
                )
                # s3fs's own retries of throttling and similar errors (default 5).
                self._fs.retries = max(0, config.retries) + 1
            return self._fs

    def _path(self, parsed: ParsedUrl) -> str:
        """The bucket/key of the URL, refused unless the node may use its own credentials on the bucket."""
        parts = parsed.parts
        if "@" in parts.netloc:
            raise TransferError(f"s3 URLs must not carry credentials: {parsed.shown}")
        if parts.query or parts.fragment:
            raise TransferError(f"s3 URLs take no query string or fragment: {parsed.shown}")
        key = unquote(parts.path).lstrip("/")
        if not parts.netloc:
            raise TransferError(f"{parsed.shown} names no bucket")
        if not key or key.endswith("/"):
            raise TransferError(f"{parsed.shown} names no object")
        if parts.netloc not in self._buckets:
            raise TransferError(
                f"{parsed.shown} is in a bucket this platform does not open with its own credentials "
                "(file_agent.s3_node_credential_buckets); register a presigned https URL instead"
            )
        return f"{parts.netloc}/{key}"

    def fetch(self, parsed: ParsedUrl, sink: Sink) -> None:
        path = self._path(parsed)
        fs = self._filesystem()
        fs.invalidate_cache(path)
        _fetch(fs, path, parsed, sink, {"block_size": _READ_BLOCK, "cache_type": "readahead"})

    def store(self, source: Source, parsed: ParsedUrl) -> None:
        path = self._path(parsed)
        _store(self._filesystem(), path, source, parsed, _WRITE_BLOCK)


def _signed_headers(method: str, url: str, credentials: ObjectStoreCredentials) -> dict[str, str]:
    """AWS Signature V4 headers for one request, computed from ``credentials`` alone.

    The payload is declared unsigned (``UNSIGNED-PAYLOAD``): uploads are streamed, and
    the body's integrity is the file's own cmac, checked by whoever reads it."""
    # Imported on first use: botocore is slow to import. Only its signer is used, never a session.
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    class UnsignedPayload(S3SigV4Auth):
        def _should_sha256_sign_payload(self, request: Any) -> bool:
            return False

    request = AWSRequest(method=method, url=url)
    keys = Credentials(credentials.access_key_id, credentials.secret_access_key, credentials.session_token or None)
    UnsignedPayload(keys, "s3", region_of(credentials)).add_auth(request)
    return {str(name): str(value) for name, value in request.headers.items()}


class OwnerS3Store:
    """``s3://bucket/key`` with credentials the file's owner registered: signed here, sent over HTTP(S)."""

    def __init__(self, http: HttpTransport, allowed_schemes: tuple[str, ...]) -> None:
        self._http = http
        self._allowed = allowed_schemes

    def _request(self, method: str, parsed: ParsedUrl, credentials: ObjectStoreCredentials) -> tuple[ParsedUrl, dict[str, str]]:
        """The HTTP(S) request for the object, shown as the s3:// URL, and its signed headers."""
        problem = credentials_problem(credentials)
        if problem is not None:
            raise TransferError(f"{problem}: {parsed.shown}")
        try:
            bucket, key = s3_location(parsed.raw)
        except ValueError as exc:
            raise TransferError(f"{exc}: {parsed.shown}") from None
        url = request_url(credentials, bucket, key)
        parts = urlsplit(url)
        if parts.scheme not in self._allowed:
            allowed = ", ".join(sorted(self._allowed))
            raise TransferError(f"URL scheme not allowed: {parts.scheme} (allowed: {allowed}), for the store of {parsed.shown}")
        return ParsedUrl(raw=url, scheme=parts.scheme, parts=parts, shown=parsed.shown), _signed_headers(method, url, credentials)

    def fetch(self, parsed: ParsedUrl, sink: Sink, credentials: ObjectStoreCredentials) -> None:
        target, headers = self._request("GET", parsed, credentials)
        self._http.fetch(target, sink, signed=headers)

    def store(self, source: Source, parsed: ParsedUrl, credentials: ObjectStoreCredentials) -> None:
        if source.size > MAX_SINGLE_PUT_BYTES:
            raise TransferError(
                f"{parsed.shown}: an upload with the owner's s3 credentials is one PUT, at most "
                f"{MAX_SINGLE_PUT_BYTES} bytes; this output has {source.size}"
            )
        target, headers = self._request("PUT", parsed, credentials)
        self._http.store(source, target, signed=headers)


class GenericStore:
    """Any other allowed scheme fsspec has an implementation for (``memory``, ``gcs``, ...).

    Local-disk implementations and chained URLs (``a::b://``) are refused: they
    would reach the node's own files without the ``file_roots`` check.
    """

    @staticmethod
    def _resolve(parsed: ParsedUrl) -> tuple[Any, str]:
        scheme = parsed.scheme
        if "::" in parsed.raw:
            raise TransferError(f"chained fsspec URLs are not supported: {parsed.shown}")
        try:
            cls = fsspec.get_filesystem_class(scheme)
        except (ValueError, ImportError):
            raise TransferError(f"unsupported URL scheme: {scheme}") from None
        if issubclass(cls, LocalFileSystem):
            raise TransferError(f"unsupported URL scheme: {scheme} (local files need file:// URLs)")
        try:
            fs, path = fsspec.core.url_to_fs(parsed.raw, skip_instance_cache=True)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a redacted TransferError
            raise _failure(exc, parsed, "opening") from None
        return fs, path

    def fetch(self, parsed: ParsedUrl, sink: Sink) -> None:
        fs, path = self._resolve(parsed)
        with contextlib.suppress(Exception):  # a filesystem without a cache has nothing to invalidate
            fs.invalidate_cache(path)
        _fetch(fs, path, parsed, sink, {})

    def store(self, source: Source, parsed: ParsedUrl) -> None:
        fs, path = self._resolve(parsed)
        _store(fs, path, source, parsed, None)
