"""Unit tests of the sandbox engine's pure parts (no runtime needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from crucible.core.config import Settings
from crucible.core.errors import InvalidSubmission
from crucible.domain.limits import resolve_limits
from crucible.engine import accounting, spec
from crucible.engine.languages import LANGUAGES, get_language
from crucible.engine.output import OutputCollector
from crucible.engine.seccomp import compile_bpf
from crucible.engine.workspace import safe_relative

NONCE = "ab" * 16


def trailer(kind: str, number: int, wall_us: int = 1234) -> bytes:
    return f"\x1ecrucible-status:{NONCE}:{kind}:{number}:{wall_us}\n".encode()


class TestOutputCollector:
    def test_trailer_is_cut_out_and_parsed(self) -> None:
        seen: list[tuple[str, bytes]] = []
        c = OutputCollector(cap=1000, nonce=NONCE, on_output=lambda s, d: seen.append((s, d)))
        c.feed("stderr", b"warning\n" + trailer("signal", 11))
        c.finish()
        assert bytes(c.stderr) == b"warning\n"
        assert c.status is not None and (c.status.signal, c.status.exit_code) == (11, None)
        assert c.status.wall_us == 1234
        assert seen == [("stderr", b"warning\n")]

    def test_trailer_split_across_reads(self) -> None:
        c = OutputCollector(cap=1000, nonce=NONCE)
        whole = b"tail" + trailer("exit", 3)
        for i in range(len(whole)):
            c.feed("stderr", whole[i : i + 1])
        c.finish()
        assert bytes(c.stderr) == b"tail"
        assert c.status is not None and c.status.exit_code == 3

    def test_forged_trailer_with_wrong_nonce_is_output(self) -> None:
        c = OutputCollector(cap=1000, nonce=NONCE)
        forged = b"\x1ecrucible-status:" + b"00" * 16 + b":exit:0:1\n"
        c.feed("stderr", forged)
        c.finish()
        assert c.status is None
        assert bytes(c.stderr) == forged

    def test_cap_counts_both_streams_and_flags_truncation(self) -> None:
        c = OutputCollector(cap=10, nonce=NONCE)
        c.feed("stdout", b"123456")
        assert not c.exceeded.is_set()
        c.feed("stderr", b"abcdef")
        c.finish()
        assert bytes(c.stdout) == b"123456" and bytes(c.stderr) == b"abcd"
        assert c.stderr_truncated and not c.stdout_truncated
        assert c.exceeded.is_set()

    def test_stdout_is_never_searched_for_a_trailer(self) -> None:
        c = OutputCollector(cap=1000, nonce=NONCE)
        c.feed("stdout", trailer("exit", 0))
        assert c.status is None and bytes(c.stdout) == trailer("exit", 0)


class TestAccounting:
    def test_v1_layout(self, tmp_path: Path) -> None:
        for ctrl in ("cpuacct", "memory", "pids"):
            (tmp_path / ctrl / "crucible" / "x").mkdir(parents=True)
        base = "crucible/x"
        (tmp_path / "cpuacct" / base / "cpuacct.usage").write_text("2500000000\n")
        (tmp_path / "memory" / base / "memory.max_usage_in_bytes").write_text("4096\n")
        (tmp_path / "memory" / base / "memory.oom_control").write_text(
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"
        )
        (tmp_path / "memory" / base / "memory.failcnt").write_text("5\n")
        (tmp_path / "pids" / base / "pids.events").write_text("max 7\n")
        usage = accounting.CgroupCounters("/crucible/x", root=tmp_path).read()
        assert usage == accounting.Usage(
            cpu_ns=2_500_000_000, peak_memory_bytes=4096, oom_kill=2, pids_limit=7,
            memory_limit_hits=5,
        )  # fmt: skip

    def test_v2_layout(self, tmp_path: Path) -> None:
        (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
        d = tmp_path / "crucible" / "x"
        d.mkdir(parents=True)
        (d / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n")
        (d / "memory.peak").write_text("8192\n")
        (d / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
        (d / "pids.events").write_text("max 4\n")
        counters = accounting.CgroupCounters("/crucible/x", root=tmp_path)
        assert counters.v2
        assert counters.read() == accounting.Usage(1_500_000, 8192, 1, 4, memory_limit_hits=3)

    def test_v2_without_memory_peak_falls_back_to_current(self, tmp_path: Path) -> None:
        (tmp_path / "cgroup.controllers").write_text("memory\n")
        d = tmp_path / "c"
        d.mkdir()
        (d / "memory.current").write_text("100\n")
        assert accounting.CgroupCounters("/c", root=tmp_path).read().peak_memory_bytes == 100

    def test_missing_cgroup_reads_zero(self, tmp_path: Path) -> None:
        assert accounting.CgroupCounters("/gone", root=tmp_path).read() == accounting.Usage()


class TestJobCgroups:
    """The files a reused sandbox's job cgroups are made of, on both layouts (the
    kernel's side: tests/security/test_reuse.py, on this host's layout). A plain
    directory has none of the files the kernel makes in a cgroup: writes create them."""

    @pytest.fixture(autouse=True)
    def _plain_files(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(
            accounting, "write_text", lambda path, text: Path(path).write_text(text)
        )

    def test_v1_limits_in_each_hierarchy_and_the_wrapper_moved(self, tmp_path: Path) -> None:
        for c in ("memory", "cpuacct", "pids"):
            (tmp_path / c / "p" / "box").mkdir(parents=True)
        (tmp_path / "memory" / "p" / "box" / "cgroup.procs").write_text("10\n42\n")
        jobs = accounting.JobCgroups("/p/box", root=tmp_path)
        jobs.adopt(10)  # nothing to do on v1
        counters = jobs.start("job0", 64 << 20, 32)
        job = {c: tmp_path / c / "p" / "box" / "job0" for c in ("memory", "cpuacct", "pids")}
        assert (job["memory"] / "memory.limit_in_bytes").read_text() == str(64 << 20)
        assert (job["pids"] / "pids.max").read_text() == "32"
        assert not (job["cpuacct"] / "pids.max").exists()
        assert counters.path == "/p/box/job0"
        assert jobs.enter("job0", 10) == 42
        assert all((d / "cgroup.procs").read_text() == "42" for d in job.values())
        for d in job.values():
            for f in d.iterdir():
                f.unlink()
        assert jobs.remove("job0") and not any(d.exists() for d in job.values())

    def test_v2_init_in_a_leaf_controllers_to_children(self, tmp_path: Path) -> None:
        (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
        box = tmp_path / "p" / "box"
        box.mkdir(parents=True)
        jobs = accounting.JobCgroups("/p/box", root=tmp_path)
        jobs.adopt(10)
        assert (box / "init" / "cgroup.procs").read_text() == "10"
        assert (box / "cgroup.subtree_control").read_text() == "+memory +pids"
        jobs.start("job0", 1 << 20, 8)
        assert (box / "job0" / "memory.max").read_text() == str(1 << 20)
        assert (box / "job0" / "memory.swap.max").read_text() == "0"
        assert (box / "job0" / "pids.max").read_text() == "8"
        (box / "init" / "cgroup.procs").write_text("10\n77\n")
        assert jobs.enter("job0", 10) == 77

    def test_entering_refuses_anything_but_one_process(self, tmp_path: Path) -> None:
        (tmp_path / "cgroup.controllers").write_text("memory pids\n")
        (tmp_path / "b").mkdir()
        jobs = accounting.JobCgroups("/b", root=tmp_path)
        jobs.adopt(1)
        jobs.start("job0", 1 << 20, 8)
        for procs in ("1\n", "1\n5\n6\n"):
            (tmp_path / "b" / "init" / "cgroup.procs").write_text(procs)
            with pytest.raises(OSError, match="expected the job's init"):
                jobs.enter("job0", 1)


class TestSpec:
    def config(self, tmp_path: Path, gvisor: bool = False) -> dict:  # type: ignore[type-arg]
        limits = resolve_limits({"memory_mb": 128, "pids": 32, "cpus": 1.5}, Settings())
        rootfs = spec.ensure_rootfs(tmp_path / "rootfs")
        return spec.build_config(
            args=["/usr/bin/python3", "main.py"],
            env={"PATH": spec.PATH},
            limits=limits,
            rootfs=rootfs,
            workspace=tmp_path / "ws",
            init_binary=tmp_path / "init",
            seccomp_bpf=tmp_path / "filter.bpf",
            cgroups_path="/crucible/x",
            gvisor=gvisor,
        )

    def test_identity_and_privileges(self, tmp_path: Path) -> None:
        c = self.config(tmp_path)
        p = c["process"]
        assert p["user"] == {"uid": 65534, "gid": 65534, "additionalGids": []}
        assert all(v == [] for v in p["capabilities"].values())
        assert p["noNewPrivileges"] is True
        assert p["args"][0] == spec.INIT_PATH
        assert c["root"]["readonly"] is True

    def test_namespaces_limits_and_masks(self, tmp_path: Path) -> None:
        c = self.config(tmp_path)
        ns = {n["type"] for n in c["linux"]["namespaces"]}
        assert {"pid", "network", "ipc", "uts", "mount"} <= ns
        assert all("path" not in n for n in c["linux"]["namespaces"]), "must be new namespaces"
        res = c["linux"]["resources"]
        assert res["memory"] == {"limit": 128 << 20, "swap": 128 << 20}
        assert res["pids"] == {"limit": 32}
        assert res["cpu"] == {"quota": 150_000, "period": 100_000}
        assert "/proc/kcore" in c["linux"]["maskedPaths"]
        assert "/proc/sys" in c["linux"]["readonlyPaths"]
        # The filter is precompiled and installed by the init, not compiled by runc.
        assert "seccomp" not in c["linux"]
        bpf = {m["destination"]: m for m in c["mounts"]}[spec.SECCOMP_PATH]
        assert bpf["source"].endswith("filter.bpf") and "ro" in bpf["options"]

    def test_mounts_are_read_only_except_the_workspace(self, tmp_path: Path) -> None:
        mounts = {m["destination"]: m for m in self.config(tmp_path)["mounts"]}
        assert "ro" in mounts["/usr"]["options"]
        assert "rw" in mounts["/workspace"]["options"]
        assert "size=64m" in mounts["/tmp"]["options"]
        assert all("nosuid" in m["options"] for d, m in mounts.items() if m["type"] == "bind")
        assert not any(d.startswith(("/root", "/home", "/var", "/sys")) for d in mounts)

    def test_the_skeleton_names_python_and_pip(self, tmp_path: Path) -> None:
        root = spec.ensure_rootfs(tmp_path / "rootfs")
        bin_dir = root / spec.COMPAT_BIN.lstrip("/")
        (bin_dir / "pip").unlink()
        (bin_dir / "pip").symlink_to("/elsewhere")  # a stale link is replaced
        spec.ensure_rootfs(root)  # idempotent
        links = {p.name: str(p.readlink()) for p in bin_dir.iterdir()}
        assert links == {"python": "/usr/bin/python3", "pip": "/usr/bin/pip3"}
        assert (root / "etc/pip.conf").read_text() == spec.PIP_CONF
        assert spec.HOST_PATH.endswith(f":{spec.COMPAT_BIN}")  # last: the host's win

    def test_gvisor_gets_sentry_headroom_and_nproc(self, tmp_path: Path) -> None:
        c = self.config(tmp_path, gvisor=True)
        assert c["linux"]["resources"]["pids"]["limit"] == 32 + spec.GVISOR_PIDS_OVERHEAD
        nproc = [r for r in c["process"]["rlimits"] if r["type"] == "RLIMIT_NPROC"]
        assert nproc == [{"type": "RLIMIT_NPROC", "hard": 32, "soft": 32}]

    def test_seccomp_denies_escape_syscalls(self) -> None:
        allowed = {
            name
            for rule in spec.seccomp_profile()["syscalls"]
            if rule["action"] == "SCMP_ACT_ALLOW" and not rule.get("args")
            for name in rule["names"]
        }
        for name in ("mount", "ptrace", "unshare", "setns", "bpf", "init_module", "kexec_load"):
            assert name not in allowed, name
        assert {"read", "write", "execve", "exit_group"} <= allowed


def test_profile_compiles_to_bpf() -> None:
    program = compile_bpf(spec.seccomp_profile())
    assert len(program) % 8 == 0 and 100 < len(program) // 8 <= 4096
    # Deterministic: the same profile gives the same filter (it is cached by hash).
    assert compile_bpf(spec.seccomp_profile()) == program
    looser = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []}
    assert compile_bpf(looser) != program
    with pytest.raises(ValueError, match="unsupported seccomp action"):
        compile_bpf({"defaultAction": "SCMP_ACT_KILL", "syscalls": []})


class TestInputs:
    def test_limits_defaults_and_ranges(self) -> None:
        settings = Settings()
        limits = resolve_limits({"timeout_s": 2}, settings)
        assert limits.timeout_s == 2 and limits.memory_mb == settings.limits.memory_mb[0]
        with pytest.raises(
            InvalidSubmission, match=r"limits.memory_mb must be between 16 and 4096"
        ) as exc:
            resolve_limits({"memory_mb": 5000}, settings)
        assert exc.value.field == "limits.memory_mb"
        with pytest.raises(InvalidSubmission, match="unknown limit"):
            resolve_limits({"gpus": 1}, settings)

    @pytest.mark.parametrize("path", ["../x.py", "/etc/passwd", "a/../../b", "", "a\x00b"])
    def test_unsafe_paths_rejected(self, path: str) -> None:
        with pytest.raises(InvalidSubmission):
            safe_relative(path)

    def test_safe_paths_accepted(self) -> None:
        assert str(safe_relative("pkg/mod.py")) == "pkg/mod.py"

    def test_languages_are_data(self) -> None:
        assert {"python", "javascript", "bash", "c", "cpp", "java"} <= set(LANGUAGES)
        for lang in LANGUAGES.values():
            assert lang.run and lang.file_name
            assert (lang.compile is None) == (lang.name in {"python", "javascript", "bash"})
        with pytest.raises(InvalidSubmission, match="supported: bash, c, cpp, java"):
            get_language("cobol")


# The three cgroup layouts, as /proc/self/mountinfo shows them (trimmed to the fields
# that matter: mount point is the fifth field, the type follows " - ").
_V1 = (
    "30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n"
    "31 30 0:27 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n"
)
_HYBRID = _V1 + "32 30 0:28 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n"
_V2 = "30 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev - cgroup2 cgroup2 rw,nsdelegate\n"


@pytest.mark.parametrize(
    ("mountinfo", "hidden"),
    [(_V1, []), (_HYBRID, ["/sys/fs/cgroup/unified"]), (_V2, [])],
    ids=["v1", "hybrid", "v2"],
)
def test_only_a_hybrid_host_hides_its_cgroup2_mount_from_crun(
    mountinfo: str, hidden: list[str]
) -> None:
    assert accounting.hybrid_cgroup2_mounts(mountinfo) == hidden


def test_crun_runs_under_the_wrapper_only_when_given_one(tmp_path: Path) -> None:
    from crucible.engine.runtime import Runtime

    plain = Runtime("crun", "/usr/bin/crun", tmp_path)
    assert plain.argv == ["/usr/bin/crun", "--root", str(tmp_path)]
    wrapped = Runtime(
        "crun", "/usr/bin/crun", tmp_path, wrapper=("/w", "/sys/fs/cgroup/unified", "--")
    )
    assert wrapped.argv[:4] == ["/w", "/sys/fs/cgroup/unified", "--", "/usr/bin/crun"]
    gvisor = Runtime("gvisor", "/usr/bin/runsc", tmp_path)
    assert "--platform=ptrace" in gvisor.argv and "--network=none" in gvisor.argv


MiB = 1 << 20
_MEMORY_CASES = [
    # (supervisor's reason, exit code, signal, usage, verdict)
    # Thrashing at the limit until the clock ran out, whatever counted (seen under
    # gVisor and under crun on a loaded host: no kill, no failcnt, peak = limit + 4 KiB).
    ("timeout", None, None, accounting.Usage(peak_memory_bytes=256 * MiB + 4096), "memory_limit"),
    (
        "timeout",
        None,
        None,
        accounting.Usage(peak_memory_bytes=256 * MiB - (200 << 10)),
        "memory_limit",
    ),
    # Ran long under its limit: a timeout, even with some reclaim counted.
    (
        "timeout",
        None,
        None,
        accounting.Usage(peak_memory_bytes=200 * MiB, memory_limit_hits=3),
        "timeout",
    ),
    ("timeout", None, None, accounting.Usage(peak_memory_bytes=254 * MiB), "timeout"),
    # The kernel's OOM killer, counted.
    (None, None, 9, accounting.Usage(peak_memory_bytes=256 * MiB, oom_kill=1), "memory_limit"),
    # The sentry itself killed: no status from the init, the OOM kill counted.
    (None, None, None, accounting.Usage(peak_memory_bytes=256 * MiB, oom_kill=1), "memory_limit"),
    # An allocation refused at the limit (MemoryError, a JS heap abort).
    (None, 1, None, accounting.Usage(peak_memory_bytes=256 * MiB), "memory_limit"),
    (None, None, 6, accounting.Usage(peak_memory_bytes=256 * MiB), "memory_limit"),
    # A program that coped with a refused allocation and succeeded ended by itself.
    (None, 0, None, accounting.Usage(peak_memory_bytes=256 * MiB), "exited"),
    (None, 1, None, accounting.Usage(peak_memory_bytes=10 * MiB), "exited"),
    # The output cap and cancellation are what the supervisor saw, not memory.
    ("output_limit", None, None, accounting.Usage(peak_memory_bytes=10 * MiB), "output_limit"),
]


@pytest.mark.parametrize(("reason", "code", "sig", "usage", "expected"), _MEMORY_CASES)
def test_the_memory_verdict_is_decided_from_evidence_every_host_has(
    tmp_path: Path,
    reason: str | None,
    code: int | None,
    sig: int | None,
    usage: accounting.Usage,
    expected: str,
) -> None:
    from crucible.engine.models import Termination
    from crucible.engine.output import ExitStatus
    from crucible.engine.runtime import Runtime
    from crucible.engine.sandbox import _Phase, _verdict

    lim = resolve_limits({"memory_mb": 256}, Settings())
    collector = OutputCollector(cap=100, nonce=NONCE)
    if code is not None or sig is not None:
        collector.status = ExitStatus(exit_code=code, signal=sig)
    phase = _Phase(collector, Termination(reason) if reason else None, 10, usage)
    for name in ("runc", "crun", "gvisor"):
        rt = Runtime(name, f"/usr/bin/{name}", tmp_path)  # type: ignore[arg-type]
        assert _verdict(rt, phase, lim).value == expected, name


def test_at_memory_limit_needs_a_limit_and_evidence() -> None:
    assert accounting.at_memory_limit(accounting.Usage(oom_kill=1), 64 * MiB)
    assert not accounting.at_memory_limit(accounting.Usage(peak_memory_bytes=60 * MiB), 64 * MiB)
    assert not accounting.at_memory_limit(accounting.Usage(peak_memory_bytes=60 * MiB), 0)


def test_a_file_name_in_any_bytes_is_valid_json_and_kept_exactly() -> None:
    import base64

    from crucible.engine.models import FileInfo

    info = FileInfo.of(b"d\xc3\xa9j\xe0/bad\xff.txt", 3)
    assert info.path == "déj\\xe0/bad\\xff.txt"
    assert base64.b64decode(info.path_b64 or "") == b"d\xc3\xa9j\xe0/bad\xff.txt"
    assert FileInfo.of("ok/é.txt".encode(), 1).path_b64 is None
    # A record stored before names were escaped (a lone surrogate) is mended on the way in.
    old = FileInfo.model_validate({"path": "bad\udcff.txt", "size": 1})
    assert old.path == "bad\\xff.txt" and old.path_b64 == "YmFk/y50eHQ="
    assert '"bad\\\\xff.txt"' in old.model_dump_json()
