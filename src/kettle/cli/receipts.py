"""``kettle receipt verify FILE``: check an execution receipt offline (``docs/receipts.md``).

Nothing is asked of the platform: the receipt is verified with the trust files
alone (the AS root and the auditor-signed enclave info of the Kettle home, or the
ones named with ``--as-root`` / ``--enclave-info``, e.g. the enclave info in force
when an old receipt was signed).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape

from .main import one_line_errors, out

if TYPE_CHECKING:
    from ..model.receipts import ReceiptBody

app = typer.Typer(no_args_is_help=True, help="Execution receipts: verify them offline.")


def _describe(body: ReceiptBody) -> list[tuple[str, str]]:
    from ..attestation.signed import format_time

    rows = [
        ("task", f"{body.task_id} (attempt {body.attempt})"),
        ("outcome", body.outcome.value),
        ("executor node", body.executor_id),
        ("function", f"{body.function_id} {body.function_name} ({body.executor_type}/{body.executor})"),
        ("function digest", body.function_digest or "-"),
        ("task digest", body.task_digest or "-"),
        ("payload sha256", body.payload_sha256),
        ("ran", f"{format_time(body.started_at)} .. {format_time(body.ended_at)}"),
        ("result digest", body.result_digest),
        ("sandbox layers", ", ".join(body.sandbox_layers) or "-"),
    ]
    rows += [(f"input {name}", f"{f.file_id} cmac {f.digest or '-'}") for name, f in sorted(body.inputs.items())]
    rows += [(f"output {name}", f"{f.file_id} tag {f.digest or '-'}") for name, f in sorted(body.outputs.items())]
    rows += [("approval", f"{a.user_id} at {_unix(a.approved_at)} of {a.task_digest}"
              + (f" until {_unix(a.expires_at)}" if a.expires_at is not None else "")) for a in body.approvals]
    return rows


def _unix(seconds: int) -> str:
    from datetime import UTC, datetime

    return f"{datetime.fromtimestamp(seconds, UTC):%Y-%m-%d %H:%M:%S} UTC"


@app.command("verify")
@one_line_errors
def verify(
    file: Path = typer.Argument(..., help="the receipt file (kettle task receipt TASK_ID --out FILE)"),
    as_root: Path = typer.Option(None, "--as-root", help="AS root certificate (default: the home's trust/)"),
    enclave_info: Path = typer.Option(None, "--enclave-info", help="enclave_info.toml with the auditors' keys and signatures beside it (default: the home's)"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Verify an execution receipt offline; exit 1 with the first failing reason if it does not verify."""
    from datetime import timedelta

    from ..config import load_config
    from ..model.receipts import examine_receipt
    from ..sdk.attested import ClientTrust

    config = load_config()
    trust = ClientTrust.from_files(
        as_root or config.as_root_path,
        enclave_info or config.enclave_info_path,
        auditor_threshold=config.audit.threshold,
        unsafe_allow_simulation=config.attestation.unsafe_allow_simulation,
        accepted_statuses=config.attestation.accepted_statuses,
        max_report_age=timedelta(seconds=config.attestation.validity_secs),
    )
    verdict = examine_receipt(file.read_bytes(), trust.verifier)
    body = verdict.receipt.body if verdict.receipt else None
    if as_json:
        out.print_json(data={
            "file": str(file),
            "verified": verdict.ok,
            "reason": verdict.reason,
            "receipt": body.to_json() if body else None,
            "signed_at": verdict.receipt.signature.to_json()["signed_at"] if verdict.receipt else None,
            "checks": [{"check": c.name, "ok": c.ok, "detail": c.detail} for c in verdict.checks],
        })
    else:
        out.print(f"[bold]{escape(str(file))}[/bold]", highlight=False)
        if body is not None:
            for name, value in _describe(body):
                out.print(f"  {name:16} {escape(value)}", highlight=False)
        for check in verdict.checks:
            mark = "[green]ok[/green]  " if check.ok else "[red]FAIL[/red]"
            out.print(f"  {mark} {check.name}: {escape(check.detail)}", highlight=False)
        out.print("[bold green]verified[/bold green]" if verdict.ok
                  else f"[bold red]NOT verified[/bold red]: {escape(verdict.reason)}")
    if not verdict.ok:
        raise typer.Exit(1)
