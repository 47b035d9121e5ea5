"""The Python payload API (``kettle.sandbox.payload_api``; ``spec/functions.md`` §3.3, §6).

Payloads run in this process over real files in a temporary directory; the
fixture below removes what :func:`install` puts into ``sys.modules`` and
``builtins`` after each test.
"""

from __future__ import annotations

import builtins
import io
import marshal
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from kettle.sandbox.payload_api import (
    PayloadFailure,
    Py2Str,
    flatten_arguments,
    install,
    run_payload,
)

PAYLOADS = Path(__file__).parent / "data" / "python"
VECTORS = Path("/work/shared/vectors/functions")
FFI_INIT = "fileio_init: teaclave_ffi_error"


class DirectoryChannel:
    """A FileChannel over real files; remembers every fd it handed out."""

    def __init__(self, directory: Path, inputs: dict[str, bytes] | None = None, outputs: tuple[str, ...] = ()) -> None:
        self.directory = directory
        self.inputs = set(inputs or {})
        self.outputs = set(outputs)
        self.fds: list[int] = []
        for name, data in (inputs or {}).items():
            (directory / name).write_bytes(data)

    def open_input(self, name: str) -> int:
        if name not in self.inputs:
            raise LookupError(name)
        return self._remember(os.open(self.directory / name, os.O_RDONLY))

    def create_output(self, name: str) -> int:
        if name not in self.outputs:
            raise LookupError(name)
        return self._remember(os.open(self.directory / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))

    def _remember(self, fd: int) -> int:
        self.fds.append(fd)
        return fd

    def output(self, name: str) -> bytes:
        return (self.directory / name).read_bytes()


@pytest.fixture(autouse=True)
def _restore_interpreter() -> Iterator[None]:
    yield
    for name in ("teaclave", "_numpypy", "_numpypy.multiarray", "_numpypy.umath"):
        sys.modules.pop(name, None)
    if hasattr(builtins, "teaclave_open"):
        del builtins.teaclave_open


@pytest.fixture
def channel(tmp_path: Path) -> DirectoryChannel:
    return DirectoryChannel(tmp_path, {"in_f1": b"Hello\nWorld", "lines": b"a,1\nb,2\n\nc,3"}, ("out_f1", "out_f2"))


def payload(name: str) -> bytes:
    return (PAYLOADS / name).read_bytes()


def entrypoint(body: str) -> bytes:
    """A payload whose entrypoint is ``body`` (one or more lines, indented by this function)."""
    return ("def entrypoint(argv):\n" + "".join(f"    {line}\n" for line in body.splitlines())).encode()


def failure(source: bytes, channel: DirectoryChannel, argv: list[str] | None = None) -> PayloadFailure:
    with pytest.raises(PayloadFailure) as caught:
        run_payload(source, argv or [], channel)
    return caught.value


def fd_is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


# --- argv flattening (§3.3) ----------------------------------------------------------------------


@pytest.mark.parametrize(("arguments", "argv"), [
    ({"message": "Hello", "n": 3}, ["message", "Hello", "n", "3"]),
    ({"n": 3, "message": "Hello"}, ["message", "Hello", "n", "3"]),
    ({"alpha": 0.1, "one": 1.0, "big": 1e20, "small": 0.00001, "huge": 1e16, "neg": -2.5},
     ["alpha", "0.1", "big", "1e20", "huge", "1e16", "neg", "-2.5", "one", "1.0", "small", "0.00001"]),
    ({"float": 4.0, "int": 4}, ["float", "4.0", "int", "4"]),
    ({"flag": True, "off": False, "none": None}, ["flag", "true", "none", "null", "off", "false"]),
    ({"obj": {"b": [1, 2.5, "x"], "a": {"z": None}}}, ["obj", '{"a":{"z":null},"b":[1,2.5,"x"]}']),
    ({"s": ['q"b\\s/\n\r\t\b\f\x01é']}, ["s", '["q\\"b\\\\s/\\n\\r\\t\\b\\f\\u0001é"]']),
    ({"raw": 'q"\n'}, ["raw", 'q"\n']),
    ({"u64": 2**64 - 1, "i64": -(2**63), "over": 2**64, "under": -(2**63) - 1},
     ["i64", "-9223372036854775808", "over", "1.8446744073709552e19", "u64", "18446744073709551615",
      "under", "-9.223372036854776e18"]),
    ({"message": "Hi", "save_log": "true"}, ["message", "Hi", "save_log", "true"]),
    ({}, []),
])
def test_flatten_arguments(arguments: dict, argv: list[str]) -> None:
    assert flatten_arguments(arguments) == argv


