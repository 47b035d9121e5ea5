"""The console's defences, against real attackers: a real console process, a real platform, a real browser.

The console runs on 127.0.0.1, where any local user's program and any page open in
the user's browser can reach it. These tests play those attackers: another local
user without the printed URL, a page of another origin (a second local web server,
which is *same-site* with the console: the cookie alone does not stop it), a name
rebound to 127.0.0.1, and a platform that does not verify; and check that no page
loads anything from elsewhere, so the strict Content-Security-Policy holds.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from conftest import Platform, fast_private_key
from console_harness import ConsoleProcess, user_home
from playwright.sync_api import Browser, BrowserContext, Page, Request, expect

from kettle.attestation.enclave_info import SIGNATURE_SUFFIX, EnclaveInfo, Measurement, sign_enclave_info
from kettle.cli import api_target
from kettle.config import load_config
from kettle.console.guard import (
    COOKIE_PREFIX,
    CONTENT_SECURITY_POLICY,
    REFUSED_CSRF,
    REFUSED_HOST,
    REFUSED_ORIGIN,
    REFUSED_SECRET,
    RunSecret,
)
from kettle.credentials import save_credentials
from kettle.sdk import FrontendClient

PASSWORD = "console-security-pw"
TIMEOUT_MS = 20_000
PAGES = ("/status", "/login", "/inbox", "/tasks", "/data", "/trail", "/functions")
"""Every page of the console's navigation (and the login page)."""
STATIC = ("/static/console.css", "/static/console.js")


@dataclass
class Alice:
    """A data owner of the shared platform, her console (logged in through its page) and one task of hers."""

    user_id: str
    platform: Platform
    console: ConsoleProcess
    client: FrontendClient
    task_id: str
    spare_task_id: str
    """Approved through the console's own page (the control: the same action does work from the console)."""

    def at(self, path: str) -> str:
        return self.console.at(path)

    @property
    def cookie_name(self) -> str:
        return f"{COOKIE_PREFIX}{self.console.port}"

    @property
    def session(self) -> str:
        """The cookie's value: what only the browser that opened the printed URL holds."""
        return RunSecret(self.console.secret).session

    @property
    def csrf(self) -> str:
        return RunSecret(self.console.secret).csrf

    def approved(self, task_id: str) -> bool:
        return any(a.user_id == self.user_id for a in self.client.get_task(task_id).approvals)


@pytest.fixture(scope="module")
def alice(full_platform: Platform, tmp_path_factory: pytest.TempPathFactory, browser: Browser) -> Iterator[Alice]:
    user_id = f"alice-{uuid.uuid4().hex[:8]}"
    admin = full_platform.admin()
    owner_id = f"fo-{uuid.uuid4().hex[:8]}"
    admin.user_register(user_id, PASSWORD, "DataOwner", "")
    admin.user_register(owner_id, PASSWORD, "FunctionOwner", "")
    admin.close()
    owner_token = full_platform.auth_client().user_login(owner_id, PASSWORD)
    with FrontendClient(full_platform.frontend_address, full_platform.trust(), owner_id, owner_token) as owner:
        function_id = owner.register_function(f"echo-{uuid.uuid4().hex[:6]}", "", "python", True,
                                              b"def entrypoint(argv):\n    return 'hi'\n")
    token = full_platform.auth_client().user_login(user_id, PASSWORD)
    client = FrontendClient(full_platform.frontend_address, full_platform.trust(), user_id, token)
    task_id = client.create_task(function_id, {}, "mesapy")
    spare_task_id = client.create_task(function_id, {}, "mesapy")
    console = ConsoleProcess(user_home(full_platform.home, tmp_path_factory.mktemp("alice-home")))
    try:
        # Alice logs in through her console's own page, in a real browser.
        context = _context(browser)
        page = context.new_page()
        page.goto(console.url)
        expect(page.locator("#platform-verdict")).to_contain_text("Verified")
        page.goto(console.at("/login"))
        page.get_by_label("User id").fill(user_id)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        expect(page.locator("#current-user")).to_have_text(user_id)
        context.close()
        yield Alice(user_id, full_platform, console, client, task_id, spare_task_id)
    except BaseException:
        print("".join(console.stderr))  # the console's own account of what went wrong
        raise
    finally:
        client.close()
        console.stop()


def _context(browser: Browser) -> BrowserContext:
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    return context


