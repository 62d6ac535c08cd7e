"""The dashboard's list, compare, model, dataset and new-job views against the real API,
with jobs, uploads and prunability reports written straight into its database: no
worker runs, so each view is checked value by value in a few seconds. Screenshots go
to test-output/screenshots at desktop and phone widths, light and dark.
"""

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from contract import JobSpec
from infra.db.models import Dataset, Job, Model, ModelAnalysis, utcnow
from infra.db.session import session_scope
from tests.browser.conftest import Uploads
from tests.browser.test_dashboard_scripted import (
    DESKTOP,
    PHONE,
    REPORT,
    ScriptedService,
    open_page,
)

pytestmark = pytest.mark.browser

LONG_LAYER = "backbone.stage4.block3.attention.projection.depthwise_conv"

# Three results that sort differently by each column: (job id, speed-up, pruned accuracy,
# pruned MACs, pruned size).
RESULTS = [
    ("job_fast", 3.6, 0.924, 465_000_000, 12_650_000),
    ("job_small", 1.4, 0.901, 900_000_000, 4_000_000),
    ("job_exact", 2.1, 0.930, 700_000_000, 20_000_000),
]


# Every section of the spec away from its default, for clone & re-run.
FULL_SPEC = JobSpec.model_validate(
    {
        "prune": {
            "method": "l1",
            "target": {"latency_reduction": 0.4},
            "scope": "sensitivity",
            "iterative_steps": 3,
            "round_to": 8,
            "ignored_layers": ["fc"],
            "max_layer_ratio": 0.8,
        },
        "regularize": {"kind": "group_l2", "strength": 0.001, "epochs": 2},
        "finetune": {
            "epochs": 1,
            "lr": 0.005,
            "batch_size": 32,
            "optimizer": "adamw",
            "distill": False,
        },
        "accuracy_budget": {"max_drop": 0.02, "probes": 4},
        "export": {"opset": 18, "dynamic_batch": False},
        "benchmark": {"providers": ["cpu"], "batch_sizes": [1, 8], "warmup": 5, "iterations": 200},
        "quantize": {
            "mode": "int8",
            "calibration": "entropy",
            "samples": 64,
            "per_channel": False,
            "fallback": "none",
            "exclude": ["/fc/Gemm"],
        },
    }
).model_dump(mode="json")


def report(speedup: float, accuracy: float, macs: int, size: int) -> dict[str, Any]:
    r = copy.deepcopy(REPORT)
    r["ratios"]["latency_speedup"] = speedup
    r["pruned"].update(accuracy=accuracy, macs=macs, size_bytes=size)
    return r


# A report with a warning, a p99 outlier far beyond p90 and long layer names.
WARNED = report(0.8, 0.92, 465_000_000, 12_650_000)
WARNED["warnings"] = [
    {
        "code": "slower_than_original",
        "severity": "critical",
        "message": "The pruned model is slower than the original here.",
    }
]
WARNED["pruned"]["latency_ms"]["CPUExecutionProvider"]["1"] = {
    "p50": 14.0,
    "p90": 15.0,
    "p99": 400.0,
}
WARNED["layers"] = [
    {"name": f"{LONG_LAYER}.{i}", "out_channels_before": 64, "out_channels_after": 32}
    for i in range(3)
]


def add_job(
    s: Any,
    job_id: str,
    model_id: str,
    status: str,
    spec: dict[str, Any],
    *,
    dataset_id: str | None = None,
    result: dict[str, Any] | None = None,
    stage: str | None = None,
) -> None:
    now = utcnow()
    s.add(
        Job(
            id=job_id,
            tenant="carol",
            model_id=model_id,
            dataset_id=dataset_id,
            spec=spec,
            status=status,
            progress=1.0 if status == "succeeded" else 0.4,
            attempts=1,
            cancel_requested=False,
            created_at=now,
            started_at=now,
            finished_at=None if status in ("queued", "running") else now,
            stage=stage,
            stage_times={
                st: {"started_at": now.isoformat(), "finished_at": now.isoformat()}
                for st in ("loading", "analyzing", stage)
                if st
            },
            report=result,
            error_code="prune_failed" if status == "failed" else None,
            error_message="every channel of features.0 is protected"
            if status == "failed"
            else None,
        )
    )


def add_model(s: Any, model_id: str, name: str) -> None:
    s.add(
        Model(
            id=model_id,
            tenant="carol",
            name=name,
            format="onnx",
            arch=None,
            sha256="a" * 64,
            size_bytes=46_811_234,
            storage_key="missing",
            input_shape=[1, 3, 224, 224],
            inputs=[{"name": "input", "shape": ["batch", 3, 224, 224], "dtype": "float32"}],
            outputs=[{"name": "logits", "shape": ["batch", 1000], "dtype": "float32"}],
            stats={"params": 11_689_512, "macs": 1_814_073_344},
        )
    )


