"""One command for a long-lived sandbox, as a value: :class:`ExecRequest`.

The parameters of an exec (argv, stdin, working directory, environment, user,
timeout, detach) travel together from the doors to the services' call into the
engine: the client builds one from its keyword arguments and sends its
:meth:`~ExecRequest.body`, the API's ``ExecCreate`` becomes one
(``ExecCreate.request()``), and the Inspect provider hands one to its backends.
What is not the command's (an Idempotency-Key, an output cap of the caller's) stays
beside it.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ExecRequest:
    """``argv`` runs as given (no shell); ``input``: stdin, text or bytes;
    ``timeout_s``: kills the exec's processes (None: the server's default);
    ``detach``: start it as a service and answer once it runs."""

    argv: list[str]
    input: str | bytes | None = None
    cwd: str | None = None
    env: dict[str, str] | None = None
    user: str | None = None
    timeout_s: float | None = None
    detach: bool = False

    def stdin(self) -> bytes | None:
        return self.input.encode() if isinstance(self.input, str) else self.input

    def body(self) -> dict[str, Any]:
        """The JSON of ``POST /sandboxes/{id}/exec`` (``ExecCreate``), unset fields left
        out; bytes of stdin go as ``input_base64``."""
        body: dict[str, Any] = {"cmd": self.argv}
        if isinstance(self.input, bytes):
            body["input_base64"] = base64.b64encode(self.input).decode("ascii")
        elif self.input is not None:
            body["input"] = self.input
        given = {"cwd": self.cwd, "env": self.env, "user": self.user, "timeout_s": self.timeout_s}
        body.update({name: value for name, value in given.items() if value is not None})
        if self.detach:
            body["detach"] = True
        return body
