"""Execution receipts end to end: a two-party PSI on a real platform yields a receipt that
verifies offline with nothing but copies of the trust files (SDK and ``kettle receipt
verify``); a tampered file is refused with the reason; a Failed task's receipt says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import task_world
from task_world import World

from kettle.errors import AttestationError
from kettle.model.receipts import Outcome, canonical
from kettle.model.records import TaskStatus
from kettle.sdk import ClientTrust, builtin_function, verify_receipt

PSI = "builtin-ordered-set-intersect"
OWNERS = {"input_data1": "alice", "input_data2": "bob", "output_result1": "alice", "output_result2": "bob"}


def digest_lines(values: list[str]) -> bytes:
    return "".join(d + "\n" for d in sorted(hashlib.sha256(v.encode()).hexdigest() for v in values)).encode()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, _auditor_cache: Path) -> Iterator[World]:
    config = "[sandbox]\ncpu_time_secs = 60\nwall_time_secs = 120\n"
    with task_world.world(tmp_path_factory.mktemp("receipts-e2e"), _auditor_cache, config) as started:
        yield started


@pytest.fixture(scope="module")
def psi(world: World) -> str:
    spec = builtin_function(PSI)
    return world.publisher.register_function(PSI, spec.description, "builtin", arguments=spec.function_arguments(),
                                             inputs=spec.function_inputs(), outputs=spec.function_outputs())


@pytest.fixture(scope="module")
def verifier_home(world: World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Kettle home holding only copies of the client trust files (and the simulation allowance)."""
    home = tmp_path_factory.mktemp("verifier")
    source = world.platform.config
    (home / "trust").mkdir()
    shutil.copy(source.as_root_path, home / "trust" / "as_root_ca.pem")
    for path in source.enclave_info_path.parent.iterdir():
        if path.name == "enclave_info.toml" or path.name.endswith((".public.pem", ".sign.sha256")):
            shutil.copy(path, home / "trust" / path.name)
    (home / "kettle.toml").write_text("[attestation]\nunsafe_allow_simulation = true\n")
    return home


def offline_trust(home: Path) -> ClientTrust:
    return ClientTrust.from_files(home / "trust" / "as_root_ca.pem", home / "trust" / "enclave_info.toml",
                                  unsafe_allow_simulation=True)


def verify_cli(home: Path, receipt: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kettle", "receipt", "verify", str(receipt)],
                          env={**os.environ, "KETTLE_HOME": str(home)}, capture_output=True, text=True, timeout=120)


def test_a_two_party_psi_receipt_verifies_offline_with_only_the_trust_files(
        world: World, psi: str, verifier_home: Path, tmp_path: Path) -> None:
    run = world.run(psi, {"order": "ascending"},
                    {"input_data1": digest_lines(["a", "b", "c"]), "input_data2": digest_lines(["b", "c", "d"])},
                    ["output_result1", "output_result2"], "builtin", OWNERS)
    task = run.task
    assert task.status is TaskStatus.FINISHED and task.receipt

    body = verify_receipt(task.receipt, offline_trust(verifier_home), task=task).body
    assert (body.task_id, body.outcome, body.attempt) == (task.task_id, Outcome.FINISHED, 1)
    assert body.function_id == psi and body.function_name == PSI and body.executor == "builtin"
    assert {name: f.file_id for name, f in body.inputs.items()} == dict(task.assigned_inputs)
    for name, file_id in task.assigned_inputs.items():
        owner = world.owners[OWNERS[name]]
        assert body.inputs[name].digest == owner.get_input_file(file_id).cmac.hex()
    assert {name: f.digest for name, f in body.outputs.items()} == \
        {name: tag.hex() for name, tag in task.outputs_or_raise().tags_map.items()}
    # The consent it ran on: the pinned digests and both owners' approvals of exactly that task digest.
    assert len(task.task_digest) == 64 and (body.task_digest, body.function_digest) == (task.task_digest,
                                                                                        task.function_digest)
    assert [(a.user_id, a.task_digest) for a in body.approvals] == [("alice", task.task_digest),
                                                                    ("bob", task.task_digest)]

    # The CLI: a participant saves the receipt; anyone verifies the file with the trust files alone.
    assert world.platform.kettle("user", "login", "bob", env={"KETTLE_PASSWORD": "secret"}).returncode == 0
    saved = tmp_path / "psi.receipt.json"
    fetched = world.platform.kettle("task", "receipt", task.task_id, "--out", str(saved))
    assert fetched.returncode == 0, fetched.stderr
    assert "it matches the task's result" in fetched.stdout and saved.read_bytes() == task.receipt
    verified = verify_cli(verifier_home, saved)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "verified" in verified.stdout and "Finished" in verified.stdout

    doc = json.loads(saved.read_bytes())
    doc["receipt"]["outputs"]["output_result2"]["tag"] = "00" * 16
    tampered = tmp_path / "tampered.json"
    tampered.write_bytes(canonical(doc))
    refused = verify_cli(verifier_home, tampered)
    assert refused.returncode == 1
    assert "NOT verified: the signature does not match the signed content and the certificate's key" in refused.stdout


