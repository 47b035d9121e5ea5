"""Each data owner's trail on a real platform: what it lists, what verification catches, restarts.

Two data owners (alice, bob) and a third party (carol) run private set
intersections: one on alice's data only, one on alice's and bob's (created and
invoked by carol), one on carol's own. Each party's trail lists exactly the
approvals it gave and the tasks given its files; removing, reordering or
altering a stored entry, or a head not signed by management, fails
``kettle audit verify-trail`` with the reason; the trail survives a restart of
every service and goes on from where it was.

The tampering is done as an attacker on the platform would: through the storage
service, with another platform service's attested identity (the scheduler's).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from conftest import ALL_SERVICES, Platform, make_home, with_platform_store

from kettle.attestation.signed import sign as attested_sign
from kettle.model import trail as rules
from kettle.model.trail import SignedHead
from kettle.sdk import FrontendClient, FunctionArgument, Trail, verify_receipt
from kettle.sdk.files import FileKey, encrypt_file
from kettle.services.platform_store import PlatformStore
from kettle.services.runtime import ServiceRuntime

T = TypeVar("T")
PARTIES = ("alice", "bob", "carol")


@dataclass
class World:
    platform: Platform
    owners_dir: Path
    clients: dict[str, FrontendClient] = field(default_factory=dict)
    publisher: FrontendClient | None = None
    tasks: dict[str, str] = field(default_factory=dict)
    files: dict[str, list[str]] = field(default_factory=dict)
    """The files each party registered for the tasks, by task label: (inputs, outputs) ids."""
    digests: dict[str, str] = field(default_factory=dict)
    """Each task's digest, as GetTask reports it, by task label."""
    receipts: dict[str, bytes] = field(default_factory=dict)
    """Each task's receipt, as its result carries it, by task id."""

    def connect(self) -> None:
        for client in (*self.clients.values(), *([self.publisher] if self.publisher else [])):
            client.close()
        auth = self.platform.auth_client()
        trust = self.platform.trust()
        address = self.platform.frontend_address
        self.publisher = FrontendClient(address, trust, "publisher", auth.user_login("publisher", "secret"))
        self.clients = {p: FrontendClient(address, trust, p, auth.user_login(p, "secret")) for p in PARTIES}

    def scheduler_storage(self, work: Callable[[PlatformStore], Awaitable[T]]) -> T:
        """Run ``work`` against the storage service with the scheduler's attested identity."""

        return with_platform_store(self.platform.config, "scheduler", work)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, _auditor_cache: Path) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("trail")
    owners_dir = tmp / "owners"
    owners_dir.mkdir()
    extra = "\n".join(["[file_agent]", 'allowed_schemes = ["file"]', f'file_roots = ["{owners_dir}"]'])
    platform = Platform(make_home(tmp / "home", _auditor_cache, extra=extra))
    platform.start(ALL_SERVICES)
    admin = platform.admin()
    admin.user_register("publisher", "secret", "FunctionOwner", "")
    for party in PARTIES:
        admin.user_register(party, "secret", "DataOwner", "")
        (owners_dir / party).mkdir()
    world = World(platform, owners_dir)
    world.connect()
    try:
        yield world
    finally:
        for client in (*world.clients.values(), world.publisher):
            if client is not None:
                client.close()
        platform.stop()


def psi_input(world: World, party: str, name: str, items: list[str]) -> str:
    folder = world.owners_dir / party
    plain = folder / f"{name}.txt"
    plain.write_text("".join(d + "\n" for d in sorted(hashlib.sha256(i.encode()).hexdigest() for i in items)))
    key = FileKey.generate("teaclave-file-128")
    cmac = encrypt_file(plain, folder / f"{name}.enc", key)
    return world.clients[party].register_input_file((folder / f"{name}.enc").as_uri(), key.schema, key.key,
                                                    key.iv, cmac)


def psi_output(world: World, party: str, name: str) -> str:
    key = FileKey.generate("aes-gcm-128")
    url = (world.owners_dir / party / f"{name}.enc").as_uri()
    return world.clients[party].register_output_file(url, key.schema, key.key, key.iv)


