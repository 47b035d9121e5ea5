"""A task's data files around its function: fetched, verified, staged, re-encrypted, uploaded.

``spec/platform.md`` §7.5 and ``spec/functions.md`` §4.2, with one rule above all:
**the function never reads a byte that was not authenticated against the cmac its
owner registered.** So every input is fully verified before the function starts:

- ``aes-gcm-*``: the GCM tag covers the whole file and is only checked at its end,
  so the file is decrypted into encrypted scratch space as it downloads
  (:class:`~kettle.crypto.aes_gcm.StagingDecryptor`), and the function reads that
  copy once the tag verified.
- ``teaclave-file-128``: the root MAC must equal the cmac, then one pass over the
  whole file checks every node; the function then reads the file itself, each
  node verified again as it is read (the file never holds plaintext).
- ``raw``: taken as it is (the owner chose no integrity).

Outputs are encrypted *as the function writes them* under the crypto info the
output's owner registered, so no output plaintext ever touches the disk; the cmac
of each is known when its writer closes. ``file``/``fusion`` outputs are written
in place (:meth:`~kettle.file_agent.FileAgent.open_upload`) and published only
when the task succeeded; others are written locally and stored afterwards.
Every assigned output must have been created; ``raw`` outputs are refused before
the function runs (a result must never leave the platform unencrypted).

Everything lives in the task's own working directory, which the execution node
creates and removes whatever the outcome. Failures raise :class:`TaskFileError`,
whose text is the task's failure reason (seen by every participant: URLs are
shown without credentials or query string).
"""

from __future__ import annotations

import contextlib
import hmac
import io
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ..config import ExecutionConfig
from ..crypto.aes_gcm import StagedPlaintext, StagingDecryptor
from ..crypto.protected_file import (
    ProtectedFileError,
    ProtectedFileReader,
    ProtectedFileWriter,
)
from ..crypto.schemas import (
    AES_GCM_128,
    AES_GCM_256,
    RAW,
    TEACLAVE_FILE_128,
    FileCryptoError,
    check_output_schema,
    missing_output_error,
    validate_crypto_info,
)
from ..errors import TransferError
from ..file_agent import (
    FileAgent,
    LocalUpload,
    OutputMark,
    StagingBudget,
    display_url,
    file_name_of,
)
from ..functions import FunctionError
from ..model.records import FileRecord, StagedTask
from .runtime import INVALID_INPUT, INVALID_OUTPUT

__all__ = ["DataPlane", "TaskFileError", "TaskFiles"]

_AES_GCM: Final = (AES_GCM_128, AES_GCM_256)
_GCM_AAD: Final = bytes(8)
_CHUNK: Final = 1 << 20
_MAX_PARALLEL_FETCHES: Final = 4


class TaskFileError(FunctionError):
    """An input or output file made the task fail; the message is the failure reason."""


@dataclass(frozen=True)
class DataPlane:
    """What a worker needs to move a task's files: the agent, the task's working directory,
    and the node's limits on what a task may stage there."""

    agent: FileAgent
    workdir: Path
    limits: ExecutionConfig = ExecutionConfig()
    attempt: int = 1
    """Which run of the task this is; outputs are stored marked with it."""

    def staging_budget(self) -> StagingBudget:
        """A fresh budget for one task, reading the free space of the disk its directory is on."""
        return StagingBudget(self.limits.max_task_input_bytes, self.limits.min_free_disk_bytes,
                             lambda: shutil.disk_usage(self.workdir).free)


