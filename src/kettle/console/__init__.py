"""``kettle console``: the data owner's console, a web page served on this machine only.

A browser cannot check TEE evidence, so the console is a local program: this
process attests the platform (:mod:`.session`) and calls it with the user's
saved login; the page talks only to this process, which lets in only the browser
that opened the URL it printed (:mod:`.guard`). Pages: the platform's
attestation first, then the inbox of tasks waiting for the user's approval, the
user's tasks, data, trail and functions (:mod:`.app`, :mod:`.review`).
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from ..config import Config
from .guard import SECRET_PARAMETER, RunSecret

__all__ = ["serve"]


def serve(config: Config, port: int = 0, announce: Callable[[str], None] = print,
          open_browser: bool = False) -> None:
    """Serve the console on 127.0.0.1:``port`` (0: any free port) until interrupted."""
    import uvicorn

    from .app import create_app

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))  # loopback only: never reachable from another machine
    port = listener.getsockname()[1]
    secret = RunSecret()
    app = create_app(config, secret, port)
    url = f"http://127.0.0.1:{port}/?{SECRET_PARAMETER}={secret.token}"
    # No access log: the first request's line would hold the run secret.
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    announce(f"Kettle console: {url}")
    if open_browser:
        import webbrowser

        webbrowser.open(url)
    try:
        server.run(sockets=[listener])
    finally:
        app.console.session.close()
