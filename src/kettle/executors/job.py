"""What an execution node hands its worker process: the staged task and where its files go.

Encoded as one JSON document on the worker's stdin. The file agent's settings
travel with the job (rather than the worker re-reading the configuration) so a
worker always uses exactly what its node was started with.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ..config import ExecutionConfig, FileAgentConfig, SandboxConfig
from ..model.records import StagedTask
from ..sandbox.layers import Layers


@dataclass(frozen=True)
class WorkerJob:
    staged: StagedTask
    workdir: Path
    """The task's private working directory (created and removed by the node)."""
    home: Path
    """``KETTLE_HOME``: relative file agent paths are relative to it."""
    file_agent: FileAgentConfig
    sandbox: SandboxConfig = SandboxConfig()
    """Limits for user code (Python executor)."""
    sandbox_layers: Layers = Layers()
    """The node's sandbox layers, as its zygote probed them (reported with the task's result)."""
    sandbox_refusal: str = ""
    """Why the node's sandbox may not run user code (a required layer is missing), or empty."""
    execution: ExecutionConfig = ExecutionConfig()
    """The node's limits on staged inputs (per-task budget, free-disk floor)."""
    attempt: int = 1
    """Which run of the task this is (the scheduler's count): a later attempt may replace the
    outputs an earlier one stored, never the reverse."""

    def to_bytes(self) -> bytes:
        return json.dumps({
            "staged": json.loads(self.staged.to_bytes()),
            "workdir": str(self.workdir),
            "home": str(self.home),
            "file_agent": asdict(self.file_agent),
            "sandbox": asdict(self.sandbox),
            "sandbox_layers": self.sandbox_layers.to_json(),
            "sandbox_refusal": self.sandbox_refusal,
            "execution": asdict(self.execution),
            "attempt": self.attempt,
        }).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> WorkerJob:
        try:
            doc = json.loads(data)
            agent: dict[str, Any] = doc["file_agent"]
            known = {f.name for f in fields(FileAgentConfig)}
            if set(agent) != known:
                raise ValueError("file agent settings have the wrong fields")
            settings = {k: tuple(v) if isinstance(v, list) else v for k, v in agent.items()}
            return cls(
                staged=StagedTask.from_bytes(json.dumps(doc["staged"]).encode()),
                workdir=Path(doc["workdir"]),
                home=Path(doc["home"]),
                file_agent=FileAgentConfig(**settings),
                sandbox=SandboxConfig(**doc["sandbox"]),
                sandbox_layers=Layers.from_json(doc["sandbox_layers"]),
                sandbox_refusal=str(doc["sandbox_refusal"]),
                execution=ExecutionConfig(**doc["execution"]),
                attempt=_attempt(doc["attempt"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed worker job: {exc}") from None


def _attempt(value: object) -> int:
    if type(value) is not int or value < 1:
        raise ValueError(f"attempt must be a positive integer, not {value!r}")
    return value
