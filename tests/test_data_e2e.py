"""Encrypted data end to end through the SDK: separate data owners, real HTTP, S3 and files.

Every party registers and assigns its own encrypted data, approves, one invokes,
and each decrypts its own output. A platform of its own (module scope) whose
file agent may use a directory of owner files, a local HTTP server and a local
S3-compatible server (moto), each started here. Both servers are on loopback,
which the file agent refuses unless allowlisted, so the platform's
configuration allowlists exactly their ``host:port`` (and lists the one bucket
it opens with its own credentials).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import grpc
import httpx
import pytest
from moto.server import ThreadedMotoServer

from conftest import ALL_SERVICES, Platform, free_ports, make_home
from kettle.errors import KettleError
from kettle.model.records import TaskStatus
from kettle.rpc.generated import teaclave_frontend_service_pb2 as pb
from kettle.sdk import FrontendClient, FunctionArgument, S3Credentials, TaskFailed
from kettle.sdk.files import FileKey, decrypt_file, encrypt_file
from kettle.sdk.frontend import _Call

BUCKET = "owners"
OWN_BUCKET = "alice-own"
"""A bucket of a data owner's own: the platform has no business opening it with its credentials."""
MAX_FILE_BYTES = 2_000_000


class FileServer(BaseHTTPRequestHandler):
    """GET serves files of ``root``; PUT stores them (200); ``/status/<code>/...`` answers ``code``."""

    root: Path

    def log_message(self, *args: Any) -> None:
        pass

    def _status_path(self) -> int | None:
        parts = self.path.split("/")
        return int(parts[2]) if len(parts) > 2 and parts[1] == "status" else None

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        code = self._status_path()
        path = self.root / self.path.lstrip("/")
        if code is None and not path.is_file():
            code = 404
        if code is not None:
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self) -> None:  # noqa: N802
        length = int(self.headers["Content-Length"])
        body = self.rfile.read(length)
        code = self._status_path() or 200
        if code == 200:
            (self.root / self.path.lstrip("/")).write_bytes(body)
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()


@dataclass
class Owner:
    user_id: str
    client: FrontendClient
    folder: Path

    def url(self, name: str) -> str:
        return (self.folder / name).as_uri()


@dataclass
class World:
    platform: Platform
    owners_dir: Path
    http_dir: Path
    http_base: str
    s3: Any
    functions: FrontendClient | None = None
    """A FunctionOwner who publishes the built-ins the data owners use."""
    users: dict[str, Owner] = field(default_factory=dict)

    def owner(self, user_id: str) -> Owner:
        return self.users[user_id]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, _auditor_cache: Path) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("data-e2e")
    owners_dir, http_dir = tmp / "owners", tmp / "http"
    owners_dir.mkdir()
    http_dir.mkdir()
    handler = type("Handler", (FileServer,), {"root": http_dir})
    http = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    (s3_port,) = free_ports(1)
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
    moto.start()
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{s3_port}")
    s3.create_bucket(Bucket=BUCKET)
    s3.create_bucket(Bucket=OWN_BUCKET)
    extra = "\n".join([
        "[file_agent]",
        'allowed_schemes = ["file", "http", "s3", "fusion", "data"]',
        f'file_roots = ["{owners_dir}"]',
        f's3_endpoint_url = "http://127.0.0.1:{s3_port}"',
        f's3_node_credential_buckets = ["{BUCKET}"]',
        f'egress_allowlist = ["127.0.0.1:{http.server_address[1]}", "127.0.0.1:{s3_port}"]',
        f"max_file_bytes = {MAX_FILE_BYTES}",
        "retries = 1",
        "retry_backoff_ms = 50",
        "io_timeout_secs = 5",
    ])
    platform = Platform(make_home(tmp / "home", _auditor_cache, extra=extra))
    platform.start(ALL_SERVICES)
    world = World(platform, owners_dir, http_dir, f"http://127.0.0.1:{http.server_address[1]}", s3)
    admin = platform.admin()
    admin.user_register("publisher", "secret", "FunctionOwner", "")
    world.functions = FrontendClient(platform.frontend_address, platform.trust(), "publisher",
                                     platform.auth_client().user_login("publisher", "secret"))
    for user_id in ("alice", "bob", "carol", "eve"):
        admin.user_register(user_id, "secret", "DataOwner", "")
        token = platform.auth_client().user_login(user_id, "secret")
        folder = owners_dir / user_id
        folder.mkdir()
        world.users[user_id] = Owner(user_id, FrontendClient(platform.frontend_address, platform.trust(), user_id, token), folder)
    try:
        yield world
    finally:
        for owner in world.users.values():
            owner.client.close()
        world.functions.close()
        platform.stop()
        http.shutdown()
        moto.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def denied(call: Any) -> None:
    with pytest.raises(KettleError) as caught:
        call()
    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED


