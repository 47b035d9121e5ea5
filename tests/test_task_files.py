"""A task's files around its function (kettle.executors.files): real files, real crypto, real agent.

The function's view must only ever contain authenticated plaintext, outputs must
leave encrypted under their owner's key with the tag reported in ``tags_map``,
and every bad file must fail the task before the function runs, uploading nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from staged import IV, K128, K256, World, task

from kettle import executors
from kettle.config import FileAgentConfig
from kettle.crypto.protected_file import ProtectedFileReader, ProtectedFileWriter
from kettle.executors import run_staged_task
from kettle.executors.files import DataPlane, TaskFileError, TaskFiles
from kettle.file_agent import FileAgent
from kettle.model.records import CryptoInfo, FileRecord, TaskResult

VECTORS = Path("/work/shared/vectors/teaclave-file-128")

Function = Callable[[Any], str]


@pytest.fixture
def function(monkeypatch: pytest.MonkeyPatch) -> Callable[[Function], list[Any]]:
    """Install ``body(runtime) -> summary`` as the built-in executor; returns the list of calls."""

    def install(body: Function) -> list[Any]:
        calls: list[Any] = []

        def run(name: str, arguments: Any, payload: bytes, runtime: Any) -> str:
            calls.append(runtime)
            return body(runtime)

        monkeypatch.setitem(executors.EXECUTORS, ("builtin", "builtin"), run)
        return calls

    return install


def copy_input_to_output(runtime: Any) -> str:
    with runtime.open_input("in") as source, runtime.create_output("out") as sink:
        while chunk := source.read(1 << 16):
            sink.write(chunk)
    return "copied"


# --- the round trip, per schema and size -------------------------------------------------


SIZES = [0, 1, 3072, 3073, 200 * 1024, 5 << 20]


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s}B")
@pytest.mark.parametrize("schemas", [("teaclave-file-128", "teaclave-file-128"), ("aes-gcm-128", "aes-gcm-256"),
                                     ("aes-gcm-256", "teaclave-file-128"), ("raw", "aes-gcm-128")],
                         ids=lambda s: f"{s[0]}->{s[1]}")
def test_input_to_output_round_trip(tmp_path: Path, function: Any, schemas: tuple[str, str], size: int) -> None:
    world = World(tmp_path)
    plaintext = os.urandom(size)
    source_schema, output_schema = schemas
    make = {"teaclave-file-128": world.protected_input, "aes-gcm-128": world.aes_input,
            "aes-gcm-256": lambda n, p: world.aes_input(n, p, K256), "raw": world.raw_input}[source_schema]
    inputs = {"in": make("in.enc", plaintext)}
    out = world.output("out.enc", output_schema)
    function(copy_input_to_output)
    result = run_staged_task(task(inputs, {"out": out}), world.plane)
    assert result.failure is None and result.outputs is not None
    content, cmac = world.read_output(out)
    assert content == plaintext
    assert result.outputs.tags_map == {"out": cmac}
    assert result.outputs.return_value == b"copied"


def test_every_vector_reaches_the_function_as_its_plaintext(tmp_path: Path, function: Any) -> None:
    world = World(tmp_path)
    vectors = {
        "psi0.txt.enc": (bytes(16), "92f686d4ac2ba6b4ffd93bc7ac5dbf58", "psi0.txt"),
        "gen_empty.bin.enc": (K128, "c356d0635f1f9fa2508e0a4036a31b70", "gen_empty.bin"),
        "gen_3072.bin.enc": (K128, "eac29161934560f5cca86e5ef1fb2bd4", "gen_3072.bin"),
        "gen_3073.bin.enc": (K128, "296d72e09cc38bcc03738e1991cc08f7", "gen_3073.bin"),
        "gen_200k.bin.enc": (K128, "ab4a12a67b8d2344a31664370d749137", "gen_200k.bin"),
        "gen_mht1.bin.enc": (K128, "9f6f15432045c14bdd723f4320427530", "gen_mht1.bin"),
    }
    inputs = {}
    for index, (name, (key, cmac, _)) in enumerate(vectors.items()):
        (world.root / name).write_bytes((VECTORS / name).read_bytes())
        inputs[f"v{index}"] = FileRecord(str(uuid.uuid4()), world.url(name), CryptoInfo("teaclave-file-128", key),
                                         ("alice",), bytes.fromhex(cmac))

    def digest_all(runtime: Any) -> str:
        return json.dumps({n: hashlib.sha256(runtime.open_input(n).read()).hexdigest() for n in sorted(inputs)})

    function(digest_all)
    result = run_staged_task(task(inputs), world.plane)
    assert result.outputs is not None, result.failure
    seen = json.loads(result.outputs.return_value)
    for index, (_, (_, _, plain)) in enumerate(vectors.items()):
        assert seen[f"v{index}"] == hashlib.sha256((VECTORS / plain).read_bytes()).hexdigest()


def test_a_64_mib_protected_output_reads_back(tmp_path: Path, function: Any) -> None:
    world = World(tmp_path)
    block = os.urandom(1 << 20)
    out = world.output("big.enc")

    def write_big(runtime: Any) -> str:
        with runtime.create_output("big") as sink:
            for _ in range(64):
                sink.write(block)
        return "done"

    function(write_big)
    result = run_staged_task(task(outputs={"big": out}), world.plane)
    assert result.outputs is not None, result.failure
    path = world.root / "big.enc"
    with path.open("rb") as source:
        reader = ProtectedFileReader(source, K128, "big.enc")
        assert reader.size == 64 << 20 and reader.root_mac == result.outputs.tags_map["big"]
        for index in range(64):
            assert reader.read(1 << 20) == block, index


def test_inputs_can_be_opened_again_from_the_start(tmp_path: Path, function: Any) -> None:
    world = World(tmp_path)
    plaintexts = {"a": b"alpha" * 1000, "p": b"beta" * 2000}
    inputs = {"a": world.aes_input("a.enc", plaintexts["a"]), "p": world.protected_input("p.enc", plaintexts["p"])}
    seen: list[bool] = []

    def twice(runtime: Any) -> str:
        for name, plaintext in plaintexts.items():
            first = runtime.open_input(name)
            head = first.read(7)
            again = runtime.open_input(name).read()  # a new reader starts at byte 0 ...
            seen.append(head == plaintext[:7] and again == plaintext and first.read() == plaintext[7:])  # ... the first goes on
        return "ok"

    function(twice)
    assert run_staged_task(task(inputs), world.plane).outputs is not None
    assert seen == [True, True]


# --- refused before the function runs ----------------------------------------------------------


def flip_bit(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def refused(world: World, function: Any, inputs: dict[str, FileRecord], outputs: dict[str, FileRecord] | None = None,
            plane: DataPlane | None = None) -> str:
    calls = function(lambda runtime: "ran")
    result = run_staged_task(task(inputs, outputs), plane or world.plane)
    assert calls == [], "the function must not run"
    assert result.outputs is None and result.failure is not None
    assert world.scratch_files() == [], "nothing of a refused task stays in its working directory"
    return result.failure


@pytest.mark.parametrize("offset", [100, 4096 * 2 + 5, -1], ids=["metadata", "first-data-node", "last-node"])
def test_a_flipped_bit_in_a_protected_file_is_refused(tmp_path: Path, function: Any, offset: int) -> None:
    world = World(tmp_path)
    record = world.protected_input("in.enc", os.urandom(300_000))
    path = world.root / "in.enc"
    flip_bit(path, offset if offset >= 0 else path.stat().st_size - 4096 + 10)
    assert refused(world, function, {"in": record}) == f"Corrupted input file: {record.url}"


def test_a_truncated_wrong_keyed_or_renamed_protected_file_is_refused(tmp_path: Path, function: Any) -> None:
    world = World(tmp_path)
    truncated = world.protected_input("t.enc", os.urandom(100_000))
    path = world.root / "t.enc"
    path.write_bytes(path.read_bytes()[:-4096])
    assert refused(world, function, {"in": truncated}) == f"Corrupted input file: {truncated.url}"

    good = world.protected_input("k.enc", b"secret")
    wrong_key = FileRecord(good.uuid, good.url, CryptoInfo("teaclave-file-128", bytes(16)), good.owner, good.cmac)
    assert refused(world, function, {"in": wrong_key}) == f"Corrupted input file: {good.url}"

    renamed = world.protected_input("renamed.enc", b"secret", embedded="original.enc")
    assert refused(world, function, {"in": renamed}) == f"Corrupted input file: {renamed.url}"

    other_cmac = FileRecord(good.uuid, good.url, good.crypto_info, good.owner, bytes(16))
    assert refused(world, function, {"in": other_cmac}) == f"Corrupted input file: {good.url}"


def test_aes_gcm_tampering_wrong_cmac_and_short_files_are_refused(tmp_path: Path, function: Any) -> None:
    world = World(tmp_path)
    record = world.aes_input("a.enc", os.urandom(50_000))
    flip_bit(world.root / "a.enc", 20_000)
    assert refused(world, function, {"in": record}) == f"AesGcm128 File, invalid tag: {record.url}"

    fresh = world.aes_input("b.enc", b"data", K256)
    wrong = FileRecord(fresh.uuid, fresh.url, fresh.crypto_info, fresh.owner, bytes(16))
    assert refused(world, function, {"in": wrong}) == f"AesGcm256 File, invalid tag: {fresh.url}"

    (world.root / "short.enc").write_bytes(b"tiny")
    short = FileRecord(str(uuid.uuid4()), world.url("short.enc"), CryptoInfo("aes-gcm-128", K128, IV), ("alice",), bytes(16))
    assert refused(world, function, {"in": short}) == f"AesGcm128 File, invalid length: {short.url}"


def test_one_bad_input_among_good_ones_fails_the_task_and_uploads_nothing(tmp_path: Path, function: Any) -> None:
    world = World(tmp_path)
    good = world.protected_input("good.enc", b"fine")
    bad = world.aes_input("bad.enc", b"not fine")
    flip_bit(world.root / "bad.enc", 0)
    out = world.output("out.enc")
    assert refused(world, function, {"a": good, "b": bad}, {"out": out}).startswith("AesGcm128 File, invalid tag")
    assert not (world.root / "out.enc").exists()


@pytest.mark.parametrize(("info", "reason"), [
    (CryptoInfo("aes-gcm-128", b"short", IV), "Invalid key length for AesGcm128: 5"),
    (CryptoInfo("aes-gcm-256", K128, IV), "Invalid key length for AesGcm256: 16"),
    (CryptoInfo("aes-gcm-128", K128, b"iv"), "Invalid iv length for AesGcm128: 2"),
    (CryptoInfo("teaclave-file-128", K128, IV), "IV is not empty for teaclave_file_128"),
    (CryptoInfo("rot13"), "Invalid crypto schema: rot13"),
])
def test_malformed_crypto_info_fails_the_task(tmp_path: Path, function: Any, info: CryptoInfo, reason: str) -> None:
    world = World(tmp_path)
    world.raw_input("in.bin", b"x")
    record = FileRecord(str(uuid.uuid4()), world.url("in.bin"), info, ("alice",), bytes(16))
    assert refused(world, function, {"in": record}) == reason
    out = FileRecord(str(uuid.uuid4()), world.url("o.enc"), info, ("alice",))
    assert refused(world, function, {}, {"out": out}) == reason


def test_unreachable_and_disallowed_urls_fail_the_task(tmp_path: Path, function: Any) -> None:
    world = World(tmp_path)
    missing = FileRecord(str(uuid.uuid4()), world.url("nowhere.enc"), CryptoInfo("raw"), ("alice",), bytes(16))
    assert refused(world, function, {"in": missing}).startswith("Failed to fetch input in: ")
    outside = FileRecord(str(uuid.uuid4()), "file:///etc/hostname", CryptoInfo("raw"), ("alice",), bytes(16))
    reason = refused(world, function, {"in": outside})
    assert reason.startswith("Failed to fetch input in: ") and "file_roots" in reason
    ftp = FileRecord(str(uuid.uuid4()), "ftp://example.com/in.enc", CryptoInfo("raw"), ("alice",), bytes(16))
    assert "URL scheme not allowed: ftp" in refused(world, function, {"in": ftp})
    nameless = FileRecord(str(uuid.uuid4()), "https://example.com/", CryptoInfo("raw"), ("alice",), bytes(16))
    assert "has no file name" in refused(world, function, {"in": nameless})


def test_an_output_that_cannot_be_stored_fails_the_task_not_the_function(tmp_path: Path, function: Any) -> None:
    """An output written in place is opened when the function creates it; a target that cannot
    take it is still reported as the upload's failure after the function, which never sees why."""
    world = World(tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (world.root / "escape").symlink_to(outside)
    targets = {"nodir": world.url("nodir/out.enc"), "escape": world.url("escape/out.enc")}
    for label, url in targets.items():
        record = replace(world.output("out.enc"), url=url)
        calls = function(lambda runtime: runtime.create_output("out").write(b"result") and "written")
        result = run_staged_task(task(outputs={"out": record}), world.plane)
        assert len(calls) == 1 and result.outputs is None and result.failure is not None
        assert result.failure.startswith("Failed to upload output out: ") and url in result.failure, label
    assert list(outside.iterdir()) == [] and not (world.root / "nodir").exists()


def test_an_input_over_the_size_limit_fails_the_task(tmp_path: Path, function: Any) -> None:
    world = World(tmp_path, limit=10_000)
    record = world.raw_input("big.bin", bytes(10_001))
    assert "larger than the limit of 10000 bytes" in refused(world, function, {"in": record})


def test_a_raw_output_is_refused_before_anything_runs(tmp_path: Path, function: Any) -> None:
    world = World(tmp_path)
    out = FileRecord(str(uuid.uuid4()), world.url("o.bin"), CryptoInfo("raw"), ("alice",))
    assert refused(world, function, {"in": world.raw_input("i.bin", b"x")}, {"out": out}) == "OutputFile: unsupported type"


# --- outputs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("schema", "reason"), [
    ("teaclave-file-128", "Convert teaclave_file: failed to open src file"),
    ("aes-gcm-128", "Convert aes-gcm-128: failed to open src file"),
    ("aes-gcm-256", "Convert aes-gcm-256: failed to open src file"),
])
def test_an_output_the_function_did_not_create_fails_the_task(tmp_path: Path, function: Any, schema: str, reason: str) -> None:
    world = World(tmp_path)
    made, missing = world.output("made.enc"), world.output("missing.enc", schema)

    def only_one(runtime: Any) -> str:
        runtime.create_output("made").write(b"x")
        return "half"

    function(only_one)
    assert run_staged_task(task(outputs={"made": made, "missing": missing}), world.plane) == TaskResult(failure=reason)
    assert not (world.root / "made.enc").exists(), "nothing is uploaded when the task fails"


