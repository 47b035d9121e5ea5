"""The execution node's file agent: moves a task's encrypted files between URLs and scratch space.

A worker fetches each input's ciphertext by URL into the task's working
directory and stores each encrypted output to its URL. The agent never decrypts
anything; it only moves bytes, and it is careful about three things:

- **whose URLs these are**: users choose them, so schemes are limited to
  ``file_agent.allowed_schemes`` and local paths to ``file_roots`` / the fusion
  directory (``local.py``), or a task could read the node's own keys;
- **who reads the errors**: the message of a :class:`~kettle.errors.TransferError`
  becomes the task's failure reason, seen by every participant, so it only ever
  shows :func:`display_url` (no userinfo, query string or fragment);
- **where it connects**: a URL's host is resolved once and refused when it is
  internal (loopback, private, link-local, the node itself, the platform's own
  endpoints...) unless ``egress_allowlist`` names it (``egress.py``); and
  ``s3://`` uses the node's own credentials only for the buckets the operator
  listed (``s3_node_credential_buckets``), so the node is nobody's deputy; a
  file whose owner registered credentials of its own is opened with exactly
  those, through the HTTP transport and its egress policy (``objects.py``);
- **resources**: everything is streamed a chunk at a time, bounded by
  ``max_file_bytes``, with connect and per-read timeouts, and a failed fetch
  never leaves a partial file behind.

Schemes: ``http``/``https`` (httpx, ``http.py``), ``s3`` (s3fs, ``objects.py``),
``file``, ``fusion`` and ``data`` (``local.py``), and any other allowed scheme
fsspec implements (``objects.py``). Teaclave's file agent is the reference for
the wire behaviour and the fusion and data URL forms.
"""

from __future__ import annotations

import contextlib
import functools
import pathlib
from typing import TYPE_CHECKING

from ..config import FileAgentConfig
from ..errors import TransferError
from ..model.records import ObjectStoreCredentials
from .budget import StagingBudget
from .egress import UNREACHABLE, EgressPolicy, Resolver, system_resolver
from .local import LocalFiles, LocalUpload, OutputMark
from .streams import FetchTarget, FileTarget, Sink, Source, open_exclusive
from .urls import ParsedUrl, display_url, file_name_of, parse_url, scrub

if TYPE_CHECKING:
    from .http import HttpTransport
    from .objects import GenericStore, OwnerS3Store, S3Store

__all__ = [
    "UNREACHABLE", "FetchTarget", "FileAgent", "LocalUpload", "OutputMark", "StagingBudget", "display_url",
    "file_name_of",
]


def _unexpected(exc: Exception, parsed: ParsedUrl, verb: str) -> TransferError:
    """Any failure a backend did not anticipate still becomes a specific, redacted TransferError."""
    if isinstance(exc, TransferError):
        return exc
    if isinstance(exc, OSError) and exc.strerror:
        return TransferError(f"{verb} {parsed.shown} failed: {exc.strerror}")
    detail = scrub(str(exc), parsed.raw) or type(exc).__name__
    return TransferError(f"{verb} {parsed.shown} failed: {detail}")


def _s3_only(parsed: ParsedUrl) -> ParsedUrl:
    """Owner credentials open ``s3://`` URLs and nothing else (registration refuses the rest)."""
    if parsed.scheme != "s3":
        raise TransferError(f"s3 credentials are only for s3:// URLs: {parsed.shown}")
    return parsed