def sorted_digest_lines(values: list[str]) -> bytes:
    return "".join(d + "\n" for d in sorted(hashlib.sha256(v.encode()).hexdigest() for v in values)).encode()


def expected_marks(mine: list[str], theirs: list[str]) -> str:
    digests = sorted(hashlib.sha256(v.encode()).hexdigest() for v in mine)
    other = {hashlib.sha256(v.encode()).hexdigest() for v in theirs}
    return "".join("1" if d in other else "0" for d in digests)


def register_psi(world: World) -> str:
    assert world.functions is not None
    return world.functions.register_function(
        "builtin-ordered-set-intersect", "Native Private Set Intersection", "builtin",
        arguments=[FunctionArgument("order")],
        inputs=["input_data1", "input_data2"], outputs=["output_result1", "output_result2"],
    )


def register_pjc(world: World, parties: int) -> str:
    assert world.functions is not None
    return world.functions.register_function(
        "builtin-private-join-and-compute", "Native Private Join And Compute", "builtin",
        arguments=[FunctionArgument("num_user")],
        inputs=[f"input_data{i}" for i in range(parties)], outputs=[f"output_data{i}" for i in range(parties)],
    )


# --- two-party PSI ---------------------------------------------------------------------------


def test_two_party_psi_each_party_reads_only_its_own_result(world: World, tmp_path: Path) -> None:
    alice, bob, eve = world.owner("alice"), world.owner("bob"), world.owner("eve")
    alice_set = [f"user{i}@example.com" for i in range(0, 60)]
    bob_set = [f"user{i}@example.com" for i in range(40, 90)]

    # Alice: input served over HTTP (teaclave-file-128), output to S3 (aes-gcm-256).
    alice_in_key, alice_out_key = FileKey.generate("teaclave-file-128"), FileKey.generate("aes-gcm-256")
    (tmp_path / "alice.txt").write_bytes(sorted_digest_lines(alice_set))
    alice_cmac = encrypt_file(tmp_path / "alice.txt", world.http_dir / "alice-psi.enc", alice_in_key)
    alice_input = alice.client.register_input_file(
        f"{world.http_base}/alice-psi.enc", alice_in_key.schema, alice_in_key.key, alice_in_key.iv, alice_cmac)
    alice_output = alice.client.register_output_file(
        f"s3://{BUCKET}/alice/psi-result.enc", alice_out_key.schema, alice_out_key.key, alice_out_key.iv)

    # Bob: input and output as files (aes-gcm-128 in, teaclave-file-128 out).
    bob_in_key, bob_out_key = FileKey.generate("aes-gcm-128"), FileKey.generate("teaclave-file-128")
    (tmp_path / "bob.txt").write_bytes(sorted_digest_lines(bob_set))
    bob_cmac = encrypt_file(tmp_path / "bob.txt", bob.folder / "bob-psi.enc", bob_in_key)
    bob_input = bob.client.register_input_file(bob.url("bob-psi.enc"), bob_in_key.schema, bob_in_key.key, bob_in_key.iv, bob_cmac)
    bob_output = bob.client.register_output_file(bob.url("psi-result.enc"), bob_out_key.schema, bob_out_key.key, bob_out_key.iv)

    function_id = register_psi(world)
    task_id = alice.client.create_task(
        function_id, {"order": "ascending"}, "builtin",
        inputs_ownership={"input_data1": ["alice"], "input_data2": ["bob"]},
        outputs_ownership={"output_result1": ["alice"], "output_result2": ["bob"]},
    )
    # An outsider can neither read, assign nor approve anything of it.
    denied(lambda: eve.client.get_task(task_id))
    denied(lambda: eve.client.get_input_file(alice_input))
    denied(lambda: eve.client.get_output_file(bob_output))
    denied(lambda: eve.client.assign_data(task_id, inputs={"input_data1": alice_input}))
    # ... nor can a participant assign someone else's file.
    denied(lambda: bob.client.assign_data(task_id, inputs={"input_data1": alice_input}))

    alice.client.assign_data(task_id, inputs={"input_data1": alice_input}, outputs={"output_result1": alice_output})
    bob.client.assign_data(task_id, inputs={"input_data2": bob_input}, outputs={"output_result2": bob_output})
    assert alice.client.get_task(task_id).status == TaskStatus.DATA_ASSIGNED
    denied(lambda: eve.client.approve_task(task_id))
    alice.client.approve_task(task_id)
    bob.client.approve_task(task_id)
    alice.client.invoke_task(task_id)
    outputs = alice.client.wait_task(task_id, timeout=60).outputs_or_raise()
    common = len(set(alice_set) & set(bob_set))
    assert outputs.return_value == f"{common} common items".encode()

    # Each decrypts its own output with its own key, checked against the recorded cmac.
    alice_tag = alice.client.get_output_file(alice_output).cmac
    assert alice_tag == outputs.tags_map["output_result1"]
    world.s3.download_file(BUCKET, "alice/psi-result.enc", str(tmp_path / "psi-result.enc"))
    decrypt_file(tmp_path / "psi-result.enc", tmp_path / "alice-result.txt", alice_out_key, cmac=alice_tag)
    assert (tmp_path / "alice-result.txt").read_text() == expected_marks(alice_set, bob_set)

    bob_tag = bob.client.get_output_file(bob_output).cmac
    assert bob_tag == outputs.tags_map["output_result2"]
    decrypt_file(bob.folder / "psi-result.enc", tmp_path / "bob-result.txt", bob_out_key, cmac=bob_tag)
    assert (tmp_path / "bob-result.txt").read_text() == expected_marks(bob_set, alice_set)
    # Nobody else's key opens it.
    with pytest.raises(ValueError):
        decrypt_file(bob.folder / "psi-result.enc", tmp_path / "nope.txt", FileKey.generate("teaclave-file-128"))
    assert not (tmp_path / "nope.txt").exists()
    denied(lambda: eve.client.get_task(task_id))
    denied(lambda: alice.client.get_output_file(bob_output))


