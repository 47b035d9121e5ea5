"""Echo tasks against a platform that is already running, as a user drives it with the SDK.

Start the platform the usual way in one terminal (``make up``), then in another:

    .venv/bin/python bench/bench_platform_load.py [--clients 16] [--seconds 30]

It reads ``$KETTLE_HOME`` (default ``~/.kettle``) for the endpoints and trust files,
logs in as ``admin`` (``--password``, default the dev password), registers
``builtin-echo`` and then runs ``--clients`` threads, each with its own attested
channel, each creating, invoking and awaiting echo tasks back to back for
``--seconds``. It prints tasks per second and the latency of whole tasks, and,
as the baseline measured in the same run with the same number of clients, empty
attested RPCs per second (the gRPC health check on the frontend's channel).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_tasks import MESSAGE, percentile  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from kettle.config import DEFAULT_ADMIN_PASSWORD, load_config  # noqa: E402
from kettle.sdk import AuthenticationClient, ClientTrust, FrontendClient  # noqa: E402


def run_for(seconds: float, clients: int, make_worker: Callable[[], Callable[[], None]]) -> tuple[float, list[float]]:
    """Each client runs its operation back to back for ``seconds``: (operations per
    second, the duration of each operation)."""
    workers = [make_worker() for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)
    stop = threading.Event()
    durations: list[list[float]] = [[] for _ in workers]

    def run(worker: Callable[[], None], samples: list[float]) -> None:
        barrier.wait()
        while not stop.is_set():
            started = time.perf_counter()
            worker()
            samples.append(time.perf_counter() - started)

    threads = [threading.Thread(target=run, args=(w, d)) for w, d in zip(workers, durations, strict=True)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    every = [d for samples in durations for d in samples]
    return len(every) / elapsed, every


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--user", default="admin")
    parser.add_argument("--password", default=DEFAULT_ADMIN_PASSWORD)
    args = parser.parse_args()

    config = load_config()
    trust = ClientTrust.from_config(config)
    auth = AuthenticationClient(config.endpoint("authentication", api=True).target, trust)
    token = auth.user_login(args.user, args.password)
    auth.close()
    frontend = config.endpoint("frontend", api=True).target

    def client() -> FrontendClient:
        return FrontendClient(frontend, trust, args.user, token)

    function_id = client().register_function("builtin-echo", "Native Echo Function", "builtin", arguments=["message"])

    def echo_worker() -> Callable[[], None]:
        sdk = client()

        def run() -> None:
            task_id = sdk.create_task(function_id, {"message": MESSAGE})
            sdk.invoke_task(task_id)
            if sdk.get_task_result(task_id, timeout=120) != MESSAGE.encode():
                raise SystemExit(f"echo task {task_id} returned the wrong result")

        run()  # warm the channel
        return run

    def health_worker() -> Callable[[], None]:
        stub = health_pb2_grpc.HealthStub(client()._channel)
        request = health_pb2.HealthCheckRequest(service="")
        stub.Check(request, timeout=10)
        return lambda: stub.Check(request, timeout=10)

    rpcs, _ = run_for(min(args.seconds, 10.0), args.clients, health_worker)
    tasks, durations = run_for(args.seconds, args.clients, echo_worker)
    print(f"{args.clients} clients, {args.seconds:.0f} s against {frontend}:")
    print(f"  echo tasks: {tasks:.1f} tasks/s; per task p50 {statistics.median(durations) * 1e3:.1f} ms, "
          f"p99 {percentile(durations, 99) * 1e3:.1f} ms")
    print(f"  baseline, empty attested RPCs: {rpcs:.0f} RPC/s ({rpcs / tasks:.0f}x the task rate)")


if __name__ == "__main__":
    main()
