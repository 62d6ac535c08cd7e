"""A job whose run cannot write (the disk is full) fails with a clear code, not
`internal_error`, and leaves no artifacts. The full disk is real for the process: a
file-size limit makes every write past 4 MiB fail (EFBIG, as ENOSPC would); the job
store's own files (SQLite and its write-ahead log) stay under it."""

import contextlib
import resource
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from infra.db.models import Artifact, Job
from tests.faults.runner_ctx import runner_context
from worker.runner import run_job

LIMIT = 4 << 20


@contextlib.contextmanager
def small_disk() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def export_a_big_model(model_path: Path, spec: Any, out_dir: Path, **_: Any) -> Any:
    """Stands in for the engine's export step: writes an 8 MiB model file."""
    with (out_dir / "model.onnx").open("wb") as fh:
        for _ in range(128):
            fh.write(bytes(64 << 10))
    raise AssertionError("the write above must fail")


def test_disk_full_fails_the_job_clearly(tmp_path: Path) -> None:
    ctx, job_id = runner_context(tmp_path, export_a_big_model)
    with small_disk():
        outcome = run_job(job_id, ctx)
    assert outcome == "failed"
    with ctx.sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert (job.status, job.error_code, job.attempts) == ("failed", "insufficient_storage", 1)
        assert "disk space" in (job.error_message or "")
        assert session.query(Artifact).filter_by(job_id=job_id).count() == 0
    # The run's scratch directory went with it.
    assert list((ctx.settings.data_dir / "work").iterdir()) == []