# --- three-party private join and compute -----------------------------------------------------


PJC_INPUTS = {
    "alice": "a : 1000\nb : 2000\nc : 30000\ne : 4000000\n",
    "bob": "b : 3000\nc : 40000\nd : 5000\ne : 33000\n",
    "carol": "c : 400000\ne : 1000000\nf : 7\n",
}


def test_three_party_private_join_and_compute(world: World, tmp_path: Path) -> None:
    parties = ["alice", "bob", "carol"]
    inputs, outputs, keys = {}, {}, {}
    for index, user_id in enumerate(parties):
        owner = world.owner(user_id)
        in_key = FileKey.generate("aes-gcm-256" if index % 2 else "teaclave-file-128")
        out_key = FileKey.generate("teaclave-file-128" if index % 2 else "aes-gcm-128")
        (tmp_path / f"{user_id}.txt").write_text(PJC_INPUTS[user_id])
        cmac = encrypt_file(tmp_path / f"{user_id}.txt", owner.folder / "pjc-in.enc", in_key)
        inputs[user_id] = owner.client.register_input_file(owner.url("pjc-in.enc"), in_key.schema, in_key.key, in_key.iv, cmac)
        outputs[user_id] = owner.client.register_output_file(owner.url("pjc-out.enc"), out_key.schema, out_key.key, out_key.iv)
        keys[user_id] = out_key

    alice = world.owner("alice").client
    function_id = register_pjc(world, 3)
    task_id = alice.create_task(
        function_id, {"num_user": 3}, "builtin",
        inputs_ownership={f"input_data{i}": [u] for i, u in enumerate(parties)},
        outputs_ownership={f"output_data{i}": [u] for i, u in enumerate(parties)},
    )
    for index, user_id in enumerate(parties):
        world.owner(user_id).client.assign_data(
            task_id, inputs={f"input_data{index}": inputs[user_id]}, outputs={f"output_data{index}": outputs[user_id]})
    for user_id in parties:
        world.owner(user_id).client.approve_task(task_id)
    alice.invoke_task(task_id)
    result = alice.wait_task(task_id, timeout=60).outputs_or_raise()
    assert result.return_value == b"3 users join the task in total."
    for index, user_id in enumerate(parties):
        owner = world.owner(user_id)
        cmac = owner.client.get_output_file(outputs[user_id]).cmac
        assert cmac == result.tags_map[f"output_data{index}"]
        decrypt_file(owner.folder / "pjc-out.enc", tmp_path / f"{user_id}-out.txt", keys[user_id], cmac=cmac)
        assert (tmp_path / f"{user_id}-out.txt").read_text() == "c, 470000\ne, 5033000\n"
    denied(lambda: world.owner("eve").client.get_task(task_id))