def test_flattened_argv_reaches_the_entrypoint_and_the_globals(channel: DirectoryChannel) -> None:
    argv = flatten_arguments({"n": 3, "message": "Hello"})
    source = b"def entrypoint(argv):\n    return ' '.join(argv) + '|' + str(entrypoint_argv is argv)\n"
    assert run_payload(source, argv, channel) == "message Hello n 3|True"


# --- payload files of tests/data/python ----------------------------------------------------------


def test_file_api_payload(channel: DirectoryChannel) -> None:
    assert run_payload(payload("file_api.py"), [], channel) == ""
    assert channel.output("out_f1") == b"This message is from Mesapy!"


def test_echo_payload(channel: DirectoryChannel) -> None:
    argv = flatten_arguments({"message": "Hello, Teaclave!", "save_log": "true"})
    assert run_payload(payload("echo.py"), argv, channel) == "Hello, Teaclave!"


def test_optional_file_absent(tmp_path: Path) -> None:
    assert run_payload(payload("optional_files.py"), [], DirectoryChannel(tmp_path)) == "input_data1 does not exist"


def test_optional_file_present(tmp_path: Path) -> None:
    channel = DirectoryChannel(tmp_path, {"input_data1": b"4.8,3.0,1.4,0.3,3.0\n5.1,3.5,1.4,0.2,3.0\n"})
    assert run_payload(payload("optional_files.py"), [], channel) == "4.8,3.0,1.4,0.3,3.0\n"


def test_logistic_regression_train_and_predict(tmp_path: Path) -> None:
    train_dir, predict_dir = tmp_path / "train", tmp_path / "predict"
    train_dir.mkdir()
    predict_dir.mkdir()
    train = DirectoryChannel(
        train_dir, {"input_train": (VECTORS / "logistic_regression_training" / "train.txt").read_bytes()},
        ("output_params", "output_scaler"))
    assert run_payload(payload("logistic_regression_train.py"), [], train) == "Training is finished!"

    params = marshal.loads(train.output("output_params"))
    scaler = marshal.loads(train.output("output_scaler"))
    assert sorted(params) == ["b", "w"] and sorted(scaler) == ["max", "min"]
    assert len(params["w"]) == len(scaler["max"]) == len(scaler["min"]) == 30 * 8
    assert len(params["b"]) == 8  # the numpy float scalar, marshalled as its raw buffer

    predict = DirectoryChannel(predict_dir, {
        "input_params": train.output("output_params"),
        "input_scaler": train.output("output_scaler"),
        "input_predict": (VECTORS / "logistic_regression_prediction" / "predict_input.txt").read_bytes(),
    })
    assert run_payload(payload("logistic_regression_predict.py"), [], predict) == "[1.0 1.0 0.0 0.0 0.0]"


def test_logistic_regression_probabilities_match_the_reference_example(tmp_path: Path) -> None:
    """The documented run printed probabilities of about 0.64, 0.79, 0.28, 0.08 and 0.04."""
    channel = DirectoryChannel(
        tmp_path, {"input_train": (VECTORS / "logistic_regression_training" / "train.txt").read_bytes()},
        ("output_params", "output_scaler"))
    run_payload(payload("logistic_regression_train.py"), [], channel)
    params = marshal.loads(channel.output("output_params"))
    scaler = marshal.loads(channel.output("output_scaler"))
    low, high = np.frombuffer(scaler["min"]), np.frombuffer(scaler["max"])
    rows = np.loadtxt(VECTORS / "logistic_regression_prediction" / "predict_input.txt", delimiter=",")
    z = ((rows - low) / (high - low)).dot(np.frombuffer(params["w"])) + np.frombuffer(params["b"])[0]
    assert np.round(1 / (1 + np.exp(-z)), 2).tolist() == [0.64, 0.79, 0.28, 0.08, 0.04]


