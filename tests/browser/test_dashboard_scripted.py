"""The dashboard against the real API, with the job's life scripted through the same job
state functions the worker calls (`infra.db.jobstate`): fast and exact, so the live views,
the timeline, the report's numbers and the error panel are checked value by value.
"""

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from sqlalchemy import delete

from app.core.auth import sync_settings_keys
from app.main import create_app
from contract import JobSpec, Report
from infra.config import Settings
from infra.db.jobstate import append_event, set_progress, set_status, status_payload
from infra.db.models import ApiKey, Artifact, Job, Model, utcnow
from infra.db.session import session_scope
from tests.browser.conftest import free_port_local

pytestmark = pytest.mark.browser

KEY = "key-carol"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
STAGES = [
    "loading",
    "analyzing",
    "pruning",
    "finetuning",
    "evaluating",
    "exporting",
    "benchmarking",
]
REPORT = Report.model_validate(
    {
        "original": {
            "params": 11_689_512,
            "macs": 1_814_073_344,
            "size_bytes": 46_811_234,
            "accuracy": 0.931,
            "latency_ms": {"CPUExecutionProvider": {"1": {"p50": 12.3, "p90": 13.1, "p99": 15.2}}},
        },
        "pruned": {
            "params": 3_159_000,
            "macs": 465_000_000,
            "size_bytes": 12_650_000,
            "accuracy": 0.924,
            "latency_ms": {"CPUExecutionProvider": {"1": {"p50": 3.4, "p90": 3.6, "p99": 4.4}}},
        },
        "ratios": {"macs": 3.9, "params": 3.7, "size": 3.7, "latency_speedup": 3.62},
        "fidelity": {"top1_agreement": 0.962, "max_abs_diff": 0.83, "cosine": 0.9912},
        "layers": [
            {"name": f"features.{i}", "out_channels_before": 64, "out_channels_after": 24 + i}
            for i in range(6)
        ],
        "history": [
            {"step": i, "macs": 1_814_073_344 - i * 270_000_000, "accuracy": 0.93 - i * 0.004}
            for i in range(6)
        ],
        "environment": {
            "torch": "2.14.1",
            "onnxruntime": "1.23.0",
            "device": "cpu",
            "providers": ["CPUExecutionProvider"],
        },
        "target": {
            "latency_reduction": 0.7,
            "latency_ms_original": 12.3,
            "latency_ms_target": 3.69,
            "latency_ms_measured": 3.5,
        },
    }
).model_dump(mode="json")


class ScriptedService:
    """The API in a thread of this process; jobs are created and moved on directly."""

    def __init__(self, data_dir: Path) -> None:
        settings = Settings(
            data_dir=data_dir,
            api_keys=f"carol:{KEY}",
            rate_limit_per_minute=100_000,
            key_cache_ttl_s=0,
        )
        self.app = create_app(settings)
        self.port = free_port_local()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.count = 0

    def __enter__(self) -> "ScriptedService":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the API did not start"
            time.sleep(0.05)
        with session_scope(self.app.state.sessionmaker) as s:
            s.add(
                Model(
                    id="mdl_scripted",
                    tenant="carol",
                    name="scripted-net.onnx",
                    format="onnx",
                    arch=None,
                    sha256="0" * 64,
                    size_bytes=1000,
                    storage_key="unused",
                    input_shape=[1, 3, 16, 16],
                    inputs=[],
                    outputs=[],
                    stats={"params": 1, "macs": 1},
                )
            )
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.app.state.engine.dispose()

    def new_job(self) -> str:
        self.count += 1
        job_id = f"job_scripted{self.count}"
        with session_scope(self.app.state.sessionmaker) as s:
            job = Job(
                id=job_id,
                tenant="carol",
                model_id="mdl_scripted",
                spec=JobSpec().model_dump(mode="json"),
                status="queued",
                progress=0.0,
                attempts=0,
                cancel_requested=False,
                stage_times={},
                created_at=utcnow(),
            )
            s.add(job)
            s.flush()
            append_event(s, job, "status", status_payload(job))
        return job_id

    def move(self, job_id: str, fn: Any) -> None:
        with session_scope(self.app.state.sessionmaker) as s:
            fn(s, s.get(Job, job_id))


def open_page(
    browser: Any, svc: ScriptedService, *, phone: bool = False, dark: bool = False
) -> tuple[Any, Any, list[str]]:
    """A logged-in page on `svc` (context, page, the page errors it collects)."""
    context = browser.new_context(
        viewport=PHONE if phone else DESKTOP,
        is_mobile=phone,
        color_scheme="dark" if dark else "light",
        base_url=svc.url,
    )
    context.set_default_timeout(15_000)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto("/")
    pg.fill("#api-key", KEY)
    pg.click("#login-form button[type=submit]")
    pg.wait_for_selector("#nav:not([hidden])")
    return context, pg, errors


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScriptedService]:
    with ScriptedService(tmp_path_factory.mktemp("scripted")) as svc:
        yield svc


