"""``kettle console``: the data owner's console in the browser (``docs/console.md``)."""

from __future__ import annotations

import sys

import typer

from .main import app, one_line_errors, out


@app.command("console")
@one_line_errors
def console(
    port: int = typer.Option(0, "--port", help="port on 127.0.0.1 (default: any free port)"),
    open_browser: bool = typer.Option(False, "--open", help="open the console in the default browser"),
) -> None:
    """Serve the data owner's console on 127.0.0.1 and print its URL (which carries this run's secret).

    It verifies the platform's attestation before it shows anything, and calls the
    platform as the user of `kettle user login` (or logs in from its own page)."""
    from ..config import load_config
    from ..console import serve

    if not 0 <= port <= 65535:
        raise typer.BadParameter("--port must be between 0 and 65535")

    def announce(line: str) -> None:
        out.print(line, highlight=False, markup=False, soft_wrap=True)
        sys.stdout.flush()

    serve(load_config(), port, announce, open_browser)
