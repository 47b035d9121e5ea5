"""What a Python payload sees while it runs in the sandboxed child (``spec/functions.md`` §6).

The shipped Teaclave payloads are Python 2 programs written for MesaPy. This
module lets them run unchanged on CPython 3: the ``teaclave`` module and
``teaclave_open`` builtin over the task's files (§6.3), reads that return
:class:`Py2Str` (bytes that also behave like text, §6.9), the ``_numpypy`` shim
over numpy (§6.5), and :func:`run_payload`, which executes a payload and turns
its outcome into the task's return value or a :class:`PayloadFailure` (§6.2,
§6.6 with Kettle's override: failures end the task as Failed).

Only :func:`flatten_arguments` runs on the trusted side. Everything else runs in
the child, so the module imports nothing but the standard library at load time;
numpy is imported when a payload first uses ``_numpypy``.
"""

from __future__ import annotations

import builtins
import functools
import gc
import io
import json
import linecache
import math
import os
import sys
import types
from collections.abc import Callable, Iterable
from traceback import format_exception
from typing import Any, Protocol

PAYLOAD_MODULE_NAME = "__payload__"
"""The payload's ``__name__``: anything but ``"__main__"``, so its main block does not run (§6.2)."""

PAYLOAD_FILENAME = "<payload>"
REASON_LIMIT = 1024
WRITE_BUFFER_SIZE = 8192
READ_CHUNK_SIZE = 65536
NOT_SUPPORTED = "Teaclave Not Supported"
CLOSED_FILE = "I/O operation on closed file"
"""CPython's ``FileIO`` text (its buffered classes say ``read of closed file`` etc.); the spec's choice."""


class FileChannel(Protocol):
    """The task's files as the sandbox hands them over: one new file descriptor per open."""

    def open_input(self, name: str) -> int:
        """A new readable fd at byte 0 of the input's plaintext; LookupError if ``name`` is not an assigned input."""

    def create_output(self, name: str) -> int:
        """A new writable fd for the created (or truncated) output; LookupError if ``name`` is not an assigned one."""


class PayloadFailure(Exception):
    """The payload failed: ``type_name``, ``message`` (cut to 1 KiB together as the reason) and ``traceback`` text.

    The traceback is for the task log (§6.6); only :attr:`reason` reaches the task result.
    """

    def __init__(self, type_name: str, message: str, traceback: str = "") -> None:
        super().__init__(type_name, message, traceback)
        self.type_name = type_name
        self.message = message
        self.traceback = traceback

    @property
    def reason(self) -> str:
        """``Type: message`` (``Type`` alone for an empty message), at most 1 KiB of UTF-8."""
        text = f"{self.type_name}: {self.message}" if self.message else self.type_name
        # "replace" because a payload's message may hold lone surrogates, which UTF-8 cannot carry.
        return text.encode("utf-8", "replace")[:REASON_LIMIT].decode("utf-8", "ignore")

    def __str__(self) -> str:
        return self.reason


# --- argv (§3.3) ---------------------------------------------------------------------------------


def flatten_arguments(arguments: dict[str, Any]) -> list[str]:
    """The payload's argv: each key in sorted order followed by its value (§3.3).

    String values go in raw; any other value as the reference's compact JSON,
    whose floats follow Appendix A.3 (``0.00001``, ``1e16``) rather than Python's
    ``repr`` (``1e-05``, ``1e+16``).
    """
    from kettle.functions._numbers import format_shortest

    def compact(value: Any) -> str:
        if isinstance(value, str):
            return json.dumps(value, ensure_ascii=False)
        if value is None:
            return "null"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int):
            if -(2**63) <= value < 2**64:
                return str(value)
            # The reference's parser reads integers beyond 64 bits as doubles; past the double
            # range that is an infinity, which A.3 writes as null.
            try:
                value = float(value)
            except OverflowError:
                value = math.copysign(math.inf, value)
        if isinstance(value, float):
            return format_shortest(value)
        if isinstance(value, dict):
            return "{" + ",".join(f"{compact(key)}:{compact(item)}" for key, item in sorted(value.items())) + "}"
        if isinstance(value, list | tuple):
            return "[" + ",".join(map(compact, value)) + "]"
        raise TypeError(f"{type(value).__name__} is not a JSON value")

    argv: list[str] = []
    for key in sorted(arguments):
        value = arguments[key]
        argv += [key, value if isinstance(value, str) else compact(value)]
    return argv


