"""`GET /v1/jobs/{id}/events`: SSE from the job_events table, resumable, ends at terminal."""

import json
import threading
import time

from infra.db import jobstate
from infra.db.models import Job
from tests.app.helpers import AUTH_A, upload_model


def _read_events(client, job_id: str, headers: dict | None = None) -> list[dict]:
    """Parse the whole stream (it ends by itself after the terminal status)."""
    events, current = [], {}
    with client.stream(
        "GET", f"/v1/jobs/{job_id}/events", headers={**AUTH_A, **(headers or {})}
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            line = line.rstrip("\r")
            if not line:
                if "event" in current:
                    events.append(current)
                current = {}
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            current[field] = value.removeprefix(" ")
    return [{"event": e["event"], "id": e.get("id"), "data": json.loads(e["data"])} for e in events]


def _drive(app, job_id: str, delay: float) -> threading.Thread:
    """Run the job through its states from another thread, as a worker would."""

    def work() -> None:
        time.sleep(delay)
        with app.state.sessionmaker() as session:
            job = session.get(Job, job_id)
            jobstate.set_status(session, job, "running")
            session.commit()
            for stage, progress in (("loading", 0.03), ("pruning", 0.3), ("exporting", 0.8)):
                jobstate.set_progress(session, job, stage, progress)
                session.commit()
                time.sleep(0.05)
            jobstate.set_status(session, job, "succeeded")
            session.commit()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def test_stream_follows_the_job_to_its_end_and_resumes(client, app):
    model_id = upload_model(client).json()["id"]
    job_id = client.post("/v1/jobs", headers=AUTH_A, json={"model_id": model_id}).json()["id"]
    thread = _drive(app, job_id, delay=0.4)
    events = _read_events(client, job_id)
    thread.join(5)
    # First the current state, then every logged event in order, ending at the terminal one.
    assert events[0]["event"] == "status" and events[0]["data"]["status"] == "queued"
    kinds = [(e["event"], e["data"].get("status") or e["data"]["stage"]) for e in events[1:]]
    assert kinds == [
        ("status", "running"),
        ("progress", "loading"),
        ("progress", "pruning"),
        ("progress", "exporting"),
        ("status", "succeeded"),
    ]
    progress = [e["data"]["progress"] for e in events[1:]]
    assert progress == sorted(progress) and progress[-1] == 1.0
    ids = [int(e["id"]) for e in events]
    assert ids == sorted(ids) and len(set(ids[1:])) == len(ids) - 1

    # Resuming after the "pruning" event replays only what came after it.
    resumed = _read_events(client, job_id, {"Last-Event-ID": events[3]["id"]})
    assert resumed[0]["event"] == "status" and resumed[0]["id"] is None
    assert [e["id"] for e in resumed[1:]] == [events[4]["id"], events[5]["id"]]

    # A finished job answers its final state at once and ends.
    final = _read_events(client, job_id)
    assert len(final) == 1
    assert final[0]["data"]["status"] == "succeeded" and final[0]["data"]["progress"] == 1.0


def test_cancelled_job_stream_ends_with_error(client, app):
    model_id = upload_model(client).json()["id"]
    job_id = client.post("/v1/jobs", headers=AUTH_A, json={"model_id": model_id}).json()["id"]

    def cancel() -> None:
        time.sleep(0.3)
        client.post(f"/v1/jobs/{job_id}/cancel", headers=AUTH_A)

    thread = threading.Thread(target=cancel, daemon=True)
    thread.start()
    events = _read_events(client, job_id)
    thread.join(5)
    statuses = [e["data"]["status"] for e in events]
    # The first event is the state on connect: still queued, or already cancelled when
    # the cancel won the race; either way the stream ends on the cancelled status.
    assert statuses in (["queued", "cancelled"], ["cancelled"])
    assert events[-1]["data"]["error"]["code"] == "cancelled"
