"""Job names and tags (set at submission, changed by PATCH, filtered on), the list's sort
orders with their cursors, and the result summary a succeeded job carries."""

import copy
import json
import secrets
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.orm import sessionmaker

import secateurs_client as sc
from app.api.routes.jobs import SORT_KEYS, JobFilters, _read_page
from contract import JobSpec
from infra.db import jobstate
from infra.db.migrations import upgrade
from infra.db.models import Job, Model, utcnow
from infra.db.summary import summarize_report
from tests.app.helpers import AUTH_A, AUTH_B, KEY_A, assert_problem, upload_model
from tests.conftest import PG_HOST, PG_PORT, PG_USER

REPORT: dict[str, Any] = {
    "original": {
        "params": 1000,
        "macs": 50_000,
        "size_bytes": 4000,
        "accuracy": 0.9,
        "latency_ms": {"CPUExecutionProvider": {"1": {"p50": 1.4, "p90": 1.5}}},
    },
    "pruned": {
        "params": 400,
        "macs": 20_000,
        "size_bytes": 1600,
        "accuracy": 0.88,
        "latency_ms": {"CPUExecutionProvider": {"1": {"p50": 1.0, "p90": 1.1}}},
    },
    "ratios": {"macs": 2.5, "params": 2.5, "size": 2.5, "latency_speedup": 1.4},
    "fidelity": {"top1_agreement": 0.97, "max_abs_diff": 0.01, "cosine": 0.999},
    "layers": [],
    "history": [],
    "environment": {
        "torch": "2",
        "onnxruntime": "1",
        "device": "cpu",
        "providers": ["CPUExecutionProvider"],
    },
    "warnings": [{"code": "accuracy_drop", "message": "lost 2 points", "severity": "warning"}],
}


def report(
    speedup: float | None,
    accuracy: float | None = 0.88,
    agreement: float | None = 0.97,
    size: int = 1600,
) -> dict[str, Any]:
    r = copy.deepcopy(REPORT)
    r["ratios"]["latency_speedup"] = speedup
    r["pruned"].update(accuracy=accuracy, size_bytes=size)
    if accuracy is None:
        r["original"]["accuracy"] = None
    r["fidelity"]["top1_agreement"] = agreement
    return r


@pytest.fixture
def model_id(client):
    return upload_model(client).json()["id"]


def submit(client, model_id: str, **fields: Any) -> Any:
    return client.post("/v1/jobs", headers=AUTH_A, json={"model_id": model_id, **fields})


def succeed(app, job_id: str, result: dict[str, Any] | None) -> None:
    """The worker's end of a job: running, then the report with the succeeded status."""
    with app.state.sessionmaker() as session:
        job = session.get(Job, job_id)
        jobstate.set_status(session, job, "running")
        job.report = result
        jobstate.set_status(session, job, "succeeded")
        session.commit()


def ids(resp: Any) -> list[str]:
    assert resp.status_code == 200, resp.text
    return [j["id"] for j in resp.json()["items"]]


# Names and tags -----------------------------------------------------------------------------


def test_a_job_is_created_with_a_name_and_tags(client, app, model_id):
    resp = submit(
        client,
        model_id,
        name="  resnet18, half the MACs ",
        tags=[" baseline", "team=vision", "baseline", "v1.2"],
    )
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert job["name"] == "resnet18, half the MACs"
    assert job["tags"] == ["baseline", "team=vision", "v1.2"]
    assert job["result"] is None
    assert "name" not in job["spec"] and "tags" not in job["spec"]
    got = client.get(f"/v1/jobs/{job['id']}", headers=AUTH_A).json()
    assert (got["name"], got["tags"]) == (job["name"], job["tags"])
    listed = client.get("/v1/jobs", headers=AUTH_A).json()["items"][0]
    assert (listed["name"], listed["tags"]) == (job["name"], job["tags"])
    with app.state.sessionmaker() as session:
        assert session.get(Job, job["id"]).spec == JobSpec().model_dump(mode="json")


