"""Reading URLs safely: what may be shown, what names a file, what a URL must look like.

A task's URLs are chosen by its participants and its failure reason is read by
all of them, so two rules hold everywhere in the file agent: an error message
only ever shows :func:`display_url` of a URL (presigned S3/HTTP URLs carry their
credentials in the query string, and ``user:password@`` is credentials too), and
text coming from a library is passed through :func:`scrub` before it is shown.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import SplitResult, urlsplit

from ..errors import TransferError

__all__ = ["ParsedUrl", "display_url", "file_name_of", "parse_url", "scrub"]

_MAX_NAME_BYTES: Final = 255
"""Longest file name Linux file systems accept; a longer one could not be staged."""
_DATA_SHOWN: Final = 64
"""How much of a data URL's media type part is shown (its content never is)."""
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_EMBEDDED_URL: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_MAX_DETAIL: Final = 300


@dataclass(frozen=True)
class ParsedUrl:
    """A URL that parsed and is absolute; ``shown`` is the only form fit for messages."""

    raw: str
    scheme: str
    parts: SplitResult
    shown: str


def _escape_controls(text: str) -> str:
    # A URL with a newline in it must not be able to forge lines of a failure reason.
    return _CONTROL.sub(lambda m: f"%{ord(m.group()):02X}", text)


def _rough_display(url: str) -> str:
    """Best effort for text that does not even parse as a URL: still never show secrets."""
    head = re.split(r"[?#]", url, maxsplit=1)[0]
    head = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/]*@", r"\1", head)
    return _escape_controls(head)


def _has_authority(url: str, scheme: str) -> bool:
    rest = url.strip()[len(scheme) + 1 :]
    return rest.startswith("//")


def display_url(url: str) -> str:
    """The URL as every participant of a task may see it.

    Userinfo, query string and fragment are removed because that is where
    credentials travel (basic auth, presigned signatures and tokens); a data
    URL shows only its media type, since its content is the file itself.
    Used in every error message the file agent raises.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return _rough_display(url)
    scheme = parts.scheme
    if not scheme:
        return _rough_display(url)
    if scheme == "data":
        media = parts.path.split(",", 1)[0]
        if len(media) > _DATA_SHOWN:
            media = media[:_DATA_SHOWN] + "…"
        return _escape_controls(f"data:{media},…")
    host = parts.netloc.rpartition("@")[2]
    authority = f"//{host}" if host or _has_authority(url, scheme) else ""
    return _escape_controls(f"{scheme}:{authority}{parts.path}")


def file_name_of(url: str) -> str:
    """The last segment of the URL's path, exactly as written in the URL (not percent-decoded).

    It is the name an SGX protected file is bound to, so it must be the very
    text its owner used; it is also the name the file gets in a task's scratch
    space, so names that could not be a single local file (``.``, ``..``, none
    at all, control characters, longer than 255 bytes) are refused. URLs with
    an opaque path (``data:``) have no path segments and so no file name.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        raise TransferError(f"invalid URL: {display_url(url)}") from None
    shown = display_url(url)
    path = parts.path
    if not path.startswith("/"):
        raise TransferError(f"{shown} has no file name in its path")
    name = path.rsplit("/", 1)[1]
    if name in ("", ".", ".."):
        raise TransferError(f"{shown} has no file name in its path")
    if _CONTROL.search(name):
        raise TransferError(f"the file name in {shown} contains control characters")
    if len(name.encode("utf-8", "surrogatepass")) > _MAX_NAME_BYTES:
        raise TransferError(f"the file name in {shown} is longer than {_MAX_NAME_BYTES} bytes")
    return name


def parse_url(url: str, allowed_schemes: tuple[str, ...]) -> ParsedUrl:
    """Parse ``url``, requiring it to be absolute and its scheme to be allowed."""
    shown = display_url(url)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - validates the port, which urlsplit alone does not
    except ValueError:
        raise TransferError(f"invalid URL: {shown}") from None
    if not parts.scheme:
        raise TransferError(f"URL is not absolute: {shown}")
    if parts.scheme not in allowed_schemes:
        allowed = ", ".join(sorted(allowed_schemes))
        raise TransferError(f"URL scheme not allowed: {parts.scheme} (allowed: {allowed})")
    return ParsedUrl(raw=url, scheme=parts.scheme, parts=parts, shown=shown)


def scrub(text: str, url: str) -> str:
    """Library error text made fit to show: no credentials of ``url`` or of any URL in it.

    Exceptions from httpx, botocore or fsspec may quote the URL they were given
    (or a redirect target) in full, presigned query included.
    """
    secrets: list[str] = [url]
    try:
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        secrets += [parts.query, parts.fragment, userinfo, userinfo.partition(":")[2]]
    except ValueError:
        pass
    # Very short strings would mangle unrelated text; they are no real secret either.
    for secret in sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, display_url(url) if secret == url else "…")
    text = _EMBEDDED_URL.sub(lambda m: display_url(m.group()), text)
    text = _escape_controls(text)
    if len(text) > _MAX_DETAIL:
        text = text[:_MAX_DETAIL] + "…"
    return text
