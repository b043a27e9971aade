"""The sandbox engine: code in, :class:`Result` out.

One :class:`Sandbox` per process drives any number of runs concurrently (bounded by
``max_concurrency``). A run is: fresh workspace tmpfs → optional compile container →
run container → counters → cleanup. Each container goes through the runtime's
``create`` / ``start`` / ``kill`` / ``delete`` verbs; its end is observed through a
pidfd on the container's init, and its cgroup is read before ``delete`` removes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import signal as signals
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from crucible.config import Settings, get_settings
from crucible.errors import InvalidSubmission, RuntimeFailure, SandboxUnavailable
from crucible.sandbox import accounting, reaper, runtime, spec, workspace
from crucible.sandbox.languages import LANGUAGES, Language, get_language
from crucible.sandbox.models import (
    Events,
    Limits,
    Result,
    RunRequest,
    RuntimeInfo,
    RuntimeName,
    Termination,
)
from crucible.sandbox.output import ExitStatus, OutputCallback, OutputCollector, pump
from crucible.sandbox.process import run_tool
from crucible.sandbox.runtime import Runtime
from crucible.sandbox.seccomp import compile_bpf
from crucible.sandbox.sweep import owner_token, sweep_leftovers

log = logging.getLogger(__name__)

_POLL_S = 0.05  # how often CPU time, the deadline and cancellation are checked
_KILL_GRACE_S = 2.0  # after `kill`, how long before the host pid is killed directly
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

    ``run`` raises :class:`~crucible.errors.SandboxError` subclasses for platform
    failures and :class:`~crucible.errors.InvalidSubmission` for requests that cannot
    run as given; whatever the program does is reported in the returned Result.
    """

    def __init__(self, settings: Settings | None = None, *, max_concurrency: int | None = None):
        self.settings = settings or get_settings()
        self.state_dir = self.settings.state_dir.resolve()
        self._bundles = self.state_dir / "bundles"
        self._limit = asyncio.Semaphore(max_concurrency or self.settings.max_concurrency)
        self._rootfs: Path | None = None
        self._init: Path | None = None
        self._seccomp: Path | None = None
        self._hidecg: Path | None = None
        # crun 1.8 refuses a hybrid host; it runs with these cgroup2 mounts hidden.
        self._hidden_cgroup2 = accounting.hybrid_cgroup2_mounts()
        self._prepare_lock = asyncio.Lock()

    # -- set-up ---------------------------------------------------------------

    def get_runtime(self, name: RuntimeName) -> Runtime:
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
        mount_points = [m for lang in LANGUAGES.values() for m in lang.host_mounts()]
        self._rootfs = spec.ensure_rootfs(self.state_dir / "rootfs", mount_points)
        self._init = await self._build_static("init.c", "init")
        if self._hidden_cgroup2:
            self._hidecg = await self._build_static("hidecg.c", "hidecg")
        self._seccomp = self._compile_seccomp()

    def _cached(self, name: str, content: bytes) -> Path:
        """``state_dir/<name>-<digest of content>``: the path of a file made once per
        content, written to a temporary name and renamed, so concurrent makers race
        harmlessly."""
        return self.state_dir / f"{name}-{hashlib.sha256(content).hexdigest()[:16]}"

    def _compile_seccomp(self) -> Path:
        """The shipped profile as BPF, compiled once per content (see seccomp.py)."""
        program = compile_bpf(spec.seccomp_profile())
        path = self._cached("seccomp", program).with_suffix(".bpf")
        if not path.exists():
            tmp = path.with_suffix(f".{os.getpid()}.{secrets.token_hex(4)}.tmp")
            tmp.write_bytes(program)
            tmp.rename(path)
        return path

    async def _build_static(self, source_name: str, name: str) -> Path:
        """A static binary from one of the package's C files, built once per content."""
        source = resources.files("crucible.sandbox").joinpath(source_name).read_bytes()
        binary = self._cached(name, source)
        if binary.exists():
            return binary
        suffix = f".{os.getpid()}.{secrets.token_hex(4)}"
        src = binary.with_name(binary.name + suffix + ".c")
        tmp = binary.with_name(binary.name + suffix + ".tmp")
        src.write_bytes(source)
        try:
            done = await run_tool(["gcc", "-static", "-O2", "-o", str(tmp), str(src)], timeout=120)
            if done.returncode != 0:
                raise SandboxUnavailable(f"cannot build {source_name}: {done.stderr[:500]}")
            tmp.rename(binary)
        finally:
            src.unlink(missing_ok=True)
        return binary

    async def sweep(self) -> list[str]:
        """Remove leftovers of crashed supervisors (see :mod:`crucible.sandbox.sweep`)."""
        await self.prepare()
        runtimes = []
        names: tuple[RuntimeName, ...] = ("runc", "crun", "gvisor")
        for name in names:
            try:
                runtimes.append(self.get_runtime(name))
            except SandboxUnavailable:
                continue
        return await sweep_leftovers(self.state_dir, self.settings.prefix, runtimes)

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
        async with self._limit:
            version = await runtime.runtime_version(rt)
            run_id = f"{self.settings.prefix}-{secrets.token_hex(8)}"
            bundle = self._bundles / run_id
            ws = bundle / "workspace"
            bundle.mkdir(parents=True)
            (bundle / "owner").write_text(owner_token() + "\n")
            try:
                workspace.mount_tmpfs(ws, request.limits.disk_mb)
                workspace.write_files(ws, files)
                return await self._run_phases(
                    request, lang, rt, version, run_id, bundle, ws, on_output, cancel, files_dir
                )
            finally:
                workspace.unmount(ws)
                shutil.rmtree(bundle, ignore_errors=True)

    async def _run_phases(
        self,
        request: RunRequest,
        lang: Language,
        rt: Runtime,
        version: str,
        run_id: str,
        bundle: Path,
        ws: Path,
        on_output: OutputCallback | None,
        cancel: asyncio.Event,
        files_dir: Path | None,
    ) -> Result:
        limits = request.limits
        entry = request.entrypoint or lang.file_name
        info = RuntimeInfo(name=rt.name, version=version)
        if lang.compile is not None:
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
            argv = [a.replace("{entrypoint}", entry) for a in lang.compile]
            phase = await self._container(
                rt, f"{run_id}-c", bundle, ws, argv, "", compile_limits, lang, None, cancel
            )
            status = phase.collector.status
            failed = phase.reason is not None or status is None or status.exit_code != 0
            if phase.reason is Termination.cancelled or failed:
                out = phase.collector
                termination = (
                    Termination.cancelled
                    if phase.reason is Termination.cancelled
                    else Termination.compile_error
                )
                stderr = bytes(out.stderr).decode("utf-8", "replace")
                if phase.reason is Termination.timeout:
                    stderr += (
                        f"\n[crucible] compilation stopped after {compile_limits.timeout_s:g}s\n"
                    )
                return Result(
                    termination=termination,
                    exit_code=status.exit_code if status else None,
                    signal=_signal_name(status.signal if status else None),
                    stdout=bytes(out.stdout).decode("utf-8", "replace"),
                    stderr=stderr,
                    stdout_truncated=out.stdout_truncated,
                    stderr_truncated=out.stderr_truncated,
                    wall_ms=phase.wall_ms,
                    cpu_ms=phase.usage.cpu_ns // 1_000_000,
                    peak_memory_bytes=phase.usage.peak_memory_bytes,
                    files=[],
                    runtime=info,
                    limits=limits,
                    events=_events(phase.usage),
                )
        before = {f.path for f in workspace.list_files(ws, exclude=set(), max_files=10_000)}
        argv = [a.replace("{entrypoint}", entry) for a in lang.run] + list(request.args)
        phase = await self._container(
            rt, f"{run_id}-r", bundle, ws, argv, request.stdin, limits, lang, on_output, cancel
        )
        produced = workspace.list_files(ws, exclude=before, max_files=self.settings.max_files)
        if files_dir is not None:
            workspace.copy_files(ws, produced, files_dir, max_bytes=self.settings.max_file_bytes)
        status = phase.collector.status
        if status is None and phase.reason is not None:
            status = ExitStatus(signal=signals.SIGKILL)  # the supervisor killed it
        usage = phase.usage
        if phase.reason is Termination.timeout and _stopped_by_memory(rt, usage, limits):
            termination = Termination.memory_limit
        elif phase.reason is not None:
            termination = phase.reason
        elif usage.oom_kill > 0 and (status is None or status.signal == signals.SIGKILL):
            termination = Termination.memory_limit
        elif status is None:
            raise RuntimeFailure("run", None, "the sandbox ended without reporting a status")
        else:
            termination = Termination.exited
        out = phase.collector
        return Result(
            termination=termination,
            exit_code=status.exit_code if status else None,
            signal=_signal_name(status.signal if status else None),
            stdout=bytes(out.stdout).decode("utf-8", "replace"),
            stderr=bytes(out.stderr).decode("utf-8", "replace"),
            stdout_truncated=out.stdout_truncated,
            stderr_truncated=out.stderr_truncated,
            # The run step's own figures, comparable with its limits (compile excluded).
            wall_ms=phase.wall_ms,
            cpu_ms=usage.cpu_ns // 1_000_000,
            peak_memory_bytes=usage.peak_memory_bytes,
            files=produced,
            runtime=info,
            limits=limits,
            events=_events(usage),
        )

    async def _container(
        self,
        rt: Runtime,
        cid: str,
        bundle: Path,
        ws: Path,
        argv: list[str],
        stdin: str,
        limits: Limits,
        lang: Language,
        on_output: OutputCallback | None,
        cancel: asyncio.Event,
    ) -> _Phase:
        assert self._rootfs is not None and self._init is not None and self._seccomp is not None
        nonce = secrets.token_hex(16)
        env = {
            "PATH": spec.PATH,
            "HOME": spec.WORKSPACE,
            "LANG": "C.UTF-8",
            "TMPDIR": "/tmp",
            **lang.env,
            "CRUCIBLE_STATUS_NONCE": nonce,
        }
        cgroups_path = f"/{self.settings.prefix}/{cid}"
        config = spec.build_config(
            args=argv,
            env=env,
            limits=limits,
            rootfs=self._rootfs,
            workspace=ws,
            init_binary=self._init,
            seccomp_bpf=self._seccomp,
            cgroups_path=cgroups_path,
            extra_mounts=lang.host_mounts(),
            gvisor=rt.name == "gvisor",
        )
        cbundle = bundle / cid
        cbundle.mkdir()
        (cbundle / "config.json").write_text(json.dumps(config))
        stdin_path = cbundle / "stdin"
        stdin_path.write_bytes(stdin.encode("utf-8", "surrogateescape"))
        collector = OutputCollector(cap=limits.output_bytes, nonce=nonce, on_output=on_output)
        counters = accounting.CgroupCounters(cgroups_path)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        stdin_fd = os.open(stdin_path, os.O_RDONLY)
        pidfd = -1
        pumps: list[asyncio.Task[None]] = []
        created = False
        helpers: list[int] = []
        pid = -1
        chunk = self.settings.output_chunk_bytes
        try:
            try:
                await runtime.runtime_run_detached(
                    rt, cid, cbundle, cbundle / "pid", (stdin_fd, out_w, err_w)
                )
                started = time.monotonic()
                created = True
            except RuntimeFailure as exc:
                created = True  # a half-created container still needs deleting
                detail = _drain(err_r, err_w)
                err_r = err_w = -1
                raise RuntimeFailure("run", exc.returncode, detail) from exc
            finally:
                os.close(stdin_fd)
                os.close(out_w)
                if err_w != -1:
                    os.close(err_w)
            if rt.name == "gvisor":
                helpers = reaper.runtime_children(cid)
            pumps = [
                asyncio.create_task(pump(out_r, "stdout", collector, chunk)),
                asyncio.create_task(pump(err_r, "stderr", collector, chunk)),
            ]
            out_r = err_r = -1
            pid = int((cbundle / "pid").read_text().strip())
            reaper.own(pid)
            # A pidfd works on a zombie too: a program that already ended (it is our
            # child: subreaper) makes it readable at once.
            exited = asyncio.Event()
            loop = asyncio.get_running_loop()
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                # Already exited and reaped: a concurrent gVisor run's reap_orphans()
                # may collect our zombie before own() above (gVisor's sandbox is also
                # called "exe"). Its status is in the trailer, so nothing is lost.
                exited.set()
            else:
                loop.add_reader(pidfd, exited.set)
            reason = await self._supervise(limits, started, exited, collector, counters, cancel)
            if reason is not None:
                await self._kill(rt, cid, pidfd, exited)
            wall_ms = int((time.monotonic() - started) * 1000)
            if pidfd != -1:
                loop.remove_reader(pidfd)
            reaper.reap(pid)
            # The pipes reach EOF once every process holding them is gone.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*pumps), _DRAIN_S)
            collector.finish()
            if collector.status is not None and collector.status.wall_us is not None:
                wall_ms = collector.status.wall_us // 1000  # the init's own measure
            usage = counters.read()
            cpu_over = usage.cpu_ns > limits.cpu_s * 1e9
            if reason is None and cpu_over and collector.status is None:
                reason = Termination.timeout
            if reason is None and collector.exceeded.is_set():
                reason = Termination.output_limit
            return _Phase(collector, reason, wall_ms, usage)
        finally:
            for task in pumps:
                task.cancel()
            for fd in (out_r, err_r, pidfd):
                if fd != -1:
                    with contextlib.suppress(OSError):
                        if fd == pidfd:
                            asyncio.get_running_loop().remove_reader(fd)
                        os.close(fd)
            if pid != -1:
                reaper.reap(pid)
                reaper.disown(pid)
            if created:
                # runsc delete waits until its sandbox and gofer are gone: reap them.
                if rt.name == "gvisor":  # runc and crun leave no orphans to scan for
                    await reaper.reap_all(helpers)
                    reaper.reap_orphans()
                await runtime.runtime_delete(rt, cid)
            shutil.rmtree(cbundle, ignore_errors=True)

    async def _supervise(
        self,
        limits: Limits,
        started: float,
        exited: asyncio.Event,
        collector: OutputCollector,
        counters: accounting.CgroupCounters,
        cancel: asyncio.Event,
    ) -> Termination | None:
        """Wait for the container's end, enforcing the limits; say why it was stopped."""
        deadline = started + limits.timeout_s
        cpu_ns_limit = limits.cpu_s * 1e9
        waiters = [
            asyncio.ensure_future(exited.wait()),
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
                if exited.is_set():
                    return None
                if collector.exceeded.is_set():
                    return Termination.output_limit
                if time.monotonic() >= deadline or counters.cpu_ns() > cpu_ns_limit:
                    return Termination.timeout
        finally:
            for w in waiters:
                w.cancel()

    async def _kill(self, rt: Runtime, cid: str, pidfd: int, exited: asyncio.Event) -> None:
        """Kill the container; fall back to SIGKILL on the host pid if the runtime is slow."""
        if exited.is_set():
            return
        with contextlib.suppress(RuntimeFailure):
            await asyncio.wait_for(runtime.runtime_kill(rt, cid), _KILL_GRACE_S)
        try:
            await asyncio.wait_for(exited.wait(), _KILL_GRACE_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                signals.pidfd_send_signal(pidfd, signals.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(exited.wait(), _KILL_GRACE_S)


def _drain(read_fd: int, write_fd: int) -> str:
    """What the runtime wrote on the run's stderr before failing (its error message)."""
    os.close(write_fd)
    os.set_blocking(read_fd, False)
    try:
        return os.read(read_fd, 4096).decode("utf-8", "replace")
    except BlockingIOError:
        return ""
    finally:
        os.close(read_fd)


def _events(usage: accounting.Usage) -> Events:
    return Events(
        oom_kill=usage.oom_kill,
        pids_limit=usage.pids_limit,
        memory_limit_hits=usage.memory_limit_hits,
    )


def _stopped_by_memory(rt: Runtime, usage: accounting.Usage, limits: Limits) -> bool:
    """A gVisor run that reached its time limit while pinned at its memory limit.

    gVisor's sentry holds the program's memory itself: at the cgroup's ceiling it is
    not OOM-killed, it reclaims and thrashes until the CPU or wall limit stops it
    (seen: 256 MB limit, peak exactly 256 MB, 10 s of CPU, oom_kill 0). The cgroup's
    own count of charges that hit the limit, with the peak at the limit, is the
    evidence. Under runc and crun the OOM killer fires and is counted instead.
    """
    limit = limits.memory_mb << 20
    return (
        rt.name == "gvisor"
        and usage.memory_limit_hits > 0
        and usage.peak_memory_bytes >= limit - (4 << 20)
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
