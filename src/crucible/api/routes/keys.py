"""/api/v1/keys: API keys (admins), and /keys/me for anyone to see who they are."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Path, Request, status

from crucible.api.deps import AdminDep, PrincipalDep, ServiceDep
from crucible.api.errors import responses
from crucible.api.schemas import KeyCreate, KeyCreated, KeyPublic, KeyQuotas, WhoAmI
from crucible.store.keys import QUOTA_FIELDS, KeyRecord

router = APIRouter(prefix="/keys", tags=["keys"])

KeyId = Annotated[str, Path(max_length=64, description="the key's id (key_…)")]


def key_public(key: KeyRecord) -> KeyPublic:
    return KeyPublic.model_validate(asdict(key))


@router.get("/me", responses=responses(401))
async def whoami(who: PrincipalDep) -> WhoAmI:
    """The caller's key: id, name and role."""
    return WhoAmI(id=who.id, name=who.name, role="admin" if who.admin else "researcher")


@router.get("", responses=responses(401, 403))
async def list_keys(service: ServiceDep, _admin: AdminDep) -> list[KeyPublic]:
    """Every key, revoked ones included (admins only). Secrets are never shown."""
    return [key_public(k) for k in await asyncio.to_thread(service.access.keys.list)]


@router.post("", status_code=status.HTTP_201_CREATED, responses=responses(401, 403, 422))
async def create_key(
    body: KeyCreate, request: Request, service: ServiceDep, _admin: AdminDep
) -> KeyCreated:
    """A new key (admins only). The response holds the secret, this once."""
    keys = service.access.keys
    record, secret = await asyncio.to_thread(keys.create, body.name, body.role)
    quotas = body.model_dump(include=set(QUOTA_FIELDS))
    if any(v is not None for v in quotas.values()):
        record = await service.access.set_quotas(record.id, quotas)
    request.state.audit_target = record.id
    return KeyCreated(**key_public(record).model_dump(), key=secret)


@router.patch("/{key_id}", responses=responses(401, 403, 404, 422))
async def update_key_quotas(
    key_id: KeyId, body: KeyQuotas, service: ServiceDep, _admin: AdminDep
) -> KeyPublic:
    """Override the key's quotas; fields sent as null return to the server's defaults,
    fields left out are unchanged (admins only)."""
    values = body.model_dump(exclude_unset=True)
    return key_public(await service.access.set_quotas(key_id, values))


@router.delete("/{key_id}", responses=responses(401, 403, 404))
async def revoke_key(key_id: KeyId, service: ServiceDep, _admin: AdminDep) -> KeyPublic:
    """Revoke the key: this API instance refuses it from the next request; other
    instances, and a revoke by `crucible keys revoke`, within `CRUCIBLE_KEY_CACHE_S`
    (1 s). Its record and its work remain."""
    return key_public(await service.access.revoke(key_id))
