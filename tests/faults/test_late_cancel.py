"""A cancel that lands in a stage without cancel checks of its own (the benchmark) still
ends the job `cancelled`, with no artifacts stored, instead of `succeeded`."""

from pathlib import Path
from typing import Any

from infra.db.models import Artifact, Job
from tests.faults.runner_ctx import runner_context
from tests.worker.conftest import FakeResult, tiny_report
from worker.runner import run_job


def test_cancel_during_an_unchecked_stage(tmp_path: Path) -> None:
    ctx = None

    def benchmark_ignoring_cancels(
        model_path: Path, spec: Any, out_dir: Path, **kw: Any
    ) -> FakeResult:
        kw["on_progress"]("benchmarking", 0.9)
        # The client cancels now; this stage never looks at should_cancel.
        with ctx.sessions() as session:
            session.get(Job, job_id).cancel_requested = True
            session.commit()
        (out_dir / "model.onnx").write_bytes(b"pruned")
        return FakeResult(tiny_report(), {"model.onnx": out_dir / "model.onnx"})

    ctx, job_id = runner_context(tmp_path, benchmark_ignoring_cancels)
    assert run_job(job_id, ctx) == "cancelled"
    with ctx.sessions() as session:
        job = session.get(Job, job_id)
        assert (job.status, job.error_code, job.report) == ("cancelled", "cancelled", None)
        assert session.query(Artifact).filter_by(job_id=job_id).count() == 0
    assert not (ctx.settings.data_dir / "artifacts" / "jobs" / job_id).exists()