# --- py2str (§6.9) -------------------------------------------------------------------------------


def _encode(text: str) -> bytes:
    # surrogateescape matches Py2Str.__str__, so text taken from a read and written back keeps its bytes.
    return text.encode("utf-8", "surrogateescape")


def _as_bytes(value: Any) -> Any:
    """A ``str`` operand (also inside a tuple, as ``startswith`` takes) as UTF-8; anything else unchanged."""
    if isinstance(value, str):
        return _encode(value)
    if isinstance(value, tuple):
        return tuple(map(_as_bytes, value))
    return value


def _as_py2str(value: Any) -> Any:
    """Bytes results (also inside lists and tuples, as ``split``/``partition`` give) as Py2Str."""
    if isinstance(value, bytes):
        return Py2Str(value)
    if isinstance(value, list | tuple):
        return type(value)(map(_as_py2str, value))
    return value


class Py2Str(bytes):
    """What ``rb`` reads return: a ``bytes`` that also stands in for a Python 2 ``str``.

    Python 2 payloads compare what they read with literals (``line == "Hello\\n"``)
    and split it with text separators; on CPython 3 those literals are ``str``.
    So equality, ``in``, ``+``, ``%``, slicing and the usual string methods take
    ``str`` operands (as UTF-8) and give Py2Str back. ``str(x)`` is the decoded
    text, as the Python 2 idiom ``str(x)`` expects (undecodable bytes become
    surrogate escapes, which writing the text back restores). Indexing and
    iteration still give integers, as Python 3 payloads expect of bytes.

    The hash is the bytes hash, which equals the ``str`` hash for ASCII text; a
    non-ASCII Py2Str equals its text but hashes like its bytes (Python 2 did not
    treat non-ASCII ``str`` and ``unicode`` as equal either).
    """

    __slots__ = ()
    __hash__ = bytes.__hash__

    def __eq__(self, other: object) -> bool:
        return bytes.__eq__(self, _comparable(other))

    def __ne__(self, other: object) -> bool:
        return bytes.__ne__(self, _comparable(other))

    def __str__(self) -> str:
        return self.decode("utf-8", "surrogateescape")

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    def __contains__(self, item: object) -> bool:
        return bytes.__contains__(self, _as_bytes(item))

    def __add__(self, other: Any) -> Py2Str:
        return Py2Str(bytes.__add__(self, _as_bytes(other)))

    def __radd__(self, other: Any) -> Any:
        # Reached for ``"text" + py2str`` (str has no numeric ``+``, so Python asks the right operand)
        # and, before bytes.__add__, for ``b"..." + py2str`` (the right operand is a subclass).
        other = _as_bytes(other)
        return Py2Str(bytes.__add__(other, self)) if isinstance(other, bytes) else NotImplemented

    def __mod__(self, values: Any) -> Py2Str:
        # Formatting as text lets ``%s`` take str and Py2Str values alike, as it did in Python 2.
        return Py2Str(_encode(str(self) % values))

    def __getitem__(self, key: Any) -> Any:
        item = bytes.__getitem__(self, key)
        return Py2Str(item) if isinstance(key, slice) else item

    def join(self, items: Iterable[Any]) -> Py2Str:
        return Py2Str(bytes.join(self, [_as_bytes(item) for item in items]))