def run_psi(world: World, label: str, creator: str, owners: tuple[str, str], second_thoughts: str = "") -> None:
    """A PSI whose input/output 1 belong to ``owners[0]`` and 2 to ``owners[1]``, created
    and invoked by ``creator``; every participant approves (``second_thoughts`` approves,
    revokes and approves again)."""
    assert world.publisher is not None
    function_id = world.publisher.register_function(
        "builtin-ordered-set-intersect", "psi", "builtin", arguments=[FunctionArgument("order")],
        inputs=["input_data1", "input_data2"], outputs=["output_result1", "output_result2"])
    task_id = world.clients[creator].create_task(
        function_id, {"order": "ascending"}, "builtin",
        inputs_ownership={"input_data1": [owners[0]], "input_data2": [owners[1]]},
        outputs_ownership={"output_result1": [owners[0]], "output_result2": [owners[1]]})
    for n, owner in enumerate(owners, 1):
        data_in = psi_input(world, owner, f"{label}-in{n}", [f"user{i}" for i in range(n * 5, n * 5 + 20)])
        data_out = psi_output(world, owner, f"{label}-out{n}")
        world.clients[owner].assign_data(task_id, inputs={f"input_data{n}": data_in},
                                         outputs={f"output_result{n}": data_out})
        world.files.setdefault(f"{label}/{owner}", []).extend([data_in, data_out])
    world.digests[label] = world.clients[creator].get_task(task_id).task_digest
    if second_thoughts:
        world.clients[second_thoughts].approve_task(task_id)
        world.clients[second_thoughts].revoke_approval(task_id)
    for party in sorted({creator, *owners}):
        world.clients[party].approve_task(task_id, expect_digest=world.digests[label])
    world.clients[creator].invoke_task(task_id)
    info = world.clients[creator].wait_task(task_id, timeout=120)
    info.outputs_or_raise()
    assert info.receipt
    world.tasks[label] = task_id
    world.receipts[task_id] = info.receipt


@pytest.fixture(scope="module")
def ran(world: World) -> World:
    run_psi(world, "alice-only", "alice", ("alice", "alice"))
    run_psi(world, "alice-bob", "carol", ("alice", "bob"), second_thoughts="bob")
    run_psi(world, "carol-only", "carol", ("carol", "carol"))
    return world


def summary(trail: Trail) -> list[tuple[Any, ...]]:
    """(kind, task, task digest, files read, files written) of each entry, in order."""
    return [(e["kind"], e["task_id"], e["task_digest"], tuple(e["files_read"]), tuple(e["files_written"]))
            for e in trail.described()]


def expected(world: World, party: str) -> list[tuple[Any, ...]]:
    t = world.tasks
    approvals = {"alice": ["alice-only", "alice-bob"], "bob": ["alice-bob"], "carol": ["alice-bob", "carol-only"]}
    ended = {"alice": ["alice-only", "alice-bob"], "bob": ["alice-bob"], "carol": ["carol-only"]}
    rows: list[tuple[Any, ...]] = []
    for label in ("alice-only", "alice-bob", "carol-only"):
        digest = world.digests[label]
        if label == "alice-bob" and party == "bob":  # its second thoughts
            rows += [("approval", t[label], digest, (), ()), ("revocation", t[label], digest, (), ())]
        if label in approvals[party]:
            rows.append(("approval", t[label], digest, (), ()))
        if label in ended[party]:
            files = world.files[f"{label}/{party}"]
            rows.append(("task-ended", t[label], digest, tuple(sorted(files[0::2])), tuple(sorted(files[1::2]))))
    return rows


def test_each_party_lists_exactly_its_approvals_and_the_tasks_given_its_files(ran: World) -> None:
    for party in PARTIES:
        trail = ran.clients[party].my_trail()
        assert trail.party == party
        assert summary(trail) == expected(ran, party), party
        entries = trail.described()
        assert [e["sequence"] for e in entries] == list(range(1, len(entries) + 1))
        ended = [e for e in entries if e["kind"] == "task-ended"]
        assert {e["outcome"] for e in ended} == {"Finished"}
        for e in ended:  # the receipt the result carried, which verifies offline on its own
            receipt = base64.b64decode(e["receipt"])
            assert receipt == ran.receipts[e["task_id"]]
            assert verify_receipt(receipt, ran.platform.trust()).body.task_id == e["task_id"]
        verdict = ran.clients[party].verify_my_trail()
        assert verdict.ok, verdict.reason
        names = [c.name for c in verdict.checks]
        assert names[:4] == ["entries", "sequence", "links", "head"]
        assert "head signature: measurement" in names and "head signature: signature" in names


def login(world: World, party: str) -> None:
    result = world.platform.kettle("user", "login", party, env={"KETTLE_PASSWORD": "secret"})
    assert result.returncode == 0, result.stderr


def tamper(world: World, party: str, change: Callable[[dict[bytes, bytes]], dict[bytes, bytes | None]]) -> None:
    """Rewrite ``party``'s stored entries and head as ``change`` says (None deletes)."""

    async def work(store: PlatformStore) -> None:
        keys = [*await store.keys_with_prefix(rules.entry_prefix(party)), rules.head_key(party)]
        records = {k: v for k in keys if (v := await store.get(k)) is not None}
        for key, value in change(records).items():
            if value is None:
                await store.delete(key)
            else:
                await store.put(key, value)

    world.scheduler_storage(work)


def verify_cli(world: World) -> tuple[int, dict[str, Any]]:
    result = world.platform.kettle("audit", "verify-trail", "--json")
    return result.returncode, json.loads(result.stdout)


def failures(report: dict[str, Any]) -> dict[str, str]:
    return {c["check"]: c["reason"] for c in report["checks"] if not c["ok"]}


