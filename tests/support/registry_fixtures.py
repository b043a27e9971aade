"""Container registries for the pull tests (loaded with ``-p registry_fixtures``).

Debian's ``docker-registry`` (the CNCF distribution registry, 2.8) on 127.0.0.1 on a
free port, with a throwaway config and storage directory: one open, one behind
``htpasswd`` (bcrypt, made by apache2-utils' ``htpasswd -B``). Images are the tests'
own (``tests/support/oci_images.py``), pushed with ``skopeo copy``. The storage directory is
there to be tampered with: a blob is ``docker/registry/v2/blobs/sha256/<2>/<hex>/data``,
and the registry serves what the file holds.

``registry_env`` points skopeo at them the standard way: a registries.conf (through
``CONTAINERS_REGISTRIES_CONF``) that marks both insecure (plain HTTP) and gives
``docker.io`` a mirror at the open one, an empty home (no credentials of the
machine's), and a proxy on a closed loopback port for everything but loopback: a
pull that would leave the machine fails at once, on it, instead.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from support.oci_images import Image, file, layer_tar, write_oci_layout
from support.polling import eventually
from support.servers import free_port

# Nothing listens here (port 9, discard, is not served on this machine's loopback):
# a request through the proxy is refused at once, on the machine.
DEAD_PROXY = "http://127.0.0.1:9"


@dataclass
class Registry:
    """A running ``docker-registry serve``."""

    host: str  # 127.0.0.1:<port>
    storage: Path
    proc: subprocess.Popen[bytes]
    log: Path
    user: str | None = None
    password: str | None = None

    @classmethod
    def start(cls, root: Path, *, user: str | None = None, password: str | None = None) -> Registry:
        if shutil.which("docker-registry") is None:
            pytest.fail("docker-registry is not installed; `scripts/setup.sh --test` installs it")
        root.mkdir(parents=True, exist_ok=True)
        storage = root / "storage"
        port = free_port()
        auth = ""
        if user is not None:
            if shutil.which("htpasswd") is None:
                pytest.fail("htpasswd is not installed; `scripts/setup.sh --test` installs it")
            line = subprocess.run(
                ["htpasswd", "-nbB", user, password or ""],
                capture_output=True, text=True, check=True,
            ).stdout.strip()  # fmt: skip
            (root / "htpasswd").write_text(line + "\n")
            auth = f"auth:\n  htpasswd:\n    realm: crucible-test\n    path: {root / 'htpasswd'}\n"
        config = root / "config.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: warn\n"
            f"storage:\n  filesystem:\n    rootdirectory: {storage}\n"
            f"http:\n  addr: 127.0.0.1:{port}\n" + auth
        )
        log = root / "registry.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                ["docker-registry", "serve", str(config)], stdout=out, stderr=subprocess.STDOUT
            )
        registry = cls(f"127.0.0.1:{port}", storage, proc, log, user, password)
        registry._wait_ready()
        return registry

    def _wait_ready(self, within_s: float = 20.0) -> None:
        def answers() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"docker-registry exited: {self.log.read_text()[-2000:]}")
            r = httpx.get(f"http://{self.host}/v2/", timeout=1)
            return r.status_code in (200, 401)

        eventually(
            answers,
            within=within_s,
            reason="docker-registry to answer",
            ignoring=(httpx.TransportError,),
        )

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def push(self, image: Image, repo_tag: str, work: Path) -> str:
        """Push ``image`` as ``<host>/<repo_tag>``; the manifest's digest."""
        layout = write_oci_layout(image, work / f"push-{secrets.token_hex(4)}")
        digest_file = layout.parent / f"{layout.name}.digest"
        argv = ["skopeo", "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false"]
        if self.user is not None:
            argv += ["--dest-creds", f"{self.user}:{self.password}"]
        argv += ["--digestfile", str(digest_file), f"oci:{layout}:latest"]
        subprocess.run(
            [*argv, f"docker://{self.host}/{repo_tag}"], capture_output=True, check=True, timeout=60
        )
        shutil.rmtree(layout)
        return digest_file.read_text().strip()

    def blob(self, digest: str) -> Path:
        """Where the registry keeps blob ``digest`` (a manifest is a blob too)."""
        hexd = digest.removeprefix("sha256:")
        return self.storage / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"

    def auth_file(self, path: Path) -> Path:
        """A containers auth.json holding this registry's credentials."""
        import base64
        import json

        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        path.write_text(json.dumps({"auths": {self.host: {"auth": token}}}))
        return path


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """An open registry (anyone may pull and push)."""
    reg = Registry.start(tmp_path_factory.mktemp("registry"))
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry behind htpasswd: ``alice`` with a random password."""
    reg = Registry.start(
        tmp_path_factory.mktemp("auth-registry"), user="alice", password=secrets.token_hex(8)
    )
    yield reg
    reg.stop()


def registries_conf(path: Path, *registries: Registry, mirror: Registry | None = None) -> Path:
    """A registries.conf: ``registries`` over plain HTTP; ``docker.io`` mirrored at
    ``mirror``."""
    text = "".join(f'[[registry]]\nlocation = "{r.host}"\ninsecure = true\n\n' for r in registries)
    if mirror is not None:
        text += (
            '[[registry]]\nlocation = "docker.io"\n\n'
            f'[[registry.mirror]]\nlocation = "{mirror.host}"\ninsecure = true\n'
        )
    path.write_text(text)
    return path


@pytest.fixture
def registry_env(
    registry: Registry, auth_registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """This process's environment pointed at the test registries (module docstring);
    also returned, for a server started by the test."""
    home = tmp_path / "home"
    (home / "run").mkdir(parents=True)
    env = {
        "CONTAINERS_REGISTRIES_CONF": str(
            registries_conf(tmp_path / "registries.conf", registry, auth_registry, mirror=registry)
        ),
        "HOME": str(home),
        "XDG_RUNTIME_DIR": str(home / "run"),
        "HTTPS_PROXY": DEAD_PROXY,
        "HTTP_PROXY": DEAD_PROXY,
        # Go never proxies loopback; httpx (the tests' clients) needs telling.
        "NO_PROXY": "127.0.0.1,localhost,::1",
    }
    for key in ("REGISTRY_AUTH_FILE", "DOCKER_CONFIG", "no_proxy", "https_proxy", "http_proxy",
                "ALL_PROXY", "all_proxy"):  # fmt: skip
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def unique_image(note: str = "", base: bytes | None = None) -> Image:
    """A small image of its own (a random file: no blob shared with another test's, so
    tampering with one touches no other). ``base``: a first layer (a userland)."""
    token = secrets.token_hex(8)
    entries = [file("etc/pulled", f"{note or 'pulled'} {token}\n")]
    if base is None:  # a program for the language lookup to find
        entries.append(file("usr/bin/python3", "#!fake\n", mode=0o755))
    layers = [base, layer_tar(entries)] if base is not None else [layer_tar(entries)]
    return Image(layers, env=["PATH=/usr/bin:/bin", f"TOKEN={token}"])
