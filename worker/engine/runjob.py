"""One job's engine run, as the sandboxed process the worker starts for it.

    python -m worker.engine.runjob JOB_JSON

`JOB_JSON` (in the scratch directory, the only one this process may write) names the
model and dataset files, the spec and where to write. The process cuts itself off the
network (on top of the sandbox's empty network namespace), runs `run_pipeline`, and
speaks to the worker over its standard output, one JSON object a line:

    {"event": "progress", "stage": "pruning", "overall": 0.42}

Its outcome goes to `result.json` beside the outputs: `{"ok": true, "report": {…},
"artifacts": {"model.onnx": "model.onnx", …}}` or `{"ok": false, "code", "message"}`.
It never talks to the database or the artifact store and holds no secret: the worker
does that with what this process leaves in its scratch directory. Cancellation is the
worker's: it kills this process (and all it started) when the job is cancelled.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import IO, Any

from worker.engine.errors import EngineError
from worker.engine.priority import keep_niceness
from worker.engine.sandbox import deny_network

RESULT_FILE = "result.json"
# Progress lines at most this often within a stage (a stage change always goes out).
PROGRESS_INTERVAL_S = 0.2


class _ProgressLine:
    """`on_progress(stage, overall)` written as JSON lines, throttled."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._stage: str | None = None
        self._last = float("-inf")

    def __call__(self, stage: str, overall: float) -> None:
        now = time.monotonic()
        if stage == self._stage and now - self._last < PROGRESS_INTERVAL_S:
            return
        self._stage, self._last = stage, now
        self._out.write(
            json.dumps({"event": "progress", "stage": stage, "overall": float(overall)}) + "\n"
        )
        self._out.flush()


def _device(requested: str) -> str:
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run(job: dict[str, Any], base: Path, progress: IO[str]) -> dict[str, Any]:
    """Run the job described by `job` (paths relative to `base`); the result object."""
    from contract import JobSpec
    from worker.engine.pipeline import run_pipeline

    out_dir = base / job.get("out", "out")
    dataset = job.get("dataset")
    result = run_pipeline(
        base / job["model"],
        JobSpec.model_validate(job["spec"]),
        out_dir,
        dataset_path=base / dataset if dataset else None,
        arch=job.get("arch"),
        input_shape=job.get("input_shape"),
        device=_device(job.get("device", "auto")),
        cache_dir=base / job["cache"] if job.get("cache") else None,
        on_progress=_ProgressLine(progress),
    )
    artifacts = {
        name: str(Path(path).resolve().relative_to(out_dir.resolve()))
        for name, path in result.artifacts.items()
    }
    return {"ok": True, "report": result.report.model_dump(mode="json"), "artifacts": artifacts}


def _failure(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, EngineError):
        return {"ok": False, "code": exc.code, "message": exc.message}
    if isinstance(exc, MemoryError):
        return {
            "ok": False,
            "code": "resources_exceeded",
            "message": "the job needed more memory than a job may use",
        }
    # A bug of ours, whatever the input: say what failed, without data or paths.
    return {
        "ok": False,
        "code": "internal_error",
        "message": f"{type(exc).__name__} in the engine: {_describe(exc)}",
    }


def _describe(exc: BaseException) -> str:
    try:
        from worker.engine.errors import describe_failure  # type: ignore[attr-defined]
    except ImportError:
        return type(exc).__name__
    return str(describe_failure(exc))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m worker.engine.runjob JOB_JSON", file=sys.stderr)
        return 2
    keep_niceness()
    deny_network()
    job_file = Path(args[0])
    # Native libraries may print: keep the real stdout for progress lines alone.
    progress = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    job = json.loads(job_file.read_text())
    base = job_file.parent
    try:
        outcome = run(job, base, progress)
    except BaseException as exc:  # noqa: BLE001 - every end is reported as a result
        traceback.print_exc()
        outcome = _failure(exc)
    out_dir = base / job.get("out", "out")
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = out_dir / (RESULT_FILE + ".partial")
    partial.write_text(json.dumps(outcome))
    partial.replace(out_dir / RESULT_FILE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