# --- chaining, fusion ---------------------------------------------------------------------------


def run_pjc(creator: Owner, parties: list[str], inputs: dict[str, str], outputs: dict[str, str],
            input_owners: dict[str, list[str]] | None = None, output_owners: dict[str, list[str]] | None = None,
            assigners: dict[str, Owner] | None = None, world: World | None = None) -> Any:
    """Create a PJC task with ``input_data{i}``/``output_data{i}``, have everyone assign and approve, invoke, wait."""
    assert world is not None
    n = len(inputs)
    function_id = register_pjc(world, n)
    names_in = {f"input_data{i}": data_id for i, data_id in enumerate(inputs.values())}
    names_out = {f"output_data{i}": data_id for i, data_id in enumerate(outputs.values())}
    owners_in = input_owners or {f"input_data{i}": [u] for i, u in enumerate(inputs)}
    owners_out = output_owners or {f"output_data{i}": [u] for i, u in enumerate(outputs)}
    task_id = creator.client.create_task(function_id, {"num_user": n}, "builtin",
                                         inputs_ownership=owners_in, outputs_ownership=owners_out)
    for name, data_id in names_in.items():
        who = (assigners or {}).get(name) or world.owner(owners_in[name][0])
        who.client.assign_data(task_id, inputs={name: data_id})
    for name, data_id in names_out.items():
        who = (assigners or {}).get(name) or world.owner(owners_out[name][0])
        who.client.assign_data(task_id, outputs={name: data_id})
    for user_id in set(parties):
        world.owner(user_id).client.approve_task(task_id)
    creator.client.invoke_task(task_id)
    return task_id, creator.client.wait_task(task_id, timeout=60)


def owner_input(world: World, user_id: str, tmp: Path, name: str, text: str, schema: str = "teaclave-file-128") -> str:
    owner = world.owner(user_id)
    key = FileKey.generate(schema)
    (tmp / f"{user_id}-{name}.txt").write_text(text)
    cmac = encrypt_file(tmp / f"{user_id}-{name}.txt", owner.folder / name, key)
    return owner.client.register_input_file(owner.url(name), key.schema, key.key, key.iv, cmac)


def owner_output(world: World, user_id: str, name: str, schema: str = "aes-gcm-128") -> tuple[str, FileKey]:
    owner = world.owner(user_id)
    key = FileKey.generate(schema)
    return owner.client.register_output_file(owner.url(name), key.schema, key.key, key.iv), key


