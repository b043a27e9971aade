"""Who may see and do what: per-key scoping, quotas and limit ceilings.

``who`` is the caller's key (:class:`crucible.store.keys.KeyRecord`); None means the
platform itself (internal calls, tests), which is never scoped. A researcher sees only
their own evaluations and batches; anything else is NotFound (not Forbidden), so ids
of others' work cannot be probed. Admins see everything.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from crucible.core.config import Settings
from crucible.core.errors import Forbidden, NotFound, QuotaExceeded
from crucible.store import Store
from crucible.store.audit import AuditLog
from crucible.store.keys import KeyRecord, KeyStore
from crucible.store.sandboxes import SandboxStore
from crucible.store.tables import Batch, Evaluation, Sandbox

QUOTAS = ("max_running", "max_queued", "per_hour", "max_sandboxes")


def visible(owner: str | None, who: KeyRecord | None) -> bool:
    return who is None or who.admin or owner == who.id


def scoped_idempotency(key: str | None, who: KeyRecord | None) -> str | None:
    """Idempotency keys are per caller: one researcher's never finds another's work."""
    if key is None or who is None:
        return key
    return f"{who.id}:{hashlib.sha256(key.encode()).hexdigest()}"


def apply_ceilings(
    limits: dict[str, Any], requested: dict[str, object], who: KeyRecord | None
) -> None:
    """Apply ``who``'s limit ceilings to resolved ``limits`` (an evaluation's or a
    sandbox's): a limit asked for above one is Forbidden (403); a default above one is
    lowered to it."""
    if who is None or not who.limit_ceilings:
        return
    for name, ceiling in who.limit_ceilings.items():
        if name not in limits or ceiling is None or limits[name] <= ceiling:
            continue
        if requested.get(name) is not None:
            raise Forbidden(f"limits.{name}: {limits[name]} is above this key's ceiling {ceiling}")
        limits[name] = type(limits[name])(ceiling)


class Access:
    """Keys, the audit log and the checks, on one store."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.keys = KeyStore(store)
        self.audit = AuditLog(store)
        self.sandboxes = SandboxStore(store)
        store.default_max_running = settings.quota_max_running

    async def bootstrap(self) -> None:
        """Make sure the configured bootstrap admin key exists (and is not revoked)."""
        if self.settings.bootstrap_admin_key:
            await asyncio.to_thread(self.keys.ensure, self.settings.bootstrap_admin_key)

    async def evaluation(self, evaluation_id: str, who: KeyRecord | None) -> Evaluation:
        """The evaluation, or NotFound — also when it is someone else's."""
        row = await asyncio.to_thread(self.store.get, evaluation_id)
        if not visible(row.owner_key_id, who):
            raise NotFound(f"no evaluation {evaluation_id!r}")
        return row

    async def batch(self, batch_id: str, who: KeyRecord | None) -> Batch:
        row = await asyncio.to_thread(self.store.get_batch, batch_id)
        if not visible(row.owner_key_id, who):
            raise NotFound(f"no batch {batch_id!r}")
        return row

    async def sandbox(self, sandbox_id: str, who: KeyRecord | None) -> Sandbox:
        row = await asyncio.to_thread(self.sandboxes.get, sandbox_id)
        if not visible(row.owner_key_id, who):
            raise NotFound(f"no sandbox {sandbox_id!r}")
        return row

    def quota(self, who: KeyRecord, name: str) -> int:
        own: int | None = getattr(who, name)
        return own if own is not None else int(getattr(self.settings, f"quota_{name}"))

    async def check_quotas(self, who: KeyRecord | None, n: int) -> None:
        """QuotaExceeded (429) when ``n`` more evaluations would put ``who`` over
        max_queued or per_hour (0: unlimited). max_running is applied by the claim."""
        if who is None:
            return
        max_queued = self.quota(who, "max_queued")
        if max_queued > 0:
            queued = await asyncio.to_thread(self.store.owner_queued, who.id)
            if queued + n > max_queued:
                raise QuotaExceeded(
                    f"quota max_queued: this key has {queued} evaluations queued and asked"
                    f" for {n} more (max {max_queued}); wait for some to start",
                    retry_after=5 if n <= max_queued else 0,
                )
        per_hour = self.quota(who, "per_hour")
        if per_hour > 0:
            count, oldest_age = await asyncio.to_thread(self.store.owner_last_hour, who.id)
            if count + n > per_hour:
                wait = 3600.0 - oldest_age if oldest_age is not None else 3600.0
                raise QuotaExceeded(
                    f"quota per_hour: this key submitted {count} evaluations in the last"
                    f" hour and asked for {n} more (max {per_hour})",
                    # 0: more than the whole quota never fits; no Retry-After then.
                    retry_after=max(1, int(wait) + 1) if n <= per_hour else 0,
                )
