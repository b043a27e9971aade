"""Platform failures, as one hierarchy.

What the untrusted program did is *data* (a :class:`crucible.engine.models.Result`);
what went wrong with the platform is an *exception* from this module. The API maps
these to HTTP status codes in one place (``crucible.api.errors``).

    CrucibleError
    ├── SandboxError              the sandbox could not run the program
    │   ├── SandboxUnavailable    runtime binary missing, not root, cgroups unusable
    │   └── RuntimeFailure        the OCI runtime itself failed (create/start/delete)
    ├── InvalidSubmission         the request cannot be run as given (bad language, paths)
    │   ├── PayloadTooLarge       the submitted code or files exceed max_code_bytes
    │   └── ImageRejected         an image to import or pull is malformed or hostile, or
    │                             not what its digest names; nothing of it was kept
    ├── NotFound                  no such evaluation, batch, sandbox, file, environment
    ├── Conflict                  illegal state transition, idempotency key reuse
    │   └── SandboxStopped        the long-lived sandbox is no longer running
    │       └── SandboxLost       ... because its host died (410 sandbox_lost)
    │   └── NetworkElsewhere      a sandbox's private network has running members on
    │                             another host (the network is local to one host)
    ├── SandboxFileError          a file operation inside a long-lived sandbox failed;
    │   │                         ``code`` is the API's machine-readable ``error``
    │   ├── SandboxFileNotFound       404 not_found
    │   ├── SandboxPermissionDenied   403 permission_denied
    │   ├── SandboxIsADirectory       409 is_a_directory
    │   └── SandboxFileTooLarge       413 too_large
    ├── EnvironmentUnavailable    a queued evaluation's environment was removed or
    │                             replaced since submission (it ends in error, no retry)
    ├── PullFailed                a registry could not be read: unreachable, credentials
    │                             refused, no such image (the registry's own words)
    ├── BuildFailed               an environment build (mmdebstrap, pip, buildah) failed
    │                             or ran out of time: the tail of its output (422
    │                             build_failed through the API); nothing was kept
    ├── Overloaded                the queue is full; retry later
    │   └── QuotaExceeded         this key is over one of its quotas (429)
    ├── Unauthenticated           no API key, or not a valid one (401)
    └── Forbidden                 a valid key whose role or ceiling does not allow it (403)
"""

from __future__ import annotations


class CrucibleError(Exception):
    """Base class of every platform failure."""


class SandboxError(CrucibleError):
    """The sandbox could not run the program (not the program's fault)."""


class SandboxUnavailable(SandboxError):
    """A runtime is missing or unusable on this host."""


class RuntimeFailure(SandboxError):
    """The OCI runtime returned an error for one of its verbs."""

    def __init__(self, verb: str, returncode: int | None, stderr: str) -> None:
        super().__init__(f"{verb} failed (exit {returncode}): {stderr.strip()[:500]}")
        self.verb = verb
        self.returncode = returncode
        self.stderr = stderr


class InvalidSubmission(CrucibleError):
    """The submission cannot be run as given; ``field`` names the culprit."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class PayloadTooLarge(InvalidSubmission):
    """The submission is larger than the platform accepts."""


class ImageRejected(InvalidSubmission):
    """The image is malformed or hostile, or not what its digest names; nothing of it
    was kept."""


class PullFailed(CrucibleError):
    """A registry could not be read: unreachable, credentials refused, no such image.
    The message carries the registry's (skopeo's) own words."""


class BuildFailed(CrucibleError):
    """An environment build failed or ran out of time (a ``RUN`` step's exit, a
    ``COPY`` of a missing file, mmdebstrap or pip); the message ends with the tail of
    the tool's output. Nothing of the build was kept."""


class NotFound(CrucibleError):
    """The named resource does not exist."""


class Conflict(CrucibleError):
    """The request conflicts with the resource's current state."""


class EnvironmentUnavailable(CrucibleError):
    """The environment an evaluation was submitted to is gone, or its name now holds
    another root (digest pinned at submission); retrying cannot help."""


class Overloaded(CrucibleError):
    """The platform is at capacity; ``retry_after`` seconds is a hint."""

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QuotaExceeded(Overloaded):
    """The caller's key is over a quota; the message names it. ``retry_after`` may be 0
    when waiting alone will not help (then no Retry-After header is sent)."""


class Unauthenticated(CrucibleError):
    """No API key was given, or it is unknown or revoked."""


class Forbidden(CrucibleError):
    """The key is valid but its role (or a per-key ceiling) does not allow the request."""


class SandboxStopped(Conflict):
    """The long-lived sandbox has stopped (ttl, idle timeout, deleted, lost)."""


class SandboxLost(SandboxStopped):
    """The long-lived sandbox is gone with its host (the host stopped heartbeating, or
    its process died): nothing of it runs any more, and it is never moved elsewhere.
    Its transcript stays readable."""


class NetworkElsewhere(Conflict):
    """The sandbox joins a private network (``network.group``) whose running members
    are on another host, and such a network is local to one host. A host's insert
    refuses it; an API instance that placed it there places it again, on that host."""


class SandboxFileError(CrucibleError):
    """A file operation inside a long-lived sandbox failed for a reason the caller can
    act on; ``code`` is the machine-readable ``error`` of the API's answer."""

    code = "file_error"

    def __init__(self, path: str, message: str | None = None) -> None:
        super().__init__(message or f"{path}: {self.code.replace('_', ' ')}")
        self.path = path


class SandboxFileNotFound(SandboxFileError):
    code = "not_found"


class SandboxPermissionDenied(SandboxFileError):
    code = "permission_denied"


class SandboxIsADirectory(SandboxFileError):
    code = "is_a_directory"


class SandboxFileTooLarge(SandboxFileError):
    code = "too_large"
