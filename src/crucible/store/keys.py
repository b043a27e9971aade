"""API keys: create, look up by hash, revoke, set quotas.

A key is ``crk_`` + 43 URL-safe characters (32 random bytes). Only its SHA-256 is
stored: a leaked database does not leak usable keys, and a plain (unsalted) hash is
enough because the secret has 256 bits of entropy, so nothing can be guessed from it.
The lookup is by the hash's unique index; the final comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update

from crucible.core.errors import InvalidSubmission, NotFound
from crucible.store.repo import Store, now
from crucible.store.tables import ApiKey

KEY_PREFIX = "crk_"
ROLES = ("admin", "researcher")
QUOTA_FIELDS = ("max_running", "max_queued", "per_hour", "max_sandboxes", "limit_ceilings")


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class KeyRecord:
    """A key as the platform sees it (never the secret)."""

    id: str
    name: str
    role: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None
    max_running: int | None
    max_queued: int | None
    per_hour: int | None
    max_sandboxes: int | None
    limit_ceilings: dict[str, Any] | None

    @property
    def admin(self) -> bool:
        return self.role == "admin"


def _record(row: ApiKey) -> KeyRecord:
    return KeyRecord(
        id=row.id,
        name=row.name,
        role=row.role,
        prefix=row.prefix,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
        max_running=row.max_running,
        max_queued=row.max_queued,
        per_hour=row.per_hour,
        max_sandboxes=row.max_sandboxes,
        limit_ceilings=row.limit_ceilings,
    )


class KeyStore:
    """The ``api_keys`` table, on the store's engine."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def create(self, name: str, role: str, *, secret: str | None = None) -> tuple[KeyRecord, str]:
        """A new key; returns (record, secret). The secret is not kept anywhere."""
        if role not in ROLES:
            raise InvalidSubmission(f"role must be one of {', '.join(ROLES)}", field="role")
        secret = secret or new_secret()
        row = ApiKey(
            id=f"key_{secrets.token_hex(8)}",
            name=name,
            role=role,
            prefix=secret[: len(KEY_PREFIX) + 6],
            key_hash=hash_key(secret),
            created_at=now(),
        )
        with self.store.transaction() as s:
            s.add(row)
        return _record(row), secret

    def ensure(self, secret: str, *, name: str = "bootstrap", role: str = "admin") -> KeyRecord:
        """The key with this secret, created (or un-revoked, with ``role``) if needed."""
        digest = hash_key(secret)
        with self.store.transaction() as s:
            row = s.scalars(select(ApiKey).where(ApiKey.key_hash == digest)).one_or_none()
            if row is not None:
                row.revoked_at = None
                row.role = role
                return _record(row)
        return self.create(name, role, secret=secret)[0]

    def count_active(self) -> int:
        with self.store.reading() as s:
            q = select(func.count()).select_from(ApiKey).where(ApiKey.revoked_at.is_(None))
            return int(s.scalar(q) or 0)

    def authenticate(self, secret: str) -> KeyRecord | None:
        """The active key with this secret, or None."""
        if not secret.startswith(KEY_PREFIX) or len(secret) > 200:
            return None
        digest = hash_key(secret)
        with self.store.reading() as s:
            row = s.scalars(select(ApiKey).where(ApiKey.key_hash == digest)).one_or_none()
        if row is None or row.revoked_at is not None:
            return None
        # The index found it by hash; compare in constant time all the same, so no
        # timing difference depends on how much of a guess matched.
        if not hmac.compare_digest(row.key_hash, digest):
            return None
        return _record(row)

    def touch(self, key_id: str) -> None:
        with self.store.transaction() as s:
            s.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=now()))

    def get(self, key_id: str) -> KeyRecord:
        with self.store.reading() as s:
            row = s.get(ApiKey, key_id)
        if row is None:
            raise NotFound(f"no key {key_id!r}")
        return _record(row)

    def list(self) -> list[KeyRecord]:
        with self.store.reading() as s:
            return [_record(r) for r in s.scalars(select(ApiKey).order_by(ApiKey.created_at))]

    def revoke(self, key_id: str) -> KeyRecord:
        with self.store.transaction() as s:
            row = s.get(ApiKey, key_id)
            if row is None:
                raise NotFound(f"no key {key_id!r}")
            if row.revoked_at is None:
                row.revoked_at = now()
            return _record(row)

    def set_quotas(self, key_id: str, values: dict[str, Any]) -> KeyRecord:
        """Override quotas (None: back to the settings' default)."""
        with self.store.transaction() as s:
            row = s.get(ApiKey, key_id)
            if row is None:
                raise NotFound(f"no key {key_id!r}")
            for name, value in values.items():
                if name not in QUOTA_FIELDS:
                    raise InvalidSubmission(f"unknown quota {name!r}", field=name)
                setattr(row, name, value)
            return _record(row)
