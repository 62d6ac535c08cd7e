"""Fair share between tenants: a message's turn runs the queued job that goes first."""

from datetime import timedelta

from contract import JobSpec
from infra.db.models import Job, utcnow
from infra.db.session import session_scope
from tests.worker.conftest import FakePipeline, add_job
from worker import fair, runner


def _queue(sessions, job_id: str, tenant: str, age_s: float, **fields) -> None:
    with session_scope(sessions) as s:
        s.add(
            Job(
                id=job_id,
                tenant=tenant,
                model_id="mdl_1",
                dataset_id="ds_1",
                spec=JobSpec().model_dump(mode="json"),
                created_at=utcnow() - timedelta(seconds=age_s),
                **fields,
            )
        )


def _order(sessions) -> list[str]:
    with session_scope(sessions) as s:
        return fair.queued_in_fair_order(s)


def test_a_backlog_does_not_starve_another_tenants_job(sessions):
    add_job(sessions, "job_a0", status="running", started_at=utcnow())
    for i in range(1, 6):
        _queue(sessions, f"job_a{i}", "a", age_s=100 - i)
    _queue(sessions, "job_b1", "b", age_s=1)
    assert _order(sessions) == ["job_b1", "job_a1", "job_a2", "job_a3", "job_a4", "job_a5"]


def test_tenants_take_turns_and_the_one_served_longest_ago_goes_first(sessions):
    add_job(sessions, "job_old", status="succeeded", started_at=utcnow())
    _queue(sessions, "job_a1", "a", age_s=50)
    _queue(sessions, "job_a2", "a", age_s=40)
    _queue(sessions, "job_c1", "c", age_s=30, started_at=None)
    _queue(sessions, "job_c2", "c", age_s=20)
    # a had a job started a moment ago, c never: c first, then turn by turn.
    assert _order(sessions) == ["job_c1", "job_a1", "job_c2", "job_a2"]


def test_cancelled_and_finished_jobs_are_not_in_the_order(sessions):
    add_job(sessions, "job_a1")
    _queue(sessions, "job_a2", "a", age_s=0, cancel_requested=True)
    _queue(sessions, "job_a3", "a", age_s=0, status="failed")
    assert _order(sessions) == ["job_a1"]


def test_a_turn_runs_the_fair_job_and_a_spent_message_runs_the_next(sessions, make_ctx):
    add_job(sessions, "job_a1")
    _queue(sessions, "job_a2", "a", age_s=-1)
    _queue(sessions, "job_b1", "b", age_s=-2)
    with session_scope(sessions) as s:
        s.get(Job, "job_a1").started_at = None
    pipeline = FakePipeline()
    ctx = make_ctx(pipeline)
    # a2's message arrives first but a1 is a's oldest; b has had nothing started either.
    assert runner.run_job("job_a2", ctx) == "succeeded"
    assert runner.run_job("job_b1", ctx) == "succeeded"
    assert runner.run_job("job_a1", ctx) == "succeeded"
    with session_scope(sessions) as s:
        ran = sorted(s.get(Job, j).started_at for j in ("job_a1", "job_a2", "job_b1"))
        order = [
            j for t in ran for j in ("job_a1", "job_a2", "job_b1") if s.get(Job, j).started_at == t
        ]
    assert order == ["job_a1", "job_b1", "job_a2"]
    # Every job ran exactly once; one more message finds nothing queued.
    assert len(pipeline.calls) == 3
    assert runner.run_job("job_a2", ctx) == "skip"
