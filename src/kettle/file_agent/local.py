"""URLs that name bytes on the node itself: ``file://``, ``fusion://`` and ``data:``.

``file://`` and ``fusion://`` are a security boundary. A task's input URLs are
chosen by its users, and the execution node's disk also holds the platform's own
keys, so a path is only used when, with every symlink and ``..`` resolved, it
lies inside a directory the operator allowed (``file_agent.file_roots``, or the
fusion directory). The check is made on the path and again on the file actually
opened (through ``/proc/self/fd``), so a symlink swapped in between cannot win.
Stored files never overwrite anything: they are created exclusively. The one
exception is a copy of the same output that an earlier attempt left behind: the
node marks each file it stores with the output's record id and the attempt
(extended attribute ``user.kettle.output``), and a retried task (its first node
died after storing, before reporting) replaces only a file carrying its own
output's mark from an earlier attempt; a late earlier attempt never replaces a
later one's file. A task's output can also be written in place while the task
runs (:class:`LocalUpload`): unnamed in its target directory until the task
succeeded, then linked under its name by the same rules.
"""

from __future__ import annotations

import binascii
import contextlib
import errno
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final
from urllib.parse import unquote

from ..errors import TransferError
from .streams import CHUNK, Sink, Source
from .urls import ParsedUrl

__all__ = ["DATA_PREFIX", "FUSION_PREFIX", "LocalFiles", "LocalUpload", "OutputMark"]

FUSION_PREFIX: Final = "/TEACLAVE_FUSION_BASE/"
DATA_PREFIX: Final = "text/plain;base64,"
_PROC_FD: Final = Path("/proc/self/fd")
OUTPUT_MARK_XATTR: Final = "user.kettle.output"


@dataclass(frozen=True)
class OutputMark:
    """Which output (its record id) and which attempt of the task stored a file."""

    output: str
    attempt: int

    def encode(self) -> bytes:
        return f"{self.attempt}:{self.output}".encode()

    def replaces(self, stored: bytes) -> bool:
        """Whether a file marked ``stored`` is an earlier attempt's copy of this output."""
        attempt, _, output = stored.decode("ascii", "replace").partition(":")
        return output == self.output and attempt.isdigit() and int(attempt) < self.attempt