def seed(svc: ScriptedService) -> None:
    """Models (one analysed, one not), a dataset, three succeeded jobs, a failed one and a
    queued one that keeps the analysed model in use."""
    default = JobSpec().model_dump(mode="json")
    layerwise = copy.deepcopy(default)
    layerwise["prune"].update(method="fpgm", scope="layerwise")
    with session_scope(svc.app.state.sessionmaker) as s:
        add_model(s, "mdl_resnet", "resnet18.onnx")
        add_model(s, "mdl_fresh", "fresh-net.onnx")
        for dataset_id in ("ds_tiny", "ds_spare"):
            s.add(
                Dataset(
                    id=dataset_id,
                    tenant="carol",
                    name=f"{dataset_id[3:]}.npz",
                    format="npz",
                    sha256="c" * 64,
                    size_bytes=50_000,
                    storage_key="missing",
                    num_samples=128,
                    sample_shape=[3, 224, 224],
                    num_classes=4,
                    labeled=True,
                )
            )
        s.add(
            ModelAnalysis(
                model_id="mdl_resnet",
                status="ready",
                result={
                    "groups": [
                        {"layer": "conv1", "channels": 64, "prunable": True},
                        {
                            "layer": LONG_LAYER,
                            "channels": 512,
                            "prunable": False,
                            "reason": "reaches_output",
                            "why": "feeds the model output",
                        },
                    ],
                    "prunable_groups": 1,
                    "protected_groups": 1,
                    "max_macs_reduction": 0.62,
                    "analysis_s": 1.4,
                    "notes": [],
                },
            )
        )
        s.flush()
        for job_id, speedup, accuracy, macs, size in RESULTS:
            spec = layerwise if job_id == "job_small" else default
            add_job(
                s,
                job_id,
                "mdl_resnet",
                "succeeded",
                spec,
                dataset_id="ds_tiny",
                result=report(speedup, accuracy, macs, size),
            )
        add_job(s, "job_broken", "mdl_resnet", "failed", default, stage="pruning")
        add_job(s, "job_waiting", "mdl_resnet", "queued", default)
        add_job(
            s, "job_full", "mdl_resnet", "failed", FULL_SPEC, dataset_id="ds_tiny", stage="pruning"
        )
        add_job(s, "job_warned", "mdl_fresh", "succeeded", default, result=WARNED)


@pytest.fixture(scope="module")
def views(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScriptedService]:
    with ScriptedService(tmp_path_factory.mktemp("views")) as svc:
        seed(svc)
        yield svc


@pytest.fixture
def page(browser: Any, views: ScriptedService) -> Iterator[Any]:
    context, pg, errors = open_page(browser, views)
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    yield pg
    context.close()
    assert errors == []


def shot(pg: Any, screenshots: Path, name: str) -> None:
    pg.screenshot(path=str(screenshots / f"{name}.png"), full_page=True)


def cells(pg: Any, job_id: str) -> dict[str, str]:
    return pg.locator(f"tr[data-job='{job_id}'] td[data-label]").evaluate_all(
        "tds => Object.fromEntries(tds.map(td => [td.dataset.label, td.textContent.trim()]))"
    )


def test_the_list_shows_results_sorts_and_compares(page: Any, screenshots: Path) -> None:
    page.locator("tr[data-job='job_exact'] td[data-label='Speed-up']", has_text="2.10×").wait_for()
    fast = cells(page, "job_fast")
    assert (fast["MACs cut"], fast["Speed-up"], fast["Accuracy"], fast["Size"]) == (
        "−74.4%",
        "3.60×",
        "−0.7 points",
        "12.1 MiB",
    )
    assert page.locator("tr[data-job='job_broken'] .stage-note").inner_text() == "failed at pruning"
    assert page.locator("tr[data-job='job_broken'] [role=progressbar]").is_hidden()
    assert cells(page, "job_broken")["Speed-up"] == ""
    # The full id on hover, and a button that copies it.
    link = page.locator("tr[data-job='job_fast'] a.job-id")
    assert link.get_attribute("title") == "job_fast"
    page.click("tr[data-job='job_fast'] button.copy")
    page.locator("tr[data-job='job_fast'] button.copy", has_text="Copied").wait_for()
    assert page.evaluate("navigator.clipboard.readText()") == "job_fast"

    ranked = [job_id for job_id, *_ in RESULTS]
    order = f"rs => rs.map(r => r.dataset.job).filter(id => {ranked}.includes(id))"
    for sort, expected in [
        ("speedup", ["job_fast", "job_exact", "job_small"]),
        ("accuracy", ["job_exact", "job_fast", "job_small"]),
        ("size", ["job_small", "job_fast", "job_exact"]),
    ]:
        page.select_option("#sort-jobs", sort)
        page.wait_for_url(f"**#/jobs?sort={sort}")
        page.locator(f"p.help[data-sort={sort}]").wait_for()  # sorted by the server
        assert page.locator("tr[data-job]").evaluate_all(order) == expected, sort
    shot(page, screenshots, "jobs-results-desktop-light")

    assert page.get_attribute("#compare-jobs", "aria-disabled") == "true"
    page.check("tr[data-job='job_fast'] input.pick")
    page.check("tr[data-job='job_small'] input.pick")
    page.click("#compare-jobs")
    page.locator("#compare-results").wait_for()
    results = page.locator("#compare-results tbody tr").evaluate_all(
        "rows => Object.fromEntries(rows.map(r => [r.children[0].textContent,"
        " [...r.children].slice(1).map(c => c.textContent)]))"
    )
    assert results["Speed-up"] == ["3.60×", "1.40×"]
    assert results["Accuracy change"] == ["−0.7 points", "−3.0 points"]
    differ = page.locator("#compare-spec tr.diff th").all_inner_texts()
    assert sorted(differ) == ["prune.method", "prune.scope"]
    assert page.locator(".side-by-side table.compare").count() == 2