def test_without_a_name_or_tags_they_are_null_and_empty(client, model_id):
    job = submit(client, model_id, name="   ", tags=None).json()
    assert (job["name"], job["tags"]) == (None, [])
    job = submit(client, model_id).json()
    assert (job["name"], job["tags"]) == (None, [])


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"name": "x" * 101}, "name"),
        ({"name": "two\nlines"}, "name"),
        ({"name": 7}, "name"),
        ({"tags": "baseline"}, "tags"),
        ({"tags": ["ok", ""]}, "tags"),
        ({"tags": ["has space"]}, "tags"),
        ({"tags": ["-leading"]}, "tags"),
        ({"tags": ["t" * 33]}, "tags"),
        ({"tags": [f"t{i}" for i in range(11)]}, "tags"),
        ({"tags": [1]}, "tags.0"),
    ],
)
def test_bad_names_and_tags_are_refused(client, app, model_id, fields, field):
    problem = assert_problem(submit(client, model_id, **fields), 422, "validation_error")
    assert problem["errors"][0]["field"] == field, problem
    assert app.state.queue.sent == []


def test_an_idempotent_replay_must_carry_the_same_name(client, model_id):
    headers = {**AUTH_A, "Idempotency-Key": "names-1"}
    body = {"model_id": model_id, "name": "first", "tags": ["a"]}
    first = client.post("/v1/jobs", headers=headers, json=body)
    assert first.status_code == 202
    again = client.post("/v1/jobs", headers=headers, json=body)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    other = client.post("/v1/jobs", headers=headers, json={**body, "name": "second"})
    assert_problem(other, 422, "idempotency_key_reused")


def test_patch_renames_and_retags(client, model_id):
    job_id = submit(client, model_id, name="old", tags=["a", "b"]).json()["id"]
    url = f"/v1/jobs/{job_id}"
    resp = client.patch(url, headers=AUTH_A, json={"name": " new name "})
    assert resp.status_code == 200, resp.text
    assert (resp.json()["name"], resp.json()["tags"]) == ("new name", ["a", "b"])
    resp = client.patch(url, headers=AUTH_A, json={"tags": ["c", "c", "d"]})
    assert (resp.json()["name"], resp.json()["tags"]) == ("new name", ["c", "d"])
    assert client.patch(url, headers=AUTH_A, json={}).json()["tags"] == ["c", "d"]
    resp = client.patch(url, headers=AUTH_A, json={"name": None, "tags": None})
    assert (resp.json()["name"], resp.json()["tags"]) == (None, [])
    got = client.get(url, headers=AUTH_A).json()
    assert (got["name"], got["tags"], got["status"]) == (None, [], "queued")


def test_patch_works_in_any_status_and_leaves_the_rest(client, app, model_id):
    job_id = submit(client, model_id).json()["id"]
    succeed(app, job_id, report(1.4))
    resp = client.patch(f"/v1/jobs/{job_id}", headers=AUTH_A, json={"tags": ["kept"]})
    job = resp.json()
    assert (job["status"], job["tags"], job["progress"]) == ("succeeded", ["kept"], 1.0)
    assert job["result"]["speedup"] == 1.4
    assert (
        client.get(f"/v1/jobs/{job_id}/report", headers=AUTH_A).json()["ratios"]["latency_speedup"]
        == 1.4
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x" * 101}, "name"),
        ({"tags": ["bad tag"]}, "tags"),
        ({"status": "succeeded"}, "status"),
        ({"spec": {}}, "spec"),
    ],
)
def test_patch_refuses_bad_fields_and_anything_else(client, model_id, body, field):
    job_id = submit(client, model_id, name="kept").json()["id"]
    problem = assert_problem(
        client.patch(f"/v1/jobs/{job_id}", headers=AUTH_A, json=body), 422, "validation_error"
    )
    assert problem["errors"][0]["field"] == field
    assert client.get(f"/v1/jobs/{job_id}", headers=AUTH_A).json()["name"] == "kept"