def test_an_output_becomes_the_next_tasks_input_and_a_tampered_copy_is_refused(world: World, tmp_path: Path) -> None:
    alice, bob = world.owner("alice"), world.owner("bob")
    first_out, _ = owner_output(world, "alice", "chain-1.enc", "teaclave-file-128")
    bob_out, _ = owner_output(world, "bob", "chain-1b.enc")
    with pytest.raises(KettleError, match="invalid output file"):
        alice.client.register_input_from_output(first_out)  # no cmac yet: the task has not run
    _, info = run_pjc(alice, ["alice", "bob"], {
        "alice": owner_input(world, "alice", tmp_path, "chain-a.enc", "x : 5\ny : 6\n"),
        "bob": owner_input(world, "bob", tmp_path, "chain-b.enc", "x : 7\n"),
    }, {"alice": first_out, "bob": bob_out}, world=world)
    assert info.outputs_or_raise().return_value == b"2 users join the task in total."

    chained = alice.client.register_input_from_output(first_out)
    assert chained == "input-" + first_out.removeprefix("output-")
    assert alice.client.get_input_file(chained).cmac == info.outputs_or_raise().tags_map["output_data0"]
    second_out, second_key = owner_output(world, "alice", "chain-2.enc")
    bob_second, _ = owner_output(world, "bob", "chain-2b.enc")
    bob_in = owner_input(world, "bob", tmp_path, "chain-c.enc", "x, 12 : 1\n")
    _, again = run_pjc(alice, ["alice", "bob"], {"alice": chained, "bob": bob_in},
                       {"alice": second_out, "bob": bob_second}, world=world)
    assert again.outputs_or_raise().return_value == b"2 users join the task in total."

    # Someone swaps the stored output for another encryption under the same key: refused.
    tampered = alice.folder / "chain-1.enc"
    data = bytearray(tampered.read_bytes())
    data[5000 % len(data)] ^= 1
    tampered.write_bytes(bytes(data))
    third_out, _ = owner_output(world, "alice", "chain-3.enc")
    bob_third, _ = owner_output(world, "bob", "chain-3b.enc")
    _, refused = run_pjc(alice, ["alice", "bob"], {"alice": chained, "bob": bob_in},
                         {"alice": third_out, "bob": bob_third}, world=world)
    assert refused.status == TaskStatus.FAILED
    assert refused.result.reason == f"Corrupted input file: {alice.url('chain-1.enc')}"
    assert not (alice.folder / "chain-3.enc").exists() and not (bob.folder / "chain-3b.enc").exists()


def test_fusion_output_owned_by_two_users_feeds_a_later_task(world: World, tmp_path: Path) -> None:
    alice, bob, eve = world.owner("alice"), world.owner("bob"), world.owner("eve")
    denied(lambda: alice.client.register_fusion_output(["alice"]))
    denied(lambda: eve.client.register_fusion_output(["alice", "bob"]))
    fusion = alice.client.register_fusion_output(["alice", "bob"])
    assert bob.client.get_output_file(fusion).owners == ("alice", "bob")
    bob_out, _ = owner_output(world, "bob", "fusion-b.enc")
    _, first = run_pjc(
        alice, ["alice", "bob"],
        {"alice": owner_input(world, "alice", tmp_path, "fa.enc", "k : 1\nm : 2\n"),
         "bob": owner_input(world, "bob", tmp_path, "fb.enc", "k : 10\n")},
        {"alice": fusion, "bob": bob_out},
        output_owners={"output_data0": ["alice", "bob"], "output_data1": ["bob"]},
        assigners={"output_data0": bob}, world=world)
    tag = first.outputs_or_raise().tags_map["output_data0"]
    assert alice.client.get_output_file(fusion).cmac == tag == bob.client.get_output_file(fusion).cmac
    denied(lambda: eve.client.register_input_from_output(fusion))

    shared_input = bob.client.register_input_from_output(fusion)
    assert alice.client.get_input_file(shared_input).owners == ("alice", "bob")
    out0, key0 = owner_output(world, "alice", "fusion-next-a.enc")
    out1, _ = owner_output(world, "bob", "fusion-next-b.enc")
    bob_in = owner_input(world, "bob", tmp_path, "fc.enc", "k, 11 : 3\n")
    _, second = run_pjc(
        alice, ["alice", "bob"], {"alice": shared_input, "bob": bob_in}, {"alice": out0, "bob": out1},
        input_owners={"input_data0": ["alice", "bob"], "input_data1": ["bob"]},
        assigners={"input_data0": alice}, world=world)
    assert second.outputs_or_raise().return_value == b"2 users join the task in total."
    # The platform-held fusion key never leaves the platform: only tasks read the file.
    decrypt_file(alice.folder / "fusion-next-a.enc", tmp_path / "next.txt", key0,
                 cmac=second.outputs_or_raise().tags_map["output_data0"])
    assert (tmp_path / "next.txt").read_text() == ""


