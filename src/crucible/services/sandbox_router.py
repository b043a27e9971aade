"""Agent sandboxes from an API instance in distributed mode: placed on sandbox hosts,
routed to them, read from the database. The API instance keeps no sandbox state:
killing or restarting one loses nothing.

* **Placement** (:meth:`RoutedSandboxes.create`): the create is checked and resolved
  here (``prepare``: limits, ceilings, environment); the candidates are the hosts
  alive with a fresh heartbeat and room under their ``sandbox_capacity``, counting the
  running rows of each in the database plus this instance's creations in flight. The
  best of ``placement_choices`` random candidates (least loaded, as a share of
  capacity) is tried first, then the others by load. A host that refuses (full: its
  own hard cap, counted where the sandboxes are) or cannot be reached is skipped; none
  left: Overloaded (503 with Retry-After, and why). A sandbox on a private network goes
  to the host of that network's other members, which is local to it. That lookup
  cannot see a member being placed at the same moment by another instance, so the
  host's insert holds the rule (serialised per group; NetworkElsewhere when the group
  is on another host) and the create is placed again, finding the group's host.
* **Routing**: the host is the record's ``owner_process_id`` (``worker_id``), its URL
  the endpoint of its heartbeat row. Exec, files and delete are forwarded; the
  transcript, output blobs and events are read here (the host writes them).
* **Host loss**: a request to a sandbox whose host does not answer waits (at most
  ``worker_dead_after_s`` and a few heartbeats) for the database to say what became of
  it: ``lost`` (410) once any process declares the host dead, or the retried exec's
  answer if it had finished. A host that answers again in that time was only slow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter

from crucible.core.config import Settings
from crucible.core.errors import (
    NetworkElsewhere,
    NotFound,
    Overloaded,
    QuotaExceeded,
    SandboxFileTooLarge,
    SandboxUnavailable,
)
from crucible.core.lifecycle import SandboxStatus
from crucible.domain.models import ExecCreate, ExecPublic, SandboxCreate, SandboxPublic
from crucible.engine.caps import MAX_FILE_BYTES
from crucible.services.access import Access, Claim
from crucible.services.environments import EnvironmentService
from crucible.services.events import EventBus
from crucible.services.host_client import HostClient, HostUnreachable
from crucible.services.sandbox_records import HostedCreate, sandbox_public
from crucible.services.sandboxes import (
    SandboxRecords,
    exec_timeout,
    lose_dead_hosts,
    prepare,
    replay,
)
from crucible.store import BlobStore, Cluster
from crucible.store.keys import KeyRecord
from crucible.store.sandboxes import stopped_error
from crucible.store.tables import Sandbox, Worker

log = logging.getLogger(__name__)

# An exec's HTTP wait on its host beyond its own timeout: the kill, the recording.
EXEC_MARGIN_S = 30.0
# Host endpoints remembered (see RoutedSandboxes._endpoints): past this many, forget all.
ENDPOINTS_KEPT = 4096
# Placements of one create refused because its network group turned out to be on
# another host (see create): the second finds the group's host; a third covers that
# group's first member failing on its host (its row removed) in between.
GROUP_PLACEMENTS = 3


class RoutedSandboxes(SandboxRecords):
    """The sandbox operations of an API instance that hosts none (see the module)."""

    def __init__(
        self,
        *,
        settings: Settings,
        access: Access,
        blobs: BlobStore,
        bus: EventBus,
        cluster: Cluster,
        environments: EnvironmentService,
        hosts: HostClient,
    ) -> None:
        self.settings = settings
        self.access = access
        self.store = access.sandboxes
        self.blobs = blobs
        self.bus = bus
        self.cluster = cluster
        self.environments = environments
        self.hosts = hosts
        self._placing: Counter[str] = Counter()  # creations in flight here, per host
        # Host id -> its endpoint. Not sandbox state: a host's id names one process
        # (a random part per start) and its endpoint is set once, before its first
        # sandbox, so an entry is never stale; a host gone is found by the call
        # failing (then the database decides, _settle), as without the cache.
        self._endpoints: dict[str, str] = {}

    async def start(self) -> None:
        """Nothing runs here; the hosts reap their own sandboxes."""

    async def stop(self) -> None:
        await self.hosts.close()

    async def lose_dead_hosts(self) -> object:
        """The Maintenance duty: sandboxes of hosts declared dead become ``lost``."""
        return await lose_dead_hosts(self.store, self.bus)

    # -- placement ------------------------------------------------------------------

    async def create(self, body: SandboxCreate, who: KeyRecord | None = None) -> SandboxPublic:
        """Place and create (see the module). Raises what ``prepare`` and the host
        raise; QuotaExceeded (429) from the host's insert; Overloaded (503) when no
        host has room or none could take it; NetworkElsewhere (409) when its network
        group moved under it at every placement."""
        if not self.settings.cluster_token:
            raise SandboxUnavailable(
                "this API instance has no CRUCIBLE_CLUSTER_TOKEN, the secret sandbox hosts"
                " require; set the hosts' one"
            )
        req = await prepare(self.settings, self.access, self.environments, body, who)
        for _ in range(GROUP_PLACEMENTS - 1):
            try:
                return await self._place(req)
            except NetworkElsewhere:
                # Another member of its network was placed on another host meanwhile
                # (by another instance): placing again reads that host.
                log.info(
                    "sandbox %s: network %s is elsewhere; placing again", req.id, req.network_group
                )
        return await self._place(req)

    async def _place(self, req: HostedCreate) -> SandboxPublic:
        """One placement of ``req``: the candidates in turn (see create)."""
        candidates = await self._candidates(req)
        refusals: list[str] = []
        for host in candidates:
            assert host.endpoint is not None
            self._placing[host.id] += 1
            try:
                return await self.hosts.create(host.endpoint, req)
            except (QuotaExceeded, NetworkElsewhere):
                raise
            except HostUnreachable as exc:
                # The host may have made it before the answer was lost: the row says.
                row = await asyncio.to_thread(self._row_or_none, req.id)
                if row is not None:
                    return sandbox_public(row)
                refusals.append(f"{host.id}: {exc}")
            except (Overloaded, SandboxUnavailable) as exc:
                refusals.append(f"{host.id}: {exc}")
            finally:
                self._placing[host.id] -= 1
                if self._placing[host.id] <= 0:
                    del self._placing[host.id]
        raise Overloaded("no sandbox host could take it: " + "; ".join(refusals), retry_after=2)

    def _row_or_none(self, sandbox_id: str) -> Sandbox | None:
        try:
            return self.store.get(sandbox_id)
        except NotFound:
            return None

    async def _candidates(self, req: HostedCreate) -> list[Worker]:
        """The hosts to try, in order; Overloaded when none has room."""
        s = self.settings
        # Independent reads, side by side: each is a round trip to the database.
        hosts, load, first = await asyncio.gather(
            asyncio.to_thread(self.cluster.hosts, fresh_s=s.worker_dead_after_s),
            asyncio.to_thread(self.store.load),
            asyncio.to_thread(self.store.host_of_group, req.network_group)
            if req.network_group is not None
            else _none(),
        )
        if not hosts:
            raise Overloaded(
                "no sandbox host is alive (start `crucible worker --sandboxes N`)",
                retry_after=5,
            )
        if first is not None:  # its network is local to that host
            hosts = [h for h in hosts if h.id == first]
            if not hosts:
                raise Overloaded(
                    f"the host of network {req.network_group!r} ({first}) is not alive",
                    retry_after=5,
                )

        def used(h: Worker) -> int:
            return load.get(h.id, 0) + self._placing[h.id]

        free = [h for h in hosts if used(h) < h.sandbox_capacity]
        if not free:
            total = sum(h.sandbox_capacity for h in hosts)
            raise Overloaded(
                f"every sandbox host is full ({len(hosts)} hosts, {total} sandboxes)",
                retry_after=2,
            )
        share = {h.id: used(h) / h.sandbox_capacity for h in free}
        picked = random.sample(free, min(s.placement_choices, len(free)))
        picked.sort(key=lambda h: share[h.id])
        rest = sorted((h for h in free if h not in picked), key=lambda h: share[h.id])
        return picked + rest

    # -- routing --------------------------------------------------------------------

    async def _endpoint(self, row: Sandbox) -> str:
        """The URL of the host of a running sandbox; SandboxStopped/SandboxLost when it
        is not running."""
        if row.status != SandboxStatus.running:
            raise stopped_error(row)
        endpoint = self._endpoints.get(row.owner_process_id)
        if endpoint is not None:
            return endpoint
        host = await asyncio.to_thread(self.cluster.worker, row.owner_process_id)
        if host is None or host.endpoint is None:
            raise SandboxUnavailable(
                f"sandbox {row.id} is hosted by {row.owner_process_id} ({row.owner_host}),"
                " which has no cluster endpoint"
            )
        if len(self._endpoints) >= ENDPOINTS_KEPT:
            self._endpoints.clear()
        self._endpoints[host.id] = host.endpoint
        return host.endpoint

    async def _settle(self, sandbox_id: str, exc: HostUnreachable) -> Sandbox:
        """The host did not answer: wait for the database to decide (the host
        declared dead, its sandboxes lost) for at most ``worker_dead_after_s`` and
        three heartbeats; the row when it is no longer running, else ``exc``."""
        s = self.settings
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(s.worker_dead_after_s + 3 * s.heartbeat_s):
                while True:
                    row = await asyncio.to_thread(self.store.get, sandbox_id)
                    if row.status != SandboxStatus.running:
                        return row
                    await asyncio.sleep(min(0.2, s.heartbeat_s))
        raise exc

    async def get(self, sandbox_id: str, who: KeyRecord | None = None) -> SandboxPublic:
        return sandbox_public(await self.access.sandbox(sandbox_id, who))

    async def delete(self, sandbox_id: str, who: KeyRecord | None = None) -> None:
        """Stop it on its host; a sandbox already stopped or lost is left as it is."""
        row = await self.access.sandbox(sandbox_id, who)
        if row.status != SandboxStatus.running:
            return
        endpoint = await self._endpoint(row)
        try:
            await self.hosts.delete(endpoint, sandbox_id)
        except HostUnreachable as exc:
            await self._settle(sandbox_id, exc)  # lost: nothing is left to stop

    async def exec(
        self,
        sandbox_id: str,
        body: ExecCreate,
        who: KeyRecord | Claim | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> ExecPublic:
        """Forward to the host (a Claim is verified first: one read, as the lookup
        it replaces). A finished exec of ``idempotency_key`` is answered
        from the database, even when its host is gone since. The host not answering:
        SandboxLost once the database says so (the command ran at most once, its
        transcript is kept), else the HostUnreachable (503; retry with the same key)."""
        timeout = exec_timeout(self.settings, body)
        row = await self.access.sandbox(sandbox_id, await self.access.verify(who))
        if idempotency_key is not None and row.status != SandboxStatus.running:
            # The host is gone or has stopped it: a finished exec of the key is
            # answered from the transcript. While it runs, the host replays (and
            # refuses a key reused for another command) under the sandbox's row
            # lock, so a read here would only add a round trip to every exec.
            done = await replay(self.store, self.blobs, sandbox_id, idempotency_key, body.cmd)
            if done is not None:
                return done
        endpoint = await self._endpoint(row)
        try:
            return await self.hosts.exec(
                endpoint,
                sandbox_id,
                body,
                idempotency_key=idempotency_key,
                wait_s=timeout + EXEC_MARGIN_S,
            )
        except HostUnreachable as exc:
            if idempotency_key is not None:
                done = await replay(self.store, self.blobs, sandbox_id, idempotency_key, body.cmd)
                if done is not None:
                    return done
            raise stopped_error(await self._settle(sandbox_id, exc)) from exc

    async def write_file(
        self, sandbox_id: str, path: str, data: bytes, who: KeyRecord | None = None
    ) -> None:
        if len(data) > MAX_FILE_BYTES:
            raise SandboxFileTooLarge(path, f"{path}: larger than {MAX_FILE_BYTES} bytes")
        endpoint = await self._endpoint(await self.access.sandbox(sandbox_id, who))
        try:
            await self.hosts.write_file(endpoint, sandbox_id, path, data)
        except HostUnreachable as exc:
            raise stopped_error(await self._settle(sandbox_id, exc)) from exc

    async def read_file(self, sandbox_id: str, path: str, who: KeyRecord | None = None) -> bytes:
        endpoint = await self._endpoint(await self.access.sandbox(sandbox_id, who))
        try:
            return await self.hosts.read_file(endpoint, sandbox_id, path)
        except HostUnreachable as exc:
            raise stopped_error(await self._settle(sandbox_id, exc)) from exc


async def _none() -> None:
    return None