def test_patch_on_another_tenants_or_no_job_is_404(client, model_id):
    job_id = submit(client, model_id, name="mine").json()["id"]
    assert_problem(
        client.patch(f"/v1/jobs/{job_id}", headers=AUTH_B, json={"name": "theirs"}),
        404,
        "not_found",
    )
    assert_problem(
        client.patch("/v1/jobs/job_nope", headers=AUTH_A, json={"name": "x"}), 404, "not_found"
    )
    assert client.get(f"/v1/jobs/{job_id}", headers=AUTH_A).json()["name"] == "mine"


def test_the_list_filters_by_tag_and_name(client, app, model_id):
    a = submit(client, model_id, name="ResNet 50% cut", tags=["baseline", "r50"]).json()["id"]
    b = submit(client, model_id, name="resnet deep cut", tags=["r50"]).json()["id"]
    c = submit(client, model_id, name="mobilenet", tags=["Baseline"]).json()["id"]
    d = submit(client, model_id).json()["id"]
    succeed(app, a, report(1.2))
    theirs = upload_model(client, headers=AUTH_B).json()["id"]
    bobs = client.post(
        "/v1/jobs", headers=AUTH_B, json={"model_id": theirs, "tags": ["r50"]}
    ).json()["id"]
    assert ids(client.get("/v1/jobs?tag=r50", headers=AUTH_A)) == [b, a]
    assert ids(client.get("/v1/jobs?tag=baseline", headers=AUTH_A)) == [a]  # case counts
    assert ids(client.get("/v1/jobs?tag=none", headers=AUTH_A)) == []
    assert ids(client.get("/v1/jobs?q=RESNET", headers=AUTH_A)) == [b, a]
    assert ids(client.get("/v1/jobs?q=50%25", headers=AUTH_A)) == [a]  # % is a character
    assert ids(client.get("/v1/jobs?q=_", headers=AUTH_A)) == []
    assert ids(client.get("/v1/jobs?q=%20", headers=AUTH_A)) == [d, c, b, a]  # blank: all
    assert ids(client.get("/v1/jobs?tag=r50&status=queued", headers=AUTH_A)) == [b]
    assert ids(client.get("/v1/jobs?tag=r50&q=deep", headers=AUTH_A)) == [b]
    assert ids(client.get("/v1/jobs?tag=r50", headers=AUTH_B)) == [bobs]
    assert_problem(client.get(f"/v1/jobs?tag={'t' * 33}", headers=AUTH_A), 422, "validation_error")


class ThroughApp(httpx.BaseTransport):
    """The Python client's requests, answered by the app through its test client."""

    def __init__(self, test_client: Any) -> None:
        self.test_client = test_client

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        answer = self.test_client.request(
            request.method, str(request.url), headers=dict(request.headers), content=request.read()
        )
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)


def test_the_python_client_names_tags_sorts_and_reads_results(client, app, model_id):
    with sc.Client("http://testserver", KEY_A, transport=ThroughApp(client)) as c:
        first = c.submit(model_id, {}, name="first", tags=["client"])
        second = c.submit(model_id, {}, tags=["client", "other"])
        assert (first["name"], first["tags"]) == ("first", ["client"])
        assert c.update_job(second["id"], name="second")["tags"] == ["client", "other"]
        succeed(app, first["id"], report(2.0))
        succeed(app, second["id"], report(3.0))
        listed = list(c.jobs(tag="client", sort="-speedup"))
        assert [j["name"] for j in listed] == ["second", "first"]
        assert [j["result"]["speedup"] for j in listed] == [3.0, 2.0]
        assert [j["id"] for j in c.jobs(q="firs")] == [first["id"]]
        with pytest.raises(sc.ValidationError):
            list(c.jobs(sort="colour"))


# Sorting ------------------------------------------------------------------------------------


@pytest.fixture
def ranked(client, app, model_id) -> dict[str, str]:
    """Five jobs: four succeeded with different figures, one still queued (no figures)."""
    figures = {
        "fast": report(3.0, accuracy=0.85, size=3000),
        "slow": report(1.1, accuracy=0.899, size=1000),
        "mid": report(2.0, accuracy=None, agreement=0.96, size=2000),
        "untimed": report(None, accuracy=0.87, size=1000),
    }
    made = {}
    for name, result in figures.items():
        made[name] = submit(client, model_id, name=name).json()["id"]
        succeed(app, made[name], result)
    made["queued"] = submit(client, model_id).json()["id"]
    return made


