"""The console's pure parts without sockets: the run secret, the origin rule, the guard middleware
(over a tiny Starlette app, in process) and what :mod:`kettle.console.review` prepares for an approval."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hashlib
import json
import uuid

import httpx
import pytest
import wasmtime
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from kettle.console import guard
from kettle.console.guard import (
    COOKIE_PREFIX,
    CONTENT_SECURITY_POLICY,
    REFUSED_HOST,
    REFUSED_ORIGIN,
    REFUSED_SECRET,
    SECURITY_HEADERS,
    Guard,
    RunSecret,
    origin_problem,
)
from kettle.console.keys import KnownFile
from kettle.console.review import (
    MAX_SOURCE_CHARS,
    DataSlot,
    WasmItem,
    needs_approval,
    registration_problems,
    review_function,
    review_task,
)
from kettle.crypto.recipes import FileKey
from kettle.model import consent
from kettle.model import functions as function_rules
from kettle.model.records import (
    CryptoInfo,
    FileRecord,
    FunctionArgument as RecordArgument,
    FunctionFile,
    FunctionRecord,
    TaskRecord,
    TaskStatus,
)
from kettle.sdk.frontend import (
    FunctionArgument,
    FunctionInfo,
    FunctionInput,
    FunctionOutput,
    TaskApproval,
    TaskInfo,
)

PORT = 43_210
COOKIE = f"{COOKIE_PREFIX}{PORT}"
"""The session cookie of the guard on :data:`PORT`."""


# --- the run secret -----------------------------------------------------------------------------


def test_each_run_has_its_own_secret_and_its_derivations_differ() -> None:
    one, two = RunSecret(), RunSecret()
    assert one.token != two.token and len(one.token) >= 40  # 32 random bytes, url-safe base64
    # The cookie and the CSRF token are derived for different purposes: one never stands in for the other.
    assert len({one.token, one.session, one.csrf}) == 3
    assert one.session != two.session and one.csrf != two.csrf
    # Derivation is deterministic: the same run gives the same cookie and token on every request.
    assert RunSecret(one.token).session == one.session and RunSecret(one.token).csrf == one.csrf
    # The token never shows in a repr (logs, tracebacks).
    assert one.token not in repr(one)


def test_the_secret_matches_only_itself_and_only_for_its_own_purpose() -> None:
    secret = RunSecret()
    assert secret.matches_token(secret.token)
    assert secret.matches_session(secret.session)
    assert secret.matches_csrf(secret.csrf)
    for wrong in ("", secret.token[:-1], secret.token + "x", RunSecret().token, "é" * 10):
        assert not secret.matches_token(wrong)
    assert not secret.matches_session(secret.token) and not secret.matches_session(secret.csrf)
    assert not secret.matches_csrf(secret.session) and not secret.matches_csrf(secret.token)
    assert not secret.matches_csrf("") and not secret.matches_session("ü" + secret.session[1:])


def test_matching_is_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Comparison goes through hmac.compare_digest (no early exit on the first differing byte)."""
    calls: list[tuple[bytes, bytes]] = []
    real = guard.hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    secret = RunSecret()
    monkeypatch.setattr(guard.hmac, "compare_digest", recording)
    assert not secret.matches_token("guess")
    assert secret.matches_session(secret.session)
    assert not secret.matches_csrf("guess")
    monkeypatch.undo()
    assert calls == [(b"guess", secret.token.encode()), (secret.session.encode(),) * 2, (b"guess", secret.csrf.encode())]


# --- the origin rule ------------------------------------------------------------------------------


@pytest.mark.parametrize("origin", [f"http://127.0.0.1:{PORT}", f"http://localhost:{PORT}"])
def test_a_post_from_the_console_itself_is_let_through(origin: str) -> None:
    assert origin_problem("POST", origin, "same-origin", PORT) is None
    assert origin_problem("POST", origin, None, PORT) is None


