"""``kettle sandbox check``: which isolation layers user code gets on this machine, tried for real.

It starts the sandbox's zygote as an execution node does, prints the layers it
probed, then runs three functions in it: a Python one that must succeed, one
that opens a network socket, which must be stopped, and a WebAssembly module
that must return 42. Exit status 1 when a required layer is missing or a run
does not behave.
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import TYPE_CHECKING

import typer
from rich.table import Table

# Defined before importing from .main: main adds this app at its end.
app = typer.Typer(no_args_is_help=True, help="The sandbox for user code: check its layers on this machine.")

from .main import one_line_errors, out  # noqa: E402

if TYPE_CHECKING:
    from ..sandbox.supervisor import Limits

HELLO = b"import numpy\ndef entrypoint(argv):\n    return 'sandbox ok: numpy %s' % numpy.__version__\n"
NETWORK = b"import sys\ndef entrypoint(argv):\n    sys.modules['socket'].socket()\n"
WASM = '(module (memory (export "memory") 1) (func (export "entrypoint") (param i32 i32) (result i32) i32.const 42))'


async def _check() -> dict[str, object]:
    from ..config import SandboxConfig
    from ..executors.runtime import FileRuntime
    from ..executors.sandboxed import limits_of
    from ..sandbox.host import SandboxHost
    from ..sandbox.layers import REQUIRED
    from ..sandbox.supervisor import run_sandboxed

    host = SandboxHost()
    layers = await host.start()
    limits = limits_of(SandboxConfig(wall_time_secs=30, cpu_time_secs=10))
    runs: dict[str, str] = {}
    try:
        if not layers.missing(REQUIRED):
            for name, payload in (("hello", HELLO), ("network", NETWORK)):
                connection = await host.connect()
                try:
                    outcome = await asyncio.to_thread(run_sandboxed, connection, [], payload, FileRuntime(), limits)
                finally:
                    connection.close()
                runs[name] = outcome.failure or outcome.return_value or ""
            runs["wasm"] = await asyncio.to_thread(_run_wasm, await host.connect(), limits)
    finally:
        await host.close()
    ok = (not layers.missing(REQUIRED) and runs.get("hello", "").startswith("sandbox ok")
          and runs.get("network", "").startswith("SandboxViolation") and runs.get("wasm") == "42")
    return {"ok": ok, "layers": layers.to_json(), "missing": layers.missing(REQUIRED), "runs": runs,
            "required": list(REQUIRED)}


def _run_wasm(connection: socket.socket, limits: Limits) -> str:
    import wasmtime

    from ..executors.runtime import FileRuntime
    from ..sandbox.supervisor import WasmLoadError, WasmRun, run_sandboxed

    module = wasmtime.wat2wasm(WASM)
    try:
        outcome = run_sandboxed(connection, [], module, FileRuntime(), limits, WasmRun(10**9))
    except WasmLoadError as exc:
        return f"WASM load error: {exc}"
    finally:
        connection.close()
    return outcome.failure or outcome.return_value or ""


@app.command("check")
@one_line_errors
def check(as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """Probe every isolation layer and run a harmless and a forbidden function in the sandbox."""
    report = asyncio.run(_check())
    if as_json:
        out.print_json(json.dumps(report))
    else:
        table = Table("layer", "in force", "detail", "required")
        for layer in report["layers"]:  # type: ignore[union-attr]
            table.add_row(layer["name"], "yes" if layer["available"] else "[red]no[/red]", layer["detail"],
                          "yes" if layer["name"] in report["required"] else "")  # type: ignore[operator]
        out.print(table)
        for name, result in report["runs"].items():  # type: ignore[union-attr]
            out.print(f"{name} function: {result}")
        if report["missing"]:
            out.print(f"[red]missing required layers: {', '.join(report['missing'])}[/red]")  # type: ignore[arg-type]
        out.print("sandbox ready" if report["ok"] else "[red]sandbox NOT ready[/red]")
    if not report["ok"]:
        raise typer.Exit(1)
