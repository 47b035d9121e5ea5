"""Echo task latency and throughput through the SDK, against an empty attested RPC.

Starts a real platform (every service its own process, attested TLS, SQLite
storage) in a temporary home on free ports, then measures:

* the baseline: an empty attested RPC round trip (the standard gRPC health check
  on the frontend's attested endpoint), sequentially and with concurrent clients;
* echo task latency, create → invoke → result, p50 and p99, through the SDK;
* echo task throughput with 1, 4 and 16 concurrent clients, with 1 and 2
  execution nodes;

and prints each with its ratio to the baseline measured in the same run.

    .venv/bin/python bench/bench_tasks.py [--tasks N] [--latency-runs N]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from conftest import ALL_SERVICES, Platform, make_home, patched_environment, postgresql_schema  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from kettle.launcher import spawn  # noqa: E402
from kettle.provisioning import create_dev_auditors  # noqa: E402
from kettle.sdk import AuthenticationClient, FrontendClient  # noqa: E402

MESSAGE = "Hello, Teaclave!"


@contextlib.contextmanager
def temporary_platform(nodes: int = 1, storage: str = "sqlite") -> Iterator[Platform]:
    """A whole platform (``nodes`` execution nodes) in a temporary home on free ports, its
    state in SQLite or (``storage="postgresql"``) in a fresh schema of the test database."""
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        base = Path(tmp)
        create_dev_auditors(base / "cache")
        extra = ""
        if storage == "postgresql":
            stack.enter_context(patched_environment(KETTLE_STORAGE_DSN=stack.enter_context(postgresql_schema())))
            extra = '[storage]\nbackend = "postgresql"\n'
        platform = Platform(make_home(base / "home", base / "cache" / "auditors", extra=extra))
        platform.start(ALL_SERVICES)
        try:
            for n in range(2, nodes + 1):
                platform.children.append(spawn(f"execution-{n}", platform.config, "execution"))
            yield platform
        finally:
            platform.stop()


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def concurrently(clients: int, per_client: int, make_worker: Callable[[], Callable[[], None]]) -> float:
    """Run ``per_client`` operations on each of ``clients`` threads; return operations per second."""
    workers = [make_worker() for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)

    def run(worker: Callable[[], None]) -> None:
        barrier.wait()
        for _ in range(per_client):
            worker()

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    return clients * per_client / (time.perf_counter() - started)


class Bench:
    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.trust = platform.trust()
        auth = AuthenticationClient(platform.auth_address, self.trust)
        self.token = auth.user_login("admin", "teaclave")
        auth.close()
        client = self.client()
        self.function_id = client.register_function(
            "builtin-echo", "Native Echo Function", "builtin", arguments=["message"]
        )

    def client(self) -> FrontendClient:
        return FrontendClient(self.platform.frontend_address, self.trust, "admin", self.token)

    def health_worker(self) -> Callable[[], None]:
        client = self.client()
        stub = health_pb2_grpc.HealthStub(client._channel)  # the same attested channel the SDK uses
        request = health_pb2.HealthCheckRequest(service="")
        return lambda: stub.Check(request, timeout=10)

    def echo_worker(self) -> Callable[[], None]:
        client = self.client()

        def run() -> None:
            task_id = client.create_task(self.function_id, {"message": MESSAGE})
            client.invoke_task(task_id)
            assert client.get_task_result(task_id, timeout=120) == MESSAGE.encode()

        return run

    def latency(self, make_worker: Callable[[], Callable[[], None]], runs: int) -> list[float]:
        worker = make_worker()
        worker()  # warm up the channel
        samples = []
        for _ in range(runs):
            started = time.perf_counter()
            worker()
            samples.append(time.perf_counter() - started)
        return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=48, help="echo tasks per throughput measurement")
    parser.add_argument("--latency-runs", type=int, default=50)
    args = parser.parse_args()

    with temporary_platform() as platform:
        bench = Bench(platform)
        rtt = bench.latency(bench.health_worker, 200)
        base_p50 = statistics.median(rtt)
        print(f"baseline empty attested RPC: p50 {base_p50 * 1e3:.2f} ms, p99 {percentile(rtt, 99) * 1e3:.2f} ms")

        echo = bench.latency(bench.echo_worker, args.latency_runs)
        p50, p99 = statistics.median(echo), percentile(echo, 99)
        print(
            f"echo task latency (create→invoke→result), 1 node: p50 {p50 * 1e3:.1f} ms, "
            f"p99 {p99 * 1e3:.1f} ms — {p50 / base_p50:.0f}× the empty RPC"
        )

        print(f"{'nodes':>5} {'clients':>7} {'tasks/s':>9} {'empty RPC/s':>12} {'ratio':>7}")
        for nodes in (1, 2):
            if nodes == 2:
                platform.children.append(spawn("execution-2", platform.config, "execution"))
            for clients in (1, 4, 16):
                per_client = max(1, args.tasks // clients)
                tasks = concurrently(clients, per_client, bench.echo_worker)
                rpcs = concurrently(clients, 100, bench.health_worker)
                print(f"{nodes:>5} {clients:>7} {tasks:>9.1f} {rpcs:>12.0f} {rpcs / tasks:>6.0f}×")

if __name__ == "__main__":
    main()
