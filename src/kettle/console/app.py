"""The console's pages and actions (Starlette): thin handlers over the SDK and :mod:`.review`.

Every page but the status page first needs a platform that verified
(:class:`.session.PlatformSession`); until then it answers with the failed
verdict and nothing else, so no data of an unverified platform is shown and no
password is sent to it. Actions are HTML form posts (they work without script,
with the keyboard); each checks the CSRF token (:mod:`.guard`), does one SDK call
and redirects back with a fixed notice, or shows the page again with the
platform's error. Only live progress uses script: ``console.js`` listens to the
task's server-sent events.
"""

from __future__ import annotations

import asyncio
import base64
import json
import tempfile
from concurrent.futures import ThreadPoolExecutor
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..cli.tasks import parse_arguments, parse_owners, unique_mapping
from ..config import Config
from ..crypto.recipes import FileKey
from ..errors import AttestationError, AuthenticationError, KettleError, PermissionDenied
from ..model.records import TaskStatus
from ..model.tasks import ENGINE_OF_TYPE
from ..sdk import builtin_function, builtin_functions
from ..sdk.files import decrypt_file
from ..sdk.receipts import examine_receipt
from ..sdk.frontend import FunctionInfo, TaskInfo, TaskOutputs, status_name
from ..sdk.trail import verify_trail
from . import review
from .guard import CSRF_FIELD, REFUSED_CSRF, Guard, RunSecret
from .keys import KeyStore, KnownFile
from .session import PlatformSession

HERE = Path(__file__).parent
EVENT_SLICE_SECS = 2.0
"""Longest WaitTask slice of the live progress stream; a change is sent the moment it happens."""
LOOKUPS_AT_ONCE = 8
"""Most platform reads of one page in flight at once (a task, file or function each)."""
MAX_UPLOAD_BYTES = 4 * 1024 * 1024
"""Largest key file or function payload taken from a form."""

NOTICES = {
    "approved": "Approved: your approval is bound to the task digest you reviewed.",
    "refused": "Refused: the other parties see your refusal.",
    "revoked": "Your approval is withdrawn.",
    "assigned": "Your data is assigned to the task.",
    "invoked": "The task is invoked.",
    "canceled": "Cancel requested.",
    "created": "Task created.",
    "registered": "Registered.",
    "logged-in": "Logged in.",
}

Handler = Callable[[Request], Awaitable[Response]]


