"""``kettle``: run the platform, check attestation, sign enclave info, manage users.

Errors are one line on stderr and exit status 1; ``--json`` prints
machine-readable output where a command has a result.
"""

from __future__ import annotations

import functools
import getpass
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..config import Config, load_config
from ..credentials import save_credentials, saved_credentials
from . import api_target
from ..errors import KettleError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Kettle: attested secure computing on private data.")
audit_app = typer.Typer(
    no_args_is_help=True, help="Auditors: sign and verify enclave info. Parties: list and verify your own trail."
)
user_app = typer.Typer(no_args_is_help=True, help="Users of the platform (authentication API).")
app.add_typer(audit_app, name="audit")
app.add_typer(user_app, name="user")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])


def one_line_errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KettleError as exc:
            err.print(f"[red]error:[/red] {escape(exc.message)}", highlight=False)
            raise typer.Exit(1) from None
        except (OSError, ValueError) as exc:
            err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


# --- platform ---------------------------------------------------------------


@app.command()
@one_line_errors
def up() -> None:
    """Start the platform (simulation TEE, embedded storage) and supervise it until Ctrl-C.

    A crashed service is restarted after a backoff; a crash loop stops the platform
    (exit status 1). ``kettle status`` shows each service from another terminal."""
    from ..config import kettle_home
    from ..launcher import PLATFORM_SERVICES, Supervisor, start_platform
    from ..provisioning import init_dev_home

    home = kettle_home()
    out.print(f"Preparing {home} ...")
    config = init_dev_home(home)
    out.print("[bold yellow]SIMULATION mode: no TEE protects this platform; for development only.[/bold yellow]")
    children = start_platform(config)
    try:
        _check_endpoint(config)
    except BaseException:
        from ..launcher import stop_all

        stop_all(children)
        raise
    table = Table(title="Kettle endpoints", show_header=True)
    table.add_column("service")
    table.add_column("address")
    table.add_row("authentication API", ", ".join(config.endpoint("authentication", api=True).targets))
    table.add_row("frontend API", ", ".join(config.endpoint("frontend", api=True).targets))
    table.add_row("attestation service", config.attestation.service_url)
    for name in PLATFORM_SERVICES:
        # The frontend serves only its API endpoint; execution nodes serve nothing.
        if name not in ("frontend", "execution"):
            table.add_row(f"{name} (internal)", ", ".join(config.endpoint(name).targets))
    out.print(table)
    out.print(f"Admin account: [bold]{config.authentication.admin_id}[/bold] / {config.authentication.admin_password}")
    out.print(f"Client trust files: {config.as_root_path}  {config.enclave_info_path}")
    out.print(f"Logs: {config.home / 'logs'}")
    out.print(f"Execution nodes: {config.supervisor.execution_nodes}")
    out.print(f"Kettle is ready (pid {os.getpid()}); Ctrl-C stops it.", highlight=False)
    sys.stdout.flush()
    supervisor = Supervisor(config, children, lambda message: err.print(message, highlight=False, markup=False))
    raise typer.Exit(supervisor.run())


