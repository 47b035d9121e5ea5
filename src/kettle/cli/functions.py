"""``kettle function register|get|list|update|disable|delete|stats`` (frontend API).

Calls are made as the user saved by ``kettle user login``; ``--json`` prints
machine-readable output, otherwise tables. Option values are parsed here into
the SDK's types so mistakes are reported before anything is sent.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.table import Table

# Defined before importing from .main: main adds this app at its end, and that import
# must find it even when this module is the one being imported first.
app = typer.Typer(no_args_is_help=True, help="Functions: register, inspect, update, disable, delete.")

from .main import one_line_errors, out  # noqa: E402

if TYPE_CHECKING:
    from ..sdk.frontend import FrontendClient, FunctionArgument, FunctionInfo, FunctionInput, FunctionOutput

FIXED_SUFFIX = ":fixed"
OPTIONAL_SUFFIX = ":optional"


# --- shared with the task commands ------------------------------------------------


def frontend_client() -> FrontendClient:
    """A verified client of the configured frontend, logged in with the saved credentials."""
    from ..config import load_config
    from ..credentials import saved_credentials
    from ..sdk.attested import ClientTrust
    from ..sdk.frontend import FrontendClient
    from . import api_target

    config = load_config()
    user_id, token = saved_credentials(config)
    return FrontendClient(api_target(config, "frontend"), ClientTrust.from_config(config), user_id=user_id, token=token)


# --- option parsing (pure) ------------------------------------------------------------


def parse_argument(spec: str) -> FunctionArgument:
    """``KEY``, ``KEY=DEFAULT`` or ``KEY=DEFAULT:fixed`` (not overwritable by tasks)."""
    from ..sdk.frontend import FunctionArgument

    fixed = spec.endswith(FIXED_SUFFIX)
    if fixed:
        spec = spec[: -len(FIXED_SUFFIX)]
    key, _, default = spec.partition("=")
    if not key:
        raise ValueError(f"--argument needs a key: KEY, KEY=DEFAULT or KEY=DEFAULT{FIXED_SUFFIX}, not {spec!r}")
    return FunctionArgument(key, default, allow_overwrite=not fixed)


def _name_and_optional(spec: str, option: str) -> tuple[str, bool]:
    optional = spec.endswith(OPTIONAL_SUFFIX)
    name = spec[: -len(OPTIONAL_SUFFIX)] if optional else spec
    if not name:
        raise ValueError(f"{option} needs a name: NAME or NAME{OPTIONAL_SUFFIX}")
    return name, optional


def parse_input(spec: str) -> FunctionInput:
    """``NAME`` or ``NAME:optional``."""
    from ..sdk.frontend import FunctionInput

    name, optional = _name_and_optional(spec, "--input")
    return FunctionInput(name, optional=optional)


def parse_output(spec: str) -> FunctionOutput:
    from ..sdk.frontend import FunctionOutput

    name, optional = _name_and_optional(spec, "--output")
    return FunctionOutput(name, optional=optional)


def _read_payload(path: Path | None) -> bytes:
    return b"" if path is None else path.read_bytes()


# --- rendering ----------------------------------------------------------------------------


def _describe_argument(a: FunctionArgument) -> str:
    default = f"default {a.default_value!r}" if a.default_value else "no default"
    return f"{a.key} ({default}{'' if a.allow_overwrite else ', fixed'})"


def _function_table(info: FunctionInfo) -> Table:
    table = Table(title=f"{escape(info.name)}  {info.function_id}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("owner", escape(info.owner))
    table.add_row("description", escape(info.description) or "-")
    table.add_row("executor type", escape(info.executor_type))
    table.add_row("visibility", "public" if info.public else "private")
    table.add_row("arguments", escape(", ".join(_describe_argument(a) for a in info.arguments)) or "-")
    table.add_row("inputs", escape(", ".join(i.name + (" (optional)" if i.optional else "") for i in info.inputs)) or "-")
    table.add_row("outputs", escape(", ".join(o.name + (" (optional)" if o.optional else "") for o in info.outputs)) or "-")
    table.add_row("allowed users", escape(", ".join(info.user_allowlist)) or "-")
    table.add_row("payload", f"{len(info.payload)} bytes")
    return table


def _quota_text(quota: int | None) -> str:
    return "unlimited" if quota is None else str(quota)


# --- commands ----------------------------------------------------------------------------------


@app.command("register")
@one_line_errors
def register(
    name: str = typer.Option(..., "--name", help="for builtin functions, the built-in's name (e.g. builtin-echo)"),
    executor_type: str = typer.Option("builtin", "--executor-type", help="builtin, python or wamr"),
    description: str = typer.Option("", "--description"),
    argument: list[str] = typer.Option([], "--argument", help=f"KEY, KEY=DEFAULT or KEY=DEFAULT{FIXED_SUFFIX} (repeatable)"),
    input_: list[str] = typer.Option([], "--input", help=f"NAME or NAME{OPTIONAL_SUFFIX} (repeatable)"),
    output: list[str] = typer.Option([], "--output", help=f"NAME or NAME{OPTIONAL_SUFFIX} (repeatable)"),
    private: bool = typer.Option(False, "--private", help="only the owner and allowed users may use it"),
    allow: list[str] = typer.Option([], "--allow", help="user (or, for data owners, group) allowed to use it (repeatable)"),
    quota: int = typer.Option(None, "--quota", help="successful invocations allowed (default: unlimited)"),
    payload: Path = typer.Option(None, "--payload", help="the script or wasm module"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Register a function and print its id."""
    function_id = frontend_client().register_function(
        name,
        description,
        executor_type,
        public=not private,
        payload=_read_payload(payload),
        arguments=[parse_argument(a) for a in argument],
        inputs=[parse_input(i) for i in input_],
        outputs=[parse_output(o) for o in output],
        user_allowlist=allow,
        usage_quota=quota,
    )
    if as_json:
        out.print_json(data={"function_id": function_id})
    else:
        out.print(function_id, highlight=False)


