"""The execution service's side of the sandbox: start the zygote, learn its layers, connect workers to it."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys

from . import protocol
from .layers import REQUIRED, Layers
from .zygote import CONTROL_FD_ENV, PARENT_PID_ENV

log = logging.getLogger(__name__)

START_TIMEOUT_SECS = 60.0
ZYGOTE_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "LANG": "C.UTF-8"}
"""The zygote's whole environment: nothing of the service's (which may hold secrets) reaches user code."""


class SandboxUnavailable(Exception):
    """The sandbox cannot run user code here (a required layer is missing, or the zygote failed)."""


class SandboxHost:
    """One zygote for this node; restarted on the next :meth:`connect` if it died."""

    def __init__(self, allow_degraded: bool = False) -> None:
        self.allow_degraded = allow_degraded
        self._process: asyncio.subprocess.Process | None = None
        self._control: socket.socket | None = None
        self.layers = Layers()
        self._failure: str | None = None

    async def start(self) -> Layers:
        """Start the zygote and learn its layers; raises :class:`SandboxUnavailable` (and remembers why)."""
        try:
            return await self._start()
        except SandboxUnavailable as exc:
            self._failure = f"SandboxUnavailable: {exc}"
            raise

    async def _start(self) -> Layers:
        ours, theirs = protocol.socket_pair()
        try:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-I", "-m", "kettle.sandbox.zygote",
                stdin=asyncio.subprocess.DEVNULL, pass_fds=(theirs.fileno(),),
                env={**ZYGOTE_ENV, CONTROL_FD_ENV: str(theirs.fileno()), PARENT_PID_ENV: str(os.getpid())},
            )
        finally:
            theirs.close()
        ours.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            data = await asyncio.wait_for(loop.sock_recv(ours, protocol.MAX_MESSAGE), START_TIMEOUT_SECS)
        except (asyncio.TimeoutError, OSError) as exc:
            await self.close()
            raise SandboxUnavailable(f"the sandbox's zygote did not start ({exc or 'timeout'})") from None
        if data[:1] != protocol.HELLO:
            await self.close()
            raise SandboxUnavailable("the sandbox's zygote did not start")
        ours.setblocking(True)
        self._control, self._failure = ours, None
        self.layers = Layers.from_json(protocol.body_json(data[1:])["layers"])
        missing = self.layers.missing(REQUIRED)
        if missing and self.allow_degraded:
            log.warning("UNSAFE: the sandbox runs user code WITHOUT %s (sandbox.unsafe_allow_degraded is on); %s",
                        ", ".join(missing), self.layers.summary())
        elif missing:
            log.error("the sandbox refuses to run user code: missing %s; %s", ", ".join(missing), self.layers.summary())
        else:
            log.info("%s", self.layers.summary())
        return self.layers

    @property
    def refusal(self) -> str | None:
        """Why user code may not run, or None."""
        if self._failure is not None:
            return self._failure
        missing = self.layers.missing(REQUIRED)
        if missing and not self.allow_degraded:
            return f"SandboxUnavailable: the sandbox lacks required layers: {', '.join(missing)}"
        return None

    async def connect(self) -> socket.socket:
        """A new client connection to the zygote, for one worker (the zygote is restarted if it died)."""
        if self._process is None or self._process.returncode is not None or self._control is None:
            if self._process is not None:
                log.warning("the sandbox's zygote died (status %s); starting another", self._process.returncode)
            await self.close()
            await self.start()
        assert self._control is not None
        ours, theirs = protocol.socket_pair()
        try:
            protocol.send(self._control, protocol.CLIENT, b"", [theirs.fileno()])
        finally:
            theirs.close()
        return ours

    async def close(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._process is not None:
            if self._process.returncode is None:
                try:
                    await asyncio.wait_for(self._process.wait(), 2.0)
                except asyncio.TimeoutError:
                    self._process.kill()
                    await self._process.wait()
            self._process = None

