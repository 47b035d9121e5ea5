"""The data owner's console in a real browser against a real platform (every service).

A function owner and two data owners, each with a console of their own (their own
Kettle home, their own login), run a private set intersection entirely through
the console: register the function and the data, create the task, review and
approve it, invoke it and watch it live, read the result, decrypt their outputs,
and find the task with a verified receipt in their trails. A second test changes
the function's code after a data owner loaded the task, and the approval fails
with the explanation instead of approving the new code.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ALL_SERVICES, Platform, make_home
from console_harness import ConsoleProcess, user_home
from playwright.sync_api import Browser, Page, expect

from kettle.sdk import FileKey, FrontendClient, encrypt_file

PASSWORD = "console-secret"
TIMEOUT_MS = 30_000
SCREENSHOTS = os.environ.get("KETTLE_CONSOLE_SCREENSHOTS")
"""A directory: the PSI test also saves the screenshots of docs/console (``docs/console.md``)."""


def _snap(page: Page, name: str) -> None:
    if SCREENSHOTS:
        page.set_viewport_size({"width": 1280, "height": 800})
        page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"), full_page=True)


@dataclass
class World:
    platform: Platform
    files: Path
    tmp: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, _auditor_cache: Path) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("console-e2e")
    files = tmp / "files"
    files.mkdir()
    extra = f'[file_agent]\nallowed_schemes = ["file", "data"]\nfile_roots = ["{files}"]\n'
    platform = Platform(make_home(tmp / "platform", _auditor_cache, extra=extra))
    platform.start(ALL_SERVICES)
    try:
        admin = platform.admin()
        for user_id, role in (("fo", "FunctionOwner"), ("alice", "DataOwner"), ("bob", "DataOwner")):
            admin.user_register(user_id, PASSWORD, role, "")
        admin.close()
        yield World(platform, files, tmp)
    finally:
        platform.stop()


class UserConsole:
    """One user's console process and browser page."""

    def __init__(self, world: World, browser: Browser, user_id: str) -> None:
        self.user_id = user_id
        self.process = ConsoleProcess(user_home(world.platform.home, world.tmp / f"home-{user_id}"))
        self.context = browser.new_context(accept_downloads=True)
        self.context.set_default_timeout(TIMEOUT_MS)
        self.page: Page = self.context.new_page()
        self.page.goto(self.process.url)
        expect(self.page.locator("#platform-verdict")).to_contain_text("Verified")
        self.page.goto(self.at("/login"))
        self.page.get_by_label("User id").fill(user_id)
        self.page.get_by_label("Password").fill(PASSWORD)
        self.page.get_by_role("button", name="Log in").click()
        expect(self.page.locator("#current-user")).to_have_text(user_id)

    def at(self, path: str) -> str:
        return self.process.at(path)

    def close(self) -> None:
        self.context.close()
        self.process.stop()


@pytest.fixture(scope="module")
def consoles(world: World, browser: Browser) -> Iterator[dict[str, UserConsole]]:
    opened: dict[str, UserConsole] = {}
    try:
        for user_id in ("fo", "alice", "bob"):
            opened[user_id] = UserConsole(world, browser, user_id)
        yield opened
    finally:
        for console in opened.values():
            console.close()


def _encrypted_input(world: World, name: str, lines: list[str]) -> tuple[Path, str]:
    """The data owner's own step before the console: encrypt the file where the platform can read it."""
    plain = world.tmp / f"{name}.txt"
    plain.write_text("".join(line + "\n" for line in lines))
    key = FileKey.generate("aes-gcm-128")
    key_file = world.tmp / f"{name}.key.json"
    key.save(key_file, overwrite=True)
    cmac = encrypt_file(plain, world.files / f"{name}.enc", key, overwrite=True)
    return key_file, cmac.hex()


def _register_data(console: UserConsole, world: World, name: str, lines: list[str]) -> None:
    key_file, cmac = _encrypted_input(world, name, lines)
    page = console.page
    page.goto(console.at("/data"))
    form = page.locator("#register-input")
    form.get_by_label("Label").fill(f"{name} input")
    form.get_by_label("URL of the encrypted file").fill(f"file://{world.files}/{name}.enc")
    form.get_by_label("Key file").set_input_files(str(key_file))
    form.get_by_label("Its cmac").fill(cmac)
    form.get_by_role("button", name="Register input").click()
    expect(page.locator(".notice")).to_contain_text("Registered")
    form = page.locator("#register-output")
    form.get_by_label("Label").fill(f"{name} result")
    form.get_by_label("URL the result will be written to").fill(f"file://{world.files}/{name}-result.enc")
    form.get_by_role("button", name="Register output").click()
    expect(page.locator(".notice")).to_contain_text("Registered")
    expect(page.locator("#files")).to_contain_text(f"{name} input")
    expect(page.locator("#files")).to_contain_text(f"{name} result")


