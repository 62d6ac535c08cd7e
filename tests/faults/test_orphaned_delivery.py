"""A worker killed after Redis delivered it a job but before it claimed the job leaves
the message in Redis' `unacked` hash, where it stays until the visibility timeout
(hours). The sweeper must not count such a message as "in the broker": the job is
published again once the delivery is older than the lease."""

import subprocess
import sys
import time

from celery import Celery

from infra.config import Settings
from infra.queue_names import QUEUE, TASK_NAME
from tests.faults.conftest import RedisServer
from worker.celery_app import celery_config
from worker.sweeper import broker_job_ids

# Takes one message without acknowledging it, then dies without any clean-up (as under
# SIGKILL: a clean close would hand the message back).
_TAKE_AND_DIE = """
import os, sys
from kombu import Connection
with Connection(sys.argv[1]) as conn:
    channel = conn.channel()
    channel.basic_qos(0, 1, False)
    assert channel.basic_get(sys.argv[2], no_ack=False) is not None
    os._exit(0)
"""


def test_delivery_to_a_dead_worker_is_not_counted_for_long(redis_server: RedisServer) -> None:
    settings = Settings(broker_url=redis_server.url)
    app = Celery("t")
    app.conf.update(celery_config(settings))
    app.send_task(TASK_NAME, args=["job_orphaned"], queue=QUEUE)
    with app.connection_for_write() as conn:
        client = conn.default_channel.client
        assert client.llen(QUEUE) == 1
        subprocess.run(
            [sys.executable, "-c", _TAKE_AND_DIE, redis_server.url, QUEUE], check=True, timeout=60
        )
        # The message now sits in `unacked` only, held by nobody alive.
        assert client.llen(QUEUE) == 0 and client.hlen("unacked") == 1
    # A fresh delivery may belong to a worker about to claim the job: it counts...
    assert broker_job_ids(app, redis_server.url, fresh_s=60) == {"job_orphaned"}
    time.sleep(1.1)
    # ...an old one does not, so the sweeper publishes the job again.
    assert broker_job_ids(app, redis_server.url, fresh_s=1) == set()
    with app.connection_for_write() as conn:
        conn.default_channel.client.delete("unacked", "unacked_index", QUEUE)
