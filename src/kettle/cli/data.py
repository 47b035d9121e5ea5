"""``kettle data ...``: register, update, derive and inspect data files (frontend API).

Calls are made as the user saved by ``kettle user login``. Key material comes
from a key file (``--key-file key.json``, as written by ``kettle file keygen``)
or inline (``--schema S --key-hex H --iv-hex H``) and is checked with the
platform's own rules before anything is sent. Data IDs are printed plain (one
line, for scripts) or with ``--json``; cmacs are shown in hex. The platform never
returns a file's URL or key, so neither does this command.

An ``s3://`` file in a bucket of the owner's own takes the owner's credentials from
``--s3-credentials-file F`` (JSON: ``access_key_id``, ``secret_access_key``, and
optionally ``session_token``, ``endpoint_url``, ``region``); they are never printed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table

# Defined before importing from .main: main adds this app at its end (see functions.py).
app = typer.Typer(no_args_is_help=True, help="Data files: register inputs and outputs, update, derive, inspect.")

from . import functions  # noqa: E402  (a module, not its names: it may still be loading)
from .files import file_key  # noqa: E402
from .main import one_line_errors, out  # noqa: E402

if TYPE_CHECKING:
    from ..sdk.frontend import FileInfo, S3Credentials


# --- option parsing (pure) -------------------------------------------------------------


def parse_cmac(text: str) -> bytes:
    """``--cmac-hex``: 32 hex digits (spaces and colons allowed between bytes)."""
    from ..crypto.schemas import check_cmac

    try:
        cmac = bytes.fromhex(text.replace(":", " "))
    except ValueError:
        raise ValueError(f"--cmac-hex is not hex text: {text[:64]!r}") from None
    return check_cmac(cmac)


def s3_credentials(path: Path | None) -> S3Credentials | None:
    """``--s3-credentials-file``: the owner's credentials, checked for shape before anything is sent."""
    if path is None:
        return None
    from ..sdk.frontend import S3Credentials

    return S3Credentials.load(path)


# --- rendering ------------------------------------------------------------------------------


def _print_id(data_id: str, as_json: bool, **extra: str) -> None:
    if as_json:
        out.print_json(data={"data_id": data_id, **extra})
    else:
        out.print(data_id, highlight=False)


