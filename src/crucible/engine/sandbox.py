"""The sandbox engine: code in, :class:`Result` out.

One :class:`Sandbox` per process drives any number of runs concurrently (bounded by
``max_concurrency``). A run takes a *box* (a bundle with a fresh workspace tmpfs and a
run container whose init waits for its job), warm from the pool (``pool.py``) or made
on the spot; writes the files; runs the optional compile step in a container of its
own over the same workspace; releases the run container's init with the program
(``container.py``: create → start → kill → account → delete); and tears the box
down in the background, so the next run does not wait for ``delete``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import itertools
import logging
import os
import secrets
import shutil
import signal as signals
import time
import weakref
from collections.abc import Awaitable, Hashable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from crucible.core.config import Settings, get_settings
from crucible.core.errors import (
    InvalidSubmission,
    RuntimeFailure,
    SandboxStopped,
    SandboxUnavailable,
)
from crucible.core.files import write_atomic
from crucible.engine import accounting, agent, overlay, reaper, runtime, spec, workspace
from crucible.engine.container import Container, WritePipeState, job_header
from crucible.engine.languages import LANGUAGE_PROGRAMS, LANGUAGES, Language, get_language
from crucible.engine.models import (
    EnvironmentRoot,
    Events,
    Limits,
    Result,
    RunRequest,
    RuntimeInfo,
    RuntimeName,
    Termination,
)
from crucible.engine.network import sweep_networks
from crucible.engine.output import ExitStatus, OutputCallback, OutputCollector, pump
from crucible.engine.pool import WarmPool
from crucible.engine.process import run_tool
from crucible.engine.runtime import Runtime
from crucible.engine.seccomp import compile_bpf
from crucible.engine.session import Sessions
from crucible.engine.sweep import drop_view, mount_view, owner_token, sweep_leftovers, sweep_views

log = logging.getLogger(__name__)
# After a run, before its warm sandbox's replacement is asked for: the service's
# store-and-answer path takes a few milliseconds (see _refill_later).
_REFILL_DELAY_S = 0.03

_POLL_S = 0.05  # how often CPU time, the deadline and cancellation are checked
_DRAIN_S = 1.0  # after the init's exit, how long to wait for the pipes' EOF
_KILL_GRACE_S = 2.0  # after a job's kill, how long before its sandbox is killed
_CLEAR_MAX = 64  # names a job may leave in its directory and its sandbox still be reused


@dataclass
class _Phase:
    """What one container run observed."""

    collector: OutputCollector
    reason: Termination | None  # set when the supervisor stopped it
    wall_ms: int
    usage: accounting.Usage


class Sandbox:
    """Runs untrusted programs under runc or runsc.

    ``run`` raises :class:`~crucible.core.errors.SandboxError` subclasses for platform
    failures and :class:`~crucible.core.errors.InvalidSubmission` for requests that cannot
    run as given; whatever the program does is reported in the returned Result.

    ``await close()`` before the event loop ends: tear-downs and warm sandboxes are
    background work, and a loop that cancels them mid-verb (``asyncio.run`` at exit)
    leaves containers for the next start-up sweep, and on Python 3.11 can hang on a
    runtime verb cancelled while it was being spawned.
    """

    def __init__(self, settings: Settings | None = None, *, max_concurrency: int | None = None):
        self.settings = settings or get_settings()
        self.state_dir = self.settings.state_dir.resolve()
        self._bundles = self.state_dir / "bundles"
        self._assets = self.state_dir / "assets"
        concurrency = max_concurrency or self.settings.max_concurrency
        self._limit = asyncio.Semaphore(concurrency)
        self._rootfs: Path | None = None
        self._init: Path | None = None
        self._seccomp: Path | None = None
        self._hidecg: Path | None = None
        self._gvisor_preload: tuple[Path, Path] | None = None
        # crun 1.8 refuses a hybrid host; it runs with these cgroup2 mounts hidden.
        self._hidden_cgroup2 = accounting.hybrid_cgroup2_mounts()
        self._runtimes: dict[RuntimeName, Runtime] = {}
        self._jobs_work: bool | None = None  # jobs can make their namespaces here
        self._prepare_lock = asyncio.Lock()
        # Every language's host mounts in every container: one shape fits all
        # languages, so a warm sandbox does not depend on the language it will run.
        self._host_mounts = sorted({m for lang in LANGUAGES.values() for m in lang.host_mounts()})
        pool_size = self.settings.pool_size
        self._pool: WarmPool[_Box] = WarmPool(
            size=concurrency if pool_size is None else pool_size,
            shapes=self.settings.pool_shapes,
            make=self._make,
            discard=self._discard,
            usable=_usable,
        )
        self._tasks: set[asyncio.Task[None]] = set()  # tear-downs in flight
        self._sessions: Sessions | None = None
        self._view: weakref.finalize[Any, Any] | None = None  # the assets' tmpfs

    # -- what long-lived sandboxes (session.py) share with one-shot runs ---------

    @property
    def sessions(self) -> Sessions:
        """This engine's long-lived sandboxes (``session.py``)."""
        if self._sessions is None:
            self._sessions = Sessions(self)
        return self._sessions

    @property
    def bundles_dir(self) -> Path:
        return self._bundles

    @property
    def host_mounts(self) -> list[str]:
        return list(self._host_mounts)

    @property
    def init_binary(self) -> Path:
        if self._init is None:
            raise SandboxUnavailable("the sandbox is not prepared (call prepare first)")
        return self._init

    @property
    def seccomp_bpf(self) -> Path:
        if self._seccomp is None:
            raise SandboxUnavailable("the sandbox is not prepared (call prepare first)")
        return self._seccomp

    # -- set-up ---------------------------------------------------------------

    def get_runtime(self, name: RuntimeName) -> Runtime:
        """The runtime ``name`` (resolved on PATH once: every run asks, twice);
        raises SandboxUnavailable when it is not installed."""
        rt = self._runtimes.get(name)
        if rt is None:
            rt = self._runtimes[name] = self._resolve_runtime(name)
        return rt

    def _resolve_runtime(self, name: RuntimeName) -> Runtime:
        s = self.settings
        binary = {"runc": s.runc_path, "crun": s.crun_path, "gvisor": s.runsc_path}[name]
        wrapper: tuple[str, ...] = ()
        if name == "crun" and self._hidden_cgroup2:
            if self._hidecg is None:
                raise SandboxUnavailable("the sandbox is not prepared (call prepare first)")
            wrapper = (str(self._hidecg), *self._hidden_cgroup2, "--")
        return runtime.make_runtime(
            name, binary=binary, state_dir=self.state_dir, timeout=s.runtime_timeout_s,
            wrapper=wrapper,
        )  # fmt: skip

    async def prepare(self) -> None:
        """Build the shared root file system and the init binary (idempotent)."""
        async with self._prepare_lock:
            await self._prepare()

    async def _prepare(self) -> None:
        if self._rootfs is not None and self._init is not None and self._seccomp is not None:
            return
        if os.geteuid() != 0:
            raise SandboxUnavailable("the sandbox needs root to drive runc/runsc")
        reaper.become_subreaper()
        self._bundles.mkdir(parents=True, exist_ok=True)
        # Built once per content into <state>/assets, then bound into sandboxes from a
        # tmpfs view of this engine's own, so mountinfo names no host path (sweep.py).
        self._assets.mkdir(parents=True, exist_ok=True)
        init = await self._build_static("init.c", "init")
        if self._hidden_cgroup2:
            self._hidecg = await self._build_static("hidecg.c", "hidecg")
        seccomp = self._compile_seccomp()
        shim, preload = await self._build_preload()
        view = mount_view(self.state_dir)
        # Dropped by close(), or when the engine is collected or its process exits
        # (uvicorn ends by re-raising SIGTERM: no atexit, so close() it is for servers).
        self._view = weakref.finalize(self, drop_view, view, owner=os.getpid())
        self._rootfs = spec.ensure_rootfs(view / "rootfs", self._host_mounts)
        self._init, self._seccomp, *shown = (
            Path(shutil.copy2(asset, view)) for asset in (init, seccomp, shim, preload)
        )
        self._gvisor_preload = (shown[0], shown[1])

    def _cached(self, name: str, content: bytes) -> Path:
        """``<assets>/<name>-<digest of content>``: the path of a file made once per
        content (``write_atomic``: concurrent makers race harmlessly)."""
        return self._assets / f"{name}-{hashlib.sha256(content).hexdigest()[:16]}"

    def _compile_seccomp(self) -> Path:
        """The shipped profile as BPF, compiled once per content (see seccomp.py)."""
        program = compile_bpf(spec.seccomp_profile())
        path = self._cached("seccomp", program).with_suffix(".bpf")
        if not path.exists():
            write_atomic(path, program)
        return path

    async def _build_preload(self) -> tuple[Path, Path]:
        """gVisor's statx shim (gvisor_statx.c) and an /etc/ld.so.preload naming it."""
        shim = await self._build_static("gvisor_statx.c", "gvisor-statx", shared=True)
        line = f"{spec.GVISOR_STATX_PATH}\n".encode()
        preload = self._cached("ld.so.preload", line)
        if not preload.exists():
            write_atomic(preload, line)
        return shim, preload

    @property
    def gvisor_preload(self) -> tuple[Path, Path] | None:
        return self._gvisor_preload

    async def _build_static(self, source_name: str, name: str, *, shared: bool = False) -> Path:
        """A static binary (``shared``: a shared object linked with no library) from one
        of the package's C files, built once per content."""
        source = resources.files("crucible.engine").joinpath(source_name).read_bytes()
        binary = self._cached(name, source)
        if binary.exists():
            return binary
        suffix = f".{os.getpid()}.{secrets.token_hex(4)}"
        src = binary.with_name(binary.name + suffix + ".c")
        tmp = binary.with_name(binary.name + suffix + ".tmp")
        src.write_bytes(source)
        kind = ["-shared", "-fPIC", "-nostdlib"] if shared else ["-static"]
        try:
            done = await run_tool(["gcc", *kind, "-O2", "-o", str(tmp), str(src)], timeout=120)
            if done.returncode != 0:
                raise SandboxUnavailable(f"cannot build {source_name}: {done.stderr[:500]}")
            tmp.rename(binary)
        finally:
            src.unlink(missing_ok=True)
        return binary

    async def sweep(self) -> list[str]:
        """Remove leftovers of crashed supervisors (see :mod:`crucible.engine.sweep`)."""
        await self.prepare()
        runtimes = []
        names: tuple[RuntimeName, ...] = ("runc", "crun", "gvisor")
        for name in names:
            try:
                runtimes.append(self.get_runtime(name))
            except SandboxUnavailable:
                continue
        swept = await sweep_leftovers(self.state_dir, self.settings.prefix, runtimes)
        return swept + sweep_views(self.state_dir) + await sweep_networks(self.state_dir)

    # -- one run --------------------------------------------------------------

    async def run(
        self,
        request: RunRequest,
        *,
        on_output: OutputCallback | None = None,
        cancel: asyncio.Event | None = None,
        files_dir: Path | None = None,
    ) -> Result:
        """Run ``request`` and report what happened.

        ``on_output(stream, chunk)`` receives output while the program runs;
        setting ``cancel`` kills the run (termination ``cancelled``); produced files
        are copied to ``files_dir`` when given.
        """
        lang = get_language(request.language)
        files = _source_files(request, lang)
        await self.prepare()
        rt = self.get_runtime(request.runtime)
        cancel = cancel or asyncio.Event()
        limits = request.limits
        environment = request.environment
        if environment is not None:
            lang = in_environment(lang, environment)
        async with self._limit:
            info = RuntimeInfo(name=rt.name, version=await runtime.runtime_version(rt))
            shape = _Shape(
                rt.name, limits.memory_mb, limits.pids, limits.cpus, limits.disk_mb,
                environment.path if environment else None,
                reuse=self._reusable(rt.name, environment, compiled=lang.compile is not None),
            )  # fmt: skip
            box, job = await self._take(shape)
            recycle = False
            try:
                ws = box.ws if job is None else box.ws / job.name
                workspace.write_files(ws, files)
                entry = request.entrypoint or lang.file_name
                env = {**_base_env(environment), **lang.env}
                if lang.compile is not None:
                    failed = await self._compile(box, lang, entry, env, limits, info, cancel)
                    if failed is not None:
                        return failed
                listed = workspace.list_files(ws, exclude=set(), max_files=10_000).files
                argv = [a.replace("{entrypoint}", entry) for a in lang.run] + list(request.args)
                step = _Step(argv, env, request.stdin.encode("utf-8", "surrogateescape"), limits)
                assert box.container is not None
                if job is None:
                    phase = await self._step(box.container, box.nonce, step, on_output, cancel)
                else:
                    phase = await self._job(box, job, step, on_output, cancel)
                produced = workspace.list_files(
                    ws, exclude={f.path for f in listed}, max_files=self.settings.max_files
                )
                if files_dir is not None:
                    workspace.copy_files(
                        produced, ws, files_dir, max_bytes=self.settings.max_file_bytes
                    )
                verdict = _verdict(rt, phase, limits)
                recycle = job is not None and _ended_cleanly(
                    box, phase, verdict, limits, self.settings.sandbox_reuse
                )
                return _result(verdict, phase, produced, info, limits)
            finally:
                clean = recycle and job is not None and _clear_job(box, job) and _usable(box)
                if not (clean and self._pool.give_back(shape, box)):
                    if not clean:
                        # Not when the pool refused a clean one: it is full, and a
                        # replacement is one sandbox too many, refused in turn by the
                        # next give_back (18% of a batch's sandboxes were made so).
                        self._background(self._refill_later(shape))
                    # The next run need not wait for this one's tear-down.
                    self._background(self._discard(box))

    async def _take(self, shape: _Shape) -> tuple[_Box, _Job | None]:
        """A ready sandbox of ``shape``, warm from the pool or made now, and its next
        job when it runs jobs. A sandbox whose next job could not be made (its init
        died, or the host refused) is discarded for another; after three, a sandbox
        used once."""
        for _ in range(3):
            box = self._pool.take(shape, refill=False) or await self._make(shape)
            if box.channel is None:
                return box, None
            try:
                job = await box.take_job()
                if not job.ended.is_set():
                    return box, job
                job.close()
                log.warning("the next job of sandbox %s ended before its run", box.run_id)
            except (OSError, SandboxStopped, TimeoutError) as exc:
                log.warning("sandbox %s cannot make its next job: %s", box.run_id, exc)
            self._background(self._discard(box))
        return await self._make(dataclasses.replace(shape, reuse=False)), None

    def _reusable(
        self, runtime_name: RuntimeName, environment: EnvironmentRoot | None, *, compiled: bool
    ) -> bool:
        """Whether runs of this kind take a sandbox that runs one job after another
        (see ``_job``): under runc and crun, on the host's skeleton (an environment's
        root is writable), for languages run without a compile step (a container of
        its own), and while the host lets the jobs make their namespaces."""
        return (
            self.settings.sandbox_reuse > 1
            and self._jobs_work is not False
            and runtime_name != "gvisor"
            and environment is None
            and not compiled
        )

    async def _refill_later(self, shape: _Shape) -> None:
        """Ask for the replacement of a warm sandbox a run took, once the service has
        likely stored and answered its result: made while the program ran (as the pool
        did), the runtime's start competed with the program and its supervisor for the
        CPU. One ?wait request at a time, interleaved with the earlier code: p50
        32.4 → 28.0 ms, p90 39.9 → 34.4 ms (bench/README)."""
        await asyncio.sleep(_REFILL_DELAY_S)
        if shape.reuse and self._jobs_work is False:
            # The run was shaped before this engine learnt that the host refuses the
            # jobs: refill the shape its next request will ask for, not a stale one.
            shape = dataclasses.replace(shape, reuse=False)
        self._pool.fill(shape, 1)

    async def _compile(
        self,
        box: _Box,
        lang: Language,
        entry: str,
        env: dict[str, str],
        limits: Limits,
        info: RuntimeInfo,
        cancel: asyncio.Event,
    ) -> Result | None:
        """The compile step, in a fresh container of its own over the run's workspace;
        the compile error (or cancellation) as a Result, or None when it succeeded."""
        assert lang.compile is not None
        c = self.settings.compile_limits
        compile_limits = Limits(
            timeout_s=c["timeout_s"],
            cpu_s=c["cpu_s"],
            memory_mb=int(c["memory_mb"]),
            pids=int(c["pids"]),
            cpus=c["cpus"],
            output_bytes=int(c["output_bytes"]),
            disk_mb=limits.disk_mb,
        )
        container, nonce = await self._create(box, "c", compile_limits, info.name)
        try:
            argv = [a.replace("{entrypoint}", entry) for a in lang.compile]
            step = _Step(argv, env, b"", compile_limits)
            phase = await self._step(container, nonce, step, None, cancel)
        finally:
            await container.delete()
        status = phase.collector.status
        if phase.reason is None and status is not None and status.exit_code == 0:
            return None
        if phase.reason is Termination.cancelled:
            return _result(Termination.cancelled, phase, workspace.Listing(), info, limits)
        note = ""
        if phase.reason is Termination.timeout:
            note = f"\n[crucible] compilation stopped after {compile_limits.timeout_s:g}s\n"
        return _result(
            Termination.compile_error, phase, workspace.Listing(), info, limits, stderr_note=note
        )

    # -- sandboxes ready to run: made cold, or ahead of time by the pool --------

    async def _make(self, shape: Hashable) -> _Box:
        """A bundle with its workspace and a run container whose init waits for its job."""
        assert isinstance(shape, _Shape)
        run_id = f"{self.settings.prefix}-{secrets.token_hex(8)}"
        bundle = self._bundles / run_id
        bundle.mkdir(parents=True)
        (bundle / "owner").write_text(owner_token() + "\n")
        box = _Box(run_id, bundle, bundle / "workspace")
        try:
            workspace.mount_tmpfs(box.ws, shape.disk_mb)
            if shape.root is not None:
                box.rootfs = overlay.mount_run_root(bundle, shape.root, shape.disk_mb)
            if not shape.reuse:
                box.container, box.nonce = await self._create(
                    box, "r", _shape_limits(shape), shape.runtime
                )
            else:
                await self._create_reusable(box, shape)
                if not await self._jobs_supported(box, shape):
                    await self._discard(box)
                    return await self._make(dataclasses.replace(shape, reuse=False))
        except BaseException:
            await self._discard(box)
            raise
        return box

    async def _jobs_supported(self, box: _Box, shape: _Shape) -> bool:
        """Whether this host lets a job make its namespaces (a kernel, or a security
        module such as AppArmor's userns restriction, may refuse an unprivileged user
        namespace): asked once per engine, with ``true`` as a sandbox's first job.
        Where it is refused, one-shot sandboxes are used once, as before."""
        if self._jobs_work is None:
            limits = _shape_limits(shape).model_copy(
                update={"timeout_s": 30, "cpu_s": 30, "output_bytes": 4096}
            )
            step = _Step(["true"], {"PATH": spec.PATH}, b"", limits)
            try:
                job = await box.take_job()
                phase = await self._job(box, job, step, None, asyncio.Event())
            except (OSError, SandboxStopped, TimeoutError) as exc:
                log.warning("one-shot sandboxes are used once each on this host: %s", exc)
                self._jobs_work = False
                return False
            status = phase.collector.status
            works = status is not None and status.exit_code == 0
            if not works:
                why = bytes(phase.collector.stderr).decode("utf-8", "replace").strip()
                log.warning("one-shot sandboxes are used once each on this host: %s", why)
            self._jobs_work = works and _clear_job(box, job)
        return self._jobs_work

    async def _create_reusable(self, box: _Box, shape: _Shape) -> None:
        """The run container of a reused sandbox: its init is the exec agent, each run
        a job (``_job``). It has the jobs' limits plus the headroom of its own
        processes (``accounting.JOB_*_HEADROOM``)."""
        limits = _shape_limits(shape)
        outer = limits.model_copy(
            update={
                "memory_mb": limits.memory_mb + (accounting.JOB_MEMORY_HEADROOM >> 20),
                "pids": limits.pids + accounting.JOB_PIDS_HEADROOM,
            }
        )
        box.container, _ = await self._create(box, "r", outer, shape.runtime, jobs=True)
        box.channel = box.container.channel
        box.jobs = accounting.JobCgroups(box.container.counters.path)
        box.jobs.adopt(box.container.pid)
        box.prepare_next(limits, self.settings.runtime_timeout_s)

    async def _create(
        self,
        box: _Box,
        step: str,
        limits: Limits,
        runtime_name: RuntimeName,
        *,
        jobs: bool = False,
    ) -> tuple[Container, str]:
        """Create container ``<run id>-<step>`` over ``box``'s workspace, init waiting
        for its job on stdin (init.c's job mode), or with ``jobs`` for job after job
        through its exec agent (``_job``): then the container masks no /proc paths,
        since only the init, its agent and the jobs' inits see its /proc, and each
        job masks its own."""
        await self.prepare()  # again: close() may have dropped the assets' view since
        assert self._rootfs is not None and self._init is not None and self._seccomp is not None
        rt = self.get_runtime(runtime_name)
        cid = f"{box.run_id}-{step}"
        nonce = "" if jobs else secrets.token_hex(16)  # a job's comes with the job
        cgroups_path = f"/{self.settings.prefix}/{cid}"
        config = spec.build_config(
            args=["--session", "--agent"] if jobs else [],
            env={"PATH": spec.PATH, "CRUCIBLE_STATUS_NONCE": nonce},
            limits=limits,
            rootfs=box.rootfs or self._rootfs,
            workspace=box.ws,
            init_binary=self._init,
            seccomp_bpf=self._seccomp,
            cgroups_path=cgroups_path,
            extra_mounts=self._host_mounts,
            gvisor=rt.name == "gvisor",
            host_toolchain=box.rootfs is None,
            gvisor_preload=self._gvisor_preload,
        )
        if jobs:
            config["linux"]["maskedPaths"] = config["linux"]["readonlyPaths"] = []
        container = Container(rt, cid, box.bundle / cid, cgroups_path)
        try:
            await (container.create_with_agent(config) if jobs else container.create(config))
        except BaseException:
            await container.delete()
            raise
        return container, nonce

    async def _discard(self, box: _Box) -> None:
        box.drop_job()
        try:
            if box.container is not None:
                await box.container.delete()
        except RuntimeFailure as exc:
            log.warning("cannot delete %s: %s", box.run_id, exc)  # the sweep retries
        finally:
            workspace.unmount(box.ws)
            if box.rootfs is not None:
                workspace.unmount_below(box.bundle)
            shutil.rmtree(box.bundle, ignore_errors=True)

    def _background(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            await work

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def warm(
        self, runtime_name: RuntimeName, limits: Limits, count: int | None = None
    ) -> None:
        """Start making warm sandboxes of this shape ahead of the first request
        (default: the pool's size); returns at once, they are made in the background."""
        await self.prepare()
        self.get_runtime(runtime_name)  # raises SandboxUnavailable when not installed
        shape = _Shape(
            runtime_name, limits.memory_mb, limits.pids, limits.cpus, limits.disk_mb,
            reuse=self._reusable(runtime_name, None, compiled=False),
        )  # fmt: skip
        self._pool.fill(shape, self._pool.size if count is None else count)

    @property
    def pool(self) -> WarmPool[_Box]:
        return self._pool

    @property
    def quiet(self) -> bool:
        """No tear-down in flight and no warm sandbox being made (benchmarks wait for
        this to time a request that finds an idle server)."""
        return not self._tasks and not self._pool.busy

    def warm_stats(self) -> list[WarmStats]:
        """Idle warm sandboxes per runtime, with the memory and pids they hold."""
        totals: dict[str, list[int]] = {}
        for shape, boxes in self._pool.idle().items():
            assert isinstance(shape, _Shape)
            row = totals.setdefault(shape.runtime, [0, 0, 0])
            for box in boxes:
                if box.container is not None:
                    row[0] += 1
                    row[1] += box.container.counters.memory_bytes()
                    row[2] += box.container.counters.pids()
        return [WarmStats(name, *row) for name, row in sorted(totals.items())]

    async def start_pool(self, limits: Limits) -> None:
        """Warm two sandboxes of the default runtime at ``limits`` (the default limits:
        what most requests ask for); demand grows the pool from there. A runtime that
        is not installed is logged, not fatal (requests will say so)."""
        try:
            await self.warm(self.settings.default_runtime, limits, min(2, self._pool.size))
        except SandboxUnavailable as exc:
            log.warning("no warm sandboxes: %s", exc)

    async def close(self) -> None:
        """Close the long-lived sandboxes, remove the idle warm ones, wait for
        tear-downs in flight and drop the assets' view (idempotent). Runs still work
        afterwards, without the pool (the next one prepares a new view)."""
        if self._sessions is not None:
            await self._sessions.close_all()
        await self._pool.close()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        async with self._prepare_lock:
            if self._view is not None:
                self._view()
                self._view = None
            self._rootfs = self._init = self._seccomp = self._gvisor_preload = None
            self._runtimes.clear()

    # -- supervising one step -------------------------------------------------

    async def _step(
        self,
        container: Container,
        nonce: str,
        step: _Step,
        on_output: OutputCallback | None,
        cancel: asyncio.Event,
    ) -> _Phase:
        """Release ``container``'s init with ``step`` and supervise it to its end."""
        limits = step.limits
        gvisor = container.rt.name == "gvisor"
        job = job_header(
            step.argv, step.env, fsize=limits.disk_mb << 20, nproc=limits.pids if gvisor else 0
        )
        collector = OutputCollector(cap=limits.output_bytes, nonce=nonce, on_output=on_output)
        pumps = self._pumps(collector, *container.take_output())
        try:
            # The cgroup already holds the runtime's own start-up (runc's init is Go):
            # only what is used from here on is the program's CPU time.
            cpu_base = container.counters.cpu_ns()
            await container.start(job, step.stdin)
            started = time.monotonic()
            reason = await self._supervise(
                limits, started, container.exited, container.counters, collector, cancel, cpu_base
            )
            if reason is not None:
                await container.kill()
            wall_ms = int((time.monotonic() - started) * 1000)
            container.discard_stdin()
            return await _conclude(
                collector, pumps, reason, wall_ms, container.counters, cpu_base, limits
            )
        finally:
            for task in pumps:
                task.cancel()

    async def _job(
        self,
        box: _Box,
        job: _Job,
        step: _Step,
        on_output: OutputCallback | None,
        cancel: asyncio.Event,
    ) -> _Phase:
        """Run ``step`` as ``job`` of the reused sandbox ``box``: the job's init was made
        ahead (``_Box.prepare_next``), in a cgroup of its own with the run's limits and
        namespaces of its own (init.c's job_main), over its own directory of the
        workspace; it is sent the program (argv, env, rlimits, then stdin) and
        supervised. The sandbox's next job is made while this one runs."""
        assert box.container is not None
        limits = step.limits
        header = job_header(step.argv, step.env, fsize=limits.disk_mb << 20)
        collector = OutputCollector(cap=limits.output_bytes, nonce=job.nonce, on_output=on_output)
        pumps = self._pumps(collector, job.out_r, job.err_r)
        job.out_r = job.err_r = -1
        loop = asyncio.get_running_loop()
        pipe = os.fdopen(job.stdin, "wb", buffering=0)
        job.stdin = -1
        feeder, fed = await loop.connect_write_pipe(WritePipeState, pipe)
        try:
            feeder.write(header + step.stdin)
            feeder.close()  # EOF once flushed
            started = time.monotonic()
            if box.made < self.settings.sandbox_reuse:  # else the sandbox goes after this
                box.prepare_next(limits, self.settings.runtime_timeout_s)
            reason = await self._supervise(
                limits, started, job.ended, job.counters, collector, cancel, 0
            )
            if reason is not None:
                await job.run.signal(signals.SIGUSR1)  # its init killed: its pid namespace
                try:
                    async with asyncio.timeout(_KILL_GRACE_S):
                        await job.ended.wait()
                except TimeoutError:
                    await box.container.kill()  # the sandbox is not usable; _ended_cleanly
            wall_ms = int((time.monotonic() - started) * 1000)
            if not fed.lost:
                feeder.abort()  # the program did not read all of its stdin
            return await _conclude(collector, pumps, reason, wall_ms, job.counters, 0, limits)
        finally:
            for task in pumps:
                task.cancel()

    def _pumps(
        self, collector: OutputCollector, out_r: int, err_r: int
    ) -> list[asyncio.Task[None]]:
        chunk = self.settings.output_chunk_bytes
        return [
            asyncio.create_task(pump(out_r, "stdout", collector.feed, chunk)),
            asyncio.create_task(pump(err_r, "stderr", collector.feed, chunk)),
        ]

    async def _supervise(
        self,
        limits: Limits,
        started: float,
        ended: asyncio.Event,
        counters: accounting.CgroupCounters,
        collector: OutputCollector,
        cancel: asyncio.Event,
        cpu_base: int,
    ) -> Termination | None:
        """Wait for the program's end (``ended``), enforcing the limits; say why it
        was stopped."""
        deadline = started + limits.timeout_s
        cpu_ns_limit = cpu_base + limits.cpu_s * 1e9
        waiters = [
            asyncio.ensure_future(ended.wait()),
            asyncio.ensure_future(collector.exceeded.wait()),
            asyncio.ensure_future(cancel.wait()),
        ]
        try:
            while True:
                remaining = deadline - time.monotonic()
                await asyncio.wait(
                    waiters,
                    timeout=max(0.0, min(_POLL_S, remaining)),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if cancel.is_set():
                    return Termination.cancelled
                if ended.is_set():
                    return None
                if collector.exceeded.is_set():
                    return Termination.output_limit
                if time.monotonic() >= deadline or counters.cpu_ns() > cpu_ns_limit:
                    return Termination.timeout
        finally:
            for w in waiters:
                w.cancel()


async def _conclude(
    collector: OutputCollector,
    pumps: list[asyncio.Task[None]],
    reason: Termination | None,
    wall_ms: int,
    counters: accounting.CgroupCounters,
    cpu_base: int,
    limits: Limits,
) -> _Phase:
    """What a step observed, once it has ended: the rest of its output (the pipes
    reach EOF once every process holding them is gone), its own wall time, its
    counters from ``cpu_base`` on, and why it was stopped."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*pumps), _DRAIN_S)
    collector.finish()
    if collector.status is not None and collector.status.wall_us is not None:
        wall_ms = collector.status.wall_us // 1000  # the init's own measure
    usage = counters.read()
    usage = dataclasses.replace(usage, cpu_ns=max(0, usage.cpu_ns - cpu_base))
    cpu_over = usage.cpu_ns > limits.cpu_s * 1e9
    if reason is None and cpu_over and collector.status is None:
        reason = Termination.timeout
    if reason is None and collector.exceeded.is_set():
        reason = Termination.output_limit
    return _Phase(collector, reason, wall_ms, usage)


# A job's user namespace (init.c's job_main): root and the sandbox user, each itself,
# so files keep their owners; the program runs as the sandbox user with no capability.
_JOB_ID_MAP = f"0 0 1\n{spec.SANDBOX_UID} {spec.SANDBOX_UID} 1\n"
_JOB_GID_MAP = f"0 0 1\n{spec.SANDBOX_GID} {spec.SANDBOX_GID} 1\n"


def _map_ids(pid: int) -> None:
    """Write the id maps of the job's init ``pid`` (host pid): only a writer with
    CAP_SETUID over the parent namespace, the engine, may map more than its own id."""
    accounting.write_text(f"/proc/{pid}/uid_map", _JOB_ID_MAP)
    accounting.write_text(f"/proc/{pid}/gid_map", _JOB_GID_MAP)


def _clear_job(box: _Box, job: _Job) -> bool:
    """Remove what ``job`` left on the host (its directory; its cgroup is removed in
    ``_enter_job``, off the event loop) and count it; False if something would not go.
    Only a flat directory of a few names is cleared
    here (each unlinked by name: nothing is followed); a job that left a tree costs
    its sandbox, whose tmpfs goes at once with it."""
    assert box.jobs is not None
    box.uses += 1
    path = box.ws / job.name
    try:
        with os.scandir(path) as it:
            entries = list(itertools.islice(it, _CLEAR_MAX + 1))
        if len(entries) > _CLEAR_MAX or any(e.is_dir(follow_symlinks=False) for e in entries):
            return False
        for entry in entries:
            os.unlink(entry.path)
        path.rmdir()
        box.stale.append(job.name)  # its cgroup goes as the next job is made
        return True
    except OSError as exc:
        log.warning("cannot clear %s of %s: %s", job.name, box.run_id, exc)
        return False


def _usable(box: _Box) -> bool:
    """A warm sandbox can still be handed out: its init lives (and so its agent)."""
    if box.container is None or box.container.exited.is_set():
        return False
    return box.channel is None or not box.channel.closed


def _ended_cleanly(
    box: _Box, phase: _Phase, verdict: Termination, limits: Limits, reuse: int
) -> bool:
    """A reused sandbox may take another job: this one ran to its own end (``exited``:
    not stopped, its status reported), nowhere near its memory limit, and the sandbox
    has jobs left (``run`` then checks that it is still alive)."""
    return (
        box.channel is not None
        and box.uses + 1 < reuse
        and verdict is Termination.exited
        and not accounting.at_memory_limit(phase.usage, limits.memory_mb << 20)
    )


@dataclass(frozen=True)
class _Shape:
    """What a container is created with, and so what a warm one must match."""

    runtime: RuntimeName
    memory_mb: int
    pids: int
    cpus: float
    disk_mb: int
    root: Path | None = None  # an environment's root (the lower layer); None: the host's
    reuse: bool = False  # one job after another (Sandbox._job), not one program


def _shape_limits(shape: _Shape) -> Limits:
    """The container-shaping limits of ``shape`` (the others are enforced at run time)."""
    return Limits(
        timeout_s=1, cpu_s=1, output_bytes=1,
        memory_mb=shape.memory_mb, pids=shape.pids, cpus=shape.cpus, disk_mb=shape.disk_mb,
    )  # fmt: skip


@dataclass
class _Box:
    """A one-shot sandbox: its bundle, workspace and run container (init waiting)."""

    run_id: str
    bundle: Path
    ws: Path
    container: Container | None = None
    nonce: str = ""
    rootfs: Path | None = None  # the run's own overlay root in an environment
    # A reused sandbox (Sandbox._job): the channel to its init, its jobs' cgroups, how
    # many jobs it has run and made, and its next job (being made, or made).
    channel: agent.Agent | None = None
    jobs: accounting.JobCgroups | None = None
    uses: int = 0
    made: int = 0
    next: asyncio.Task[_Job] | None = None
    stale: list[str] = field(default_factory=list)  # cleared jobs' cgroups, to remove

    def prepare_next(self, limits: Limits, timeout_s: float) -> None:
        """Start making the next job's init (``_make_job``) in the background."""
        self.next = asyncio.ensure_future(_make_job(self, limits, timeout_s))

    async def take_job(self) -> _Job:
        """The next job, once made; raises what its making raised (the sandbox is then
        unusable: the caller discards it)."""
        assert self.next is not None
        task, self.next = self.next, None
        return await task

    def drop_job(self) -> None:
        """Forget a next job never taken (the sandbox is being discarded)."""
        task, self.next = self.next, None
        if task is None:
            return
        if not task.done():
            task.cancel()
        elif not task.cancelled() and task.exception() is None:
            task.result().close()


@dataclass
class _Job:
    """A job's init made ahead of its run, waiting for its program: its name (of its
    directory and cgroup), counters, status nonce, agent exec, and the engine's ends
    of its stdio."""

    name: str
    counters: accounting.CgroupCounters
    nonce: str
    run: agent.AgentExec
    ended: asyncio.Event
    stdin: int
    out_r: int
    err_r: int

    def close(self) -> None:
        for fd in (self.stdin, self.out_r, self.err_r):
            if fd != -1:
                os.close(fd)
        self.stdin = self.out_r = self.err_r = -1


async def _make_job(box: _Box, limits: Limits, timeout_s: float) -> _Job:
    """The next job of ``box``: its directory and its cgroup (the shape's limits), its
    init cloned by the agent into namespaces of its own, moved into the cgroup (in a
    thread: the move waits for an RCU grace period, 10-15 ms on an idle host), its ids
    mapped, released to make its mounts; it then waits for its program."""
    assert box.channel is not None and box.jobs is not None and box.container is not None
    name = f"job{box.made}"
    box.made += 1
    path = box.ws / name
    path.mkdir(mode=0o700)
    os.chown(path, spec.SANDBOX_UID, spec.SANDBOX_GID)
    counters = box.jobs.counters(name)
    nonce = secrets.token_hex(16)
    payload = agent.job_payload(
        nonce=nonce,
        tmpfs=f"mode=1777,uid=0,gid=0,size={limits.disk_mb}m",
        jobdir=f"{spec.WORKSPACE}/{name}",
        masked=spec.MASKED_PATHS,
        readonly=spec.READONLY_PATHS,
    )
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        run = await box.channel.start(payload, (in_r, out_w, err_w))
    except BaseException:
        for fd in (in_w, out_r, err_r):
            os.close(fd)
        raise
    finally:
        for fd in (in_r, out_w, err_w):
            os.close(fd)
    ended = asyncio.Event()
    run.on_end(ended.set)
    job = _Job(name, counters, nonce, run, ended, in_w, out_r, err_r)
    try:
        async with asyncio.timeout(timeout_s):
            await run.started()
        stale, box.stale = box.stale, []
        pid = await asyncio.to_thread(_enter_job, box, name, limits, stale)
        _map_ids(pid)
        os.write(job.stdin, b"g")  # the release (see job_main)
    except BaseException:
        job.close()
        raise
    return job


def _enter_job(box: _Box, name: str, limits: Limits, stale: list[str]) -> int:
    """In a thread, with every making and removal of a job's cgroup: each takes the
    kernel's cgroup mutex, which a move into a cgroup (the other sandbox's next job)
    holds for an RCU grace period, and the event loop waited about 1 ms per run on it.
    Removes the cgroups of the jobs cleared since (``stale``), makes job ``name``'s
    with the run's limits, moves its init in; the init's host pid. Raises OSError
    when a cleared job's cgroup would not go (the sandbox is then discarded)."""
    assert box.jobs is not None and box.container is not None
    for old in stale:
        if not box.jobs.remove(old):
            raise OSError(f"the cgroup of {old} would not go")
    box.jobs.start(name, limits.memory_mb << 20, limits.pids)
    return box.jobs.enter(name, box.container.pid)


@dataclass(frozen=True)
class _Step:
    """One program to release in a container: the compile step or the run step."""

    argv: list[str]
    env: dict[str, str]
    stdin: bytes
    limits: Limits


@dataclass(frozen=True)
class WarmStats:
    """Idle warm sandboxes of one runtime and what they hold (for /metrics)."""

    runtime: str
    idle: int
    memory_bytes: int
    pids: int


def _base_env(environment: EnvironmentRoot | None = None) -> dict[str, str]:
    """The program's environment: fixed, but for what an environment's image sets
    (its PATH, LANG, its own variables); HOME and TMPDIR stay the sandbox's."""
    fixed = {"PATH": spec.PATH, "HOME": spec.WORKSPACE, "LANG": "C.UTF-8", "TMPDIR": "/tmp"}
    if environment is None:  # the host skeleton: its python and pip last (spec.COMPAT_BIN)
        return {**fixed, "PATH": spec.HOST_PATH}
    return {**fixed, **environment.env, "HOME": spec.WORKSPACE, "TMPDIR": "/tmp"}


def in_environment(lang: Language, environment: EnvironmentRoot) -> Language:
    """``lang`` with its programs found in ``environment`` (``/usr/bin/python3`` becomes
    what the environment's PATH gives, e.g. ``/usr/local/bin/python3``); raises
    InvalidSubmission naming the languages the environment has."""

    def resolve(argv: tuple[str, ...]) -> tuple[str, ...]:
        program = argv[0]
        if not program.startswith("/"):
            return argv  # ./main: the compiled program
        found = environment.programs.get(program.rsplit("/", 1)[1])
        if found is None:
            have = sorted(
                name
                for name, needs in LANGUAGE_PROGRAMS.items()
                if all(p in environment.programs for p in needs)
            )
            raise InvalidSubmission(
                f"environment {environment.name!r} has no {lang.name} "
                f"(it has: {', '.join(have) or 'none of the languages'})",
                field="language",
            )
        return (found, *argv[1:])

    return dataclasses.replace(
        lang,
        run=resolve(lang.run),
        compile=resolve(lang.compile) if lang.compile else None,
        version=resolve(lang.version) if lang.version else (),
    )


def _verdict(rt: Runtime, phase: _Phase, limits: Limits) -> Termination:
    """Why the run ended. Memory comes first: a run stopped, killed or failing while its
    memory was held at its limit was stopped by memory, whatever the supervisor saw
    last (see :func:`accounting.at_memory_limit` for the evidence on each host)."""
    status, usage = phase.collector.status, phase.usage
    pinned = accounting.at_memory_limit(usage, limits.memory_mb << 20)
    if phase.reason is Termination.timeout and pinned:
        return Termination.memory_limit
    if phase.reason is not None:
        return phase.reason
    killed = status is None or status.signal is not None
    if usage.oom_kill > 0 and (status is None or status.signal == signals.SIGKILL):
        return Termination.memory_limit
    if pinned and (killed or (status is not None and status.exit_code != 0)):
        return Termination.memory_limit  # an allocation refused, or the sentry killed
    if status is None:
        raise RuntimeFailure("run", None, "the sandbox ended without reporting a status")
    return Termination.exited


def _result(
    termination: Termination,
    phase: _Phase,
    files: workspace.Listing,
    runtime_info: RuntimeInfo,
    limits: Limits,
    *,
    stderr_note: str = "",
) -> Result:
    """The one place a Result is built. Figures are the step's own (for a run: compile
    excluded), comparable with its limits."""
    out, usage = phase.collector, phase.usage
    status = out.status
    if status is None and phase.reason is not None:
        status = ExitStatus(signal=signals.SIGKILL)  # the supervisor killed it
    return Result(
        termination=termination,
        exit_code=status.exit_code if status else None,
        signal=_signal_name(status.signal if status else None),
        stdout=bytes(out.stdout).decode("utf-8", "replace"),
        stderr=bytes(out.stderr).decode("utf-8", "replace") + stderr_note,
        stdout_truncated=out.stdout_truncated,
        stderr_truncated=out.stderr_truncated,
        wall_ms=phase.wall_ms,
        cpu_ms=usage.cpu_ns // 1_000_000,
        peak_memory_bytes=usage.peak_memory_bytes,
        files=files.files,
        files_omitted=files.omitted,
        runtime=runtime_info,
        limits=limits,
        events=_events(usage),
    )


def _events(usage: accounting.Usage) -> Events:
    return Events(
        oom_kill=usage.oom_kill,
        pids_limit=usage.pids_limit,
        memory_limit_hits=usage.memory_limit_hits,
    )


def _signal_name(number: int | None) -> str | None:
    if number is None:
        return None
    try:
        return signals.Signals(number).name
    except ValueError:
        return f"SIG{number}"


def _source_files(request: RunRequest, lang: Language) -> dict[str, str]:
    if request.code is not None and request.files:
        raise InvalidSubmission("give either code or files, not both", field="code")
    if request.code is not None:
        if request.entrypoint and request.entrypoint != lang.file_name:
            return {request.entrypoint: request.code}
        return {lang.file_name: request.code}
    if not request.files:
        raise InvalidSubmission("give code or files", field="code")
    entry = request.entrypoint or lang.file_name
    if entry not in request.files:
        raise InvalidSubmission(f"entrypoint {entry!r} is not among the files", field="entrypoint")
    return dict(request.files)