def _opened(browser: Browser, alice: Alice) -> tuple[BrowserContext, Page]:
    """A browser context that opened the URL the console printed (so it holds the cookie)."""
    context = _context(browser)
    page = context.new_page()
    page.goto(alice.console.url)
    return context, page


def _platform_data(alice: Alice) -> tuple[str, ...]:
    """What must never reach someone who is not let in."""
    return alice.user_id, alice.task_id, alice.spare_task_id


# --- 1. another local user, without the run secret ---------------------------------------------------


def test_without_the_run_secret_every_page_and_file_is_403_and_shows_nothing(alice: Alice, browser: Browser) -> None:
    paths = (*PAGES, "/", f"/tasks/{alice.task_id}", f"/tasks/{alice.task_id}/events", "/data/input-x/download",
             *STATIC, "/no-such-page")
    # Even knowing the path prefix (which only the printed URL gives): without the cookie, nothing.
    with httpx.Client(base_url=alice.console.origin + alice.console.base, timeout=30,
                      follow_redirects=False) as local_user:
        for path in paths:
            for cookie in ("", f"{alice.cookie_name}={alice.console.secret}", f"{alice.cookie_name}={RunSecret().session}",
                           f"{COOKIE_PREFIX}{alice.console.port + 1}={alice.session}"):
                response = local_user.get(path, headers={"cookie": cookie})
                assert (response.status_code, response.text) == (403, REFUSED_SECRET), (path, cookie)
                assert "set-cookie" not in response.headers
        for path in ("/logout", "/status/recheck", f"/tasks/{alice.task_id}/approve", "/login", "/tasks"):
            response = local_user.post(path, data={"csrf_token": alice.csrf, "digest": "x"},
                                       headers={"origin": alice.console.origin})
            assert (response.status_code, response.text) == (403, REFUSED_SECRET), path
        for wrong in (RunSecret().token, alice.console.secret[:-1], alice.console.secret.upper(),
                      RunSecret(alice.console.secret).session):
            response = local_user.get(f"/?secret={wrong}")
            assert (response.status_code, response.text) == (403, REFUSED_SECRET)
            assert "set-cookie" not in response.headers

    # A browser that never saw the URL (a fresh profile) is refused the same way.
    context = _context(browser)
    page = context.new_page()
    try:
        for path in (*paths, f"/?secret={RunSecret().token}", f"/status?secret={alice.console.secret[:-1]}x"):
            response = page.goto(alice.at(path))
            assert response is not None and response.status == 403, path
            body = page.content()
            assert REFUSED_SECRET in body
            assert not any(secret in body for secret in _platform_data(alice)), path
        assert context.cookies() == []
    finally:
        context.close()
    assert not alice.approved(alice.task_id)


def test_the_printed_url_lets_the_browser_in_and_leaves_only_a_strict_httponly_cookie(
        alice: Alice, browser: Browser) -> None:
    context, page = _opened(browser, alice)
    try:
        # The secret is exchanged for the cookie and taken out of the address bar.
        assert page.url == alice.at("/status")
        expect(page.locator("#platform-verdict")).to_contain_text("Verified")
        expect(page.locator("#current-user")).to_have_text(alice.user_id)
        (cookie,) = context.cookies()
        assert (cookie["name"], cookie["value"]) == (alice.cookie_name, alice.session)
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == alice.console.base + "/"
        assert cookie["domain"] == "127.0.0.1" and cookie["expires"] == -1  # a session cookie: gone with the browser
        assert alice.console.secret not in cookie["value"]
        # Script on the console's own page cannot read it either.
        assert COOKIE_PREFIX not in page.evaluate("document.cookie")
        page.goto(alice.at("/inbox"))
        expect(page.locator("#inbox")).to_contain_text(alice.task_id)
        assert alice.console.secret not in page.content()
    finally:
        context.close()


# --- 2. another origin, through the user's own browser ------------------------------------------------


class AttackerSite:
    """Another local web server (another port: another origin, but the same *site* as the console)."""

    def __init__(self) -> None:
        self.pages: dict[str, str] = {}
        self.reports: list[str] = []
        self.cookies: list[str] = []
        """Every Cookie header the browser sent this other server."""
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                site.cookies.append(self.headers.get("cookie", ""))
                body = site.pages.get(self.path, "not found").encode()
                self.send_response(200 if self.path in site.pages else 404)
                self.send_header("content-type", "text/html; charset=utf-8")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802
                # The page sends back what its script could learn: nothing, if the console holds.
                site.reports.append(self.rfile.read(int(self.headers["content-length"])).decode())
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def attacker() -> Iterator[AttackerSite]:
    site = AttackerSite()
    yield site
    site.close()


