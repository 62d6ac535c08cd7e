"""The Python client against a scripted service (httpx.MockTransport): retries and
Retry-After, typed errors, Idempotency-Key, re-opened uploads, checksums, and `wait`
over the event stream (resumed with Last-Event-ID) or by polling."""

import hashlib
import io
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import secateurs_client as sc
from secateurs_client import _http

Handler = Callable[[httpx.Request], httpx.Response]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every wait the client makes, recorded instead of slept."""
    waited: list[float] = []
    monkeypatch.setattr(_http, "_sleep", waited.append)
    return waited


def client(handler: Handler, **kwargs: Any) -> sc.Client:
    return sc.Client("http://svc", "sk_test", transport=httpx.MockTransport(handler), **kwargs)


def problem(status: int, code: str, detail: str = "no", **headers: str) -> httpx.Response:
    return httpx.Response(
        status,
        headers=headers,
        json={
            "type": "about:blank",
            "title": "t",
            "status": status,
            "detail": detail,
            "code": code,
        },
    )


def job(status: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": "job_1",
        "status": status,
        "stage": None,
        "progress": 0.0,
        "error": None,
        **fields,
    }


def sse(*events: tuple[str, str | None, dict[str, Any]]) -> bytes:
    out = [": ping\r\n\r\n"]
    for name, event_id, data in events:
        out.append(
            f"event: {name}\r\n"
            + (f"id: {event_id}\r\n" if event_id else "")
            + f"data: {json.dumps(data)}\r\n\r\n"
        )
    return "".join(out).encode()


class Dropping(httpx.SyncByteStream):
    """A response body that breaks after its first chunk, as a lost connection does."""

    def __init__(self, first: bytes) -> None:
        self.first = first

    def __iter__(self) -> Iterator[bytes]:
        yield self.first
        raise httpx.ReadError("connection reset")


# Retries -----------------------------------------------------------------------------------


def test_retries_503_with_growing_jittered_backoff(sleeps: list[float]) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) < 4:
            return problem(503, "not_ready")
        return httpx.Response(200, json=job("queued"))

    with client(handler, retries=5, backoff=1.0) as c:
        assert c.get_job("job_1")["status"] == "queued"
    assert len(calls) == 4 and len(sleeps) == 3
    assert all(0 <= s <= cap for s, cap in zip(sleeps, (1, 2, 4), strict=True))
    assert calls[0].headers["authorization"] == "Bearer sk_test"


def test_retry_after_is_honoured(sleeps: list[float]) -> None:
    answers = iter(
        [
            problem(429, "too_many_jobs", **{"Retry-After": "7"}),
            httpx.Response(202, json=job("queued")),
        ]
    )
    with client(lambda r: next(answers)) as c:
        c.submit("mdl_1", {})
    assert sleeps == [7.0]


def test_attempts_are_bounded(sleeps: list[float]) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return problem(502, "bad_gateway")

    with client(handler, retries=2) as c, pytest.raises(sc.Unavailable) as err:
        c.get_job("job_1")
    assert len(calls) == 3 and len(sleeps) == 2
    assert (err.value.status, err.value.code) == (502, "bad_gateway")


def test_connection_errors_are_retried_then_raised(sleeps: list[float]) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) < 3:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json=job("running"))

    with client(handler, retries=3) as c:
        assert c.get_job("job_1")["status"] == "running"

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with client(down, retries=1) as c, pytest.raises(sc.ConnectionFailed) as err:
        c.get_job("job_1")
    assert isinstance(err.value, sc.Unavailable) and err.value.status is None


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, sc.ValidationError),
        (401, sc.AuthError),
        (404, sc.NotFound),
        (409, sc.Conflict),
        (413, sc.PayloadTooLarge),
        (422, sc.ValidationError),
        (507, sc.Unavailable),
    ],
)
def test_problem_json_becomes_a_typed_error(
    sleeps: list[float], status: int, cls: type[sc.SecateursError]
) -> None:
    with (
        client(lambda r: problem(status, "some_code", "the detail")) as c,
        pytest.raises(cls) as err,
    ):
        c.get_job("job_1")
    assert (err.value.status, err.value.code, err.value.detail) == (
        status,
        "some_code",
        "the detail",
    )
    assert isinstance(err.value, sc.SecateursError) and sleeps == []  # not retried


def test_an_error_without_problem_json_still_has_a_code() -> None:
    with (
        client(lambda r: httpx.Response(500, text="oops")) as c,
        pytest.raises(sc.SecateursError) as err,
    ):
        c.get_job("job_1")
    assert (err.value.status, err.value.code) == (500, "http_500")


# Submit and uploads ------------------------------------------------------------------------


def test_a_retried_submit_sends_the_same_idempotency_key(sleeps: list[float]) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:
            raise httpx.ReadError("connection reset", request=request)
        return httpx.Response(200, json=job("queued"))

    with client(handler) as c:
        c.submit("mdl_1", {"prune": {"target": {"macs_reduction": 0.5}}}, dataset_id="ds_1")
        c.submit("mdl_1", {}, idempotency_key="mine")
    keys = [r.headers["idempotency-key"] for r in seen]
    assert keys[0] == keys[1] and keys[0] and keys[2] == "mine"
    assert json.loads(seen[0].content) == {
        "prune": {"target": {"macs_reduction": 0.5}},
        "model_id": "mdl_1",
        "dataset_id": "ds_1",
    }


def test_an_upload_is_retried_from_the_start_of_the_file(
    tmp_path: Path, sleeps: list[float]
) -> None:
    path = tmp_path / "tiny.onnx"
    path.write_bytes(b"\x08\x07" + bytes(range(256)) * 64)
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(request.read())
        if len(bodies) == 1:
            return problem(503, "not_ready")
        return httpx.Response(201, json={"id": "mdl_1"})

    with client(handler) as c:
        assert c.upload_model(path, name="tiny", input_shape=(1, 3, 32, 32))["id"] == "mdl_1"
    assert len(bodies) == 2 and len(bodies[0]) == len(bodies[1])
    assert all(path.read_bytes() in body for body in bodies)
    assert b'name="input_shape"\r\n\r\n1,3,32,32' in bodies[1]
    assert b'name="arch"' not in bodies[1]


# Downloads ---------------------------------------------------------------------------------

ONNX = b"pruned model bytes" * 1000
SHA = hashlib.sha256(ONNX).hexdigest()


def test_download_checks_the_etag(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/jobs/job_1/artifacts/model.onnx"
        return httpx.Response(200, content=ONNX, headers={"ETag": f'"{SHA}"'})

    with client(handler) as c:
        assert c.download("job_1", "model.onnx", tmp_path) == tmp_path / "model.onnx"
    assert (tmp_path / "model.onnx").read_bytes() == ONNX


def test_a_checksum_mismatch_raises_and_leaves_no_file(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=ONNX[:-1] + b"!", headers={"ETag": f'"{SHA}"'})

    with client(handler) as c, pytest.raises(sc.ChecksumMismatch) as err:
        c.download("job_1", "model.onnx", tmp_path / "out.onnx")
    assert err.value.code == "checksum_mismatch"
    assert list(tmp_path.iterdir()) == []


def test_without_an_etag_the_artifact_listing_gives_the_sha(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/artifacts"):
            return httpx.Response(200, json=[{"name": "model.onnx", "sha256": "0" * 64}])
        return httpx.Response(200, content=ONNX)

    with client(handler) as c, pytest.raises(sc.ChecksumMismatch):
        c.download("job_1", "model.onnx", tmp_path / "m.onnx")


def test_a_download_cut_off_mid_way_starts_again(tmp_path: Path, sleeps: list[float]) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) == 1:
            return httpx.Response(200, stream=Dropping(ONNX[:100]), headers={"ETag": SHA})
        return httpx.Response(200, content=ONNX, headers={"ETag": SHA})

    with client(handler) as c:
        c.download("job_1", "model.onnx", tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").read_bytes() == ONNX and len(calls) == 2


# wait: events, resume, polling -------------------------------------------------------------


def test_wait_resumes_the_stream_with_last_event_id(sleeps: list[float]) -> None:
    streams: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            streams.append(request)
            sse_headers = {"content-type": "text/event-stream"}
            if len(streams) == 1:
                first = sse(
                    ("status", "5", job("running", stage="loading", progress=0.1)),
                    ("progress", "6", {"stage": "pruning", "progress": 0.4}),
                )
                return httpx.Response(200, headers=sse_headers, stream=Dropping(first))
            return httpx.Response(
                200,
                headers=sse_headers,
                content=sse(
                    ("status", None, job("running", stage="pruning", progress=0.4)),
                    ("progress", "7", {"stage": "exporting", "progress": 0.9}),
                    ("status", "8", job("succeeded", stage="exporting", progress=1.0)),
                ),
            )
        return httpx.Response(200, json=job("succeeded", progress=1.0))

    seen: list[dict[str, Any]] = []
    with client(handler) as c:
        assert c.wait("job_1", progress=seen.append)["status"] == "succeeded"
    assert "last-event-id" not in streams[0].headers
    assert streams[1].headers["last-event-id"] == "6"
    assert [s["stage"] for s in seen] == ["loading", "pruning", "pruning", "exporting", "exporting"]
    assert seen[-1]["status"] == "succeeded" and len(sleeps) == 1


def test_wait_polls_when_streams_are_refused(sleeps: list[float]) -> None:
    states = iter(["queued", "running", "succeeded"])
    paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        if request.url.path.endswith("/events"):
            return problem(429, "too_many_streams", **{"Retry-After": "10"})
        return httpx.Response(200, json=job(next(states)))

    with client(handler, poll_interval=1.5) as c:
        assert c.wait("job_1")["status"] == "succeeded"
    assert paths.count("/v1/jobs/job_1/events") == 1  # refused at once, not waited for
    assert paths.count("/v1/jobs/job_1") == 3 and sleeps == [1.5, 1.5]


def test_wait_polls_when_the_stream_keeps_dropping(sleeps: list[float]) -> None:
    streams = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            streams.append(request)
            return httpx.Response(
                200,
                headers={"content-type": "text/event-stream"},
                stream=Dropping(b": ping\r\n\r\n"),
            )
        return httpx.Response(200, json=job("succeeded"))

    with client(handler) as c:
        assert c.wait("job_1")["status"] == "succeeded"
    assert len(streams) == 3  # then it polled


def test_wait_polls_when_the_service_cannot_be_reached_for_a_stream(sleeps: list[float]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json=job("succeeded"))

    with client(handler, retries=1) as c:
        assert c.wait("job_1")["status"] == "succeeded"


def test_a_failed_job_raises_job_failed(sleeps: list[float]) -> None:
    failed = job("failed", error={"code": "pruning_failed", "message": "no prunable layer"})

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            return httpx.Response(
                200,
                headers={"content-type": "text/event-stream"},
                content=sse(("status", "3", failed)),
            )
        return httpx.Response(200, json=failed)

    with client(handler) as c, pytest.raises(sc.JobFailed) as err:
        c.wait("job_1")
    assert (err.value.code, err.value.detail) == ("pruning_failed", "no prunable layer")
    assert err.value.job["status"] == "failed"


def test_wait_on_an_unknown_job_raises_not_found() -> None:
    with client(lambda r: problem(404, "not_found")) as c, pytest.raises(sc.NotFound):
        c.wait("job_1")


def test_wait_times_out(sleeps: list[float]) -> None:
    def polled(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            return httpx.Response(200, json={"not": "a stream"})
        return httpx.Response(200, json=job("running"))

    with client(polled) as c, pytest.raises(sc.WaitTimeout):
        c.wait("job_1", timeout=0)

    def streamed(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            headers={"content-type": "text/event-stream"},
            content=sse(
                *[
                    ("progress", str(i), {"stage": "pruning", "progress": i / 100})
                    for i in range(50)
                ]
            ),
        )

    with client(streamed) as c, pytest.raises(sc.WaitTimeout):
        c.wait("job_1", timeout=0)


def test_prune_runs_the_whole_flow(tmp_path: Path, sleeps: list[float]) -> None:
    report = {"ratios": {"macs": 2.0}}
    routes: dict[tuple[str, str], Callable[[], httpx.Response]] = {
        ("POST", "/v1/models"): lambda: httpx.Response(201, json={"id": "mdl_1"}),
        ("POST", "/v1/datasets"): lambda: httpx.Response(201, json={"id": "ds_1"}),
        ("POST", "/v1/jobs"): lambda: httpx.Response(202, json=job("queued")),
        ("GET", "/v1/jobs/job_1/events"): lambda: httpx.Response(
            200,
            headers={"content-type": "text/event-stream"},
            content=sse(("status", "9", job("succeeded"))),
        ),
        ("GET", "/v1/jobs/job_1"): lambda: httpx.Response(200, json=job("succeeded")),
        ("GET", "/v1/jobs/job_1/artifacts"): lambda: httpx.Response(
            200,
            json=[{"name": "model.onnx", "sha256": SHA}, {"name": "report.json", "sha256": "x"}],
        ),
        ("GET", "/v1/jobs/job_1/artifacts/model.onnx"): lambda: httpx.Response(
            200, content=ONNX, headers={"ETag": f'"{SHA}"'}
        ),
        ("GET", "/v1/jobs/job_1/artifacts/report.json"): lambda: httpx.Response(
            200,
            content=json.dumps(report).encode(),
            headers={"ETag": hashlib.sha256(json.dumps(report).encode()).hexdigest()},
        ),
        ("GET", "/v1/jobs/job_1/report"): lambda: httpx.Response(200, json=report),
    }
    (tmp_path / "m.onnx").write_bytes(b"model")
    (tmp_path / "d.npz").write_bytes(b"data")
    with client(lambda r: routes[r.method, r.url.path]()) as c:
        result = c.prune(
            tmp_path / "m.onnx",
            {"finetune": None},
            dataset_path=tmp_path / "d.npz",
            dest_dir=tmp_path / "out",
        )
    assert result.model_path.read_bytes() == ONNX
    assert set(result.artifacts) == {"model.onnx", "report.json"}
    assert result.report == report and result.dataset == {"id": "ds_1"}


# Small parts -------------------------------------------------------------------------------


def test_parse_events_follows_the_sse_format() -> None:
    lines = [
        ": ping",
        "event: progress",
        "id: 4",
        'data: {"a":',
        "data: 1}",
        "",
        "data: not json",
        "",
        'data: {"b": 2}',
        "",
    ]
    assert list(sc.parse_events(lines)) == [
        sc.Event("progress", "4", {"a": 1}),
        sc.Event("message", None, {"b": 2}),
    ]


def test_terminal_progress_rewrites_one_line() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    show = sc.TerminalProgress(out)
    show({"status": "running", "stage": "pruning", "progress": 0.5})
    show({"status": "succeeded", "stage": "exporting", "progress": 1.0})
    show.close()
    text = out.getvalue()
    assert text.count("\r") == 2 and text.endswith("100.0%\n") and " 50.0%" in text


def test_the_client_imports_neither_the_service_nor_torch() -> None:
    code = (
        "import sys, secateurs_client; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'app', 'worker', 'contract', 'torch', 'numpy', 'pydantic'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


# Listing and deleting ----------------------------------------------------------------------


def test_jobs_walks_every_page_with_its_filters() -> None:
    seen: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        seen.append(params)
        if "cursor" not in params:
            return httpx.Response(200, json={"items": [{"id": "job_2"}], "next_cursor": "c1"})
        return httpx.Response(200, json={"items": [{"id": "job_1"}], "next_cursor": None})

    with client(handler) as c:
        assert [j["id"] for j in c.jobs(model_id="mdl_1", status="succeeded")] == ["job_2", "job_1"]
    assert seen[0]["model_id"] == "mdl_1" and seen[0]["status"] == "succeeded"
    assert "dataset_id" not in seen[0] and seen[1]["cursor"] == "c1"


def test_deleting_a_running_job_raises_conflict() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.method == "DELETE" and request.url.path == "/v1/jobs/job_1"
        return problem(409, "job_not_finished")

    with client(handler) as c, pytest.raises(sc.Conflict) as err:
        c.delete_job("job_1")
    assert err.value.code == "job_not_finished"