def test_a_failing_function_uploads_nothing_and_leaves_no_scratch(tmp_path: Path, function: Any) -> None:
    world = World(tmp_path)
    out = world.output("out.enc")

    def fails_after_writing(runtime: Any) -> str:
        runtime.create_output("out").write(b"partial")
        raise RuntimeError("boom")

    function(fails_after_writing)
    result = run_staged_task(task({"in": world.aes_input("in.enc", b"x")}, {"out": out}), world.plane)
    assert result == TaskResult(failure="RuntimeError: boom")
    assert not (world.root / "out.enc").exists()
    assert [p for p in world.scratch_files() if "staged" in p.parent.name] == []


def test_outputs_left_open_are_flushed_and_recreating_truncates(tmp_path: Path, function: Any) -> None:
    world = World(tmp_path)
    first, second = world.output("one.enc", "aes-gcm-128"), world.output("two.enc")

    def sloppy(runtime: Any) -> str:
        runtime.create_output("one").write(b"discarded")
        runtime.create_output("one").write(b"kept")  # created again: starts over
        runtime.create_output("two").write(b"never closed by the function")
        return "ok"

    function(sloppy)
    result = run_staged_task(task(outputs={"one": first, "two": second}), world.plane)
    assert result.outputs is not None, result.failure
    assert world.read_output(first) == (b"kept", result.outputs.tags_map["one"])
    assert world.read_output(second) == (b"never closed by the function", result.outputs.tags_map["two"])


