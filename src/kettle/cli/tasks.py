"""``kettle task create|assign|show|approve|revoke|refuse|invoke|cancel|get|wait|list`` (frontend API).

``task show`` prints exactly what an approval covers (the task's canonical
description and its digest); ``task approve --expect-digest`` approves only that.

``task list`` lists the tasks you participate in, newest first (your inbox of tasks
waiting for your approval among them); ``task refuse`` declines one, visibly to the others.

``task wait`` waits on the frontend's WaitTask, which answers the moment the
task ends, in short slices so the live display can show the task's status as it
moves; the result is printed as soon as it exists.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import RenderableType
from rich.live import Live
from rich.markup import escape
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

# Defined before importing from .main: main adds this app at its end (see functions.py).
app = typer.Typer(no_args_is_help=True, help="Tasks: create, assign data, approve, invoke, wait for results.")

from . import functions  # noqa: E402  (a module, not its names: it may still be loading)
from .main import err, one_line_errors, out  # noqa: E402

if TYPE_CHECKING:
    from ..sdk.frontend import TaskApproval, TaskInfo, TaskRefusal

STATUS_REFRESH_SECS = 2.0
"""Longest WaitTask slice of ``task wait``; only the display's status depends on it,
never how soon the result arrives."""


# --- option parsing (pure) -------------------------------------------------------


def parse_arguments(text: str, what: str = "--args") -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{what} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f'{what} must be a JSON object, e.g. \'{{"message": "hi"}}\'')
    return value


def parse_owners(spec: str, option: str) -> tuple[str, tuple[str, ...]]:
    """``NAME=UID1,UID2``: who must own the file given to the task as NAME."""
    name, sep, uids = spec.partition("=")
    owners = tuple(u.strip() for u in uids.split(",") if u.strip())
    if not name or not sep or not owners:
        raise ValueError(f"{option} must be NAME=UID[,UID...], not {spec!r}")
    return name, owners


def parse_assignment(spec: str, option: str) -> tuple[str, str]:
    """``NAME=DATA_ID``."""
    name, sep, data_id = spec.partition("=")
    if not name or not sep or not data_id:
        raise ValueError(f"{option} must be NAME=DATA_ID, not {spec!r}")
    return name, data_id


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, option: str) -> int:
    """``90``, ``90s``, ``15m``, ``12h`` or ``7d`` as a positive number of seconds."""
    number, unit = (text[:-1], text[-1]) if text[-1:] in DURATION_UNITS else (text, "s")
    if not re.fullmatch(r"[0-9]{1,12}", number) or int(number) <= 0:
        raise ValueError(f"{option} must be a positive duration such as 3600, 90m, 12h or 7d, not {text!r}")
    return int(number) * DURATION_UNITS[unit]


def unique_mapping(pairs: list[tuple[str, Any]], option: str) -> dict[str, Any]:
    names = [name for name, _ in pairs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{option} given twice for {', '.join(duplicates)}")
    return dict(pairs)


# --- rendering ----------------------------------------------------------------------------


def _status_text(info: TaskInfo) -> str:
    from ..sdk.frontend import status_name

    return status_name(info.status)


def _result_text(info: TaskInfo) -> str:
    from ..sdk.frontend import TaskFailure, TaskOutputs

    if isinstance(info.result, TaskOutputs):
        try:
            return info.result.return_value.decode()
        except UnicodeDecodeError:
            return f"{len(info.result.return_value)} bytes (not text)"
    if isinstance(info.result, TaskFailure):
        return f"error: {info.result.reason}"
    return "-"


def _task_table(info: TaskInfo) -> Table:
    table = Table(title=info.task_id, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()

    def owners(ownership: Any) -> str:
        return "; ".join(f"{name}: {', '.join(uids)}" for name, uids in sorted(ownership.items())) or "-"

    def assigned(mapping: Any) -> str:
        return "; ".join(f"{name}: {data_id}" for name, data_id in sorted(mapping.items())) or "-"

    table.add_row("status", _status_text(info))
    table.add_row("function", info.function_id)
    table.add_row("function owner", escape(info.function_owner))
    table.add_row("creator", escape(info.creator))
    table.add_row("arguments", escape(json.dumps(dict(info.function_arguments), sort_keys=True)))
    table.add_row("input owners", escape(owners(info.inputs_ownership)))
    table.add_row("output owners", escape(owners(info.outputs_ownership)))
    table.add_row("assigned inputs", escape(assigned(info.assigned_inputs)))
    table.add_row("assigned outputs", escape(assigned(info.assigned_outputs)))
    table.add_row("participants", escape(", ".join(info.participants)) or "-")
    table.add_row("approved by", escape(", ".join(info.approved_users)) or "-")
    for approval in info.approvals:
        table.add_row(f"approval of {escape(approval.user_id)}", escape(_approval_text(approval)))
    for refusal in info.refusals:
        table.add_row(f"refused by {escape(refusal.user_id)}", escape(_refusal_text(refusal)))
    if info.task_digest:
        table.add_row("function digest", info.function_digest or "-")
        table.add_row("task digest", info.task_digest)
    table.add_row("result", escape(_result_text(info)))
    from ..sdk.frontend import TaskFailure, TaskOutputs

    if isinstance(info.result, TaskOutputs | TaskFailure) and info.result.sandbox_layers:
        table.add_row("sandbox layers", escape(", ".join(info.result.sandbox_layers)))
    if info.receipt:
        table.add_row("receipt", f"signed by the execution node (kettle task receipt {info.task_id} --out FILE)")
    elif info.terminal:
        table.add_row("receipt", "none: no execution node ran this task")
    if isinstance(info.result, TaskOutputs):
        for name, tag in sorted(info.result.tags_map.items()):
            table.add_row(f"output {escape(name)} cmac", tag.hex())
        for line in info.result.log:
            table.add_row("log", escape(line))
    return table


def _time_text(seconds: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _approval_text(approval: TaskApproval) -> str:
    expiry = "no expiry" if approval.expires_at is None else f"expires {_time_text(approval.expires_at)}"
    return f"{_time_text(approval.approved_at)}, {expiry}, digest {approval.task_digest}"


def _refusal_text(refusal: TaskRefusal) -> str:
    why = f", reason: {refusal.reason}" if refusal.reason else ""
    return f"{_time_text(refusal.refused_at)}, digest {refusal.task_digest}{why}"


def task_list_lines(infos: list[TaskInfo]) -> list[str]:
    """``task list``: one line per task, newest first: id, status, function, and who refused it
    (whole ids, never cut to the terminal's width, so the lines can be read by scripts)."""
    lines = []
    for info in infos:
        refused = ", ".join(r.user_id for r in info.refusals)
        lines.append(f"{info.task_id}  {_status_text(info):<12}  {info.function_id}"
                     + (f"  refused by {refused}" if refused else ""))
    return lines


def consent_text(info: TaskInfo) -> str:
    """What ``task show`` prints: the description an approval covers, its digest, the approvals."""
    if not info.task_manifest:
        return "this frontend does not bind approvals to a task digest (not a Kettle platform)"
    manifest = json.dumps(json.loads(info.task_manifest), indent=2, sort_keys=True, ensure_ascii=False)
    lines = [
        f"An approval of {info.task_id} covers exactly this description (canonical JSON; its SHA-256 is the",
        "task digest). URLs and crypto infos appear as SHA-256 digests, so each owner can check its own.",
        "",
        manifest,
        "",
        f"function digest: {info.function_digest}",
        f"task digest:     {info.task_digest}",
    ]
    lines += [f"approval of {a.user_id}: {_approval_text(a)}" for a in info.approvals]
    lines += [f"refused by {r.user_id}: {_refusal_text(r)}" for r in info.refusals]
    lines += ["", f"approve exactly this: kettle task approve {info.task_id} --expect-digest {info.task_digest}"]
    return "\n".join(lines)


class _WaitDisplay:
    """A spinner with the task's last known status and the time waited, redrawn by Live."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.status = "waiting"
        self.started = time.monotonic()
        self.spinner = Spinner("dots")

    def __rich__(self) -> RenderableType:
        elapsed = time.monotonic() - self.started
        self.spinner.update(text=Text(f"{self.task_id}: {self.status}  ({elapsed:.0f} s)"))
        return self.spinner


def _write_return_value(value: bytes) -> None:
    """Text as text; anything else byte for byte, so results can be piped."""
    try:
        out.print(value.decode(), highlight=False, markup=False)
    except UnicodeDecodeError:
        sys.stdout.flush()
        sys.stdout.buffer.write(value)
        sys.stdout.buffer.flush()


# --- commands ---------------------------------------------------------------------------------


@app.command("create")
@one_line_errors
def create(
    function_id: str,
    args: str = typer.Option("{}", "--args", help='function arguments as a JSON object, e.g. \'{"message": "hi"}\''),
    executor: str = typer.Option("builtin", "--executor", help="builtin, mesapy (python) or wamr"),
    input_owner: list[str] = typer.Option([], "--input-owner", help="NAME=UID[,UID...]: owners of an input (repeatable)"),
    output_owner: list[str] = typer.Option([], "--output-owner", help="NAME=UID[,UID...]: owners of an output (repeatable)"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Create a task of a function and print its id."""
    arguments = parse_arguments(args)
    inputs = unique_mapping([parse_owners(s, "--input-owner") for s in input_owner], "--input-owner")
    outputs = unique_mapping([parse_owners(s, "--output-owner") for s in output_owner], "--output-owner")
    task_id = functions.frontend_client().create_task(function_id, arguments, executor, inputs, outputs)
    if as_json:
        out.print_json(data={"task_id": task_id})
    else:
        out.print(task_id, highlight=False)


@app.command("assign")
@one_line_errors
def assign(
    task_id: str,
    input_: list[str] = typer.Option([], "--input", help="NAME=DATA_ID: one of your input files (repeatable)"),
    output: list[str] = typer.Option([], "--output", help="NAME=DATA_ID: one of your output files (repeatable)"),
) -> None:
    """Give a task your files under the names its function declares."""
    inputs = unique_mapping([parse_assignment(s, "--input") for s in input_], "--input")
    outputs = unique_mapping([parse_assignment(s, "--output") for s in output], "--output")
    functions.frontend_client().assign_data(task_id, inputs, outputs)
    out.print(f"assigned {len(inputs) + len(outputs)} file(s) to {task_id}", highlight=False)


@app.command("show")
@one_line_errors
def show(task_id: str, as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """Show exactly what an approval of the task covers, and its digest."""
    info = functions.frontend_client().get_task(task_id)
    if as_json:
        data = info.to_json()
        out.print_json(data={k: data[k] for k in ("task_id", "function_digest", "task_digest", "task_manifest",
                                                  "approvals")})
    else:
        out.print(consent_text(info), highlight=False, markup=False)


@app.command("approve")
@one_line_errors
def approve(
    task_id: str,
    expect_digest: str = typer.Option(None, "--expect-digest",
                                      help="approve only if the task digest is this one (see `kettle task show`)"),
    expires_in: str = typer.Option(None, "--expires-in",
                                   help="the approval lapses after this long: 3600, 90m, 12h, 7d"),
) -> None:
    """Approve a task you participate in."""
    seconds = None if expires_in is None else parse_duration(expires_in, "--expires-in")
    functions.frontend_client().approve_task(task_id, expect_digest=expect_digest, expires_in=seconds)
    out.print(f"approved {task_id}" + ("" if seconds is None else f" for {seconds} s"), highlight=False)


@app.command("revoke")
@one_line_errors
def revoke(task_id: str) -> None:
    """Withdraw your approval of a task that is not invoked yet."""
    functions.frontend_client().revoke_approval(task_id)
    out.print(f"revoked your approval of {task_id}", highlight=False)


@app.command("refuse")
@one_line_errors
def refuse(
    task_id: str,
    reason: str = typer.Option("", "--reason", help="why, for the other participants (at most 256 characters)"),
) -> None:
    """Decline to approve a task (withdraws your approval); it cannot be invoked until you approve it."""
    functions.frontend_client().refuse_task(task_id, reason)
    out.print(f"refused {task_id}", highlight=False)


@app.command("list")
@one_line_errors
def list_tasks(as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """List the tasks you participate in, newest first: id, status, function."""
    client = functions.frontend_client()
    infos = [client.get_task(task_id) for task_id in client.list_my_tasks()]
    if as_json:
        out.print_json(data={"tasks": [{"task_id": i.task_id, "status": _status_text(i), "function_id": i.function_id,
                                        "creator": i.creator, "approved_users": list(i.approved_users),
                                        "refused_by": [r.user_id for r in i.refusals]} for i in infos]})
    else:
        for line in task_list_lines(infos):
            out.print(line, highlight=False, markup=False)


@app.command("invoke")
@one_line_errors
def invoke(task_id: str) -> None:
    """Start a task you created (once its data is assigned and approved)."""
    functions.frontend_client().invoke_task(task_id)
    out.print(f"invoked {task_id}", highlight=False)


@app.command("cancel")
@one_line_errors
def cancel(task_id: str) -> None:
    """Cancel a task you created (a running one stops shortly after)."""
    functions.frontend_client().cancel_task(task_id)
    out.print(f"cancel requested for {task_id}", highlight=False)


@app.command("get")
@one_line_errors
def get(task_id: str, as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """Show a task: status, participants, data and result."""
    info = functions.frontend_client().get_task(task_id)
    if as_json:
        out.print_json(data=info.to_json())
    else:
        out.print(_task_table(info))


@app.command("receipt")
@one_line_errors
def receipt(
    task_id: str,
    output: Path = typer.Option(..., "--out", help="file to write the receipt to"),
) -> None:
    """Save a finished task's execution receipt, after checking it against the task's result.

    ``kettle receipt verify FILE`` checks the saved file later, offline."""
    from ..sdk.receipts import verify_receipt

    info = functions.frontend_client().get_task(task_id)
    if not info.terminal:
        raise ValueError(f"task {task_id} has not ended yet; its receipt comes with its result")
    signed = verify_receipt(info.receipt, task=info)
    output.write_bytes(info.receipt)
    out.print(f"wrote {escape(str(output))}: {signed.body.outcome.value}, signed by execution node "
              f"{signed.body.executor_id} at {signed.signature.to_json()['signed_at']}; it matches the task's result",
              highlight=False)


@app.command("wait")
@one_line_errors
def wait(
    task_id: str,
    timeout: float = typer.Option(None, "--timeout", help="give up after this many seconds (default: wait until it ends)"),
    as_json: bool = typer.Option(False, "--json", help="print the whole task as JSON"),
) -> None:
    """Wait until a task ends and print its result; exit 1 if it failed, was canceled or timed out."""
    from ..sdk.frontend import outputs_after_wait

    client = functions.frontend_client()
    deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
    display = _WaitDisplay(task_id)
    with Live(display, console=err, transient=True, refresh_per_second=8, redirect_stdout=False):
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            info = client.wait_task(task_id, STATUS_REFRESH_SECS if remaining is None else min(STATUS_REFRESH_SECS, remaining))
            display.status = _status_text(info)
            if info.terminal or remaining is not None and remaining <= STATUS_REFRESH_SECS:
                break
    if as_json:
        out.print_json(data=info.to_json())
    outputs = outputs_after_wait(info, timeout)  # raises, as one line, unless it succeeded
    if not as_json:
        _write_return_value(outputs.return_value)
