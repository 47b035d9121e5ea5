"""The two local ends of every transfer: the fetch target and the store source.

Every backend moves bytes in :data:`CHUNK`-sized pieces between one of these and
its remote end, so memory stays constant whatever the file size, and the size
limit and "start again from nothing" for retries are enforced in one place.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Final, Protocol

from ..errors import TransferError
from .budget import StagingBudget

__all__ = ["CHUNK", "FetchTarget", "FileTarget", "Sink", "Source"]

CHUNK: Final = 1 << 20
"""Bytes moved per read or write: big enough to be fast, small enough to never matter."""


class FetchTarget(Protocol):
    """Where fetched bytes go: a local file (:class:`FileTarget`) or a consumer that
    processes them as they arrive (a decryptor staging a verified copy)."""

    def write(self, data: bytes | bytearray | memoryview, /) -> object:
        """Take the next bytes; must not keep ``data`` (backends reuse their buffers)."""

    def reset(self) -> None:
        """Forget everything written: a retried fetch starts over."""


class FileTarget:
    """A local file as a :class:`FetchTarget`."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file

    def write(self, data: bytes | bytearray | memoryview, /) -> object:
        return self._file.write(data)

    def reset(self) -> None:
        self._file.seek(0)
        self._file.truncate()


class Sink:
    """The fetch target as backends see it: counting and bounding what arrives.

    Backends only :meth:`write` to it; the agent owns the target and removes it on
    failure, so a failed fetch never leaves a partial file behind whatever the backend did.
    """

    def __init__(self, target: FetchTarget, limit: int, shown: str, budget: StagingBudget | None = None) -> None:
        self._target = target
        self._limit = limit
        self._shown = shown
        self._budget = budget
        self.count = 0

    def _too_large(self) -> TransferError:
        return TransferError(f"input {self._shown} is larger than the limit of {self._limit} bytes")

    def announce(self, size: int | None) -> None:
        """Refuse up front when the remote end already says the file is too large."""
        if size is not None and size > self._limit:
            raise self._too_large()

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        """Append ``chunk``, stopping as soon as the total passes the limit."""
        self.count += len(chunk)
        if self.count > self._limit:
            raise self._too_large()
        if self._budget is not None:
            self._budget.take(len(chunk))
        try:
            self._target.write(chunk)
        except OSError as exc:
            raise TransferError(f"cannot write {self._shown} to local storage: {exc.strerror}") from None

    def reset(self) -> None:
        """Empty the target so a retried fetch starts over (keeping the exclusive handle)."""
        self._target.reset()
        if self._budget is not None:
            self._budget.give_back(self.count)
        self.count = 0


class Source:
    """The local file to store, checked once: a regular file within the size limit.

    The size is taken before anything is sent (HTTP needs it as Content-Length)
    and exactly that many bytes are sent, so a file changing under the upload
    makes it fail instead of sending something nobody registered.
    """

    def __init__(self, path: Path, limit: int, shown: str) -> None:
        self.path = path
        self.shown = shown
        try:
            info = path.stat()
        except OSError as exc:
            raise TransferError(f"cannot read the output for {shown}: {exc.strerror}") from None
        if not stat.S_ISREG(info.st_mode):
            raise TransferError(f"the output for {shown} is not a regular file")
        if info.st_size > limit:
            raise TransferError(f"output {shown} is larger than the limit of {limit} bytes")
        self.size = info.st_size

    def open(self) -> BinaryIO:
        try:
            return self.path.open("rb")
        except OSError as exc:
            raise TransferError(f"cannot read the output for {self.shown}: {exc.strerror}") from None

    def chunks(self) -> Iterator[bytes]:
        """Exactly :attr:`size` bytes of the file, a chunk at a time (re-readable per attempt)."""
        with self.open() as file:
            remaining = self.size
            while remaining:
                try:
                    chunk = file.read(min(CHUNK, remaining))
                except OSError as exc:
                    raise TransferError(f"cannot read the output for {self.shown}: {exc.strerror}") from None
                if not chunk:
                    raise TransferError(f"the output for {self.shown} shrank while it was being stored")
                remaining -= len(chunk)
                yield chunk
            if file.read(1):
                raise TransferError(f"the output for {self.shown} grew while it was being stored")


def open_exclusive(target: Path, shown: str) -> BinaryIO:
    """Create the fetch target, refusing an existing one (it is never touched then)."""
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise TransferError(f"cannot fetch {shown}: the local file {target.name} already exists") from None
    except OSError as exc:
        raise TransferError(f"cannot create the local file for {shown}: {exc.strerror}") from None
    return os.fdopen(fd, "wb")
