"""The sandbox's system-call filter: a classic BPF program for seccomp, built and loaded without a library.

A filter is a short list of comparisons, so it is written here directly
(``research/sandbox.md`` §2.1: building and loading takes about 0.4 ms, and
libseccomp's Python bindings break once Landlock is on). The policy:

- anything but the x86-64 ABI (x32, i386 entry points) kills the process;
- system calls newer than this table answer ``ENOSYS``, so a kernel upgrade
  cannot open a hole through a call the table does not know;
- the calls in :data:`FORBIDDEN` kill the process (``SIGSYS``), which the
  supervisor sees and reports as ``SandboxViolation``: networking, processes
  and programs, other processes' memory and signals, identities, mounts and
  namespaces, kernel facilities (BPF, io_uring, keys, modules), and every call
  that names a path — a sandboxed function has no business with the file
  system: it reaches its data through descriptors it was given;
- a few calls are allowed with arguments checked: ``clone`` only for a thread,
  ``kill``/``tgkill`` only to the process itself, ``newfstatat``/``statx``
  only on a descriptor (``AT_EMPTY_PATH``, which is how ``fstat`` is made),
  ``prlimit64`` only to read; ``clone3`` answers ``ENOSYS`` so that the C
  library falls back to ``clone`` where the flags can be read.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import struct

from .libc import LIBC

AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
NEWEST_KNOWN = 450
"""The highest system call number in the table below (Linux 6.1's ``unistd_64.h``)."""

SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000

CLONE_THREAD = 0x00010000
AT_EMPTY_PATH = 0x1000

SYSCALLS: dict[str, int] = {
    "open": 2, "stat": 4, "lstat": 6, "access": 21, "socket": 41, "connect": 42, "accept": 43, "bind": 49,
    "listen": 50, "socketpair": 53, "clone": 56, "fork": 57, "vfork": 58, "execve": 59, "kill": 62,
    "truncate": 76, "chdir": 80, "rename": 82, "mkdir": 83, "rmdir": 84, "creat": 85, "link": 86, "unlink": 87,
    "symlink": 88, "readlink": 89, "chmod": 90, "chown": 92, "lchown": 94, "ptrace": 101, "syslog": 103,
    "setuid": 105, "setgid": 106, "setreuid": 113, "setregid": 114, "setgroups": 116, "setresuid": 117,
    "setresgid": 119, "setfsuid": 122, "setfsgid": 123, "capset": 126, "rt_sigqueueinfo": 129, "utime": 132,
    "mknod": 133, "uselib": 134, "personality": 135, "ustat": 136, "statfs": 137, "sysfs": 139,
    "vhangup": 153, "modify_ldt": 154, "pivot_root": 155, "prctl": 157, "adjtimex": 159, "setrlimit": 160,
    "chroot": 161, "acct": 163, "settimeofday": 164, "mount": 165, "umount2": 166, "swapon": 167,
    "swapoff": 168, "reboot": 169, "sethostname": 170, "setdomainname": 171, "iopl": 172, "ioperm": 173,
    "init_module": 175, "delete_module": 176, "quotactl": 179, "nfsservctl": 180, "setxattr": 188,
    "lsetxattr": 189, "getxattr": 191, "lgetxattr": 192, "listxattr": 194, "llistxattr": 195,
    "removexattr": 197, "lremovexattr": 198, "tkill": 200, "lookup_dcookie": 212, "clock_settime": 227,
    "tgkill": 234, "utimes": 235, "kexec_load": 246, "add_key": 248, "request_key": 249, "keyctl": 250,
    "inotify_init": 253, "openat": 257, "mkdirat": 258, "mknodat": 259, "fchownat": 260, "futimesat": 261,
    "newfstatat": 262, "unlinkat": 263, "renameat": 264, "linkat": 265, "symlinkat": 266, "readlinkat": 267,
    "fchmodat": 268, "faccessat": 269, "unshare": 272, "utimensat": 280, "accept4": 288, "inotify_init1": 294,
    "rt_tgsigqueueinfo": 297, "perf_event_open": 298, "fanotify_init": 300, "prlimit64": 302,
    "name_to_handle_at": 303, "open_by_handle_at": 304, "clock_adjtime": 305, "setns": 308,
    "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312, "finit_module": 313, "renameat2": 316,
    "memfd_create": 319, "kexec_file_load": 320, "bpf": 321, "execveat": 322, "userfaultfd": 323,
    "statx": 332, "pidfd_send_signal": 424, "io_uring_setup": 425, "io_uring_enter": 426,
    "io_uring_register": 427, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
    "fsmount": 432, "fspick": 433, "pidfd_open": 434, "clone3": 435, "openat2": 437, "pidfd_getfd": 438,
    "faccessat2": 439, "mount_setattr": 442,
}

FORBIDDEN: tuple[str, ...] = (
    # networking (the only socket a function has is the one to its supervisor, handed over ready)
    "socket", "socketpair", "connect", "bind", "listen", "accept", "accept4",
    # other processes and programs
    "fork", "vfork", "execve", "execveat", "ptrace", "process_vm_readv", "process_vm_writev", "kcmp",
    "tkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_open", "pidfd_send_signal", "pidfd_getfd",
    # identities and privileges
    "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setgroups", "setfsuid", "setfsgid",
    "capset", "prctl", "personality", "setrlimit",
    # the file system: every call that takes a path
    "open", "openat", "openat2", "creat", "stat", "lstat", "access", "faccessat", "faccessat2", "readlink",
    "readlinkat", "truncate", "chdir", "rename", "renameat", "renameat2", "mkdir", "mkdirat", "rmdir", "link",
    "linkat", "symlink", "symlinkat", "unlink", "unlinkat", "chmod", "fchmodat", "chown", "lchown", "fchownat",
    "mknod", "mknodat", "utime", "utimes", "utimensat", "futimesat", "statfs", "ustat", "sysfs", "uselib",
    "setxattr", "lsetxattr", "getxattr", "lgetxattr", "listxattr", "llistxattr", "removexattr", "lremovexattr",
    "name_to_handle_at", "open_by_handle_at", "inotify_init", "inotify_init1", "fanotify_init", "memfd_create",
    # mounts, namespaces and the machine
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "open_tree", "move_mount", "fsopen",
    "fsconfig", "fsmount", "fspick", "mount_setattr", "swapon", "swapoff", "reboot", "acct", "quotactl",
    "sethostname", "setdomainname", "settimeofday", "clock_settime", "adjtimex", "clock_adjtime", "syslog",
    "vhangup", "iopl", "ioperm", "modify_ldt", "nfsservctl", "lookup_dcookie",
    # kernel facilities
    "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "keyctl", "add_key", "request_key", "init_module", "finit_module", "delete_module", "kexec_load",
    "kexec_file_load",
)

_LD_W_ABS, _JEQ, _JGE, _JGT, _JSET, _RET = 0x20, 0x15, 0x35, 0x25, 0x45, 0x06
_NR, _ARCH = 0, 4


def _arg_low(index: int) -> int:
    return 16 + 8 * index


def _arg_high(index: int) -> int:
    return 20 + 8 * index


def _ins(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("<HBBI", code, jt, jf, k)


def _ret(action: int) -> bytes:
    return _ins(_RET, action)


def _when(name: str, block: list[bytes]) -> list[bytes]:
    """``block`` (which must return) runs only for system call ``name``; otherwise it is skipped."""
    return [_ins(_JEQ, SYSCALLS[name], 0, len(block)), *block]


def _only_if_bits(name: str, arg: int, bits: int) -> list[bytes]:
    return _when(name, [_ins(_LD_W_ABS, _arg_low(arg)), _ins(_JSET, bits, 0, 1),
                        _ret(SECCOMP_RET_ALLOW), _ret(SECCOMP_RET_KILL_PROCESS)])


def _only_for(name: str, arg: int, value: int) -> list[bytes]:
    return _when(name, [_ins(_LD_W_ABS, _arg_low(arg)), _ins(_JEQ, value, 0, 1),
                        _ret(SECCOMP_RET_ALLOW), _ret(SECCOMP_RET_KILL_PROCESS)])


@functools.cache
def build_filter(own_pid: int) -> bytes:
    """The filter program for a process whose pid is ``own_pid`` (the only target its signals may have).

    Kept: children that are pid 1 of their own namespace share one, built once by the zygote.
    """
    program = [
        _ins(_LD_W_ABS, _ARCH),
        _ins(_JEQ, AUDIT_ARCH_X86_64, 1, 0),
        _ret(SECCOMP_RET_KILL_PROCESS),
        _ins(_LD_W_ABS, _NR),
        _ins(_JGE, X32_SYSCALL_BIT, 0, 1),
        _ret(SECCOMP_RET_KILL_PROCESS),
        _ins(_JGT, NEWEST_KNOWN, 0, 1),
        _ret(SECCOMP_RET_ERRNO | errno.ENOSYS),
        *_when("clone3", [_ret(SECCOMP_RET_ERRNO | errno.ENOSYS)]),
        *_only_if_bits("clone", 0, CLONE_THREAD),
        *_only_for("kill", 0, own_pid),
        *_only_for("tgkill", 0, own_pid),
        *_only_if_bits("newfstatat", 3, AT_EMPTY_PATH),
        *_only_if_bits("statx", 2, AT_EMPTY_PATH),
        *_when("prlimit64", [_ins(_LD_W_ABS, _arg_low(2)), _ins(_JEQ, 0, 0, 3), _ins(_LD_W_ABS, _arg_high(2)),
                             _ins(_JEQ, 0, 0, 1), _ret(SECCOMP_RET_ALLOW), _ret(SECCOMP_RET_KILL_PROCESS)]),
    ]
    for name in FORBIDDEN:
        program += _when(name, [_ret(SECCOMP_RET_KILL_PROCESS)])
    program.append(_ret(SECCOMP_RET_ALLOW))
    return b"".join(program)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2


def load(program: bytes) -> None:
    """Install ``program`` on the calling thread (and its future threads); it cannot be removed."""
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    if LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    if LIBC.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "loading the seccomp filter failed")
