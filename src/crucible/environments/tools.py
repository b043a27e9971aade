"""The external tools of the environment store (skopeo, umoci), run to completion.

The store runs in a thread (imports and pulls are blocking work), so this is the
synchronous sibling of :func:`crucible.engine.process.run_tool`: one time limit, a
capped capture, and a failure that carries the tool's own words. Unlike the engine's
helper it keeps this process's environment: skopeo reads the registry auth file
(``REGISTRY_AUTH_FILE``, ``XDG_RUNTIME_DIR``, ``HOME``, ``DOCKER_CONFIG``) and the
proxy variables from it, and clearing them would defeat the operator's set-up.
"""

from __future__ import annotations

import re
import shutil
import subprocess

from crucible.core.errors import CrucibleError

# A manifest is what the largest capture holds (containers/image refuses manifests
# over 4 MiB itself); skopeo's and umoci's messages are far smaller.
MAX_CAPTURE = 4 << 20


def tool_message(stderr: str) -> str:
    """The gist of a tool's stderr: skopeo logs as logrus does
    (``time="..." level=fatal msg="what went wrong"``), so the last ``msg`` when there
    is one, else the text; at most 800 characters (the end, where the cause is)."""
    text = stderr.strip()
    said = re.findall(r'msg="((?:[^"\\]|\\.)*)"', text)
    message = said[-1].replace('\\"', '"') if said else text
    return message[-800:]


def run_tool(
    argv: list[str],
    what: str,
    *,
    failure: type[CrucibleError],
    timeout: float | None = None,
) -> bytes:
    """Run ``argv``; its stdout (at most ``MAX_CAPTURE`` bytes). Raises
    ``failure("<what>: <the tool's message>")`` when it fails or passes ``timeout``
    seconds (then it is killed), CrucibleError when the tool is not installed."""
    if shutil.which(argv[0]) is None:
        raise CrucibleError(f"{argv[0]} is not installed (Debian package {argv[0]})")
    try:
        proc = subprocess.run(
            argv, capture_output=True, stdin=subprocess.DEVNULL, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:  # subprocess.run has killed it
        raise failure(f"{what}: no answer within {timeout:g} s") from None
    if proc.returncode != 0:
        stderr = proc.stderr[-MAX_CAPTURE:].decode("utf-8", "replace")
        raise failure(f"{what}: {tool_message(stderr)}")
    return proc.stdout[:MAX_CAPTURE]
