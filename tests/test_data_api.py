"""The data-file APIs (spec §5) and AssignData with files (§6.3) through the real platform.

Every call goes client → frontend (authentication, access control) → management
→ storage, with separate DataOwner users. Where a task would have to run to give
an output its cmac, the test writes the cmac into the output record exactly as
the scheduler does (it holds the scheduler's attested identity for that); the
end-to-end runs with real files are in ``test_data_e2e.py``.
"""

from __future__ import annotations

import asyncio
import re
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import grpc
import pytest

from conftest import Platform
from kettle.errors import KettleError
from kettle.model.records import FileRecord, TaskStatus, input_key, output_key
from kettle.rpc.generated import teaclave_frontend_service_pb2 as fpb
from kettle.sdk import DataMap, FrontendClient, FunctionInput, FunctionOutput
from kettle.services.platform_store import PlatformStore
from kettle.services.runtime import ServiceRuntime

INVALID, DENIED, UNKNOWN = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNKNOWN,
)
PD, NO_ID = "permission denied", "invalid data id"
R = TypeVar("R")

KEY16, KEY32, IV12 = bytes(range(16)), bytes(range(32)), bytes(range(12))
CMAC = bytes(range(200, 216))
TAG = bytes(range(50, 66))


def fails(action: Callable[[], Any], code: grpc.StatusCode, message: str | None) -> KettleError:
    with pytest.raises(KettleError) as info:
        action()
    assert info.value.code == code, info.value.message
    if message is not None:
        assert info.value.message == message
    return info.value