def verify_sdk(world: World, party: str) -> tuple[int, dict[str, Any]]:
    """As :func:`verify_cli`, through the SDK (in-process: no CLI start-up per check)."""
    verdict = world.clients[party].verify_my_trail()
    return int(not verdict.ok), verdict.to_json()


def test_removed_reordered_or_altered_entries_and_foreign_heads_fail_verification(ran: World, tmp_path: Path) -> None:
    party = "alice"
    saved = tmp_path / "alice-trail.json"
    login(ran, party)
    listed = ran.platform.kettle("audit", "mine", "--json", "--out", str(saved))
    assert listed.returncode == 0, listed.stderr
    assert [e["task_id"] for e in json.loads(listed.stdout)["entries"]] == [r[1] for r in expected(ran, party)]
    code, report = verify_cli(ran)
    assert code == 0 and report["ok"], report
    offline = ran.platform.kettle("audit", "verify-trail", str(saved))
    assert offline.returncode == 0 and "verified" in offline.stdout, offline.stdout + offline.stderr

    original: dict[bytes, bytes] = {}

    def keep(records: dict[bytes, bytes]) -> dict[bytes, bytes | None]:
        original.update(records)
        return {}

    tamper(ran, party, keep)
    entry = [rules.entry_key(party, n) for n in range(1, 5)]
    head = rules.head_key(party)

    def restore() -> None:
        tamper(ran, party, lambda _: dict(original))
        assert verify_sdk(ran, party)[0] == 0

    tamper(ran, party, lambda _: {entry[1]: None})
    code, report = verify_cli(ran)
    assert code == 1 and failures(report)["sequence"] == "entry 2 is missing", report
    restore()

    tamper(ran, party, lambda r: {entry[1]: r[entry[2]], entry[2]: r[entry[1]]})
    code, report = verify_sdk(ran, party)
    assert code == 1 and failures(report)["sequence"] == "entries are out of order (position 2 holds entry 3)"
    restore()

    def alter(records: dict[bytes, bytes]) -> dict[bytes, bytes | None]:
        doc = json.loads(records[entry[1]])
        doc["files_read"] = []
        return {entry[1]: rules.canonical(doc)}

    tamper(ran, party, alter)
    code, report = verify_sdk(ran, party)
    assert code == 1 and "entry 3 does not follow" in failures(report)["links"]
    restore()

    tamper(ran, party, lambda _: {entry[3]: None})  # the last entry: only the head knows
    code, report = verify_sdk(ran, party)
    assert code == 1 and set(failures(report)) == {"head"}
    restore()

    # A platform service other than management re-signs the head: its measurement is not management's.
    async def resign(store: PlatformStore) -> None:
        runtime = ServiceRuntime("scheduler", ran.platform.config)
        await runtime.attest()
        try:
            signed = SignedHead.from_bytes(original[head])
            envelope = attested_sign(runtime.identities.current, rules.HEAD_PURPOSE, signed.head)
            await store.put(head, SignedHead(signed.head, rules.canonical(envelope.to_json())).to_bytes())
        finally:
            await runtime.identities.stop()
            await runtime.peers.close()

    ran.scheduler_storage(resign)
    code, report = verify_sdk(ran, party)
    assert code == 1 and set(failures(report)) == {"head signature: measurement"}, report
    restore()

    def garbled(records: dict[bytes, bytes]) -> dict[bytes, bytes | None]:
        signed = SignedHead.from_bytes(records[head])
        envelope = json.loads(signed.signature)
        envelope["signature"] = envelope["signature"][::-1]
        return {head: SignedHead(signed.head, rules.canonical(envelope)).to_bytes()}

    tamper(ran, party, garbled)
    code, report = verify_sdk(ran, party)
    assert code == 1 and any(name.startswith("head signature") for name in failures(report)), report
    restore()
    # The saved copy still verifies offline: it is what the platform held when it was saved.
    assert ran.platform.kettle("audit", "verify-trail", str(saved)).returncode == 0


def test_the_trail_survives_a_restart_and_goes_on(ran: World) -> None:
    before = {p: ran.clients[p].my_trail() for p in PARTIES}
    ran.platform.stop()
    ran.platform.start(ALL_SERVICES)
    ran.connect()
    for party in PARTIES:
        after = ran.clients[party].my_trail()
        assert after.entries == before[party].entries
        assert ran.clients[party].verify_my_trail().ok
    run_psi(ran, "bob-after-restart", "bob", ("bob", "bob"))
    trail = ran.clients["bob"].my_trail()
    assert trail.entries[:len(before["bob"].entries)] == before["bob"].entries
    label = "bob-after-restart"
    files = ran.files[f"{label}/bob"]
    assert summary(trail)[len(before["bob"].entries):] == [
        ("approval", ran.tasks[label], ran.digests[label], (), ()),
        ("task-ended", ran.tasks[label], ran.digests[label], tuple(sorted(files[0::2])), tuple(sorted(files[1::2]))),
    ]
    verdict = ran.clients["bob"].verify_my_trail()
    assert verdict.ok, verdict.reason
    assert ran.clients["alice"].my_trail().entries == before["alice"].entries
