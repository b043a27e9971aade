#!/usr/bin/env python3
"""Generate Crucible's OCI seccomp profile from Docker's (moby) default profile.

Usage:
    python3 scripts/gen_seccomp.py path/to/moby/profiles/seccomp/default.json \
        > src/crucible/engine/seccomp.json

Docker's profile is in a Docker-specific format: each rule may carry
``includes`` / ``excludes`` filters on capabilities, architectures and kernel
version, which dockerd resolves at container start.  This script resolves them
once, for the container Crucible runs:

* no capabilities at all -> a rule with ``includes.caps`` is dropped, a rule
  with ``excludes.caps`` is kept (it applies "unless you hold these caps");
* x86_64 with the x86 and x32 sub-architectures -> a rule with
  ``includes.arches`` is kept only if it names one of those, and a rule whose
  ``excludes.arches`` names one of them is dropped;
* ``minKernel`` is ignored (the rule is kept).

It then removes the syscalls in ``DENY`` from every ALLOW rule, so the result
is never looser than Docker's, and prints the profile in OCI runtime-spec
format (``linux.seccomp``).  It reads a local file only; it never fetches.
"""

import json
import sys
from typing import Any

Rule = dict[str, Any]

ARCHES = {"amd64", "x86_64", "x86", "x32"}
OCI_ARCHITECTURES = ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]

# Never allowed, whatever the Docker profile says.  Most of these are already
# denied to a capability-less container by Docker; the ones Docker allows
# without capabilities (ptrace, name_to_handle_at, and io_uring_* in profiles
# older than moby PR #46762) are removed here.
DENY = frozenset(
    {
        # namespaces, mounts, changing root
        "mount",
        "umount",
        "umount2",
        "unshare",
        "setns",
        "chroot",
        "pivot_root",
        "fsopen",
        "fsconfig",
        "fsmount",
        "fspick",
        "move_mount",
        "open_tree",
        "mount_setattr",
        # tracing other processes
        "ptrace",
        # kernel modules, kexec, reboot, swap, accounting, clock, I/O ports
        "init_module",
        "finit_module",
        "delete_module",
        "kexec_load",
        "kexec_file_load",
        "reboot",
        "swapon",
        "swapoff",
        "acct",
        "settimeofday",
        "stime",
        "clock_settime",
        "clock_settime64",
        "iopl",
        "ioperm",
        # kernel attack surface
        "bpf",
        "perf_event_open",
        "keyctl",
        "add_key",
        "request_key",
        "userfaultfd",
        "lookup_dcookie",
        "quotactl",
        "quotactl_fd",
        "vhangup",
        "syslog",
        # file handles (the "shocker" container escape)
        "open_by_handle_at",
        "name_to_handle_at",
        # io_uring bypasses seccomp; removed from Docker's default in moby PR #46762
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
    }
)


def applies(rule: Rule) -> bool:
    """Whether a Docker rule applies to a capability-less x86_64 container."""
    includes = rule.get("includes") or {}
    excludes = rule.get("excludes") or {}
    if includes.get("caps"):
        return False  # needs a capability we do not grant
    if includes.get("arches") and not ARCHES & set(includes["arches"]):
        return False  # for another architecture
    # excludes.caps: "unless you have these caps"; we have none -> applies.
    # includes.minKernel: ignored, the rule is kept.
    # excludes.arches: dropped if it names our architecture.
    return not ARCHES & set(excludes.get("arches") or ())


def convert(rule: Rule) -> Rule | None:
    """Convert one Docker rule to an OCI LinuxSyscall, or None if emptied."""
    names = set(rule["names"])
    if rule["action"] == "SCMP_ACT_ALLOW":
        names -= DENY
    if not names:
        return None
    out: Rule = {"names": sorted(names), "action": rule["action"]}
    if rule.get("args"):
        out["args"] = [
            {
                "index": arg["index"],
                "value": arg["value"],
                "valueTwo": arg.get("valueTwo", 0),
                "op": arg["op"],
            }
            for arg in rule["args"]
        ]
    if "errnoRet" in rule:
        out["errnoRet"] = rule["errnoRet"]
    return out


def resolve(docker: Rule) -> Rule:
    syscalls = [convert(r) for r in docker["syscalls"] if applies(r)]
    return {
        "defaultAction": docker.get("defaultAction", "SCMP_ACT_ERRNO"),
        "defaultErrnoRet": docker.get("defaultErrnoRet", 1),
        "architectures": OCI_ARCHITECTURES,
        "syscalls": [s for s in syscalls if s is not None],
    }


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        sys.exit("usage: gen_seccomp.py DOCKER_DEFAULT_JSON")
    with open(argv[1], encoding="utf-8") as f:
        docker = json.load(f)
    profile = resolve(docker)
    if profile["defaultAction"] != "SCMP_ACT_ERRNO":
        sys.exit("refusing: Docker profile is not default-deny")
    json.dump(profile, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv)