def _auto_post(action: str, fields: dict[str, str]) -> str:
    inputs = "".join(f'<input type="hidden" name="{k}" value="{v}">' for k, v in fields.items())
    return (f'<!doctype html><html><body><form id="f" method="post" action="{action}">{inputs}</form>'
            '<script>document.getElementById("f").submit();</script></body></html>')


def test_a_page_of_another_origin_cannot_act_or_read_through_the_console(
        alice: Alice, browser: Browser, attacker: AttackerSite) -> None:
    digest = alice.client.get_task(alice.task_id).task_digest
    console = alice.console.origin + alice.console.base
    # The attacker is given even the CSRF token (as if it leaked): the origin check must still hold.
    attacks = {
        "/logout": _auto_post(f"{console}/logout", {"csrf_token": alice.csrf}),
        "/logout-no-token": _auto_post(f"{console}/logout", {}),
        "/approve": _auto_post(f"{console}/tasks/{alice.task_id}/approve", {"csrf_token": alice.csrf, "digest": digest}),
        "/approve-no-token": _auto_post(f"{console}/tasks/{alice.task_id}/approve", {"digest": digest}),
    }
    attacker.pages.update(attacks)
    reads = ["/inbox", f"/tasks/{alice.task_id}", "/status", "/static/console.js"]
    attacker.pages["/read"] = """<!doctype html><html><body><p id="done"></p><script>
const console_ = %s, reads = %s, token = %s;
(async () => {
  const learned = {};
  for (const path of reads) {
    try {
      const response = await fetch(console_ + path, {credentials: "include"});
      learned[path] = "read " + response.status + " " + (await response.text());
    } catch (e) { learned[path] = "blocked " + e.name; }
  }
  for (const mode of ["cors", "no-cors"]) {
    try {
      const response = await fetch(console_ + "/logout", {method: "POST", mode, credentials: "include",
                                                           body: new URLSearchParams({csrf_token: token})});
      learned["POST /logout " + mode] = "sent " + response.type + " " + response.status;
    } catch (e) { learned["POST /logout " + mode] = "blocked " + e.name; }
  }
  await fetch("/report", {method: "POST", body: JSON.stringify(learned)});
  document.getElementById("done").textContent = "done";
})();
</script></body></html>""" % (json.dumps(console), json.dumps(reads), json.dumps(alice.csrf))

    context, page = _opened(browser, alice)  # the user's own browser, holding the console's cookie
    try:
        attack_page = context.new_page()
        for path in attacks:
            with attack_page.expect_response(lambda r: r.url.startswith(console + "/")) as answered:
                attack_page.goto(attacker.origin + path)
            response = answered.value
            # The form reached the console with the cookie (127.0.0.1 on another port is the same *site*,
            # so SameSite=Strict sends it) and with its own origin, and the origin check refused it.
            assert response.request.method == "POST"
            assert response.request.header_value("origin") == attacker.origin
            assert response.status == 403, path
            expect(attack_page.locator("body")).to_have_text(REFUSED_ORIGIN)
        posted: list[Request] = []
        attack_page.on("request", lambda r: posted.append(r) if r.method == "POST" and r.url == console + "/logout"
                       else None)
        attack_page.goto(attacker.origin + "/read")
        expect(attack_page.locator("#done")).to_have_text("done")
        # Both posts were sent (a form-encoded body needs no preflight); below, neither did anything.
        assert len(posted) == 2

        # The script learned nothing: every read is blocked, no answer was readable.
        (report,) = attacker.reports
        learned = json.loads(report)
        # (An opaque answer is not even handed over: Cross-Origin-Resource-Policy blocks it.)
        assert learned == {**{p: "blocked TypeError" for p in reads},
                           "POST /logout cors": "blocked TypeError", "POST /logout no-cors": "blocked TypeError"}
        assert not any(secret in answer for answer in learned.values() for secret in _platform_data(alice))

        # Nothing happened: Alice is still logged in, and the task is not approved on the platform.
        page.goto(alice.at("/inbox"))
        expect(page.locator("#current-user")).to_have_text(alice.user_id)
        expect(page.locator("#inbox")).to_contain_text(alice.task_id)
        assert not alice.approved(alice.task_id)

        # The control: the same approval from the console's own page works.
        page.goto(alice.at(f"/tasks/{alice.spare_task_id}"))
        page.locator("#approve").click()
        expect(page.locator(".notice")).to_contain_text("Approved")
        assert alice.approved(alice.spare_task_id)
    finally:
        context.close()


