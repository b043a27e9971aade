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
import logging
import os
import secrets
import shutil
import signal as signals
import time
import weakref
from collections.abc import Awaitable, Hashable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from crucible.core.config import Settings, get_settings
from crucible.core.errors import InvalidSubmission, RuntimeFailure, SandboxUnavailable
from crucible.core.files import write_atomic
from crucible.engine import accounting, overlay, reaper, runtime, spec, workspace
from crucible.engine.container import Container, job_header
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
            usable=lambda box: box.container is not None and not box.container.exited.is_set(),
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
            )  # fmt: skip
            box = self._pool.take(shape, refill=False) or await self._make(shape)
            try:
                workspace.write_files(box.ws, files)
                entry = request.entrypoint or lang.file_name
                env = {**_base_env(environment), **lang.env}
                if lang.compile is not None:
                    failed = await self._compile(box, lang, entry, env, limits, info, cancel)
                    if failed is not None:
                        return failed
                listed = workspace.list_files(box.ws, exclude=set(), max_files=10_000).files
                argv = [a.replace("{entrypoint}", entry) for a in lang.run] + list(request.args)
                step = _Step(argv, env, request.stdin.encode("utf-8", "surrogateescape"), limits)
                assert box.container is not None
                phase = await self._step(box.container, box.nonce, step, on_output, cancel)
                produced = workspace.list_files(
                    box.ws, exclude={f.path for f in listed}, max_files=self.settings.max_files
                )
                if files_dir is not None:
                    workspace.copy_files(
                        produced, box.ws, files_dir, max_bytes=self.settings.max_file_bytes
                    )
                return _result(_verdict(rt, phase, limits), phase, produced, info, limits)
            finally:
                self._background(self._refill_later(shape))
                # The next run need not wait for this one's tear-down.
                self._background(self._discard(box))

    async def _refill_later(self, shape: _Shape) -> None:
        """Ask for the replacement of a warm sandbox a run took, once the service has
        likely stored and answered its result: made while the program ran (as the pool
        did), the runtime's start competed with the program and its supervisor for the
        CPU. One ?wait request at a time, interleaved with the earlier code: p50
        32.4 → 28.0 ms, p90 39.9 → 34.4 ms (bench/README)."""
        await asyncio.sleep(_REFILL_DELAY_S)
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
            box.container, box.nonce = await self._create(
                box, "r", _shape_limits(shape), shape.runtime
            )
        except BaseException:
            await self._discard(box)
            raise
        return box

    async def _create(
        self, box: _Box, step: str, limits: Limits, runtime_name: RuntimeName
    ) -> tuple[Container, str]:
        """Create container ``<run id>-<step>`` over ``box``'s workspace, init waiting."""
        await self.prepare()  # again: close() may have dropped the assets' view since
        assert self._rootfs is not None and self._init is not None and self._seccomp is not None
        rt = self.get_runtime(runtime_name)
        cid = f"{box.run_id}-{step}"
        nonce = secrets.token_hex(16)
        cgroups_path = f"/{self.settings.prefix}/{cid}"
        config = spec.build_config(
            args=[],  # job mode: the program comes on stdin (init.c)
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
        container = Container(rt, cid, box.bundle / cid, cgroups_path)
        try:
            await container.create(config)
        except BaseException:
            await container.delete()
            raise
        return container, nonce

    async def _discard(self, box: _Box) -> None:
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
        shape = _Shape(runtime_name, limits.memory_mb, limits.pids, limits.cpus, limits.disk_mb)
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
        chunk = self.settings.output_chunk_bytes
        out_r, err_r = container.take_output()
        pumps = [
            asyncio.create_task(pump(out_r, "stdout", collector.feed, chunk)),
            asyncio.create_task(pump(err_r, "stderr", collector.feed, chunk)),
        ]
        try:
            # The cgroup already holds the runtime's own start-up (runc's init is Go):
            # only what is used from here on is the program's CPU time.
            cpu_base = container.counters.cpu_ns()
            await container.start(job, step.stdin)
            started = time.monotonic()
            reason = await self._supervise(limits, started, container, collector, cancel, cpu_base)
            if reason is not None:
                await container.kill()
            wall_ms = int((time.monotonic() - started) * 1000)
            container.discard_stdin()
            # The pipes reach EOF once every process holding them is gone.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*pumps), _DRAIN_S)
            collector.finish()
            if collector.status is not None and collector.status.wall_us is not None:
                wall_ms = collector.status.wall_us // 1000  # the init's own measure
            usage = container.account()
            usage = dataclasses.replace(usage, cpu_ns=max(0, usage.cpu_ns - cpu_base))
            cpu_over = usage.cpu_ns > limits.cpu_s * 1e9
            if reason is None and cpu_over and collector.status is None:
                reason = Termination.timeout
            if reason is None and collector.exceeded.is_set():
                reason = Termination.output_limit
            return _Phase(collector, reason, wall_ms, usage)
        finally:
            for task in pumps:
                task.cancel()

    async def _supervise(
        self,
        limits: Limits,
        started: float,
        container: Container,
        collector: OutputCollector,
        cancel: asyncio.Event,
        cpu_base: int,
    ) -> Termination | None:
        """Wait for the container's end, enforcing the limits; say why it was stopped."""
        deadline = started + limits.timeout_s
        cpu_ns_limit = cpu_base + limits.cpu_s * 1e9
        waiters = [
            asyncio.ensure_future(container.exited.wait()),
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
                if container.exited.is_set():
                    return None
                if collector.exceeded.is_set():
                    return Termination.output_limit
                if time.monotonic() >= deadline or container.counters.cpu_ns() > cpu_ns_limit:
                    return Termination.timeout
        finally:
            for w in waiters:
                w.cancel()


@dataclass(frozen=True)
class _Shape:
    """What a container is created with, and so what a warm one must match."""

    runtime: RuntimeName
    memory_mb: int
    pids: int
    cpus: float
    disk_mb: int
    root: Path | None = None  # an environment's root (the lower layer); None: the host's


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
