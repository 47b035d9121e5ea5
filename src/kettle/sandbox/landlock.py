"""Landlock through its three system calls: a process that takes away its own file-system, TCP and signal rights.

The sandbox adds **no** rule: a sandboxed function may not open, create,
execute or list anything, may not bind or connect TCP ports, and may not
signal processes or reach abstract unix sockets outside its own domain. What
it reads and writes arrives as descriptors opened before (Landlock does not
affect those). The rights handled depend on the kernel's ABI version; the
version found is reported with the sandbox's layers.
"""

from __future__ import annotations

import ctypes
import os

from .libc import LIBC

SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = 444, 445, 446
CREATE_RULESET_VERSION = 1

_FS_RIGHTS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1, 5: (1 << 16) - 1}
"""Every file-system right the ABI knows: execute, write, read, read dir, remove, make *, refer (2), truncate (3), ioctl on devices (5)."""
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


def abi_version() -> int:
    """The kernel's Landlock ABI version, or 0 when Landlock is absent or disabled."""
    version = LIBC.syscall(SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(CREATE_RULESET_VERSION))
    return max(int(version), 0)


def restrict_self(abi: int) -> None:
    """Deny this process (and what it starts) every file-system, TCP and scoped right of Landlock ``abi``.

    Needs ``no_new_privs`` (set by the caller) unless the caller is privileged.
    """
    if abi < 1:
        raise OSError("Landlock is not available")
    attr = _RulesetAttr(_FS_RIGHTS_BY_ABI[min(abi, 5)], 0, 0)
    size = 8
    if abi >= 4:
        attr.handled_access_net, size = NET_BIND_TCP | NET_CONNECT_TCP, 16
    if abi >= 6:
        attr.scoped, size = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL, 24
    ruleset = LIBC.syscall(SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    try:
        if LIBC.syscall(SYS_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(ruleset)