def test_an_output_over_the_size_limit_fails_even_if_the_function_swallows_the_error(tmp_path: Path, function: Any) -> None:
    world = World(tmp_path, limit=1000)
    out = world.output("out.enc")

    def greedy(runtime: Any) -> str:
        sink = runtime.create_output("out")
        try:
            sink.write(bytes(5000))
            sink.flush()
        except Exception:  # noqa: BLE001 - the point: the platform must not rely on the function
            pass
        return "ok"

    function(greedy)
    result = run_staged_task(task(outputs={"out": out}), world.plane)
    assert result.failure == "output out is larger than the limit of 1000 bytes"
    assert not (world.root / "out.enc").exists()


def test_an_existing_upload_target_is_never_overwritten(tmp_path: Path, function: Any) -> None:
    world = World(tmp_path)
    out = world.output("taken.enc")
    (world.root / "taken.enc").write_bytes(b"someone else's")
    function(lambda runtime: runtime.create_output("out").write(b"x") and "ok")
    result = run_staged_task(task(outputs={"out": out}), world.plane)
    assert result.failure is not None and result.failure.startswith("Failed to upload output out: ")
    assert (world.root / "taken.enc").read_bytes() == b"someone else's"


def test_a_rerun_after_a_node_died_past_the_upload_replaces_its_own_earlier_output(tmp_path: Path, function: Any) -> None:
    """The first attempt stored its output and its node died before reporting; the scheduler
    runs the task again, and that run must finish, its output replacing the earlier copy."""
    world = World(tmp_path)
    out = world.output("out.enc")
    runs = iter([b"first run", b"second run", b"late first run"])
    function(lambda runtime: runtime.create_output("out").write(next(runs)) and "ok")
    first = run_staged_task(task(outputs={"out": out}), world.plane)
    assert first.failure is None, first.failure
    second = run_staged_task(task(outputs={"out": out}), replace(world.plane, attempt=2))
    assert second.failure is None and second.outputs is not None, second.failure
    content, cmac = world.read_output(out)
    assert content == b"second run" and second.outputs.tags_map == {"out": cmac}
    # The first attempt, late (its node was only thought dead), cannot replace the retry's output.
    late = run_staged_task(task(outputs={"out": out}), world.plane)
    assert late.failure is not None and "already exists" in late.failure
    assert world.read_output(out) == (content, cmac)


