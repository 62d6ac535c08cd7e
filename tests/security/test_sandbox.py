"""The sandbox that untrusted models run in, attacked from inside.

Each test runs hostile code as the sandboxed process would if a model file got code
execution (a pickle, a converter bug, a native parser exploit), and checks from outside
that nothing was read, written or reached: canary secrets in the parent's environment,
canary files outside the scratch directory, a listening socket on loopback, other
processes. Then the parent-side guards: results read back as untrusted files, cancel
kills the sandbox, and the inspector pool bounds how many run and how much memory they
take.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from app.core.errors import TooManyRequests
from app.inspector import Inspector, PoolLimits
from contract import JobSpec
from infra.sandbox import Limits, Sandbox, probe
from tests.aio import run_coroutine
from worker.engine.errors import EngineError, JobCancelled
from worker.sandboxed import SandboxedPipeline, SandboxFailed

CANARY_SECRET = "sk_canary_" + "7" * 24

pytestmark = pytest.mark.skipif(
    probe() is not None, reason=f"!!! SANDBOX UNAVAILABLE, its tests cannot run: {probe()}"
)


@pytest.fixture
def canaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Secrets in the parent's environment and files outside the scratch directory."""
    for name in (
        "SECATEURS_API_KEYS",
        "SECATEURS_DATABASE_URL",
        "SECATEURS_S3_SECRET_ACCESS_KEY",
        "AWS_SECRET_ACCESS_KEY",
    ):
        monkeypatch.setenv(name, f"tenant:{CANARY_SECRET}")
    data = tmp_path / "data"
    data.mkdir()
    secret_file = data / "secateurs.db"
    secret_file.write_text(CANARY_SECRET)
    secret_file.chmod(0o644)  # readable by anyone who can reach it: only the view protects
    data.chmod(0o755)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    yield {
        "file": secret_file,
        "dir": data,
        "port": listener.getsockname()[1],
        "listener": listener,
        "written": tmp_path / "written-by-sandbox",
    }
    listener.close()


