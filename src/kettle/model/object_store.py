"""Owner-registered credentials for ``s3://`` files: what they may contain and where they lead.

A data owner may register an ``s3://`` URL together with credentials of its own
(:class:`~kettle.model.records.ObjectStoreCredentials`); the execution node then
signs the requests for that URL with exactly those credentials and sends them
as plain HTTP(S) requests under the file agent's egress policy (``docs/data.md``).
These are the rules both sides apply, as pure functions: management when the
file is registered (INVALID_ARGUMENT), the node again before it sends anything
(a failed task). Texts never quote a credential, and name no endpoint either:
they are read in audit logs and by every participant of a task.

Where the request goes:

- with ``endpoint_url`` (an S3-compatible store, or a particular AWS endpoint):
  path style, ``ENDPOINT/BUCKET/KEY`` — what MinIO, Ceph and most other stores
  answer;
- without: AWS S3 in ``region`` (``us-east-1`` if empty), virtual-hosted style
  ``https://BUCKET.s3.REGION.amazonaws.com/KEY`` for a bucket name that is a DNS
  label, path style ``https://s3.REGION.amazonaws.com/BUCKET/KEY`` otherwise
  (names with dots would not match the TLS certificate as a host).
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import quote, unquote, urlsplit

from .records import ObjectStoreCredentials

__all__ = [
    "DEFAULT_REGION",
    "MAX_SINGLE_PUT_BYTES",
    "credentials_problem",
    "region_of",
    "request_url",
    "s3_location",
]

DEFAULT_REGION: Final = "us-east-1"
MAX_SINGLE_PUT_BYTES: Final = 5 * 2**30
"""An upload with owner credentials is one signed PUT, and S3 takes at most 5 GiB in one."""

MAX_ACCESS_KEY_CHARS: Final = 128
MAX_SECRET_CHARS: Final = 256
MAX_SESSION_TOKEN_CHARS: Final = 8192
MAX_ENDPOINT_CHARS: Final = 2048

_ACCESS_KEY: Final = re.compile(rf"[\x21-\x7e]{{1,{MAX_ACCESS_KEY_CHARS}}}")
"""Printable ASCII, no space: it goes into the signature's credential scope (``KEY/DATE/REGION/s3/…``),
so ``/`` and ``,`` are refused on top."""
_SECRET: Final = re.compile(rf"[\x21-\x7e]{{1,{MAX_SECRET_CHARS}}}")
_TOKEN: Final = re.compile(rf"[\x21-\x7e]{{1,{MAX_SESSION_TOKEN_CHARS}}}")
"""Sent as a header value: printable ASCII without spaces."""
_REGION: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_BUCKET: Final = re.compile(r"[A-Za-z0-9._-]{1,255}")
_DNS_BUCKET: Final = re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_KEY_SAFE: Final = "/-_.~"


def _endpoint_problem(endpoint: str) -> str | None:
    """None if ``endpoint`` is ``http(s)://HOST[:PORT]`` with at most a ``/`` after it."""
    if len(endpoint) > MAX_ENDPOINT_CHARS:
        return f"s3 credentials: endpoint_url is longer than {MAX_ENDPOINT_CHARS} characters"
    if any(c.isspace() or not c.isprintable() for c in endpoint):
        return "s3 credentials: endpoint_url contains spaces or control characters"
    try:
        parts = urlsplit(endpoint)
        port = parts.port
    except ValueError:
        return "s3 credentials: endpoint_url is not a URL"
    if parts.scheme not in _DEFAULT_PORTS:
        return "s3 credentials: endpoint_url must be an http:// or https:// URL"
    if not parts.hostname or "@" in parts.netloc:
        return "s3 credentials: endpoint_url must name a host, without user or password"
    if parts.path not in ("", "/") or parts.query or parts.fragment or endpoint.endswith(("?", "#")):
        return "s3 credentials: endpoint_url takes no path, query string or fragment (buckets go in the s3:// URL)"
    if port == 0:
        return "s3 credentials: endpoint_url has an invalid port"
    return None


def credentials_problem(credentials: ObjectStoreCredentials) -> str | None:
    """Why ``credentials`` cannot be used (a sentence that quotes none of them), or None."""
    if not _ACCESS_KEY.fullmatch(credentials.access_key_id) or any(c in "/," for c in credentials.access_key_id):
        return (f"s3 credentials: access_key_id must be 1 to {MAX_ACCESS_KEY_CHARS} printable ASCII characters "
                "without spaces, '/' or ','")
    if not _SECRET.fullmatch(credentials.secret_access_key):
        return f"s3 credentials: secret_access_key must be 1 to {MAX_SECRET_CHARS} printable ASCII characters without spaces"
    if credentials.session_token and not _TOKEN.fullmatch(credentials.session_token):
        return (f"s3 credentials: session_token must be at most {MAX_SESSION_TOKEN_CHARS} printable ASCII characters "
                "without spaces")
    if credentials.region and not _REGION.fullmatch(credentials.region):
        return "s3 credentials: region must be 1 to 64 letters, digits, '-' or '_'"
    if credentials.endpoint_url:
        return _endpoint_problem(credentials.endpoint_url)
    return None


def region_of(credentials: ObjectStoreCredentials) -> str:
    return credentials.region or DEFAULT_REGION


def s3_location(url: str) -> tuple[str, str]:
    """(bucket, key) of ``s3://BUCKET/KEY`` as a store names them (the key percent-decoded).

    ValueError with a sentence when the URL names no object a signed request could
    address exactly: credentials in it, a query or fragment, no bucket or no key, a
    key ending in ``/``, or ``.``/``..`` segments (an HTTP path would resolve them,
    and the request would reach another object than the URL names)."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "s3":
        raise ValueError("s3 credentials are only for s3:// URLs")
    if "@" in parts.netloc:
        raise ValueError("s3 URLs must not carry credentials in them")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ValueError("s3 URLs take no query string or fragment")
    bucket = parts.netloc
    if not bucket:
        raise ValueError("the s3 URL names no bucket")
    if not _BUCKET.fullmatch(bucket) or set(bucket) == {"."}:
        raise ValueError("the s3 URL's bucket name may only have letters, digits, '.', '-' and '_'")
    key = unquote(parts.path)[1:]
    if not key or key.endswith("/"):
        raise ValueError("the s3 URL names no object")
    if _CONTROL.search(key):
        raise ValueError("the s3 URL's object key contains control characters")
    if any(segment in (".", "..") for segment in key.split("/")):
        raise ValueError("the s3 URL's object key must not contain '.' or '..' segments")
    return bucket, key


def request_url(credentials: ObjectStoreCredentials, bucket: str, key: str) -> str:
    """The HTTP(S) URL of object ``key`` in ``bucket`` at the store the credentials are for."""
    path_key = quote(key, safe=_KEY_SAFE)
    if credentials.endpoint_url:
        parts = urlsplit(credentials.endpoint_url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        # The default port is left out: the signature covers the Host header as the request sends it.
        port = "" if parts.port in (None, _DEFAULT_PORTS[parts.scheme]) else f":{parts.port}"
        return f"{parts.scheme}://{host}{port}/{quote(bucket, safe='')}/{path_key}"
    region = region_of(credentials)
    if _DNS_BUCKET.fullmatch(bucket):
        return f"https://{bucket}.s3.{region}.amazonaws.com/{path_key}"
    return f"https://s3.{region}.amazonaws.com/{quote(bucket, safe='')}/{path_key}"