@app.command("list-builtins")
@one_line_errors
def list_builtins(
    name: str = typer.Argument(None, help="show only this built-in"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """The built-in functions: the names to register them under, their arguments and files.

    Register a built-in with exactly these argument keys (overwritable) and file
    names; tasks whose arguments do not fit are refused when they are created."""
    from dataclasses import asdict

    from ..sdk.builtins import builtin_function, builtin_functions

    specs = (builtin_function(name),) if name else builtin_functions()
    if as_json:
        out.print_json(data=[asdict(spec) for spec in specs])
        return
    for spec in specs:
        table = Table(title=escape(spec.name), show_header=False, title_justify="left")
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        arguments = "\n".join(f"{a.key}: {a.type}{'' if a.required else ' (optional)'}" for a in spec.arguments)
        table.add_row("arguments", escape(arguments) or "-")
        table.add_row("inputs", escape(", ".join(spec.inputs)) or "-")
        table.add_row("outputs", escape(", ".join(spec.outputs)) or "-")
        table.add_row("description", escape(spec.description))
        out.print(table)


@app.command("get")
@one_line_errors
def get(function_id: str, as_json: bool = typer.Option(False, "--json", help="machine-readable output (payload in base64)")) -> None:
    """Show a function."""
    info = frontend_client().get_function(function_id)
    if as_json:
        out.print_json(data=info.to_json())
    else:
        out.print(_function_table(info))


@app.command("list")
@one_line_errors
def list_(
    user_id: str = typer.Argument(None, help="whose functions (default: yours; others' need PlatformAdmin)"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """List the functions a user registered and may use."""
    listing = frontend_client().list_functions(user_id)
    if as_json:
        out.print_json(data=listing.to_json())
        return
    table = Table(show_header=True)
    table.add_column("function id")
    table.add_column("relation")
    for function_id in listing.registered_functions:
        table.add_row(function_id, "registered")
    for function_id in listing.allowed_functions:
        table.add_row(function_id, "allowed")
    out.print(table if table.row_count else "no functions")


@app.command("update")
@one_line_errors
def update(
    function_id: str,
    name: str = typer.Option(None, "--name"),
    executor_type: str = typer.Option(None, "--executor-type"),
    description: str = typer.Option(None, "--description"),
    argument: list[str] = typer.Option(None, "--argument", help="replaces all arguments (repeatable)"),
    input_: list[str] = typer.Option(None, "--input", help="replaces all inputs (repeatable)"),
    output: list[str] = typer.Option(None, "--output", help="replaces all outputs (repeatable)"),
    public: bool = typer.Option(None, "--public/--private"),
    allow: list[str] = typer.Option(None, "--allow", help="replaces the allowlist (repeatable)"),
    quota: int = typer.Option(None, "--quota", help="successful invocations allowed; negative = unlimited"),
    payload: Path = typer.Option(None, "--payload"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Change the given fields of a function you own; the others stay as they are."""
    changes: dict[str, Any] = {}
    for key, value in (("name", name), ("executor_type", executor_type), ("description", description), ("public", public)):
        if value is not None:
            changes[key] = value
    if argument:
        changes["arguments"] = [parse_argument(a) for a in argument]
    if input_:
        changes["inputs"] = [parse_input(i) for i in input_]
    if output:
        changes["outputs"] = [parse_output(o) for o in output]
    if allow:
        changes["user_allowlist"] = allow
    if quota is not None:
        changes["usage_quota"] = quota
    if payload is not None:
        changes["payload"] = _read_payload(payload)
    if not changes:
        raise ValueError("nothing to update: give at least one option")
    frontend_client().function(function_id).update(**changes)
    if as_json:
        out.print_json(data={"function_id": function_id, "updated": sorted(changes)})
    else:
        out.print(f"updated {function_id}: {', '.join(sorted(changes))}", highlight=False)


@app.command("disable")
@one_line_errors
def disable(function_id: str) -> None:
    """Withdraw a function from every user's list (existing tasks are unaffected)."""
    frontend_client().disable_function(function_id)
    out.print(f"disabled {function_id}", highlight=False)


@app.command("delete")
@one_line_errors
def delete(function_id: str) -> None:
    """Delete a function you own."""
    frontend_client().delete_function(function_id)
    out.print(f"deleted {function_id}", highlight=False)


@app.command("stats")
@one_line_errors
def stats(function_id: str, as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """Show a function's quota and how much of it has been used."""
    usage = frontend_client().get_function_usage_stats(function_id)
    if as_json:
        out.print_json(data=usage.to_json())
    else:
        out.print(f"{function_id}: {usage.current_usage} successful invocations, quota {_quota_text(usage.quota)}", highlight=False)