def test_the_list_compare_and_model_at_phone_width_in_dark(
    browser: Any, views: ScriptedService, screenshots: Path
) -> None:
    context, pg, errors = open_page(browser, views, phone=True, dark=True)
    try:
        # Reports load as their rows scroll into view: below the fold, not yet.
        pg.locator("tr[data-job='job_full']").wait_for()
        pg.locator("tr[data-job='job_fast']").scroll_into_view_if_needed()
        pg.locator("tr[data-job='job_fast'] td[data-label='Speed-up']", has_text="×").wait_for()
        pg.evaluate("window.scrollTo(0, 0)")
        assert pg.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        shot(pg, screenshots, "jobs-results-phone-dark")
        pg.goto("/#/compare?ids=job_fast,job_small,job_exact")
        pg.locator("#compare-spec").wait_for()
        shot(pg, screenshots, "compare-phone-dark")
        pg.goto("/#/models/mdl_resnet")
        pg.locator("#prunability[data-status=ready]").wait_for()
        pg.locator("#jobs-using tbody tr").first.wait_for()
        assert pg.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        shot(pg, screenshots, "model-detail-phone-dark")
        pg.set_viewport_size(DESKTOP)
        pg.goto("/#/compare?ids=job_fast,job_small,job_exact")
        pg.locator("#compare-spec").wait_for()
        shot(pg, screenshots, "compare-desktop-dark")
    finally:
        context.close()
    assert errors == []


def test_a_model_page_shows_its_analysis_jobs_and_refused_delete(
    page: Any, screenshots: Path
) -> None:
    page.click("#nav a[data-nav=models]")
    page.locator("tr[data-model='mdl_resnet']").wait_for()
    assert page.locator("tr[data-model]").count() == 3  # with the scripted service's own
    page.click("tr[data-model='mdl_resnet'] a")
    page.locator("#prunability[data-status=ready]").wait_for()
    inputs = page.locator("#model-inputs tbody td").all_inner_texts()
    assert inputs == ["batch × 3 × 224 × 224", "float32"]
    assert "1.81 G" in page.locator("#model-facts").inner_text()
    protected = page.locator("#prunability-groups tr.protected th")
    assert protected.get_attribute("title") == LONG_LAYER
    assert "…" in protected.inner_text()
    assert "feeds the model output" in page.locator("#prunability-groups").inner_text()
    page.locator("#jobs-using tr[data-job='job_waiting']").wait_for()
    assert page.locator("#jobs-using tbody tr").count() == 6
    shot(page, screenshots, "model-detail-desktop-light")

    page.click("#delete-start")
    page.click("#delete-confirm")
    refusal = page.locator("#delete-message .panel.error")
    refusal.wait_for()
    assert "unfinished job" in refusal.inner_text()
    assert refusal.locator("code").inner_text() == "model_in_use"

    # A model never analysed: the first answer is `analyzing`, polled until it settles.
    page.goto("/#/models/mdl_fresh")
    page.locator("#prunability[data-status=analyzing]").wait_for()
    page.locator("#prunability[data-status=failed] .panel.error").wait_for()