def _run(
    code: str, scratch: Path, limits: Limits | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    prepared = Sandbox().prepare(
        ["python", "-c", textwrap.dedent(code)],
        scratch=scratch,
        limits=limits or Limits(memory_bytes=1 << 30, cpu_s=60),
    )
    try:
        return subprocess.run(
            prepared.argv,
            env=prepared.env,
            pass_fds=prepared.pass_fds,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    finally:
        prepared.close()


def _nobody_connected(listener: socket.socket) -> bool:
    try:
        listener.accept()
    except TimeoutError:
        return True
    return False


ATTACK = """
import ctypes, glob, json, os, socket, sys
found = {"env": dict(os.environ), "uid": os.getuid(), "read": {}, "wrote": [],
         "net": [], "pids": sorted(p for p in os.listdir("/proc") if p.isdigit())}
for path in sys.argv[1:-2] + ["/etc/passwd", "/etc/shadow", "/root/.bash_history",
                              "/proc/1/environ"]:
    try:
        found["read"][path] = open(path, errors="replace").read()[:200]
    except OSError:
        pass
for target in [sys.argv[-2], sys.prefix + "/evil.pth", os.path.dirname(os.__file__) + "/x.py",
               "/usr/evil", "/etc/evil", "/tmp/../evil"]:
    try:
        with open(target, "w") as fh:
            fh.write("owned")
        found["wrote"].append(target)
    except OSError:
        pass
for family, address in [(socket.AF_INET, ("127.0.0.1", int(sys.argv[-1]))),
                        (socket.AF_INET6, ("::1", int(sys.argv[-1])))]:
    try:
        socket.create_connection(address, timeout=1)
        found["net"].append(address)
    except OSError:
        pass
libc = ctypes.CDLL(None, use_errno=True)
found["ptrace"] = libc.ptrace(16, 1, 0, 0)  # PTRACE_ATTACH to pid 1
found["unshare"] = libc.unshare(0x10000000)  # a user namespace, to regain privileges
print(json.dumps(found))
"""


def test_hostile_code_reads_writes_and_reaches_nothing(tmp_path: Path, canaries) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    code = ATTACK + ""
    prepared = Sandbox().prepare(
        [
            "python",
            "-c",
            code,
            str(canaries["file"]),
            str(canaries["dir"]),
            str(canaries["written"]),
            str(canaries["port"]),
        ],
        scratch=scratch,
        limits=Limits(memory_bytes=1 << 30, cpu_s=60),
    )
    try:
        done = subprocess.run(
            prepared.argv,
            env=prepared.env,
            pass_fds=prepared.pass_fds,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        prepared.close()
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert CANARY_SECRET not in json.dumps(found)
    assert not any(
        k.startswith(("SECATEURS_", "AWS_")) and k != "SECATEURS_SCRATCH" for k in found["env"]
    )
    assert found["read"] == {}, found["read"]  # no secret file, no system file, no /proc/1
    assert found["wrote"] == [] and not canaries["written"].exists()
    assert found["net"] == [] and _nobody_connected(canaries["listener"])
    assert found["uid"] != 0
    assert found["ptrace"] == -1 and found["unshare"] == -1
    # A PID namespace of its own: only the sandbox's own few processes are visible.
    assert len(found["pids"]) <= 4, found["pids"]


def test_the_scratch_directory_is_the_only_writable_place(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    done = _run(
        """
        import os
        open("/scratch/out.txt", "w").write("result")
        os.makedirs("/scratch/tmp/deep", exist_ok=True)
        print(os.environ["HOME"], os.environ["TMPDIR"], os.getcwd())
    """,
        scratch,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["/scratch", "/scratch/tmp", "/scratch"]
    assert (scratch / "out.txt").read_text() == "result"


def test_memory_cpu_and_process_limits_hold(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    memory = _run(
        """
        blocks = []
        try:
            while True:
                blocks.append(bytearray(64 << 20))
        except MemoryError:
            print(len(blocks) * 64)
    """,
        scratch,
        Limits(memory_bytes=512 << 20, cpu_s=30),
    )
    assert memory.returncode == 0, memory.stderr
    assert int(memory.stdout) < 512  # MiB held when the limit refused the next block
    cpu = _run("while True: pass", scratch, Limits(cpu_s=1))
    assert cpu.returncode != 0
    forks = _run(
        """
        import os
        n = 0
        try:
            for _ in range(200):
                if os.fork() == 0:
                    import time; time.sleep(5); os._exit(0)
                n += 1
        except OSError:
            pass
        print(n)
    """,
        scratch,
        Limits(processes=32, cpu_s=30),
    )
    assert forks.returncode == 0, forks.stderr
    assert int(forks.stdout) < 32


def test_a_jobs_priority_is_lowered(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    run = _run(
        "import os; print(os.getpriority(os.PRIO_PROCESS, 0))",
        scratch,
        Limits(cpu_s=30, niceness=10),
    )
    assert run.returncode == 0, run.stderr
    assert int(run.stdout) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 10)


def _hostile_pipeline(code: str) -> SandboxedPipeline:
    """A pipeline whose sandboxed process runs `code` instead of the engine."""
    return SandboxedPipeline(
        Sandbox(),
        Limits(memory_bytes=1 << 30, cpu_s=60),
        command=("python", "-c", textwrap.dedent(code)),
    )


def _job_dir(tmp_path: Path) -> Path:
    work = tmp_path / "job"
    work.mkdir()
    (work / "model.onnx").write_bytes(b"model bytes")
    return work


def test_a_job_cannot_return_links_to_server_files(tmp_path: Path, canaries) -> None:
    work = _job_dir(tmp_path)
    pipeline = _hostile_pipeline(f"""
        import json, os
        os.symlink({str(canaries["file"])!r}, "/scratch/out/model.onnx")
        json.dump({{"ok": True, "report": None, "artifacts": {{"model.onnx": "model.onnx"}}}},
                  open("/scratch/out/result.json", "w"))
    """)
    with pytest.raises(SandboxFailed):
        pipeline(work / "model.onnx", JobSpec(), work / "out")


def test_a_job_result_is_validated_and_its_code_sanitised(tmp_path: Path) -> None:
    work = _job_dir(tmp_path)
    pipeline = _hostile_pipeline("""
        import json
        json.dump({"ok": False, "code": "'; DROP TABLE jobs; --", "message": "x" * 10000},
                  open("/scratch/out/result.json", "w"))
    """)
    with pytest.raises(EngineError) as err:
        pipeline(work / "model.onnx", JobSpec(), work / "out")
    assert err.value.code == "engine_error" and len(err.value.message) <= 2000


def test_a_job_poisons_no_other_tenants_cache(tmp_path: Path) -> None:
    work = _job_dir(tmp_path)
    cache = tmp_path / "cache" / "tenant-a"
    pipeline = _hostile_pipeline("""
        import json
        json.dump({"k": float("nan"), "neg": -1, "ok": 1.5, "s": "x"},
                  open("/scratch/cache/latency-cpu.json", "w"))
        json.dump({"ok": False, "code": "unsupported_op", "message": "no"},
                  open("/scratch/out/result.json", "w"))
    """)
    with pytest.raises(EngineError):
        pipeline(work / "model.onnx", JobSpec(), work / "out", cache_dir=cache)
    # A failed job keeps nothing; and nothing outside its tenant's directory is touched.
    assert not (tmp_path / "cache" / "latency-cpu.json").exists()


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("import os; os.abort()", "engine_crashed"),
        ("pass", "engine_crashed"),
        ("while True: pass", "resources_exceeded"),
    ],
)
def test_a_crash_a_silent_exit_and_a_limit_are_typed_failures(
    tmp_path: Path, code: str, expected: str
) -> None:
    work = _job_dir(tmp_path)
    pipeline = SandboxedPipeline(Sandbox(), Limits(cpu_s=1), command=("python", "-c", code))
    with pytest.raises(EngineError) as err:
        pipeline(work / "model.onnx", JobSpec(), work / "out")
    assert err.value.code == expected, err.value.message


def test_cancel_kills_a_job_that_never_checks(tmp_path: Path) -> None:
    """A job stuck in native code (here: a busy loop) ends within seconds of a cancel."""
    work = _job_dir(tmp_path)
    pipeline = _hostile_pipeline("""
        import json, sys
        print(json.dumps({"event": "progress", "stage": "analyzing", "overall": 0.05}),
              flush=True)
        while True:
            pass
    """)
    cancel_at = time.monotonic() + 2
    progress: list[tuple[str, float]] = []
    start = time.monotonic()
    with pytest.raises(JobCancelled):
        pipeline(
            work / "model.onnx",
            JobSpec(),
            work / "out",
            on_progress=lambda s, o: progress.append((s, o)),
            should_cancel=lambda: time.monotonic() > cancel_at,
        )
    assert time.monotonic() - cancel_at < 5
    assert progress == [("analyzing", 0.05)]
    assert time.monotonic() - start < 30
    leftover = subprocess.run(["pgrep", "-f", "while True"], capture_output=True, text=True)
    assert str(os.getpid()) not in leftover.stdout  # nothing of the sandbox survives


# --- the inspector pool ----------------------------------------------------------------------

HOG = """
import json, resource, sys, time
blocks = []
try:
    while len(blocks) < 64:
        blocks.append(bytearray(32 << 20))
        time.sleep(0.01)
except MemoryError:
    pass
time.sleep(0.5)
print(json.dumps({"ok": False, "code": "too_large",
                  "message": str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)}))
"""


def _children(pid: int) -> set[int]:
    tasks = Path(f"/proc/{pid}/task").iterdir()
    return {int(c) for task in tasks for c in (task / "children").read_text().split()}


def _tree_rss_bytes(root_pid: int, skip: frozenset[int] = frozenset()) -> int:
    """Resident memory of every descendant of `root_pid` (from /proc), except the
    subtrees of `skip` (children that other tests left running: a browser, a server)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        rss[pid] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    total, stack = 0, [c for c in children.get(root_pid, []) if c not in skip]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def test_three_memory_hogs_stay_within_the_pool_bound(tmp_path: Path) -> None:
    """Three hostile inspections at once: their memory together stays under the bound."""
    bound = 1 << 30
    inspector = Inspector(
        sandbox=Sandbox(),
        scratch_root=tmp_path / "scratch",
        timeout_s=60,
        pool=PoolLimits(concurrency=2, per_tenant=2, memory_total_bytes=bound),
        command=["python", "-c", HOG],
    )
    upload = tmp_path / "upload"
    upload.write_bytes(b"x")
    peak = 0
    done = threading.Event()
    already_running = frozenset(_children(os.getpid()))

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss_bytes(os.getpid(), already_running))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()

    async def three() -> list[Any]:
        return await asyncio.gather(
            *(inspector.model(upload, tenant=f"t{i % 2}") for i in range(3)), return_exceptions=True
        )

    try:
        results = run_coroutine(three())
    finally:
        done.set()
        sampler.join()
    assert all(getattr(r, "code", None) == "too_large" for r in results), results
    assert 0 < peak <= bound, peak


SLEEPER = """
import json, sys, time
time.sleep(float(sys.argv[-3]) if False else 1.0)
print(json.dumps({"ok": False, "code": "invalid_model", "message": str(time.time())}))
"""


def test_one_tenants_burst_leaves_room_for_another(tmp_path: Path) -> None:
    inspector = Inspector(
        sandbox=Sandbox(insecure=True),
        scratch_root=tmp_path / "scratch",
        timeout_s=60,
        command=[sys.executable, "-c", SLEEPER],
        pool=PoolLimits(concurrency=2, per_tenant=1, max_waiting=3),
    )
    upload = tmp_path / "upload"
    upload.write_bytes(b"x")

    async def attack() -> tuple[list[Any], float]:
        burst = [asyncio.create_task(inspector.model(upload, tenant="a")) for _ in range(6)]
        await asyncio.sleep(0.1)
        start = time.monotonic()
        with pytest.raises(Exception) as err:  # noqa: PT011 - the refusal of an inspection
            await inspector.model(upload, tenant="b")
        other = time.monotonic() - start
        assert getattr(err.value, "code", None) == "invalid_model"
        return await asyncio.gather(*burst, return_exceptions=True), other

    results, other_s = run_coroutine(attack())
    # Tenant a may hold one slot; b's upload took the other at once (1 s of work).
    assert other_s < 3, other_s
    refused = [r for r in results if isinstance(r, TooManyRequests)]
    assert len(refused) == 2 and all(r.code == "too_many_uploads" for r in refused)
