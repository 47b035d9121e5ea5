"""How the console keeps other local programs and other web pages out.

The console is a web server on 127.0.0.1, so anything on this machine can connect
to it: another user's processes, and any page open in the user's own browser. It
holds the user's credentials, so every request must prove it comes from the page
``kettle console`` printed, and nothing from another origin may act through it:

- **The run secret.** A random token made per run, printed only in the URL. The
  first visit with ``?secret=…`` exchanges it for two things derived from it: a
  cookie (HttpOnly, SameSite=Strict) and a path prefix every page lives under
  (``/<prefix>/status``). Every other request needs both. Another local user who
  did not see the URL gets 403. Both, because browsers keep cookies per host, not
  per port: the cookie's Path is the prefix, so another local web server the
  browser visits is not sent it at any path it could know, and even a cookie that
  leaked opens nothing without the prefix (which the referrer policy keeps within
  the console).
- **The Host header.** Only ``127.0.0.1:PORT`` and ``localhost:PORT``, so a page
  of a name that was made to resolve to 127.0.0.1 (DNS rebinding) is refused.
- **Changes need more than the cookie.** Every POST carries a CSRF token derived
  from the secret (in the form, never in a cookie), and its ``Origin`` (or, when
  a browser sends none, ``Sec-Fetch-Site``) must be the console itself.
- **The page loads only itself.** A strict Content-Security-Policy: scripts,
  styles, images and connections from the console's own origin only; no inline
  script; no framing; forms post only to the console. Everything the page uses is
  served from the installed package.

Pure functions here decide; :class:`Guard` applies them to every request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Message, Receive, Scope, Send

COOKIE_PREFIX = "kettle_console_"
"""The session cookie is named for the console's port: browsers keep cookies per host, not per port,
so two consoles (two homes) on one machine would otherwise overwrite each other's session."""
CSRF_FIELD = "csrf_token"
SECRET_PARAMETER = "secret"

CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self'",
    "connect-src 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
    "base-uri 'none'",
))

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    # Never tell another site where the user came from. Not ``no-referrer``: under it Chromium
    # sends ``Origin: null`` even on the console's own form posts, which the origin check refuses.
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
)

REFUSED_SECRET = "This console answers only the browser that opened the link `kettle console` printed."
REFUSED_HOST = "This console answers only at 127.0.0.1 or localhost."
REFUSED_ORIGIN = "Refused: the request did not come from this console's own page."
REFUSED_CSRF = "Refused: the form's CSRF token is missing or wrong; reload the page and try again."


@dataclass(frozen=True)
class RunSecret:
    """The per-run secret and what is derived from it."""

    token: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)

    @property
    def session(self) -> str:
        """The cookie's value: derived, so the URL's token itself is never stored by the browser."""
        return self._derive(b"session")

    @property
    def csrf(self) -> str:
        return self._derive(b"csrf")

    @property
    def base(self) -> str:
        """The path prefix of every page (128 bits from the secret)."""
        return "/" + self._derive(b"path")[:32]

    def _derive(self, purpose: bytes) -> str:
        return hmac.new(self.token.encode(), b"kettle-console/" + purpose, hashlib.sha256).hexdigest()

    def matches_token(self, value: str) -> bool:
        return hmac.compare_digest(value.encode(), self.token.encode())

    def matches_session(self, value: str) -> bool:
        return hmac.compare_digest(value.encode(), self.session.encode())

    def matches_csrf(self, value: str) -> bool:
        return hmac.compare_digest(value.encode(), self.csrf.encode())


def allowed_hosts(port: int) -> frozenset[str]:
    return frozenset({f"127.0.0.1:{port}", f"localhost:{port}"})


def origin_problem(method: str, origin: str | None, fetch_site: str | None, port: int) -> str | None:
    """Why a state-changing request is not from the console's own page, or None.

    Browsers send ``Origin`` on every POST; where one is absent, ``Sec-Fetch-Site``
    decides. A request with neither is not from a browser page of another origin (a
    browser sends one of them), so it is let through to the CSRF check."""
    if method in ("GET", "HEAD"):
        return None
    if origin is not None:
        return None if origin in {f"http://{host}" for host in allowed_hosts(port)} else REFUSED_ORIGIN
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return REFUSED_ORIGIN
    return None


class Guard:
    """ASGI middleware: the checks above on every HTTP request, and the security headers on every answer."""

    def __init__(self, app: ASGIApp, secret: RunSecret, port: int) -> None:
        self.app = app
        self.secret = secret
        self.port = port
        self.hosts = allowed_hosts(port)
        self.cookie = f"{COOKIE_PREFIX}{port}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # the console has none; nothing unchecked gets through
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        if headers.get("host") not in self.hosts:
            await _refuse(secured, 421, REFUSED_HOST)
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        given = query.get(SECRET_PARAMETER, [""])[0]
        if given:
            if not self.secret.matches_token(given):
                await _refuse(secured, 403, REFUSED_SECRET)
                return
            # Exchange the secret for the cookie and the prefix, and take it out of the address bar.
            # Path: the browser sends the cookie only below the prefix, so not to another server of
            # this host (a browser keeps cookies per host, not per port) at any path it could know.
            cookie = (f"{self.cookie}={self.secret.session}; HttpOnly; SameSite=Strict; "
                      f"Path={self.secret.base}/").encode()
            await secured({"type": "http.response.start", "status": 303,
                           "headers": [(b"location", f"{self.secret.base}/status".encode()), (b"set-cookie", cookie),
                                       (b"content-length", b"0")]})
            await secured({"type": "http.response.body", "body": b""})
            return
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(headers.get("cookie", ""))
        except Exception:  # a malformed Cookie header is no session
            jar = SimpleCookie()
        morsel = jar.get(self.cookie)
        if morsel is None or not self.secret.matches_session(morsel.value):
            await _refuse(secured, 403, REFUSED_SECRET)
            return
        path, base = scope["path"], self.secret.base
        if not hmac.compare_digest(path[:len(base) + 1].encode("utf-8", "replace"), (base + "/").encode()):
            await _refuse(secured, 403, REFUSED_SECRET)
            return
        # The application sees its routes below the prefix (Starlette strips ``root_path``).
        scope = {**scope, "root_path": base}
        problem = origin_problem(scope["method"], headers.get("origin"), headers.get("sec-fetch-site"), self.port)
        if problem is not None:
            await _refuse(secured, 403, problem)
            return
        await self.app(scope, receive, secured)


async def _refuse(send: Send, status: int, text: str) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