def test_a_failed_task_receipt_says_failed_and_verifies(world: World, psi: str, verifier_home: Path) -> None:
    run = world.run(psi, {"order": "sideways"},
                    {"input_data1": digest_lines(["a"]), "input_data2": digest_lines(["a"])},
                    ["output_result1", "output_result2"], "builtin", OWNERS)
    task = run.task
    assert task.status is TaskStatus.FAILED and task.receipt
    body = verify_receipt(task.receipt, offline_trust(verifier_home), task=task).body
    assert body.outcome is Outcome.FAILED
    assert all(f.digest is None for f in body.outputs.values())
    # The receipt is bound to this task's result: another task's receipt does not pass for it.
    other = world.alice.get_task(task.task_id)
    with pytest.raises(AttestationError, match="the receipt is for task"):
        verify_receipt(task.receipt, offline_trust(verifier_home),
                       task=type(other)(**{**other.__dict__, "task_id": "another-task"}))


LOOP = "def entrypoint(argv):\n    while True:\n        pass\n"


def test_a_task_canceled_while_running_gets_the_nodes_canceled_receipt(world: World, verifier_home: Path) -> None:
    task_id, _ = world.start(world.function("python", LOOP.encode()), {})
    deadline = time.monotonic() + 60
    while world.alice.get_task(task_id).status != TaskStatus.RUNNING:
        assert time.monotonic() < deadline, "the task never started running"
        time.sleep(0.05)
    # How fast a cancel lands is the Python executor's tests' business; here only its receipt counts.
    world.alice.cancel_task(task_id)
    deadline = time.monotonic() + 60  # the node reports right after it killed the worker
    while not (task := world.alice.get_task(task_id)).receipt:
        assert time.monotonic() < deadline, "the canceled run's receipt never arrived"
        time.sleep(0.1)
    assert task.status is TaskStatus.CANCELED
    body = verify_receipt(task.receipt, offline_trust(verifier_home), task=task).body
    assert body.outcome is Outcome.CANCELED and body.executor_type == "python"
    assert body.payload_sha256 == hashlib.sha256(LOOP.encode()).hexdigest()
    assert body.started_at < body.ended_at


def test_a_task_canceled_before_any_node_ran_it_has_no_receipt(world: World, psi: str) -> None:
    task_id = world.alice.create_task(psi, {"order": "ascending"}, "builtin",
                                      inputs_ownership={"input_data1": ["alice"], "input_data2": ["bob"]},
                                      outputs_ownership={"output_result1": ["alice"], "output_result2": ["bob"]})
    world.alice.cancel_task(task_id)
    task = world.alice.get_task(task_id)
    assert task.status is TaskStatus.CANCELED and task.receipt == b""
    with pytest.raises(AttestationError, match="has no receipt: no execution node ran it"):
        verify_receipt(task.receipt, task=task)