def test_unknown_file_names_get_the_reference_texts(tmp_path: Path, function: Any) -> None:
    world = World(tmp_path)
    function(lambda runtime: runtime.open_input("nope") and "")
    assert run_staged_task(task(), world.plane).failure == "Invalid input file identifier."
    function(lambda runtime: runtime.create_output("nope") and "")
    assert run_staged_task(task(), world.plane).failure == "Invalid output file identifier"


# --- no plaintext at rest ----------------------------------------------------------------------


def test_staged_inputs_hold_no_plaintext_and_are_removed_after_the_task(tmp_path: Path) -> None:
    world = World(tmp_path)
    marker = b"THE-OWNERS-SECRET-" * 4000
    staged = task({"a": world.aes_input("a.enc", marker), "p": world.protected_input("p.enc", marker)},
                  {"o": world.output("o.enc", "aes-gcm-256")})
    files = TaskFiles(staged, world.plane)
    try:
        files.prepare()
        assert files.open_input("a").read() == marker and files.open_input("p").read() == marker
        with files.create_output("o") as sink:
            sink.write(marker)
        on_disk = b"".join(p.read_bytes() for p in world.scratch_files())
        assert b"THE-OWNERS-SECRET" not in on_disk
        assert any("staged" in p.parent.name for p in world.scratch_files())
    finally:
        files.close()
    assert not [p for p in world.scratch_files() if "staged" in p.parent.name]
    with pytest.raises(ValueError, match="deleted"):
        files.open_input("a")


