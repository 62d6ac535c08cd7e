"""The engine run of one job, in a sandbox, as the runner's pipeline.

`SandboxedPipeline` has `run_pipeline`'s signature, so the runner calls it the same way.
It lays the job out in the job's scratch directory (the inputs the runner fetched, a
`job.json`, a copy of the tenant's latency cache), starts
`python -m worker.engine.runjob` in the sandbox (`infra.sandbox`), relays its progress lines
to `on_progress`, and polls `should_cancel`: a cancelled job's sandbox is killed on the
spot, whatever stage it is in. Once the sandbox is gone, what it left is read back as
untrusted data: the result is validated against the contract, every artifact must be a
regular file directly in the output directory, and the latency cache is merged back only
as finite timings.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import queue
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from contract import JobSpec, Report
from contract.artifacts import ARTIFACT_NAMES, MODEL_ONNX
from contract.stages import STAGES
from infra.sandbox import SCRATCH, Limits, Sandbox, SandboxUnavailable
from worker.engine.errors import EngineError, JobCancelled

log = logging.getLogger(__name__)

RUNJOB_COMMAND = ("python", "-m", "worker.engine.runjob")
OUT_DIR = "out"
CACHE_DIR = "cache"
RESULT_FILE = "result.json"
# What a job may return; anything else the sandbox leaves is ignored.
MAX_RESULT_BYTES = 64 << 20
MAX_CACHE_BYTES = 16 << 20
MAX_LINE_BYTES = 1 << 16
# How often cancellation is checked while the sandbox runs.
POLL_S = 0.25


class SandboxFailed(EngineError):
    """The sandboxed run ended without a usable result (killed, crashed, refused)."""

    code = "engine_crashed"


@dataclass
class SandboxResult:
    """What the runner stores: the validated report and the artifact files."""

    report: Report
    artifacts: dict[str, Path]


class SandboxedPipeline:
    """`run_pipeline` in a sandbox (see the module's docstring)."""

    def __init__(
        self,
        sandbox: Sandbox,
        limits: Limits,
        *,
        poll_s: float = POLL_S,
        command: tuple[str, ...] = RUNJOB_COMMAND,
    ) -> None:
        self.sandbox, self.limits, self.poll_s = sandbox, limits, poll_s
        self.command = list(command)

    def __call__(
        self,
        model_path: Path,
        spec: JobSpec,
        out_dir: Path,
        *,
        dataset_path: Path | None = None,
        arch: str | None = None,
        input_shape: Any = None,
        device: str = "auto",
        cache_dir: Path | None = None,
        on_progress: Callable[[str, float], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> SandboxResult:
        scratch = Path(out_dir).parent
        _lay_out(scratch, model_path, dataset_path, cache_dir)
        job = {
            "spec": spec.model_dump(mode="json"),
            "model": _inside(scratch, model_path),
            "dataset": _inside(scratch, dataset_path) if dataset_path else None,
            "arch": arch,
            "input_shape": list(input_shape) if input_shape else None,
            "device": device,
            "out": OUT_DIR,
            "cache": CACHE_DIR,
        }
        (scratch / "job.json").write_text(json.dumps(job))
        job_file = (SCRATCH if not self.sandbox.insecure else scratch) / "job.json"
        self._run([*self.command, str(job_file)], scratch, on_progress, should_cancel)
        result = _read_result(scratch / OUT_DIR)
        if cache_dir is not None:
            merge_cache(scratch / CACHE_DIR, cache_dir)
        return result

    def _run(
        self,
        argv: list[str],
        scratch: Path,
        on_progress: Callable[[str, float], None] | None,
        should_cancel: Callable[[], bool] | None,
    ) -> None:
        try:
            prepared = self.sandbox.prepare(argv, scratch=scratch, limits=self.limits)
        except SandboxUnavailable as exc:
            raise SandboxFailed(
                f"this worker cannot isolate untrusted models: {exc}", code="sandbox_unavailable"
            ) from exc
        with tempfile.TemporaryFile() as stderr:
            try:
                proc = subprocess.Popen(
                    prepared.argv,
                    env=prepared.env,
                    pass_fds=prepared.pass_fds,
                    cwd=prepared.cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    start_new_session=True,
                )
            finally:
                prepared.close()
            try:
                self._watch(proc, on_progress, should_cancel)
            finally:
                _kill(proc)
            _check_exit(proc, stderr)

    def _watch(
        self,
        proc: subprocess.Popen[bytes],
        on_progress: Callable[[str, float], None] | None,
        should_cancel: Callable[[], bool] | None,
    ) -> None:
        """Relay progress until the process ends; kill it at a cancel."""
        assert proc.stdout is not None
        lines: queue.Queue[bytes | None] = queue.Queue(maxsize=1024)
        reader = threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True)
        reader.start()
        while True:
            try:
                line = lines.get(timeout=self.poll_s)
            except queue.Empty:
                line = b""
            if line is None:
                break
            if line and on_progress is not None:
                _relay(line, on_progress)
            if should_cancel is not None and should_cancel():
                _kill(proc)
                raise JobCancelled()
        proc.wait()
        reader.join(timeout=5)


# --- laying out the scratch directory -------------------------------------------------------


def _lay_out(scratch: Path, model: Path, dataset: Path | None, cache: Path | None) -> None:
    for path in (model, dataset):
        if path is not None and Path(path).parent.resolve() != scratch.resolve():
            raise ValueError(f"{path} is not in the job's scratch directory")
    (scratch / OUT_DIR).mkdir(exist_ok=True)
    copy = scratch / CACHE_DIR
    copy.mkdir(exist_ok=True)
    if cache is not None and cache.is_dir():
        for entry in cache.glob("latency-*.json"):
            if entry.is_file() and not entry.is_symlink():
                shutil.copyfile(entry, copy / entry.name)


def _inside(scratch: Path, path: Path) -> str:
    return str(Path(path).resolve().relative_to(scratch.resolve()))


# --- talking to the process -----------------------------------------------------------------


def _read_lines(stream: IO[bytes], lines: queue.Queue[bytes | None]) -> None:
    try:
        while line := stream.readline(MAX_LINE_BYTES):
            with contextlib.suppress(queue.Full):
                lines.put(line, timeout=1)
    finally:
        lines.put(None)


def _relay(line: bytes, on_progress: Callable[[str, float], None]) -> None:
    try:
        message = json.loads(line)
    except ValueError:
        return
    if not isinstance(message, dict) or message.get("event") != "progress":
        return
    stage, overall = message.get("stage"), message.get("overall")
    if stage in STAGES and isinstance(overall, int | float) and math.isfinite(overall):
        on_progress(stage, min(1.0, max(0.0, float(overall))))


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """The sandbox and everything in it (its PID namespace dies with its first process)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _check_exit(proc: subprocess.Popen[bytes], stderr: IO[bytes]) -> None:
    if proc.returncode == 0:
        return
    stderr.seek(0, os.SEEK_END)
    stderr.seek(max(0, stderr.tell() - 4000))
    log.warning(
        "sandboxed job ended with status %s: %s",
        proc.returncode,
        stderr.read().decode("utf-8", "replace"),
    )
    if proc.returncode in (
        -signal.SIGKILL,
        -signal.SIGXCPU,
        128 + signal.SIGKILL,
        128 + signal.SIGXCPU,
    ):
        raise SandboxFailed(
            "the job's engine process was stopped by a resource limit "
            "(memory or CPU time a job may use)",
            code="resources_exceeded",
        )
    raise SandboxFailed(f"the job's engine process crashed (exit status {proc.returncode})")


# --- reading back what the sandbox left -------------------------------------------------------


def _regular_file(path: Path, limit: int) -> bool:
    """A plain file (no link, device or directory) of at most `limit` bytes."""
    try:
        info = path.lstat()
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_size <= limit


def _read_result(out_dir: Path) -> SandboxResult:
    path = out_dir / RESULT_FILE
    if not _regular_file(path, MAX_RESULT_BYTES):
        raise SandboxFailed("the job's engine process ended without a result")
    try:
        outcome = json.loads(path.read_bytes())
    except ValueError as exc:
        raise SandboxFailed("the job's engine process left an unreadable result") from exc
    if not isinstance(outcome, dict):
        raise SandboxFailed("the job's engine process left an unreadable result")
    if outcome.get("ok") is not True:
        raise EngineError(
            str(outcome.get("message") or "the job failed")[:2000], code=_code(outcome.get("code"))
        )
    try:
        report = Report.model_validate(outcome.get("report"))
    except ValidationError as exc:
        log.warning("sandboxed job returned an invalid report: %s", exc)
        raise SandboxFailed("the job's engine process returned an invalid report") from exc
    return SandboxResult(report, _artifacts(out_dir, outcome.get("artifacts")))


def _code(value: Any) -> str:
    text = str(value or "")
    ok = text.replace("_", "").isalnum() and text[:1].isalpha() and len(text) <= 64
    return text.lower() if ok else "engine_error"


def _artifacts(out_dir: Path, listed: Any) -> dict[str, Path]:
    if not isinstance(listed, dict):
        raise SandboxFailed("the job's engine process listed no artifacts")
    found: dict[str, Path] = {}
    for name, relative in listed.items():
        path = out_dir / str(relative)
        if name not in ARTIFACT_NAMES or path.parent != out_dir or path.name != name:
            raise SandboxFailed(f"the job's engine process returned an unexpected file {name!r}")
        if not _regular_file(path, 1 << 40):
            raise SandboxFailed(f"the job's artifact {name!r} is not a plain file")
        found[name] = path
    if MODEL_ONNX not in found:
        raise SandboxFailed("the job's engine process returned no model.onnx")
    return found


def merge_cache(returned: Path, cache_dir: Path) -> None:
    """Keep the latency timings the job measured: only files of finite, positive numbers,
    written atomically into the tenant's own cache (never another tenant's)."""
    for path in returned.glob("latency-*.json"):
        if not _regular_file(path, MAX_CACHE_BYTES):
            continue
        try:
            table = json.loads(path.read_bytes())
        except ValueError:
            continue
        if not isinstance(table, dict):
            continue
        clean = {
            str(k)[:512]: float(v)
            for k, v in table.items()
            if isinstance(v, int | float) and math.isfinite(v) and v > 0
        }
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".partial")
        with os.fdopen(fd, "w") as fh:
            json.dump(clean, fh)
        os.replace(tmp, cache_dir / path.name)