def _print_file(info: FileInfo, as_json: bool) -> None:
    cmac = None if info.cmac is None else info.cmac.hex()
    if as_json:
        out.print_json(data={"data_id": info.data_id, "owners": list(info.owners), "cmac": cmac})
        return
    table = Table(title=info.data_id, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("owners", escape(", ".join(info.owners)))
    table.add_row("cmac", cmac or "- (not written yet)")
    out.print(table)


KeyFile = typer.Option(None, "--key-file", "--key", help="key file from `kettle file keygen` ({schema, key, iv} in hex)")
Schema = typer.Option(None, "--schema", help="with --key-hex/--iv-hex: aes-gcm-128, aes-gcm-256, teaclave-file-128 or raw")
KeyHex = typer.Option(None, "--key-hex", help="the key in hex")
IvHex = typer.Option(None, "--iv-hex", help="the iv in hex (aes-gcm: 12 bytes; teaclave-file-128: none)")
Json = typer.Option(False, "--json", help="machine-readable output")
S3CredentialsFile = typer.Option(
    None, "--s3-credentials-file",
    help="JSON with your own access_key_id, secret_access_key (and optional session_token, endpoint_url, region) "
         "for an s3:// URL in your own bucket; used only by the node running a task on this file",
)


# --- commands --------------------------------------------------------------------------------


@app.command("register-input")
@one_line_errors
def register_input(
    url: str = typer.Argument(..., help="where the encrypted file is, e.g. https://…, s3://…, file:///…"),
    cmac_hex: str = typer.Option(..., "--cmac-hex", help="the file's 16-byte tag in hex (`kettle file encrypt` prints it)"),
    key_file: Path = KeyFile,
    schema: str = Schema,
    key_hex: str = KeyHex,
    iv_hex: str = IvHex,
    s3_credentials_file: Path = S3CredentialsFile,
    as_json: bool = Json,
) -> None:
    """Register an encrypted input file and print its data id (input-…)."""
    key = file_key(key_file, schema, key_hex, iv_hex)
    cmac = parse_cmac(cmac_hex)
    credentials = s3_credentials(s3_credentials_file)
    client = functions.frontend_client()
    _print_id(client.register_input_file(url, key.schema, key.key, key.iv, cmac, credentials), as_json)


@app.command("register-output")
@one_line_errors
def register_output(
    url: str = typer.Argument(..., help="where a task will upload the encrypted result"),
    key_file: Path = KeyFile,
    schema: str = Schema,
    key_hex: str = KeyHex,
    iv_hex: str = IvHex,
    s3_credentials_file: Path = S3CredentialsFile,
    as_json: bool = Json,
) -> None:
    """Register an output file (encrypted with your key) and print its data id (output-…)."""
    key = file_key(key_file, schema, key_hex, iv_hex)
    credentials = s3_credentials(s3_credentials_file)
    _print_id(functions.frontend_client().register_output_file(url, key.schema, key.key, key.iv, credentials), as_json)


@app.command("update-input")
@one_line_errors
def update_input(
    data_id: str = typer.Argument(..., help="an input you alone own"),
    url: str = typer.Argument(..., help="the new URL"),
    s3_credentials_file: Path = S3CredentialsFile,
    as_json: bool = Json,
) -> None:
    """Register a copy of an input at a new URL (same key, cmac and owner; s3 credentials only
    if given again); print the new id."""
    credentials = s3_credentials(s3_credentials_file)
    _print_id(functions.frontend_client().update_input_file(data_id, url, credentials), as_json, previous=data_id)


@app.command("update-output")
@one_line_errors
def update_output(
    data_id: str = typer.Argument(..., help="an output you alone own"),
    url: str = typer.Argument(..., help="the new URL"),
    s3_credentials_file: Path = S3CredentialsFile,
    as_json: bool = Json,
) -> None:
    """Register a copy of an output at a new URL (same key and owner, not written yet; s3 credentials
    only if given again); print the new id."""
    credentials = s3_credentials(s3_credentials_file)
    _print_id(functions.frontend_client().update_output_file(data_id, url, credentials), as_json, previous=data_id)


@app.command("register-fusion-output")
@one_line_errors
def register_fusion_output(
    owners: list[str] = typer.Argument(..., help="two or more user ids, including yours"),
    as_json: bool = Json,
) -> None:
    """Register an output owned jointly, encrypted with a key only the platform knows."""
    _print_id(functions.frontend_client().register_fusion_output(owners), as_json)


@app.command("input-from-output")
@one_line_errors
def input_from_output(
    data_id: str = typer.Argument(..., help="an output a finished task has written"),
    as_json: bool = Json,
) -> None:
    """Make a written output usable as an input of later tasks; print its id (input-<same uuid>)."""
    _print_id(functions.frontend_client().register_input_from_output(data_id), as_json, output=data_id)


@app.command("get-input")
@one_line_errors
def get_input(data_id: str, as_json: bool = Json) -> None:
    """Show an input's owners and cmac."""
    _print_file(functions.frontend_client().get_input_file(data_id), as_json)


@app.command("get-output")
@one_line_errors
def get_output(data_id: str, as_json: bool = Json) -> None:
    """Show an output's owners and cmac (set once a task has written it)."""
    _print_file(functions.frontend_client().get_output_file(data_id), as_json)


@app.command("list")
@one_line_errors
def list_files(as_json: bool = Json) -> None:
    """List the data ids of the files you own, alone or jointly, in registration order."""
    data_ids = functions.frontend_client().list_my_files()
    if as_json:
        out.print_json(data={"data_ids": data_ids})
        return
    for data_id in data_ids:
        out.print(data_id, highlight=False)
