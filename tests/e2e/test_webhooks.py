"""Webhooks through the real service (uvicorn + a Celery worker on the embedded broker)
to a real local HTTP receiver: a signed event within a second of the job's end, and an
event that outlives its receiver being down, delivered once when it comes back."""

import socket
import time
from datetime import datetime

import pytest

from secateurs_client.webhooks import verify
from tests.conftest import Service
from tests.e2e.helpers import build_onnx, job_body, submit, upload, wait_for
from tests.worker.test_webhooks import Receiver

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def service(embedded_service: Service) -> Service:
    # The receiver is on loopback, so private addresses are allowed; retries are quick
    # (0.2 s doubling to 0.8 s) so an outage of a few attempts lasts a couple of seconds.
    return embedded_service


@pytest.fixture(scope="module")
def model_id(service: Service, tmp_path_factory: pytest.TempPathFactory) -> str:
    with service.client() as client:
        return upload(client, "models", build_onnx(tmp_path_factory.mktemp("m") / "t.onnx"))["id"]


def seconds(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def test_job_end_is_delivered_signed_within_a_second(service: Service, model_id: str) -> None:
    receiver = Receiver()
    try:
        with service.client() as client:
            secret = client.get("/v1/webhooks/secret").json()["secret"]
            resp = submit(client, {**job_body(model_id), "webhook_url": receiver.url})
            assert resp.status_code == 202, resp.text
            job = wait_for(
                client, resp.json()["id"], lambda j: j["status"] == "succeeded", timeout_s=180
            )
            assert receiver.arrived.wait(10), service.logs()
            time.sleep(0.5)  # anything more would arrive now
            log = client.get(f"/v1/jobs/{job['id']}/deliveries").json()["items"]
    finally:
        receiver.stop()
    (got,) = receiver.received
    latency = got["at"] - seconds(job["finished_at"])
    print(f"webhook delivered {latency:.3f} s after the job's end")
    assert latency < 1.5
    payload = verify(secret, got["headers"], got["body"])
    assert payload["type"] == "job.succeeded" and payload["data"]["id"] == job["id"]
    assert payload["data"]["links"]["report"] == f"/v1/jobs/{job['id']}/report"
    (delivery,) = log
    assert delivery["id"] == got["headers"]["webhook-id"]
    assert (delivery["status"], delivery["next_attempt_at"]) == ("delivered", None)
    assert [(a["attempt"], a["status_code"]) for a in delivery["attempts"]] == [(1, 200)]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_event_survives_a_receiver_outage_and_arrives_once(service: Service, model_id: str) -> None:
    port = closed_port()  # nothing listens there yet: every attempt is refused
    with service.client() as client:
        resp = submit(
            client, {**job_body(model_id), "webhook_url": f"http://127.0.0.1:{port}/hooks"}
        )
        job_id = resp.json()["id"]
        assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
        wait_for(client, job_id, lambda j: j["status"] == "cancelled", timeout_s=60)

        def failed_attempts() -> list[dict]:
            items = client.get(f"/v1/jobs/{job_id}/deliveries").json()["items"]
            return items[0]["attempts"] if items else []

        deadline = time.monotonic() + 20
        while len(failed_attempts()) < 3:
            assert time.monotonic() < deadline, service.logs()
            time.sleep(0.1)
        (pending,) = client.get(f"/v1/jobs/{job_id}/deliveries").json()["items"]
        assert pending["status"] == "pending" and pending["next_attempt_at"]
        assert all(a["status_code"] is None and a["error"] for a in pending["attempts"])

        receiver = Receiver(port=port)  # back up
        try:
            assert receiver.arrived.wait(10), service.logs()
            time.sleep(1.5)  # past the longest backoff: a second delivery would show now
        finally:
            receiver.stop()
        (done,) = client.get(f"/v1/jobs/{job_id}/deliveries").json()["items"]
    assert len(receiver.received) == 1
    assert receiver.received[0]["headers"]["webhook-id"] == done["id"] == pending["id"]
    assert done["status"] == "delivered" and done["attempts"][-1]["status_code"] == 200
    attempts = done["attempts"]
    assert [a["attempt"] for a in attempts] == list(range(1, len(attempts) + 1))
    assert all(a["status_code"] is None for a in attempts[:-1])