def _comparable(other: object) -> object:
    """``other`` ready for a bytes comparison; text that has no UTF-8 form simply compares unequal."""
    if isinstance(other, str):
        try:
            return _encode(other)
        except UnicodeEncodeError:
            return other
    return other


def _text_method(name: str) -> Callable[..., Any]:
    method = getattr(bytes, name)

    @functools.wraps(method)
    def call(self: Py2Str, *args: Any, **kwargs: Any) -> Any:
        keywords = {key: _as_bytes(value) for key, value in kwargs.items()}
        return _as_py2str(method(self, *map(_as_bytes, args), **keywords))

    return call


for _name in ("split", "rsplit", "splitlines", "strip", "lstrip", "rstrip", "startswith", "endswith",
              "replace", "find", "rfind", "index", "rindex", "count", "partition", "rpartition",
              "lower", "upper"):
    setattr(Py2Str, _name, _text_method(_name))
del _name


# --- files (§6.3) --------------------------------------------------------------------------------


def _error(kind: type[Exception], text: str) -> Exception:
    """``kind(text)`` carrying Python 2's ``.message`` attribute, which payloads read (§6.9 item 4)."""
    error = kind(text)
    error.message = text  # type: ignore[attr-defined]
    return error


def _ffi_error(operation: str) -> Exception:
    return _error(RuntimeError, f"{operation}: teaclave_ffi_error")


def _unsupported(name: str) -> Callable[..., Any]:
    def refuse(self: _PayloadFile, *args: Any) -> Any:
        raise _error(io.UnsupportedOperation, name)

    refuse.__name__ = name
    return refuse


