"""The Celery task: a thin shell around `worker.runner.run_job`.

The run context (database engine, store) is built lazily in the child process that runs
the task: an engine or socket opened in the parent would be shared across the fork.
"""

import logging
import os
import threading
from typing import Any

from celery import Task
from celery.signals import worker_process_init, worker_process_shutdown

from app.db.session import make_engine, make_sessionmaker
from app.storage import make_store
from worker import runner
from worker.celery_app import TASK_NAME, celery_app, settings
from worker.sweeper import ensure_tables

log = logging.getLogger(__name__)

# Retries of a transient failure; the job row's attempt cap is the real bound.
MAX_TRANSIENT_RETRIES = 10

_context: tuple[int, runner.RunContext] | None = None


def run_context() -> runner.RunContext:
    """The context of this process, built on first use (and again after a fork)."""
    global _context
    if _context is None or _context[0] != os.getpid():
        engine = make_engine(settings.resolved_database_url)
        ensure_tables(engine)
        ctx = runner.RunContext(settings=settings, sessions=make_sessionmaker(engine),
                                store=make_store(settings))
        _context = (os.getpid(), ctx)
    return _context[1]


def _import_engine() -> None:
    try:
        import worker.engine.pipeline  # noqa: F401
    except Exception:  # noqa: BLE001 - the task imports it again and reports the failure
        log.exception("importing the engine failed")


_warm_up_thread: threading.Thread | None = None


@worker_process_init.connect(weak=False)
def _warm_up(**_: Any) -> None:
    """Import torch and the engine in each new pool child, in the background, while it
    waits for a job. With one job per child this takes seconds off every job; a job that
    arrives meanwhile simply waits on the import lock. (Importing torch creates no CUDA
    context, and the parent never runs this.)"""
    global _warm_up_thread
    _warm_up_thread = threading.Thread(target=_import_engine, name="engine-import",
                                       daemon=True)
    _warm_up_thread.start()


@worker_process_shutdown.connect(weak=False)
def _exit_during_warm_up(**_: Any) -> None:
    # A child told to stop while still importing has no job and nothing to flush;
    # interpreter shutdown could otherwise wait on the half-done native import.
    if _warm_up_thread is not None and _warm_up_thread.is_alive():
        os._exit(0)


@celery_app.task(name=TASK_NAME, bind=True, max_retries=MAX_TRANSIENT_RETRIES)
def run_job(self: Task, job_id: str) -> str:
    """Run one pruning job; the outcome is written to the job row, not returned to Celery."""
    ctx = run_context()
    try:
        return runner.run_job(job_id, ctx)
    except runner.RetryLater as exc:
        if runner.requeue(ctx, job_id, str(exc)):
            log.warning("job %s: %s; retrying in %.0f s", job_id, exc, exc.countdown_s)
            raise self.retry(countdown=exc.countdown_s) from exc
        return "failed"
