"""A schema fuzz of the whole API (Schemathesis) against a real ``crucible serve``:
every operation of the served OpenAPI document, with generated valid and invalid
requests, must never answer 5xx and must answer as documented (status codes, content
types, bodies, headers), and must not ignore its authentication.

Run through Schemathesis's own CLI (its pytest plugin does not support pytest 9 yet).
The budget is a number of examples per operation and phase, not a time: with
``--max-time`` Schemathesis repeats the fuzzing phase until the time is spent, so the
run always took the whole budget and tested more or less depending on the machine's
load. 20 deterministic examples make about 1,500 requests, however busy the machine.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from support.auth_keys import ADMIN_KEY
from support.registry_fixtures import DEAD_PROXY
from support.servers import ServerProcess

SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "ignored_auth",
    ]
)


@pytest.mark.timeout(150)
def test_api_conforms_to_its_schema(tmp_path: Path, state_dir: Path) -> None:
    server = ServerProcess(
        tmp_path / "data",
        state_dir,
        CRUCIBLE_MAX_CONCURRENCY="2",
        # Generated programs are mostly nonsense; keep the ones that do run short.
        CRUCIBLE_LIMITS__TIMEOUT_S="[1, 300]",
        CRUCIBLE_LIMITS__CPU_S="[1, 300]",
        # Sandboxes it creates end within seconds, and with them their event streams
        # (an open stream would hold a request until --request-timeout).
        CRUCIBLE_SANDBOX_LIMITS__TTL_S="[3, 5]",
        CRUCIBLE_SANDBOX_LIMITS__IDLE_TIMEOUT_S="[2, 5]",
        CRUCIBLE_SANDBOX_LIMITS__EXEC_TIMEOUT_S="[2, 5]",
        # Nothing the server does may leave the machine: a pull that got through would
        # meet a dead proxy on loopback, not docker.io (see --exclude-path below).
        HTTPS_PROXY=DEAD_PROXY,
        HTTP_PROXY=DEAD_PROXY,
        NO_PROXY="127.0.0.1,localhost,::1",
    )
    server.start()
    try:
        run = subprocess.run(
            [
                SCHEMATHESIS,
                "run",
                f"{server.url}/api/v1/openapi.json",
                "--url",
                server.url,
                "--header",
                f"Authorization: Bearer {ADMIN_KEY}",
                "--checks",
                CHECKS,
                "--max-examples",
                "20",
                "--phases",
                "examples,coverage,fuzzing",
                "--generation-deterministic",
                "--request-timeout",
                "70",
                # One worker: CPython 3.11's ast is not thread-safe, and Hypothesis
                # parses lambdas ("AST constructor recursion depth mismatch").
                "--workers",
                "1",
                "--no-shrink",
                # A pull's generated references name registries (docker.io by default),
                # and a registry's refusal is documented as 502, which the fuzz counts
                # as a server error; pulls are tested against local registries instead
                # (test_environments_pull.py, test_environments_api.py).
                "--exclude-path",
                "/api/v1/environments/pull",
            ],
            capture_output=True,
            text=True,
            timeout=110,
            cwd=tmp_path,
        )
    finally:
        server.stop()
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