def test_a_task_without_files_needs_no_agent() -> None:
    files = TaskFiles(task(), None)
    files.prepare()
    assert files.finish() == {}
    with pytest.raises(TaskFileError):
        TaskFiles(task(outputs={"o": FileRecord("u", "file:///x", CryptoInfo("raw"), ("a",))}), None)


def test_inline_data_inputs_are_bound_to_the_name_data(tmp_path: Path, function: Any) -> None:
    import base64

    world = World(tmp_path)
    config = FileAgentConfig(allowed_schemes=("file", "data"), file_roots=(str(world.root),), retries=0)
    plane = DataPlane(FileAgent(config, tmp_path), world.workdir)
    sink = io.BytesIO()
    writer = ProtectedFileWriter(sink, K128, "data")
    writer.write(b"inline secret")
    cmac = writer.close()
    url = "data:text/plain;base64," + base64.b64encode(sink.getvalue()).decode()
    record = FileRecord(str(uuid.uuid4()), url, CryptoInfo("teaclave-file-128", K128), ("alice",), cmac)
    function(lambda runtime: runtime.open_input("in").read().decode())
    assert run_staged_task(task({"in": record}), plane).outputs.return_value == b"inline secret"  # type: ignore[union-attr]


# --- over HTTP: inputs streamed into verification, outputs PUT when finished -------------------