@pytest.fixture
def page(browser: Any, scripted: ScriptedService) -> Iterator[Any]:
    context, pg, errors = open_page(browser, scripted)
    yield pg
    context.close()
    assert errors == []


def test_progress_streams_into_the_list_and_the_job_page(
    page: Any, scripted: ScriptedService
) -> None:
    job_id = scripted.new_job()
    page.click("#refresh-jobs")
    row = page.locator(f"tr[data-job='{job_id}']")
    row.wait_for()
    assert row.get_attribute("data-status") == "queued"
    time.sleep(0.5)  # let the list's event stream connect
    scripted.move(job_id, lambda s, j: set_status(s, j, "running"))
    page.locator(f"tr[data-job='{job_id}'][data-status=running]").wait_for()
    scripted.move(job_id, lambda s, j: set_progress(s, j, "loading", 0.03))
    row.locator("[role=progressbar][aria-valuenow='3']").wait_for()

    page.click(f"tr[data-job='{job_id}'] a")
    bar = page.locator(".live [role=progressbar]")
    bar.wait_for()
    seen: list[float] = []
    for i, stage in enumerate(STAGES[1:], start=1):
        progress = round(0.1 * i, 2)
        scripted.move(job_id, lambda s, j, st=stage, p=progress: set_progress(s, j, st, p))
        page.locator(f".live [role=progressbar][aria-valuenow='{progress * 100:g}']").wait_for()
        page.locator("#current-stage", has_text=stage.capitalize()).wait_for()
        seen.append(float(bar.get_attribute("aria-valuenow")))
    assert seen == [10, 20, 30, 40, 50, 60]
    # Each new stage makes the page fetch the job again for the timeline's times.
    page.locator(".timeline li.running[data-stage=benchmarking]").wait_for()
    assert page.locator(".timeline li").count() == len(STAGES)
    assert page.locator(".timeline li.running").get_attribute("data-stage") == "benchmarking"

    def succeed(s: Any, job: Job) -> None:
        job.report = REPORT
        s.add(
            Artifact(
                job_id=job.id,
                name="report.json",
                size_bytes=4210,
                sha256="b" * 64,
                media_type="application/json",
                storage_key="unused",
            )
        )
        set_status(s, job, "succeeded")

    scripted.move(job_id, succeed)
    page.locator("#job-status [data-status=succeeded]").wait_for()
    page.locator("#report").wait_for()
    assert bar.get_attribute("aria-valuenow") == "100"
    assert page.locator("#cancel-job").is_hidden()
    assert page.locator(".timeline li.running").count() == 0
    # The run facts follow the stream too: the page was loaded while the job was queued.
    run = page.locator("#job-run").inner_text()
    assert "started" in run and "finished" in run and "took" in run, run


def test_the_report_shows_its_numbers_and_charts(page: Any, scripted: ScriptedService) -> None:
    job_id = scripted.new_job()

    def done(s: Any, job: Job) -> None:
        set_status(s, job, "running")
        set_progress(s, job, "pruning", 0.5)
        job.report = REPORT
        set_status(s, job, "succeeded")

    scripted.move(job_id, done)
    page.goto(f"/#/jobs/{job_id}")
    page.locator("#report").wait_for()
    cells = page.locator("#compare-table tbody tr").evaluate_all(
        "rows => rows.map(r => [...r.children].map(c => c.textContent))"
    )
    table = {row[0]: row[1:] for row in cells}
    assert table["Parameters"] == ["11,689,512", "3,159,000", "−73.0%"]
    assert table["MACs"] == ["1,814,073,344", "465,000,000", "−74.4%"]
    assert table["Size"] == ["44.6 MiB", "12.1 MiB", "−73.0%"]
    assert table["Accuracy"] == ["93.1%", "92.4%", "−0.7 points"]
    assert table["Latency p50 (CPU, batch 1)"] == ["12.3 ms", "3.40 ms", "−72.4%"]
    assert table["Latency p99 (CPU, batch 1)"] == ["15.2 ms", "4.40 ms", "−71.1%"]
    assert table["Top-1 agreement with the original"][1] == "96.2%"
    cards = page.locator(".card").all_inner_texts()
    assert any("Speed-up" in c and "3.62×" in c for c in cards)
    assert any(
        "Latency" in c and "3.50 ms" in c and "target 3.69 ms, was 12.30 ms" in c for c in cards
    ), cards
    # Bars are proportional to the channel counts: 64 before, 24 + i after.
    widths = page.locator("[data-chart=channels] rect.bar-after").evaluate_all(
        "rs => rs.map(r => Number(r.getAttribute('width')))"
    )
    full = float(page.locator("[data-chart=channels] rect.bar-before").first.get_attribute("width"))
    assert [round(w / full * 64) for w in widths] == [24, 25, 26, 27, 28, 29]
    # One point per pruning step, x falling with MACs, y with accuracy.
    pts = page.locator("[data-chart=history] circle.pt").evaluate_all(
        "cs => cs.map(c => [Number(c.getAttribute('cx')), Number(c.getAttribute('cy'))])"
    )
    assert len(pts) == 6
    assert [x for x, _ in pts] == sorted((x for x, _ in pts), reverse=True)
    assert [y for _, y in pts] == sorted(y for _, y in pts)  # lower accuracy = larger y
    y_ticks = page.locator("[data-chart=history] text.tick[text-anchor=end]").evaluate_all(
        "ts => ts.map(t => t.textContent)"
    )
    assert len(y_ticks) >= 3
    assert len(set(y_ticks)) == len(y_ticks), y_ticks
    assert page.locator("[data-chart=latency] rect").count() == 2