# --- opening files (§6.3) ------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "kind", "text"), [
    ("r", RuntimeError, "Teaclave Not Supported"),
    ("w", RuntimeError, "Teaclave Not Supported"),
    ("rt", RuntimeError, "Teaclave Not Supported"),
    ("rr", ValueError, "invalid mode: 'rr'"),
    ("rbb", ValueError, "invalid mode: 'rbb'"),
    ("rbx", ValueError, "invalid mode: 'rbx'"),
    ("ab", ValueError, "invalid mode: 'ab'"),
    ("a", ValueError, "invalid mode: 'a'"),
    ("rb+", ValueError, "invalid mode: 'rb+'"),
    ("w+b", ValueError, "invalid mode: 'w+b'"),
    ("rtb", ValueError, "can't have text and binary mode at once"),
    ("rwb", ValueError, "must have exactly one of read/write/append mode"),
    ("b", ValueError, "must have exactly one of read/write/append mode"),
    ("", ValueError, "must have exactly one of read/write/append mode"),
])
def test_rejected_modes(channel: DirectoryChannel, mode: str, kind: type[Exception], text: str) -> None:
    install(channel)
    with pytest.raises(kind) as caught:
        builtins.teaclave_open("in_f1", mode)
    assert type(caught.value) is kind
    assert str(caught.value) == text and caught.value.message == text
    assert channel.fds == []  # the mode is checked before anything is opened


@pytest.mark.parametrize(("mode", "expected"), [("rb", "rb"), ("br", "rb"), ("wb", "wb"), ("bw", "wb")])
def test_accepted_modes(channel: DirectoryChannel, mode: str, expected: str) -> None:
    install(channel)
    name = "in_f1" if "r" in mode else "out_f1"
    with builtins.teaclave_open(name, mode) as f:
        assert f.mode == expected and f.name == name
        assert (f.readable(), f.writable()) == (expected == "rb", expected == "wb")


def test_mode_defaults_to_text_like_open(channel: DirectoryChannel) -> None:
    install(channel)
    with pytest.raises(RuntimeError, match="Teaclave Not Supported"):
        builtins.teaclave_open("in_f1")


def test_mode_must_be_text(channel: DirectoryChannel) -> None:
    install(channel)
    with pytest.raises(TypeError, match="must be str, not int"):
        builtins.teaclave_open("in_f1", 1)


@pytest.mark.parametrize(("name", "mode"), [
    ("invalid_key", "rb"), ("invalid_key", "wb"), ("out_f1", "rb"), ("in_f1", "wb"), (None, "rb"), ([], "wb"),
])
def test_unknown_names_fail_like_the_reference(channel: DirectoryChannel, name: object, mode: str) -> None:
    install(channel)
    with pytest.raises(RuntimeError) as caught:
        builtins.teaclave_open(name, mode)
    assert type(caught.value) is RuntimeError
    assert caught.value.message == str(caught.value) == FFI_INIT
    # Nothing about the channel's own error reaches the payload.
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_teaclave_module_and_builtin_are_the_same_function(channel: DirectoryChannel) -> None:
    install(channel)
    import teaclave
    from teaclave import open as teaclave_module_open

    assert teaclave.open is teaclave_module_open is builtins.teaclave_open
    with teaclave_module_open(b"in_f1", "rb") as f:  # a Python 2 byte-string name works too
        assert f.name == "in_f1" and f.read() == b"Hello\nWorld"


# --- reading -------------------------------------------------------------------------------------


