"""ListMyTasks, ListMyFiles and RefuseTask on a real platform, through the SDK and the CLI.

Each test registers users of its own, so what a user lists is exactly what the test did
for it: a data owner sees the tasks naming it and no one else's, its files and no one
else's, every id once across pages; a refusal shows to every participant, blocks
InvokeTask with a sentence saying who refused, enters the refuser's trail, and is taken
back by approving. Records stored before the listings existed are indexed by
management's backfill.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import Platform, fails_with, with_platform_store
from test_consent import ALICE_ROWS, BOB_ROWS, COUNT_ROWS, Parties

from kettle.model import listings
from kettle.model.records import CryptoInfo, FileRecord, TaskRecord, TaskStatus
from kettle.model.trail import TrailEntry
from kettle.rpc.generated import kettle_management_pb2 as kettle_pb
from kettle.sdk import AsyncFrontendClient, FrontendClient, FunctionInput, TaskRefusal
from kettle.sdk.frontend import _Call
from kettle.services.management.service import KettleManagementServicer
from kettle.services.platform_store import PlatformStore

Code = grpc.StatusCode


@dataclass
class World:
    platform: Platform
    files: Path
    made: list[FrontendClient]

    def user(self, short: str, role: str = "DataOwner") -> FrontendClient:
        name = f"{short}-{uuid.uuid4().hex[:8]}"
        self.platform.admin().user_register(name, "pw", role, "bank" if role == "DataOwner" else "")
        client = FrontendClient(self.platform.frontend_address, self.platform.trust(), name,
                                self.platform.auth_client().user_login(name, "pw"))
        self.made.append(client)
        return client

    def parties(self) -> Parties:
        """A function owner and two data owners, as tests/test_consent.py has them."""
        fo, alice, bob = self.user("fo", "FunctionOwner"), self.user("alice"), self.user("bob")
        names = {"fo": str(fo.user_id), "alice": str(alice.user_id), "bob": str(bob.user_id)}
        return Parties(fo, alice, bob, names, self.files)


@pytest.fixture(scope="module")
def world(full_platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    made: list[FrontendClient] = []
    yield World(full_platform, tmp_path_factory.mktemp("listing-files"), made)
    for client in made:
        client.close()




def two_input_task(p: Parties, function_id: str, creator: FrontendClient, a: str, b: str) -> str:
    return creator.create_task(function_id, {}, "mesapy", inputs_ownership={"a": [a], "b": [b]})


def page(client: FrontendClient, rpc: str, after: str, limit: int) -> Any:
    request_type = kettle_pb.ListMyTasksRequest if rpc == "ListMyTasks" else kettle_pb.ListMyFilesRequest
    return client._invoke(_Call(rpc, request_type(after=after, limit=limit), lambda r: r, service="kettle"))


# --- ListMyTasks --------------------------------------------------------------------------------


def test_a_data_owner_lists_exactly_the_tasks_naming_it_newest_first(world: World) -> None:
    p = world.parties()
    carol = world.user("carol")
    alice, bob = p.alice, p.bob
    names = p.names
    function_id = p.function()
    first = two_input_task(p, function_id, alice, names["alice"], names["bob"])
    second = two_input_task(p, function_id, alice, names["alice"], str(carol.user_id))
    third = two_input_task(p, function_id, carol, str(carol.user_id), str(carol.user_id))
    assert alice.list_my_tasks() == [second, first]
    assert bob.list_my_tasks() == [first]
    assert carol.list_my_tasks() == [third, second]
    assert world.user("dave").list_my_tasks() == []
    # The function is public: its owner is no participant (and a FunctionOwner may not read tasks).
    fails_with(p.fo.list_my_tasks, Code.PERMISSION_DENIED, "permission denied")


def test_a_private_functions_owner_is_a_participant_and_lists_the_task(world: World) -> None:
    """An admin's private function (an admin may list tasks; a FunctionOwner may not), and a
    public one that turns private with new code: the task follows it, and its owner, now a
    participant, finds the task in its listing."""
    p = world.parties()
    admin = world.user("admin", "PlatformAdmin")
    admin_id = str(admin.user_id)
    declared = {"payload": COUNT_ROWS.encode(), "inputs": [FunctionInput("a"), FunctionInput("b")]}
    private = admin.register_function(f"private-{uuid.uuid4().hex[:6]}", "", "python", public=False,
                                      user_allowlist=["bank"], **declared)
    task_id = two_input_task(p, private, p.alice, p.names["alice"], p.names["bob"])
    assert admin_id in p.alice.get_task(task_id).participants
    public = admin.register_function(f"public-{uuid.uuid4().hex[:6]}", "", "python", **declared)
    follower = two_input_task(p, public, p.alice, p.names["alice"], p.names["bob"])
    assert admin.list_my_tasks() == [task_id]
    admin.update_function(public, admin.get_function(public).name, executor_type="python", public=False,
                          user_allowlist=["bank"], payload=(COUNT_ROWS + "# v2\n").encode(),
                          inputs=declared["inputs"])
    assert admin_id in p.alice.get_task(follower).participants
    assert admin.list_my_tasks() == [follower, task_id]
    assert p.alice.list_my_tasks() == [follower, task_id]


def test_task_pages_list_each_id_once_and_a_bad_cursor_is_refused(world: World) -> None:
    p = world.parties()
    function_id = p.function()
    created = [two_input_task(p, function_id, p.alice, p.names["alice"], p.names["bob"]) for _ in range(5)]
    seen: list[str] = []
    after = ""
    for _ in range(10):
        answer = page(p.bob, "ListMyTasks", after, 2)
        assert len(answer.task_ids) <= 2
        seen.extend(answer.task_ids)
        if not answer.more:
            break
        after = answer.next
    assert seen == list(reversed(created))
    fails_with(lambda: page(p.bob, "ListMyTasks", "not-a-cursor", 2), Code.INVALID_ARGUMENT, "invalid cursor")


# --- ListMyFiles ----------------------------------------------------------------------------------


def test_a_data_owner_lists_its_files_in_registration_order_and_no_one_elses(world: World) -> None:
    p = world.parties()
    alice, bob = p.alice, p.bob
    mine = p.input(alice, ALICE_ROWS)
    out = alice.register_output_file("https://files.example/out.enc", "aes-gcm-128", bytes(16), bytes(12))
    fused = alice.register_fusion_output([p.names["alice"], p.names["bob"]])
    theirs = p.input(bob, BOB_ROWS)
    moved = alice.update_input_file(mine, "https://files.example/elsewhere.enc")
    moved_out = alice.update_output_file(out, "https://files.example/out2.enc")
    assert alice.list_my_files() == [mine, out, fused, moved, moved_out]
    assert bob.list_my_files() == [fused, theirs]  # a jointly owned output: every owner lists it
    assert world.user("carol").list_my_files() == []
    fails_with(p.fo.list_my_files, Code.PERMISSION_DENIED, "permission denied")


def test_file_pages_list_each_id_once(world: World) -> None:
    owner = world.user("pager")
    registered = [owner.register_output_file(f"https://files.example/{n}.enc", "aes-gcm-128", bytes(16), bytes(12))
                  for n in range(5)]
    seen: list[str] = []
    answer = page(owner, "ListMyFiles", "", 3)
    seen.extend(answer.data_ids)
    assert answer.more and len(answer.data_ids) == 3
    answer = page(owner, "ListMyFiles", answer.next, 3)
    seen.extend(answer.data_ids)
    assert not answer.more
    assert seen == registered
    fails_with(lambda: page(owner, "ListMyFiles", f"{0:020d}-{uuid.uuid4()}", 3), Code.INVALID_ARGUMENT, "invalid cursor")


# --- RefuseTask ----------------------------------------------------------------------------------


def test_a_refusal_shows_to_everyone_blocks_invoke_and_is_taken_back_by_approving(world: World) -> None:
    p = world.parties()
    alice, bob = p.alice, p.bob
    function_id = p.function()
    task_id = p.task(function_id)
    alice.approve_task(task_id)
    bob.approve_task(task_id)
    digest = alice.get_task(task_id).task_digest
    bob.refuse_task(task_id, "the bank has not signed off")
    for client in (alice, bob):
        info = client.get_task(task_id)
        (refusal,) = info.refusals
        assert isinstance(refusal, TaskRefusal)
        assert (refusal.user_id, refusal.task_digest, refusal.reason) == (
            p.names["bob"], digest, "the bank has not signed off")
        assert info.approved_users == (p.names["alice"],) and info.status == TaskStatus.DATA_ASSIGNED
        assert info.to_json()["refusals"] == [refusal.to_json()]
    fails_with(lambda: alice.invoke_task(task_id), Code.FAILED_PRECONDITION, f"{p.names['bob']} refused it at ",
          "the bank has not signed off")
    assert p.uses(function_id) == 0
    # A new refusal replaces the old one.
    bob.task(task_id).refuse()  # the Task object refuses too
    (refusal,) = alice.get_task(task_id).refusals
    assert refusal.reason == ""
    # The refuser's trail holds each refusal, with the digest refused and the reason.
    events = [TrailEntry.from_bytes(e).event for e in bob.my_trail().entries]
    refusals = [(e.task_id, e.task_digest, e.outcome) for e in events if e.kind.value == "refusal"]
    assert refusals == [(task_id, digest, "the bank has not signed off"), (task_id, digest, "")]
    assert bob.verify_my_trail().ok
    # Approving takes the refusal back: the task runs.
    bob.approve_task(task_id)
    assert alice.get_task(task_id).refusals == ()
    alice.invoke_task(task_id)
    fails_with(lambda: bob.refuse_task(task_id), Code.FAILED_PRECONDITION, "can be refused only before it is invoked")
    assert alice.get_task_result(task_id, timeout=120) == b"rows: 3"


def test_only_participants_refuse_and_bad_requests_change_nothing(world: World) -> None:
    p = world.parties()
    task_id = p.task(p.function())
    outsider = world.user("mallory")
    fails_with(lambda: outsider.refuse_task(task_id, "no"), Code.PERMISSION_DENIED, "permission denied")
    fails_with(lambda: p.fo.refuse_task(task_id), Code.PERMISSION_DENIED, "permission denied")
    for bad in ("task-not-a-uuid", f"function-{uuid.uuid4()}", "", f"task-{uuid.uuid4()}"):
        fails_with(lambda bad=bad: p.bob.refuse_task(bad), Code.INVALID_ARGUMENT, "invalid task id")
    fails_with(lambda: p.bob.refuse_task(task_id, "x" * 257), Code.INVALID_ARGUMENT, "at most 256")
    fails_with(lambda: p.bob.refuse_task(task_id, "line\nbreak"), Code.INVALID_ARGUMENT, "printable")
    assert p.alice.get_task(task_id).refusals == ()


def test_the_async_client_has_the_same_calls(world: World) -> None:
    p = world.parties()
    task_id = p.task(p.function())
    platform = world.platform

    async def run() -> tuple[list[str], list[str], tuple[TaskRefusal, ...]]:
        token = platform.auth_client().user_login(p.names["bob"], "pw")
        client = await AsyncFrontendClient.connect(platform.frontend_address, platform.trust(),
                                                   user_id=p.names["bob"], token=token)
        async with client:
            await client.refuse_task(task_id, "async says no")
            return await client.list_my_tasks(), await client.list_my_files(), (await client.get_task(task_id)).refusals

    tasks, files, refusals = asyncio.run(run())
    assert tasks == [task_id]
    assert files == [p.bob.get_task(task_id).assigned_inputs["b"]]
    assert [r.reason for r in refusals] == ["async says no"]


# --- records stored before the listings ------------------------------------------------------------


def test_records_stored_before_the_listings_are_indexed_once(world: World) -> None:
    """Management's backfill, run as management on the platform's storage: a task and a file
    written without index entries (as before the listings) get them, dated 0; a second run
    (the marker is there) writes nothing; records that had entries get no second one."""
    p = world.parties()
    indexed_task = p.task(p.function())  # created with its entries
    legacy_bare, file_bare = str(uuid.uuid4()), str(uuid.uuid4())
    legacy = TaskRecord(
        uuid=legacy_bare, creator=p.names["alice"], function_id=str(uuid.uuid4()), function_owner=p.names["fo"],
        function_arguments="{}", executor="mesapy", inputs_ownership={"a": (p.names["alice"],), "b": (p.names["bob"],)},
        outputs_ownership={}, participants=(p.names["alice"], p.names["bob"]), status=TaskStatus.CREATED)
    legacy_file = FileRecord(file_bare, "https://files.example/old.enc", CryptoInfo("aes-gcm-128", bytes(16), bytes(12)),
                             (p.names["bob"],))

    async def work(store: PlatformStore) -> tuple[int, int]:
        await store.put(f"task-{legacy_bare}".encode(), legacy.to_bytes())
        await store.put(f"output-{file_bare}".encode(), legacy_file.to_bytes())
        await store.delete(listings.BACKFILL_DONE_KEY)
        servicer = KettleManagementServicer(store)
        return await servicer.backfill_indexes(), await servicer.backfill_indexes()

    first, second = with_platform_store(world.platform.config, "management", work)
    assert first >= 3 and second == 0  # alice's and bob's task entries, bob's file entry (and others' old records)
    assert p.alice.list_my_tasks() == [indexed_task, f"task-{legacy_bare}"]  # dated 0: the oldest
    assert p.bob.list_my_tasks() == [indexed_task, f"task-{legacy_bare}"]
    assert p.bob.list_my_files()[0] == f"output-{file_bare}"
    assert p.bob.list_my_files().count(f"output-{file_bare}") == 1


# --- the CLI -----------------------------------------------------------------------------------------


def test_the_cli_lists_tasks_and_files_and_refuses(world: World) -> None:
    p = world.parties()
    task_id = p.task(p.function())
    bob = p.names["bob"]

    def kettle(*args: str) -> Any:
        result = world.platform.kettle(*args, env={"KETTLE_PASSWORD": "pw"})
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    kettle("user", "login", bob)
    listed = json.loads(kettle("task", "list", "--json"))["tasks"]
    assert [(t["task_id"], t["status"], t["function_id"]) for t in listed] == [
        (task_id, "DataAssigned", p.alice.get_task(task_id).function_id)]
    function_id = p.alice.get_task(task_id).function_id
    assert kettle("task", "list").splitlines() == [f"{task_id}  DataAssigned  {function_id}"]
    assert kettle("task", "refuse", task_id, "--reason", "not this quarter").strip() == f"refused {task_id}"
    (refusal,) = p.alice.get_task(task_id).refusals
    assert (refusal.user_id, refusal.reason) == (bob, "not this quarter")
    assert json.loads(kettle("task", "list", "--json"))["tasks"][0]["refused_by"] == [bob]
    assert kettle("task", "list").splitlines() == [f"{task_id}  DataAssigned  {function_id}  refused by {bob}"]
    shown = kettle("task", "get", task_id)
    assert "refused by" in shown and "not this quarter" in shown
    files = [p.bob.get_task(task_id).assigned_inputs["b"]]
    assert kettle("data", "list").split() == files
    assert json.loads(kettle("data", "list", "--json")) == {"data_ids": files}
    bad = world.platform.kettle("task", "refuse", task_id, "--reason", "x" * 300, env={"KETTLE_PASSWORD": "pw"})
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1].startswith("error: the reason is 300")