# --- bad inputs: each fails the task with a clear reason and uploads nothing -------------------


def one_party_task(world: World, tmp_path: Path, bad_input: str, label: str) -> Any:
    alice = world.owner("alice")
    good = owner_input(world, "alice", tmp_path, f"good-{label}.enc", "a : 1\n")
    out0, _ = owner_output(world, "alice", f"bad-{label}-0.enc")
    out1, _ = owner_output(world, "alice", f"bad-{label}-1.enc")
    _, info = run_pjc(alice, ["alice"], {"alice": good, "alice2": bad_input}, {"alice": out0, "alice2": out1},
                      input_owners={"input_data0": ["alice"], "input_data1": ["alice"]},
                      output_owners={"output_data0": ["alice"], "output_data1": ["alice"]},
                      assigners={n: alice for n in ("input_data0", "input_data1", "output_data0", "output_data1")},
                      world=world)
    assert info.status == TaskStatus.FAILED, info
    assert not (alice.folder / f"bad-{label}-0.enc").exists() and not (alice.folder / f"bad-{label}-1.enc").exists()
    with pytest.raises(TaskFailed):
        info.outputs_or_raise()
    return info.result.reason


def test_bad_inputs_fail_the_task_with_a_clear_reason(world: World, tmp_path: Path) -> None:
    alice = world.owner("alice")
    key = FileKey.generate("aes-gcm-128")
    (tmp_path / "plain.txt").write_text("a : 2\n")
    real_cmac = encrypt_file(tmp_path / "plain.txt", world.http_dir / "served.enc", key)

    def register(url: str, cmac: bytes = real_cmac) -> str:
        return alice.client.register_input_file(url, key.schema, key.key, key.iv, cmac)

    base = world.http_base
    cases = {
        "wrong-cmac": (register(f"{base}/served.enc", bytes(16)), f"AesGcm128 File, invalid tag: {base}/served.enc"),
        "http-404": (register(f"{base}/missing.enc"), "Failed to fetch input input_data1: HTTP 404"),
        "http-500": (register(f"{base}/status/500/in.enc"), "Failed to fetch input input_data1: HTTP 500"),
    }
    (world.http_dir / "huge.enc").write_bytes(os.urandom(MAX_FILE_BYTES + 1))
    cases["too-large"] = (register(f"{base}/huge.enc"), "Failed to fetch input input_data1: ")
    for label, (data_id, reason) in cases.items():
        got = one_party_task(world, tmp_path, data_id, label)
        assert got.startswith(reason), (label, got)
    assert "larger than the limit" in one_party_task(world, tmp_path, cases["too-large"][0], "too-large-again")

    # A scheme no node fetches never gets as far as a task: registration refuses it.
    with pytest.raises(KettleError, match="URL scheme not allowed: ftp") as caught:
        register("ftp://127.0.0.1/in.enc")
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT

    # Malformed key lengths never get as far as a task: registration refuses them.
    for schema, key_bytes, iv, text in [("aes-gcm-128", bytes(15), bytes(12), "Invalid key length for AesGcm128: 15"),
                                        ("aes-gcm-256", bytes(32), bytes(11), "Invalid iv length for AesGcm256: 11"),
                                        ("teaclave-file-128", bytes(16), bytes(12), "IV is not empty for teaclave_file_128")]:
        with pytest.raises(KettleError, match=text) as caught:
            alice.client.register_input_file(f"{base}/x.enc", schema, key_bytes, iv, bytes(16))
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_user_urls_reach_no_internal_host_and_no_unlisted_bucket(world: World, tmp_path: Path) -> None:
    alice = world.owner("alice")
    key = FileKey.generate("aes-gcm-128")
    (tmp_path / "plain.txt").write_text("a : 2\n")
    cmac = encrypt_file(tmp_path / "plain.txt", world.http_dir / "behind.enc", key)
    world.s3.upload_file(str(world.http_dir / "behind.enc"), OWN_BUCKET, "behind.enc")
    http_port = world.http_base.rpartition(":")[2]
    frontend_port = world.platform.frontend_address.rpartition(":")[2]

    def register(url: str) -> str:
        return alice.client.register_input_file(url, key.schema, key.key, key.iv, cmac)

    refused = "Failed to fetch input input_data1: the URL's host is not allowed or not reachable"
    cases = {
        # The fixture server is allowlisted as 127.0.0.1:port: the same socket by another name is not.
        "loopback-by-name": (register(f"http://localhost:{http_port}/behind.enc"), refused),
        "platform-endpoint": (register(f"http://127.0.0.1:{frontend_port}/behind.enc"), refused),
        "unlisted-bucket": (register(f"s3://{OWN_BUCKET}/behind.enc"),
                            (f"Failed to fetch input input_data1: s3://{OWN_BUCKET}/behind.enc is in a bucket this "
                             "platform does not open with its own credentials")),
    }
    for label, (data_id, reason) in cases.items():
        got = one_party_task(world, tmp_path, data_id, label)
        assert got.startswith(reason), (label, got)

    # The owner's own way in: a presigned URL to the same object, fetched without the node's credentials.
    presigned = world.s3.generate_presigned_url("get_object", Params={"Bucket": OWN_BUCKET, "Key": "behind.enc"})
    good = owner_input(world, "alice", tmp_path, "presigned-good.enc", "a : 1\n")
    out0, key0 = owner_output(world, "alice", "presigned-0.enc")
    out1, _ = owner_output(world, "alice", "presigned-1.enc")
    _, info = run_pjc(alice, ["alice"], {"alice": good, "alice2": register(presigned)},
                      {"alice": out0, "alice2": out1},
                      input_owners={"input_data0": ["alice"], "input_data1": ["alice"]},
                      output_owners={"output_data0": ["alice"], "output_data1": ["alice"]},
                      assigners={n: alice for n in ("input_data0", "input_data1", "output_data0", "output_data1")},
                      world=world)
    assert info.status == TaskStatus.FINISHED, info
    decrypt_file(alice.folder / "presigned-0.enc", tmp_path / "presigned.txt", key0,
                 cmac=info.outputs_or_raise().tags_map["output_data0"])
    assert (tmp_path / "presigned.txt").read_text() == "a, 3\n"  # the owner's object was read


