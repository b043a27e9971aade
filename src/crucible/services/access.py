"""Who may see and do what: per-key scoping, quotas and limit ceilings.

``who`` is the caller's key (:class:`crucible.store.keys.KeyRecord`); None means the
platform itself (internal calls, tests), which is never scoped. A researcher sees only
their own evaluations and batches; anything else is NotFound (not Forbidden), so ids
of others' work cannot be probed. Admins see everything.

Who the caller is comes from :class:`VerifiedKeys`: a key read from the database is
remembered for ``key_cache_s`` (1 s), so a busy client is not one more read and thread
hop per request; see there for how long a revoked key can still work.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from collections.abc import Callable
from typing import Any

from crucible.core.config import Settings
from crucible.core.errors import Forbidden, NotFound, QuotaExceeded, Unauthenticated
from crucible.store import Store
from crucible.store.audit import AuditLog
from crucible.store.keys import KEY_PREFIX, KeyRecord, KeyStore, hash_key
from crucible.store.repo import now
from crucible.store.sandboxes import SandboxStore
from crucible.store.tables import Batch, Evaluation, Sandbox

QUOTAS = ("max_running", "max_queued", "per_hour", "max_sandboxes")
# last_used_at is written at most this often per key (not one write per request).
TOUCH_EVERY_S = 60.0
# How long a verified key is remembered for claims (see Claim): not a revocation
# window, a claim is checked again where it is used.
CLAIM_TTL_S = 300.0


@dataclasses.dataclass(frozen=True)
class Claim:
    """A key the caller presented that this process verified earlier (within
    CLAIM_TTL_S): who it was, without reading the database again. Not checked against
    revocation: whatever takes a Claim checks the key where it does its own work, in
    the same transaction (``SandboxStore.begin_exec``'s ``caller``), or calls
    :meth:`Access.verify` first. So a key revoked by any process, the CLI included, is
    refused by the next request that reaches the database, as with a lookup per
    request. The record's ``role`` and quotas may be stale; the checks read them again."""

    key: KeyRecord


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


def _touch_due(key: KeyRecord) -> bool:
    return key.last_used_at is None or (now() - key.last_used_at).total_seconds() > TOUCH_EVERY_S


class VerifiedKeys:
    """Active keys read from the database in the last ``ttl_s`` seconds, by the SHA-256
    of their secret (the secret itself is not kept): a request whose key is here is
    authenticated on the event loop, without a database read or a thread.

    How long a revoked key still works: revoking or changing a key's quotas through
    :meth:`forget` (this process's API does) applies to the next request. Done by
    another process (``crucible keys revoke`` on the database, another API instance),
    it applies here within ``ttl_s``: an entry expires ``ttl_s`` after the read that
    found the key active and is never extended by use. A read that was under way when
    :meth:`forget` ran is not remembered, so it cannot bring back a key just dropped.
    Unknown and revoked keys are not remembered either: each such request reads the
    database, as before. ``ttl_s`` 0: every request reads the database.
    """

    MAX_ENTRIES = 10_000  # active keys; past it, expired entries go, then all

    def __init__(
        self, keys: KeyStore, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.keys = keys
        self.ttl_s = ttl_s
        self.clock = clock
        self._seen: dict[str, tuple[float, KeyRecord]] = {}  # digest → (verified at, key)
        self._generation = 0  # bumped by forget(): reads begun before it are not kept

    async def authenticate(self, secret: str) -> KeyRecord | None:
        """The active key with this secret, or None; writes its last_used_at at most
        every TOUCH_EVERY_S."""
        if not secret.startswith(KEY_PREFIX) or len(secret) > 200:
            return None
        digest = hash_key(secret)
        started, generation = self.clock(), self._generation
        seen = self._seen.get(digest)
        if seen is not None and started < seen[0] + self.ttl_s:
            verified, key = seen
        else:
            found = await asyncio.to_thread(self.keys.authenticate, secret)
            if found is None:
                self._seen.pop(digest, None)
                return None
            # From before the read, so it never expires later than ttl_s after it.
            verified, key = started, found
            self._remember(digest, verified, key, generation)
        if _touch_due(key):
            await asyncio.to_thread(self.keys.touch, key.id)
            # The remembered record says so too (same time), or every request until
            # it expires would write again.
            key = dataclasses.replace(key, last_used_at=now())
            self._remember(digest, verified, key, generation)
        return key

    def claim(self, secret: str) -> Claim | None:
        """The key this secret was verified as within CLAIM_TTL_S, without a read (see
        Claim); None when not remembered, or when its last_used_at is due a write
        (then :meth:`authenticate`, which writes it)."""
        seen = self._seen.get(hash_key(secret))
        if seen is None or self.clock() > seen[0] + CLAIM_TTL_S or _touch_due(seen[1]):
            return None
        return Claim(seen[1])

    def _remember(self, digest: str, verified: float, key: KeyRecord, generation: int) -> None:
        if self.ttl_s <= 0 or generation != self._generation:
            return
        if len(self._seen) >= self.MAX_ENTRIES:
            at = self.clock()
            keep = max(self.ttl_s, CLAIM_TTL_S)
            self._seen = {d: e for d, e in self._seen.items() if e[0] + keep > at}
            if len(self._seen) >= self.MAX_ENTRIES:
                self._seen.clear()
        self._seen[digest] = (verified, key)

    def forget(self) -> None:
        """Drop every remembered key (after a key was revoked or changed)."""
        self._generation += 1
        self._seen.clear()


class Access:
    """Keys, the audit log and the checks, on one store."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.keys = KeyStore(store)
        self.verified = VerifiedKeys(self.keys, settings.key_cache_s)
        self.audit = AuditLog(store)
        self.sandboxes = SandboxStore(store)
        store.default_max_running = settings.quota_max_running

    async def authenticate(self, secret: str) -> KeyRecord | None:
        """The active key with this secret, or None (unknown or revoked)."""
        return await self.verified.authenticate(secret)

    def claim(self, secret: str) -> Claim | None:
        """The key this secret was verified as earlier, without a read (see Claim)."""
        return self.verified.claim(secret)

    async def verify(self, who: KeyRecord | Claim | None) -> KeyRecord | None:
        """The key of a Claim read again (Unauthenticated when revoked or gone); a
        KeyRecord or None as given."""
        if not isinstance(who, Claim):
            return who
        try:
            key = await asyncio.to_thread(self.keys.get, who.key.id)
        except NotFound:
            key = None
        if key is None or key.revoked_at is not None:
            raise Unauthenticated("the API key is not valid (unknown or revoked)")
        return key

    async def revoke(self, key_id: str) -> KeyRecord:
        """Revoke the key; its next request here is refused. Raises NotFound."""
        try:
            return await asyncio.to_thread(self.keys.revoke, key_id)
        finally:
            self.verified.forget()

    async def set_quotas(self, key_id: str, values: dict[str, Any]) -> KeyRecord:
        """Override the key's quotas (None: the default); applies to its next request.
        Raises NotFound, InvalidSubmission."""
        try:
            return await asyncio.to_thread(self.keys.set_quotas, key_id, values)
        finally:
            self.verified.forget()

    async def bootstrap(self) -> None:
        """Make sure the configured bootstrap admin key exists (and is not revoked)."""
        if self.settings.bootstrap_admin_key:
            await asyncio.to_thread(self.keys.ensure, self.settings.bootstrap_admin_key)
            self.verified.forget()

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
