"""The Celery task: a thin shell around `worker.runner.run_job`.

The run context (database engine, store) is built lazily in the child process that runs
the task: an engine or socket opened in the parent would be shared across the fork.
"""

import logging
import os

from celery import Task

from infra.db.session import make_engine, make_sessionmaker
from infra.sandbox import Limits, Sandbox, describe
from infra.storage import make_store
from worker import runner
from worker.celery_app import TASK_NAME, celery_app, settings
from worker.sandboxed import SandboxedPipeline
from worker.sweeper import ensure_tables

log = logging.getLogger(__name__)

# Retries of a transient failure; the job row's attempt cap is the real bound.
MAX_TRANSIENT_RETRIES = 10

_context: tuple[int, runner.RunContext] | None = None


def sandboxed_pipeline() -> SandboxedPipeline:
    """The engine run of each job, in a sandbox with this worker's GPUs and limits. The
    sandbox picks the device (this process never imports torch)."""
    sandbox = Sandbox.from_settings(settings, gpu=True)
    log.log(logging.WARNING if sandbox.insecure else logging.INFO, "%s", describe(sandbox))
    limits = Limits(
        memory_bytes=settings.job_memory_bytes,
        processes=4096,
        open_files=4096,
        file_bytes=64 << 30,
        tmpfs_bytes=1 << 30,
        niceness=settings.job_niceness,
    )
    return SandboxedPipeline(sandbox, limits)


def run_context() -> runner.RunContext:
    """The context of this process, built on first use (and again after a fork)."""
    global _context
    if _context is None or _context[0] != os.getpid():
        engine = make_engine(settings.resolved_database_url)
        ensure_tables(engine)
        ctx = runner.RunContext(
            settings=settings,
            sessions=make_sessionmaker(engine),
            store=make_store(settings),
            pipeline=sandboxed_pipeline(),
            device=lambda: "auto",
        )
        _context = (os.getpid(), ctx)
    return _context[1]


@celery_app.task(name=TASK_NAME, bind=True, max_retries=MAX_TRANSIENT_RETRIES)
def run_job(self: Task, job_id: str) -> str:
    """Run one pruning job; the outcome is written to the job row, not returned to Celery."""
    ctx = run_context()
    try:
        return runner.run_job(job_id, ctx)
    except runner.RetryLater as exc:
        if runner.requeue(ctx, exc.job_id or job_id, str(exc)):
            log.warning("job %s: %s; retrying in %.0f s", job_id, exc, exc.countdown_s)
            raise self.retry(countdown=exc.countdown_s) from exc
        return "failed"
