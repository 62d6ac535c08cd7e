"""Job names and tags in the dashboard: shown in the list and on a job's page, filtered by
tag, edited on the job's page, carried over by clone & re-run; the list's result columns
come from each job's `result`, with no report fetched."""

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from contract import JobSpec
from infra.db.models import Job, utcnow
from infra.db.session import session_scope
from tests.browser.test_dashboard_scripted import REPORT, ScriptedService, open_page

pytestmark = pytest.mark.browser


def seed(svc: ScriptedService) -> None:
    spec = JobSpec().model_dump(mode="json")
    fast = copy.deepcopy(REPORT)
    fast["ratios"]["latency_speedup"] = 4.2
    with session_scope(svc.app.state.sessionmaker) as s:
        for job_id, name, tags, report in [
            ("job_named", "resnet18 half MACs", ["baseline", "r18"], REPORT),
            ("job_other", None, ["r18"], fast),
            ("job_plain", "unrelated", [], None),
        ]:
            now = utcnow()
            s.add(
                Job(
                    id=job_id,
                    tenant="carol",
                    model_id="mdl_scripted",
                    spec=spec,
                    status="succeeded" if report else "queued",
                    progress=1.0 if report else 0,
                    attempts=1,
                    cancel_requested=False,
                    created_at=now,
                    started_at=now,
                    finished_at=now if report else None,
                    stage_times={},
                    name=name,
                    tags=tags,
                    report=report,
                )
            )


@pytest.fixture(scope="module")
def named(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScriptedService]:
    with ScriptedService(tmp_path_factory.mktemp("names")) as svc:
        seed(svc)
        yield svc


@pytest.fixture
def page(browser: Any, named: ScriptedService) -> Iterator[Any]:
    context, pg, errors = open_page(browser, named)
    yield pg
    context.close()
    assert errors == []


def _wait_for_rows(page: Any, ids: list[str]) -> None:
    """Until the job list shows exactly these jobs (a timeout fails the test)."""
    page.wait_for_function(
        "ids => [...document.querySelectorAll('tr[data-job]')]"
        ".map(r => r.dataset.job).sort().join() === ids.join()",
        arg=sorted(ids),
    )


def test_the_list_shows_names_tags_and_results_and_filters_by_tag(
    page: Any, screenshots: Path
) -> None:
    reports: list[str] = []
    page.on("request", lambda r: reports.append(r.url) if r.url.endswith("/report") else None)
    page.click("#refresh-jobs")
    row = page.locator("tr[data-job='job_named']")
    row.locator("td[data-label='Speed-up']", has_text="3.62×").wait_for()
    assert row.locator(".job-name").inner_text() == "resnet18 half MACs"
    assert row.locator(".job-tag").all_inner_texts() == ["baseline", "r18"]
    assert (
        page.locator("tr[data-job='job_other'] td[data-label='Speed-up']").inner_text() == "4.20×"
    )
    assert page.locator("tr[data-job='job_plain'] .job-name").inner_text() == "unrelated"
    assert reports == []  # the results came with the jobs
    page.screenshot(path=str(screenshots / "jobs-names-desktop-light.png"), full_page=True)

    # Sorted by the server: the faster job first.
    page.select_option("#sort-jobs", "speedup")
    page.locator("p.help[data-sort=speedup]").wait_for()
    order = page.locator("tr[data-job]").evaluate_all("rs => rs.map(r => r.dataset.job)")
    assert order.index("job_other") < order.index("job_named")

    page.click("tr[data-job='job_other'] .job-tag:has-text('r18')")
    page.wait_for_url("**#/jobs?tag=r18")
    # The list is drawn again from the server's answer: wait for the rows, not a gap.
    _wait_for_rows(page, ["job_named", "job_other"])
    assert page.input_value("#tag-filter") == "r18"
    page.fill("#tag-filter", "baseline")
    page.press("#tag-filter", "Enter")
    page.wait_for_url("**#/jobs?tag=baseline")
    _wait_for_rows(page, ["job_named"])
    page.fill("#tag-filter", "nothing-here")
    page.press("#tag-filter", "Enter")
    page.locator(".panel.empty", has_text="tagged nothing-here").wait_for()


def test_a_job_page_edits_its_name_and_tags(
    page: Any, named: ScriptedService, screenshots: Path
) -> None:
    page.goto("/#/jobs/job_plain")
    page.locator("#job-name", has_text="unrelated").wait_for()
    page.click("#edit-job")
    page.fill("#edit-name", "  mobilenet trial ")
    page.fill("#edit-tags", "trial, mobile trial")
    page.screenshot(path=str(screenshots / "job-names-edit-desktop-light.png"))
    page.click("#edit-save")
    page.locator("#job-name", has_text="mobilenet trial").wait_for()
    assert page.locator("#job-title .job-tag").all_inner_texts() == ["trial", "mobile"]
    with session_scope(named.app.state.sessionmaker) as s:
        job = s.get(Job, "job_plain")
        assert (job.name, job.tags) == ("mobilenet trial", ["trial", "mobile"])
    # A refused tag shows the server's words and keeps the form.
    page.click("#edit-job")
    page.fill("#edit-tags", "no!")
    page.click("#edit-save")
    page.locator("#job-edit .panel.error", has_text="tag").wait_for()


def test_clone_carries_the_name_and_tags_into_a_new_job(page: Any, named: ScriptedService) -> None:
    page.goto("/#/jobs/job_named")
    page.locator("#job-name", has_text="resnet18 half MACs").wait_for()
    page.click("#clone-job")
    page.locator("#clone-note", has_text="job_named").wait_for()
    assert page.input_value("#job-name-input") == "resnet18 half MACs"
    assert page.input_value("#job-tags-input") == "baseline, r18"
    page.fill("#job-name-input", "resnet18 again")
    page.fill("#job-tags-input", "r18, rerun")
    page.click("#submit-job")
    page.wait_for_url("**#/jobs/job_*")
    page.locator("#job-name", has_text="resnet18 again").wait_for()
    new_id = page.evaluate("location.hash").rsplit("/", 1)[1]
    with session_scope(named.app.state.sessionmaker) as s:
        job = s.get(Job, new_id)
        assert (job.name, job.tags) == ("resnet18 again", ["r18", "rerun"])