def test_reader_surface(channel: DirectoryChannel) -> None:
    install(channel)
    with builtins.teaclave_open("in_f1", "rb") as f:
        assert f.read(0) == b""
        assert f.read(3) == b"Hel"
        assert f.readline(1) == b"l"
        assert f.readline() == b"o\n"
        assert f.readline() == b"World"
        assert f.readline() == b"" and f.read() == b"" and f.read(5) == b""
    assert f.closed
    with builtins.teaclave_open("in_f1", "rb") as f:  # each open starts from the beginning
        assert f.read(None) == b"Hello\nWorld"
    with builtins.teaclave_open("lines", "rb") as f:
        assert f.readlines() == [b"a,1\n", b"b,2\n", b"\n", b"c,3"]
    with builtins.teaclave_open("lines", "rb") as f:
        assert f.readlines(5) == [b"a,1\n", b"b,2\n"]
        assert list(f) == [b"\n", b"c,3"]


def test_reads_return_py2str(channel: DirectoryChannel) -> None:
    install(channel)
    with builtins.teaclave_open("lines", "rb") as f:
        values = [f.read(2), f.readline(), *f.readlines(1), *f]
    assert [type(value) for value in values] == [Py2Str] * 5
    assert values == ["a,", "1\n", "b,2\n", "\n", "c,3"]


def test_readinto(channel: DirectoryChannel) -> None:
    install(channel)
    target = bytearray(8)
    words = np.zeros(2, dtype=np.uint32)
    with builtins.teaclave_open("in_f1", "rb") as f:
        assert f.readinto(target) == 8 and target == b"Hello\nWo"
        assert f.readinto(words) == 3 and words.tobytes()[:3] == b"rld"


def test_long_input_is_read_whole(tmp_path: Path) -> None:
    data = bytes(range(256)) * 1000 + b"\nend"
    channel = DirectoryChannel(tmp_path, {"big": data})
    install(channel)
    with builtins.teaclave_open("big", "rb") as f:
        first = f.readline()
        assert first == data[:data.index(b"\n") + 1]
        assert f.read() == data[len(first):]


# --- writing -------------------------------------------------------------------------------------


def test_writer_surface(channel: DirectoryChannel) -> None:
    install(channel)
    f = builtins.teaclave_open("out_f1", "wb")
    assert f.write("héllo ") == 7
    assert f.write(b"bytes ") == 6
    assert f.write(bytearray(b"array ")) == 6
    assert f.write(memoryview(b"view ")) == 5
    assert f.write(np.array([0x41424344], dtype=">u4")) == 4
    f.writelines(["a", b"b", Py2Str(b"c")])
    assert channel.output("out_f1") == b""  # still buffered
    f.flush()
    assert channel.output("out_f1") == "héllo bytes array view ABCDabc".encode()
    f.write("!")
    f.close()
    assert channel.output("out_f1").endswith(b"abc!")


def test_writer_flushes_itself_at_8_kib(channel: DirectoryChannel) -> None:
    install(channel)
    f = builtins.teaclave_open("out_f1", "wb")
    f.write(b"x" * 8191)
    assert channel.output("out_f1") == b""
    f.write(b"y")
    assert channel.output("out_f1") == b"x" * 8191 + b"y"
    f.close()


def test_write_refuses_other_types(channel: DirectoryChannel) -> None:
    install(channel)
    with builtins.teaclave_open("out_f1", "wb") as f, pytest.raises(TypeError):
        f.write(5)


def test_text_read_back_keeps_undecodable_bytes(tmp_path: Path) -> None:
    channel = DirectoryChannel(tmp_path, {"in": b"\xff\xfeok"}, ("out",))
    install(channel)
    with builtins.teaclave_open("in", "rb") as f:
        text = str(f.read())
    with builtins.teaclave_open("out", "wb") as f:
        f.write(text)
    assert channel.output("out") == b"\xff\xfeok"


# --- refused operations and failures -------------------------------------------------------------


@pytest.mark.parametrize("operation", ["seek", "tell", "truncate", "fileno", "isatty"])
def test_unsupported_operations(channel: DirectoryChannel, operation: str) -> None:
    install(channel)
    with builtins.teaclave_open("in_f1", "rb") as f, pytest.raises(io.UnsupportedOperation) as caught:
        getattr(f, operation)(0) if operation == "seek" else getattr(f, operation)()
    assert str(caught.value) == operation
    assert f.seekable() is False


