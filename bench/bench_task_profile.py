"""Where an echo task's time goes: CPU per task per service, and the wall time of one task.

Starts a real platform (every service its own process, attested TLS, SQLite
storage) in a temporary home on free ports, runs echo tasks through the SDK, and
prints:

* **CPU-milliseconds per task, per process**, read from ``/proc/PID/stat`` before
  and after a closed-loop run (user + system time of each service, plus its
  finished children: an execution node's task workers and sandbox children, which
  it reaps; with PostgreSQL storage, the database server's processes too). The total over all processes, the client included, is what decides
  throughput on a machine whose cores all services share.
* **The wall time of one task**, split by the client's calls (CreateTask,
  InvokeTask, the wait for the result), median over sequential runs.

With ``--storage sqlite,postgresql`` it does all of that once per storage backend,
in the same run (PostgreSQL: a fresh schema of the test database at 127.0.0.1:5432).

    .venv/bin/python bench/bench_task_profile.py [--tasks N] [--clients N] [--nodes N] [--storage LIST]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_tasks import MESSAGE, temporary_platform  # noqa: E402 (bench_tasks puts tests/ on the path)
from conftest import Platform  # noqa: E402

from kettle.sdk import AuthenticationClient, FrontendClient  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) time of ``pid`` and of all its descendants, live or reaped, in seconds.

    A live child's time is not in its parent's ``cutime`` yet (an execution node's
    worker template, and the sandbox's zygote, live as long as the node), so live
    descendants are added one by one; each adds its own reaped children.
    """
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(_stat(int(entry.name))[1])
            except (OSError, IndexError, ValueError):
                continue
    family, grew = {pid}, True
    while grew:
        grew = False
        for child, parent in parents.items():
            if parent in family and child not in family:
                family.add(child)
                grew = True
    user = system = 0.0
    for member in family:
        try:
            # utime, stime, cutime, cstime are fields 14..17 (index 11..14 after the name)
            utime, stime, cutime, cstime = (int(f) / TICK for f in _stat(member)[11:15])
        except (OSError, ValueError):
            continue  # it ended meanwhile: its time is in its parent's cutime
        user, system = user + utime + cutime, system + stime + cstime
    return user, system


def postmaster() -> int:
    """The PostgreSQL server's parent process (its per-connection processes are its children)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    parent = int(_stat(int(entry.name))[1])
                    if Path(f"/proc/{parent}/comm").read_text().strip() != "postgres":
                        return int(entry.name)
            except (OSError, ValueError):
                continue
    raise SystemExit("no PostgreSQL server process found on this machine")


def own_cpu_seconds() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


class Profile:
    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        trust = platform.trust()
        auth = AuthenticationClient(platform.auth_address, trust)
        token = auth.user_login("admin", "teaclave")
        auth.close()
        self.trust, self.token = trust, token
        self.function_id = self.client().register_function(
            "builtin-echo", "Native Echo Function", "builtin", arguments=["message"]
        )

    def client(self) -> FrontendClient:
        return FrontendClient(self.platform.frontend_address, self.trust, "admin", self.token)

    def processes(self) -> dict[str, int]:
        found = {c.name: c.process.pid for c in self.platform.children}
        if self.platform.config.storage.backend == "postgresql":
            found["PostgreSQL server"] = postmaster()
        return found

    def cpu_per_task(self, tasks: int, clients: int) -> tuple[dict[str, tuple[float, float]], float]:
        """(user, system) CPU-ms per task of each process, and tasks per second, over a closed-loop run."""
        workers = [self.client() for _ in range(clients)]
        for client in workers:  # warm every channel before measuring
            run_echo(client, self.function_id)
        per_client = max(1, tasks // clients)
        barrier = threading.Barrier(clients + 1)

        def loop(client: FrontendClient) -> None:
            barrier.wait()
            for _ in range(per_client):
                run_echo(client, self.function_id)

        threads = [threading.Thread(target=loop, args=(c,)) for c in workers]
        for t in threads:
            t.start()
        pids = self.processes()
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        client_before = own_cpu_seconds()
        barrier.wait()
        started = time.perf_counter()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
        done = per_client * clients
        after = {name: cpu_seconds(pid) for name, pid in pids.items()}
        after["client (SDK)"], before["client (SDK)"] = own_cpu_seconds(), client_before
        spent = {name: tuple((a - b) * 1000 / done for a, b in zip(after[name], before[name], strict=True))
                 for name in after}
        for client in workers:
            client.close()
        return spent, done / elapsed

    def wall_split(self, runs: int) -> dict[str, list[float]]:
        client = self.client()
        run_echo(client, self.function_id)
        split: dict[str, list[float]] = {"CreateTask": [], "InvokeTask": [], "wait for the result": [], "whole task": []}
        for _ in range(runs):
            t0 = time.perf_counter()
            task_id = client.create_task(self.function_id, {"message": MESSAGE})
            t1 = time.perf_counter()
            client.invoke_task(task_id)
            t2 = time.perf_counter()
            assert client.get_task_result(task_id, timeout=120) == MESSAGE.encode()
            t3 = time.perf_counter()
            for name, value in (("CreateTask", t1 - t0), ("InvokeTask", t2 - t1),
                                ("wait for the result", t3 - t2), ("whole task", t3 - t0)):
                split[name].append(value * 1000)
        client.close()
        return split


def run_echo(client: FrontendClient, function_id: str) -> None:
    task_id = client.create_task(function_id, {"message": MESSAGE})
    client.invoke_task(task_id)
    result = client.get_task_result(task_id, timeout=120)
    if result != MESSAGE.encode():
        raise SystemExit(f"echo task {task_id} returned {result!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=200, help="echo tasks in the CPU measurement")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--nodes", type=int, default=2, help="execution nodes")
    parser.add_argument("--latency-runs", type=int, default=30)
    parser.add_argument("--storage", default="sqlite", help="storage backends to measure, comma-separated")
    args = parser.parse_args()

    for storage in args.storage.split(","):
        print(f"== storage: {storage}")
        with temporary_platform(args.nodes, storage) as platform:
            report(Profile(platform), args)


def report(profile: Profile, args: argparse.Namespace) -> None:
    split = profile.wall_split(args.latency_runs)
    print(f"wall time of one echo task, median of {args.latency_runs} sequential runs (ms):")
    for name, samples in split.items():
        print(f"  {name:<22} {statistics.median(samples):8.2f}")
    spent, rate = profile.cpu_per_task(args.tasks, args.clients)
    print(f"\nCPU-ms per echo task, {args.tasks} tasks from {args.clients} clients, "
          f"{args.nodes} execution node(s): {rate:.1f} tasks/s")
    print(f"  {'process':<22} {'user':>8} {'system':>8} {'total':>8}")
    for name, (user, system) in sorted(spent.items(), key=lambda kv: -sum(kv[1])):
        print(f"  {name:<22} {user:8.2f} {system:8.2f} {user + system:8.2f}")
    total = sum(sum(v) for v in spent.values())
    print(f"  {'total':<22} {sum(u for u, _ in spent.values()):8.2f} "
          f"{sum(s for _, s in spent.values()):8.2f} {total:8.2f}")
    print(f"  CPU-bound ceiling on {os.cpu_count()} cores: {os.cpu_count() * 1000 / total:.0f} tasks/s")

if __name__ == "__main__":
    main()