class Console:
    """What the handlers share: the platform session, the key store, the templates."""

    def __init__(self, config: Config, secret: RunSecret) -> None:
        self.config = config
        self.secret = secret
        self.session = PlatformSession(config)
        self.keys = KeyStore(config.home)
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.templates.filters["status"] = status_name
        self.templates.filters["time"] = _time
        self.templates.filters["time_ms"] = lambda ms: _time(ms / 1000) if isinstance(ms, int) else "?"

    def render(self, request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        platform = self.session.status()
        notice = NOTICES.get(request.query_params.get("done", ""), "")
        base = request.scope.get("root_path", "")
        html = self.templates.get_template(template).render(
            csrf=self.secret.csrf, csrf_field=CSRF_FIELD, platform=platform, user=self.session.user_id(),
            base=base, path=request.url.path.removeprefix(base), notice=notice, **{"error": "", **context},
        )
        return HTMLResponse(html, status_code=status_code)


def _time(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def create_app(config: Config, secret: RunSecret, port: int) -> tuple[Guard, Console]:
    """The guarded application, and what its handlers share (to close when the server stops)."""
    console = Console(config, secret)

    def verified(handler: Callable[[Console, Request], Awaitable[Response]], *, login: bool = True) -> Handler:
        """Run ``handler`` only for a verified platform (and, with ``login``, a logged-in user)."""

        async def guarded(request: Request) -> Response:
            platform = await run_in_threadpool(console.session.status)
            if not platform.ok:
                return console.render(request, "status.html", 503)
            if login and console.session.user_id() is None:
                return _go(request, "/login")
            try:
                return await handler(console, request)
            except CsrfRefused:
                return _csrf_refused()
            except AuthenticationError:
                return _go(request, "/login?expired=1")
            except AttestationError:
                await run_in_threadpool(console.session.status, fresh=True)
                return console.render(request, "status.html", 503)
            except KettleError as exc:  # e.g. a role that may not list tasks: say so, on the page
                return console.render(request, "message.html", 403 if isinstance(exc, PermissionDenied) else 400,
                                      title="The platform refused this", error=exc.message)

        return guarded

    routes = [
        Route("/", status_page),
        Route("/status", status_page),
        Route("/status/recheck", recheck, methods=["POST"]),
        Route("/login", verified(login_page, login=False), methods=["GET", "POST"]),
        Route("/logout", verified(logout, login=False), methods=["POST"]),
        Route("/inbox", verified(inbox)),
        Route("/tasks", verified(tasks_page), methods=["GET", "POST"]),
        Route("/tasks/{task_id}", verified(task_page)),
        Route("/tasks/{task_id}/events", verified(task_events)),
        Route("/tasks/{task_id}/{action}", verified(task_action), methods=["POST"]),
        Route("/data", verified(data_page)),
        Route("/data/inputs", verified(register_input), methods=["POST"]),
        Route("/data/outputs", verified(register_output), methods=["POST"]),
        Route("/data/{data_id}/download", verified(download)),
        Route("/trail", verified(trail_page)),
        Route("/functions", verified(functions_page), methods=["GET", "POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes)
    app.state.console = console
    return Guard(app, secret, port), console


def _go(request: Request, path: str) -> RedirectResponse:
    """A 303 to one of the console's pages (below the run's path prefix)."""
    return RedirectResponse(request.scope.get("root_path", "") + path, 303)


def _console(request: Request) -> Console:
    return request.app.state.console  # type: ignore[no-any-return]


async def _form(request: Request) -> FormData:
    """The posted form, only if it carries this run's CSRF token."""
    form = await request.form(max_part_size=MAX_UPLOAD_BYTES)
    token = form.get(CSRF_FIELD)
    if not isinstance(token, str) or not _console(request).secret.matches_csrf(token):
        raise CsrfRefused
    return form


class CsrfRefused(Exception):
    pass


def _text(form: FormData, name: str) -> str:
    value = form.get(name, "")
    return value.strip() if isinstance(value, str) else ""


async def _upload(form: FormData, name: str) -> bytes:
    value = form.get(name)
    if not isinstance(value, UploadFile):
        return b""
    data = await value.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise ValueError(f"{name}: the file is larger than {MAX_UPLOAD_BYTES} bytes")
    return data


def _csrf_refused() -> Response:
    return Response(REFUSED_CSRF, 403, media_type="text/plain")


# --- status and login ---------------------------------------------------------------------


async def status_page(request: Request) -> Response:
    console = _console(request)
    platform = await run_in_threadpool(console.session.status)
    return console.render(request, "status.html", 200 if platform.ok else 503)


async def recheck(request: Request) -> Response:
    console = _console(request)
    try:
        await _form(request)
    except CsrfRefused:  # this page is not behind verified(), which answers it for the others
        return _csrf_refused()
    await run_in_threadpool(console.session.status, fresh=True)
    return _go(request, "/status")


async def login_page(console: Console, request: Request) -> Response:
    if request.method == "GET":
        expired = "Your login has expired or was ended; log in again." if request.query_params.get("expired") else ""
        return console.render(request, "login.html", error=expired)
    form = await _form(request)
    user_id, password = _text(form, "user_id"), form.get("password", "")
    if not user_id or not isinstance(password, str) or not password:
        return console.render(request, "login.html", 400, error="Give your user id and password.")
    try:
        await run_in_threadpool(console.session.login, user_id, password)
    except KettleError as exc:
        return console.render(request, "login.html", 401, error=f"Not logged in: {exc.message}")
    return _go(request, "/inbox?done=logged-in")


async def logout(console: Console, request: Request) -> Response:
    await _form(request)
    await run_in_threadpool(console.session.logout)
    return _go(request, "/login")


# --- tasks -----------------------------------------------------------------------------------


def _my_tasks(console: Console) -> list[TaskInfo]:
    client = console.session.client()
    return _each(client.get_task, client.list_my_tasks())


def _each(call: Callable[[str], Any], ids: list[str]) -> list[Any]:
    """``call`` for every id, several at once (one gRPC channel serves many threads), in order."""
    if len(ids) < 2:
        return [call(i) for i in ids]
    with ThreadPoolExecutor(min(LOOKUPS_AT_ONCE, len(ids))) as pool:
        return list(pool.map(call, ids))


async def inbox(console: Console, request: Request) -> Response:
    user = console.session.user_id() or ""
    tasks = await run_in_threadpool(_my_tasks, console)
    waiting = [review.review_task(t) for t in tasks if review.needs_approval(t, user)]
    return console.render(request, "inbox.html", reviews=waiting)


def _my_functions(console: Console) -> list[FunctionInfo]:
    client = console.session.client()
    listing = client.list_functions(console.session.user_id())
    return _each(client.get_function, [*listing.registered_functions, *listing.allowed_functions])


async def tasks_page(console: Console, request: Request) -> Response:
    error = ""
    status_code = 200
    if request.method == "POST":
        form = await _form(request)
        try:
            task_id = await run_in_threadpool(_create_task, console, form)
        except (KettleError, ValueError) as exc:
            error, status_code = f"Not created: {_message(exc)}", 400
        else:
            return _go(request, f"/tasks/{task_id}?done=created")
    tasks, functions = await asyncio.gather(run_in_threadpool(_my_tasks, console),
                                            run_in_threadpool(_my_functions, console))
    return console.render(request, "tasks.html", status_code, tasks=tasks, functions=functions, error=error)


def _owners(text: str, what: str) -> dict[str, tuple[str, ...]]:
    """One ``NAME=USER[,USER...]`` per line, as ``kettle task create --input-owner`` takes each."""
    return unique_mapping([parse_owners(line.strip(), what) for line in text.splitlines() if line.strip()], what)


def _create_task(console: Console, form: FormData) -> str:
    # What the form says is checked before anything is asked of the platform.
    arguments = parse_arguments(_text(form, "arguments") or "{}", "the arguments")
    inputs = _owners(_text(form, "input_owners"), "input owners")
    outputs = _owners(_text(form, "output_owners"), "output owners")
    client = console.session.client()
    function = client.get_function(_text(form, "function_id"))
    engine = ENGINE_OF_TYPE.get(function.executor_type, function.executor_type)
    return client.create_task(function.function_id, arguments, engine, inputs, outputs)


def _task_view(console: Console, task_id: str) -> dict[str, Any]:
    client = console.session.client()
    task = client.get_task(task_id)
    function_review = None
    function_problem = ""
    try:
        function_review = review.review_function(client.get_function(task.function_id), task.function_digest)
    except KettleError as exc:
        function_problem = exc.message
    my_files = _my_files(console) if task.status in (TaskStatus.CREATED, TaskStatus.DATA_ASSIGNED) else []
    receipt = None
    if task.receipt:
        receipt = examine_receipt(task.receipt, client.trust, task=task)
    task_review = review.review_task(task)
    known = console.keys.all()
    bindings = {(s.direction, s.name): review.registration_problems(s, known[s.assigned])
                for s in task_review.slots if s.assigned in known}
    return {"review": task_review, "function": function_review, "function_problem": function_problem,
            "my_files": my_files, "receipt": receipt, "result_text": _result_text(task), "bindings": bindings}


def _result_text(task: TaskInfo) -> str:
    if isinstance(task.result, TaskOutputs):
        try:
            return task.result.return_value.decode()
        except UnicodeDecodeError:
            return f"{len(task.result.return_value)} bytes, not text"
    return ""


async def task_page(console: Console, request: Request, *, error: str = "", status_code: int = 200) -> Response:
    task_id = request.path_params["task_id"]
    try:
        view = await run_in_threadpool(_task_view, console, task_id)
    except KettleError as exc:
        return console.render(request, "message.html", 404, title="The task cannot be shown", error=exc.message)
    return console.render(request, "task.html", status_code, error=error, **view)


TASK_ACTIONS = ("assign", "approve", "refuse", "revoke", "invoke", "cancel")


async def task_action(console: Console, request: Request) -> Response:
    task_id, action = request.path_params["task_id"], request.path_params["action"]
    if action not in TASK_ACTIONS:
        return console.render(request, "message.html", 404, title="No such action", error=f"no action {action!r}")
    form = await _form(request)
    client = console.session.client()
    try:
        if action == "approve":
            shown = _text(form, "digest")
            if not shown:
                raise ValueError("the form names no task digest; reload the task")
            await run_in_threadpool(lambda: client.approve_task(task_id, expect_digest=shown))
        elif action == "refuse":
            await run_in_threadpool(client.refuse_task, task_id, _text(form, "reason"))
        elif action == "revoke":
            await run_in_threadpool(client.revoke_approval, task_id)
        elif action == "invoke":
            await run_in_threadpool(client.invoke_task, task_id)
        elif action == "cancel":
            await run_in_threadpool(client.cancel_task, task_id)
        else:
            inputs = {k.removeprefix("input:"): v for k, v in form.items() if k.startswith("input:") and v}
            outputs = {k.removeprefix("output:"): v for k, v in form.items() if k.startswith("output:") and v}
            if not inputs and not outputs:
                raise ValueError("choose a file for at least one of your data names")
            await run_in_threadpool(client.assign_data, task_id, inputs, outputs)
    except (KettleError, ValueError) as exc:
        text = _message(exc)
        if action == "approve":
            text = ("Not approved. The platform refused the approval of the task as you reviewed it: "
                    f"{text}. If the task changed since you loaded the page, review it again below; "
                    "an approval only ever covers the digest on the page you approved from.")
        else:
            text = f"Not done ({action}): {text}"
        return await task_page(console, request, error=text, status_code=409)
    done = {"assign": "assigned", "approve": "approved", "refuse": "refused", "revoke": "revoked",
            "invoke": "invoked", "cancel": "canceled"}[action]
    return _go(request, f"/tasks/{task_id}?done={done}")


async def task_events(console: Console, request: Request) -> Response:
    """Server-sent events: the task's status each time it changes, until it ends."""
    task_id = request.path_params["task_id"]
    client = console.session.client()

    async def events() -> AsyncIterator[bytes]:
        last = None
        while True:
            try:
                task = await run_in_threadpool(client.wait_task, task_id, EVENT_SLICE_SECS)
            except KettleError as exc:
                yield _event("problem", {"message": exc.message})
                return
            if task.status != last:
                last = task.status
                yield _event("status", {"status": status_name(task.status), "terminal": task.terminal})
            if task.terminal or await request.is_disconnected():
                return

    return StreamingResponse(events(), media_type="text/event-stream", headers={"x-accel-buffering": "no"})


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


# --- data ---------------------------------------------------------------------------------------


def _my_files(console: Console) -> list[dict[str, Any]]:
    client = console.session.client()
    known = console.keys.all()
    files = []

    def info_of(data_id: str) -> Any:
        return client.get_input_file(data_id) if data_id.startswith("input-") else client.get_output_file(data_id)

    for info in _each(info_of, client.list_my_files()):
        data_id = info.data_id
        entry = known.get(data_id)
        files.append({"info": info, "direction": "input" if data_id.startswith("input-") else "output",
                      "label": entry.label if entry else "", "key_held": entry is not None})
    return files


async def data_page(console: Console, request: Request, *, error: str = "", status_code: int = 200) -> Response:
    files = await run_in_threadpool(_my_files, console)
    return console.render(request, "data.html", status_code, files=files, error=error)


async def _key_from(form: FormData, generate: bool) -> FileKey:
    if generate:
        return FileKey.generate(_text(form, "schema") or "aes-gcm-128")
    data = await _upload(form, "key_file")
    if not data:
        raise ValueError("choose the file's key file (made by `kettle file keygen`), or let the console make a key")
    return FileKey.from_json(data.decode("utf-8", errors="replace"))


async def register_input(console: Console, request: Request) -> Response:
    form = await _form(request)
    client = console.session.client()
    try:
        url = _text(form, "url")
        key = await _key_from(form, generate=False)
        cmac_text = _text(form, "cmac").replace(":", "").replace(" ", "")
        try:
            cmac = bytes.fromhex(cmac_text)
        except ValueError:
            raise ValueError("the cmac is not hex") from None
        data_id = await run_in_threadpool(client.register_input_file, url, key.schema, key.key, key.iv, cmac)
    except (KettleError, ValueError) as exc:
        return await data_page(console, request, error=f"Input not registered: {_message(exc)}", status_code=400)
    console.keys.add(KnownFile(data_id, url, key, _text(form, "label"), cmac.hex()))
    return _go(request, "/data?done=registered")


async def register_output(console: Console, request: Request) -> Response:
    form = await _form(request)
    client = console.session.client()
    try:
        url = _text(form, "url")
        key = await _key_from(form, generate=_text(form, "key_source") != "file")
        data_id = await run_in_threadpool(client.register_output_file, url, key.schema, key.key, key.iv)
    except (KettleError, ValueError) as exc:
        return await data_page(console, request, error=f"Output not registered: {_message(exc)}", status_code=400)
    console.keys.add(KnownFile(data_id, url, key, _text(form, "label")))
    return _go(request, "/data?done=registered")


def _decrypted(console: Console, data_id: str) -> tuple[bytes, str]:
    known = console.keys.get(data_id)
    if known is None:
        raise ValueError(f"this console holds no key for {data_id}: it was not registered here")
    info = console.session.client().get_output_file(data_id)
    if info.cmac is None:
        raise ValueError(f"{data_id} has not been written by a task yet")
    parsed = urlparse(known.url)
    name = Path(unquote(parsed.path)).name or "output"
    with tempfile.TemporaryDirectory() as scratch:
        encrypted = Path(scratch) / name
        if parsed.scheme == "file":
            encrypted.write_bytes(Path(unquote(parsed.path)).read_bytes())
        elif parsed.scheme in ("http", "https"):
            import httpx

            response = httpx.get(known.url, timeout=60, follow_redirects=False)
            response.raise_for_status()
            encrypted.write_bytes(response.content)
        else:
            raise ValueError(f"the console downloads file://, http:// and https:// URLs, not {parsed.scheme}://")
        plain = Path(scratch) / "plain"
        # The platform's cmac is the authority: a file changed since the task wrote it does not decrypt.
        decrypt_file(encrypted, plain, known.key, cmac=info.cmac,
                     name=name if known.key.schema == "teaclave-file-128" else None)
        return plain.read_bytes(), name


async def download(console: Console, request: Request) -> Response:
    data_id = request.path_params["data_id"]
    try:
        content, name = await run_in_threadpool(_decrypted, console, data_id)
    except (KettleError, ValueError, OSError) as exc:
        return await data_page(console, request, error=f"Not decrypted: {_message(exc)}", status_code=409)
    safe = "".join(c for c in name if c.isalnum() or c in "._-") or "output"
    return Response(content, media_type="application/octet-stream",
                    headers={"content-disposition": f'attachment; filename="{safe}.decrypted"'})


# --- trail ---------------------------------------------------------------------------------------


def _trail_view(console: Console) -> dict[str, Any]:
    client = console.session.client()
    trail = client.my_trail()
    verdict = verify_trail(trail, client.trust)
    entries = trail.described()
    receipts: dict[int, Any] = {}
    for position, entry in enumerate(entries):
        receipt = entry.get("receipt") if isinstance(entry, dict) else None
        if receipt:
            receipts[position] = examine_receipt(base64.b64decode(receipt), client.trust)
    return {"trail": trail, "verdict": verdict, "entries": entries, "receipts": receipts}


async def trail_page(console: Console, request: Request) -> Response:
    view = await run_in_threadpool(_trail_view, console)
    return console.render(request, "trail.html", **view)


# --- functions -------------------------------------------------------------------------------------


async def functions_page(console: Console, request: Request) -> Response:
    error, status_code = "", 200
    if request.method == "POST":
        form = await _form(request)
        try:
            await _register_function(console, form)
        except (KettleError, ValueError) as exc:
            error, status_code = f"Not registered: {_message(exc)}", 400
        else:
            return _go(request, "/functions?done=registered")
    functions = await run_in_threadpool(_my_functions, console)
    return console.render(request, "functions.html", status_code, functions=functions, builtins=builtin_functions(),
                          error=error)


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.replace("\n", ",").split(",") if n.strip()]


async def _register_function(console: Console, form: FormData) -> str:
    client = console.session.client()
    kind = _text(form, "executor_type")
    public = _text(form, "public") == "yes"
    if kind == "builtin":
        spec = builtin_function(_text(form, "builtin"))
        inputs, outputs = spec.file_names() if not spec.files_depend_on_arguments else (
            _names(_text(form, "inputs")), _names(_text(form, "outputs")))
        return await run_in_threadpool(lambda: client.register_function(
            spec.name, spec.description, "builtin", public, b"", [a.key for a in spec.arguments if a.required],
            inputs, outputs))
    if kind not in ("python", "wamr"):
        raise ValueError("choose built-in, Python or WebAssembly")
    payload = await _upload(form, "payload")
    if not payload:
        raise ValueError("choose the function's code file")
    name = _text(form, "name")
    if not name:
        raise ValueError("give the function a name")
    return await run_in_threadpool(lambda: client.register_function(
        name, _text(form, "description"), kind, public, payload, _names(_text(form, "arguments")),
        _names(_text(form, "inputs")), _names(_text(form, "outputs"))))


def _message(exc: BaseException) -> str:
    return exc.message if isinstance(exc, KettleError) else str(exc)
