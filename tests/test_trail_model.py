"""The trail's pure rules (kettle.model.trail): encodings, the chain, events from tasks, verification."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace

import pytest

from kettle.model import consent, trail
from kettle.model.records import (
    Approval,
    CryptoInfo,
    FileRecord,
    TaskOutputs,
    TaskRecord,
    TaskResult,
    TaskStatus,
)
from kettle.model.trail import (
    EventKind,
    SignedHead,
    TrailEntry,
    TrailError,
    TrailEvent,
    TrailHead,
)

PARTY = "alice-the-owner"


def event(n: int, party: str = PARTY) -> TrailEvent:
    return TrailEvent(f"event-{n}", EventKind.APPROVAL, party, f"task-{uuid.UUID(int=n)}", 1_700_000_000_000 + n,
                      task_digest="ab" * 32)


def chain(count: int, party: str = PARTY) -> tuple[list[bytes], bytes]:
    """``count`` entries of ``party`` and the head after them (as management writes them)."""
    raws: list[bytes] = []
    head: TrailHead | None = None
    for n in range(1, count + 1):
        entry = trail.next_entry(head, event(n, party))
        raw = entry.to_bytes()
        head = trail.head_after(raw, entry, 1_700_000_000_000 + n)
        raws.append(raw)
    assert head is not None
    return raws, head.to_bytes()


def failed(checks: list[trail.Check]) -> dict[str, str]:
    return {c.name: c.reason for c in checks if not c.ok}


def test_an_intact_chain_passes_every_check_with_a_reason() -> None:
    raws, head = chain(4)
    checks = trail.verify_chain(PARTY, raws, head)
    assert [c.name for c in checks] == ["entries", "sequence", "links", "head"]
    assert all(c.ok and c.reason for c in checks)
    entries = [TrailEntry.from_bytes(r) for r in raws]
    assert [e.sequence for e in entries] == [1, 2, 3, 4]
    assert entries[0].previous == trail.GENESIS
    assert entries[3].previous == trail.digest(raws[2])
    assert TrailHead.from_bytes(head).hash == trail.digest(raws[3])


def test_an_empty_trail_without_a_head_verifies_but_entries_without_one_do_not() -> None:
    assert not failed(trail.verify_chain(PARTY, [], b""))
    raws, _ = chain(2)
    assert failed(trail.verify_chain(PARTY, raws, b"")) == {"head": "2 entries but no signed head"}


def test_a_deleted_middle_entry_is_detected() -> None:
    raws, head = chain(4)
    problems = failed(trail.verify_chain(PARTY, raws[:1] + raws[2:], head))
    assert problems["sequence"] == "entry 2 is missing"
    assert "entry 3 does not follow" in problems["links"]
    assert "names entry 4, the trail has 3" in problems["head"]


def test_a_deleted_last_entry_is_detected_by_the_head() -> None:
    raws, head = chain(3)
    assert set(failed(trail.verify_chain(PARTY, raws[:-1], head))) == {"head"}


def test_reordered_entries_are_detected() -> None:
    raws, head = chain(4)
    problems = failed(trail.verify_chain(PARTY, [raws[0], raws[2], raws[1], raws[3]], head))
    assert problems["sequence"] == "entries are out of order (position 2 holds entry 3)"
    assert "links" in problems


def test_an_altered_entry_breaks_the_link_after_it_and_an_altered_last_entry_the_head() -> None:
    raws, head = chain(3)
    for position in (1, 2):
        doc = json.loads(raws[position - 1])
        doc["files_read"] = ["input-00000000-0000-0000-0000-000000000001"]
        altered = list(raws)
        altered[position - 1] = trail.canonical(doc)
        problems = failed(trail.verify_chain(PARTY, altered, head))
        assert problems.keys() == {"links"}, problems
        assert f"entry {position + 1} does not follow" in problems["links"]
    doc = json.loads(raws[2])
    doc["outcome"] = "Finished"
    problems = failed(trail.verify_chain(PARTY, raws[:2] + [trail.canonical(doc)], head))
    assert problems == {"head": "the signed head's hash does not match entry 3: it was altered"}


def test_an_entry_of_another_party_or_in_another_spelling_is_refused() -> None:
    raws, head = chain(2)
    other, _ = chain(2, party="bob")
    problems = failed(trail.verify_chain(PARTY, [raws[0], other[1]], head))
    assert "belongs to 'bob'" in problems["entries"]
    spaced = json.dumps(json.loads(raws[1]), indent=1).encode()
    problems = failed(trail.verify_chain(PARTY, [raws[0], spaced], head))
    assert "not in canonical form" in problems["entries"]
    assert failed(trail.verify_chain("bob", other, head))["head"] == f"the head belongs to {PARTY!r}, not 'bob'"


def test_records_decode_strictly() -> None:
    raws, head = chain(1)
    signed = SignedHead(head, b"envelope")
    assert SignedHead.from_bytes(signed.to_bytes()) == signed
    assert TrailEntry.from_bytes(raws[0]).event == event(1)
    doc = json.loads(raws[0])
    for change in ({"sequence": 0}, {"previous": "x" * 64}, {"kind": "deletion"}, {"time_ms": -1},
                   {"format": 2}, {"receipt": "not base64!"}, {"files_read": "input-1"}):
        with pytest.raises(TrailError):
            TrailEntry.from_bytes(trail.canonical({**doc, **change}))
    with pytest.raises(TrailError):
        TrailEntry.from_bytes(trail.canonical({k: v for k, v in doc.items() if k != "party"}))
    with pytest.raises(TrailError, match="not a format-1 trail head"):
        TrailHead.from_bytes(trail.canonical({**json.loads(head), "purpose": "receipt"}))


def test_keys_keep_each_party_to_its_own_prefix() -> None:
    # "a" must not list "a-b"'s records: user ids may hold "-", the hex tag never does.
    assert not trail.entry_key("a-b", 1).startswith(trail.entry_prefix("a"))
    assert not trail.pending_key("a-b", "e").startswith(trail.pending_prefix("a"))
    assert trail.pending_key("a", "e").startswith(trail.pending_prefix())
    for party in ("alice", "a-b", "ünï cödé"):
        assert trail.parse_pending_key(trail.pending_key(party, "ended-x-1")) == (party, "ended-x-1")
    assert trail.entry_key(PARTY, 2) < trail.entry_key(PARTY, 10)  # storage lists keys in order


def file(owner: str, cmac: bytes | None = None) -> FileRecord:
    return FileRecord(str(uuid.uuid4()), "https://files.example/f", CryptoInfo("teaclave-file-128", b"k" * 16),
                      (owner,), cmac)


def ended_task(status: TaskStatus, attempts: int = 1) -> TaskRecord:
    alice_in, bob_in, shared_out = file("alice"), file("bob"), file("carol")
    shared_out = replace(shared_out, owner=("alice", "carol"))
    outputs = TaskOutputs(b"ok", {"out": b"t" * 16}) if status == TaskStatus.FINISHED else None
    return TaskRecord(
        uuid=str(uuid.uuid4()), creator="alice", function_id=str(uuid.uuid4()), function_owner="fo",
        function_arguments="{}", executor="builtin",
        inputs_ownership={"a": ("alice",), "b": ("bob",)}, outputs_ownership={"out": ("alice", "carol")},
        participants=("alice", "bob", "carol"),
        approvals=tuple(Approval(p, "cd" * 32, 1_700_000_000) for p in ("alice", "bob", "carol")),
        assigned_inputs={"a": alice_in, "b": bob_in}, assigned_outputs={"out": shared_out},
        status=status, result=TaskResult(outputs=outputs, failure=None if outputs else "boom", receipt=b"receipt"),
        attempts=attempts,
    )


def test_a_finished_task_gives_each_party_the_files_of_its_own_it_read_and_wrote() -> None:
    task = ended_task(TaskStatus.FINISHED)
    events = {e.party: e for e in trail.task_ended_events(task, 5)}
    assert sorted(events) == ["alice", "bob", "carol"]
    a_in, b_in, out = (f"input-{task.assigned_inputs['a'].uuid}", f"input-{task.assigned_inputs['b'].uuid}",
                       f"output-{task.assigned_outputs['out'].uuid}")
    assert (events["alice"].files_read, events["alice"].files_written) == ((a_in,), (out,))
    assert (events["bob"].files_read, events["bob"].files_written) == ((b_in,), ())
    assert (events["carol"].files_read, events["carol"].files_written) == ((), (out,))
    for e in events.values():
        assert (e.kind, e.outcome, e.task_id, e.receipt, e.event_id, e.task_digest) == (
            EventKind.TASK_ENDED, "Finished", f"task-{task.uuid}", b"receipt", f"ended-{task.uuid}",
            consent.task_digest(task))


def test_a_failed_task_wrote_nothing_and_a_task_that_never_ran_is_in_no_trail() -> None:
    failed_events = trail.task_ended_events(ended_task(TaskStatus.FAILED), 5)
    assert {e.outcome for e in failed_events} == {"Failed"}
    assert all(e.files_written == () for e in failed_events)
    assert trail.task_ended_events(ended_task(TaskStatus.CANCELED, attempts=0), 5) == []
    assert trail.task_ended_events(ended_task(TaskStatus.RUNNING), 5) == []


def test_pending_writes_carry_the_events_and_the_signal() -> None:
    events = trail.task_ended_events(ended_task(TaskStatus.FINISHED), 5)
    writes = dict(trail.pending_writes(events, b"signal"))
    assert writes.pop(trail.TRAIL_SIGNAL_KEY) == b"signal"
    assert {TrailEvent.from_bytes(v) for v in writes.values() if v is not None} == set(events)
    assert trail.pending_writes([], b"signal") == []


def test_a_canceled_runs_late_receipt_follows_the_end_to_the_same_parties() -> None:
    canceled = replace(ended_task(TaskStatus.CANCELED), result=TaskResult(failure="canceled"))
    ended = trail.task_ended_events(canceled, 5)
    assert {e.party for e in ended} == {"alice", "bob", "carol"} and all(e.receipt == b"" for e in ended)
    assert trail.late_receipt_events(canceled, 6) == []
    with_receipt = replace(canceled, result=replace(canceled.result, receipt=b"late receipt"))
    late = trail.late_receipt_events(with_receipt, 6)
    assert [(e.party, e.kind, e.outcome, e.receipt) for e in late] == [
        (p, EventKind.RECEIPT, "Canceled", b"late receipt") for p in ("alice", "bob", "carol")]
    assert [e.files_read for e in late] == [e.files_read for e in ended]
    assert {e.event_id for e in late} == {f"receipt-{canceled.uuid}"}  # distinct from the end's event
    assert trail.late_receipt_events(ended_task(TaskStatus.FINISHED), 6) == []