def test_a_post_needs_the_cookie_the_consoles_origin_and_the_csrf_token(alice: Alice) -> None:
    digest = alice.client.get_task(alice.task_id).task_digest
    own = {"origin": alice.console.origin}
    approve = f"/tasks/{alice.task_id}/approve"
    with httpx.Client(base_url=alice.console.origin + alice.console.base, cookies={alice.cookie_name: alice.session},
                      timeout=30,
                      follow_redirects=False) as client:
        for headers in ({"origin": "http://evil.example"}, {"origin": "null"},
                        {"origin": f"http://localhost:{alice.console.port + 1}"},
                        {"origin": f"https://127.0.0.1:{alice.console.port}"}, {"sec-fetch-site": "cross-site"},
                        {"sec-fetch-site": "same-site"}):
            for path, fields in ((approve, {"csrf_token": alice.csrf, "digest": digest}),
                                 ("/logout", {"csrf_token": alice.csrf})):
                refused = client.post(path, data=fields, headers=headers)
                assert (refused.status_code, refused.text) == (403, REFUSED_ORIGIN), (path, headers)
        for fields in ({"digest": digest}, {"csrf_token": "", "digest": digest},
                       {"csrf_token": RunSecret().csrf, "digest": digest},
                       {"csrf_token": RunSecret(alice.console.secret).session, "digest": digest},
                       {"csrf_token": alice.console.secret, "digest": digest}):
            for path in (approve, "/logout", "/status/recheck"):
                refused = client.post(path, data=fields, headers=own)
                assert (refused.status_code, refused.text) == (403, REFUSED_CSRF), (path, fields)
        # A token passed in the query or a cookie is not the form's.
        refused = client.post(f"/logout?csrf_token={alice.csrf}", data={},
                              headers={**own, "cookie": f"{alice.cookie_name}={alice.session}; csrf_token={alice.csrf}"})
        assert (refused.status_code, refused.text) == (403, REFUSED_CSRF)
        assert not alice.approved(alice.task_id)
        assert client.get("/inbox").status_code == 200  # still logged in

        # DNS rebinding: a name made to resolve to 127.0.0.1 is refused, with the cookie and every token.
        for host in ("evil.example", f"evil.example:{alice.console.port}", f"127.0.0.1.nip.io:{alice.console.port}",
                     f"127.0.0.1:{alice.console.port + 1}", f"[::1]:{alice.console.port}", "127.0.0.1", "localhost"):
            for response in (client.get("/inbox", headers={"host": host}),
                             client.post("/logout", data={"csrf_token": alice.csrf},
                                         headers={"host": host, "origin": f"http://{host}"})):
                assert (response.status_code, response.text) == (421, REFUSED_HOST), host
                assert alice.user_id not in response.text
        # The control: cookie, own origin and token together are let through (at either allowed name).
        for origin, host in ((alice.console.origin, f"127.0.0.1:{alice.console.port}"),
                             (f"http://localhost:{alice.console.port}", f"localhost:{alice.console.port}")):
            done = client.post("/status/recheck", data={"csrf_token": alice.csrf},
                               headers={"origin": origin, "host": host})
            assert (done.status_code, done.headers["location"]) == (303, f"{alice.console.base}/status")


# --- 3. the page loads only itself ------------------------------------------------------------------


class _Markup(HTMLParser):
    """What of served HTML the policy would block (so the page must not need it), and any outside reference."""

    def __init__(self) -> None:
        super().__init__()
        self.inline: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        if tag == "script" and "src" not in names:
            self.inline.append("<script> without src")
        if tag == "style":
            self.inline.append("<style>")
        self.inline += [f"{tag} {name}=" for name in names if name == "style" or name.startswith("on")]
        for name in ("src", "href", "action", "formaction"):
            value = names.get(name) or ""
            if re.match(r"^([a-z][a-z0-9+.-]*:)?//", value, re.IGNORECASE) or value.lower().startswith("javascript:"):
                self.external.append(f"{tag} {name}={value}")


