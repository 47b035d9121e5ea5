"""Messages between the sandbox's processes: one datagram per message on ``SOCK_SEQPACKET`` sockets.

A message is a kind byte and a body, with descriptors alongside (``SCM_RIGHTS``).
Bodies are bounded (:data:`MAX_MESSAGE`); a longer one arrives truncated and is
refused, as is an unknown kind: the function's end of a socket is hostile.

Function → supervisor (the file socket): ``O``/``C`` + name (open an input,
create an output; answered ``+`` with a descriptor or ``-``), ``R`` + bytes (a
piece of the return value), ``D`` (done), ``F`` + JSON (the function failed:
type, message, traceback). The function reads each answer before it asks
again; one that does not, until the supervisor's answers no longer fit in its
socket, is stopped for it.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

MAX_MESSAGE = 1 << 16
MAX_FDS = 8

OPEN_INPUT, CREATE_OUTPUT, RETURN_PART, DONE, FAILED = b"O", b"C", b"R", b"D", b"F"
GRANTED, REFUSED = b"+", b"-"
# zygote <-> its clients
CLIENT, SPAWN, STARTED, EXITED, HELLO = b"c", b"s", b"t", b"x", b"h"
COMPILE, COMPILED, UNCOMPILED = b"m", b"k", b"u"
"""``UNCOMPILED`` answers a wasm ``SPAWN`` whose module the zygote has no compiled form of: ``COMPILE`` it first."""


class ProtocolError(Exception):
    """A message that breaks the protocol (too long, too many descriptors, unknown kind, bad JSON)."""


def socket_pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def send(sock: socket.socket, kind: bytes, body: bytes = b"", fds: list[int] | None = None) -> None:
    socket.send_fds(sock, [kind + body], fds or [])


def send_json(sock: socket.socket, kind: bytes, doc: Any, fds: list[int] | None = None) -> None:
    send(sock, kind, json.dumps(doc).encode(), fds)


def receive(sock: socket.socket) -> tuple[bytes, bytes, list[int]] | None:
    """(kind, body, descriptors), or None at end of stream. Descriptors of a refused message are closed."""
    data, fds, flags, _ = socket.recv_fds(sock, MAX_MESSAGE + 1, MAX_FDS)
    if not data and not fds:
        return None
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(data) > MAX_MESSAGE:
        close_all(fds)
        raise ProtocolError("a message longer than the protocol allows")
    return data[:1], data[1:], fds


def body_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise ProtocolError("a message whose body is not JSON") from None


def close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
