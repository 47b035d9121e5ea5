"""``kettle audit mine`` and ``kettle audit verify-trail``: a party's own trail (``docs/trail.md``).

Added to the ``kettle audit`` group of :mod:`kettle.cli.main`. Both call as the
user saved by ``kettle user login``; ``verify-trail FILE`` checks a trail saved
with ``mine --out FILE`` offline, with only the home's trust files.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from .main import audit_app, one_line_errors, out


def _time(ms: Any) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S") if isinstance(ms, int) else "?"


def _what(entry: dict[str, Any]) -> str:
    if entry["kind"] in ("task-ended", "receipt"):
        parts = [entry["outcome"]]
        if entry["files_read"]:
            parts.append("read " + ", ".join(entry["files_read"]))
        if entry["files_written"]:
            parts.append("wrote " + ", ".join(entry["files_written"]))
        if entry["receipt"]:
            parts.append("receipt attached")
        return "; ".join(parts)
    digest = f"digest {entry['task_digest']}" if entry["task_digest"] else ""
    if entry["kind"] == "refusal" and entry["outcome"]:
        return f"{digest}; reason: {entry['outcome']}" if digest else f"reason: {entry['outcome']}"
    return digest


@audit_app.command("mine")
@one_line_errors
def audit_mine(
    as_json: bool = typer.Option(False, "--json", help="print the entries as JSON (receipts in base64)"),
    output: Path = typer.Option(None, "--out", help="also save the trail, as stored, for `verify-trail FILE`"),
) -> None:
    """List your trail: the approvals you gave and every task given your files, oldest first."""
    from .functions import frontend_client  # here: kettle.cli.functions imports kettle.cli.main, which imports us

    with frontend_client() as client:
        trail = client.my_trail()
    if output is not None:
        output.write_text(json.dumps(trail.to_json(), indent=1) + "\n")
    entries = trail.described()
    if as_json:
        out.print_json(data={"party": trail.party, "entries": entries})
        return
    table = Table(title=f"trail of {escape(trail.party)}", show_header=True)
    for column in ("#", "time (UTC)", "event", "task", "details"):
        table.add_column(column)
    for position, entry in enumerate(entries, 1):
        if "error" in entry:
            table.add_row(str(position), "", "[red]unreadable[/red]", "", escape(entry["error"]))
            continue
        table.add_row(str(entry["sequence"]), _time(entry["time_ms"]), entry["kind"], escape(entry["task_id"]),
                      escape(_what(entry)))
    out.print(table)
    if output is not None:
        out.print(f"saved to {output}")


@audit_app.command("verify-trail")
@one_line_errors
def audit_verify_trail(
    saved: Path = typer.Argument(None, help="a trail saved by `audit mine --out` (default: fetch yours now)"),
    as_json: bool = typer.Option(False, "--json", help="print every check as JSON"),
) -> None:
    """Verify a trail offline: no entry removed, reordered or altered, and the head signed by the
    attested management service. Exit status 1 when any check fails."""
    from ..config import load_config
    from ..sdk.attested import ClientTrust
    from ..sdk.trail import Trail, verify_trail
    from .functions import frontend_client

    if saved is None:
        with frontend_client() as client:
            trail = client.my_trail()
            trust = client.trust
    else:
        try:
            doc = json.loads(saved.read_text())
        except ValueError as exc:
            raise ValueError(f"{saved} is not JSON: {exc}") from None
        trail = Trail.from_json(doc)
        trust = ClientTrust.from_config(load_config())
    verdict = verify_trail(trail, trust)
    if as_json:
        out.print_json(data={"party": trail.party, "entries": len(trail.entries), **verdict.to_json()})
    else:
        for check in verdict.checks:
            mark = "[green]ok[/green]  " if check.ok else "[red]FAIL[/red]"
            out.print(f"  {mark} {escape(check.name)}: {escape(check.reason)}", highlight=False)
        summary = f"trail of {escape(trail.party)} ({len(trail.entries)} entries)"
        out.print(f"[bold green]{summary} verified[/bold green]" if verdict.ok
                  else f"[bold red]{summary} NOT verified[/bold red]: {escape(verdict.reason)}")
    if not verdict.ok:
        raise typer.Exit(1)
