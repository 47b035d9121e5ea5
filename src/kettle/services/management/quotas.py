"""The management service's per-user quotas: :mod:`kettle.model.quotas` on the storage service.

Each change is a compare-and-put loop on the user's quota record, so two
requests of one user racing each other are counted one after the other.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from ...config import ManagementConfig
from ...errors import KettleError, StorageError
from ...model.quotas import UserQuota, quota_key
from ...model.records import TaskStatus, task_key
from ..platform_store import MAX_UPDATE_ATTEMPTS, PlatformStore

log = logging.getLogger(__name__)


def warn_if_off(limits: ManagementConfig) -> None:
    """A quota turned off (0) is said loudly at start: it is an abuse limit gone."""
    for name, value in (("max_stored_bytes_per_user", limits.max_stored_bytes_per_user),
                        ("max_tasks_in_flight_per_user", limits.max_tasks_in_flight_per_user)):
        if value == 0:
            log.warning("management.%s = 0: that per-user quota is OFF", name)


class UserQuotas:
    def __init__(
        self, store: PlatformStore, limits: ManagementConfig, clock: Callable[[], float] = time.time
    ) -> None:
        self._store = store
        self._limits = limits
        self._clock = clock

    async def _change(self, user_id: str, change: Callable[[UserQuota], UserQuota]) -> None:
        def change_raw(raw: bytes | None) -> bytes | None:
            current = UserQuota(user_id) if raw is None else UserQuota.from_bytes(raw)
            updated = change(current)
            return None if updated == current else updated.to_bytes()

        await self._store.update(quota_key(user_id), change_raw)

    async def reserve_bytes(self, user_id: str, size: int) -> None:
        """Count ``size`` more stored bytes for the user, or refuse (RESOURCE_EXHAUSTED)."""
        limit = self._limits.max_stored_bytes_per_user
        await self._change(user_id, lambda quota: quota.with_stored(size, limit))

    async def settle_bytes(self, user_id: str, delta: int) -> None:
        """Count ``delta`` bytes more (or, negative, fewer) without checking the limit: a
        correction of what was reserved. Best effort: a failure is logged, never raised,
        so the request it ends is not failed after its change was made."""
        try:
            await self._change(user_id, lambda quota: quota.with_stored(delta, 0))
        except (KettleError, ValueError) as exc:
            log.error("the stored bytes of user %r are off by %d: %s", user_id, delta, exc)

    async def admit_task(self, user_id: str, bare: str) -> None:
        """Count the new task ``bare`` as in flight, or refuse (RESOURCE_EXHAUSTED)."""
        limit = self._limits.max_tasks_in_flight_per_user
        if not limit:
            return
        key = quota_key(user_id)
        for _ in range(MAX_UPDATE_ATTEMPTS):
            raw = await self._store.get(key)
            current = UserQuota(user_id) if raw is None else UserQuota.from_bytes(raw)
            statuses: dict[str, TaskStatus | None] | None = None
            if current.must_check_statuses(limit):
                listed = sorted(current.tasks)
                tasks = await asyncio.gather(*(self._store.get_task(task_key(b)) for b in listed))
                statuses = {b: (None if t is None else t.status) for b, t in zip(listed, tasks, strict=True)}
            updated = current.with_task(bare, self._clock(), statuses, limit)
            applied, _ = await self._store.compare_and_put(key, raw, updated.to_bytes())
            if applied:
                return
        raise StorageError(f"the quota record of {user_id!r} is being updated too often")

    async def forget_task(self, user_id: str, bare: str) -> None:
        """A task admitted but never created stops counting (best effort)."""
        if not self._limits.max_tasks_in_flight_per_user:
            return
        try:
            await self._change(user_id, lambda quota: quota.without_task(bare))
        except (KettleError, ValueError) as exc:
            log.error("user %r counts task %s that was never created: %s", user_id, bare, exc)
