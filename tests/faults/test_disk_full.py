"""A job whose run cannot write (the disk is full) fails with a clear code, not
`internal_error`, and leaves no artifacts. The full disk is real for the process: a
file-size limit makes every write past 256 KiB fail (EFBIG, as ENOSPC would)."""

import contextlib
import resource
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from app.core.config import Settings
from app.db.models import Artifact, Job
from app.db.session import init_db, make_engine, make_sessionmaker
from app.storage import LocalStore
from tests.worker.conftest import DATASET_BYTES, MODEL_BYTES, add_job
from worker.runner import RunContext, run_job

LIMIT = 256 << 10


@contextlib.contextmanager
def small_disk() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def export_a_big_model(model_path: Path, spec: Any, out_dir: Path, **_: Any) -> Any:
    """Stands in for the engine's export step: writes a 1 MiB model file."""
    with (out_dir / "model.onnx").open("wb") as fh:
        for _ in range(16):
            fh.write(bytes(64 << 10))
    raise AssertionError("the write above must fail")


def test_disk_full_fails_the_job_clearly(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", max_attempts=3, api_keys="",
                        database_url="", broker_url="", s3_bucket="")
    settings.data_dir.mkdir(parents=True)
    engine = make_engine(settings.resolved_database_url)
    init_db(engine)
    sessions = make_sessionmaker(engine)
    store = LocalStore(settings.data_dir / "artifacts")
    for key, data in (("models/mdl_1", MODEL_BYTES), ("datasets/ds_1", DATASET_BYTES)):
        src = tmp_path / key.replace("/", "_")
        src.write_bytes(data)
        store.put_file(key, src)
    job_id = add_job(sessions)
    ctx = RunContext(settings=settings, sessions=sessions, store=store,
                     pipeline=export_a_big_model, device=lambda: "cpu", heartbeat_s=0.05,
                     progress_interval_s=0.0, cancel_interval_s=0.0)
    with small_disk():
        outcome = run_job(job_id, ctx)
    assert outcome == "failed"
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert (job.status, job.error_code, job.attempts) == ("failed", "insufficient_storage", 1)
        assert "disk space" in (job.error_message or "")
        assert session.query(Artifact).filter_by(job_id=job_id).count() == 0
    # The run's scratch directory went with it.
    assert list((settings.data_dir / "work").iterdir()) == []
    engine.dispose()
