"""Staged tasks over real files: a data owner's encrypted files and an execution node's data plane.

Shared by the tests that run functions through :func:`kettle.executors.run_staged_task`
(the worker's code path, without services): inputs are encrypted as their owners
would, outputs decrypted and their tags checked as their owners would.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kettle.config import FileAgentConfig
from kettle.crypto.protected_file import ProtectedFileReader, ProtectedFileWriter
from kettle.executors import run_staged_task
from kettle.executors.files import DataPlane
from kettle.file_agent import FileAgent
from kettle.model.records import CryptoInfo, FileRecord, StagedTask, TaskResult

K128 = bytes(range(16))
K256 = bytes(range(32))
IV = bytes(range(12))


class World:
    """A data owner's side (files under ``root``) and the node's side (``workdir``)."""

    def __init__(self, tmp: Path, limit: int = 1 << 30) -> None:
        self.root = tmp / "owners"
        self.root.mkdir()
        self.workdir = tmp / "work"
        self.workdir.mkdir()
        config = FileAgentConfig(allowed_schemes=("file",), file_roots=(str(self.root),), max_file_bytes=limit,
                                 retries=0, retry_backoff_ms=1)
        self.plane = DataPlane(FileAgent(config, tmp), self.workdir)

    def url(self, name: str) -> str:
        return (self.root / name).as_uri()

    def aes_input(self, name: str, plaintext: bytes, key: bytes = K128) -> FileRecord:
        sealed = AESGCM(key).encrypt(IV, plaintext, bytes(8))
        (self.root / name).write_bytes(sealed)
        schema = "aes-gcm-256" if len(key) == 32 else "aes-gcm-128"
        return FileRecord(str(uuid.uuid4()), self.url(name), CryptoInfo(schema, key, IV), ("alice",), sealed[-16:])

    def protected_input(self, name: str, plaintext: bytes, key: bytes = K128, embedded: str | None = None) -> FileRecord:
        with (self.root / name).open("w+b") as sink:
            writer = ProtectedFileWriter(sink, key, embedded or name)
            writer.write(plaintext)
            cmac = writer.close()
        return FileRecord(str(uuid.uuid4()), self.url(name), CryptoInfo("teaclave-file-128", key), ("alice",), cmac)

    def raw_input(self, name: str, plaintext: bytes) -> FileRecord:
        (self.root / name).write_bytes(plaintext)
        return FileRecord(str(uuid.uuid4()), self.url(name), CryptoInfo("raw"), ("alice",), bytes(16))

    def output(self, name: str, schema: str = "teaclave-file-128") -> FileRecord:
        key = {"aes-gcm-128": K128, "aes-gcm-256": K256}.get(schema, K128)
        iv = IV if schema.startswith("aes") else b""
        return FileRecord(str(uuid.uuid4()), self.url(name), CryptoInfo(schema, key, iv), ("alice",))

    def read_output(self, record: FileRecord) -> tuple[bytes, bytes]:
        """(plaintext, cmac) of an uploaded output, read the way its owner would."""
        path = self.root / record.url.rsplit("/", 1)[1]
        info = record.crypto_info
        if info.schema == "teaclave-file-128":
            with path.open("rb") as source:
                reader = ProtectedFileReader(source, info.key, path.name)
                return reader.read(), reader.root_mac
        data = path.read_bytes()
        return AESGCM(info.key).decrypt(info.iv, data, bytes(8)), data[-16:]

    def scratch_files(self) -> list[Path]:
        return [p for p in self.workdir.rglob("*") if p.is_file()]


def task(inputs: dict[str, FileRecord] | None = None, outputs: dict[str, FileRecord] | None = None,
         name: str = "builtin-test-copy", arguments: Any = None) -> StagedTask:
    return StagedTask(
        task_id=str(uuid.uuid4()), function_id=str(uuid.uuid4()), user_id="alice", executor="builtin",
        executor_type="builtin", function_name=name, function_arguments=json.dumps(arguments or {}),
        function_payload=b"", input_data=inputs or {}, output_data=outputs or {},
    )


@dataclass(frozen=True)
class BuiltinOutcome:
    result: TaskResult
    outputs: dict[str, bytes | None]
    """Each output's plaintext as its owner reads it back, None if nothing was uploaded."""

    @property
    def failure(self) -> str | None:
        return self.result.failure

    @property
    def return_value(self) -> str:
        assert self.result.outputs is not None, self.result.failure
        return self.result.outputs.return_value.decode("utf-8")


def run_builtin(
    tmp: Path,
    name: str,
    arguments: Any,
    inputs: Mapping[str, bytes] | None = None,
    outputs: Sequence[str] = (),
) -> BuiltinOutcome:
    """Run the built-in ``name`` as a task: inputs alternate between aes-gcm-128 and
    teaclave-file-128, outputs are teaclave-file-128; each output's tag is checked
    against ``tags_map`` when the task succeeds."""
    tmp.mkdir(parents=True, exist_ok=True)
    world = World(Path(tmp))
    staged_inputs = {
        input_name: (world.aes_input if i % 2 == 0 else world.protected_input)(f"{input_name}.in", data)
        for i, (input_name, data) in enumerate((inputs or {}).items())
    }
    staged_outputs = {output_name: world.output(f"{output_name}.out") for output_name in outputs}
    result = run_staged_task(task(staged_inputs, staged_outputs, name=name, arguments=arguments), world.plane)
    produced: dict[str, bytes | None] = {}
    for output_name, record in staged_outputs.items():
        if not (world.root / f"{output_name}.out").exists():
            produced[output_name] = None
            continue
        plaintext, tag = world.read_output(record)
        assert result.outputs is not None and result.outputs.tags_map[output_name] == tag
        produced[output_name] = plaintext
    assert world.scratch_files() == []
    return BuiltinOutcome(result, produced)
