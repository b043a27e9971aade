"""Private sandbox networks (crucible.engine.network): the sandboxes of one sample
reach each other by name and nothing else, and the network goes with them."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import textwrap
from pathlib import Path

import pytest

from crucible.core.errors import InvalidSubmission, SandboxUnavailable
from crucible.engine import Sandbox
from crucible.engine.models import NetworkAttachment, SessionSpec
from crucible.engine.network import NETNS_DIR, Network, sweep_networks
from crucible.environments.store import Environment
from support.sandbox_fixtures import REACH, SESSION_LIMITS

pytestmark = pytest.mark.timeout(120)


def namespaces(prefix: str) -> list[str]:
    return sorted(p.name for p in NETNS_DIR.glob(f"{prefix}-*")) if NETNS_DIR.exists() else []


def spec(runtime: str, env: Environment, hostname: str, group: str, members: tuple) -> SessionSpec:
    return SessionSpec(
        runtime=runtime,  # type: ignore[arg-type]
        limits=SESSION_LIMITS,
        environment=env.root_spec(),
        network=NetworkAttachment(group=group, hostname=hostname, members=members),
    )


@pytest.mark.parametrize("runtime", ["runc", "crun"])
async def test_two_services_reach_each_other_by_name_and_nothing_else(
    sandbox: Sandbox, runtime: str, test_environment: Environment, host_listener: tuple[str, int]
) -> None:
    host_ip, host_port = host_listener
    group = f"sample-{secrets.token_hex(3)}"
    members = ("default", "victim")
    victim = await sandbox.sessions.create(
        spec(runtime, test_environment, "victim", group, members), session_id="sb_victim"
    )
    agent = await sandbox.sessions.create(
        spec(runtime, test_environment, "default", group, members), session_id="sb_agent"
    )
    try:
        assert len(namespaces(sandbox.settings.prefix)) == 1  # the hub; members have their own
        served = await victim.exec(
            ["python3", "-m", "http.server", "8080"], cwd="/etc", user="root", detach=True
        )
        assert served.returncode == 0, served.stderr
        probe = textwrap.dedent(
            f"""
            import json, socket, time, urllib.request
            out = {{"hostname": socket.gethostname(), "victim": socket.gethostbyname("victim")}}
            for _ in range(100):  # the server starts in the background: up to 10 s
                try:
                    out["motd"] = urllib.request.urlopen("http://victim:8080/motd",
                                                         timeout=5).read().decode()
                    break
                except OSError:
                    time.sleep(0.1)
            out["host"] = reach("{host_ip}", {host_port})
            out["loopback"] = reach("127.0.0.1", {host_port})  # its own loopback
            out["internet"] = reach("1.1.1.1", 53)
            out["hub"] = reach("10.89.0.1", 80)
            print(json.dumps(out))
            """
        )
        r = await agent.exec(["python3", "-c", REACH + probe])
        seen = json.loads(r.stdout)
        assert seen["hostname"] == "default" and seen["victim"] == "10.89.0.3", seen
        assert seen["motd"] == "layer three\n", seen
        for target in ("host", "loopback", "internet", "hub"):
            assert seen[target] != "REACHED", (target, seen)
        # The sandbox's root cannot change its network (no CAP_NET_ADMIN).
        down = (
            "import fcntl, socket, struct\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "try:\n"
            "    fcntl.ioctl(s, 0x8914, struct.pack('16sH14x', b'eth0', 0))  # SIOCSIFFLAGS\n"
            "    print('CHANGED')\n"
            "except PermissionError:\n"
            "    print('EPERM')\n"
        )
        r = await agent.exec(["python3", "-c", down], user="root")
        assert r.stdout == b"EPERM\n", r
    finally:
        await agent.close()
        assert len(namespaces(sandbox.settings.prefix)) == 1  # victim still on it
        await victim.close()
    assert namespaces(sandbox.settings.prefix) == []  # gone with its last member


async def test_a_detached_command_that_cannot_start_says_so(
    sandbox: Sandbox, test_environment: Environment
) -> None:
    session = await sandbox.sessions.create(
        SessionSpec(limits=SESSION_LIMITS, environment=test_environment.root_spec()),
        session_id="sb_detach",
    )
    try:
        r = await session.exec(["/no/such/server"], detach=True)
        assert r.returncode == 127 and b"/no/such/server" in r.stderr
        r = await session.exec(["sleep", "600"], detach=True)
        assert r.returncode == 0 and r.duration_ms < 5000
        ps = await session.exec(["python3", "-c", "import os; print(os.listdir('/proc'))"])
        assert r.returncode == 0 and ps.returncode == 0
    finally:
        await session.close()


async def test_members_must_agree(sandbox: Sandbox, test_environment: Environment) -> None:
    group = f"sample-{secrets.token_hex(3)}"
    first = await sandbox.sessions.create(
        spec("runc", test_environment, "a", group, ("a", "b")), session_id="sb_a"
    )
    try:
        with pytest.raises(InvalidSubmission, match="has members"):
            await sandbox.sessions.create(
                spec("runc", test_environment, "b", group, ("a", "b", "c")), session_id="sb_b"
            )
        with pytest.raises(InvalidSubmission, match="already on network"):
            await sandbox.sessions.create(
                spec("runc", test_environment, "a", group, ("a", "b")), session_id="sb_a2"
            )
        with pytest.raises(InvalidSubmission, match="invalid host name"):
            await sandbox.sessions.create(
                spec("runc", test_environment, "B_", f"{group}x", ("B_",)), session_id="sb_c"
            )
    finally:
        await first.close()
    assert namespaces(sandbox.settings.prefix) == []


async def test_gvisor_networks_are_refused_clearly(
    sandbox: Sandbox, test_environment: Environment
) -> None:
    with pytest.raises(SandboxUnavailable, match="need runc or crun"):
        await sandbox.sessions.create(
            spec("gvisor", test_environment, "a", "g-gvisor", ("a",)), session_id="sb_g"
        )
    assert namespaces(sandbox.settings.prefix) == []


async def test_the_sweep_removes_networks_of_dead_owners(sandbox: Sandbox) -> None:
    state = sandbox.settings.state_dir.resolve()
    prefix = f"{sandbox.settings.prefix}-sw"
    net = await Network.create(prefix, state, ["a", "b"])
    assert namespaces(prefix) == [f"{net.name}-hub"]
    assert await sweep_networks(state) == []  # its owner (this process) lives
    dead = subprocess.Popen(["true"])
    dead.wait()
    (net.home / "owner").write_text(f"{dead.pid}:0\n")
    assert await sweep_networks(state) == [net.name]
    assert namespaces(prefix) == [] and not Path(net.home).exists()
    assert os.path.isdir(state)