def test_every_page_loads_only_from_the_console_and_needs_no_inline_script_or_style(
        alice: Alice, browser: Browser) -> None:
    context = _context(browser)
    page = context.new_page()
    requested: list[str] = []
    violations: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.on("console", lambda message: violations.append(message.text)
            if "Content Security Policy" in message.text or "Refused to" in message.text else None)
    try:
        page.goto(alice.console.url)
        missing = "/tasks/task-00000000-0000-4000-8000-000000000000"  # the message page
        for path in (*PAGES, f"/tasks/{alice.task_id}", missing):
            response = page.goto(alice.at(path))
            assert response is not None and response.status == (404 if path == missing else 200), path
            assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
            assert response.headers["x-frame-options"] == "DENY"
            assert response.headers["x-content-type-options"] == "nosniff"
            if path == f"/tasks/{alice.task_id}":
                page.wait_for_timeout(500)  # its live status stream stays open: the network never idles
            else:
                page.wait_for_load_state("networkidle")
            html = response.text()
            markup = _Markup()
            markup.feed(html)
            assert (markup.inline, markup.external) == ([], []), path
            base = alice.console.base
            assert f'<script src="{base}/static/console.js"' in html
            assert f'<link rel="stylesheet" href="{base}/static/console.css">' in html
            # The stylesheet applied (it was allowed and loaded): the banner is styled by it, not inline.
            expect(page.locator("#simulation-banner")).to_be_visible()
        for path in STATIC:
            response = page.goto(alice.at(path))
            assert response is not None and response.status == 200
            assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    finally:
        context.close()
    assert requested, "nothing was recorded"
    outside = [url for url in requested if not url.startswith(alice.console.origin + "/")]
    assert outside == []
    assert any(url.endswith("/static/console.css") for url in requested)
    assert any(url.endswith("/static/console.js") for url in requested)
    assert any("/events" in url for url in requested)  # the live status, from the console too
    assert violations == []


# --- 4. a platform that does not verify -----------------------------------------------------------


def _unsafe_simulation_refused(platform: Platform, home: Path) -> str:
    """The user's configuration does not accept a simulation (the platform runs in one)."""
    text = (platform.home / "kettle.toml").read_text()
    assert "unsafe_allow_simulation = true" in text
    user_home(platform.home, home, text.replace("unsafe_allow_simulation = true", "unsafe_allow_simulation = false"))
    return (f"authentication at {api_target(platform.config, 'authentication')}: tee: simulation evidence is not "
            "accepted (not a TEE)")


def _frontend_measurement_changed(platform: Platform, home: Path) -> str:
    """The user's enclave info names another frontend, signed by every auditor (so the signatures are valid)."""
    user_home(platform.home, home)
    trust = home / "trust"
    info = EnclaveInfo.parse((trust / "enclave_info.toml").read_bytes())
    services = dict(info.services)
    services["frontend"] = Measurement(bytes(32 * [0xAB]), services["frontend"].mr_signer)
    data = EnclaveInfo(services).render()
    (trust / "enclave_info.toml").write_bytes(data)
    keys = sorted((platform.home / "auditors").glob("*.key.pem"))
    assert keys
    for key_path in keys:
        name = key_path.name.removesuffix(".key.pem")
        (trust / f"{name}{SIGNATURE_SUFFIX}").write_bytes(sign_enclave_info(data, fast_private_key(key_path)))
    running = info.services["frontend"].mr_enclave  # what the platform's frontend really runs
    return (f"frontend at {api_target(platform.config, 'frontend')}: measurement: measurement {running.hex()} "
            "does not match enclave info for frontend")


@pytest.mark.parametrize("make_home", [_unsafe_simulation_refused, _frontend_measurement_changed],
                         ids=["simulation-not-allowed", "wrong-measurement"])
