"""A large ``aes-gcm-256`` input through a pass-through task: the execution service's data path.

What is measured is exactly what an execution node's worker does for a task
whose function copies its input to its output: fetch the input from its URL,
verify its GCM tag while decrypting it into encrypted scratch space, let the
function read that plaintext and write the output, encrypt the output under its
owner's key as it is written, upload it. It runs in a child process (like a
worker) so its peak memory (``ru_maxrss``) is its own.

Two transports, one run each: ``file://`` URLs (a local directory in
``file_roots``: the output is written in place) and ``http://`` URLs served by a
real HTTP server in another child process on 127.0.0.1 (GET with
``sendfile``; PUT hashed as it arrives, not stored: see ``SERVER``), which the file agent reaches because its
``egress_allowlist`` names that host and port, as a deployment would allow an
internal object store.

Baseline, measured in the same run on the same bytes: a raw streaming AES-GCM
decrypt of the input file and encrypt into an output file with ``cryptography``
in 1 MiB chunks — the least any pipeline must do, without staging, so without
the guarantee that the function sees only verified bytes.

    .venv/bin/python bench/bench_data_plane.py [--mib 1024] [--repeat N] [--only file|http] [--profile]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import cProfile, json, pstats, resource, sys, time, uuid
from pathlib import Path
from kettle import executors
from kettle.config import FileAgentConfig
from kettle.executors import run_staged_task
from kettle.executors.files import DataPlane
from kettle.file_agent import FileAgent
from kettle.model.records import CryptoInfo, FileRecord, StagedTask

spec = json.loads(sys.argv[1])
root, work = Path(spec["root"]), Path(spec["work"])

def pass_through(name, arguments, payload, runtime):
    with runtime.open_input("in") as source, runtime.create_output("out") as sink:
        while chunk := source.read(1 << 20):
            sink.write(chunk)
    return "copied"

executors.EXECUTORS[("builtin", "builtin")] = pass_through
key, iv = bytes.fromhex(spec["key"]), bytes.fromhex(spec["iv"])
crypto = CryptoInfo("aes-gcm-256", key, iv)
staged = StagedTask(
    task_id=str(uuid.uuid4()), function_id=str(uuid.uuid4()), user_id="owner", executor="builtin",
    executor_type="builtin", function_name="pass-through", function_arguments="{}", function_payload=b"",
    input_data={"in": FileRecord("i", spec["input_url"], crypto, ("owner",), bytes.fromhex(spec["cmac"]))},
    output_data={"out": FileRecord("o", spec["output_url"], crypto, ("owner",))},
)
agent = FileAgent(FileAgentConfig(allowed_schemes=("file", "http"), file_roots=(str(root),), max_file_bytes=1 << 40,
                                  egress_allowlist=tuple(spec["allow"])), root)
profile = cProfile.Profile() if spec["profile"] else None
usage = resource.getrusage(resource.RUSAGE_SELF)
cpu0 = usage.ru_utime + usage.ru_stime
start = time.perf_counter()
if profile:
    profile.enable()
result = run_staged_task(staged, DataPlane(agent, work))
if profile:
    profile.disable()
elapsed = time.perf_counter() - start
assert result.outputs is not None, result.failure
if profile:
    pstats.Stats(profile, stream=sys.stderr).sort_stats("tottime").print_stats(15)
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"seconds": elapsed, "maxrss_kib": usage.ru_maxrss, "cpu": usage.ru_utime + usage.ru_stime - cpu0,
                  "tag": result.outputs.tags_map["out"].hex()}))
"""