def test_wrong_direction(channel: DirectoryChannel) -> None:
    install(channel)
    with builtins.teaclave_open("in_f1", "rb") as reader, builtins.teaclave_open("out_f1", "wb") as writer:
        for call in (lambda: reader.write(b"x"), lambda: reader.writelines([b"x"])):
            with pytest.raises(io.UnsupportedOperation, match="File not open for writing"):
                call()
        for call in (writer.read, writer.readline, writer.readlines, lambda: writer.readinto(bytearray(1)),
                     lambda: iter(writer)):
            with pytest.raises(io.UnsupportedOperation, match="File not open for reading"):
                call()


def test_closed_file(channel: DirectoryChannel) -> None:
    install(channel)
    reader = builtins.teaclave_open("in_f1", "rb")
    writer = builtins.teaclave_open("out_f1", "wb")
    reader.close()
    writer.close()
    writer.close()  # closing again is harmless
    assert reader.closed and writer.closed
    calls = [reader.read, reader.readline, reader.readlines, lambda: reader.readinto(bytearray(1)),
             lambda: iter(reader), reader.readable, reader.writable, reader.flush, reader.__enter__,
             lambda: writer.write(b"x"), writer.flush]
    for call in calls:
        with pytest.raises(ValueError) as caught:
            call()
        assert str(caught.value) == "I/O operation on closed file"
        assert caught.value.message == "I/O operation on closed file"


def test_broken_descriptors_fail_with_ffi_errors(channel: DirectoryChannel) -> None:
    install(channel)
    files = {operation: builtins.teaclave_open("in_f1", "rb") for operation in ("read", "readall", "readinto")}
    writer = builtins.teaclave_open("out_f1", "wb")
    writer.write(b"pending")
    for fd in channel.fds:
        os.close(fd)  # every later read, write and close of these fds fails
    calls = {"read": lambda: files["read"].read(1), "readall": files["readall"].read,
             "readinto": lambda: files["readinto"].readinto(bytearray(4)), "write": writer.flush}
    for operation, call in calls.items():
        with pytest.raises(RuntimeError) as caught:
            call()
        assert caught.value.message == str(caught.value) == f"fileio_{operation}: teaclave_ffi_error"
    with pytest.raises(RuntimeError, match="^fileio_close: teaclave_ffi_error$"):
        files["read"].close()
    assert files["read"].closed


# --- py2str (§6.9) -------------------------------------------------------------------------------


def test_py2str_equality_and_hash() -> None:
    line = Py2Str(b"Hello\n")
    assert line == "Hello\n" and "Hello\n" == line and line == b"Hello\n"  # both operand orders
    assert (line != "Hello\n") is False and line != "Hello" and line != 5
    assert Py2Str("é".encode()) == "é" and Py2Str(b"x") != "\ud800"
    assert hash(line) == hash("Hello\n") == hash(b"Hello\n")
    assert {"Hello\n": 1}[line] == 1 and line in {"Hello\n"}


def test_py2str_text_methods() -> None:
    line = Py2Str(b" 1.5,2,x \n")
    fields = line.strip().split(",")
    assert fields == ["1.5", "2", "x"] and all(type(field) is Py2Str for field in fields)
    assert type(line.rstrip()) is type(line.lstrip(" ")) is Py2Str
    assert line.strip().startswith("1.5") and line.strip().endswith(("y", "x")) and not line.startswith("1")
    assert line.replace(",", ";") == " 1.5;2;x \n" and type(line.replace(",", ";")) is Py2Str
    assert line.find(",") == 4 and line.count(",") == 2 and line.rfind(",") == 6
    assert Py2Str(b"a\nb").splitlines() == ["a", "b"] and type(Py2Str(b"a\nb").splitlines()[0]) is Py2Str
    assert Py2Str(b"k=v").partition("=") == ("k", "=", "v")
    assert Py2Str(b",").join(["a", b"b", Py2Str(b"c")]) == "a,b,c"
    assert Py2Str(b"AbC").lower() == "abc" and Py2Str(b"AbC").upper() == "ABC"