def test_an_unverified_platform_shows_only_the_failed_verdict(
        alice: Alice, browser: Browser, tmp_path: Path, make_home: object) -> None:
    home = tmp_path / "home"
    expected_reason = make_home(alice.platform, home)  # type: ignore[operator]
    # Alice's valid login is in this home: the console must still show nothing of hers, nor use it.
    token = alice.platform.auth_client().user_login(alice.user_id, PASSWORD)
    save_credentials(load_config(home), alice.user_id, token)
    saved = (home / "credentials.json").read_bytes()
    with ConsoleProcess(home) as console:
        context = _context(browser)
        page = context.new_page()
        try:
            page.goto(console.url)
            response = page.goto(console.at("/status"))
            assert response is not None and response.status == 503
            expect(page.locator("#platform-verdict")).to_contain_text("NOT verified")
            expect(page.locator("#platform-verdict")).to_contain_text(expected_reason)
            expect(page.locator("#attestation-failed")).to_contain_text(expected_reason)
            expect(page.locator("#simulation-banner")).to_have_count(0)
            for path in ("/inbox", "/tasks", f"/tasks/{alice.task_id}", f"/tasks/{alice.task_id}/events", "/data",
                         "/trail", "/functions", "/login", "/login?expired=1"):
                response = page.goto(console.at(path))
                assert response is not None and response.status == 503, path
                expect(page.locator("#attestation-failed")).to_be_visible()
                expect(page.locator("#attestation-failed")).to_contain_text("The platform did not verify")
                html = page.content()
                assert not any(secret in html for secret in _platform_data(alice)), path
                # No login form: no password is ever typed into a page of an unverified platform.
                expect(page.locator("input[type=password]")).to_have_count(0)
                expect(page.locator("#current-user")).to_have_count(0)
                expect(page.get_by_role("link", name="Inbox")).to_have_count(0)
        finally:
            context.close()
        # Nor does a posted login or action reach the platform: refused with the verdict, the saved login untouched.
        session = {f"{COOKIE_PREFIX}{console.port}": RunSecret(console.secret).session}
        with httpx.Client(base_url=console.origin + console.base, cookies=session, headers={"origin": console.origin},
                          timeout=30,
                          follow_redirects=False) as client:
            csrf = RunSecret(console.secret).csrf
            for path, fields in (("/login", {"user_id": alice.user_id, "password": PASSWORD}),
                                 (f"/tasks/{alice.task_id}/approve", {"digest": "x"}), ("/logout", {}),
                                 ("/tasks", {"function_id": "function-x"})):
                refused = client.post(path, data={"csrf_token": csrf, **fields})
                assert refused.status_code == 503, path
                assert 'id="attestation-failed"' in refused.text
                assert not any(secret in refused.text for secret in _platform_data(alice)), path
    assert (home / "credentials.json").read_bytes() == saved
    assert not alice.approved(alice.task_id)


# --- 5. the simulation banner --------------------------------------------------------------------------


def test_every_page_of_a_verified_simulation_platform_shows_the_banner(alice: Alice, browser: Browser) -> None:
    context, page = _opened(browser, alice)
    try:
        for path in (*PAGES, "/", f"/tasks/{alice.task_id}"):
            page.goto(alice.at(path))
            banner = page.locator("#simulation-banner")
            expect(banner).to_be_visible()
            expect(banner).to_contain_text("SIMULATION mode")
            expect(page.locator("#attestation-failed")).to_have_count(0)
        page.goto(alice.at("/status"))
        expect(page.locator("#platform-verdict")).to_contain_text("in SIMULATION")
    finally:
        context.close()




def test_another_local_server_the_browser_visits_never_receives_the_consoles_cookie(
        alice: Alice, browser: Browser, attacker: AttackerSite) -> None:
    """Another local user's web server on 127.0.0.1 (another port), visited once by the console's browser.

    Cookies are scoped to a host, not to a port (RFC 6265 §8.5), and another port is the same site,
    so SameSite=Strict does not stop it: with ``Path=/`` the browser would send the console's cookie
    to that server, and with it a program could read every page. The cookie's Path is the secret
    prefix, so the browser sends it to no path of another server that it could know; and even a
    cookie replayed without the prefix opens nothing (the guard's unit tests)."""
    attacker.pages["/"] = '<!doctype html><html><body><img src="/pixel" alt=""></body></html>'
    attacker.pages["/pixel"] = ""
    context, page = _opened(browser, alice)
    try:
        page.goto(attacker.origin + "/")
        page.wait_for_load_state("networkidle")
    finally:
        context.close()
    assert attacker.cookies, "the other server was not visited"
    assert not any(alice.session in cookie for cookie in attacker.cookies)
