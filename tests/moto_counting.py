"""moto's own S3 server with every request it is sent recorded before moto sees it.

Tests of the file agent's S3 paths use it to prove what left the node: nothing
at all for a refused URL, and for a signed request exactly whose credentials
signed it (the ``Authorization`` header as received).
"""

from __future__ import annotations

from typing import Any

from moto.server import ThreadedMotoServer


class CountingMotoServer(ThreadedMotoServer):
    """moto's own server, with every request it is sent counted before moto sees it."""

    def __init__(self, port: int) -> None:
        super().__init__(ip_address="127.0.0.1", port=port, verbose=False)
        self.requests: list[str] = []
        """``METHOD /path`` of each request, in order."""
        self.headers: list[dict[str, str]] = []
        """The request headers of each request, lower-case names, in the same order."""

    def _server_entry(self) -> None:
        import moto.moto_server.threaded_moto_server as threaded

        make_server = threaded.make_server

        def counting_make_server(host: str, port: int, app: Any, *args: Any, **kwargs: Any) -> Any:
            def counted(environ: dict[str, Any], start_response: Any) -> Any:
                self.requests.append(f"{environ['REQUEST_METHOD']} {environ.get('PATH_INFO', '')}")
                self.headers.append({
                    key[5:].replace("_", "-").lower(): str(value) for key, value in environ.items() if key.startswith("HTTP_")
                })
                return app(environ, start_response)

            return make_server(host, port, counted, *args, **kwargs)

        threaded.make_server = counting_make_server
        try:
            super()._server_entry()
        finally:
            threaded.make_server = make_server
