"""The execution node's disk guard for one task's staged inputs (``docs/limits.md``).

A task's inputs are chosen by users; without a bound, one task could fill the
node's disk and stop every task after it. Every byte a task fetches is taken
from its :class:`StagingBudget` first, which refuses past the task's byte
budget, and also when the scratch disk would be left with less than the
free-space floor (several tasks and other processes share that disk, so the
task's own budget alone cannot protect it). An ``aes-gcm-*`` input is decrypted
into its scratch copy as it arrives, so the bytes charged are those the copy
takes (plus 16 bytes per MiB of record tags).

Thread-safe: a task's inputs are fetched in parallel. The free-space reading is
injected, so the rules are tested without filling a disk.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ..errors import TransferError

__all__ = ["StagingBudget"]


class StagingBudget:
    def __init__(self, max_bytes: int, min_free_bytes: int, free_bytes: Callable[[], int]) -> None:
        """``max_bytes`` for the whole task and ``min_free_bytes`` to keep free; 0 turns either off."""
        self._max = max_bytes
        self._min_free = min_free_bytes
        self._free = free_bytes
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        return self._used

    def take(self, size: int) -> None:
        """Count ``size`` more bytes about to be written, or raise TransferError saying which limit."""
        with self._lock:
            if self._max and self._used + size > self._max:
                raise TransferError(
                    f"the task's inputs need more than this execution node's staging budget "
                    f"of {self._max:,} bytes per task"
                )
            self._check_floor(size)
            self._used += size

    def _check_floor(self, size: int) -> None:
        if self._min_free:
            free = self._free()
            if free - size < self._min_free:
                raise TransferError(
                    f"the execution node's scratch disk is too full to stage the task's inputs "
                    f"({free:,} bytes free, {self._min_free:,} must stay free)"
                )

    def give_back(self, size: int) -> None:
        """``size`` staged bytes were removed again."""
        with self._lock:
            self._used = max(0, self._used - size)