def walk(client, query: str, limit: int = 2) -> list[str]:
    """Every page of the list in `query`'s order, `limit` at a time."""
    out: list[str] = []
    cursor = None
    while True:
        url = f"/v1/jobs?{query}&limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        resp = client.get(url, headers=AUTH_A)
        assert resp.status_code == 200, resp.text
        out += [j["id"] for j in resp.json()["items"]]
        cursor = resp.json()["next_cursor"]
        if not cursor:
            return out


def test_the_list_sorts_by_any_key_across_pages(client, ranked):
    by = {v: k for k, v in ranked.items()}

    def order(sort: str) -> list[str]:
        return [by[i] for i in walk(client, f"sort={sort}")]

    newest = ["queued", "untimed", "mid", "slow", "fast"]
    assert (
        order("-created_at")
        == newest
        == [by[i] for i in ids(client.get("/v1/jobs", headers=AUTH_A))]
    )
    assert order("created_at") == newest[::-1]
    # Missing figures last either way, among themselves by id.
    missing = [by[i] for i in sorted([ranked["untimed"], ranked["queued"]])]
    assert order("-speedup") == ["fast", "mid", "slow"] + missing[::-1]
    assert order("speedup") == ["slow", "mid", "fast"] + missing
    # Smallest loss first; without labels, 96% agreement ranks as 4 points lost.
    assert order("-accuracy_change") == ["slow", "untimed", "mid", "fast", "queued"]
    # Equal sizes go by id, in the sort's direction.
    small = sorted([ranked["slow"], ranked["untimed"]])
    assert order("size_bytes")[:2] == [by[i] for i in small]
    assert order("-size_bytes")[2:] == [by[i] for i in small[::-1]] + ["queued"]
    assert order("size_bytes")[2:] == ["mid", "fast", "queued"]
    assert order("name") == ["fast", "mid", "slow", "untimed", "queued"]
    assert order("-name") == ["untimed", "slow", "mid", "fast", "queued"]
    assert order("-finished_at") == ["untimed", "mid", "slow", "fast", "queued"]
    assert order("-macs_reduction")[-1] == "queued"


def test_every_sort_key_walks_every_job_once(client, ranked):
    for sort in SORT_KEYS:
        for limit in (1, 3):
            seen = walk(client, f"sort={sort}", limit)
            assert sorted(seen) == sorted(ranked.values()), (sort, limit)


def test_sorting_combines_with_filters(client, ranked):
    assert ids(client.get("/v1/jobs?sort=speedup&status=succeeded&q=S", headers=AUTH_A)) == [
        ranked["slow"],
        ranked["fast"],
    ]


def test_bad_sort_keys_and_foreign_cursors_are_refused(client, ranked):
    problem = assert_problem(
        client.get("/v1/jobs?sort=colour", headers=AUTH_A), 422, "validation_error"
    )
    assert problem["errors"][0]["field"] == "sort"
    assert "-created_at" in problem["detail"]
    page = client.get("/v1/jobs?sort=speedup&limit=1", headers=AUTH_A).json()
    problem = assert_problem(
        client.get(f"/v1/jobs?sort=name&cursor={page['next_cursor']}", headers=AUTH_A),
        422,
        "validation_error",
    )
    assert problem["errors"][0]["field"] == "cursor" and "sort=speedup" in problem["detail"]
    assert_problem(
        client.get("/v1/jobs?sort=name&cursor=bm90LWpzb24", headers=AUTH_A), 422, "validation_error"
    )