@pytest.mark.parametrize("origin", [
    "http://evil.example", "null", f"http://127.0.0.1:{PORT + 1}", f"https://127.0.0.1:{PORT}",
    f"https://localhost:{PORT}", "http://127.0.0.1", f"http://127.0.0.1:{PORT}/", f"http://[::1]:{PORT}",
    f"http://localhost.evil.example:{PORT}", "",
])
def test_a_post_from_any_other_origin_is_refused(origin: str) -> None:
    # Even a Sec-Fetch-Site that claims same-origin does not override the Origin the browser sent.
    assert origin_problem("POST", origin, "same-origin", PORT) == REFUSED_ORIGIN
    assert origin_problem("POST", origin, None, PORT) == REFUSED_ORIGIN


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_reads_are_never_refused_for_their_origin(method: str) -> None:
    assert origin_problem(method, "http://evil.example", "cross-site", PORT) is None


@pytest.mark.parametrize("site", ["cross-site", "same-site", "something-new"])
def test_without_origin_a_post_another_site_sent_is_refused(site: str) -> None:
    assert origin_problem("POST", None, site, PORT) == REFUSED_ORIGIN


@pytest.mark.parametrize("site", ["same-origin", "none", None])
def test_without_origin_a_post_of_the_console_or_the_user_is_let_through(site: str | None) -> None:
    """``none``: the user's own action (typed, bookmarked); neither header: not a browser page (the CSRF token decides)."""
    assert origin_problem("POST", None, site, PORT) is None


# --- the guard middleware ----------------------------------------------------------------------------


async def _hello(request: Request) -> Response:
    return PlainTextResponse("inside")


async def _post(request: Request) -> Response:
    return PlainTextResponse("acted")