def _review_and_assign(console: UserConsole, task_id: str, slot_input: str, slot_output: str, name: str) -> None:
    page = console.page
    page.goto(console.at("/inbox"))
    page.get_by_role("link", name=f"Review {task_id}").click()
    expect(page.locator("#function-facts")).to_contain_text("builtin-ordered-set-intersect")
    expect(page.locator("#function-description")).to_contain_text("sorted lists of hex values")
    expect(page.locator("#function-digest")).not_to_be_empty()
    expect(page.locator("#data-slots")).to_contain_text(slot_input)
    page.get_by_label(f"input {slot_input}").select_option(label=_option(page, f"input {slot_input}", f"{name} input"))
    page.get_by_label(f"output {slot_output}").select_option(label=_option(page, f"output {slot_output}", f"{name} result"))
    page.get_by_role("button", name="Assign").click()
    expect(page.locator(".notice")).to_contain_text("assigned")
    # The console checks what the digest binds of the owner's files against what the owner registered.
    mine = page.locator("#data-slots tr", has_text=slot_input).locator(".binding-check")
    expect(mine).to_have_text("exactly the file you registered here (URL, key, cmac)")


def _option(page: Page, label: str, text: str) -> str:
    """The full label of the option of ``label``'s select that contains ``text``."""
    options = page.get_by_label(label).locator("option").all_inner_texts()
    return next(o for o in options if text in o)


def _approve(console: UserConsole, task_id: str) -> str:
    page = console.page
    page.goto(console.at(f"/tasks/{task_id}"))
    digest = page.locator("#task-digest").inner_text()
    expect(page.locator("#task-digest").locator("xpath=..")).to_contain_text("recomputed here")
    page.locator("#approve").click()
    expect(page.locator(".notice")).to_contain_text("Approved")
    expect(page.locator("#parties")).to_contain_text("approved")
    return digest