def test_the_sort_keys_are_documented(app):
    params = app.openapi()["paths"]["/v1/jobs"]["get"]["parameters"]
    sort = next(p for p in params if p["name"] == "sort")
    assert set(sort["schema"]["enum"]) == set(SORT_KEYS)
    assert sort["schema"]["default"] == "-created_at"
    assert "ascending" in sort["description"]
    assert {"tag", "q"} <= {p["name"] for p in params}
    assert "/v1/jobs/{job_id}" in app.openapi()["paths"]
    assert "patch" in app.openapi()["paths"]["/v1/jobs/{job_id}"]


# The result summary -------------------------------------------------------------------------


def test_a_succeeded_job_carries_its_result(client, app, model_id):
    job_id = submit(client, model_id).json()["id"]
    assert client.get(f"/v1/jobs/{job_id}", headers=AUTH_A).json()["result"] is None
    succeed(app, job_id, REPORT)
    expected = {
        "macs_reduction": 0.6,
        "params_reduction": 0.6,
        "speedup": 1.4,
        "accuracy_change": pytest.approx(-0.02),
        "agreement": 0.97,
        "size_bytes": 1600,
        "int8": False,
        "warnings": 1,
    }
    assert client.get(f"/v1/jobs/{job_id}", headers=AUTH_A).json()["result"] == expected
    listed = client.get("/v1/jobs", headers=AUTH_A).json()["items"][0]
    assert listed["result"] == expected
    with app.state.sessionmaker() as session:  # kept in its own column
        assert session.get(Job, job_id).result["speedup"] == 1.4


def test_the_result_of_an_int8_job_has_the_int8_size():
    r = copy.deepcopy(REPORT)
    r["quantization"] = {"applied": True, "size_bytes": {"pruned_fp32": 1600, "int8": 450}}
    assert summarize_report(r)["size_bytes"] == 450 and summarize_report(r)["int8"] is True
    r["quantization"]["applied"] = False
    assert summarize_report(r)["size_bytes"] == 1600 and summarize_report(r)["int8"] is False
    assert summarize_report(None) is None
    assert summarize_report({"original": {"macs": 0}})["macs_reduction"] is None


def test_failed_and_cancelled_jobs_have_no_result(client, app, model_id):
    job_id = submit(client, model_id).json()["id"]
    with app.state.sessionmaker() as session:
        jobstate.set_status(
            session,
            session.get(Job, job_id),
            "failed",
            error_code="prune_failed",
            error_message="no",
        )
        session.commit()
    assert client.get(f"/v1/jobs/{job_id}", headers=AUTH_A).json()["result"] is None


# The same list queries on PostgreSQL, and the migration that adds the columns ---------------


def _seed(engine: Engine) -> sessionmaker:
    factory = sessionmaker(engine)
    now = utcnow()
    with factory() as s:
        s.add(
            Model(
                id="mdl_1",
                tenant="t",
                name="m",
                format="onnx",
                arch=None,
                sha256="0" * 64,
                size_bytes=1,
                storage_key="k",
                input_shape=[1],
                inputs=[],
                outputs=[],
                stats={},
            )
        )
        s.flush()
        for i, (speedup, tags) in enumerate(
            [(2.0, ["a"]), (None, ["a", "b"]), (3.0, []), (1.5, ["b"])]
        ):
            job = Job(
                id=f"job_{i}",
                tenant="t",
                model_id="mdl_1",
                spec=JobSpec().model_dump(mode="json"),
                status="succeeded",
                stage_times={},
                created_at=now + timedelta(seconds=i),
                finished_at=now + timedelta(seconds=10 - i),
                name=f"Job {i}",
                tags=tags,
            )
            job.report = report(speedup)
            s.add(job)
        s.add(
            Job(
                id="job_9",
                tenant="t",
                model_id="mdl_1",
                spec={},
                status="queued",
                stage_times={},
                created_at=now,
                tags=None,
            )
        )
        s.commit()
    return factory


def ids_of(page: dict[str, Any]) -> list[str]:
    return [j["id"] for j in page["items"]]


def _page(
    factory: sessionmaker, sort: str, cursor: str | None = None, limit: int = 2, **filters: Any
) -> dict[str, Any]:
    return json.loads(_read_page(factory, "t", JobFilters(**filters), limit, cursor, sort))


