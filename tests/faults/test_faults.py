"""Faults survived against a real worker on a real (private) Redis: workers SIGKILLed
mid-job, a job that kills its worker every time, the broker restarted or down, and a
cancel in every stage. Nothing accepted is lost, nothing runs to completion twice."""

import os
import signal
import time
from collections import Counter

import httpx
import pytest

from tests.conftest import Service
from tests.e2e.helpers import wait_for
from tests.faults.conftest import RedisServer, status_events
from tests.faults.jobs import (
    TERMINAL,
    body,
    finish,
    kill_run,
    submit,
    upload_big_dataset,
    upload_inputs,
    wait_running,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def inputs(service: Service, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    with service.client() as client:
        return upload_inputs(client, tmp_path_factory.mktemp("inputs"))


@pytest.fixture
def client(service: Service) -> httpx.Client:
    with service.client() as c:
        yield c


def _ran_to_the_end_once(service: Service, client: httpx.Client, job_id: str) -> None:
    """One success, one report, each artifact once."""
    events = Counter(status_events(service, job_id))
    assert events["succeeded"] == 1 and events["failed"] == 0, events
    names = [a["name"] for a in client.get(f"/v1/jobs/{job_id}/artifacts").json()]
    assert len(names) == len(set(names)) and {"model.onnx", "report.json"} <= set(names), names
    assert client.get(f"/v1/jobs/{job_id}/report").status_code == 200


def test_pool_child_killed_mid_job(service: Service, client: httpx.Client, inputs) -> None:
    job_id = submit(client, body(*inputs, epochs=40))
    wait_for(client, job_id, lambda j: j["stage"] == "finetuning", timeout_s=120, interval_s=0.05)
    kill_run(service, job_id)
    done = finish(client, job_id)
    assert (done["status"], done["attempts"]) == ("succeeded", 2), (done, service.logs())
    assert Counter(status_events(service, job_id))["running"] == 2
    _ran_to_the_end_once(service, client, job_id)


def test_whole_worker_killed_mid_job(service: Service, client: httpx.Client, inputs) -> None:
    job_id = submit(client, body(*inputs, epochs=40))
    wait_for(client, job_id, lambda j: j["stage"] == "finetuning", timeout_s=120, interval_s=0.05)
    os.killpg(service.procs["worker"].pid, signal.SIGKILL)
    service.procs["worker"].wait(timeout=10)
    killed_at = time.monotonic()
    service.start_worker()
    done = finish(client, job_id)
    assert (done["status"], done["attempts"]) == ("succeeded", 2), (done, service.logs())
    _ran_to_the_end_once(service, client, job_id)
    # The new worker's sweeper found the orphaned run within its lease checks.
    assert time.monotonic() - killed_at < 180


def test_job_that_kills_its_worker_every_time(
    service: Service, client: httpx.Client, inputs
) -> None:
    job_id = submit(client, body(*inputs, epochs=40))
    for attempt in (1, 2, 3):
        wait_running(service, job_id, attempt)
        kill_run(service, job_id)
    done = finish(client, job_id)
    assert done["status"] == "failed", done
    assert done["error"]["code"] == "worker_crashed" and done["attempts"] == 3, done
    assert client.get(f"/v1/jobs/{job_id}/artifacts").json() == []
    # The worker lives on: the next job runs normally.
    after = finish(client, submit(client, body(inputs[0])))
    assert (after["status"], after["attempts"]) == ("succeeded", 1), after


def test_redis_restarted_with_jobs_queued(
    service: Service, client: httpx.Client, redis_server: RedisServer, inputs
) -> None:
    worker = service.procs.pop("worker")  # no worker: the jobs below wait in Redis
    os.killpg(worker.pid, signal.SIGTERM)
    worker.wait(timeout=60)
    # Two are enough to show that every lost message is found, and that a republished
    # job waits its turn behind another.
    ids = [submit(client, body(inputs[0])) for _ in range(2)]
    redis_server.restart()  # no persistence: both messages are gone
    service.start_worker()
    for job_id in ids:
        done = finish(client, job_id)
        assert (done["status"], done["attempts"]) == ("succeeded", 1), (done, service.logs())
        _ran_to_the_end_once(service, client, job_id)


def test_redis_down_when_a_job_is_submitted(
    service: Service, client: httpx.Client, redis_server: RedisServer, inputs
) -> None:
    redis_server.stop()
    try:
        resp = client.post("/v1/jobs", json=body(inputs[0]))
        assert resp.status_code == 202, resp.text  # accepted: it is in the job store
        job_id = resp.json()["id"]
        ready = httpx.get(f"{service.base_url}/readyz", timeout=30)
        assert ready.status_code == 503 and ready.json()["code"] == "not_ready"
    finally:
        redis_server.start()
    done = finish(client, job_id)
    assert (done["status"], done["attempts"]) == ("succeeded", 1), (done, service.logs())
    assert httpx.get(f"{service.base_url}/readyz", timeout=30).status_code == 200


STAGES = [
    "queued",
    "loading",
    "analyzing",
    "pruning",
    "finetuning",
    "evaluating",
    "exporting",
    "benchmarking",
]
# A cancel takes one of three ways, whatever the stage: a queued job is cancelled by the
# API; a running one has its sandbox killed by the worker's watch loop, which polls for
# cancels the same way in every stage of the sandboxed engine; and one that lands as the
# sandbox ends is caught before the results are stored. The stages tested cover each way:
# the first stage in the sandbox, the long one (fine-tuning) and the last (benchmarking,
# where the cancel may also land as the sandbox ends); the stages between them add runs,
# not ways.
CANCELLED_IN = ["queued", "loading", "finetuning", "benchmarking"]


@pytest.fixture(scope="module")
def big_dataset(service: Service, tmp_path_factory: pytest.TempPathFactory) -> str:
    with service.client() as client:
        return upload_big_dataset(client, tmp_path_factory.mktemp("big"))


def _cancel_in(client: httpx.Client, job: dict, stage: str) -> tuple[str, str, float]:
    """Submit `job`, cancel it once it reports `stage` (or has gone past it); returns the job
    id, the stage the cancel found it in and when (monotonic) the cancel was sent."""
    job_id = submit(client, job)
    target = STAGES.index(stage)

    def reached(j: dict) -> bool:
        return j["status"] in TERMINAL or STAGES.index(j["stage"] or "queued") >= target

    if stage != "queued":
        wait_for(client, job_id, reached, timeout_s=180, interval_s=0.02)
    sent = time.monotonic()
    resp = client.post(f"/v1/jobs/{job_id}/cancel")
    assert resp.status_code in (202, 409), resp.text
    if resp.status_code == 409:
        return job_id, "finished", sent
    got = resp.json()
    return job_id, "queued" if got["status"] == "cancelled" else got["stage"], sent


@pytest.mark.parametrize("stage", CANCELLED_IN)
def test_cancel_in_every_stage_frees_the_worker(
    service: Service, client: httpx.Client, inputs, big_dataset: str, stage: str
) -> None:
    if STAGES.index(stage) <= STAGES.index("finetuning"):
        job = body(*inputs, epochs=30, iterations=3000)
    else:  # one quick pass of fine-tuning, then a long evaluation and benchmark
        job = body(inputs[0], big_dataset, epochs=1, batch_size=256, iterations=3000)
    for _ in range(4):  # a short stage may be over before the cancel lands: try again
        job_id, seen, sent = _cancel_in(client, job, stage)
        done = finish(client, job_id)
        took = time.monotonic() - sent
        if seen == stage:
            break
    assert seen == stage, f"never caught a job in {stage}"
    assert done["status"] == "cancelled", done.get("error") or done
    assert took <= 5.0, f"cancelled {took:.1f} s after the request"
    assert client.get(f"/v1/jobs/{job_id}/artifacts").json() == []
    # The worker is free again: a quick job starts and finishes after the cancel.
    started = time.monotonic()
    after = finish(client, submit(client, body(inputs[0])), timeout_s=180)
    assert after["status"] == "succeeded", after
    assert time.monotonic() - started < 180
