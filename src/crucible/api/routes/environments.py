"""/api/v1/environments: the root file systems runs can name; admins add (upload,
pull or build) and remove."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response, status

from crucible.api.deps import AdminDep, ServiceDep
from crucible.api.errors import responses
from crucible.api.schemas import EnvironmentPublic, EnvironmentPull
from crucible.core.errors import InvalidSubmission

router = APIRouter(prefix="/environments", tags=["environments"])

ARCHIVE = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
CONTEXT = {
    "application/x-tar": {"schema": {"type": "string", "format": "binary"}},
    "application/gzip": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
}
NameQuery = Annotated[
    str,
    Query(min_length=1, max_length=300, description="e.g. python:3.12-slim", examples=["base"]),
]


@router.get("")
async def list_environments(service: ServiceDep) -> list[EnvironmentPublic]:
    """Every environment, by name (`host`, the default, is not listed: it is the host's
    own toolchain)."""
    return await service.environments.list()


@router.get("/{name:path}", responses=responses(404))
async def get_environment(name: str, service: ServiceDep) -> EnvironmentPublic:
    """One environment (names contain `/` and `:`, sent as they are)."""
    return await service.environments.get(name)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    openapi_extra={"requestBody": {"required": True, "content": ARCHIVE}},
    responses=responses(403, 409, 413, 422),
)
async def upload_environment(
    name: NameQuery,
    request: Request,
    service: ServiceDep,
    _admin: AdminDep,
    replace: Annotated[bool, Query(description="replace an environment of this name")] = False,
) -> EnvironmentPublic:
    """Import the body, a `docker save` archive or a tar of an OCI image layout, as
    `name` (admins). Streamed to disk, never held whole; digests and every layer are
    checked before anything is unpacked. 409: the name exists (without `replace`) or
    is in use; 413: larger than `environment_max_bytes`; 422: a malformed or hostile
    image, with the reason (nothing of it is kept)."""
    request.state.audit_target = name
    length = request.headers.get("content-length")
    return await service.environments.upload(
        request.stream(),
        name,
        replace=replace,
        length=int(length) if length and length.isdigit() else None,
    )


@router.post(
    "/pull",
    status_code=status.HTTP_201_CREATED,
    responses=responses(403, 409, 413, 422, 502),
)
async def pull_environment(
    body: EnvironmentPull, request: Request, service: ServiceDep, _admin: AdminDep
) -> EnvironmentPublic:
    """Pull `ref` from its registry as `name` (admins; default name: the reference as
    Docker shows it, `docker.io/library/python:3.12` is `python:3.12`). The server's
    own registries.conf (mirrors), auth file and policy apply. Pinned by the digest of
    the manifest `ref` names (a digest in `ref` must match), every blob checked against
    its digest, then checked and unpacked as an upload is; the record has `ref` and
    `manifest_digest`. 409: the name exists (without `replace`) or is in use; 413:
    larger than `environment_max_bytes` as declared (nothing downloaded); 422: a bad
    reference or name, a digest that does not match, a malformed or hostile image;
    502: the registry is unreachable, refused the server's credentials or has no such
    image (its words). Nothing is kept of a refused pull."""
    request.state.audit_target = body.name or body.ref
    return await service.environments.pull(body.ref, body.name, replace=body.replace)


def _build_args(items: list[str]) -> dict[str, str]:
    args: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq:
            raise InvalidSubmission(f"build_arg {item!r}: expected KEY=VALUE", field="build_arg")
        args[key] = value
    return args


@router.post(
    "/build",
    status_code=status.HTTP_201_CREATED,
    openapi_extra={"requestBody": {"required": True, "content": CONTEXT}},
    responses=responses(403, 404, 409, 413, 422, 502),
)
async def build_environment(
    request: Request,
    service: ServiceDep,
    _admin: AdminDep,
    name: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=300,
            description="the environment's name; default build/context:<key>",
        ),
    ] = None,
    dockerfile: Annotated[
        str, Query(max_length=1000, description="the Dockerfile's path inside the context")
    ] = "Dockerfile",
    build_arg: Annotated[
        list[str] | None, Query(description="KEY=VALUE for the Dockerfile's ARG (repeated)")
    ] = None,
    target: Annotated[str | None, Query(description="the stage to build")] = None,
    pull: Annotated[
        Literal["missing", "never"],
        Query(description="a FROM the store lacks: missing (pull it) | never (404)"),
    ] = "missing",
    replace: Annotated[
        bool, Query(description="replace an environment of this name that another build made")
    ] = False,
) -> EnvironmentPublic:
    """Build an environment from a Dockerfile with buildah (admins). The body is the
    build context as a tar archive (optionally gzip-compressed), streamed to disk;
    it is checked whole before anything is unpacked: absolute paths, `..`, links out
    of the context, device nodes and FIFOs are refused, and so is a context over
    `build_context_max_bytes` (as sent or unpacked) or `build_context_max_entries`.
    Each `FROM` is an environment of the server's store, else (`pull=missing`) its
    image pulled from its registry as `POST /environments/pull` does.

    **`RUN` steps are code run at build time on the server, with the host's
    network** (they reach what the server reaches, loopback services included);
    evaluations and sandboxes run in the result, never a `RUN` step.

    Cached by the Dockerfile, the context (every entry's name, type, mode and
    content), the bases' digests, the args and the target: the same build again
    answers at once with the environment that build made (`build.key`), building
    nothing; concurrent requests for one build build it once. 404: a `FROM` missing
    with `pull=never`; 409: `name` holds another environment (without `replace`) or
    is in use; 413: the context is too large; 422: a bad archive, Dockerfile, name,
    arg or target (nothing is kept), or the build failed (`error: build_failed`,
    with the tail of buildah's output); 502: a base's registry said no."""
    request.state.audit_target = name or "build"
    length = request.headers.get("content-length")
    return await service.environments.build(
        request.stream(),
        name=name,
        dockerfile=dockerfile,
        build_args=_build_args(build_arg or []),
        target=target,
        pull=pull,
        replace=replace,
        length=int(length) if length and length.isdigit() else None,
    )


@router.delete(
    "/{name:path}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=responses(403, 404, 409),
)
async def delete_environment(name: str, service: ServiceDep, _admin: AdminDep) -> None:
    """Remove the environment (admins); its root goes once no other name shares it.
    409 while queued or running evaluations or running sandboxes name it."""
    await service.environments.delete(name)
