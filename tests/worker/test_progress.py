"""Throttled progress writes, polled cancel checks and the heartbeat."""

import time

from sqlalchemy import func, select

from infra.db.models import Job, JobEvent, utcnow
from infra.db.session import session_scope
from tests.worker.conftest import add_job
from worker.progress import CancelCheck, Heartbeat, ProgressWriter


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _progress_events(sessions) -> list[dict]:
    with session_scope(sessions) as s:
        rows = s.scalars(select(JobEvent).where(JobEvent.kind == "progress").order_by(JobEvent.id))
        return [e.data for e in rows]


def test_progress_is_throttled_to_four_writes_a_second_but_never_skips_a_stage(sessions):
    add_job(sessions, status="running")
    clock = FakeClock()
    write = ProgressWriter(sessions, "job_1", min_interval_s=0.25, clock=clock)
    # 2 s of pruning reported every 10 ms (200 calls), then one call of a new stage.
    for i in range(200):
        clock.now = i * 0.01
        write("pruning", 0.1 + i * 0.001)
    clock.now += 0.001
    write("finetuning", 0.5)
    events = _progress_events(sessions)
    assert write.writes == len(events) == 9  # t = 0, .25, … 1.75 and the stage change
    assert events[-1] == {"stage": "finetuning", "progress": 0.5}
    assert [e["progress"] for e in events] == sorted(e["progress"] for e in events)


def test_cancel_is_read_at_most_every_half_second(sessions):
    add_job(sessions, status="running", worker="me:1", attempts=1)
    clock = FakeClock()
    check = CancelCheck(
        sessions, "job_1", worker="me:1", attempts=1, min_interval_s=0.5, clock=clock
    )
    for i in range(100):  # one second of checks every 10 ms
        clock.now = i * 0.01
        assert check() is False
    assert check.reads == 2
    with session_scope(sessions) as s:
        s.get(Job, "job_1").cancel_requested = True
    assert check() is False  # still inside the half second
    clock.now = 1.5
    assert check() is True and check.reads == 3


def test_cancel_check_stops_a_run_that_lost_its_job(sessions):
    add_job(sessions, status="running", worker="other:2", attempts=2)
    check = CancelCheck(sessions, "job_1", worker="me:1", attempts=1, min_interval_s=0.0)
    assert check() is True


def test_heartbeat_refreshes_the_lease_while_owned(sessions):
    old = utcnow().replace(year=2020)
    add_job(sessions, status="running", worker="me:1", attempts=1, updated_at=old)
    with Heartbeat(sessions, "job_1", worker="me:1", attempts=1, interval_s=0.05):
        time.sleep(0.3)
    with session_scope(sessions) as s:
        seen = s.scalar(select(func.max(Job.updated_at)))
    assert seen.year > 2020