def test_a_failed_job_shows_its_error(page: Any, scripted: ScriptedService) -> None:
    job_id = scripted.new_job()
    page.goto(f"/#/jobs/{job_id}")
    page.locator("#job-status [data-status=queued]").wait_for()
    scripted.move(job_id, lambda s, j: set_status(s, j, "running"))
    scripted.move(
        job_id,
        lambda s, j: set_status(
            s,
            j,
            "failed",
            error_code="unsupported_op",
            error_message="NonMaxSuppression cannot be pruned structurally",
        ),
    )
    panel = page.locator(".result .panel.error")
    panel.wait_for()
    assert "NonMaxSuppression cannot be pruned structurally" in panel.inner_text()
    assert panel.locator("code").inner_text() == "unsupported_op"
    assert page.locator("#cancel-job").is_hidden()


def test_a_key_revoked_mid_session_returns_to_sign_in(page: Any, scripted: ScriptedService) -> None:
    # Let the list and its model names load first, so the refresh is the first refused call.
    page.locator("tr[data-job] td", has_text="scripted-net.onnx").first.wait_for()
    factory = scripted.app.state.sessionmaker
    with session_scope(factory) as s:
        s.execute(delete(ApiKey).where(ApiKey.tenant == "carol"))
    try:
        page.click("#refresh-jobs")
        message = page.locator("#login-message")
        message.filter(has_text="refused").wait_for()
        assert "401" in message.inner_text()
        assert page.evaluate("sessionStorage.length") == 0
        assert page.locator("#nav").is_hidden()
    finally:
        with session_scope(factory) as s:
            sync_settings_keys(s, {KEY: "carol"})


def test_the_list_pages_with_cursors(page: Any, scripted: ScriptedService) -> None:
    while scripted.count < 23:  # more than one page of 20
        scripted.new_job()
    with session_scope(scripted.app.state.sessionmaker) as s:
        total = s.query(Job).filter(Job.tenant == "carol").count()
    page.click("#refresh-jobs")
    rows = page.locator("tr[data-job]")
    page.locator("nav.pager", has_text="Page 1").wait_for()
    first = rows.evaluate_all("rs => rs.map(r => r.dataset.job)")
    assert len(first) == 20
    page.click("nav.pager a:has-text('Older')")
    page.locator("nav.pager", has_text="Page 2").wait_for()
    second = rows.evaluate_all("rs => rs.map(r => r.dataset.job)")
    assert len(second) == total - 20
    assert not set(first) & set(second)
    assert f"job_scripted{scripted.count}" in first  # newest first
    page.click("nav.pager a:has-text('Newer')")
    page.locator("nav.pager", has_text="Page 1").wait_for()
    assert rows.evaluate_all("rs => rs.map(r => r.dataset.job)") == first


def test_a_deep_link_survives_signing_in(browser: Any, scripted: ScriptedService) -> None:
    job_id = scripted.new_job()
    context = browser.new_context(base_url=scripted.url)
    pg = context.new_page()
    try:
        pg.goto(f"/#/jobs/{job_id}")
        pg.fill("#api-key", KEY)
        pg.keyboard.press("Enter")
        pg.locator("h1", has_text=job_id).wait_for()
        assert pg.evaluate("location.hash") == f"#/jobs/{job_id}"
    finally:
        context.close()
