"""Celery *client* used by the API to hand jobs to the workers.

The API only names the task (`infra.queue_names`) and sends the job id as JSON; it never
imports the worker code, so this process stays free of torch.
"""

import logging

from celery import Celery

from infra.queue_names import QUEUE, TASK_NAME

log = logging.getLogger(__name__)


def _transport_options(broker_url: str, timeout_s: float) -> dict[str, float]:
    """Redis: give up on a silent server instead of blocking the request. Other transports
    get none: Kombu's SQLAlchemy transport passes every option on to `create_engine`, which
    refuses socket options, so no publish would ever succeed on the embedded broker."""
    if broker_url.startswith(("redis://", "rediss://")):
        return {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
    return {}


class JobQueue:
    """Enqueues jobs by task name and checks that the broker answers."""

    def __init__(self, broker_url: str, *, connect_timeout_s: float = 3.0) -> None:
        self.broker_url = broker_url
        self.connect_timeout_s = connect_timeout_s
        self.celery = Celery("secateurs-api", broker=broker_url, set_as_current=False)
        self.celery.conf.update(
            task_serializer="json",
            accept_content=["json"],
            broker_connection_timeout=connect_timeout_s,
            broker_connection_retry_on_startup=False,
            broker_transport_options=_transport_options(broker_url, connect_timeout_s),
        )

    def enqueue(self, job_id: str) -> bool:
        """Send the job to the `jobs` queue. False (logged) when the broker refused it: the
        job row stays `queued` and the worker side's re-enqueue sweep will pick it up."""
        try:
            self.celery.send_task(TASK_NAME, args=[job_id], queue=QUEUE, retry=False)
        except Exception as exc:  # any broker failure must not lose the (committed) job
            log.warning("could not enqueue %s: %s", job_id, exc)
            return False
        return True

    def ping(self) -> None:
        """Raise unless a connection to the broker can be opened within the timeout."""
        with self.celery.connection_for_write() as conn:
            conn.ensure_connection(
                max_retries=1, interval_start=0, interval_step=0, timeout=self.connect_timeout_s
            )

    def close(self) -> None:
        self.celery.close()