SERVER = r"""
# A plain HTTP server for the owner's files: GET streams a file with sendfile; PUT takes the body
# (exactly Content-Length bytes, as the file agent sends), keeps its size and SHA-256 in
# NAME.sha256 and answers 200. It does not write the body to disk: an object store is another
# machine, and here its disk writes would share the node's two cores and page cache with the task.
import hashlib, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

root = Path(sys.argv[1])

class Files(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _path(self):
        return root / self.path.lstrip("/").split("?", 1)[0]

    def do_GET(self):
        path = self._path()
        if not path.is_file():
            self.send_error(404)
            return
        with path.open("rb") as file:
            self.send_response(200)
            self.send_header("Content-Length", str(os.fstat(file.fileno()).st_size))
            self.end_headers()
            self.wfile.flush()
            self.connection.sendfile(file)

    def do_PUT(self):
        size = remaining = int(self.headers["Content-Length"])
        buffer = memoryview(bytearray(1 << 20))
        digest = hashlib.sha256()
        while remaining:
            count = self.rfile.readinto(buffer[: min(len(buffer), remaining)])
            if not count:
                return
            digest.update(buffer[:count])
            remaining -= count
        Path(str(self._path()) + ".sha256").write_text(f"{size} {digest.hexdigest()}")
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Files)
print(server.server_address[1], flush=True)
server.serve_forever()
"""

BASELINE = r"""
import json, resource, sys, time
usage = resource.getrusage(resource.RUSAGE_SELF)
cpu0 = usage.ru_utime + usage.ru_stime
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
spec = json.loads(sys.argv[1])
key, iv = bytes.fromhex(spec["key"]), bytes.fromhex(spec["iv"])
size = spec["size"]
start = time.perf_counter()
decryptor = Cipher(algorithms.AES(key), modes.GCM(iv)).decryptor()
decryptor.authenticate_additional_data(bytes(8))
encryptor = Cipher(algorithms.AES(key), modes.GCM(iv)).encryptor()
encryptor.authenticate_additional_data(bytes(8))
with open(spec["root"] + "/in.enc", "rb") as source, open(spec["root"] + "/baseline.enc", "wb") as sink:
    remaining = size
    while remaining:
        chunk = source.read(min(1 << 20, remaining))
        remaining -= len(chunk)
        sink.write(encryptor.update(decryptor.update(chunk)))
    decryptor.finalize_with_tag(source.read(16))
    sink.write(encryptor.finalize() + encryptor.tag)
elapsed = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"seconds": elapsed, "maxrss_kib": usage.ru_maxrss, "cpu": usage.ru_utime + usage.ru_stime - cpu0,
                  "tag": encryptor.tag.hex()}))
"""


