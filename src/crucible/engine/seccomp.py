"""Compiles the shipped seccomp profile (seccomp.json, OCI format) to a BPF program once.

runc compiles ``linux.seccomp`` with libseccomp in every container it starts; for
Docker's ~350-syscall profile that was about a quarter of a hello world's CPU cost
(measured: 40 → 30 ms per `runc run` without it). The profile never changes between
runs, so the supervisor compiles it once, with the same libseccomp (through ctypes:
runc's own dependency, libseccomp2), and the sandbox's init loads the resulting BPF
into the program's process with ``prctl(PR_SET_SECCOMP)`` just before ``execve``
(init.c). The init fails closed: no filter, no program.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import tempfile
from typing import Any

_ARCHES = {"SCMP_ARCH_X86_64": b"x86_64", "SCMP_ARCH_X86": b"x86", "SCMP_ARCH_X32": b"x32",
           "SCMP_ARCH_AARCH64": b"aarch64", "SCMP_ARCH_ARM": b"arm"}  # fmt: skip
_OPS = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}
_SCMP_ACT_ALLOW = 0x7FFF0000
_SCMP_FLTATR_CTL_OPTIMIZE = 8  # 2 = binary tree: fewer instructions per syscall


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def _lib() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    lib = ctypes.CDLL(name, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


def _action(name: str, errno_ret: int | None) -> int:
    if name == "SCMP_ACT_ALLOW":
        return _SCMP_ACT_ALLOW
    if name == "SCMP_ACT_ERRNO":
        return 0x00050000 | ((errno_ret if errno_ret is not None else 1) & 0xFFFF)
    raise ValueError(f"unsupported seccomp action {name}")


def compile_bpf(profile: dict[str, Any]) -> bytes:
    """The BPF program (``struct sock_filter[]``) of an OCI seccomp profile.

    Raises ValueError for a profile it cannot express and OSError when libseccomp
    refuses a rule, so a broken profile stops the platform instead of weakening runs.
    """
    lib = _lib()
    default = _action(profile["defaultAction"], profile.get("defaultErrnoRet"))
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise OSError("seccomp_init failed")
    try:
        lib.seccomp_attr_set(ctx, _SCMP_FLTATR_CTL_OPTIMIZE, 2)
        for arch in profile.get("architectures", []):
            token = lib.seccomp_arch_resolve_name(_ARCHES[arch])
            rc = lib.seccomp_arch_add(ctx, token)
            if rc not in (0, -17):  # -EEXIST: the native architecture is already in
                raise OSError(-rc, f"seccomp_arch_add({arch}): {os.strerror(-rc)}")
        for rule in profile["syscalls"]:
            action = _action(rule["action"], rule.get("errnoRet"))
            if action == default:
                continue
            args = rule.get("args") or []
            cmps = (_ArgCmp * max(1, len(args)))(
                *[
                    _ArgCmp(a["index"], _OPS[a["op"]], a.get("value", 0), a.get("valueTwo", 0))
                    for a in args
                ]
            )
            for name in rule["names"]:
                nr = lib.seccomp_syscall_resolve_name(name.encode())
                if nr < 0:
                    continue  # unknown to this libseccomp: stays denied by default
                rc = lib.seccomp_rule_add_array(ctx, action, nr, len(args), cmps)
                if rc != 0:
                    raise OSError(-rc, f"seccomp rule for {name}: {os.strerror(-rc)}")
        with tempfile.TemporaryFile() as out:
            rc = lib.seccomp_export_bpf(ctx, out.fileno())
            if rc != 0:
                raise OSError(-rc, f"seccomp_export_bpf: {os.strerror(-rc)}")
            out.seek(0)
            program = out.read()
    finally:
        lib.seccomp_release(ctx)
    if not program or len(program) % 8:
        raise OSError("libseccomp exported an empty or malformed filter")
    return program