def test_py2str_operators() -> None:
    word = Py2Str(b"World")
    assert "orl" in word and b"orl" in word and 87 in word and "xyz" not in word
    assert word + "!" == "World!" and type(word + "!") is Py2Str
    assert "Hello " + word == "Hello World" and type("Hello " + word) is Py2Str
    assert b"Hello " + word == b"Hello World" and type(b"Hello " + word) is Py2Str
    assert Py2Str(b"%s=%d") % ("n", 3) == "n=3" and type(Py2Str(b"%s") % word) is Py2Str
    assert Py2Str(b"[%s]") % word == "[World]"
    assert word[1:3] == "or" and type(word[1:3]) is Py2Str
    assert word[0] == 87  # indexing stays Python 3 bytes
    with pytest.raises(TypeError):
        word + 5


def test_py2str_conversions() -> None:
    assert str(Py2Str("é\n".encode())) == "é\n" and f"{Py2Str(b'ab'):>4}" == "  ab"
    assert float(Py2Str(b"1.5")) == 1.5 and int(Py2Str(b"42\n")) == 42
    assert marshal.loads(Py2Str(marshal.dumps({"k": [1, 2]}))) == {"k": [1, 2]}
    table = np.array([Py2Str(b"1.5,2").split(","), [Py2Str(b"-3"), "4e1"]], dtype="float64")
    assert table.tolist() == [[1.5, 2.0], [-3.0, 40.0]]
    assert Py2Str(b"\xff").decode("latin-1") == "ÿ"


# --- _numpypy (§6.5) -----------------------------------------------------------------------------


def test_numpypy_modules_are_importable(channel: DirectoryChannel) -> None:
    install(channel)
    import _numpypy
    import _numpypy.multiarray
    import _numpypy.umath
    from _numpypy import multiarray, umath

    assert _numpypy.multiarray is multiarray and _numpypy.umath is umath
    assert umath.exp is np.exp and umath.log is np.log and multiarray.dot is np.dot
    assert not hasattr(multiarray, "__path__")  # private names are not numpy's: the shim is no package


def test_numpypy_arrays_print_like_mesapy(channel: DirectoryChannel) -> None:
    install(channel)
    import _numpypy as mp

    row = mp.multiarray.zeros((1, 5))
    row[0, 0] = 1
    row[0, 1] = 1
    assert str(row) == "[1.0 1.0 0.0 0.0 0.0]"
    assert str(mp.multiarray.array(["0.5", "2"], dtype="float64")) == "[0.5 2.0]"
    assert str(mp.multiarray.array([[1, 2], [3, 4]], dtype="float64")) == "[[1. 2.]\n [3. 4.]]"
    assert str(mp.multiarray.array([[1.5]]) + 1) == "[2.5]"


def test_numpypy_arithmetic(channel: DirectoryChannel) -> None:
    install(channel)
    import _numpypy as mp

    x = mp.multiarray.array([["1", "2"], ["3", "4"]], dtype="float64")
    w = mp.multiarray.zeros((2, 1)) + 0.5
    z = x.dot(w)
    assert z.tolist() == [[1.5], [3.5]] and type(z) is type(x)
    assert (1 - x).tolist() == [[0, -1], [-2, -3]] and (-x).T.tolist() == [[-1, -3], [-2, -4]]
    assert (x / x.max(0)).tolist() == [[1 / 3, 0.5], [1.0, 1.0]] and x.min(0).tolist() == [1.0, 2.0]
    assert x.reshape(-1, 1).shape == (4, 1) and x.shape[0] == 2 and x.shape[1] == 2
    assert type(x.sum()) is np.float64 and x.sum() == 10.0  # a numpy scalar, as for a plain ndarray
    assert np.allclose(mp.umath.log(mp.umath.exp(x)), x)
    assert type(mp.umath.exp(x)) is type(x) and bool(x[1, 0] > 2.5)