def run_child(code: str, spec: dict[str, object], *, show_stderr: bool = False) -> dict[str, float | str]:
    done = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], check=True,
                          capture_output=True, text=True, cwd=REPO)
    if show_stderr:
        print(done.stderr, file=sys.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=1024, help="input size in MiB (default 1024)")
    parser.add_argument("--only", choices=("file", "http"), help="run one transport only")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each measurement; medians are reported")
    parser.add_argument("--profile", action="store_true", help="print the task child's cProfile (top 15, own time)")
    args = parser.parse_args()
    size = args.mib << 20

    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    with tempfile.TemporaryDirectory(prefix="kettle-bench-data-") as tmp:
        root, work = Path(tmp) / "owner", Path(tmp) / "work"
        root.mkdir()
        work.mkdir()
        key, iv = os.urandom(32), os.urandom(12)
        encryptor = Cipher(algorithms.AES(key), modes.GCM(iv)).encryptor()
        encryptor.authenticate_additional_data(bytes(8))
        block = os.urandom(1 << 20)
        with (root / "in.enc").open("wb") as sink:
            for _ in range(args.mib):
                sink.write(encryptor.update(block))
            sink.write(encryptor.finalize())
            sink.write(encryptor.tag)
        spec: dict[str, object] = {"root": str(root), "key": key.hex(), "iv": iv.hex(),
                                   "cmac": encryptor.tag.hex(), "size": size, "profile": args.profile}

        server = subprocess.Popen([sys.executable, "-c", SERVER, str(root)], stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None
            port = int(server.stdout.readline())
            urls = {
                "file": ((root / "in.enc").as_uri(), (root / "out-file.enc").as_uri(), []),
                "http": (f"http://127.0.0.1:{port}/in.enc", f"http://127.0.0.1:{port}/out-http.enc",
                         [f"127.0.0.1:{port}"]),
            }
            transports = [t for t in urls if not args.only or t == args.only]
            baselines: list[dict[str, float | str]] = []
            runs: dict[str, list[dict[str, float | str]]] = {t: [] for t in transports}
            checks: dict[str, list[tuple[bool, int]]] = {t: [] for t in transports}
            expected = ""
            for _ in range(args.repeat):
                # Interleaved, so a change in the machine's load hits every row alike; dirty pages of
                # the previous run are written back first, so no run pays for another's.
                os.sync()
                baselines.append(run_child(BASELINE, spec))
                for transport in transports:
                    input_url, output_url, allow = urls[transport]
                    scratch = Path(tempfile.mkdtemp(dir=work))
                    os.sync()
                    task = run_child(CHILD, {**spec, "work": str(scratch), "input_url": input_url,
                                             "output_url": output_url, "allow": allow}, show_stderr=args.profile)
                    # Same key, iv and plaintext: the pipeline's output must be the baseline's bytes exactly.
                    expected = expected or digest(root / "baseline.enc")  # the same bytes in every run
                    same = task["tag"] == baselines[-1]["tag"] and digest(root / f"out-{transport}.enc") == expected
                    # The node removes the whole working directory; the worker itself must already have
                    # removed every staged plaintext and local output.
                    checks[transport].append((same, len([p for p in scratch.rglob("*") if p.is_file()])))
                    runs[transport].append(task)
        finally:
            server.terminate()
            server.wait()

    mib = args.mib
    base = statistics.median(float(b["seconds"]) for b in baselines)
    base_rss = max(int(b["maxrss_kib"]) for b in baselines) / 1024
    print(f"input: {mib} MiB aes-gcm-256; median of {args.repeat} run(s), peak RSS the largest seen")
    print(f"baseline  raw AES-GCM decrypt+encrypt, local files, streamed: {base:.2f} s, "
          f"{mib / base:.0f} MiB/s, peak RSS {base_rss:.0f} MiB  (runs: {_seconds(baselines)})")
    print(f"          CPU (user+sys) {statistics.median(float(b['cpu']) for b in baselines):.2f} s")
    for transport in transports:
        seconds = statistics.median(float(t["seconds"]) for t in runs[transport])
        rss = max(int(t["maxrss_kib"]) for t in runs[transport]) / 1024
        ratio = seconds / base
        print(f"task      {transport + '://':8} fetch, verify+stage, pass-through, encrypt, upload: "
              f"{seconds:.2f} s, {mib / seconds:.0f} MiB/s, peak RSS {rss:.0f} MiB; "
              f"{ratio:.2f}x the baseline's time ({100 / ratio:.0f} % of its throughput)  (runs: {_seconds(runs[transport])})")
        same = all(c[0] for c in checks[transport])
        left = sum(c[1] for c in checks[transport])
        cpu = statistics.median(float(t["cpu"]) for t in runs[transport])
        ratios = sorted(float(t["seconds"]) / float(b["seconds"]) for t, b in zip(runs[transport], baselines, strict=True))
        print(f"          CPU (user+sys) {cpu:.2f} s; median of the per-run time ratios {statistics.median(ratios):.2f}x")
        print(f"          output identical to the baseline's: {same}; files left in the working directory: {left}")


def digest(path: Path) -> str:
    """``size sha256`` of a file, read a chunk at a time (the children's peak RSS includes this
    process's: Linux keeps the high-water mark across exec), then removed. For a file the HTTP
    server received, what it noted in ``NAME.sha256``."""
    noted = Path(f"{path}.sha256")
    if noted.exists():
        text = noted.read_text()
        noted.unlink()
        return text
    sha, size = hashlib.sha256(), 0
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            sha.update(chunk)
            size += len(chunk)
    if path.name != "baseline.enc":
        path.unlink()
    return f"{size} {sha.hexdigest()}"


def _seconds(results: list[dict[str, float | str]]) -> str:
    return " ".join(f"{float(r['seconds']):.2f}" for r in results)

if __name__ == "__main__":
    main()