@pytest.fixture
def store(request: pytest.FixtureRequest, tmp_path) -> Iterator[Engine]:
    from infra.db.session import make_engine

    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
        yield engine
        engine.dispose()
        return
    import psycopg

    server = request.getfixturevalue("postgres_server")
    name = f"secateurs_names_{secrets.token_hex(4)}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    engine = make_engine(f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}")
    yield engine
    engine.dispose()
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.parametrize("store", ["sqlite", "postgresql"], indirect=True)
def test_tag_filter_and_sorted_paging_on_each_database(store):
    upgrade(store)
    factory = _seed(store)
    assert ids_of(_page(factory, "-created_at", limit=10, tag="a")) == ["job_1", "job_0"]
    assert ids_of(_page(factory, "-created_at", limit=10, tag="b")) == ["job_3", "job_1"]
    assert ids_of(_page(factory, "-created_at", limit=10, q="JOB 2")) == ["job_2"]
    first = _page(factory, "-speedup")
    assert ids_of(first) == ["job_2", "job_0"]
    second = _page(factory, "-speedup", first["next_cursor"])
    assert ids_of(second) == ["job_3", "job_9"]  # no figure: last, by id
    third = _page(factory, "-speedup", second["next_cursor"])
    assert ids_of(third) == ["job_1"] and third["next_cursor"] is None
    walked, cursor = [], None
    while True:
        page = _page(factory, "finished_at", cursor, limit=1)
        walked += ids_of(page)
        if not (cursor := page["next_cursor"]):
            break
    assert walked == ["job_3", "job_2", "job_1", "job_0", "job_9"]
    assert _page(factory, "-speedup", limit=10)["items"][0]["result"]["speedup"] == 3.0


@pytest.mark.parametrize("store", ["sqlite", "postgresql"], indirect=True)
def test_the_migration_fills_in_the_results_of_earlier_jobs(store):
    upgrade(store, "0002")
    spec = JobSpec().model_dump_json()
    with store.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO models (id, tenant, name, format, sha256, size_bytes, "
                "storage_key, input_shape, inputs, outputs, stats, created_at) "
                "VALUES ('mdl_1', 't', 'm', 'onnx', 'x', 1, 'k', '[1]', '[]', '[]',"
                " '{}', CURRENT_TIMESTAMP)"
            )
        )
        for job_id, status, body in [
            ("job_ok", "succeeded", REPORT),
            ("job_failed", "failed", None),
        ]:
            conn.execute(
                text(
                    "INSERT INTO jobs (id, tenant, model_id, spec, status, progress, attempts,"
                    " cancel_requested, report, stage_times, created_at, updated_at) VALUES "
                    "(:id, 't', 'mdl_1', :spec, :status, 1.0, 1, false, :report, '{}', "
                    "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                ),
                {
                    "id": job_id,
                    "spec": spec,
                    "status": status,
                    "report": None if body is None else json.dumps(body),
                },
            )
    upgrade(store)
    with sessionmaker(store)() as s:
        ok, failed = s.get(Job, "job_ok"), s.get(Job, "job_failed")
        assert ok.result == summarize_report(REPORT)
        assert (ok.name, ok.tags) == (None, None)
        assert failed.result is None


def test_lists_reads_and_patches_never_read_the_report_column(client, app, model_id):
    job_id = submit(client, model_id, tags=["t"]).json()["id"]
    succeed(app, job_id, REPORT)
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(app.state.engine, "before_cursor_execute", record)
    try:
        for url in (
            "/v1/jobs",
            "/v1/jobs?sort=-speedup&tag=t&q=x",
            "/v1/jobs?sort=name",
            f"/v1/jobs/{job_id}",
        ):
            assert client.get(url, headers=AUTH_A).status_code == 200
        assert (
            client.patch(f"/v1/jobs/{job_id}", headers=AUTH_A, json={"name": "n"}).status_code
            == 200
        )
    finally:
        event.remove(app.state.engine, "before_cursor_execute", record)
    reads = [s for s in statements if "FROM jobs" in s]
    assert reads and not [s for s in reads if "jobs.report" in s]
