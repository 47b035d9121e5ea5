"""``kettle console``: the data owner's console, a web page served on this machine only.

A browser cannot check TEE evidence, so the console is a local program: this
process attests the platform (:mod:`.session`) and calls it with the user's
saved login; the page talks only to this process, which lets in only the browser
that opened the URL it printed (:mod:`.guard`). Pages: the platform's
attestation first, then the inbox of tasks waiting for the user's approval, the
user's tasks, data, trail and functions (:mod:`.app`, :mod:`.review`).
"""

from __future__ import annotations

import html
import os
import socket
from collections.abc import Callable
from pathlib import Path

from ..config import Config
from .guard import SECRET_PARAMETER, RunSecret

__all__ = ["serve"]

OPEN_FILE = "console-open.html"


def serve(config: Config, port: int = 0, announce: Callable[[str], None] = print,
          open_browser: bool = False) -> None:
    """Serve the console on 127.0.0.1:``port`` (0: any free port) until interrupted."""
    import uvicorn

    from .app import create_app

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))  # loopback only: never reachable from another machine
    port = listener.getsockname()[1]
    # Listening before the URL is printed: a browser opened at once waits in the backlog
    # while the server starts, instead of being refused.
    listener.listen(128)
    secret = RunSecret()
    app, console = create_app(config, secret, port)
    url = f"http://127.0.0.1:{port}/?{SECRET_PARAMETER}={secret.token}"
    # No access log: the first request's line would hold the run secret.
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    announce(f"Kettle console: {url}")
    if open_browser:
        import webbrowser

        # Not the URL itself: a browser's command line is visible to every local user (ps), and
        # the URL carries the secret. The browser opens a file only this user can read, which
        # sends it on (as Jupyter does).
        webbrowser.open(_redirect_file(config.home, url).as_uri())
    try:
        server.run(sockets=[listener])
    finally:
        console.session.close()


def _redirect_file(home: Path, url: str) -> Path:
    """``$KETTLE_HOME/console-open.html`` (mode 0600): a page that sends the browser to ``url``."""
    path = home / OPEN_FILE
    path.unlink(missing_ok=True)  # created anew, so its mode is ours whatever an old one had
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    target = html.escape(url, quote=True)
    with os.fdopen(fd, "w") as f:
        f.write(f'<!doctype html><meta charset="utf-8"><meta http-equiv="refresh" content="0;url={target}">'
                f'<title>Kettle console</title><a href="{target}">Open the Kettle console</a>\n')
    return path
