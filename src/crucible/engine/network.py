"""Private networks: the sandboxes of one sample (a compose file's services) reach
each other by name, and nothing else.

    hub netns        a bridge, and one veth end per member; no address, no route
    member's netns   the container's own (made by runc/crun in its user namespace):
                     ``eth0``, the veth's other end, with 10.89.0.<n>/24, and ``lo``

The hub is a network namespace of its own, not the host's: nothing is attached to the
host's network, the hub has no address, and no member has a route beyond the /24, so a
member reaches its peers' addresses and nothing else (not the host, not the internet).
Each member's veth is moved into its container's network namespace once the container
exists, and addressed from the host; the sandbox's root has no CAP_NET_ADMIN, so it
cannot change any of it. Each member's /etc/hosts names every member.

Under runc and crun only. gVisor would run its own network stack over such an
interface (``runsc --network=sandbox``), but Debian's runsc (release 20221219) decides
it runs in the host's namespace by the presence of ``/proc/sys/net/core/rmem_default``,
which Linux 6 shows in every network namespace, and refuses to start.

A network is created with its members' names (all of them: every /etc/hosts names
all) and removed with its last member. Its namespace carries the engine's prefix and
an owner file in the state directory, so the start-up sweep removes those of a dead
supervisor.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import shutil
from pathlib import Path

from crucible.core.errors import InvalidSubmission, SandboxUnavailable
from crucible.engine.process import run_tool
from crucible.engine.sweep import owner_alive, owner_token

log = logging.getLogger(__name__)

SUBNET = "10.89.0"
MAX_MEMBERS = 200
# A DNS label, with '_' too: compose service names have it (inspect_evals'
# gdm_in_house_ctf names its victims target_env), Docker's resolver answers them and
# so does glibc's /etc/hosts lookup, which is how members find each other here.
_HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$")
NETNS_DIR = Path("/run/netns")


def check_hostnames(names: list[str]) -> list[str]:
    if not names or len(names) > MAX_MEMBERS or len(set(names)) != len(names):
        raise InvalidSubmission(
            f"a network has 1 to {MAX_MEMBERS} members with distinct names", field="network"
        )
    for name in names:
        if not _HOSTNAME.match(name):
            raise InvalidSubmission(
                f"invalid host name {name!r} (lowercase letters, digits, '-' and '_')",
                field="network",
            )
    return names


async def _ip(*args: str) -> None:
    done = await run_tool(["ip", *args], timeout=10)
    if done.returncode != 0:
        raise SandboxUnavailable(f"ip {' '.join(args)}: {done.stderr.strip()[:300]}")


class Network:
    """One private network (see the module docstring)."""

    def __init__(self, name: str, members: list[str], home: Path) -> None:
        self.name = name  # <prefix>-n<token>: namespaces are <name>-hub, <name>-<n>
        self.members = members
        self.home = home  # <state>/networks/<name>: the owner file
        self.addresses = {m: f"{SUBNET}.{i + 2}" for i, m in enumerate(members)}
        self.joined: set[str] = set()

    @classmethod
    async def create(cls, prefix: str, state_dir: Path, members: list[str]) -> Network:
        if shutil.which("ip") is None or shutil.which("nsenter") is None:
            raise SandboxUnavailable("ip (iproute2) and nsenter are needed for networks")
        check_hostnames(members)
        name = f"{prefix}-n{secrets.token_hex(4)}"
        home = state_dir / "networks" / name
        home.mkdir(parents=True)
        (home / "owner").write_text(owner_token() + "\n")
        net = cls(name, members, home)
        try:
            await _ip("netns", "add", net.hub)
            await _ip("-n", net.hub, "link", "add", "br0", "type", "bridge")
            await _ip("-n", net.hub, "link", "set", "br0", "up")
        except BaseException:
            await net.remove()
            raise
        return net

    @property
    def hub(self) -> str:
        return f"{self.name}-hub"

    async def attach(self, member: str, pid: int) -> None:
        """Give ``member``'s container (its init is ``pid``) its interface on the network."""
        port = f"m{self.members.index(member)}"
        await _ip("-n", self.hub, "link", "add", port, "type", "veth", "peer", "name", "eth0",
                  "netns", str(pid))  # fmt: skip
        await _ip("-n", self.hub, "link", "set", port, "master", "br0", "up")
        inside = ["nsenter", f"--net=/proc/{pid}/ns/net", "--", "ip"]
        for args in (
            ["addr", "add", f"{self.addresses[member]}/24", "dev", "eth0"],
            ["link", "set", "eth0", "up"],
            ["link", "set", "lo", "up"],
        ):
            done = await run_tool([*inside, *args], timeout=10)
            if done.returncode != 0:
                raise SandboxUnavailable(f"ip {' '.join(args)}: {done.stderr.strip()[:300]}")

    def hosts(self, member: str) -> str:
        """The /etc/hosts of ``member``: itself, loopback, and every member by name."""
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        lines += [f"{ip}\t{name}" for name, ip in self.addresses.items()]
        return "\n".join(lines) + "\n"

    async def remove(self) -> None:
        await remove_namespaces(self.name)
        shutil.rmtree(self.home, ignore_errors=True)


def _namespaces(name: str) -> list[str]:
    return sorted(p.name for p in NETNS_DIR.glob(f"{name}-*")) if NETNS_DIR.exists() else []


async def remove_namespaces(name: str) -> None:
    """Delete every namespace of network ``name`` (deleting the hub removes its veths)."""
    for ns in _namespaces(name):
        with contextlib.suppress(SandboxUnavailable):
            await _ip("netns", "del", ns)


async def sweep_networks(state_dir: Path) -> list[str]:
    """Remove the networks of dead supervisors of this state directory."""
    removed = []
    root = state_dir / "networks"
    for home in sorted(root.iterdir()) if root.exists() else []:
        if not owner_alive(home):
            await remove_namespaces(home.name)
            shutil.rmtree(home, ignore_errors=True)
            removed.append(home.name)
    return removed