def test_a_failed_job_names_its_stage_and_clones_into_the_form(
    page: Any, views: ScriptedService, screenshots: Path
) -> None:
    page.goto("/#/jobs/job_full")
    page.locator("#current-stage", has_text="failed in pruning").wait_for()
    assert page.locator(".timeline li.failed").get_attribute("data-stage") == "pruning"
    spec_text = page.locator("dl.spec").first.inner_text()
    assert "1 epoch," in spec_text and "1 epochs" not in spec_text, spec_text

    page.click("#clone-job")
    page.locator("#clone-note", has_text="job_full").wait_for()
    assert page.input_value("#model-existing") == "mdl_resnet"
    assert page.input_value("#dataset-existing") == "ds_tiny"
    assert page.is_checked("#target-latency_reduction")
    assert page.input_value("#amount") == "40"
    assert page.input_value("#scope") == "sensitivity"
    assert page.input_value("#quantize") == "int8"
    assert page.input_value("#q-exclude") == "/fc/Gemm"
    assert not page.is_disabled("#calibration")
    assert page.locator("#submit-job").inner_text() == "Start job"
    shot(page, screenshots, "new-job-clone-desktop-light")
    page.click("#submit-job")
    page.wait_for_url("**#/jobs/job_*")
    new_id = page.evaluate("location.hash").rsplit("/", 1)[1]
    assert new_id != "job_full"
    with session_scope(views.app.state.sessionmaker) as s:
        assert s.get(Job, new_id).spec == s.get(Job, "job_full").spec


def test_the_form_shows_every_default_at_phone_width(
    browser: Any, views: ScriptedService, screenshots: Path
) -> None:
    context, pg, errors = open_page(browser, views, phone=True)
    try:
        pg.goto("/#/submit?model=mdl_fresh")
        pg.wait_for_function("document.querySelector('#model-existing').value === 'mdl_fresh'")
        defaults = {
            "#amount": "50",
            "#steps": "5",
            "#scope": "global",
            "#max-layer-ratio": "90",
            "#probes": "6",
            "#quantize": "none",
            "#q-samples": "128",
            "#opset": "17",
            "#warmup": "10",
            "#iterations": "50",
            "#reg-strength": "0.0001",
        }
        assert {k: pg.input_value(k) for k in defaults} == defaults
        assert pg.is_checked("#target-macs_reduction") and pg.is_disabled("#calibration")
        assert pg.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        shot(pg, screenshots, "new-job-phone-light")
    finally:
        context.close()
    assert errors == []


def test_a_report_shows_warnings_and_p90_whiskers(
    browser: Any, views: ScriptedService, screenshots: Path
) -> None:
    context, pg, errors = open_page(browser, views, dark=True)
    try:
        pg.goto("/#/jobs/job_warned")
        warnings = pg.locator("#report-warnings")
        warnings.wait_for()
        assert "slower than the original" in warnings.inner_text()
        assert pg.locator("#report-warnings li[data-code=slower_than_original]").count() == 1
        # A 400 ms p99 outlier must not squash the bars: the scale ends at the largest p90.
        bars = pg.locator("[data-chart=latency] rect").evaluate_all(
            "rs => rs.map(r => Number(r.getAttribute('width')))"
        )
        assert min(bars) > 0.5 * max(bars)
        label = pg.locator("[data-chart=channels] text.label").first
        assert "…" in label.text_content() and label.text_content().startswith("backbone")
        assert LONG_LAYER in pg.locator("[data-chart=channels] g.row title").first.text_content()
        shot(pg, screenshots, "report-warnings-desktop-dark")
    finally:
        context.close()
    assert errors == []


def test_a_dataset_is_listed_shown_and_deleted(page: Any) -> None:
    page.click("#nav a[data-nav=datasets]")
    page.click("tr[data-dataset='ds_tiny'] a")
    page.locator("#dataset-facts").wait_for()
    assert "4 classes" in page.locator("#dataset-facts").inner_text()
    page.locator("#jobs-using tr[data-job='job_full']").wait_for()
    page.goto("/#/datasets/ds_spare")
    page.locator("#jobs-using", has_text="No job has used it yet").wait_for()
    page.click("#delete-start")
    page.click("#delete-confirm")
    page.wait_for_url("**#/datasets")
    page.locator("tr[data-dataset='ds_tiny']").wait_for()
    assert page.locator("tr[data-dataset]").count() == 1


def test_a_dataset_uploads_from_its_page(page: Any, uploads: Uploads) -> None:
    page.goto("/#/datasets")
    page.click("details.upload summary")
    page.set_input_files("#dataset-upload-file", str(uploads.dataset))
    page.fill("#dataset-upload-name", "uploaded here")
    page.click("#dataset-upload button[type=submit]")
    page.locator("h1", has_text="uploaded here").wait_for(timeout=60_000)
    assert "128" in page.locator("#dataset-facts").inner_text()
    # A model file that is not one: the server's problem detail, on the page.
    page.goto("/#/models")
    page.click("details.upload summary")
    page.set_input_files("#model-upload-file", str(uploads.garbage))
    page.click("#model-upload button[type=submit]")
    refusal = page.locator("#model-upload .panel.error")
    refusal.wait_for(timeout=60_000)
    assert refusal.locator("code").inner_text()
