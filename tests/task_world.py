"""A whole platform with a function owner and data owners, for end-to-end tasks through the SDK.

Data owners encrypt their inputs (alternating file schemes), register them and
their outputs, assign, approve and invoke; the owners decrypt what the task
wrote. Used by the user-code executors' end-to-end tests.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conftest import ALL_SERVICES, Platform, make_home

from kettle.model.records import TaskStatus
from kettle.sdk import FrontendClient, FunctionInput, FunctionOutput, TaskFailure, TaskInfo
from kettle.sdk.files import FileKey, decrypt_file, encrypt_file

SCHEMAS = itertools.cycle(["teaclave-file-128", "aes-gcm-128", "aes-gcm-256"])


@dataclass
class Run:
    task: TaskInfo
    outputs: dict[str, bytes | None]
    """Each output's plaintext as its owner decrypts it; None when nothing was uploaded."""
    output_ids: dict[str, str]

    @property
    def return_value(self) -> str:
        return self.task.outputs_or_raise().return_value.decode("utf-8")

    @property
    def failure(self) -> str:
        assert self.task.status == TaskStatus.FAILED and isinstance(self.task.result, TaskFailure), self.task
        return self.task.result.reason


@dataclass
class World:
    platform: Platform
    files: Path
    publisher: FrontendClient
    owners: dict[str, FrontendClient]
    serial: Iterator[int] = field(default_factory=itertools.count)

    @property
    def alice(self) -> FrontendClient:
        return self.owners["alice"]

    def function(self, executor_type: str, payload: bytes, arguments: Sequence[str] = (), inputs: Sequence[str] = (),
                 outputs: Sequence[str] = (), optional: bool = False) -> str:
        return self.publisher.register_function(
            f"{executor_type}{next(self.serial)}", "", executor_type, payload=payload, arguments=list(arguments),
            inputs=[FunctionInput(n, optional=optional) for n in inputs], outputs=[FunctionOutput(n) for n in outputs])

    def start(self, function_id: str, arguments: Mapping[str, Any], inputs: Mapping[str, bytes | str] | None = None,
              outputs: Sequence[str] = (), executor: str = "mesapy",
              owner_of: Mapping[str, str] | None = None) -> tuple[str, dict[str, tuple[str, FileKey, Path]]]:
        """Create, assign, approve (every owner involved) and invoke; (task id, {output: (id, key, file)}).

        Files belong to alice unless ``owner_of`` says otherwise. An input given
        as text is the id of a file registered earlier (e.g. from an output).
        """
        owner_of = dict(owner_of or {})
        owner = {n: owner_of.get(n, "alice") for n in [*(inputs or {}), *outputs]}
        folder = self.files / f"task{next(self.serial)}"
        folder.mkdir()
        input_ids, output_ids, sealed = {}, {}, {}
        for name, content in (inputs or {}).items():
            if isinstance(content, str):
                input_ids[name] = content
                continue
            key = FileKey.generate(next(SCHEMAS))
            (folder / f"{name}.txt").write_bytes(content)
            cmac = encrypt_file(folder / f"{name}.txt", folder / f"{name}.enc", key)
            input_ids[name] = self.owners[owner[name]].register_input_file(
                (folder / f"{name}.enc").as_uri(), key.schema, key.key, key.iv, cmac)
        for name in outputs:
            key = FileKey.generate(next(SCHEMAS))
            output_ids[name] = self.owners[owner[name]].register_output_file(
                (folder / f"{name}.out").as_uri(), key.schema, key.key, key.iv)
            sealed[name] = (output_ids[name], key, folder / f"{name}.out")
        task_id = self.alice.create_task(function_id, dict(arguments), executor,
                                         inputs_ownership={n: [owner[n]] for n in input_ids},
                                         outputs_ownership={n: [owner[n]] for n in output_ids})
        parties = sorted(set(owner.values()))
        for user_id in parties:
            self.owners[user_id].assign_data(
                task_id, inputs={n: f for n, f in input_ids.items() if owner[n] == user_id},
                outputs={n: f for n, f in output_ids.items() if owner[n] == user_id})
        for user_id in parties or ["alice"]:
            self.owners[user_id].approve_task(task_id)
        self.alice.invoke_task(task_id)
        return task_id, sealed

    def cancel_once_running(self, task_id: str) -> TaskInfo:
        """Wait until the task runs (and a little more), cancel it, and insist on Canceled within one second."""
        deadline = time.monotonic() + 60
        while self.alice.get_task(task_id).status != TaskStatus.RUNNING:
            assert time.monotonic() < deadline, "the task never started running"
            time.sleep(0.05)
        time.sleep(0.3)
        asked = time.monotonic()
        self.alice.cancel_task(task_id)
        while (task := self.alice.get_task(task_id)).status != TaskStatus.CANCELED:
            assert time.monotonic() - asked < 1.0, "not Canceled within a second"
            time.sleep(0.02)
        return task

    def run(self, function_id: str, arguments: Mapping[str, Any], inputs: Mapping[str, bytes | str] | None = None,
            outputs: Sequence[str] = (), executor: str = "mesapy", owner_of: Mapping[str, str] | None = None) -> Run:
        task_id, sealed = self.start(function_id, arguments, inputs, outputs, executor, owner_of)
        task = self.alice.wait_task(task_id, timeout=120)
        produced: dict[str, bytes | None] = {}
        for name, (file_id, key, path) in sealed.items():
            if not path.exists():
                produced[name] = None
                continue
            cmac = self.owners[(owner_of or {}).get(name, "alice")].get_output_file(file_id).cmac
            assert cmac == task.outputs_or_raise().tags_map[name]
            decrypt_file(path, path.with_suffix(".plain"), key, cmac=cmac)
            produced[name] = path.with_suffix(".plain").read_bytes()
        return Run(task, produced, {name: file_id for name, (file_id, _, _) in sealed.items()})


@contextlib.contextmanager
def world(tmp: Path, auditor_cache: Path, extra_config: str = "") -> Iterator[World]:
    """A platform (every service) whose file agent may read and write under ``tmp/files``; users
    ``publisher`` (function owner), ``alice`` and ``bob`` (data owners)."""
    files = tmp / "files"
    files.mkdir()
    extra = f'[file_agent]\nallowed_schemes = ["file", "data"]\nfile_roots = ["{files}"]\n\n{extra_config}'
    platform = Platform(make_home(tmp / "home", auditor_cache, extra=extra))
    platform.start(ALL_SERVICES)
    admin = platform.admin()
    clients = {}
    try:
        for user_id, role in (("publisher", "FunctionOwner"), ("alice", "DataOwner"), ("bob", "DataOwner")):
            admin.user_register(user_id, "secret", role, "")
            token = platform.auth_client().user_login(user_id, "secret")
            clients[user_id] = FrontendClient(platform.frontend_address, platform.trust(), user_id, token)
        yield World(platform, files, clients["publisher"], {"alice": clients["alice"], "bob": clients["bob"]})
    finally:
        for client in clients.values():
            client.close()
        platform.stop()