# --- s3 with the owner's own credentials ----------------------------------------------------


def _moto_auth(world: World, unauthenticated_requests: str) -> None:
    """moto's IAM switch (process-wide): after this many requests every one must be signed by a known key."""
    endpoint = world.s3.meta.endpoint_url
    httpx.post(f"{endpoint}/moto-api/reset-auth", content=unauthenticated_requests.encode()).raise_for_status()


def _raw_response(client: FrontendClient, rpc: str, request: Any) -> bytes:
    """What the frontend sends back, as bytes on the wire (not what the SDK chooses to keep of it)."""
    return client._invoke(_Call(rpc, request, lambda response: response.SerializeToString()))


def _audit_until(admin: FrontendClient, query: str, count: int) -> list[Any]:
    """The frontend flushes its audit entries about once a second; generous under load."""
    deadline = time.monotonic() + 30
    while True:
        entries = admin.query_audit_logs(query, 100)
        if len(entries) >= count or time.monotonic() > deadline:
            return entries
        time.sleep(0.3)


def test_owner_credentials_read_and_write_the_owners_own_bucket_and_stay_secret(world: World, tmp_path: Path) -> None:
    """A task reads an input from and writes an output to the owner's own bucket with the owner's
    keys, while moto verifies every signature and holds each key to its policy (the node's own
    AWS identity is not even known there). The secret never comes back: not from GetInputFile /
    GetOutputFile, not in the audit log, not in a failed task's reason or a refusal, and not
    in any file of the platform's home (logs, sealed storage)."""
    alice = world.owner("alice")
    endpoint = world.s3.meta.endpoint_url
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1")
    iam.create_user(UserName="alice-s3")
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*",
              "Resource": [f"arn:aws:s3:::{OWN_BUCKET}", f"arn:aws:s3:::{OWN_BUCKET}/*"]}]}
    iam.put_user_policy(UserName="alice-s3", PolicyName="own", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="alice-s3")["AccessKey"]
    mine = S3Credentials(key["AccessKeyId"], key["SecretAccessKey"], endpoint_url=endpoint)
    wrong = S3Credentials(key["AccessKeyId"], "a-wrong-secret-1234567890", endpoint_url=endpoint)
    secrets = [mine.secret_access_key, wrong.secret_access_key]

    in_key = FileKey.generate("aes-gcm-128")
    (tmp_path / "own.txt").write_text("a : 2\n")
    cmac = encrypt_file(tmp_path / "own.txt", tmp_path / "own.enc", in_key)
    world.s3.upload_file(str(tmp_path / "own.enc"), OWN_BUCKET, "creds/in.enc")
    s3_input = alice.client.register_input_file(f"s3://{OWN_BUCKET}/creds/in.enc", in_key.schema, in_key.key,
                                                in_key.iv, cmac, s3_credentials=mine)
    out_key = FileKey.generate("aes-gcm-128")
    s3_output = alice.client.register_output_file(f"s3://{OWN_BUCKET}/creds/out.enc", out_key.schema, out_key.key,
                                                  out_key.iv, s3_credentials=mine)
    wrong_input = alice.client.register_input_file(f"s3://{OWN_BUCKET}/creds/in.enc", in_key.schema, in_key.key,
                                                   in_key.iv, cmac, s3_credentials=wrong)
    with pytest.raises(KettleError) as refused:
        alice.client.register_input_file(f"{world.http_base}/in.enc", in_key.schema, in_key.key,
                                          in_key.iv, cmac, s3_credentials=mine)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.message == "s3 credentials are only for s3:// URLs"
    pjc = {"input_owners": {"input_data0": ["alice"], "input_data1": ["alice"]},
           "output_owners": {"output_data0": ["alice"], "output_data1": ["alice"]},
           "assigners": {n: alice for n in ("input_data0", "input_data1", "output_data0", "output_data1")}}
    _moto_auth(world, "0")
    try:
        good = owner_input(world, "alice", tmp_path, "creds-good.enc", "a : 1\n")
        other_out, _ = owner_output(world, "alice", "creds-1.enc")
        _, info = run_pjc(alice, ["alice"], {"alice": good, "alice2": s3_input}, {"alice": s3_output, "alice2": other_out},
                          world=world, **pjc)
        assert info.status == TaskStatus.FINISHED, info
        spare_out, _ = owner_output(world, "alice", "creds-2.enc")
        spare_out2, _ = owner_output(world, "alice", "creds-3.enc")
        _, failed = run_pjc(alice, ["alice"], {"alice": good, "alice2": wrong_input},
                            {"alice": spare_out, "alice2": spare_out2}, world=world, **pjc)
    finally:
        _moto_auth(world, "inf")
    assert failed.status == TaskStatus.FAILED
    reason = failed.result.reason  # type: ignore[union-attr]
    assert reason == f"Failed to fetch input input_data1: HTTP 403 Forbidden from s3://{OWN_BUCKET}/creds/in.enc"
    world.s3.download_file(OWN_BUCKET, "creds/out.enc", str(tmp_path / "out.enc"))
    decrypt_file(tmp_path / "out.enc", tmp_path / "out.txt", out_key, cmac=info.outputs_or_raise().tags_map["output_data0"])
    assert (tmp_path / "out.txt").read_text() == "a, 3\n"  # read from, and written to, the owner's bucket

    answers = [_raw_response(alice.client, "GetInputFile", pb.GetInputFileRequest(data_id=s3_input)),
               _raw_response(alice.client, "GetOutputFile", pb.GetOutputFileRequest(data_id=s3_output)),
               _raw_response(alice.client, "GetInputFile", pb.GetInputFileRequest(data_id=wrong_input))]
    admin_token = world.platform.auth_client().user_login("admin", "teaclave")
    with FrontendClient(world.platform.frontend_address, world.platform.trust(), "admin", admin_token) as admin:
        audit = _audit_until(admin, "user:alice AND message:register_input_file", 3)
    assert any("s3 credentials are only for s3:// URLs" in e.message for e in audit)
    texts = [*answers, *(e.message.encode() for e in audit), reason.encode(), refused.value.message.encode()]
    stored = [p.read_bytes() for p in world.platform.home.rglob("*") if p.is_file()]
    for secret in secrets:
        assert not [t for t in texts if secret.encode() in t]
        assert not [s for s in stored if secret.encode() in s]
