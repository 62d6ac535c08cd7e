"""The Celery application of the worker: long GPU jobs, one at a time per GPU.

`celery_app` is built once from `Settings` when the worker starts. The parent process
never imports torch (the engine is imported inside the task, in a forked child), so no
CUDA context exists before the fork and each child returns its GPU memory on exit.
"""

from typing import Any

from celery import Celery

from infra.config import Settings
from infra.queue_names import QUEUE, TASK_NAME
from worker import sweeper, webhooks

# How often the embedded (SQL) broker is polled; Kombu's default of 1 s would add up to a
# second to every job's pick-up.
EMBEDDED_POLL_S = 0.2
# Extra time the broker keeps an unacknowledged job invisible beyond the hard time limit,
# so a job still running is never handed to a second worker.
VISIBILITY_MARGIN_S = 3600


def is_embedded_broker(url: str) -> bool:
    """True for Kombu's SQLAlchemy transport (the server-less default)."""
    return url.startswith(("sqla+", "sqlalchemy+"))


def _transport_options(settings: Settings) -> dict[str, Any]:
    url = settings.resolved_broker_url
    if is_embedded_broker(url):
        # The SQLAlchemy transport hands every transport option to create_engine, so
        # nothing but engine arguments may go here (the poll interval is set below).
        return {}
    return {"visibility_timeout": settings.job_hard_time_limit_s + VISIBILITY_MARGIN_S}


def _tune_embedded_transport() -> None:
    # The SQLAlchemy transport cannot take `polling_interval` as a transport option (it
    # would be passed to create_engine), so the class default is lowered instead.
    from kombu.transport import sqlalchemy as sqla_transport

    sqla_transport.Transport.polling_interval = EMBEDDED_POLL_S


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery settings for long, non-idempotent-by-default GPU jobs (see docs/service.md)."""
    return {
        "broker_url": settings.resolved_broker_url,
        "broker_transport_options": _transport_options(settings),
        "broker_connection_retry_on_startup": True,
        # The job row is the truth; Celery's results would only expire and lie.
        "task_ignore_result": True,
        "result_backend": None,
        "accept_content": ["json"],
        "task_serializer": "json",
        "task_default_queue": QUEUE,
        "task_routes": {TASK_NAME: {"queue": QUEUE}},
        # Ack after the run, and requeue when the child dies, so a crash is never a loss;
        # the job row's attempt counter stops a job that kills its worker every time.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_concurrency": 1,
        "worker_max_tasks_per_child": 1,
        "worker_pool": "prefork",
        "task_soft_time_limit": settings.job_soft_time_limit_s,
        "task_time_limit": settings.job_hard_time_limit_s,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "task_send_sent_event": False,
    }


def make_celery(settings: Settings) -> Celery:
    """A Celery app for `settings` that knows the job task."""
    if is_embedded_broker(settings.resolved_broker_url):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        _tune_embedded_transport()
    app = Celery("secateurs", include=["worker.tasks"])
    app.conf.update(celery_config(settings))
    return app


settings = Settings()
celery_app = make_celery(settings)
sweeper.install(celery_app, settings)
webhooks.install(celery_app, settings)
