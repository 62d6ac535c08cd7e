"""Fixtures for the runner tests: a SQLite job store, a local artifact store, one job."""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from contract import Environment, Fidelity, JobSpec, Ratios, Report, Summary
from infra.config import Settings
from infra.db.models import Dataset, Job, Model
from infra.db.session import init_db, make_engine, make_sessionmaker, session_scope
from infra.storage import LocalStore
from worker.runner import RunContext

MODEL_BYTES = b"fake onnx bytes"
DATASET_BYTES = b"fake npz bytes"


def tiny_report() -> Report:
    """A valid report with fixed numbers."""
    original = Summary(params=1000, macs=40_000, size_bytes=4000)
    pruned = Summary(params=500, macs=20_000, size_bytes=2000)
    return Report(
        original=original,
        pruned=pruned,
        ratios=Ratios(macs=2.0, params=2.0, size=2.0),
        fidelity=Fidelity(max_abs_diff=0.01, cosine=0.99),
        layers=[],
        history=[],
        environment=Environment(torch="x", onnxruntime="y", device="cpu", providers=[]),
    )


@dataclass
class FakeResult:
    report: Report
    artifacts: dict[str, Path]


@dataclass
class FakePipeline:
    """Stands in for run_pipeline: reports stages, honours cancel, writes artifacts."""

    stages: tuple[str, ...] = ("loading", "pruning", "exporting")
    steps_per_stage: int = 3
    raise_exc: BaseException | None = None
    before_step: Callable[[int], None] | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, model_path: Path, spec: JobSpec, out_dir: Path, **kw: Any) -> FakeResult:
        from worker.engine.errors import JobCancelled

        dataset = kw["dataset_path"]
        self.calls.append(
            {
                "model_path": model_path,
                "spec": spec,
                **kw,
                "dataset_bytes": dataset.read_bytes() if dataset else None,
            }
        )
        assert Path(model_path).read_bytes() == MODEL_BYTES
        step = 0
        for i, stage in enumerate(self.stages):
            for j in range(self.steps_per_stage):
                if self.before_step:
                    self.before_step(step)
                step += 1
                kw["on_progress"](stage, (i + (j + 1) / self.steps_per_stage) / len(self.stages))
                if kw["should_cancel"]():
                    raise JobCancelled()
        if self.raise_exc is not None:
            raise self.raise_exc
        (out_dir / "model.onnx").write_bytes(b"pruned model")
        (out_dir / "report.json").write_text(tiny_report().model_dump_json())
        return FakeResult(
            tiny_report(),
            {"model.onnx": out_dir / "model.onnx", "report.json": out_dir / "report.json"},
        )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        max_attempts=3,
        api_keys="",
        database_url="",
        broker_url="",
        s3_bucket="",
    )


@pytest.fixture
def sessions(settings: Settings) -> sessionmaker[Session]:
    engine = make_engine(settings.resolved_database_url)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    init_db(engine)
    return make_sessionmaker(engine)


@pytest.fixture
def store(settings: Settings, tmp_path: Path) -> LocalStore:
    store = LocalStore(settings.data_dir / "artifacts")
    for key, data in (("models/mdl_1", MODEL_BYTES), ("datasets/ds_1", DATASET_BYTES)):
        src = tmp_path / key.replace("/", "_")
        src.write_bytes(data)
        store.put_file(key, src)
    return store


def add_job(sessions: sessionmaker[Session], job_id: str = "job_1", **fields: Any) -> str:
    """Insert model mdl_1, dataset ds_1 (once) and a queued job using them."""
    with session_scope(sessions) as s:
        if s.get(Model, "mdl_1") is None:
            s.add(
                Model(
                    id="mdl_1",
                    tenant="a",
                    name="m",
                    format="onnx",
                    arch=None,
                    sha256="0",
                    size_bytes=len(MODEL_BYTES),
                    storage_key="models/mdl_1",
                    input_shape=[1, 3, 8, 8],
                    inputs=[],
                    outputs=[],
                    stats={"params": 1, "macs": 1},
                )
            )
            s.add(
                Dataset(
                    id="ds_1",
                    tenant="a",
                    name="d",
                    format="npz",
                    sha256="0",
                    size_bytes=len(DATASET_BYTES),
                    storage_key="datasets/ds_1",
                    num_samples=4,
                    sample_shape=[3, 8, 8],
                    num_classes=2,
                    labeled=True,
                )
            )
        s.add(
            Job(
                id=job_id,
                tenant="a",
                model_id="mdl_1",
                dataset_id="ds_1",
                spec=JobSpec().model_dump(mode="json"),
                **fields,
            )
        )
    return job_id


@pytest.fixture
def make_ctx(
    settings: Settings, sessions: sessionmaker[Session], store: LocalStore
) -> Callable[..., RunContext]:
    def make(pipeline: Any, **kw: Any) -> RunContext:
        defaults: dict[str, Any] = {
            "progress_interval_s": 0.0,
            "cancel_interval_s": 0.0,
            "heartbeat_s": 0.05,
            "retry_countdown_s": 0.0,
            "store": store,
            "device": lambda: "cpu",
        }
        defaults.update(kw)
        return RunContext(settings=settings, sessions=sessions, pipeline=pipeline, **defaults)

    return make