class InProcess:
    """Requests to a guarded app in this process (httpx over ASGI, no socket), as a local program sends them."""

    def __init__(self, app: Guard) -> None:
        self.app = app
        self.cookie = ""
        """The Cookie header sent with every request (none when empty)."""

    def request(self, method: str, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
        async def send() -> httpx.Response:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app),
                                         base_url=f"http://127.0.0.1:{PORT}") as client:
                return await client.request(method, path, headers={**({"cookie": self.cookie} if self.cookie else {}),
                                                                   **(headers or {})})

        # A thread of its own: the session's browser (Playwright) may hold this thread's event loop.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, send()).result()

    def get(self, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
        return self.request("GET", path, headers)

    def post(self, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
        return self.request("POST", path, headers)


@pytest.fixture
def guarded() -> tuple[InProcess, RunSecret]:
    secret = RunSecret()
    app = Starlette(routes=[Route("/", _hello), Route("/page", _hello), Route("/act", _post, methods=["POST"])])
    return InProcess(Guard(app, secret, PORT)), secret


def _assert_secured(response: httpx.Response) -> None:
    headers = response.headers
    assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    for name, value in SECURITY_HEADERS:
        assert headers.get_list(name.decode()) == [value.decode()], name


def test_the_policy_allows_only_the_console_itself() -> None:
    directives = dict(d.split(" ", 1) for d in CONTENT_SECURITY_POLICY.split("; "))
    assert directives == {"default-src": "'none'", "script-src": "'self'", "style-src": "'self'",
                          "img-src": "'self'", "connect-src": "'self'", "form-action": "'self'",
                          "frame-ancestors": "'none'", "base-uri": "'none'"}
    assert "unsafe" not in CONTENT_SECURITY_POLICY


@pytest.mark.parametrize("host", ["evil.example", f"evil.example:{PORT}", "127.0.0.1", f"127.0.0.1:{PORT + 1}",
                                  f"localhost:{PORT + 1}", f"[::1]:{PORT}", f"127.0.0.1:{PORT}.evil.example", ""])
def test_another_host_header_is_421_before_anything_else(guarded: tuple[InProcess, RunSecret], host: str) -> None:
    client, secret = guarded
    # Even with the right cookie and the right secret: a rebound name never reaches the application.
    client.cookie = f"{COOKIE}={secret.session}"
    for response in (client.get("/page", headers={"host": host}),
                     client.get(f"/?secret={secret.token}", headers={"host": host})):
        assert (response.status_code, response.text) == (421, REFUSED_HOST)
        assert "set-cookie" not in response.headers
        _assert_secured(response)


def test_without_the_cookie_every_request_is_403(guarded: tuple[InProcess, RunSecret]) -> None:
    client, _ = guarded
    for response in (client.get("/"), client.get("/page"), client.post("/act"),
                     client.get("/nowhere"), client.get("/page", headers={"cookie": f"{COOKIE}=\"unterminated"})):
        assert (response.status_code, response.text) == (403, REFUSED_SECRET)
        _assert_secured(response)


def test_a_wrong_cookie_or_secret_is_403(guarded: tuple[InProcess, RunSecret]) -> None:
    client, secret = guarded
    for wrong in (secret.token, secret.csrf, RunSecret().session, ""):
        response = client.get("/page", headers={"cookie": f"{COOKIE}={wrong}"})
        assert (response.status_code, response.text) == (403, REFUSED_SECRET)
    for wrong in (RunSecret().token, secret.token[:-1], secret.session):
        response = client.get(f"/page?secret={wrong}")
        assert (response.status_code, response.text) == (403, REFUSED_SECRET)
        assert "set-cookie" not in response.headers
        _assert_secured(response)


def test_the_right_secret_is_exchanged_for_a_strict_httponly_cookie(guarded: tuple[InProcess, RunSecret]) -> None:
    client, secret = guarded
    response = client.get(f"/page?secret={secret.token}")
    assert response.status_code == 303
    assert response.headers["location"] == f"{secret.base}/status"  # the secret leaves the address bar
    assert secret.token not in response.headers["location"]
    _assert_secured(response)
    cookie = response.headers["set-cookie"]
    parts = [p.strip() for p in cookie.split(";")]
    assert parts[0] == f"{COOKIE}={secret.session}"  # a derivation, never the token itself
    assert secret.token not in cookie
    # The cookie's Path is the prefix: the browser sends it to no other server of this host at a path it knows.
    assert {"HttpOnly", "SameSite=Strict", f"Path={secret.base}/"} <= set(parts)
    # With the cookie (as a browser sends it back) the application answers, with the headers.
    client.cookie = parts[0]
    inside = client.get(f"{secret.base}/page")
    assert (inside.status_code, inside.text) == (200, "inside")
    # The cookie without the prefix opens nothing: a leaked cookie alone is no session.
    assert client.get("/page").status_code == 403
    _assert_secured(inside)


def test_the_cookie_is_named_for_the_port_so_two_consoles_keep_their_own(guarded: tuple[InProcess, RunSecret]) -> None:
    client, secret = guarded
    other = Guard(Starlette(routes=[Route("/page", _hello)]), secret, PORT + 1)
    assert other.cookie == f"{COOKIE_PREFIX}{PORT + 1}" != COOKIE
    # Even the right session value under another console's name is no session here.
    response = client.get("/page", headers={"cookie": f"{other.cookie}={secret.session}"})
    assert (response.status_code, response.text) == (403, REFUSED_SECRET)


def test_with_the_cookie_a_post_needs_the_consoles_own_origin(guarded: tuple[InProcess, RunSecret]) -> None:
    client, secret = guarded
    client.cookie = f"{COOKIE}={secret.session}"
    act, page = f"{secret.base}/act", f"{secret.base}/page"
    assert client.post(act, headers={"origin": f"http://127.0.0.1:{PORT}"}).text == "acted"
    assert client.post(act, headers={"sec-fetch-site": "same-origin"}).text == "acted"
    for headers in ({"origin": "http://evil.example"}, {"origin": "null"}, {"sec-fetch-site": "cross-site"},
                    {"origin": f"http://127.0.0.1:{PORT + 1}", "sec-fetch-site": "same-site"}):
        refused = client.post(act, headers=headers)
        assert (refused.status_code, refused.text) == (403, REFUSED_ORIGIN), headers
        _assert_secured(refused)
    # A read from another origin is answered (a browser does not let that origin read it).
    assert client.get(page, headers={"origin": "http://evil.example"}).text == "inside"


# --- review: the task -------------------------------------------------------------------------------

FUNCTION_UUID = str(uuid.uuid4())


def _task(*, status: TaskStatus = TaskStatus.DATA_ASSIGNED, tamper_digest: bool = False) -> TaskInfo:
    """A task as GetTask shows it, its manifest made by the platform's own rule."""
    file = FileRecord(str(uuid.uuid4()), "file:///data/a.enc", CryptoInfo("aes-gcm-128", b"k" * 16, b"i" * 12),
                      ("alice",), b"c" * 16)
    record = TaskRecord(
        uuid=str(uuid.uuid4()), creator="carol", function_id=FUNCTION_UUID, function_owner="fo",
        function_arguments='{"threshold":3}', executor="mesapy",
        inputs_ownership={"a": ("alice",), "b": ("bob",)}, outputs_ownership={"result": ("alice", "bob")},
        participants=("alice", "bob", "carol", "fo"), assigned_inputs={"a": file}, status=status,
        function_digest="f" * 64,
    )
    manifest = consent.task_manifest(record)
    digest = consent.task_digest(record)
    return TaskInfo(
        task_id=f"task-{record.uuid}", creator="carol", function_id=f"function-{FUNCTION_UUID}", function_owner="fo",
        function_arguments={"threshold": 3}, inputs_ownership={"a": ("alice",), "b": ("bob",)},
        outputs_ownership={"result": ("alice", "bob")}, participants=record.participants,
        approved_users=(), assigned_inputs={"a": f"input-{file.uuid}"},
        assigned_outputs={}, status=status, result=None, function_digest="f" * 64,
        task_digest="0" * 64 if tamper_digest else digest, task_manifest=manifest,
    )


def _approved(task: TaskInfo, *approvals: TaskApproval) -> TaskInfo:
    return dataclasses.replace(task, approvals=approvals, approved_users=tuple(a.user_id for a in approvals))


def test_review_task_shows_every_slot_party_and_the_recomputed_digest() -> None:
    task = _task()
    task = _approved(task, TaskApproval("alice", "0" * 64, 1, None), TaskApproval("bob", task.task_digest, 2, 99))
    review = review_task(task)
    assert review.digest_matches
    assert review.digest_recomputed == hashlib.sha256(task.task_manifest.encode()).hexdigest() == task.task_digest
    assert json.loads(review.manifest_text) == json.loads(task.task_manifest)
    assert [(s.direction, s.name, s.owners, s.assigned) for s in review.slots] == [
        ("input", "a", ("alice",), task.assigned_inputs["a"]), ("input", "b", ("bob",), ""),
        ("output", "result", ("alice", "bob"), "")]
    slot_a = review.slots[0]
    assert slot_a.manifest_file is not None and slot_a.manifest_file["data_id"] == task.assigned_inputs["a"]
    assert slot_a.manifest_file["cmac"] == (b"c" * 16).hex()
    assert review.slots[1].manifest_file is None
    assert [s.name for s in review.my_slots("bob")] == ["b", "result"]
    parties = {p.user_id: p for p in review.parties}
    assert list(parties) == ["alice", "bob", "carol", "fo"]
    assert parties["carol"].roles == ("creator",)
    assert parties["fo"].roles == ("function owner",)
    assert parties["alice"].roles == ("owns input a", "owns output result")
    # alice's approval covers another digest: it is shown, and shown as no longer counting.
    assert parties["alice"].approval is not None and not parties["alice"].approval_current
    assert parties["bob"].approval_current and parties["carol"].approval is None
    assert review.waiting_for("alice") and not review.waiting_for("bob") and review.waiting_for("carol")


def test_review_task_says_when_the_digest_does_not_match_the_manifest() -> None:
    assert not review_task(_task(tamper_digest=True)).digest_matches
    empty = dataclasses.replace(_task(), task_manifest="", task_digest="")
    review = review_task(empty)
    assert not review.digest_matches and review.manifest_text == "" and review.digest_recomputed == ""
    # The inputs and outputs still come from the task's ownership.
    assert [s.name for s in review.slots] == ["a", "b", "result"]


def test_needs_approval_only_of_a_participant_without_a_current_approval_on_an_open_task() -> None:
    task = _task()
    assert needs_approval(task, "alice")
    assert not needs_approval(task, "mallory")  # not a participant
    current = _approved(task, TaskApproval("alice", task.task_digest, 1, None))
    assert not needs_approval(current, "alice") and needs_approval(current, "bob")
    stale = _approved(task, TaskApproval("alice", "0" * 64, 1, None))
    assert needs_approval(stale, "alice")  # the task changed since alice approved
    for status in (TaskStatus.CREATED, TaskStatus.APPROVED):
        assert needs_approval(dataclasses.replace(task, status=status), "alice")
    for status in (TaskStatus.STAGED, TaskStatus.RUNNING, TaskStatus.FINISHED, TaskStatus.CANCELED, TaskStatus.FAILED):
        assert not needs_approval(dataclasses.replace(task, status=status), "alice")


# --- review: the function ---------------------------------------------------------------------------


def _function(executor_type: str, payload: bytes, name: str = "f", description: str = "what it does",
              owner: str = "fo") -> tuple[FunctionInfo, str]:
    """(the function as GetFunction shows it, the digest the platform pins from its stored record)."""
    arguments = (FunctionArgument("threshold", "3", False), FunctionArgument("label"))
    inputs, outputs = (FunctionInput("a"), FunctionInput("b", optional=True)), (FunctionOutput("result"),)
    stored = FunctionRecord(
        uuid=FUNCTION_UUID, name=name, description="the stored description", public=False,
        executor_type=executor_type, payload=payload,
        arguments=tuple(RecordArgument(a.key, a.default_value, a.allow_overwrite) for a in arguments),
        inputs=tuple(FunctionFile(f.name, optional=f.optional) for f in inputs),
        outputs=tuple(FunctionFile(f.name, optional=f.optional) for f in outputs),
        owner=owner, user_allowlist=("bank",), usage_quota=5,
    )
    info = FunctionInfo(f"function-{FUNCTION_UUID}", name, description, executor_type, owner, payload, False,
                        arguments, inputs, outputs, ("bank",))
    return info, function_rules.function_digest(stored)


def test_review_function_shows_python_source_and_checks_its_digest() -> None:
    source = b"def entrypoint(argv):\n    return 'ok'\n"
    info, pinned = _function("python", source)
    review = review_function(info, pinned)
    assert review.source == source.decode() and not review.source_cut
    assert review.digest_matches and review.shown_digest == pinned
    assert (review.kind, review.payload_size, review.payload_sha256) == ("Python", len(source),
                                                                         hashlib.sha256(source).hexdigest())
    assert not review.code_hidden and review.wasm_imports == () and review.wasm_problem == ""
    # Other code than the task pinned: the page must say the digests differ.
    changed, _ = _function("python", source + b"# exfiltrate\n")
    assert not review_function(changed, pinned).digest_matches
    # The description and the allowlist do not change what runs, so not the digest either.
    redescribed, _ = _function("python", source, description="something else entirely")
    assert review_function(redescribed, pinned).digest_matches


def test_review_function_cuts_a_long_source_and_says_so() -> None:
    source = ("# " + "x" * 98 + "\n") * (MAX_SOURCE_CHARS // 100 + 10)
    info, pinned = _function("python", source.encode())
    review = review_function(info, pinned)
    assert review.source_cut and review.source is not None and len(review.source) == MAX_SOURCE_CHARS
    assert review.digest_matches  # the digest covers the whole payload, not the part shown


def test_a_private_function_shows_no_code_and_no_matching_digest() -> None:
    info, pinned = _function("python", b"")
    review = review_function(info, pinned)
    assert review.code_hidden and review.shown_digest is None and not review.digest_matches
    assert review.source is None


def test_a_builtin_function_has_its_digest_from_its_name() -> None:
    info, pinned = _function("builtin", b"", name="builtin-echo")
    review = review_function(info, pinned)
    assert review.kind == "built-in" and not review.code_hidden and review.digest_matches
    other, _ = _function("builtin", b"", name="builtin-face-detection")
    assert not review_function(other, pinned).digest_matches


def test_review_function_lists_a_real_wasm_modules_imports_and_exports() -> None:
    module = wasmtime.wat2wasm("""(module
      (import "env" "teaclave_open_input" (func (param i32) (result i32)))
      (import "env" "mem" (memory 1))
      (global (export "counter") (mut i32) (i32.const 0))
      (table (export "calls") 1 funcref)
      (func (export "entrypoint") (param i32 i32) (result i32) (i32.const 0)))""")
    info, pinned = _function("wamr", module)
    exact = review_function(info, pinned)
    assert exact.kind == "WebAssembly" and exact.digest_matches and exact.source is None and exact.wasm_problem == ""
    assert exact.wasm_imports == (WasmItem("env", "teaclave_open_input", "func"), WasmItem("env", "mem", "memory"))
    assert exact.wasm_exports == (WasmItem("", "counter", "global"), WasmItem("", "calls", "table"),
                                  WasmItem("", "entrypoint", "func"))
    other = review_function(_function("wamr", module + b"\x00")[0], pinned)
    assert not other.digest_matches  # other bytes than the task pinned


def test_a_payload_that_is_not_wasm_gives_the_reason() -> None:
    info, pinned = _function("wamr", b"\x00asm-not-really")
    review = review_function(info, pinned)
    assert review.wasm_imports == () and review.wasm_exports == ()
    assert review.wasm_problem.startswith("not a WebAssembly module wasmtime can read: ")
    assert review.digest_matches  # the digest still says which bytes the task pinned



# --- review: an owner's own files against what the owner registered ----------------------------------


def _registered(direction: str = "input") -> tuple[KnownFile, FileRecord]:
    key = FileKey.generate("aes-gcm-128")
    record = FileRecord(str(uuid.uuid4()), "https://files.example/alice.enc",
                        CryptoInfo(key.schema, key.key, key.iv), ("alice",), b"\x07" * 16)
    data_id = f"{direction}-{record.uuid}"
    return KnownFile(data_id, record.url, key, "mine", (b"\x07" * 16).hex() if direction == "input" else ""), record


def _slot(direction: str, record: FileRecord) -> DataSlot:
    entry = consent.file_entry(("alice",), record, output=direction == "output")
    return DataSlot(direction, "data", ("alice",), entry["file"]["data_id"], entry["file"])


@pytest.mark.parametrize("direction", ["input", "output"])
def test_an_owners_own_file_matches_what_the_owner_registered(direction: str) -> None:
    known, record = _registered(direction)
    assert registration_problems(_slot(direction, record), known) == []


def test_a_file_bound_with_another_url_key_or_cmac_is_named_for_each_difference() -> None:
    known, record = _registered()
    moved = dataclasses.replace(record, url="https://elsewhere.example/alice.enc")
    assert registration_problems(_slot("input", moved), known) == ["the URL is not the one you registered"]
    other_key = dataclasses.replace(record, crypto_info=CryptoInfo("aes-gcm-128", b"\x01" * 16, known.key.iv))
    assert registration_problems(_slot("input", other_key), known) == ["the key is not the one you registered"]
    other_content = dataclasses.replace(record, cmac=b"\x08" * 16)
    assert registration_problems(_slot("input", other_content), known) == ["the cmac is not the one you registered"]
    # A slot whose manifest binds no file (not assigned) matches nothing.
    empty = DataSlot("input", "data", ("alice",), known.data_id, None)
    assert len(registration_problems(empty, known)) == 4  # data id, URL, key, cmac