def test_three_parties_run_a_private_set_intersection_entirely_through_the_console(
    world: World, consoles: dict[str, UserConsole]
) -> None:
    fo, alice, bob = consoles["fo"], consoles["alice"], consoles["bob"]
    alice.page.goto(alice.at("/status"))
    _snap(alice.page, "platform-status")

    # The function owner registers the built-in.
    page = fo.page
    page.goto(fo.at("/functions"))
    form = page.locator("#register-function")
    form.get_by_label("built-in", exact=True).check()
    form.get_by_label("Built-in (for the built-in kind)").select_option("builtin-ordered-set-intersect")
    form.get_by_role("button", name="Register function").click()
    expect(page.locator(".notice")).to_contain_text("Registered")
    row = page.locator("#functions tr", has_text="builtin-ordered-set-intersect")
    function_id = row.locator("code").inner_text()

    # Each data owner registers an encrypted input and an output.
    _register_data(alice, world, "alice", ["01", "02", "03", "05"])
    _register_data(bob, world, "bob", ["02", "03", "04"])

    # Alice creates the task of the function owner's public function, naming Bob's data too.
    page = alice.page
    page.goto(alice.at("/tasks"))
    form = page.locator("#create-task")
    form.get_by_label("Function id").fill(function_id)
    form.get_by_label("Arguments").fill('{"order": "ascending"}')
    form.get_by_label("Input owners").fill("input_data1=alice\ninput_data2=bob")
    form.get_by_label("Output owners").fill("output_result1=alice\noutput_result2=bob")
    form.get_by_role("button", name="Create task").click()
    expect(page.locator(".notice")).to_contain_text("Task created")
    task_id = page.url.split("/tasks/")[1].split("?")[0]

    # The task waits in each data owner's inbox; each reviews it and gives their data.
    bob.page.goto(bob.at("/inbox"))
    expect(bob.page.locator("#inbox")).to_contain_text(task_id)
    _snap(bob.page, "inbox")
    _review_and_assign(alice, task_id, "input_data1", "output_result1", "alice")
    _review_and_assign(bob, task_id, "input_data2", "output_result2", "bob")
    _snap(bob.page, "task-review")

    # Both approve exactly the digest shown (a public function's owner is no party); then it leaves their inbox.
    digests = {_approve(c, task_id) for c in (alice, bob)}
    assert len(digests) == 1
    alice.page.goto(alice.at("/inbox"))
    expect(alice.page.locator("main")).not_to_contain_text(task_id)

    # Alice invokes it and watches it end without reloading the page.
    page.goto(alice.at(f"/tasks/{task_id}"))
    page.locator("#invoke").click()
    expect(page.locator(".notice")).to_contain_text("invoked")
    page.evaluate("window.stillTheSamePage = true")
    expect(page.locator("#task-status")).to_have_text("Finished", timeout=60_000)
    expect(page.locator("#result")).to_be_visible()
    expect(page.locator("#cancel")).to_have_count(0)  # a task that is over offers no cancel
    assert page.evaluate("window.stillTheSamePage") is True
    expect(page.locator("#receipt-verdict")).to_contain_text("verified")
    expect(page.locator("#output-tags")).to_contain_text("output_result1")
    _snap(page, "task-result")

    # Each data owner decrypts their own result, and finds the task in their verified trail.
    for console, expected in ((alice, "0110"), (bob, "110")):
        p = console.page
        p.goto(console.at("/data"))
        with p.expect_download() as download_info:
            p.locator("#files tr", has_text="result").get_by_role("link", name="Download and decrypt").click()
        assert Path(download_info.value.path()).read_text() == expected
        if console is alice:
            _snap(p, "my-data")
        p.goto(console.at("/trail"))
        expect(p.locator("#trail-verdict")).to_contain_text("Verified")
        expect(p.locator("#trail")).to_contain_text(task_id)
        ended = p.locator("#trail tr", has_text=task_id).filter(has_text="task-ended")
        expect(ended.locator(".receipt-check")).to_have_text("verified")
        if console is alice:
            _snap(p, "my-trail")
        p.goto(console.at(f"/tasks/{task_id}"))
        expect(p.locator("#receipt-verdict")).to_contain_text("verified")


def test_a_digest_change_after_the_page_loaded_makes_approve_fail_with_the_reason(
    world: World, consoles: dict[str, UserConsole]
) -> None:
    alice = consoles["alice"]
    token = world.platform.auth_client().user_login("fo", PASSWORD)
    with FrontendClient(world.platform.frontend_address, world.platform.trust(), "fo", token) as client:
        function_id = client.register_function(
            "count-lines", "Counts the lines of its input.", "python", True,
            b"def entrypoint(argv):\n    return 'counted'\n", inputs=["data"])
    bob_token = world.platform.auth_client().user_login("bob", PASSWORD)
    with FrontendClient(world.platform.frontend_address, world.platform.trust(), "bob", bob_token) as client:
        task_id = client.create_task(function_id, {}, "mesapy", {"data": ["alice"]})

    key_file, cmac = _encrypted_input(world, "alice-digest", ["01"])
    page = alice.page
    page.goto(alice.at("/data"))
    form = page.locator("#register-input")
    form.get_by_label("Label").fill("digest input")
    form.get_by_label("URL of the encrypted file").fill(f"file://{world.files}/alice-digest.enc")
    form.get_by_label("Key file").set_input_files(str(key_file))
    form.get_by_label("Its cmac").fill(cmac)
    form.get_by_role("button", name="Register input").click()
    page.goto(alice.at(f"/tasks/{task_id}"))
    page.get_by_label("input data").select_option(label=_option(page, "input data", "digest input"))
    page.get_by_role("button", name="Assign").click()
    expect(page.locator("#function-source")).to_contain_text("return 'counted'")
    expect(page.locator("#function-digest").locator("xpath=..")).to_contain_text("matches the code shown here")
    shown = page.locator("#task-digest").inner_text()

    # The code changes after Alice loaded the page.
    with FrontendClient(world.platform.frontend_address, world.platform.trust(), "fo", token) as client:
        client.update_function(function_id, "count-lines", "Counts the lines of its input.", "python", True,
                               b"def entrypoint(argv):\n    return 'exfiltrated'\n", inputs=["data"])
    with FrontendClient(world.platform.frontend_address, world.platform.trust(), "bob", bob_token) as client:
        changed = client.get_task(task_id)
    assert changed.task_digest != shown

    page.locator("#approve").click()
    expect(page.locator("#error")).to_contain_text("Not approved")
    expect(page.locator("#error")).to_contain_text("changed since it was reviewed")
    expect(page.locator("#error")).to_contain_text(shown)
    # The page now shows the task as it is, with the new code and digest; nothing was approved.
    expect(page.locator("#task-digest")).to_have_text(changed.task_digest)
    expect(page.locator("#function-source")).to_contain_text("exfiltrated")
    with FrontendClient(world.platform.frontend_address, world.platform.trust(), "bob", bob_token) as client:
        after = client.get_task(task_id)
    assert all(a.user_id != "alice" for a in after.approvals)

    # Alice refuses the new code, with her reason; the creator sees it, and her inbox is clear of it.
    page.get_by_label("Reason").fill("the code changed after my review")
    page.locator("#refuse").click()
    expect(page.locator(".notice")).to_contain_text("Refused")
    expect(page.locator("#parties")).to_contain_text("refused")
    expect(page.locator("#parties")).to_contain_text("the code changed after my review")
    with FrontendClient(world.platform.frontend_address, world.platform.trust(), "bob", bob_token) as client:
        refused = client.get_task(task_id)
    assert [(r.user_id, r.reason) for r in refused.refusals] == [("alice", "the code changed after my review")]
    page.goto(alice.at("/inbox"))
    expect(page.locator("main")).not_to_contain_text(task_id)


