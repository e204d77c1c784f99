"""A seccomp filter that takes the kernel's keyrings away from a run.

Keyrings are not namespaced, and a key's permissions are checked against the host's user ids: a
run is the daemon's user on the host (root's, for a root daemon), so it could add keys to that
user's keyrings, which outlive it (a message to the next run, which must not know it is not the
first), or clear them. Runs have no use for keys: add_key, request_key and keyctl fail with EPERM,
and so does every system call made through another architecture's entry (i386's or x32's numbers
would dodge a filter that knows only this one's).

The filter is a classic BPF program, installed by prctl in the run's first process (it is
inherited across fork and exec, bwrap's children included); without a filter for this machine's
architecture, runs go without one.
"""
from __future__ import annotations

import ctypes
import os
import platform
import stat
import struct
from typing import Callable

# seccomp_data: the system call's number at offset 0, its architecture (AUDIT_ARCH_*) at offset 4.
ARCHITECTURES = {  # machine: (AUDIT_ARCH value, the keyring calls' numbers)
    "x86_64": (0xC000003E, (248, 249, 250)),
    "aarch64": (0xC00000B7, (217, 218, 219)),
}
X32_BIT = 0x40000000  # x86_64's x32 entry: the same numbers with this bit set
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
EPERM = 1
LOAD_WORD, JUMP_IF_EQUAL, JUMP_IF_AT_LEAST, RETURN = 0x20, 0x15, 0x35, 0x06


def _instruction(code: int, k: int, if_true: int = 0, if_false: int = 0) -> bytes:
    return struct.pack("HBBI", code, if_true, if_false, k)


def program(machine: str | None = None) -> bytes | None:
    """The filter for this machine (or `machine`) as sock_filter instructions; None where unknown."""
    found = ARCHITECTURES.get(machine or platform.machine())
    if found is None:
        return None
    arch, calls = found
    deny = 5 + len(calls)  # index of the EPERM return (after the calls, then the ALLOW)
    code = [
        _instruction(LOAD_WORD, 4),
        _instruction(JUMP_IF_EQUAL, arch, 0, deny - 2),  # another architecture's entry: denied
        _instruction(LOAD_WORD, 0),
        _instruction(JUMP_IF_AT_LEAST, X32_BIT, deny - 4, 0),
    ]
    for i, number in enumerate(calls):
        code.append(_instruction(JUMP_IF_EQUAL, number, deny - 5 - i, 0))
    code.append(_instruction(RETURN, SECCOMP_RET_ALLOW))
    code.append(_instruction(RETURN, SECCOMP_RET_ERRNO | EPERM))
    return b"".join(code)


class _Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def installer(bwrap: str | None) -> Callable[[], None]:
    """A call for a preexec_fn that installs the filter in the process about to exec (all made here,
    in the parent, so that the child only calls prctl). A set-user-id bwrap is left without it: the
    no-new-privileges flag an unprivileged install needs would keep bwrap from its privileges."""
    code = program()
    if code is None or (bwrap is not None and os.stat(bwrap).st_mode & stat.S_ISUID):
        return lambda: None
    buffer = ctypes.create_string_buffer(code, len(code))
    prog = _Program(len(code) // 8, ctypes.addressof(buffer))
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]

    def install() -> None:
        keep = (buffer, prog)  # alive until the call
        if prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(keep[1]), 0, 0) != 0:
            prctl(PR_SET_NO_NEW_PRIVS, 1, None, 0, 0)  # without CAP_SYS_ADMIN, a filter needs this first
            prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(keep[1]), 0, 0)

    return install
