"""The execution service's process: attest, then run the node loops until SIGTERM/SIGINT.

It serves nothing (a pure client of the scheduler), so it does not use
``ServiceRuntime.serve``; it signals readiness once attested and once its worker
template is warm. It runs ``[execution] concurrent_tasks`` task slots at once
(one per core by default): each slot is a node loop of its own, with its own
executor id, lease and heartbeats, so the scheduler treats it exactly as a
node that runs one task at a time; the slots share the worker template, the
sandbox and the scratch directory. Stopping kills the running workers (the
scheduler re-queues their tasks when the leases run out) and the spare, and
removes the node's scratch directory.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import uuid

from ...config import Config
from ..runtime import ServiceRuntime, signal_ready
from .node import ExecutionNode, ReceiptSigner, SchedulerClient, Workspace
from .scratch import NodeScratch
from .workers import WorkerPool
from ...sandbox.host import SandboxHost, SandboxUnavailable

log = logging.getLogger(__name__)


async def main(config: Config) -> None:
    runtime = ServiceRuntime("execution", config)
    await runtime.attest()
    executor_id = str(uuid.uuid4())
    for name in ("max_task_input_bytes", "min_free_disk_bytes"):
        if getattr(config.execution, name) == 0:
            log.warning("execution.%s = 0: that limit on staged inputs is OFF", name)
    sandbox = SandboxHost(allow_degraded=config.sandbox.unsafe_allow_degraded)
    try:
        await sandbox.start()
    except SandboxUnavailable as exc:  # built-ins still run; user code is refused with this reason
        log.error("%s", exc)
    scratch = NodeScratch(config.path(config.execution.scratch_dir), executor_id)
    workspace = Workspace(
        home=config.home,
        root=scratch.root,
        file_agent=config.file_agent,
        sandbox=config.sandbox,
        sandbox_host=sandbox,
        execution=config.execution,
    )
    workers = WorkerPool(sandbox)
    await workers.start()
    identities = runtime.identities
    slots = [executor_id, *(str(uuid.uuid4()) for _ in range(config.execution.task_slots() - 1))]
    nodes = [
        ExecutionNode(SchedulerClient(runtime.peers, slot), workers, workspace,
                      ReceiptSigner(lambda: identities.current, slot))
        for slot in slots
    ]
    log.info("execution node %s is running, %d task(s) at once (executor ids %s)",
             executor_id, len(slots), ", ".join(slots))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    work = asyncio.create_task(_run_all(nodes))
    stopping = asyncio.create_task(stop.wait())
    signal_ready()
    try:
        await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        log.info("execution node %s is stopping", executor_id)
        for task in (work, stopping):
            task.cancel()
        results = await asyncio.gather(work, stopping, return_exceptions=True)
        await workers.close()
        await sandbox.close()
        workspace.remove()
        scratch.release()
        await runtime.identities.stop()
        await runtime.peers.close()
    failure = results[0]
    if isinstance(failure, Exception):
        raise failure


async def _run_all(nodes: list[ExecutionNode]) -> None:
    """Every slot's loop; the first to fail stops the others (and the service)."""
    loops = [asyncio.create_task(node.run_forever()) for node in nodes]
    try:
        await asyncio.gather(*loops)
    finally:
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
