"""Consent that holds, on a real platform through the SDK (issue "Consent that holds", items 1–2).

Two data owners, alice and bob, each give an encrypted input to a Python function a
function owner registered; alice creates the task. The attacks are the ones a
script against a running platform would try: swap the code after the owners
approved, approve something other than what was reviewed, invoke on an approval
that was withdrawn or has expired. Each ends refused with FAILED_PRECONDITION and
a sentence saying why, and nothing runs (the function's use counter stays put).
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import Platform

from kettle.errors import KettleError
from kettle.model.records import TaskStatus
from kettle.sdk import FrontendClient, FunctionInput
from kettle.sdk.files import FileKey, encrypt_file

FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION

COUNT_ROWS = (
    "def entrypoint(argv):\n"
    "    rows = teaclave_open('a', 'rb').read().count(b'\\n') + teaclave_open('b', 'rb').read().count(b'\\n')\n"
    "    return 'rows: %d' % rows\n"
)
LAPSED = "lapsed because the function changed since the task was created, after the approval was given"
LEAK_ROWS = (
    "def entrypoint(argv):\n"
    "    return (teaclave_open('a', 'rb').read() + teaclave_open('b', 'rb').read()).decode()\n"
)
ALICE_ROWS = b"alice-client-1\nalice-client-2\n"
BOB_ROWS = b"bob-client-1\n"


@dataclass
class Parties:
    fo: FrontendClient
    alice: FrontendClient
    bob: FrontendClient
    names: dict[str, str]
    files: Path

    def function(self, code: str = COUNT_ROWS) -> str:
        return self.fo.register_function(f"count-rows-{uuid.uuid4().hex[:6]}", "", "python", payload=code.encode(),
                                         inputs=[FunctionInput("a"), FunctionInput("b")])

    def swap(self, function_id: str, code: str) -> None:
        """The function owner replaces the code (same declaration)."""
        info = self.fo.get_function(function_id)
        self.fo.update_function(function_id, info.name, executor_type="python", payload=code.encode(),
                                inputs=[FunctionInput("a"), FunctionInput("b")])

    def input(self, owner: FrontendClient, rows: bytes) -> str:
        key = FileKey.generate("aes-gcm-128")
        plain, sealed = self.files / f"{uuid.uuid4().hex}.txt", self.files / f"{uuid.uuid4().hex}.enc"
        plain.write_bytes(rows)
        cmac = encrypt_file(plain, sealed, key)
        url = "data:text/plain;base64," + base64.b64encode(sealed.read_bytes()).decode()
        return owner.register_input_file(url, key.schema, key.key, key.iv, cmac)

    def task(self, function_id: str) -> str:
        """alice's task on alice's input a and bob's input b, data assigned, nobody approved yet."""
        task_id = self.alice.create_task(function_id, {}, "mesapy", inputs_ownership={
            "a": [self.names["alice"]], "b": [self.names["bob"]]})
        self.alice.assign_data(task_id, inputs={"a": self.input(self.alice, ALICE_ROWS)})
        self.bob.assign_data(task_id, inputs={"b": self.input(self.bob, BOB_ROWS)})
        return task_id

    def uses(self, function_id: str) -> int:
        return self.fo.get_function_usage_stats(function_id).current_usage


@pytest.fixture(scope="module")
def parties(full_platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Parties]:
    suffix = uuid.uuid4().hex[:8]
    names = {short: f"{short}-{suffix}" for short in ("fo", "alice", "bob")}
    auth = full_platform.admin()
    auth.user_register(names["fo"], "pw", "FunctionOwner", "")
    for short in ("alice", "bob"):
        auth.user_register(names[short], "pw", "DataOwner", "bank")
    clients = {
        short: FrontendClient(full_platform.frontend_address, full_platform.trust(), name,
                              full_platform.auth_client().user_login(name, "pw"))
        for short, name in names.items()
    }
    yield Parties(**clients, names=names, files=tmp_path_factory.mktemp("consent-files"))
    for client in clients.values():
        client.close()


def refused(action: Callable[[], Any], *phrases: str) -> str:
    with pytest.raises(KettleError) as info:
        action()
    assert info.value.code == FAILED_PRECONDITION, info.value.message
    for phrase in phrases:
        assert phrase in info.value.message, info.value.message
    return info.value.message


def test_the_swap_attack_is_refused_and_nothing_runs(parties: Parties) -> None:
    alice, bob = parties.alice, parties.bob
    function_id = parties.function()
    task_id = parties.task(function_id)
    alice.approve_task(task_id)
    bob.approve_task(task_id)
    assert alice.get_task(task_id).status == TaskStatus.APPROVED
    parties.swap(function_id, LEAK_ROWS)
    refused(lambda: alice.invoke_task(task_id), f"{parties.names['alice']}'s approval {LAPSED}",
            f"{parties.names['bob']}'s approval {LAPSED}")
    task = alice.get_task(task_id)
    assert (task.status, task.approved_users, task.result) == (TaskStatus.DATA_ASSIGNED, (), None)
    assert parties.uses(function_id) == 0  # nothing was staged, nothing ran


def test_an_update_before_any_approval_is_fine(parties: Parties) -> None:
    alice, bob = parties.alice, parties.bob
    function_id = parties.function(LEAK_ROWS)
    task_id = parties.task(function_id)
    pinned = alice.get_task(task_id).function_digest
    parties.swap(function_id, COUNT_ROWS)
    task = alice.get_task(task_id)
    assert task.function_digest != pinned  # the task follows the function while nobody approved
    assert hashlib.sha256(task.task_manifest.encode()).hexdigest() == task.task_digest
    alice.approve_task(task_id, expect_digest=task.task_digest)
    bob.approve_task(task_id, expect_digest=task.task_digest)
    alice.invoke_task(task_id)
    assert alice.get_task_result(task_id, timeout=120) == b"rows: 3"


