"""The client's job names, tags, sort and update against a scripted service
(httpx.MockTransport), and a job run by the real worker that comes back with its result."""

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

import secateurs_client as sc
from tests.client.test_client import client


def test_submit_sends_a_name_and_tags_only_when_given() -> None:
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(202, json={"id": "job_1", "status": "queued"})

    with client(handler) as c:
        c.submit(
            "mdl_1",
            {"prune": {"target": {"macs_reduction": 0.5}}},
            name="r18 half",
            tags=("baseline", "r18"),
        )
        c.submit("mdl_1", {})
    assert bodies[0]["name"] == "r18 half" and bodies[0]["tags"] == ["baseline", "r18"]
    assert bodies[0]["prune"] == {"target": {"macs_reduction": 0.5}}
    assert "name" not in bodies[1] and "tags" not in bodies[1]


def test_update_job_sends_only_what_changes() -> None:
    sent: list[tuple[str, str, dict[str, Any]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append((request.method, request.url.path, json.loads(request.content)))
        return httpx.Response(200, json={"id": "job_1", "name": None, "tags": []})

    with client(handler) as c:
        c.update_job("job_1", name="renamed")
        c.update_job("job_1", tags=["a"])
        c.update_job("job_1", name=None, tags=None)
    assert sent == [
        ("PATCH", "/v1/jobs/job_1", {"name": "renamed"}),
        ("PATCH", "/v1/jobs/job_1", {"tags": ["a"]}),
        ("PATCH", "/v1/jobs/job_1", {"name": None, "tags": None}),
    ]


def test_jobs_passes_tag_q_and_sort() -> None:
    seen: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(dict(request.url.params))
        return httpx.Response(200, json={"items": [{"id": "job_1"}], "next_cursor": None})

    with client(handler) as c:
        assert [j["id"] for j in c.jobs(tag="baseline", q="r18", sort="-speedup")] == ["job_1"]
        list(c.jobs())
    assert seen[0] == {"tag": "baseline", "q": "r18", "sort": "-speedup", "limit": "200"}
    assert seen[1] == {"limit": "200"}


def test_a_refused_tag_raises_a_validation_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            422,
            json={
                "type": "about:blank",
                "title": "t",
                "status": 422,
                "detail": "tags: bad",
                "code": "validation_error",
            },
        )

    with client(handler) as c, pytest.raises(sc.ValidationError) as err:
        c.update_job("job_1", tags=["bad tag"])
    assert err.value.code == "validation_error"


@pytest.mark.e2e
def test_a_job_run_by_the_worker_carries_its_name_tags_and_result(
    embedded_service: Any, tmp_path: Path
) -> None:
    from tests.e2e.helpers import QUICK_BENCH, build_onnx

    spec = {
        "prune": {"target": {"macs_reduction": 0.4}, "iterative_steps": 2},
        "finetune": None,
        "benchmark": QUICK_BENCH,
    }
    with sc.Client(embedded_service.base_url, embedded_service.key_a, retries=2) as c:
        result = c.prune(
            build_onnx(tmp_path / "tiny.onnx"),
            spec,
            dest_dir=tmp_path / "out",
            timeout=240,
            name="tiny, 40% MACs",
            tags=["e2e"],
        )
        listed = list(c.jobs(tag="e2e", sort="-macs_reduction"))
    job, report = result.job, result.report
    assert (job["name"], job["tags"]) == ("tiny, 40% MACs", ["e2e"])
    expected = 1 - report["pruned"]["macs"] / report["original"]["macs"]
    assert job["result"]["macs_reduction"] == pytest.approx(expected)
    assert job["result"]["speedup"] == report["ratios"]["latency_speedup"]
    assert job["result"]["size_bytes"] == report["pruned"]["size_bytes"]
    assert [j["id"] for j in listed] == [job["id"]] and listed[0]["result"] == job["result"]
