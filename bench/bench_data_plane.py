"""A large ``aes-gcm-256`` input through a pass-through task: the execution service's data path.

What is measured is exactly what an execution node's worker does for a task
whose function copies its input to its output: fetch the input from its URL,
verify its GCM tag while decrypting it into encrypted scratch space, let the
function read that plaintext and write the output, encrypt the output under its
owner's key as it is written, upload it. It runs in a child process (like a
worker) so its peak memory (``ru_maxrss``) is its own.

Baseline, measured in the same run on the same bytes: a raw streaming AES-GCM
decrypt of the input file and encrypt into an output file with ``cryptography``
in 1 MiB chunks — the least any pipeline must do, without staging, so without
the guarantee that the function sees only verified bytes.

    .venv/bin/python bench/bench_data_plane.py [--mib 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time, uuid
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
    input_data={"in": FileRecord("i", (root / "in.enc").as_uri(), crypto, ("owner",), bytes.fromhex(spec["cmac"]))},
    output_data={"out": FileRecord("o", (root / "out.enc").as_uri(), crypto, ("owner",))},
)
agent = FileAgent(FileAgentConfig(allowed_schemes=("file",), file_roots=(str(root),), max_file_bytes=1 << 40), root)
start = time.perf_counter()
result = run_staged_task(staged, DataPlane(agent, work))
elapsed = time.perf_counter() - start
assert result.outputs is not None, result.failure
print(json.dumps({"seconds": elapsed, "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "tag": result.outputs.tags_map["out"].hex()}))
"""

BASELINE = r"""
import json, resource, sys, time
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
print(json.dumps({"seconds": elapsed, "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "tag": encryptor.tag.hex()}))
"""


def run_child(code: str, spec: dict[str, object]) -> dict[str, float | str]:
    output = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], check=True,
                            capture_output=True, text=True, cwd=REPO).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=1024, help="input size in MiB (default 1024)")
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
        spec = {"root": str(root), "work": str(work), "key": key.hex(), "iv": iv.hex(),
                "cmac": encryptor.tag.hex(), "size": size}

        baseline = run_child(BASELINE, spec)
        task = run_child(CHILD, spec)
        # Same key, iv and plaintext: the pipeline's output must be the baseline's bytes exactly.
        same = (root / "out.enc").read_bytes() == (root / "baseline.enc").read_bytes() if args.mib <= 256 else (
            task["tag"] == baseline["tag"])
        # The node removes the whole working directory; the worker itself must already have
        # removed every staged plaintext.
        leftovers = [p for p in work.rglob("staged-*") if p.is_file()]

    mib = args.mib
    print(f"input: {mib} MiB aes-gcm-256 (file:// URL, local disk)")
    print(f"baseline  raw AES-GCM decrypt+encrypt, streamed: {baseline['seconds']:.2f} s, "
          f"{mib / float(baseline['seconds']):.0f} MiB/s, peak RSS {int(baseline['maxrss_kib']) / 1024:.0f} MiB")
    print(f"task      fetch, verify+stage, pass-through, encrypt, upload: {task['seconds']:.2f} s, "
          f"{mib / float(task['seconds']):.0f} MiB/s, peak RSS {int(task['maxrss_kib']) / 1024:.0f} MiB")
    print(f"ratio     task / baseline time: {float(task['seconds']) / float(baseline['seconds']):.2f}x")
    print(f"output identical to the baseline's: {same}; staged plaintexts left: {len(leftovers)}")


if __name__ == "__main__":
    main()