def test_an_update_after_one_approval_voids_it(parties: Parties) -> None:
    alice, bob = parties.alice, parties.bob
    function_id = parties.function()
    task_id = parties.task(function_id)
    alice.approve_task(task_id)
    before = alice.get_task(task_id)
    parties.swap(function_id, LEAK_ROWS)
    after = alice.get_task(task_id)
    assert (after.approved_users, after.approvals, after.status) == ((), (), TaskStatus.DATA_ASSIGNED)
    assert after.task_digest != before.task_digest
    bob.approve_task(task_id)
    refused(lambda: alice.invoke_task(task_id), f"{parties.names['alice']}'s approval {LAPSED}")
    assert parties.uses(function_id) == 0


def test_approving_with_a_wrong_expected_digest_is_refused_and_records_nothing(parties: Parties) -> None:
    bob = parties.bob
    task_id = parties.task(parties.function())
    task = bob.get_task(task_id)
    wrong = "0" * 64
    refused(lambda: bob.approve_task(task_id, expect_digest=wrong),
            f"the task's digest is now {task.task_digest}, not the expected {wrong}", "nothing was approved")
    assert bob.get_task(task_id).approvals == ()
    bob.approve_task(task_id, expect_digest=task.task_digest)
    (approval,) = bob.get_task(task_id).approvals
    assert (approval.user_id, approval.task_digest, approval.expires_at) == (parties.names["bob"], task.task_digest,
                                                                              None)
    assert abs(approval.approved_at - time.time()) < 600


def test_a_revoked_approval_blocks_invoke(parties: Parties) -> None:
    alice, bob = parties.alice, parties.bob
    function_id = parties.function()
    task_id = parties.task(function_id)
    alice.approve_task(task_id)
    bob.approve_task(task_id)
    bob.revoke_approval(task_id)
    assert alice.get_task(task_id).approved_users == (parties.names["alice"],)
    refused(lambda: alice.invoke_task(task_id), f"{parties.names['bob']}'s approval was revoked at ")
    refused(lambda: bob.revoke_approval(task_id), "has no approval of this task to revoke")
    bob.approve_task(task_id)
    alice.invoke_task(task_id)
    refused(lambda: bob.revoke_approval(task_id), "only before the task is invoked")
    assert alice.get_task_result(task_id, timeout=120) == b"rows: 3"


def test_an_expired_approval_blocks_invoke(parties: Parties) -> None:
    alice, bob = parties.alice, parties.bob
    function_id = parties.function()
    task_id = parties.task(function_id)
    alice.approve_task(task_id)
    bob.approve_task(task_id, expires_in=1)
    (_, approval) = sorted(alice.get_task(task_id).approvals, key=lambda a: a.user_id != parties.names["alice"])
    assert approval.expires_at == approval.approved_at + 1
    time.sleep(max(0.0, approval.expires_at + 1 - time.time()))  # whole seconds: past it for sure
    refused(lambda: alice.invoke_task(task_id), f"{parties.names['bob']}'s approval expired at ")
    assert parties.uses(function_id) == 0


def test_an_update_of_an_assigned_file_leaves_the_approved_task_alone(parties: Parties) -> None:
    """UpdateInputFile makes a *new* file record; the task keeps the snapshot its owners approved."""
    alice = parties.alice
    task_id = parties.task(parties.function())
    alice.approve_task(task_id)
    before = alice.get_task(task_id)
    moved = alice.update_input_file(before.assigned_inputs["a"], "https://files.example/elsewhere.enc")
    after = alice.get_task(task_id)
    assert moved != before.assigned_inputs["a"]
    assert (after.task_digest, after.approvals, after.assigned_inputs) == (
        before.task_digest, before.approvals, before.assigned_inputs)


def test_the_cli_shows_what_an_approval_covers_and_approves_only_that(
    parties: Parties, full_platform: Platform
) -> None:
    task_id = parties.task(parties.function())
    alice = parties.names["alice"]

    def kettle(*args: str) -> Any:
        return full_platform.kettle(*args, env={"KETTLE_PASSWORD": "pw"})

    assert kettle("user", "login", alice).returncode == 0
    shown = kettle("task", "show", task_id)
    digest = parties.alice.get_task(task_id).task_digest
    assert shown.returncode == 0, shown.stderr
    assert f"task digest:     {digest}" in shown.stdout and '"digest": "kettle-task-digest-v1"' in shown.stdout
    assert f"kettle task approve {task_id} --expect-digest {digest}" in shown.stdout
    wrong = kettle("task", "approve", task_id, "--expect-digest", "0" * 64)
    assert wrong.returncode == 1
    last_line = wrong.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"error: the task's digest is now {digest}, not the expected")
    assert kettle("task", "approve", task_id, "--expect-digest", digest, "--expires-in", "2h").returncode == 0
    (approval,) = parties.alice.get_task(task_id).approvals
    assert (approval.user_id, approval.expires_at) == (alice, approval.approved_at + 7200)
    assert kettle("task", "revoke", task_id).returncode == 0
    assert parties.alice.get_task(task_id).approvals == ()
    bad = kettle("task", "approve", task_id, "--expires-in", "0")
    assert bad.returncode != 0 and "--expires-in must be a positive duration" in bad.stderr
