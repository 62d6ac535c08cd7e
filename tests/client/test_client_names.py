"""The client's job names, tags, sort and update against a scripted service
(httpx.MockTransport)."""

import json
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
        c.submit("mdl_1", {"prune": {"target": {"macs_reduction": 0.5}}}, name="r18 half",
                 tags=("baseline", "r18"))
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
    assert sent == [("PATCH", "/v1/jobs/job_1", {"name": "renamed"}),
                    ("PATCH", "/v1/jobs/job_1", {"tags": ["a"]}),
                    ("PATCH", "/v1/jobs/job_1", {"name": None, "tags": None})]


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
        return httpx.Response(422, json={"type": "about:blank", "title": "t", "status": 422,
                                         "detail": "tags: bad", "code": "validation_error"})

    with client(handler) as c, pytest.raises(sc.ValidationError) as err:
        c.update_job("job_1", tags=["bad tag"])
    assert err.value.code == "validation_error"
