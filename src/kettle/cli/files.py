"""``kettle file keygen|encrypt|decrypt|cmac``: a data owner's files, offline.

Key material comes from a key file (``--key key.json``, written by ``kettle
file keygen``; format in :mod:`kettle.crypto.recipes`) or inline
(``--schema S --key-hex H --iv-hex H``) for keys handed over by other tools.
Results are printed as the cmac in hex (``--json`` for more), ready for
``register_input_file``. Nothing is written unless it is complete and
verified, and no existing file is replaced without ``--force``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape

# Defined before importing from .main: main adds this app at its end, and that import
# must find it even when this module is the one being imported first.
app = typer.Typer(no_args_is_help=True, help="Data owners: make keys, encrypt inputs, decrypt outputs, compute cmacs.")

from ..crypto.schemas import RAW, SCHEMAS, TEACLAVE_FILE_128, check_cmac  # noqa: E402
from .main import err, one_line_errors, out  # noqa: E402

if TYPE_CHECKING:
    from ..crypto.recipes import FileKey

_KEY_HELP = "key file from `kettle file keygen`"
_SCHEMA_HELP = f"with --key-hex/--iv-hex: {', '.join(SCHEMAS)}"
_NAME_HELP = "teaclave-file-128 only: the file name bound into the file (the last path segment of its URL)"


def file_key(key_file: Path | None, schema: str | None, key_hex: str | None, iv_hex: str | None) -> FileKey:
    """The FileKey from exactly one of: a key file, or inline schema and hex material (``kettle file``, ``kettle data``)."""
    from ..crypto.recipes import FileKey

    inline = schema is not None or key_hex is not None or iv_hex is not None
    if key_file is not None and inline:
        raise ValueError("give either --key FILE or --schema/--key-hex/--iv-hex, not both")
    if key_file is not None:
        return FileKey.load(key_file)
    if schema is None:
        raise ValueError("no key: give --key FILE, or --schema with --key-hex and --iv-hex")
    return FileKey.from_hex(schema, key_hex or "", iv_hex or "")


@contextmanager
def _force_hint() -> Iterator[None]:
    """Tell the user how to replace an existing output deliberately."""
    try:
        yield
    except FileExistsError as exc:
        raise FileExistsError(f"{exc} (use --force to replace it)") from None


def _report(as_json: bool, schema: str, cmac: bytes, **fields: str) -> None:
    """Print the cmac (the result a script wants), and warn after a successful raw copy."""
    if as_json:
        out.print_json(data={**fields, "schema": schema, "cmac": cmac.hex()})
    else:
        out.print(cmac.hex(), highlight=False)
    if schema == RAW:
        err.print(
            "[yellow]warning:[/yellow] raw files are neither encrypted nor integrity-protected; "
            "their cmac is a placeholder (16 zero bytes)",
            highlight=False,
        )


KeyFile = typer.Option(None, "--key", help=_KEY_HELP)
Schema = typer.Option(None, "--schema", help=_SCHEMA_HELP)
KeyHex = typer.Option(None, "--key-hex", help="the key in hex")
IvHex = typer.Option(None, "--iv-hex", help="the iv in hex (aes-gcm: 12 bytes; otherwise empty)")
Force = typer.Option(False, "--force", help="replace an existing output file")
Json = typer.Option(False, "--json", help="machine-readable output")


@app.command("keygen")
@one_line_errors
def keygen(
    schema: str = typer.Option(..., "--schema", help=", ".join(SCHEMAS)),
    out_file: Path = typer.Option(None, "--out", help="save to this key file (mode 0600) instead of printing"),
    force: bool = typer.Option(False, "--force", help="replace an existing key file"),
) -> None:
    """Make a fresh random key (and iv); aes-gcm keys are for one file each."""
    from ..crypto.recipes import FileKey

    key = FileKey.generate(schema)
    if out_file is None:
        out.print(key.to_json(), highlight=False)
        return
    with _force_hint():
        key.save(out_file, overwrite=force)
    out.print(f"wrote {escape(str(out_file))} ({schema})", highlight=False)


@app.command("encrypt")
@one_line_errors
def encrypt(
    input_file: Path = typer.Argument(..., help="plaintext"),
    output_file: Path = typer.Argument(..., help="encrypted file to create"),
    key_file: Path = KeyFile,
    schema: str = Schema,
    key_hex: str = KeyHex,
    iv_hex: str = IvHex,
    name: str = typer.Option(None, "--name", help=f"{_NAME_HELP}; default: OUTPUT_FILE's name"),
    force: bool = Force,
    as_json: bool = Json,
) -> None:
    """Encrypt a file for upload and print its cmac (register it with the key)."""
    from ..crypto.recipes import encrypt as encrypt_recipe

    key = file_key(key_file, schema, key_hex, iv_hex)
    with _force_hint():
        cmac = encrypt_recipe(input_file, output_file, key, name=name, overwrite=force)
    fields = {"output": str(output_file)}
    if key.schema == TEACLAVE_FILE_128:
        fields["name"] = name if name is not None else output_file.name
    _report(as_json, key.schema, cmac, **fields)


@app.command("decrypt")
@one_line_errors
def decrypt(
    input_file: Path = typer.Argument(..., help="encrypted file"),
    output_file: Path = typer.Argument(..., help="plaintext to create, only once all of the input verified"),
    key_file: Path = KeyFile,
    schema: str = Schema,
    key_hex: str = KeyHex,
    iv_hex: str = IvHex,
    cmac_hex: str = typer.Option(None, "--cmac", help="refuse the file unless its cmac is this (hex), e.g. the task's output tag"),
    name: str = typer.Option(None, "--name", help=f"{_NAME_HELP}; default: INPUT_FILE's name"),
    force: bool = Force,
    as_json: bool = Json,
) -> None:
    """Decrypt a file after verifying all of it; print its cmac."""
    from ..crypto.recipes import decrypt as decrypt_recipe

    key = file_key(key_file, schema, key_hex, iv_hex)
    expected = None if cmac_hex is None else _cmac(cmac_hex)
    with _force_hint():
        cmac = decrypt_recipe(input_file, output_file, key, cmac=expected, name=name, overwrite=force)
    _report(as_json, key.schema, cmac, output=str(output_file))


@app.command("cmac")
@one_line_errors
def cmac(
    input_file: Path = typer.Argument(..., help="encrypted file"),
    key_file: Path = KeyFile,
    schema: str = Schema,
    key_hex: str = KeyHex,
    iv_hex: str = IvHex,
    name: str = typer.Option(None, "--name", help=f"{_NAME_HELP}; default: INPUT_FILE's name"),
    as_json: bool = Json,
) -> None:
    """Print the cmac to register for an encrypted file, after checking the key opens all of it."""
    from ..crypto.recipes import cmac as cmac_recipe

    key = file_key(key_file, schema, key_hex, iv_hex)
    _report(as_json, key.schema, cmac_recipe(input_file, key, name=name), input=str(input_file))


def _cmac(text: str) -> bytes:
    try:
        value = bytes.fromhex(text)
    except ValueError:
        raise ValueError("--cmac is not hex text") from None
    try:
        return check_cmac(value)
    except ValueError as exc:
        raise ValueError(f"--cmac: {exc}") from None