class Storage:
    """The scheduler's view of the platform partition of storage, attested once per module
    (on an event loop of its own) and used from the synchronous tests."""

    def __init__(self, platform: Platform) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._runtime = ServiceRuntime("scheduler", platform.config)
        self.run(self._runtime.attest())
        self.store = PlatformStore(self._runtime.peers)

    def run(self, coroutine: Awaitable[R]) -> R:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(60)  # type: ignore[arg-type]

    def close(self) -> None:
        async def stop() -> None:
            await self._runtime.identities.stop()
            await self._runtime.peers.close()

        self.run(stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def file(self, key: bytes) -> FileRecord | None:
        return self.run(self.store.get_file(key))

    def file_keys(self) -> tuple[list[bytes], list[bytes]]:
        return (sorted(self.run(self.store.keys_with_prefix(b"input-"))),
                sorted(self.run(self.store.keys_with_prefix(b"output-"))))

    def finish_output(self, output_id: str, cmac: bytes = TAG) -> None:
        """What the scheduler does when a task that wrote this output finishes (§7.3)."""
        key = output_key(output_id.split("-", 1)[1])
        record = self.file(key)
        assert record is not None
        self.run(self.store.put(key, replace(record, cmac=cmac).to_bytes()))


@dataclass
class World:
    platform: Platform
    storage: Storage
    alice: FrontendClient
    bob: FrontendClient
    carol: FrontendClient
    eve: FrontendClient
    """A data owner of another group, outside every task here."""
    admin: FrontendClient
    fo: FrontendClient
    """A FunctionOwner: the access-control gate refuses it every data RPC."""
    names: dict[str, str]

    def __getitem__(self, short: str) -> str:
        return self.names[short]

    def url(self, name: str) -> str:
        return f"https://files.example/srv/{self['alice']}/{name}"

    def gcm_input(self, who: FrontendClient, name: str = "in.enc") -> str:
        return who.register_input_file(self.url(name), "aes-gcm-128", KEY16, IV12, CMAC)

    def output(self, who: FrontendClient, name: str = "out.enc") -> str:
        return who.register_output_file(self.url(name), "teaclave-file-128", KEY16, b"")


def raw_call(client: FrontendClient, rpc: str, request: Any) -> Any:
    """A frontend RPC with a hand-made request (what the SDK would never send)."""
    try:
        return getattr(client._stubs["frontend"], rpc)(request, metadata=client._core.metadata(), timeout=30)
    except grpc.RpcError as exc:
        from kettle.rpc.status import error_from_rpc

        raise error_from_rpc(exc) from None


@pytest.fixture(scope="module")
def world(full_platform: Platform) -> Iterator[World]:
    suffix = uuid.uuid4().hex[:8]
    names = {short: f"{short}-{suffix}" for short in ("alice", "bob", "carol", "eve", "fo")}
    roles = {"alice": ("DataOwner", "bank"), "bob": ("DataOwner", "bank"), "carol": ("DataOwner", "hospital"),
             "eve": ("DataOwner", "evil"), "fo": ("FunctionOwner", "")}
    auth = full_platform.admin()
    for short, (role, attribute) in roles.items():
        auth.user_register(names[short], "pw", role, attribute)
    clients = {}
    for short in roles:
        token = full_platform.auth_client().user_login(names[short], "pw")
        clients[short] = FrontendClient(full_platform.frontend_address, full_platform.trust(), names[short], token)
    clients["admin"] = FrontendClient(full_platform.frontend_address, full_platform.trust(), "admin",
                                      full_platform.auth_client().user_login("admin", "teaclave"))
    storage = Storage(full_platform)
    yield World(full_platform, storage, names=names, **clients)
    storage.close()
    for client in clients.values():
        client.close()


# === registration and reading ======================================================================


def test_register_and_get(world: World) -> None:
    alice, bob = world.alice, world.bob
    input_id = world.gcm_input(alice)
    output_id = world.output(alice)
    assert re.fullmatch(r"input-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", input_id)
    assert re.fullmatch(r"output-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", output_id)

    got = alice.get_input_file(input_id)
    assert (got.owners, got.cmac) == ((world["alice"],), CMAC)
    assert alice.get_input_file(input_id.upper().replace("INPUT-", "input-")).cmac == CMAC  # IDs are normalised
    response = raw_call(alice, "GetOutputFile", fpb.GetOutputFileRequest(data_id=output_id))
    assert (list(response.owner), response.cmac) == ([world["alice"]], b"")  # empty until a task writes it
    assert {f.name for f, _ in response.ListFields()} == {"owner"}  # never a URL or a key

    # the record behind it: owner = {caller}, stored as registered
    stored = world.storage.file(input_key(input_id.split("-", 1)[1]))
    assert stored is not None and (stored.url, stored.crypto_info.schema, stored.crypto_info.key, stored.owner) == (
        world.url("in.enc"), "aes-gcm-128", KEY16, (world["alice"],))

    # other users, even an admin, may not read them
    for who in (bob, world.eve, world.admin):
        fails(lambda: who.get_input_file(input_id), DENIED, PD)
        fails(lambda: who.get_output_file(output_id), DENIED, PD)
    # a FunctionOwner is stopped at the access-control gate
    fails(lambda: world.fo.get_input_file(input_id), DENIED, PD)
    fails(lambda: world.fo.register_input_file(world.url("x"), "aes-gcm-128", KEY16, IV12, CMAC), DENIED, PD)

    # wrong kind, unknown, unparsable: all "invalid data id"
    for data_id in (output_id, f"input-{uuid.uuid4()}", "input-not-a-uuid", "", "input-", "x" * 100_000,
                    f"function-{input_id.split('-', 1)[1]}"):
        fails(lambda: alice.get_input_file(data_id), INVALID, NO_ID)
    for data_id in (input_id, f"output-{uuid.uuid4()}", "output-not-a-uuid"):
        fails(lambda: alice.get_output_file(data_id), INVALID, NO_ID)


def test_registration_errors_store_nothing(world: World) -> None:
    alice = world.alice
    before = world.storage.file_keys()
    good = world.url("x.enc")
    for args, message in [
        (("relative/x.enc", "aes-gcm-128", KEY16, IV12, CMAC), "relative URL without a base"),
        (("", "aes-gcm-128", KEY16, IV12, CMAC), "relative URL without a base"),
        (("http://", "aes-gcm-128", KEY16, IV12, CMAC), "empty host"),
        (("http://h:70000/x", "aes-gcm-128", KEY16, IV12, CMAC), "invalid port number"),
        (("https://h/a b", "aes-gcm-128", KEY16, IV12, CMAC), "invalid URL character U+0020 at position 11"),
        (("https://h/a\nb", "aes-gcm-128", KEY16, IV12, CMAC), "invalid URL character U+000A at position 11"),
        (("https://h/" + "a" * 100_000, "aes-gcm-128", KEY16, IV12, CMAC), "URL is too long: 100010 characters, at most 8192"),
        (("file:///etc/passwd", "aes-gcm-128", KEY16, IV12, CMAC),
         "URL scheme not allowed: file (allowed: data, http, https, s3); file URLs need [file_agent] file_roots"),
        (("gopher://h/x", "aes-gcm-128", KEY16, IV12, CMAC), "URL scheme not allowed: gopher (allowed: data, http, https, s3)"),
        ((good, "aes-gcm-128", KEY16, IV12, CMAC[:15]), "Invalid cmac length: 15"),
        ((good, "aes-gcm-128", KEY16, IV12, b""), "Invalid cmac length: 0"),
        ((good, "aes-gcm-128", KEY32, IV12, CMAC), "Invalid key length for AesGcm128: 32"),
        ((good, "aes-gcm-256", KEY16, IV12, CMAC), "Invalid key length for AesGcm256: 16"),
        ((good, "aes-gcm-128", KEY16, b"", CMAC), "Invalid iv length for AesGcm128: 0"),
        ((good, "teaclave-file-128", KEY16, IV12, CMAC), "IV is not empty for teaclave_file_128"),
        ((good, "rot13", KEY16, IV12, CMAC), "Invalid crypto schema: rot13"),
        # the first failing check wins: url, then cmac, then crypto info
        (("rel", "rot13", b"", b"", b""), "relative URL without a base"),
        ((good, "rot13", b"", b"", b""), "Invalid cmac length: 0"),
    ]:
        fails(lambda: alice.register_input_file(*args), INVALID, message)
    for args, message in [
        (("rel", "aes-gcm-128", KEY16, IV12), "relative URL without a base"),
        ((good, "teaclave-file-128", KEY32, b""), "Invalid key length for TeaclaveFile128: 32"),
    ]:
        fails(lambda: alice.register_output_file(*args), INVALID, message)
    # absent crypto_info
    fails(lambda: raw_call(alice, "RegisterInputFile", fpb.RegisterInputFileRequest(url=good, cmac=CMAC)), INVALID,
          "missing crypto_info")
    fails(lambda: raw_call(alice, "RegisterOutputFile", fpb.RegisterOutputFileRequest(url=good)), INVALID,
          "missing crypto_info")
    # a huge schema is not echoed whole
    error = fails(lambda: alice.register_output_file(good, "s" * 500_000, b"", b""), INVALID, None)
    assert error.message.startswith("Invalid crypto schema: sss") and len(error.message) < 200
    # a URL that is not UTF-8 never gets past the frontend's decoder
    invalid_utf8 = b"\x0a\x0bfile:///\xff\xfe\x2f" + b"\x12\x10" + CMAC
    channel_call = alice._channel.unary_unary(
        "/teaclave_frontend_service_proto.TeaclaveFrontend/RegisterInputFile",
        request_serializer=lambda b: b, response_deserializer=fpb.RegisterInputFileResponse.FromString)
    with pytest.raises(grpc.RpcError) as info:
        channel_call(invalid_utf8, metadata=alice._core.metadata(), timeout=30)
    assert info.value.code() == INVALID, info.value.details()
    assert world.storage.file_keys() == before

    # any scheme is accepted at registration; raw outputs too (they fail at upload time)
    assert alice.register_input_file("s3://bucket/x.enc", "raw", b"", b"", bytes(16)).startswith("input-")
    assert alice.register_output_file("https://h.example/o", "raw", b"", b"").startswith("output-")


# === updates ================================================================================


def test_update_input_and_output(world: World) -> None:
    alice, bob = world.alice, world.bob
    old_in = world.gcm_input(alice)
    old_record = world.storage.file(input_key(old_in.split("-", 1)[1]))
    new_in = alice.update_input_file(old_in, world.url("moved.enc"))
    assert new_in.startswith("input-") and new_in != old_in
    assert alice.get_input_file(new_in).cmac == CMAC and alice.get_input_file(old_in).cmac == CMAC
    assert world.storage.file(input_key(old_in.split("-", 1)[1])) == old_record  # unchanged
    new_record = world.storage.file(input_key(new_in.split("-", 1)[1]))
    assert new_record is not None and old_record is not None
    assert (new_record.url, new_record.crypto_info, new_record.owner, new_record.cmac) == (
        world.url("moved.enc"), old_record.crypto_info, old_record.owner, old_record.cmac)
    assert alice.update_input_file(old_in, world.url("again.enc")) not in (old_in, new_in)

    old_out = world.output(alice)
    world.storage.finish_output(old_out)
    assert alice.get_output_file(old_out).cmac == TAG
    new_out = alice.update_output_file(old_out, world.url("out2.enc"))
    assert new_out.startswith("output-") and new_out != old_out
    assert alice.get_output_file(new_out).cmac is None  # the copy has no cmac
    assert alice.get_output_file(old_out).cmac == TAG

    before = world.storage.file_keys()
    fails(lambda: bob.update_input_file(old_in, world.url("x")), DENIED, PD)
    fails(lambda: world.admin.update_input_file(old_in, world.url("x")), DENIED, PD)
    fails(lambda: bob.update_output_file(old_out, world.url("x")), DENIED, PD)
    fusion = alice.register_fusion_output([world["alice"], world["bob"]])
    fails(lambda: alice.update_output_file(fusion, world.url("x")), DENIED, PD)  # multi-owner files: never
    fails(lambda: alice.update_input_file(old_in, "relative"), INVALID, "relative URL without a base")
    fails(lambda: alice.update_output_file(old_out, "http://"), INVALID, "empty host")
    fails(lambda: bob.update_input_file(old_in, "relative"), DENIED, PD)  # ownership before the URL
    for data_id in (f"input-{uuid.uuid4()}", "input-not-a-uuid", old_out, ""):
        fails(lambda: alice.update_input_file(data_id, world.url("x")), INVALID, NO_ID)
    for data_id in (f"output-{uuid.uuid4()}", "output-zzz", old_in):
        fails(lambda: alice.update_output_file(data_id, world.url("x")), INVALID, NO_ID)
    assert world.storage.file_keys()[0] == before[0]
    assert len(world.storage.file_keys()[1]) == len(before[1]) + 1  # just the fusion output


# === fusion outputs and inputs from outputs ==================================================


def test_fusion_output(world: World) -> None:
    alice, bob, carol = world.alice, world.bob, world.carol
    fusion = alice.register_fusion_output([world["alice"], world["bob"]])
    assert fusion.startswith("output-")
    for who in (alice, bob):
        got = who.get_output_file(fusion)
        assert (got.owners, got.cmac) == (tuple(sorted((world["alice"], world["bob"]))), None)
    fails(lambda: carol.get_output_file(fusion), DENIED, PD)

    bare = fusion.split("-", 1)[1]
    record = world.storage.file(output_key(bare))
    assert record is not None
    match = re.fullmatch(r"fusion:///TEACLAVE_FUSION_BASE/([0-9a-f-]{36})\.fusion", record.url)
    assert match and match.group(1) != bare
    assert (record.crypto_info.schema, len(record.crypto_info.key), record.crypto_info.iv) == ("teaclave-file-128", 16, b"")
    assert record.cmac is None
    other = world.storage.file(output_key(bob.register_fusion_output([world["bob"], world["carol"]]).split("-", 1)[1]))
    assert other is not None and other.crypto_info.key != record.crypto_info.key and other.url != record.url

    before = world.storage.file_keys()
    for owners in ([], [world["alice"]], [world["bob"], world["carol"]]):
        fails(lambda: alice.register_fusion_output(owners), DENIED, PD)
    fails(lambda: alice.register_fusion_output([world["alice"], world["alice"]]), INVALID,
          "a fusion output needs at least two distinct owners")
    fails(lambda: alice.register_fusion_output([world["alice"], ""]), INVALID, "owner_list contains an empty user id")
    fails(lambda: alice.register_fusion_output([world["alice"]] + [f"u{i}" for i in range(1000)]), INVALID,
          "owner_list has 1001 entries, at most 256")
    fails(lambda: world.fo.register_fusion_output(["x", "y"]), DENIED, PD)
    assert world.storage.file_keys() == before


def test_input_from_output(world: World) -> None:
    alice, bob = world.alice, world.bob
    output_id = world.output(alice)
    fails(lambda: alice.register_input_from_output(output_id), INVALID, "invalid output file")  # not written yet
    fails(lambda: bob.register_input_from_output(output_id), DENIED, PD)  # ownership first
    for data_id in (f"output-{uuid.uuid4()}", "output-bad", world.gcm_input(alice), ""):
        fails(lambda: alice.register_input_from_output(data_id), INVALID, NO_ID)

    world.storage.finish_output(output_id)
    derived = alice.register_input_from_output(output_id)
    assert derived == "input-" + output_id.split("-", 1)[1]
    got = alice.get_input_file(derived)
    assert (got.owners, got.cmac) == ((world["alice"],), TAG)
    assert world.storage.file(input_key(derived.split("-", 1)[1])) == world.storage.file(
        output_key(output_id.split("-", 1)[1]))
    assert alice.register_input_from_output(output_id) == derived  # idempotent
    fails(lambda: bob.register_input_from_output(output_id), DENIED, PD)
    fails(lambda: bob.get_input_file(derived), DENIED, PD)

    # a fusion output becomes an input of both owners
    fusion = alice.register_fusion_output([world["alice"], world["bob"]])
    fails(lambda: bob.register_input_from_output(fusion), INVALID, "invalid output file")
    world.storage.finish_output(fusion)
    shared = bob.register_input_from_output(fusion)
    assert alice.get_input_file(shared).owners == tuple(sorted((world["alice"], world["bob"])))
    fails(lambda: world.eve.register_input_from_output(fusion), DENIED, PD)


# === AssignData with files ====================================================================


@pytest.fixture(scope="module")
def function_id(world: World) -> str:
    return world.admin.register_function(
        "builtin-echo", "files", "builtin", arguments=["message"],
        inputs=[FunctionInput("in_a"), FunctionInput("in_b"), FunctionInput("in_opt", optional=True)],
        outputs=[FunctionOutput("out_a"), FunctionOutput("fused")],
    )


def two_party_task(world: World, function_id: str) -> str:
    a, b = world["alice"], world["bob"]
    return world.alice.create_task(
        function_id, {"message": "hi"},
        inputs_ownership={"in_a": a, "in_b": b}, outputs_ownership={"out_a": a, "fused": [a, b]},
    )


def test_assign_approve_invoke(world: World, function_id: str) -> None:
    alice, bob, eve = world.alice, world.bob, world.eve
    task_id = two_party_task(world, function_id)
    in_a, in_b, out_a = world.gcm_input(alice), world.gcm_input(bob), world.output(alice)
    fused = bob.register_fusion_output([world["alice"], world["bob"]])
    pristine = alice.get_task(task_id)

    # outsiders: neither assign, nor approve, nor read the task or the files
    eve_input = world.gcm_input(eve)
    fails(lambda: eve.assign_data(task_id, inputs={"in_a": eve_input}), DENIED, PD)
    fails(lambda: eve.approve_task(task_id), UNKNOWN, "failed to approve task")  # state is checked first
    fails(lambda: eve.get_task(task_id), DENIED, PD)
    fails(lambda: eve.get_input_file(in_a), DENIED, PD)

    # every error row of §6.3, each leaving the task as it was
    unknown_in = f"input-{uuid.uuid4()}"
    for who, inputs, outputs, code, message in [
        (alice, {"in_a": "input-not-a-uuid"}, {}, INVALID, "malformed data id 'input-not-a-uuid'"),
        (alice, [DataMap("in_a", in_a), DataMap("in_b", "garbage")], {}, INVALID, "malformed data id 'garbage'"),
        (alice, {"in_a": unknown_in}, {"out_a": "garbage"}, INVALID, NO_ID),  # inputs are reported first
        (alice, {"in_a": in_a}, {"out_a": "garbage"}, INVALID, "malformed data id 'garbage'"),
        (alice, {"in_a": unknown_in}, {}, INVALID, NO_ID),
        (alice, {"in_a": out_a}, {}, INVALID, NO_ID),
        (alice, {}, {"out_a": in_a}, INVALID, NO_ID),
        (alice, {"in_b": in_b}, {}, DENIED, PD),  # bob's file
        (alice, {"in_b": in_a}, {}, DENIED, PD),  # declared owner is bob
        (alice, {"nope": in_a}, {}, DENIED, PD),  # not a declared name
        (alice, [DataMap("in_a", in_a), DataMap("in_a", in_a)], {}, DENIED, PD),  # twice in one request
        (alice, {}, {"fused": out_a}, DENIED, PD),  # declared owners {alice, bob} ≠ {alice}
        (bob, {}, {"out_a": fused}, DENIED, PD),
        (alice, {"in_a": in_a}, {"out_a": fused}, DENIED, PD),  # atomic: in_a is not kept either
    ]:
        fails(lambda: who.assign_data(task_id, inputs=inputs, outputs=outputs), code, message)
        assert alice.get_task(task_id) == pristine

    # an output that already has a cmac (Kettle's choice on §12 #11)
    written = world.output(alice, "written.enc")
    world.storage.finish_output(written)
    fails(lambda: alice.assign_data(task_id, outputs={"out_a": written}), DENIED, PD)

    alice.assign_data(task_id, inputs={"in_a": in_a}, outputs={"out_a": out_a})
    fails(lambda: alice.assign_data(task_id, inputs={"in_a": in_a}), DENIED, PD)  # already assigned
    fails(lambda: alice.approve_task(task_id), UNKNOWN, "failed to approve task")  # data incomplete
    bob.assign_data(task_id, inputs={"in_b": in_b}, outputs={"fused": fused})  # either owner of the fusion output

    info = bob.get_task(task_id)
    assert info.status is TaskStatus.DATA_ASSIGNED
    assert dict(info.assigned_inputs) == {"in_a": in_a, "in_b": in_b}
    assert dict(info.assigned_outputs) == {"out_a": out_a, "fused": fused}
    fails(lambda: alice.assign_data(task_id), UNKNOWN, "failed to assign data to task")
    fails(lambda: eve.assign_data(task_id), DENIED, PD)  # participation before state

    # the task keeps snapshots: a later update of a file makes a new record, the task keeps the old
    alice.update_input_file(in_a, world.url("elsewhere.enc"))
    assert dict(alice.get_task(task_id).assigned_inputs)["in_a"] == in_a

    fails(lambda: eve.approve_task(task_id), DENIED, PD)
    alice.approve_task(task_id)
    assert alice.get_task(task_id).status is TaskStatus.DATA_ASSIGNED
    bob.approve_task(task_id)
    assert bob.get_task(task_id).status is TaskStatus.APPROVED
    fails(lambda: bob.invoke_task(task_id), DENIED, PD)
    fails(lambda: eve.invoke_task(task_id), DENIED, PD)
    alice.invoke_task(task_id)
    assert alice.get_task(task_id).status not in (TaskStatus.CREATED, TaskStatus.DATA_ASSIGNED, TaskStatus.APPROVED)


def test_fusion_data_is_assignable_by_either_owner_when_the_entry_lists_exactly_both(
    world: World, function_id: str
) -> None:
    alice, bob, carol = world.alice, world.bob, world.carol
    a, b, c = world["alice"], world["bob"], world["carol"]
    fusion = alice.register_fusion_output([a, b])
    world.storage.finish_output(fusion)
    shared_input = alice.register_input_from_output(fusion)

    exact = alice.create_task(function_id, {"message": "hi"}, inputs_ownership={"in_a": [a, b], "in_b": b},
                              outputs_ownership={"out_a": a, "fused": [a, b]})
    bob.assign_data(exact, inputs={"in_a": shared_input})
    assert dict(alice.get_task(exact).assigned_inputs) == {"in_a": shared_input}
    fresh_fusion = bob.register_fusion_output([a, b])
    alice.assign_data(exact, outputs={"fused": fresh_fusion})
    fails(lambda: alice.assign_data(exact, outputs={"out_a": fusion}), DENIED, PD)  # has a cmac, and two owners

    superset = alice.create_task(function_id, {"message": "hi"}, inputs_ownership={"in_a": [a, b, c], "in_b": b},
                                 outputs_ownership={"out_a": a, "fused": [a]})
    fails(lambda: alice.assign_data(superset, inputs={"in_a": shared_input}), DENIED, PD)
    fails(lambda: alice.assign_data(superset, outputs={"fused": bob.register_fusion_output([a, b])}), DENIED, PD)
    fails(lambda: carol.assign_data(superset, inputs={"in_a": shared_input}), DENIED, PD)  # not an owner of it
    assert dict(alice.get_task(superset).assigned_inputs) == {}