def test_numpypy_marshal_round_trip(channel: DirectoryChannel) -> None:
    install(channel)
    import _numpypy as mp

    w = mp.multiarray.array([[0.25], [-1.5]]) * 2
    b = w.sum() / 4
    restored = marshal.loads(marshal.dumps({"w": w, "b": b}))
    assert mp.multiarray.frombuffer(restored["w"]).tolist() == [0.5, -3.0]
    assert mp.multiarray.frombuffer(restored["b"]).tolist() == [-0.625]
    assert str(mp.multiarray.frombuffer(restored["w"])) == "[0.5 -3.0]"


# --- running payloads and their return values (§6.1, §6.2, §6.6) ---------------------------------


@pytest.mark.parametrize(("body", "expected"), [
    ("pass", ""),
    ("return None", ""),
    ("return 'héllo'", "héllo"),
    ("return 'héllo'.encode()", "héllo"),
    ("return bytearray(b'ab')", "ab"),
    ("return teaclave_open('in_f1', 'rb').readline()", "Hello\n"),
    ("class S(str):\n    def __str__(self): return 'fake'\nreturn S('real')", "real"),
])
def test_return_values(channel: DirectoryChannel, body: str, expected: str) -> None:
    result = run_payload(entrypoint(body), [], channel)
    assert result == expected and type(result) is str


@pytest.mark.parametrize(("body", "reason"), [
    ("return 5", "TypeError: entrypoint returned int; expected str, bytes or None"),
    ("return ['a']", "TypeError: entrypoint returned list; expected str, bytes or None"),
    ("return memoryview(b'a')", "TypeError: entrypoint returned memoryview; expected str, bytes or None"),
    ("return b'\\xff'", ("UnicodeDecodeError: entrypoint returned bytes that are not valid UTF-8: 'utf-8' codec "
                         "can't decode byte 0xff in position 0: invalid start byte")),
    ("return '\\ud800'", ("UnicodeEncodeError: entrypoint returned text that is not valid Unicode: 'utf-8' codec "
                          "can't encode character '\\ud800' in position 0: surrogates not allowed")),
])
def test_refused_return_values(channel: DirectoryChannel, body: str, reason: str) -> None:
    assert failure(entrypoint(body), channel).reason == reason


def test_escaping_exception(channel: DirectoryChannel) -> None:
    source = b"def helper():\n    raise ValueError('bad value')\n\ndef entrypoint(argv):\n    helper()\n"
    caught = failure(source, channel)
    assert (caught.type_name, caught.message, caught.reason) == ("ValueError", "bad value", "ValueError: bad value")
    assert caught.traceback.startswith("Traceback (most recent call last):\n")
    assert 'File "<payload>", line 5, in entrypoint\n    helper()' in caught.traceback
    assert "raise ValueError('bad value')" in caught.traceback
    assert "payload_api.py" not in caught.traceback  # the traceback starts at the payload's frames


def test_uncaught_file_error_names_runtime_error(channel: DirectoryChannel) -> None:
    caught = failure(entrypoint("teaclave_open('nope', 'rb')"), channel)
    assert caught.reason == "RuntimeError: fileio_init: teaclave_ffi_error"


@pytest.mark.parametrize(("body", "reason"), [
    ("import sys\nsys.exit(3)", "SystemExit: 3"),
    ("raise SystemExit", "SystemExit"),
    ("raise KeyboardInterrupt", "KeyboardInterrupt"),
    ("assert len(argv) == 8, 'expected four arguments'", "AssertionError: expected four arguments"),
    ("class E(Exception):\n    def __str__(self): raise RuntimeError\nraise E()", "E: <exception str() failed>"),
])
def test_failures_that_end_the_payload(channel: DirectoryChannel, body: str, reason: str) -> None:
    assert failure(entrypoint(body), channel).reason == reason


def test_syntax_error(channel: DirectoryChannel) -> None:
    caught = failure(b"def entrypoint(argv):\n    print 'hello'\n", channel)
    assert caught.type_name == "SyntaxError" and "line 2" in caught.message
    assert 'File "<payload>", line 2' in caught.traceback and "print 'hello'" in caught.traceback


def test_source_that_is_not_utf8(channel: DirectoryChannel) -> None:
    assert failure(b"def entrypoint(argv):\n    return '\xe9'\n", channel).type_name == "UnicodeDecodeError"