class _ProtectedInput(io.RawIOBase):
    """A verified protected file as a plain readable stream (for ``open_input``)."""

    def __init__(self, path: Path, key: bytes, name: str) -> None:
        super().__init__()
        self._file = path.open("rb")
        try:
            self._reader = ProtectedFileReader(self._file, key, name)
        except BaseException:
            self._file.close()
            raise

    def readable(self) -> bool:
        return True

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._reader.read(len(target))
        target[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()


class _EncryptingOutput(io.RawIOBase):
    """An output the function writes; bytes are encrypted on the way to disk.

    ``cmac`` is set once the writer is closed (by the function, or by the
    platform after the function returned). A size cap protects the node's disk.
    """

    def __init__(self, limit: int, label: str) -> None:
        super().__init__()
        self.cmac: bytes | None = None
        self.overflowed = False
        self._written = 0
        self._limit = limit
        self._label = label

    def overflow_error(self) -> TaskFileError:
        return TaskFileError(f"output {self._label} is larger than the limit of {self._limit} bytes")

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if self.closed:
            raise ValueError("write to a closed output file")
        view = memoryview(data).cast("B")
        self._written += len(view)
        if self._written > self._limit:
            self.overflowed = True  # sticky: a function that swallows the error still fails the task
            raise self.overflow_error()
        self._encrypt(view)
        return len(view)

    def _encrypt(self, view: memoryview) -> None:
        raise NotImplementedError

    def _finish(self) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        if not self.closed:
            try:
                self.cmac = self._finish()
            finally:
                super().close()


class _AesGcmOutput(_EncryptingOutput):
    """``aes-gcm-*``: ciphertext as written, then the 16-byte tag, which is the cmac.

    Encrypts into one reused buffer (no allocation per write); ``sink`` is the local
    copy or the upload itself, and is closed with the output."""

    def __init__(self, sink: BinaryIO, key: bytes, iv: bytes, limit: int, label: str) -> None:
        super().__init__(limit, label)
        self._sink = sink
        self._encryptor = Cipher(algorithms.AES(key), modes.GCM(iv)).encryptor()
        self._encryptor.authenticate_additional_data(_GCM_AAD)
        self._buffer = memoryview(bytearray(_CHUNK + 15))  # update_into wants 15 bytes of room

    def _encrypt(self, view: memoryview) -> None:
        for start in range(0, len(view), _CHUNK):
            count = self._encryptor.update_into(view[start : start + _CHUNK], self._buffer)
            self._sink.write(self._buffer[:count])

    def _finish(self) -> bytes:
        with self._sink:
            self._sink.write(self._encryptor.finalize())
            tag = self._encryptor.tag
            self._sink.write(tag)
        return tag


class _ProtectedOutput(_EncryptingOutput):
    """``teaclave-file-128``: a protected file named after its URL's last segment; cmac = root MAC.
    ``sink`` must be readable and seekable (the writer goes back to fill in the tree)."""

    def __init__(self, sink: BinaryIO, key: bytes, name: str, limit: int, label: str) -> None:
        super().__init__(limit, label)
        self._sink = sink
        self._writer = ProtectedFileWriter(self._sink, key, name)

    def _encrypt(self, view: memoryview) -> None:
        self._writer.write(view)

    def _finish(self) -> bytes:
        with self._sink:
            return self._writer.close()


@dataclass
class _Output:
    record: FileRecord
    path: Path
    """The local copy, for targets that are stored after the function (not :attr:`upload`)."""
    name: str
    writer: _EncryptingOutput | None = None
    stream: io.BufferedWriter | None = None
    upload: LocalUpload | None = None
    """The output written in place at its URL (``file``, ``fusion``), published at the end."""

    def drop(self) -> None:
        """Close what is open and forget an unpublished upload."""
        if self.stream is not None and not self.stream.closed:
            with contextlib.suppress(Exception):
                self.stream.close()
        if self.upload is not None:
            self.upload.discard()
            self.upload = None


class TaskFiles:
    """The :class:`~kettle.functions.FunctionRuntime` of one task, and the work around it.

    Use :meth:`prepare` (fetch and verify every input, refuse unusable outputs),
    run the function against this object, then :meth:`finish` (close outputs,
    check every one was created, upload, return the tags). :meth:`close`
    forgets staged plaintexts whatever happened.
    """

    def __init__(self, staged: StagedTask, plane: DataPlane | None) -> None:
        if plane is None and (staged.input_data or staged.output_data):
            raise TaskFileError("Runtime Error: this execution node cannot move data files")
        self._plane = plane
        self._inputs = dict(staged.input_data)
        self._output_records = dict(staged.output_data)
        self._outputs: dict[str, _Output] = {}
        self._openers: dict[str, Callable[[], BinaryIO]] = {}
        self._staged: list[StagedPlaintext] = []
        self._staging: list[StagingDecryptor] = []
        """Inputs being decrypted into scratch, not verified yet: discarded unless they verify."""
        self._budget: StagingBudget | None = None

    # --- before the function ---------------------------------------------------------

    def prepare(self) -> None:
        """Check every file's crypto info and name, fetch and verify every input."""
        for name, record in sorted(self._output_records.items()):
            self._check_crypto(record)
            try:
                check_output_schema(record.crypto_info.schema)
            except FileCryptoError as exc:
                raise TaskFileError(str(exc)) from None
            self._outputs[name] = _Output(record, Path(), _local_name(record.url))
        for record in self._inputs.values():
            self._check_crypto(record)
        if not self._inputs and not self._outputs:
            return
        plane = self._require_plane()
        self._budget = plane.staging_budget()
        for name, output in self._outputs.items():
            folder = plane.workdir / "outputs" / _safe(name)
            folder.mkdir(parents=True)
            output.path = folder / output.name
        fetched = self._fetch_all(plane)
        for name in sorted(self._inputs):
            self._openers[name] = self._verify(name, self._inputs[name], fetched[name])

    def _require_plane(self) -> DataPlane:
        assert self._plane is not None  # checked in __init__ whenever there are files
        return self._plane

    @staticmethod
    def _check_crypto(record: FileRecord) -> None:
        info = record.crypto_info
        try:
            validate_crypto_info(info.schema, info.key, info.iv)
        except FileCryptoError as exc:
            raise TaskFileError(str(exc)) from None

    def _fetch_all(self, plane: DataPlane) -> dict[str, Path | StagingDecryptor]:
        """Download every input at once (a few in parallel); the first failure in name order wins.

        An ``aes-gcm-*`` input is decrypted into encrypted scratch as it arrives (one pass, the
        ciphertext is never written); :meth:`_verify` then checks its tag before anything may
        read it. Other inputs are downloaded to a local file and checked there."""
        targets: dict[str, Path | StagingDecryptor] = {}
        for name, record in self._inputs.items():
            folder = plane.workdir / "inputs" / _safe(name)
            if record.crypto_info.schema in _AES_GCM:
                if record.cmac is None:
                    raise TaskFileError(f"input {name} has no registered cmac")
                folder = folder.with_name(folder.name + "-staged")
                folder.mkdir(parents=True)
                info = record.crypto_info
                decryptor = StagingDecryptor(info.key, info.iv, record.cmac, folder, display_path=display_url(record.url))
                self._staging.append(decryptor)
                targets[name] = decryptor
            else:
                folder.mkdir(parents=True)
                targets[name] = folder / _local_name(record.url)
        if not targets:
            return targets

        def fetch(name: str) -> None:
            record, target = self._inputs[name], targets[name]
            if isinstance(target, StagingDecryptor):
                plane.agent.fetch_into(record.url, target, self._budget, record.s3_credentials)
            else:
                plane.agent.fetch(record.url, target, self._budget, record.s3_credentials)

        with ThreadPoolExecutor(max_workers=min(_MAX_PARALLEL_FETCHES, len(targets))) as pool:
            futures = {name: pool.submit(fetch, name) for name in sorted(targets)}
        for name, future in futures.items():
            error = future.exception()
            if isinstance(error, TransferError):
                raise TaskFileError(f"Failed to fetch input {name}: {error}")
            if error is not None:
                raise error
        return targets

    def _verify(self, name: str, record: FileRecord, fetched: Path | StagingDecryptor) -> Callable[[], BinaryIO]:
        info, cmac = record.crypto_info, record.cmac
        shown = display_url(record.url)
        if isinstance(fetched, StagingDecryptor):
            try:
                staged = fetched.finish()
            except FileCryptoError as exc:
                raise TaskFileError(str(exc)) from None
            except OSError as exc:
                raise TaskFileError(f"Failed to stage input {name}: {exc.strerror}") from None
            self._staging.remove(fetched)
            self._staged.append(staged)
            return staged.open
        path = fetched
        if info.schema == TEACLAVE_FILE_128:
            file_name = path.name
            try:
                with path.open("rb") as source:
                    reader = ProtectedFileReader(source, info.key, file_name)
                    if cmac is None or not hmac.compare_digest(reader.root_mac, cmac):
                        raise ProtectedFileError("root MAC differs from the registered cmac")
                    for _ in reader:  # every node, checked through the tree up to the root MAC
                        pass
            except ProtectedFileError:
                raise TaskFileError(f"Corrupted input file: {shown}") from None
            return lambda: io.BufferedReader(_ProtectedInput(path, info.key, file_name), _CHUNK)
        if info.schema == RAW:
            return lambda: path.open("rb")
        raise TaskFileError(f"Invalid crypto schema: {info.schema}")  # unreachable: checked in prepare

    # --- the function's view (FunctionRuntime) --------------------------------------

    def open_input(self, name: str) -> BinaryIO:
        opener = self._openers.get(name)
        if opener is None:
            raise FunctionError(INVALID_INPUT)
        return opener()

    def create_output(self, name: str) -> BinaryIO:
        output = self._outputs.get(name)
        if output is None:
            raise FunctionError(INVALID_OUTPUT)
        output.drop()  # created again = truncated: start a fresh encryption
        plane = self._require_plane()
        record = output.record
        try:
            output.upload = plane.agent.open_upload(record.url, record.s3_credentials,
                                                    mark=OutputMark(record.uuid, plane.attempt))
        except TransferError:
            # Not the function's business (the text names the output's URL): written locally, the
            # store after the function fails the task with this same reason, as for any store.
            output.upload = None
        sink = output.upload.file if output.upload is not None else output.path.open("w+b")
        info = record.crypto_info
        if info.schema == TEACLAVE_FILE_128:
            writer: _EncryptingOutput = _ProtectedOutput(sink, info.key, output.name, plane.agent.max_file_bytes, name)
        else:
            writer = _AesGcmOutput(sink, info.key, info.iv, plane.agent.max_file_bytes, name)
        output.writer, output.stream = writer, io.BufferedWriter(writer, _CHUNK)
        return output.stream  # type: ignore[return-value]

    # --- after the function ------------------------------------------------------------

    def finish(self) -> dict[str, bytes]:
        """Close what the function left open, require every output, upload; return the tags."""
        tags: dict[str, bytes] = {}
        for name, output in sorted(self._outputs.items()):
            if output.writer is None or output.stream is None:
                raise TaskFileError(str(missing_output_error(output.record.crypto_info.schema)))
            if output.writer.overflowed:
                raise output.writer.overflow_error()
            output.stream.close()  # flushes what the function left buffered, then seals the file
            assert output.writer.cmac is not None
            tags[name] = output.writer.cmac
        for name, output in sorted(self._outputs.items()):
            try:
                # Marked with the record's id and this attempt, so a retry of this task may replace
                # what an earlier attempt stored before its node died, and a late earlier attempt
                # can never replace what a retry stored.
                if output.upload is not None:
                    output.upload.commit()
                    output.upload = None
                else:
                    plane = self._require_plane()
                    plane.agent.store(output.path, output.record.url, output.record.s3_credentials,
                                      mark=OutputMark(output.record.uuid, plane.attempt))
            except TransferError as exc:
                raise TaskFileError(f"Failed to upload output {name}: {exc}") from None
        return tags

    def close(self) -> None:
        """Forget every staged plaintext, close open writers and remove the task's files.

        The node removes the whole working directory after the worker ends too;
        doing it here as well means nothing waits for that (or survives a node
        that died before it)."""
        for output in self._outputs.values():
            output.drop()
        for staging in self._staging:
            staging.discard()
        self._staging.clear()
        for staged in self._staged:
            staged.delete()
        self._staged.clear()
        if self._plane is not None:
            for folder in ("inputs", "outputs"):
                shutil.rmtree(self._plane.workdir / folder, ignore_errors=True)


DATA_URL_FILE_NAME: Final = "data"
"""The name of an inline ``data:`` input (it has no path): what a protected file in one is bound to."""


def _local_name(url: str) -> str:
    """The URL's last path segment: the local file name, and the name a protected file is bound to."""
    if url.split(":", 1)[0].lower() == "data":
        return DATA_URL_FILE_NAME
    try:
        return file_name_of(url)
    except TransferError as exc:
        raise TaskFileError(str(exc)) from None


def _safe(name: str) -> str:
    """A data name as a directory name: names are the function's own, but never trust a path."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).lstrip(".")
    return f"{cleaned or 'data'}-{os.urandom(4).hex()}"