def test_every_field_has_a_label_and_the_pages_work_from_the_keyboard(
    world: World, consoles: dict[str, UserConsole]
) -> None:
    alice = consoles["alice"]
    page = alice.page
    unlabelled = """() => [...document.querySelectorAll("input, select, textarea")]
        .filter(e => e.type !== "hidden" && e.labels.length === 0).map(e => e.name || e.id)"""
    for path in ("/status", "/inbox", "/tasks", "/data", "/trail", "/functions"):
        page.goto(alice.at(path))
        assert page.evaluate(unlabelled) == [], path
        assert page.locator("main h1").count() == 1, path
    # From the keyboard alone: the skip link comes first, then a form is filled and sent with Enter.
    page.goto(alice.at("/tasks"))
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.get_by_label("Function id").focus()
    page.keyboard.type("function-00000000-0000-4000-8000-000000000000")
    page.keyboard.press("Enter")
    expect(page.locator("#error")).to_contain_text("Not created")


@pytest.mark.parametrize(("arguments", "inputs", "reason"), [
    ("not json", "", "the arguments is not JSON"),
    ("[1, 2]", "", "the arguments must be a JSON object"),
    ("{}", "input_data1", "input owners must be NAME=UID[,UID...], not 'input_data1'"),
    ("{}", "a=alice\na=bob", "input owners given twice for a"),
])
def test_a_bad_task_form_is_refused_with_its_reason_and_creates_nothing(
    world: World, consoles: dict[str, UserConsole], arguments: str, inputs: str, reason: str
) -> None:
    alice = consoles["alice"]
    page = alice.page
    page.goto(alice.at("/tasks"))
    before = page.locator("#tasks tr").count()
    form = page.locator("#create-task")
    form.get_by_label("Function id").fill("function-00000000-0000-4000-8000-000000000000")
    form.get_by_label("Arguments").fill(arguments)
    form.get_by_label("Input owners").fill(inputs)
    form.get_by_role("button", name="Create task").click()
    expect(page.locator("#error")).to_contain_text(f"Not created: {reason}")
    assert page.locator("#tasks tr").count() == before


def test_a_login_the_platform_ended_sends_the_user_to_log_in_again(
    world: World, consoles: dict[str, UserConsole]
) -> None:
    """The module's last test: it ends Bob's login."""
    bob = consoles["bob"]
    page = bob.page
    page.goto(bob.at("/inbox"))
    expect(page.locator("#current-user")).to_have_text("bob")
    # A password reset ends every token issued before it, the console's too.
    admin = world.platform.admin()
    try:
        admin.reset_user_password("bob")
    finally:
        admin.close()
    page.goto(bob.at("/inbox"))
    expect(page.locator("#error")).to_contain_text("Your login has expired or was ended")
    expect(page.get_by_label("Password")).to_be_visible()
