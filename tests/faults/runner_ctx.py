"""A job store, an artifact store and one queued job for driving `worker.runner` directly."""

from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from infra.config import Settings
from infra.db.session import init_db, make_engine, make_sessionmaker
from infra.storage import LocalStore
from tests.worker.conftest import DATASET_BYTES, MODEL_BYTES, add_job
from worker.runner import RunContext


def runner_context(tmp_path: Path, pipeline: Any) -> tuple[RunContext, str]:
    """A run context over SQLite and a local store in `tmp_path`, and a queued job's id."""
    settings = Settings(
        data_dir=tmp_path / "data",
        max_attempts=3,
        api_keys="",
        database_url="",
        broker_url="",
        s3_bucket="",
    )
    settings.data_dir.mkdir(parents=True)
    engine = make_engine(settings.resolved_database_url)
    init_db(engine)
    sessions: sessionmaker[Session] = make_sessionmaker(engine)
    store = LocalStore(settings.data_dir / "artifacts")
    for key, data in (("models/mdl_1", MODEL_BYTES), ("datasets/ds_1", DATASET_BYTES)):
        src = tmp_path / key.replace("/", "_")
        src.write_bytes(data)
        store.put_file(key, src)
    ctx = RunContext(
        settings=settings,
        sessions=sessions,
        store=store,
        pipeline=pipeline,
        device=lambda: "cpu",
        heartbeat_s=0.05,
        progress_interval_s=0.0,
        cancel_interval_s=0.0,
    )
    return ctx, add_job(sessions)