class _PayloadFile:
    """A buffered binary reader (``rb``) or writer (``wb``) over one fd from the channel.

    Written by hand rather than wrapping ``io.FileIO``: the fd may be a regular
    file, where FileIO would allow seeking, and every failure must carry the
    reference's texts. Its only link to the task is the fd; it never sees the channel.
    """

    def __init__(self, name: str, mode: str, fd: int) -> None:
        self.name = name
        self.mode = mode
        self._fd = fd
        self._closed = False
        self._buffer = bytearray()  # reader: bytes read ahead; writer: bytes not yet written
        self._eof = False

    def __repr__(self) -> str:
        return f"<teaclave file {self.name!r} mode {self.mode!r}{' closed' if self._closed else ''}>"

    @property
    def closed(self) -> bool:
        return self._closed

    def _check(self, reading: bool | None = None) -> None:
        """Refuse a closed file, and (when ``reading`` is given) the wrong direction."""
        if self._closed:
            raise _error(ValueError, CLOSED_FILE)
        if reading is not None and reading != (self.mode == "rb"):
            raise _error(io.UnsupportedOperation, f"File not open for {'reading' if reading else 'writing'}")

    def readable(self) -> bool:
        self._check()
        return self.mode == "rb"

    def writable(self) -> bool:
        self._check()
        return self.mode == "wb"

    def seekable(self) -> bool:
        return False

    seek = _unsupported("seek")
    tell = _unsupported("tell")
    truncate = _unsupported("truncate")
    fileno = _unsupported("fileno")
    isatty = _unsupported("isatty")

    def __enter__(self) -> _PayloadFile:
        self._check()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # reading

    def _fill(self, operation: str) -> bool:
        """Append one more chunk to the buffer; False at end of file."""
        if self._eof:
            return False
        try:
            chunk = os.read(self._fd, READ_CHUNK_SIZE)
        except OSError:
            raise _ffi_error(operation) from None
        self._buffer += chunk
        self._eof = not chunk
        return not self._eof

    def _take(self, size: int) -> Py2Str:
        data = Py2Str(self._buffer[:size])
        del self._buffer[:size]
        return data

    def _read_up_to(self, size: int, operation: str) -> Py2Str:
        while len(self._buffer) < size and self._fill(operation):
            pass
        return self._take(size)

    def read(self, size: int | None = -1) -> Py2Str:
        self._check(reading=True)
        if size is not None and size >= 0:
            return self._read_up_to(size, "fileio_read")
        while self._fill("fileio_readall"):
            pass
        return self._take(len(self._buffer))

    def readline(self, size: int | None = -1) -> Py2Str:
        self._check(reading=True)
        limit = -1 if size is None else size
        scanned = 0
        while (newline := self._buffer.find(b"\n", scanned)) < 0:
            scanned = len(self._buffer)
            if 0 <= limit <= scanned or not self._fill("fileio_read"):
                length = scanned
                break
        else:
            length = newline + 1
        return self._take(length if limit < 0 else min(length, limit))

    def readlines(self, hint: int | None = -1) -> list[Py2Str]:
        """All remaining lines, or (``hint`` > 0) lines until their total size reaches ``hint``."""
        lines: list[Py2Str] = []
        total = 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                break
        return lines

    def readinto(self, buffer: Any) -> int:
        self._check(reading=True)
        with memoryview(buffer) as view, view.cast("B") as target:
            data = self._read_up_to(len(target), "fileio_readinto")
            target[:len(data)] = data
        return len(data)

    def __iter__(self) -> _PayloadFile:
        self._check(reading=True)
        return self

    def __next__(self) -> Py2Str:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    # writing

    def _drain(self) -> None:
        # os.write may take only part of the buffer (a full pipe): loop until all of it is out.
        while self._buffer:
            try:
                written = os.write(self._fd, self._buffer)
            except OSError:
                raise _ffi_error("fileio_write") from None
            del self._buffer[:written]

    def write(self, data: Any) -> int:
        """Buffer ``data`` (text is written as UTF-8); the number of bytes it adds."""
        self._check(reading=False)
        if isinstance(data, str):
            data = _encode(data)
        with memoryview(data) as view:
            count = view.nbytes
            self._buffer += view
        if len(self._buffer) >= WRITE_BUFFER_SIZE:
            self._drain()
        return count

    def writelines(self, lines: Iterable[Any]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._check()
        if self.mode == "wb":
            self._drain()

    def close(self) -> None:
        """Flush a writer and release the fd; closing twice is harmless, as for any Python file."""
        if self._closed:
            return
        try:
            if self.mode == "wb":
                self._drain()
        finally:
            self._closed = True
            self._buffer.clear()
            try:
                os.close(self._fd)
            except OSError:
                raise _ffi_error("fileio_close") from None


def _file_mode(mode: str) -> str:
    """``rb`` or ``wb`` for an accepted ``mode``; otherwise ``io.open``'s errors, then Teaclave's (§6.3)."""
    if not isinstance(mode, str):
        raise TypeError(f"open() argument 'mode' must be str, not {type(mode).__name__}")
    letters = set(mode)
    if letters - set("rwab+t") or len(letters) < len(mode):
        raise _error(ValueError, f"invalid mode: {mode!r}")
    if {"t", "b"} <= letters:
        raise _error(ValueError, "can't have text and binary mode at once")
    if len(letters & set("rwa")) != 1:
        raise _error(ValueError, "must have exactly one of read/write/append mode")
    if letters & set("a+"):  # valid for io.open, but the runtime has no append or update (§4.2)
        raise _error(ValueError, f"invalid mode: {mode!r}")
    if "b" not in letters:
        raise _error(RuntimeError, NOT_SUPPORTED)
    return "rb" if "r" in letters else "wb"


# --- _numpypy (§6.5) -----------------------------------------------------------------------------


@functools.cache
def _mesapy_array() -> type:
    """The ndarray subclass the shim returns: numpy in every way but ``str()``, which prints like MesaPy."""
    import numpy

    class MesaPyArray(numpy.ndarray):
        def __str__(self) -> str:
            # MesaPy printed a vector, or a one-row matrix, as one row of Python float reprs:
            # the documented prediction text is "[1.0 1.0 0.0 0.0 0.0]", numpy's "[[1. 1. 0. 0. 0.]]".
            if self.ndim == 1 or (self.ndim == 2 and self.shape[0] == 1):
                return "[" + " ".join(map(repr, self.ravel().tolist())) + "]"
            return super().__str__()

        def __array_wrap__(self, array: Any, context: Any = None, return_scalar: bool = False) -> Any:
            # Reductions of a plain ndarray give numpy scalars (the payload's bias ``b`` is one);
            # numpy wraps a subclass's instead, unless the subclass asks for the scalar.
            wrapped = super().__array_wrap__(array, context)
            return wrapped[()] if return_scalar else wrapped

    return MesaPyArray


def _numpy_module(name: str, **functions: Callable[..., Any]) -> types.ModuleType:
    """A module with ``functions``; any other public name is numpy's, imported on first use."""
    module = types.ModuleType(name)
    module.__dict__.update(functions)

    def __getattr__(attribute: str) -> Any:
        if attribute.startswith("_"):
            raise AttributeError(f"module {name!r} has no attribute {attribute!r}")
        import numpy

        return getattr(numpy, attribute)

    module.__dict__["__getattr__"] = __getattr__
    return module


def _numpypy_modules() -> dict[str, types.ModuleType]:
    """``_numpypy`` and its ``multiarray`` and ``umath`` submodules, keyed as sys.modules wants them."""

    def array(*args: Any, **kwargs: Any) -> Any:
        import numpy

        return numpy.array(*args, **kwargs).view(_mesapy_array())

    def zeros(*args: Any, **kwargs: Any) -> Any:
        import numpy

        return numpy.zeros(*args, **kwargs).view(_mesapy_array())

    def frombuffer(*args: Any, **kwargs: Any) -> Any:
        import numpy

        return numpy.frombuffer(*args, **kwargs).view(_mesapy_array())

    multiarray = _numpy_module("_numpypy.multiarray", array=array, zeros=zeros, frombuffer=frombuffer)
    umath = _numpy_module("_numpypy.umath")  # exp, log, ...: ufuncs keep the argument's array type
    package = types.ModuleType("_numpypy", "MesaPy's micronumpy, as a shim over numpy.")
    package.multiarray = multiarray  # type: ignore[attr-defined]
    package.umath = umath  # type: ignore[attr-defined]
    return {"_numpypy": package, "_numpypy.multiarray": multiarray, "_numpypy.umath": umath}


# --- installing and running ----------------------------------------------------------------------


def install(channel: FileChannel) -> None:
    """Make ``teaclave`` (module with ``open``), the ``teaclave_open`` builtin and the ``_numpypy`` shim available."""
    _install(channel)


def _install(channel: FileChannel) -> Callable[[], None]:
    """:func:`install`, returning the function that closes every file opened through this installation."""
    # Strong references: a dropped writer is flushed at the end of the run, where a failure can still
    # fail the task, not in a finalizer whose error Python would only print.
    opened: list[_PayloadFile] = []

    # The channel lives only in this closure: the payload gets file objects holding an fd, not the channel.
    def teaclave_open(name: str, mode: str = "r") -> _PayloadFile:
        """Open the task's input (``"rb"``) or output (``"wb"``) registered as ``name``."""
        kind = _file_mode(mode)
        if isinstance(name, bytes):
            name = name.decode("utf-8", "surrogateescape")
        try:
            fd = channel.open_input(name) if kind == "rb" else channel.create_output(name)
        except Exception:
            # Unknown names, absent optional files and staging failures look alike to the payload (§6.3).
            raise _ffi_error("fileio_init") from None
        file = _PayloadFile(name, kind, fd)
        opened.append(file)
        return file

    def close_all() -> None:
        failure: Exception | None = None
        for file in opened:
            try:
                _PayloadFile.close(file)  # the class's close, even if the payload replaced the attribute
            except RuntimeError as error:
                failure = failure or error
        opened.clear()
        if failure is not None:
            raise failure

    teaclave = types.ModuleType("teaclave", "The task's files: open(name, mode) with mode 'rb' or 'wb'.")
    teaclave.open = teaclave_open  # type: ignore[attr-defined]
    sys.modules["teaclave"] = teaclave
    builtins.teaclave_open = teaclave_open  # type: ignore[attr-defined]
    sys.modules.update(_numpypy_modules())
    return close_all


def run_payload(source: bytes, argv: list[str], channel: FileChannel) -> str:
    """Run the payload's ``entrypoint(argv)`` and give its return value as text (§6.1, §6.2, §6.6).

    Every file the payload opened is closed (writers flushed) before this
    returns, also when it failed. Raises :class:`PayloadFailure` for anything
    that escapes the payload (SystemExit and KeyboardInterrupt included), for a
    return value that is not None, str or bytes, and for bytes that are not UTF-8
    (a little more permissive than the reference's ASCII).
    """
    close_files = _install(channel)
    failure: PayloadFailure | None = None
    result: Any = None
    try:
        result = _call_entrypoint(source, argv)
    except BaseException as error:  # a payload must not end the child its own way
        failure = _failure(error)
    # Objects the payload dropped may still hold files or have finalizers that write (§6.2 step 4).
    gc.collect()
    try:
        close_files()
    except RuntimeError as error:
        if failure is None:
            failure = _failure(error)
    if failure is not None:
        raise failure
    return _return_text(result)


def _call_entrypoint(source: bytes, argv: list[str]) -> Any:
    # The reference appends a NUL and reads up to the first one (§6.1). utf-8-sig drops a byte-order
    # mark, which Python 2 accepted in source files and compile() rejects in text.
    text = source.split(b"\0", 1)[0].decode("utf-8-sig")
    linecache.cache[PAYLOAD_FILENAME] = (len(text), None, text.splitlines(True), PAYLOAD_FILENAME)
    arguments = list(argv)
    namespace: dict[str, Any] = {"__name__": PAYLOAD_MODULE_NAME, "entrypoint_argv": arguments}
    # dont_inherit: this module's ``from __future__`` imports must not apply to the payload.
    exec(compile(text, PAYLOAD_FILENAME, "exec", dont_inherit=True), namespace)
    try:
        entrypoint = namespace["entrypoint"]
    except KeyError:
        raise NameError("name 'entrypoint' is not defined") from None
    return entrypoint(arguments)


def _failure(error: BaseException) -> PayloadFailure:
    """``error`` as a PayloadFailure whose traceback starts at the payload's own frames."""
    frames = error.__traceback__
    while frames is not None and frames.tb_frame.f_code.co_filename == __file__:
        frames = frames.tb_next
    try:
        message = str(error)
    except Exception:
        message = "<exception str() failed>"  # the traceback module's text for the same case
    return PayloadFailure(type(error).__name__, message, "".join(format_exception(type(error), error, frames)))


def _return_text(result: Any) -> str:
    """§6.6 as Kettle overrides it. ``type()`` rather than isinstance: a payload object cannot fake it."""
    if result is None:
        return ""
    kind = type(result)
    if issubclass(kind, str):
        text = str.__str__(result)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            message = f"entrypoint returned text that is not valid Unicode: {error}"
            raise PayloadFailure("UnicodeEncodeError", message) from None
        return text
    if issubclass(kind, bytes | bytearray):
        try:
            return (bytes.decode if issubclass(kind, bytes) else bytearray.decode)(result, "utf-8")
        except UnicodeDecodeError as error:
            message = f"entrypoint returned bytes that are not valid UTF-8: {error}"
            raise PayloadFailure("UnicodeDecodeError", message) from None
    raise PayloadFailure("TypeError", f"entrypoint returned {kind.__name__}; expected str, bytes or None")
