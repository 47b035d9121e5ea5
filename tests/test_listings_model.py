"""Refusals and the parties' listings as pure rules (``docs/tasks.md`` "Refusing a task",
"Listing your tasks and files"): who may refuse and when, what a refusal does to the task
and to InvokeTask, its encoding; the index keys and their pages."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace

import grpc
import pytest
from conftest import fails_with
from test_consent_model import (
    ALICE,
    BOB,
    NOW,
    TASK_UUID,
    USAGE,
    approved,
    duo,
    function,
)

from kettle.errors import KettleError
from kettle.model import listings as L
from kettle.model import tasks as T
from kettle.model import trail as TR
from kettle.model.consent import task_digest
from kettle.model.functions import Caller
from kettle.model.records import Refusal, TaskRecord, TaskStatus
from kettle.model.users import Role

FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT
MALLORY = Caller("mallory", Role.parse("DataOwner-bank"))


# --- refusals ---------------------------------------------------------------------------------


def test_a_refusal_records_who_when_which_digest_and_why() -> None:
    task = duo()
    after = T.refuse_task(task, BOB, NOW, "not with this function")
    assert after.refusals == (Refusal("bob", NOW, task_digest(task), "not with this function"),)
    assert after.status == task.status and after.approvals == ()


def test_refusing_withdraws_the_refusers_approval_only() -> None:
    task = approved(duo())
    assert task.status == TaskStatus.APPROVED
    after = T.refuse_task(task, BOB, NOW + 5)
    assert after.approved_users == ("alice",)
    assert after.status == TaskStatus.DATA_ASSIGNED  # it cannot run: back to waiting for approvals


def test_a_new_refusal_replaces_the_old_one_and_each_user_has_one() -> None:
    task = T.refuse_task(duo(), BOB, NOW, "first")
    task = T.refuse_task(task, ALICE, NOW + 1, "mine")
    task = T.refuse_task(task, BOB, NOW + 2, "second")
    assert [(r.user_id, r.refused_at, r.reason) for r in task.refusals] == [
        ("alice", NOW + 1, "mine"), ("bob", NOW + 2, "second")]


def test_approving_later_removes_the_callers_refusal() -> None:
    task = T.refuse_task(T.refuse_task(duo(), BOB, NOW, "no"), ALICE, NOW, "")
    task = T.approve_task(task, BOB, function(), now=NOW + 10)
    assert [r.user_id for r in task.refusals] == ["alice"]
    assert task.approved_users == ("bob",)


def test_a_standing_refusal_blocks_invoke_and_names_who_refused() -> None:
    task = T.refuse_task(approved(duo()), BOB, NOW, "the bank says no")
    task = T.approve_task(task, ALICE, function(), now=NOW)
    message = fails_with(lambda: T.invoke_task(task, ALICE, function(), USAGE, NOW), FAILED_PRECONDITION,
                      "bob refused it at ", "(the bank says no)")
    assert "refused" in message
    # Even once every approval is back but the refusal stands (a forged record, say): still refused.
    forged = replace(approved(duo()), refusals=task.refusals)
    fails_with(lambda: T.stage_task(forged, NOW), FAILED_PRECONDITION, "bob refused it")
    # Approving takes the refusal back: the task runs.
    again = T.approve_task(task, BOB, function(), now=NOW + 1)
    assert T.invoke_task(again, ALICE, function(), USAGE, NOW + 1).status == TaskStatus.STAGED


def test_a_single_participant_refusing_its_own_task_blocks_it_too() -> None:
    definition = T.TaskDefinition('{"limit": 3}', "mesapy", (("a", ("alice",)), ("b", ("alice",))), ())
    task = T.create_task(function(), ALICE, definition, TASK_UUID)
    task = T.refuse_task(task, ALICE, NOW)
    fails_with(lambda: T.stage_task(task, NOW), FAILED_PRECONDITION, "alice refused it at ")


def test_only_a_participant_may_refuse() -> None:
    fails_with(lambda: T.refuse_task(duo(), MALLORY, NOW), PERMISSION_DENIED, "permission denied")
    # A non-participant learns nothing about the task's state either.
    fails_with(lambda: T.refuse_task(replace(duo(), status=TaskStatus.RUNNING), MALLORY, NOW), PERMISSION_DENIED)


@pytest.mark.parametrize("status", [TaskStatus.STAGED, TaskStatus.RUNNING, TaskStatus.FINISHED,
                                    TaskStatus.CANCELED, TaskStatus.FAILED])
def test_an_invoked_task_cannot_be_refused(status: TaskStatus) -> None:
    fails_with(lambda: T.refuse_task(replace(duo(), status=status), BOB, NOW), FAILED_PRECONDITION,
            f"the task is {status.name.lower()}: a task can be refused only before it is invoked")


def test_a_created_task_can_be_refused_before_its_data_is_assigned() -> None:
    definition = T.TaskDefinition('{"limit": 3}', "mesapy", (("a", ("alice",)), ("b", ("bob",))), ())
    task = T.create_task(function(), ALICE, definition, TASK_UUID)
    assert T.refuse_task(task, BOB, NOW).status == TaskStatus.CREATED


@pytest.mark.parametrize(("reason", "phrase"), [
    ("x" * 257, "the reason is 257 characters long; at most 256"),
    ("two\nlines", "only printable characters"),
    ("bell\x07", "only printable characters"),
])
def test_a_bad_reason_is_refused_and_changes_nothing(reason: str, phrase: str) -> None:
    fails_with(lambda: T.refuse_task(duo(), BOB, NOW, reason), INVALID_ARGUMENT, phrase)


def test_a_reason_of_256_printable_characters_is_fine() -> None:
    assert T.refuse_task(duo(), BOB, NOW, "é" * 256).refusals[0].reason == "é" * 256


def test_refusals_round_trip_and_a_task_without_them_is_stored_as_before() -> None:
    task = T.refuse_task(duo(), BOB, NOW, "no")
    assert TaskRecord.from_bytes(task.to_bytes()) == task
    plain = duo()
    assert "refusals" not in json.loads(plain.to_bytes())  # byte for byte what it was before refusals
    assert TaskRecord.from_bytes(plain.to_bytes()).refusals == ()
    doc = json.loads(task.to_bytes())
    doc["refusals"][0]["refused_at"] = -1
    with pytest.raises(ValueError, match="malformed refusal"):
        TaskRecord.from_bytes(json.dumps(doc).encode())


def test_a_refusal_is_a_trail_event_with_its_digest_and_reason() -> None:
    task = T.refuse_task(duo(), BOB, NOW, "no")
    event = TR.approval_event(task, "bob", TR.EventKind.REFUSAL, NOW * 1000, "n1", task.refusals[0].task_digest, "no")
    assert TR.TrailEvent.from_bytes(event.to_bytes()) == event
    assert (event.kind.value, event.outcome, event.task_digest) == ("refusal", "no", task_digest(task))


# --- index keys and pages --------------------------------------------------------------------------


def test_index_keys_are_the_documented_ones() -> None:
    bare = str(uuid.UUID(int=7))
    assert L.party_task_key("a-b", 1_700_000_000_123, bare) == (
        f"party-task-{b'a-b'.hex()}-00000001700000000123-{bare}".encode())
    assert L.party_file_key("bob", 5, f"input-{bare}") == (
        f"party-file-{b'bob'.hex()}-00000000000000000005-input-{bare}".encode())
    assert L.indexed_id(L.party_file_key("bob", 5, f"input-{bare}")) == (b"bob".hex(), f"input-{bare}")
    assert L.indexed_id(L.party_task_key("a-b", 5, bare)) == (b"a-b".hex(), bare)


def test_one_partys_prefix_never_covers_anothers() -> None:
    # "a" and "a-" as raw ids would share a prefix; their hex tags do not.
    key = L.party_task_key("a-1", 1, str(uuid.UUID(int=1)))
    assert not key.startswith(L.party_tasks_prefix("a"))
    assert key.startswith(L.party_tasks_prefix("a-1"))


def test_a_new_task_has_one_entry_per_participant() -> None:
    writes = L.task_index_writes(("bob", "alice", "bob"), 9, TASK_UUID)
    assert [k for k, _ in writes] == [L.party_task_key("alice", 9, TASK_UUID), L.party_task_key("bob", 9, TASK_UUID)]
    assert all(v == b"" for _, v in writes)


def _task_keys(party: str, count: int) -> tuple[list[bytes], list[str]]:
    bares = [str(uuid.UUID(int=i + 1)) for i in range(count)]
    return [L.party_task_key(party, 1000 + i, b) for i, b in enumerate(bares)], [f"task-{b}" for b in bares]


def test_task_pages_are_newest_first_and_list_each_id_once() -> None:
    keys, ids = _task_keys("alice", 7)
    others, _ = _task_keys("bob", 3)
    seen: list[str] = []
    after = ""
    while True:
        page = L.tasks_page("alice", [*others, *reversed(keys)], after, 3)
        seen.extend(page.ids)
        if not page.more:
            break
        after = page.next
    assert seen == list(reversed(ids))


def test_file_pages_are_in_registration_order() -> None:
    data_ids = [f"{kind}-{uuid.UUID(int=i + 1)}" for i, kind in enumerate(("output", "input", "input"))]
    keys = [L.party_file_key("bob", 10 + i, d) for i, d in enumerate(data_ids)]
    first = L.files_page("bob", reversed(keys), "", 2)
    assert (first.ids, first.more) == (tuple(data_ids[:2]), True)
    second = L.files_page("bob", keys, first.next, 2)
    assert (second.ids, second.more, second.next) == ((data_ids[2],), False, f"{13 - 1:020d}-{data_ids[2]}")
    assert L.files_page("bob", keys, second.next, 2) == L.Page((), "", False)


def test_the_page_size_is_capped() -> None:
    keys, _ = _task_keys("alice", L.PAGE_IDS + 2)
    assert len(L.tasks_page("alice", keys, "", 0).ids) == L.PAGE_IDS
    assert len(L.tasks_page("alice", keys, "", 10**6).ids) == L.PAGE_IDS
    assert L.tasks_page("alice", keys, "", 0).more


@pytest.mark.parametrize("cursor", ["x", "1-2", f"{0:020d}-input-{uuid.UUID(int=1)}", "9" * 200,
                                    f"{0:020d}-{uuid.UUID(int=1)}\n"])
def test_a_bad_task_cursor_is_refused(cursor: str) -> None:
    with pytest.raises(KettleError, match="invalid cursor") as info:
        L.tasks_page("alice", [], cursor, 1)
    assert info.value.code == INVALID_ARGUMENT


def test_a_file_cursor_names_a_data_id() -> None:
    with pytest.raises(KettleError, match="invalid cursor"):
        L.files_page("bob", [], f"{0:020d}-{uuid.UUID(int=1)}", 1)
    assert L.files_page("bob", [], f"{0:020d}-output-{uuid.UUID(int=1)}", 1).ids == ()


def test_kettle_audit_mine_shows_a_refusals_reason() -> None:
    import kettle.cli.main  # noqa: F401  (first: the CLI's modules are loaded through it)
    from kettle.cli.trail import _what

    entry = {"kind": "refusal", "task_digest": "d" * 64, "outcome": "not this quarter"}
    assert _what(entry) == f"digest {'d' * 64}; reason: not this quarter"
    assert _what({**entry, "outcome": ""}) == f"digest {'d' * 64}"
    assert _what({**entry, "kind": "approval", "outcome": ""}) == f"digest {'d' * 64}"