class OwnerServer:
    """A real HTTP server for a data owner's files (``World.root``), misbehaving by path prefix:
    ``/truncated/`` promises the whole file and hangs up halfway, ``/fail500/`` answers 500,
    ``/drop-put/`` reads half an upload and hangs up; anything else serves or stores the file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.puts: list[str] = []
        self.gets: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _reply(self, status: int) -> None:
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:
                owner.gets.append(self.path)
                prefix, _, name = self.path.lstrip("/").partition("/")
                path = owner.root / name
                if prefix == "fail500":
                    self._reply(500)
                    return
                if not path.is_file():
                    self._reply(404)
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if prefix == "truncated":
                    self.wfile.write(data[: len(data) // 2])
                    self.close_connection = True
                else:
                    self.wfile.write(data)

            def do_PUT(self) -> None:
                owner.puts.append(self.path)
                prefix, _, name = self.path.lstrip("/").partition("/")
                length = int(self.headers["Content-Length"])
                if prefix == "fail500":
                    self.rfile.read(length)
                    self._reply(500)
                elif prefix == "drop-put":
                    self.rfile.read(length // 2)
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                else:
                    (owner.root / name).write_bytes(self.rfile.read(length))
                    self._reply(200)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.authority = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://{self.authority}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[World, OwnerServer, DataPlane]]:
    """A world whose owner serves its files over HTTP, and a node allowed to reach that server."""
    world = World(tmp_path)
    server = OwnerServer(world.root)
    config = FileAgentConfig(allowed_schemes=("http",), egress_allowlist=(server.authority,), retries=1,
                             retry_backoff_ms=1, io_timeout_secs=5)
    try:
        yield world, server, DataPlane(FileAgent(config, tmp_path), world.workdir)
    finally:
        server.close()


def over_http(record: FileRecord, server: OwnerServer, prefix: str = "/plain") -> FileRecord:
    return replace(record, url=server.url(f"{prefix}/{record.url.rsplit('/', 1)[1]}"))


def test_an_http_input_and_output_round_trip(served: tuple[World, OwnerServer, DataPlane], function: Any) -> None:
    world, server, plane = served
    plaintext = os.urandom(3 * (1 << 20) + 5)
    record = over_http(world.aes_input("in.enc", plaintext, K256), server)
    out = world.output("out.enc", "aes-gcm-256")
    function(copy_input_to_output)
    result = run_staged_task(task({"in": record}, {"out": over_http(out, server)}), plane)
    assert result.outputs is not None, result.failure
    assert world.read_output(out) == (plaintext, result.outputs.tags_map["out"])
    assert server.puts == ["/plain/out.enc"]
    assert world.scratch_files() == []


def test_a_tampered_http_input_is_refused_before_the_function_sees_a_byte(
    served: tuple[World, OwnerServer, DataPlane], function: Any
) -> None:
    world, server, plane = served
    record = over_http(world.aes_input("in.enc", os.urandom(2 << 20)), server)
    flip_bit(world.root / "in.enc", 1 << 20)
    out = over_http(world.output("out.enc"), server)
    assert refused(world, function, {"in": record}, {"out": out}, plane) == f"AesGcm128 File, invalid tag: {record.url}"
    assert server.puts == [] and not (world.root / "out.enc").exists()


def test_a_truncated_or_failing_http_input_fails_the_task(
    served: tuple[World, OwnerServer, DataPlane], function: Any
) -> None:
    world, server, plane = served
    truncated = over_http(world.aes_input("in.enc", os.urandom(100_000)), server, "/truncated")
    reason = refused(world, function, {"in": truncated}, plane=plane)
    assert reason.startswith(f"Failed to fetch input in: the connection to {truncated.url} failed")
    assert server.gets.count("/truncated/in.enc") == 2, "retried once, as configured"
    failing = over_http(world.aes_input("in.enc", b"x"), server, "/fail500")
    assert refused(world, function, {"in": failing}, plane=plane) == (
        f"Failed to fetch input in: HTTP 500 Internal Server Error from {failing.url} (gave up after 2 attempts)")


@pytest.mark.parametrize(("prefix", "reason"), [
    ("/fail500", "HTTP 500 Internal Server Error from {url}, expected 200 (gave up after 2 attempts)"),
    ("/drop-put", "the connection to {url} failed"),
])
def test_a_refused_or_cut_off_upload_fails_the_task(
    served: tuple[World, OwnerServer, DataPlane], function: Any, prefix: str, reason: str
) -> None:
    world, server, plane = served
    out = over_http(world.output("out.enc", "aes-gcm-128"), server, prefix)
    function(lambda runtime: runtime.create_output("out").write(os.urandom(1 << 20)) and "ok")
    result = run_staged_task(task(outputs={"out": out}), plane)
    assert result.outputs is None and result.failure is not None
    assert result.failure.startswith("Failed to upload output out: " + reason.format(url=out.url))
    assert server.puts == [f"{prefix}/out.enc"] * 2
    assert not (world.root / "out.enc").exists() and world.scratch_files() == []


def test_a_failed_task_leaves_no_trace_in_the_output_directory(tmp_path: Path, function: Any) -> None:
    """A file:// output is written in place while the function runs, but unnamed until the task
    succeeded: a function that fails halfway leaves no file, partial or temporary, behind."""
    world = World(tmp_path)
    record = world.aes_input("in.enc", os.urandom(3 << 20))
    before = sorted(world.root.iterdir())

    def fails_halfway(runtime: Any) -> str:
        with runtime.open_input("in") as source:
            sink = runtime.create_output("out")
            sink.write(source.read(2 << 20))
            sink.flush()
        raise RuntimeError("boom")

    function(fails_halfway)
    result = run_staged_task(task({"in": record}, {"out": world.output("out.enc", "aes-gcm-256")}), world.plane)
    assert result.failure == "RuntimeError: boom"
    assert sorted(world.root.iterdir()) == before
    assert world.scratch_files() == []