@app.command()
@one_line_errors
def status(as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """Show each service `kettle up` runs: pid, restarts and health, checked now.

    Exit status 0 when the supervisor runs and every service is healthy, else 1."""
    from ..platform_status import StatusFile, health, healthy, process_alive

    config = load_config()
    platform = StatusFile(config.home).read()
    launcher = platform.state
    if launcher == "running" and not process_alive(platform.launcher_pid):
        launcher = "gone (the supervisor died without stopping the services)"
    # Checked whenever the supervisor did not stop them: a supervisor that died leaves its
    # services running, unsupervised.
    rows = [(s, health(config, s) if platform.state == "running" else "stopped") for s in platform.services]
    ok = launcher == "running" and all(healthy(h) for _, h in rows)
    if as_json:
        out.print_json(data={
            "launcher_pid": platform.launcher_pid, "state": launcher, "message": platform.message,
            "healthy": ok,
            "services": [
                {"name": s.name, "service": s.service, "pid": s.pid, "restarts": s.restarts,
                 "health": h, "last_exit": s.last_exit}
                for s, h in rows
            ],
        })
    else:
        note = f": {platform.message}" if platform.message else ""
        out.print(f"Kettle supervisor (pid {platform.launcher_pid}) is {launcher}{note}", highlight=False, markup=False)
        table = Table(show_header=True)
        for column in ("service", "pid", "restarts", "health", "last exit"):
            table.add_column(column)
        for s, h in rows:
            table.add_row(s.name, str(s.pid), str(s.restarts), escape(h), escape(s.last_exit))
        out.print(table)
    if not ok:
        raise typer.Exit(1)


def _check_endpoint(config: Config) -> None:
    """Verify the public endpoints exactly as a client would before announcing readiness."""
    from ..sdk.attested import ClientTrust, verify_endpoint

    trust = ClientTrust.from_config(config)
    for service in ("authentication", "frontend"):
        verify_endpoint(config.endpoint(service, api=True).target, service, trust)


@app.command()
@one_line_errors
def init() -> None:
    """Prepare a development KETTLE_HOME (keys, auditors, signed enclave info) without starting anything."""
    from ..config import kettle_home
    from ..provisioning import init_dev_home

    config = init_dev_home(kettle_home())
    out.print(f"initialised {config.home}")


@app.command()
@one_line_errors
def service(name: str = typer.Argument(..., help="attestation, or a platform service: storage, access_control, authentication, management, scheduler, execution, frontend")) -> None:
    """Run one service in the foreground (for multi-machine deployments)."""
    from ..launcher import run_service

    run_service(name, load_config())


@audit_app.command("sign")
@one_line_errors
def audit_sign(
    key: Path = typer.Option(..., "--key", help="auditor's RSA private key (PEM)"),
    enclave_info: Path = typer.Argument(None, help="enclave_info.toml (default: the home's)"),
    output: Path = typer.Option(None, "--out", help="signature file (default: <key name>.sign.sha256 beside enclave info)"),
) -> None:
    """Sign enclave info as an auditor (RSA PKCS#1 v1.5, SHA-256, over the exact file bytes)."""
    from ..attestation.enclave_info import SIGNATURE_SUFFIX, EnclaveInfo, sign_enclave_info
    from ..provisioning import load_auditor_private_key

    path = enclave_info or load_config().enclave_info_path
    data = path.read_bytes()
    EnclaveInfo.parse(data)  # never sign something that is not enclave info
    name = key.name.split(".")[0]
    target = output or path.parent / f"{name}{SIGNATURE_SUFFIX}"
    target.write_bytes(sign_enclave_info(data, load_auditor_private_key(key)))
    out.print(f"wrote {target}")


@audit_app.command("verify")
@one_line_errors
def audit_verify(
    enclave_info: Path = typer.Argument(None, help="enclave_info.toml (default: the home's)"),
    threshold: int = typer.Option(0, help="distinct auditor signatures required (0 = every auditor key beside it)"),
) -> None:
    """Check the auditors' signatures on enclave info (k of n) and list the measurements."""
    from ..attestation.trust import client_enclave_info

    path = enclave_info or load_config().enclave_info_path
    info = client_enclave_info(path, threshold)
    for name, measurement in sorted(info.services.items()):
        kinds = f"  ({', '.join(measurement.tee.kinds)})" if measurement.tee else ""
        out.print(f"{name:15} mr_enclave {measurement.mr_enclave.hex()}  mr_signer {measurement.mr_signer.hex()}{kinds}")
    out.print("[bold green]enclave info verified[/bold green]")


def _hex_option(value: str | None, size: int, what: str) -> bytes | None:
    from ..errors import InvalidArgument

    if value is None:
        return None
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raw = b""
    if len(raw) != size:
        raise InvalidArgument(f"{what} must be {size * 2} hex characters")
    return raw


@audit_app.command("add-measurement")
@one_line_errors
def audit_add_measurement(
    service: str = typer.Argument(..., help="service name, e.g. storage"),
    enclave_info: Path = typer.Option(None, "--enclave-info", help="enclave_info.toml (default: the home's)"),
    sev_snp: str = typer.Option(None, "--sev-snp", help="an SNP launch measurement (96 hex)"),
    tdx: str = typer.Option(None, "--tdx", help="a TDX measurement: MRTD,RTMR0,RTMR1,RTMR2,RTMR3 (96 hex each)"),
    sgx_mr_enclave: list[str] = typer.Option(None, "--sgx-mr-enclave", help="an accepted SGX MRENCLAVE (64 hex; repeatable)"),
    sgx_mr_signer: list[str] = typer.Option(None, "--sgx-mr-signer", help="an accepted SGX MRSIGNER (64 hex; repeatable)"),
    isv_prod_id: int = typer.Option(None, "--isv-prod-id", help="the SGX ISV product id"),
    min_isv_svn: int = typer.Option(None, "--min-isv-svn", help="the lowest SGX ISV SVN accepted"),
    mr_signer: str = typer.Option(None, "--mr-signer", help="the table's mr_signer (64 hex; needed for a new entry)"),
) -> None:
    """Add a TEE measurement to a service's enclave info entry and recompute its mr_enclave digest.

    The file is rewritten, so every auditor signature on it must be made again.
    """
    from ..attestation.enclave_info import EnclaveInfo, SgxMeasurement, with_tee_measurement
    from ..errors import InvalidArgument

    path = enclave_info or load_config().enclave_info_path
    info = EnclaveInfo.parse(path.read_bytes()) if path.exists() else EnclaveInfo({})
    sgx = None
    if sgx_mr_enclave or sgx_mr_signer or isv_prod_id is not None or min_isv_svn is not None:
        sgx = SgxMeasurement(
            # typer gives None, not [], for a repeatable option that is absent
            mr_enclave=frozenset(_hex_option(v, 32, "--sgx-mr-enclave") or b"" for v in sgx_mr_enclave or ()) or None,
            mr_signer=frozenset(_hex_option(v, 32, "--sgx-mr-signer") or b"" for v in sgx_mr_signer or ()) or None,
            isv_prod_id=isv_prod_id,
            min_isv_svn=min_isv_svn,
        )
    td = None
    if tdx is not None:
        values = tdx.split(",")
        if len(values) != 5:
            raise InvalidArgument("--tdx is MRTD,RTMR0,RTMR1,RTMR2,RTMR3")
        a, b, c, d, e = (_hex_option(v.strip(), 48, "each --tdx value") or b"" for v in values)
        td = (a, b, c, d, e)
    updated = with_tee_measurement(
        info, service, sev_snp=_hex_option(sev_snp, 48, "--sev-snp"), tdx=td, sgx=sgx,
        mr_signer=_hex_option(mr_signer, 32, "--mr-signer"),
    )
    path.write_bytes(updated.render())
    out.print(f"{service}: mr_enclave {updated.services[service].mr_enclave.hex()}")
    out.print(f"wrote {path}; every auditor must sign it again (kettle audit sign)")


# --- users --------------------------------------------------------------------


def _client(config: Config, authenticated: bool = True) -> Any:
    from ..sdk.authentication import AuthenticationClient

    client = AuthenticationClient(api_target(config, "authentication"))
    if authenticated:
        client.use_credential(*saved_credentials(config))
    return client


def _password(value: str | None, prompt: str = "Password") -> str:
    if value is not None:
        return value
    from_env = os.environ.get("KETTLE_PASSWORD")
    return from_env if from_env is not None else getpass.getpass(f"{prompt}: ")


@user_app.command("login")
@one_line_errors
def user_login(user_id: str, password: str = typer.Option(None, help="default: $KETTLE_PASSWORD or a prompt")) -> None:
    """Log in and keep the token in $KETTLE_HOME/credentials.json (mode 0600)."""
    config = load_config()
    token = _client(config, authenticated=False).user_login(user_id, _password(password))
    save_credentials(config, user_id, token)
    out.print(f"logged in as {user_id}")


@user_app.command("register")
@one_line_errors
def user_register(
    user_id: str,
    role: str = typer.Option(..., help="PlatformAdmin, FunctionOwner, DataOwnerManager or DataOwner"),
    attribute: str = typer.Option("", help="group of a DataOwner / DataOwnerManager"),
    password: str = typer.Option(None, help="default: $KETTLE_PASSWORD or a prompt"),
) -> None:
    """Register a user (what you may register depends on your role)."""
    _client(load_config()).user_register(user_id, _password(password, "New user's password"), role, attribute)
    out.print(f"registered {user_id}")


@user_app.command("update")
@one_line_errors
def user_update(
    user_id: str,
    role: str = typer.Option(...),
    attribute: str = typer.Option(""),
    password: str = typer.Option(None, help="default: $KETTLE_PASSWORD or a prompt"),
) -> None:
    """Replace a user's password and role."""
    _client(load_config()).user_update(user_id, _password(password, "New password"), role, attribute)
    out.print(f"updated {user_id}")


@user_app.command("passwd")
@one_line_errors
def user_passwd(password: str = typer.Option(None, help="default: $KETTLE_PASSWORD or a prompt")) -> None:
    """Change your own password, then log in again with it: the change ends every
    token issued before it, the saved one too (docs/users.md)."""
    config = load_config()
    client = _client(config)
    new_password = _password(password, "New password")
    client.user_change_password(new_password)
    user_id, _ = saved_credentials(config)
    save_credentials(config, user_id, client.user_login(user_id, new_password))
    out.print("password changed; logged in again with it")


@user_app.command("reset")
@one_line_errors
def user_reset(user_id: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Reset a user's password to a new random one and print it."""
    new_password = _client(load_config()).reset_user_password(user_id)
    if as_json:
        out.print_json(data={"id": user_id, "password": new_password})
    else:
        out.print(f"new password for {user_id}: {new_password}", highlight=False)


@user_app.command("delete")
@one_line_errors
def user_delete(user_id: str) -> None:
    """Delete a user."""
    _client(load_config()).delete_user(user_id)
    out.print(f"deleted {user_id}")


@user_app.command("list")
@one_line_errors
def user_list(
    group: str = typer.Argument("all", help="PlatformAdmin: anything; DataOwnerManager: your group"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List users (all of them for a PlatformAdmin, the group's DataOwners for a manager)."""
    ids = _client(load_config()).list_users(group)
    if as_json:
        out.print_json(data=ids)
    else:
        for user_id in ids:
            out.print(user_id, highlight=False)


from .attest import app as attest_app  # noqa: E402
from .data import app as data_app  # noqa: E402
from .files import app as file_app  # noqa: E402
from .functions import app as function_app  # noqa: E402  (at the end: they import from this module)
from .receipts import app as receipt_app  # noqa: E402
from .sandbox import app as sandbox_app  # noqa: E402
from .storage import app as storage_app  # noqa: E402
from .tasks import app as task_app  # noqa: E402
from .trail import audit_mine  # noqa: E402, F401  (registers `audit mine` and `audit verify-trail`)

app.add_typer(attest_app, name="attest")
app.add_typer(function_app, name="function")
app.add_typer(data_app, name="data")
app.add_typer(task_app, name="task")
app.add_typer(file_app, name="file")
app.add_typer(sandbox_app, name="sandbox")
app.add_typer(receipt_app, name="receipt")
app.add_typer(storage_app, name="storage")
from .audit_measure import audit_measure  # noqa: E402, F401  (registers `audit measure`)
from .console import console  # noqa: E402, F401  (registers `console`)