def test_missing_entrypoint(channel: DirectoryChannel) -> None:
    caught = failure(b"def main(argv):\n    return 'x'\n", channel)
    assert caught.reason == "NameError: name 'entrypoint' is not defined"
    assert "payload_api.py" not in caught.traceback


def test_source_is_cut_at_the_first_nul(channel: DirectoryChannel) -> None:
    assert run_payload(entrypoint("return 'before'") + b"\0 this is not Python (", [], channel) == "before"


def test_byte_order_mark_is_accepted(channel: DirectoryChannel) -> None:
    assert run_payload(b"\xef\xbb\xbf" + entrypoint("return 'ok'"), [], channel) == "ok"


def test_payload_is_not_main(channel: DirectoryChannel) -> None:
    source = (b"ran = []\nif __name__ == '__main__':\n    ran.append('main')\n\n"
              b"def entrypoint(argv):\n    return __name__ + ' ' + repr(ran)\n")
    assert run_payload(source, [], channel) == "__payload__ []"


def test_payload_does_not_inherit_future_imports(channel: DirectoryChannel) -> None:
    source = entrypoint("def f(x: int): pass\nreturn repr(f.__annotations__)")
    assert run_payload(source, [], channel) == "{'x': <class 'int'>}"


def test_each_run_has_fresh_globals(channel: DirectoryChannel) -> None:
    source = b"try:\n    count += 1\nexcept NameError:\n    count = 1\n\ndef entrypoint(argv):\n    return str(count)\n"
    assert [run_payload(source, [], channel) for _ in range(2)] == ["1", "1"]


def test_unclosed_files_are_flushed_and_closed(channel: DirectoryChannel) -> None:
    body = ("global kept\nkept = teaclave_open('out_f1', 'wb')\nkept.write('kept')\n"
            "teaclave_open('out_f2', 'wb').write('dropped')\nreader = teaclave_open('in_f1', 'rb')\n"
            "reader.read(1)\nkept.close = lambda: None\nreturn 'done'")
    assert run_payload(entrypoint(body), [], channel) == "done"
    assert channel.output("out_f1") == b"kept" and channel.output("out_f2") == b"dropped"
    assert len(channel.fds) == 3 and not any(map(fd_is_open, channel.fds))


def test_files_are_flushed_and_closed_when_the_payload_fails(channel: DirectoryChannel) -> None:
    body = "teaclave_open('out_f1', 'wb').write('partial')\nraise ValueError('late')"
    assert failure(entrypoint(body), channel).reason == "ValueError: late"
    assert channel.output("out_f1") == b"partial" and not fd_is_open(channel.fds[0])


def test_finalizers_run_before_files_are_closed(channel: DirectoryChannel) -> None:
    body = ("class Log:\n    def __init__(self):\n        self.f = teaclave_open('out_f1', 'wb')\n"
            "        self.me = self\n    def __del__(self):\n        self.f.write('finalized')\nLog()")
    assert run_payload(entrypoint(body), [], channel) == ""
    assert channel.output("out_f1") == b"finalized"


@pytest.mark.parametrize(("breakage", "reason"), [
    ("os.dup2(os.open(os.devnull, os.O_RDONLY), f._fd)", "RuntimeError: fileio_write: teaclave_ffi_error"),
    ("os.close(f._fd)", "RuntimeError: fileio_close: teaclave_ffi_error"),  # writing fails too; close is last
])
def test_failing_final_close_fails_the_task(channel: DirectoryChannel, breakage: str, reason: str) -> None:
    body = f"import os\nf = teaclave_open('out_f1', 'wb')\nf.write('x')\n{breakage}\nreturn 'ok'"
    assert failure(entrypoint(body), channel).reason == reason


def test_reason_is_cut_to_one_kib() -> None:
    long = PayloadFailure("ValueError", "x" + "é" * 1000, "trace")
    assert len(long.reason.encode()) == 1023 and long.reason.startswith("ValueError: xéé")  # no half character
    assert str(long) == long.reason and long.traceback == "trace"
    assert PayloadFailure("SystemExit", "").reason == "SystemExit"
