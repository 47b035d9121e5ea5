"""Each execution node's scratch directory, and the clean-up of those whose node died.

A node removes its directory when it stops, but a node that is killed
(SIGKILL, a crash, a power cut) cannot, and its successor has a new executor
id. So every node holds an exclusive ``flock`` on ``<executor id>.lock`` beside
its directory for as long as it lives; the kernel releases it however the node
ends. A starting node removes every sibling directory whose lock it can take:
nobody holds it, so that node is gone. Several nodes may share the scratch
root; a live node's lock is never free, so its files are never touched.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"


class NodeScratch:
    """This node's scratch directory, locked for the node's life."""

    def __init__(self, scratch_root: Path, executor_id: str) -> None:
        scratch_root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root = scratch_root / executor_id
        self._lock_path = scratch_root / f"{executor_id}{LOCK_SUFFIX}"
        # Locked before the directory exists, so no other node can take it for abandoned.
        self._lock_fd: int | None = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        removed = remove_abandoned(scratch_root, keep=self._lock_path)
        if removed:
            log.info("removed the scratch directories of %d node(s) that ended without cleaning up", removed)

    def release(self) -> None:
        """The node is stopping and has removed its directory: drop the lock and its file."""
        if self._lock_fd is None:
            return
        self._lock_path.unlink(missing_ok=True)
        os.close(self._lock_fd)
        self._lock_fd = None


def remove_abandoned(scratch_root: Path, keep: Path) -> int:
    """Remove every node directory under ``scratch_root`` whose lock nobody holds; how many."""
    removed = 0
    for lock_path in scratch_root.glob(f"*{LOCK_SUFFIX}"):
        if lock_path == keep:
            continue
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # its node just stopped cleanly
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live node
            shutil.rmtree(scratch_root / lock_path.name[: -len(LOCK_SUFFIX)], ignore_errors=True)
            lock_path.unlink(missing_ok=True)
            removed += 1
        finally:
            os.close(fd)
    return removed
