"""Per-user quotas: bytes of stored records and tasks in flight (``docs/limits.md``).

Management keeps one :class:`UserQuota` record per user and changes it by
compare-and-put, with the rules here deciding. Two things are counted:

- **stored bytes**: the size of every function record the user owns (payload
  included) and every input/output file record the user registered. Bytes are
  *reserved* before the record is written and given back if the write fails or
  the function is deleted, so concurrent registrations can never pass the
  limit together; a crash between the two steps can only over-count.
- **tasks in flight**: tasks the user created that are not yet Finished,
  Failed or Canceled. The record lists their ids with their creation time; on
  each CreateTask the listed tasks' statuses are read and the ended ones
  dropped. A listed id with no task record is counted for
  :data:`MISSING_TASK_GRACE_SECS` (its record is being written) and dropped after.

This is not the function *usage* quota of the spec (Appendix B: UNKNOWN
"function quota has been used up"), which counts runs of one function.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import ResourceExhausted
from .records import TaskStatus

__all__ = ["MISSING_TASK_GRACE_SECS", "UserQuota", "quota_key"]

MISSING_TASK_GRACE_SECS = 60.0
"""How long a listed task may lack its record before it no longer counts."""


def quota_key(user_id: str) -> bytes:
    """The storage key of a user's quota record (bounded whatever the id's length)."""
    return f"quota-{uuid.uuid5(uuid.NAMESPACE_DNS, user_id)}".encode()


def _bytes(count: int) -> str:
    return f"{count:,} bytes"


@dataclass(frozen=True)
class UserQuota:
    user_id: str
    stored_bytes: int = 0
    tasks: dict[str, float] = field(default_factory=dict)
    """Bare ids of the user's tasks not yet seen ended, with when each was created."""

    # --- stored bytes ---

    def with_stored(self, added: int, limit: int) -> UserQuota:
        """``added`` more bytes stored; refused past ``limit`` (0 = no limit) when growing."""
        total = self.stored_bytes + added
        if added > 0 and limit and total > limit:
            raise ResourceExhausted(
                f"storage quota exceeded: this would bring your stored functions and file records to "
                f"{_bytes(total)}, over your limit of {_bytes(limit)}; delete functions you no longer need"
            )
        return replace(self, stored_bytes=max(0, total))

    # --- tasks in flight ---

    def must_check_statuses(self, limit: int) -> bool:
        """Whether admitting one more task needs the listed tasks' statuses: only at the
        limit, where the ended ones must be dropped first. Below it the new task is simply
        added, and the list is pruned the next time it is full, so a CreateTask reads the
        listed tasks only once in a while, not every time."""
        return bool(limit) and len(self.tasks) >= limit

    def with_task(
        self, bare: str, now: float, statuses: dict[str, TaskStatus | None] | None, limit: int
    ) -> UserQuota:
        """Admit the new task ``bare``, given the current status of each listed task
        (None: no record). Ended tasks are dropped first; refused at ``limit`` (0 = no
        limit). Without ``statuses`` (allowed only below the limit) nothing is dropped."""
        if statuses is None:
            if self.must_check_statuses(limit):
                raise ValueError("the listed tasks' statuses are needed at the limit")
            return replace(self, tasks={**self.tasks, bare: now})
        live = {
            task: created
            for task, created in self.tasks.items()
            if _in_flight(statuses.get(task), created, now)
        }
        if limit and len(live) >= limit:
            raise ResourceExhausted(
                f"task quota exceeded: you have {len(live)} tasks in flight (created and not yet finished, "
                f"failed or canceled), the limit is {limit}; wait for some to end or cancel them"
            )
        return replace(self, tasks={**live, bare: now})

    def without_task(self, bare: str) -> UserQuota:
        return replace(self, tasks={k: v for k, v in self.tasks.items() if k != bare})

    # --- encoding ---

    def to_bytes(self) -> bytes:
        doc = {"user_id": self.user_id, "stored_bytes": self.stored_bytes, "tasks": self.tasks}
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> UserQuota:
        try:
            doc: Any = json.loads(data)
            user_id, stored, tasks = doc["user_id"], doc["stored_bytes"], doc["tasks"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"malformed quota record: {exc}") from None
        if (
            not isinstance(user_id, str)
            or type(stored) is not int
            or stored < 0
            or not isinstance(tasks, dict)
            or not all(isinstance(k, str) and isinstance(v, int | float) for k, v in tasks.items())
        ):
            raise ValueError("malformed quota record")
        return cls(user_id, stored, {k: float(v) for k, v in tasks.items()})


def _in_flight(status: TaskStatus | None, created: float, now: float) -> bool:
    if status is None:
        return now - created < MISSING_TASK_GRACE_SECS
    return not status.terminal
