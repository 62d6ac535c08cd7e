"""Prunability reports of uploaded models, analysed on demand in the sandboxed inspector.

The first `GET /v1/models/{id}/prunability` starts the analysis (the model's channel
groups, which are protected and why, the largest reachable MACs reduction) and answers
`analyzing`; later requests get the stored result. An analysis interrupted by a restart
is started again by the next request: the running ones are known to this process only.
"""

import asyncio
import logging
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.core.errors import ApiError
from app.core.pools import run_in
from app.inspector import Inspector
from infra.db.models import Model, ModelAnalysis
from infra.storage import ArtifactStore

log = logging.getLogger(__name__)

ANALYZING, READY, FAILED = "analyzing", "ready", "failed"


class Analyses:
    def __init__(
        self,
        store: ArtifactStore,
        sessions: sessionmaker[Session],
        pool: ThreadPoolExecutor,
        scratch_root: Path,
    ) -> None:
        self.store, self.sessions = store, sessions
        self.pool, self.scratch_root = pool, scratch_root
        self._running: dict[str, asyncio.Task[None]] = {}

    async def status(self, model: Model, inspector: Inspector) -> ModelAnalysis:
        """The model's analysis row, starting the analysis when none is stored or running."""
        row = await run_in(self.pool, self._load, model.id)
        if row is None or (row.status == ANALYZING and model.id not in self._running):
            row = await run_in(self.pool, self._save, model.id, ANALYZING, None, None, None)
            task = asyncio.create_task(self._analyse(model, inspector))
            self._running[model.id] = task
            task.add_done_callback(lambda _t: self._running.pop(model.id, None))
        return row

    async def _analyse(self, model: Model, inspector: Inspector) -> None:
        self.scratch_root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.scratch_root, prefix="analysis-") as tmp:
            path = Path(tmp) / "model"
            try:
                await run_in(self.pool, self.store.download_to, model.storage_key, path)
                found = await inspector.prunability(
                    path, tenant=model.tenant, arch=model.arch, input_shape=model.input_shape
                )
            except ApiError as exc:
                if exc.status in (429, 503):  # busy or unable now: the next request retries
                    await run_in(self.pool, self._forget, model.id)
                    return
                await run_in(self.pool, self._save, model.id, FAILED, None, exc.code, exc.detail)
                return
            except Exception:  # a bug of ours: record it, never leave it 'analyzing'
                log.exception("prunability analysis of %s failed", model.id)
                await run_in(
                    self.pool,
                    self._save,
                    model.id,
                    FAILED,
                    None,
                    "internal_error",
                    "the analysis failed unexpectedly",
                )
                return
        await run_in(
            self.pool, self._save, model.id, READY, found.model_dump(mode="json"), None, None
        )

    def _load(self, model_id: str) -> ModelAnalysis | None:
        with self.sessions() as session:
            return session.get(ModelAnalysis, model_id)

    def _save(
        self,
        model_id: str,
        status: str,
        result: dict[str, Any] | None,
        code: str | None,
        message: str | None,
    ) -> ModelAnalysis:
        with self.sessions() as session:
            row = session.get(ModelAnalysis, model_id) or ModelAnalysis(model_id=model_id)
            row.status, row.result = status, result
            row.error_code, row.error_message = code, (message or None) and message[:1024]
            session.add(row)
            session.commit()
            session.refresh(row)
            session.expunge(row)
            return row

    def _forget(self, model_id: str) -> None:
        with self.sessions() as session:
            row = session.get(ModelAnalysis, model_id)
            if row is not None:
                session.delete(row)
                session.commit()