def _inside(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def _opened_path(fd: int) -> Path | None:
    """Where an open descriptor really points (None where the system cannot tell)."""
    try:
        return Path(os.readlink(_PROC_FD / str(fd)))
    except OSError:
        return None


def _confirm_inside(fd: int, roots: Sequence[Path], refusal: str) -> None:
    real = _opened_path(fd)
    if real is not None and not _inside(real, roots):
        os.close(fd)
        raise TransferError(refusal)


def _url_path(parsed: ParsedUrl) -> str:
    if parsed.parts.query or parsed.parts.fragment:
        raise TransferError(f"{parsed.scheme} URLs take no query string or fragment: {parsed.shown}")
    try:
        path = unquote(parsed.parts.path, errors="strict")
    except UnicodeDecodeError:
        raise TransferError(f"invalid path in {parsed.shown}") from None
    if "\x00" in path:
        raise TransferError(f"invalid path in {parsed.shown}")
    return path


def _read_fd(path: Path, roots: Sequence[Path], shown: str, refusal: str, missing: str) -> int:
    """Open an existing regular file for reading, confined to ``roots``."""
    resolved = path.resolve()
    if not _inside(resolved, roots):
        raise TransferError(refusal)
    try:
        # O_NONBLOCK: a FIFO planted in a root must not hang the worker on open.
        fd = os.open(resolved, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise TransferError(missing) from None
    except OSError as exc:
        raise TransferError(f"cannot open {shown}: {exc.strerror}") from None
    _confirm_inside(fd, roots, refusal)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise TransferError(f"{shown} is not a regular file")
    os.set_blocking(fd, True)
    return fd


def _replaceable(target: Path, mark: OutputMark) -> bool:
    """Whether ``target`` is a file an earlier attempt stored for the same output."""
    try:
        # Not following links: a symlink carries no user attribute, so one is never replaced.
        return mark.replaces(os.getxattr(target, OUTPUT_MARK_XATTR, follow_symlinks=False))
    except OSError:
        return False


def _create_exclusive(target: Path, shown: str, mark: OutputMark | None) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(target, flags, 0o644)
    except FileExistsError:
        if mark is None or not _replaceable(target, mark):
            raise TransferError(f"{shown} already exists; a stored file never replaces one") from None
    # An earlier attempt at this same output stored it (or part of it) and its node died before
    # the result was reported: this attempt's file replaces it.
    try:
        target.unlink()
        return os.open(target, flags, 0o644)
    except FileExistsError:
        raise TransferError(f"{shown} already exists; a stored file never replaces one") from None
    except OSError as exc:
        raise TransferError(f"cannot replace {shown}: {exc.strerror}") from None


def _confined_parent(path: Path, roots: Sequence[Path], shown: str, refusal: str, *, make_parents: bool) -> Path:
    """The resolved directory ``path`` goes into, refused unless it lies inside ``roots``
    (checked again after creating it, when ``make_parents``: a link may have appeared)."""
    if path.name in ("", ".", ".."):
        raise TransferError(f"{shown} has no file name in its path")
    parent = path.parent.resolve()
    if not _inside(parent, roots):
        raise TransferError(refusal)
    if make_parents:
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TransferError(f"cannot create the directory for {shown}: {exc.strerror}") from None
        parent = parent.resolve()
        if not _inside(parent, roots):
            raise TransferError(refusal)
    return parent


def _write_fd(
    path: Path, roots: Sequence[Path], shown: str, refusal: str, *, make_parents: bool, mark: OutputMark | None
) -> tuple[int, Path]:
    """Create a new file for writing, confined to ``roots``.

    An existing file is never touched, unless an earlier attempt stored it for the same
    output (``mark``): then it is replaced."""
    parent = _confined_parent(path, roots, shown, refusal, make_parents=make_parents)
    if not parent.is_dir():
        raise TransferError(f"the directory of {shown} does not exist")
    target = parent / path.name
    try:
        fd = _create_exclusive(target, shown, mark)
    except OSError as exc:
        raise TransferError(f"cannot create {shown}: {exc.strerror}") from None
    real = _opened_path(fd)
    if real is not None and not _inside(real, roots):
        os.close(fd)
        # Only remove what was created here, at the place the descriptor shows.
        real.unlink(missing_ok=True)
        raise TransferError(refusal)
    if mark is not None:
        try:
            os.setxattr(fd, OUTPUT_MARK_XATTR, mark.encode())
        except OSError:
            pass  # a file system without user attributes: a retry then finds the file unmarked and refuses
    return fd, target


def _copy_in(fd: int, sink: Sink) -> None:
    # One buffer for the whole file (the sink keeps nothing it is handed): no allocation per chunk.
    with os.fdopen(fd, "rb", buffering=0) as file:
        sink.announce(os.fstat(file.fileno()).st_size)
        buffer = memoryview(bytearray(CHUNK))
        while count := file.readinto(buffer):
            sink.write(buffer[:count])


def _copy_out(source: Source, fd: int, target: Path, shown: str) -> None:
    try:
        with os.fdopen(fd, "wb") as file:
            for chunk in source.chunks():
                file.write(chunk)
    except BaseException as exc:
        target.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise TransferError(f"cannot write {shown}: {exc.strerror}") from None
        raise


class LocalUpload:
    """A local output written in place while the task runs, published only by :meth:`commit`.

    The file is created unnamed (``O_TMPFILE``) in the target's directory, which was
    checked to lie inside the allowed roots and is held open, so nothing can be
    redirected between now and the commit. Until :meth:`commit` links it under
    its name, nobody sees it, and a task that fails (or a node that dies) leaves
    nothing behind. The commit follows :meth:`LocalFiles.store_file`'s rules: an
    existing file is never replaced, except an earlier attempt's copy of the same
    output (``mark``).
    """

    def __init__(self, directory: int, fd: int, name: str, limit: int, shown: str, mark: OutputMark | None) -> None:
        self.file: BinaryIO = os.fdopen(fd, "w+b", closefd=False)
        """Where the output's bytes go (readable and seekable: a protected file rewrites its
        header); the writer may close it, the file stays open here until the commit."""
        self._fd = fd
        self._directory = directory
        self._name = name
        self._limit = limit
        self._shown = shown
        self._mark = mark

    def commit(self) -> None:
        """Publish the file under its name (TransferError if that is refused); it is closed after."""
        try:
            if not self.file.closed:
                self.file.flush()
            fd = self._fd
            if os.fstat(fd).st_size > self._limit:
                raise TransferError(f"output {self._shown} is larger than the limit of {self._limit} bytes")
            if self._mark is not None:
                with contextlib.suppress(OSError):  # no user attributes: a retry finds it unmarked, refuses
                    os.setxattr(fd, OUTPUT_MARK_XATTR, self._mark.encode())
            self._link(fd)
        except OSError as exc:
            raise TransferError(f"cannot write {self._shown}: {exc.strerror}") from None
        finally:
            self.discard()

    def _link(self, fd: int) -> None:
        # linkat through /proc with AT_SYMLINK_FOLLOW names an O_TMPFILE file without privileges.
        source = f"{_PROC_FD}/{fd}"
        try:
            os.link(source, self._name, dst_dir_fd=self._directory, follow_symlinks=True)
            return
        except FileExistsError:
            if self._mark is None or not self._replaceable():
                raise TransferError(f"{self._shown} already exists; a stored file never replaces one") from None
        # An earlier attempt at this same output stored it and its node died before the result
        # was reported: this attempt's file replaces it.
        try:
            os.unlink(self._name, dir_fd=self._directory)
            os.link(source, self._name, dst_dir_fd=self._directory, follow_symlinks=True)
        except FileExistsError:
            raise TransferError(f"{self._shown} already exists; a stored file never replaces one") from None

    def _replaceable(self) -> bool:
        assert self._mark is not None
        try:
            stored = os.getxattr(f"{_PROC_FD}/{self._directory}/{self._name}", OUTPUT_MARK_XATTR, follow_symlinks=False)
        except OSError:
            return False
        return self._mark.replaces(stored)

    def discard(self) -> None:
        """Drop the file unpublished (after a commit: just close)."""
        with contextlib.suppress(OSError):
            self.file.close()
        if self._directory >= 0:
            os.close(self._fd)
            os.close(self._directory)
            self._directory = -1


def _open_upload(
    path: Path, roots: Sequence[Path], shown: str, refusal: str, limit: int, *, make_parents: bool,
    mark: OutputMark | None,
) -> LocalUpload | None:
    """A :class:`LocalUpload` for ``path`` confined to ``roots``; None where the file system
    cannot create unnamed files (the caller then writes a local copy and stores it)."""
    parent = _confined_parent(path, roots, shown, refusal, make_parents=make_parents)
    try:
        directory = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise TransferError(f"the directory of {shown} does not exist") from None
    except OSError as exc:
        raise TransferError(f"cannot open the directory of {shown}: {exc.strerror}") from None
    real = _opened_path(directory)
    if real is not None and not _inside(real, roots):
        os.close(directory)
        raise TransferError(refusal)
    try:
        fd = os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o644, dir_fd=directory)
    except OSError as exc:
        os.close(directory)
        if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR):
            return None
        raise TransferError(f"cannot create {shown}: {exc.strerror}") from None
    return LocalUpload(directory, fd, path.name, limit, shown, mark)


