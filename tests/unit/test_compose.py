"""The compose translation (crucible.integrations.inspect.compose): what each service becomes, and what is
refused with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from inspect_ai.util._sandbox.compose import ComposeConfig

from crucible.engine.models import SessionLimits
from crucible.integrations.inspect.compose import (
    ComposeError,
    ImageCommand,
    memory_mb,
    plan,
    seconds,
)

DEFAULTS = SessionLimits(memory_mb=1024, cpus=1, pids=512, disk_mb=1024)
KNOWN = ["python:3.12-slim", "victim:1"]


def compose(**services: dict) -> ComposeConfig:
    return ComposeConfig.model_validate({"services": services})


def test_units() -> None:
    assert memory_mb("512m") == 512 and memory_mb("1g") == 1024 and memory_mb("1.5gb") == 1536
    assert memory_mb(1 << 20) == 1 and memory_mb("100k") == 1
    assert seconds("1m30s", 0) == 90 and seconds("500ms", 0) == 0.5 and seconds(None, 7) == 7
    for bad in ("lots", "12q"):
        with pytest.raises(ComposeError):
            memory_mb(bad)
    with pytest.raises(ComposeError):
        seconds("soon", 1)


def test_a_two_service_sample() -> None:
    p = plan(
        compose(
            victim={
                "image": "victim:1",
                "command": "python3 -m http.server 8080",
                "mem_limit": "256m",
                "cpus": 0.5,
                "working_dir": "/srv",
                "environment": ["MODE=prod", "EMPTY"],
                "healthcheck": {"test": ["CMD", "true"], "interval": "200ms", "retries": 5},
            },
            default={"image": "python:3.12-slim", "environment": {"A": "1"}, "user": "agent"},
        ),
        known=KNOWN,
        defaults=DEFAULTS,
    )
    assert [s.name for s in p.services] == ["default", "victim"]  # the default first
    assert p.members == ("default", "victim")
    victim = p.services[1]
    assert victim.command == ["python3", "-m", "http.server", "8080"]
    assert victim.limits.memory_mb == 256 and victim.limits.cpus == 0.5
    assert victim.limits.disk_mb == DEFAULTS.disk_mb
    assert victim.workdir == "/srv" and victim.env == {"MODE": "prod", "EMPTY": ""}
    assert victim.healthcheck is not None and victim.healthcheck.argv == ["true"]
    assert victim.healthcheck.interval_s == 0.2 and victim.healthcheck.retries == 5
    assert p.services[0].user == "agent" and p.services[0].env == {"A": "1"}


def test_x_default_network_mode_none_and_deploy_limits() -> None:
    config = ComposeConfig.model_validate(
        {
            "services": {
                "a": {"image": "victim:1", "network_mode": "none"},
                "b": {
                    "image": "victim:1",
                    "x-default": True,
                    "deploy": {"resources": {"limits": {"memory": "2g", "cpus": "2"}}},
                },
            },
            "x-crucible": {"runtime": "crun"},
        }
    )
    p = plan(config, known=KNOWN, defaults=DEFAULTS)
    assert [s.name for s in p.services] == ["b", "a"] and p.members == ("b",)
    assert p.services[0].limits.memory_mb == 2048 and p.services[0].limits.cpus == 2
    assert p.settings == {"runtime": "crun"}


@pytest.mark.parametrize(
    ("service", "message"),
    [
        ({"image": "nginx:1.25"}, r"image 'nginx:1.25' is not a Crucible environment \(known: "
         r"python:3.12-slim, victim:1\) and x-crucible's pull is never; add it with `crucible "
         r"env pull nginx:1.25` or `docker save nginx:1.25 \| crucible env"),
        ({"build": {"context": ".", "no_cache": True}}, "build no_cache is not supported"),
        ({"image": "victim:1", "privileged": True}, "privileged is not supported"),
        ({"image": "victim:1", "volumes": ["/:/host"]}, "volumes is not supported"),
        ({"image": "victim:1", "ports": ["8080:80"]}, "ports is not supported"),
        ({"image": "victim:1", "cap_add": ["SYS_ADMIN"]}, "cap_add is not supported"),
        ({"image": "victim:1", "devices": ["/dev/kvm"]}, "devices is not supported"),
        ({"image": "victim:1", "network_mode": "host"}, "network_mode 'host' is not supported"),
        ({}, "names no image"),
        ({"image": "victim:1", "healthcheck": {"test": ["WHAT", "x"]}}, "CMD or CMD-SHELL"),
    ],
)  # fmt: skip
def test_what_cannot_run_is_refused_with_the_reason(service: dict, message: str) -> None:
    with pytest.raises(ComposeError, match=message):
        plan(compose(default=service), known=KNOWN, defaults=DEFAULTS)


def test_a_networked_service_needs_a_host_name() -> None:
    with pytest.raises(ComposeError, match="needs a host name"):
        plan(compose(My_Service={"image": "victim:1"}), known=KNOWN, defaults=DEFAULTS)
    # '_' is one (inspect_evals' gdm_in_house_ctf names its victims target_env).
    p = plan(compose(target_env={"image": "victim:1"}, attacker={"image": "victim:1"}),
             known=KNOWN, defaults=DEFAULTS)  # fmt: skip
    assert p.members == ("target_env", "attacker")


@pytest.mark.parametrize(
    ("service", "argv"),
    [
        ({}, ["/entry.sh", "serve", "--port", "8080"]),  # the image's both
        ({"command": "tail -f /dev/null"}, ["/entry.sh", "tail", "-f", "/dev/null"]),
        ({"entrypoint": ["sh", "-c"], "command": "echo hi"}, ["sh", "-c", "echo", "hi"]),
        ({"entrypoint": "/other"}, ["/other"]),  # a compose entrypoint drops the image's Cmd
    ],
)
def test_a_service_starts_what_docker_would(service: dict, argv: list[str]) -> None:
    """Docker's rule: the compose entrypoint else the image's, then the compose command,
    else (no compose entrypoint) the image's Cmd."""
    image = ImageCommand(("/entry.sh",), ("serve", "--port", "8080"))
    p = plan(compose(default={"image": "victim:1", **service}), known=KNOWN,
             defaults=DEFAULTS, images={"victim:1": image})  # fmt: skip
    assert p.services[0].command == argv
    # An image without Entrypoint and Cmd (and a service without command) starts nothing.
    bare = plan(compose(default={"image": "victim:1"}), known=KNOWN, defaults=DEFAULTS)
    assert bare.services[0].command == []


def test_a_build_is_read_from_the_compose_file(tmp_path: Path) -> None:
    from crucible.integrations.inspect.compose import build_spec
    from crucible.integrations.inspect.provider import compose_of

    path = tmp_path / "compose.yaml"
    path.write_text(
        "services:\n  default:\n    build:\n      context: app\n      dockerfile: Dockerfile.ci\n"
        "      args:\n        WORD: hi\n      target: final\n"
        "  other:\n    build: ./other\n"
    )
    config = compose_of(str(path))
    assert config is not None
    spec = build_spec("default", config.services["default"], tmp_path)
    assert spec is not None and spec.context == tmp_path / "app"
    assert spec.file == tmp_path / "app" / "Dockerfile.ci"
    assert spec.args == (("WORD", "hi"),) and spec.target == "final"
    other = build_spec("other", config.services["other"], tmp_path)
    assert other is not None and other.context == tmp_path / "other" and other.args == ()
    p = plan(config, known=[], defaults=DEFAULTS, built={"default": "b:1", "other": "b:2"})
    assert [s.environment for s in p.services] == ["b:1", "b:2"]