class FileAgent:
    """Fetches URLs into local files and stores local files to URLs, as configured.

    Safe to use from several threads at once (a worker fetches a task's inputs
    in parallel); it holds no connections between transfers.
    """

    def __init__(self, config: FileAgentConfig, home: pathlib.Path, resolver: Resolver = system_resolver) -> None:
        """``home`` anchors the relative paths of ``config`` (``fusion_dir``, ``file_roots``);
        ``resolver`` turns host names into addresses (the system's, or a test's own names)."""
        self._config = config
        self._allowed = tuple(scheme.lower() for scheme in config.allowed_schemes)
        self._egress = EgressPolicy(config.egress_allowlist, config.platform_endpoints, resolver)
        roots = tuple(home / root for root in config.file_roots)
        self._local = LocalFiles(roots, home / config.fusion_dir)

    @property
    def max_file_bytes(self) -> int:
        """The largest file it fetches or stores; workers hold task outputs to the same limit."""
        return self._config.max_file_bytes

    # The remote backends import httpx / fsspec (about 0.1 s of CPU): only when a task needs them,
    # so every worker process, most of them running tasks without such URLs, starts faster.

    @functools.cached_property
    def _http(self) -> HttpTransport:
        from .http import HttpTransport

        return HttpTransport(self._config, self._egress, self._allowed)

    @functools.cached_property
    def _s3(self) -> S3Store:
        from .objects import S3Store

        return S3Store(self._config)

    @functools.cached_property
    def _owner_s3(self) -> OwnerS3Store:
        from .objects import OwnerS3Store

        return OwnerS3Store(self._http, self._allowed)

    @functools.cached_property
    def _generic(self) -> GenericStore:
        from .objects import GenericStore

        return GenericStore()

    def fetch(
        self,
        url: str,
        target: pathlib.Path,
        budget: StagingBudget | None = None,
        credentials: ObjectStoreCredentials | None = None,
    ) -> int:
        """Stream the bytes at ``url`` into the new file ``target`` and return how many there were.

        Every byte is also taken from ``budget`` (the task's share of the node's disk), if given.
        ``credentials``: the ones the file's owner registered for this ``s3://`` URL, if any.

        ``target`` must not exist (it is created exclusively, so a fetch can never
        clobber or be redirected through an existing file) and its directory must.
        On any failure the partial target is removed before TransferError is raised.
        """
        parsed = parse_url(url, self._allowed)
        file = open_exclusive(target, parsed.shown)
        try:
            with file:
                return self._fetch_parsed(parsed, FileTarget(file), budget, credentials)
        except BaseException:
            with contextlib.suppress(OSError):
                target.unlink(missing_ok=True)
            raise

    def fetch_into(
        self,
        url: str,
        target: FetchTarget,
        budget: StagingBudget | None = None,
        credentials: ObjectStoreCredentials | None = None,
    ) -> int:
        """Stream the bytes at ``url`` into ``target`` as they arrive (:meth:`fetch` otherwise):
        for a consumer that processes them in one pass instead of keeping a copy.
        On failure the target holds part of the file: discarding it is the caller's job."""
        return self._fetch_parsed(parse_url(url, self._allowed), target, budget, credentials)

    def _fetch_parsed(
        self, parsed: ParsedUrl, target: FetchTarget, budget: StagingBudget | None,
        credentials: ObjectStoreCredentials | None,
    ) -> int:
        sink = Sink(target, self._config.max_file_bytes, parsed.shown, budget)
        try:
            self._fetch(parsed, sink, credentials)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a redacted TransferError
            raise _unexpected(exc, parsed, "fetching") from None
        return sink.count

    def _fetch(self, parsed: ParsedUrl, sink: Sink, credentials: ObjectStoreCredentials | None) -> None:
        scheme = parsed.scheme
        if credentials is not None:
            self._owner_s3.fetch(_s3_only(parsed), sink, credentials)
        elif scheme in ("http", "https"):
            self._http.fetch(parsed, sink)
        elif scheme == "s3":
            self._s3.fetch(parsed, sink)
        elif scheme == "file":
            self._local.fetch_file(parsed, sink)
        elif scheme == "fusion":
            self._local.fetch_fusion(parsed, sink)
        elif scheme == "data":
            self._local.fetch_data(parsed, sink)
        else:
            self._generic.fetch(parsed, sink)

    def store(
        self, source: pathlib.Path, url: str, credentials: ObjectStoreCredentials | None = None,
        *, mark: OutputMark | None = None,
    ) -> None:
        """Upload the local file ``source`` to ``url`` (with the owner's ``credentials``, if any).

        A source over ``max_file_bytes`` is refused before anything is sent.
        Local targets (``file``, ``fusion``) are never overwritten, except a file an
        earlier attempt stored for the same output (``mark``: the output record's id
        and this attempt); remote ones follow their store's
        semantics (a presigned PUT replaces the object).
        """
        parsed = parse_url(url, self._allowed)
        if parsed.scheme == "data":
            raise TransferError(f"cannot store to a data URL: {parsed.shown}")
        resolved_source = Source(source, self._config.max_file_bytes, parsed.shown)
        try:
            self._store(resolved_source, parsed, credentials, mark)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a redacted TransferError
            raise _unexpected(exc, parsed, "storing") from None

    def open_upload(
        self, url: str, credentials: ObjectStoreCredentials | None = None, *, mark: OutputMark | None = None,
    ) -> LocalUpload | None:
        """A :class:`LocalUpload` to write an output straight to its place, for URLs that allow it
        (``file``, ``fusion``: no second copy), or None: then write a local file and :meth:`store` it.

        Remote targets are stored from a finished local file: an HTTP PUT must state its length
        (Teaclave's wire behaviour, and what presigned URLs require), which is only known once the
        function is done. The same rules as :meth:`store` apply when the upload is committed."""
        parsed = parse_url(url, self._allowed)
        if credentials is not None or parsed.scheme not in ("file", "fusion"):
            return None
        try:
            if parsed.scheme == "file":
                return self._local.open_upload_file(parsed, self._config.max_file_bytes, mark)
            return self._local.open_upload_fusion(parsed, self._config.max_file_bytes, mark)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a redacted TransferError
            raise _unexpected(exc, parsed, "storing") from None

    def _store(
        self, source: Source, parsed: ParsedUrl, credentials: ObjectStoreCredentials | None, mark: OutputMark | None
    ) -> None:
        scheme = parsed.scheme
        if credentials is not None:
            self._owner_s3.store(source, _s3_only(parsed), credentials)
        elif scheme in ("http", "https"):
            self._http.store(source, parsed)
        elif scheme == "s3":
            self._s3.store(source, parsed)
        elif scheme == "file":
            self._local.store_file(source, parsed, mark)
        elif scheme == "fusion":
            self._local.store_fusion(source, parsed, mark)
        else:
            self._generic.store(source, parsed)