class LocalFiles:
    """``file://`` (inside ``file_roots``), ``fusion://`` (inside the fusion directory) and ``data:``."""

    def __init__(self, file_roots: Sequence[Path], fusion_dir: Path) -> None:
        self._file_roots = tuple(file_roots)
        self._fusion_dir = fusion_dir

    # Resolved at each use, not once: a root may be created (or re-pointed) after start.
    @property
    def _roots(self) -> tuple[Path, ...]:
        return tuple(root.resolve() for root in self._file_roots)

    @property
    def _fusion(self) -> Path:
        return self._fusion_dir.resolve()

    # -- file:// ---------------------------------------------------------------

    def _file_path(self, parsed: ParsedUrl) -> tuple[Path, str]:
        if not self._roots:
            raise TransferError(
                f"file URLs need file_agent.file_roots, and none is configured: {parsed.shown} is refused"
            )
        if parsed.parts.netloc not in ("", "localhost"):
            raise TransferError(f"file URLs must not name a host: {parsed.shown}")
        path = _url_path(parsed)
        if not path.startswith("/"):
            raise TransferError(f"file URL {parsed.shown} has no absolute path")
        refusal = f"{parsed.shown} is outside the directories file URLs may use (file_agent.file_roots)"
        return Path(path), refusal

    def fetch_file(self, parsed: ParsedUrl, sink: Sink) -> None:
        path, refusal = self._file_path(parsed)
        fd = _read_fd(path, self._roots, parsed.shown, refusal, f"no file at {parsed.shown}")
        _copy_in(fd, sink)

    def store_file(self, source: Source, parsed: ParsedUrl, mark: OutputMark | None = None) -> None:
        path, refusal = self._file_path(parsed)
        fd, target = _write_fd(path, self._roots, parsed.shown, refusal, make_parents=False, mark=mark)
        _copy_out(source, fd, target, parsed.shown)

    def open_upload_file(self, parsed: ParsedUrl, limit: int, mark: OutputMark | None = None) -> LocalUpload | None:
        path, refusal = self._file_path(parsed)
        return _open_upload(path, self._roots, parsed.shown, refusal, limit, make_parents=False, mark=mark)

    # -- fusion:// -------------------------------------------------------------

    def _fusion_path(self, parsed: ParsedUrl) -> tuple[Path, str]:
        if parsed.parts.netloc or not parsed.parts.path.startswith(FUSION_PREFIX):
            raise TransferError(f"fusion URL {parsed.shown} does not start with fusion://{FUSION_PREFIX}")
        relative = _url_path(parsed)[len(FUSION_PREFIX) :]
        refusal = f"{parsed.shown} points outside the fusion directory"
        parts = relative.split("/")
        if not relative or ".." in parts or relative.startswith("/"):
            raise TransferError(refusal)
        return self._fusion / relative, refusal

    def fetch_fusion(self, parsed: ParsedUrl, sink: Sink) -> None:
        path, refusal = self._fusion_path(parsed)
        fd = _read_fd(path, (self._fusion,), parsed.shown, refusal, f"no fusion file at {parsed.shown}")
        _copy_in(fd, sink)

    def store_fusion(self, source: Source, parsed: ParsedUrl, mark: OutputMark | None = None) -> None:
        path, refusal = self._fusion_path(parsed)
        fd, target = _write_fd(path, (self._fusion,), parsed.shown, refusal, make_parents=True, mark=mark)
        _copy_out(source, fd, target, parsed.shown)

    def open_upload_fusion(self, parsed: ParsedUrl, limit: int, mark: OutputMark | None = None) -> LocalUpload | None:
        path, refusal = self._fusion_path(parsed)
        return _open_upload(path, (self._fusion,), parsed.shown, refusal, limit, make_parents=True, mark=mark)

    # -- data: -----------------------------------------------------------------

    @staticmethod
    def fetch_data(parsed: ParsedUrl, sink: Sink) -> None:
        """Inline content: only ``data:text/plain;base64,<content>``, as in Teaclave."""
        body = parsed.raw.strip()[len("data:") :]
        if not body.startswith(DATA_PREFIX):
            raise TransferError(
                f"unsupported data URL {parsed.shown}: only data:{DATA_PREFIX}<content> is accepted"
            )
        encoded = body[len(DATA_PREFIX) :]
        sink.announce(len(encoded) // 4 * 3 - encoded[-2:].count("="))
        try:
            # Strict like Teaclave's decoder: alphabet, whole quads, padding only at the end.
            if len(encoded) % 4 or len(encoded) - len(encoded.rstrip("=")) > 2:
                raise ValueError("bad length or padding")
            content = binascii.a2b_base64(encoded.encode("ascii"), strict_mode=True)
        except (binascii.Error, ValueError):
            raise TransferError(f"data URL {parsed.shown} does not hold valid base64") from None
        view = memoryview(content)
        for start in range(0, len(view), CHUNK):
            sink.write(view[start : start + CHUNK])
