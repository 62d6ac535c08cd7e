"""One tenant's load must not starve another, on a real `secateurs api` (SQLite, no
worker): open event streams (capped per tenant, holding no database connection while
idle), concurrent submits against the job cap, and a burst of junk uploads, each while
the other tenant's `GET /v1/jobs` keeps being served fast (p99 200 ms; 500 ms
while the burst of uploads competes for the same cores)."""

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from app.core.pools import EVENT_THREADS
from tests.conftest import ROOT
from tests.security.apiserver import OPERATOR_KEY, Api, p99, running_api
from tests.security.helpers import assert_problem

STREAM_CAP = 8
JOB_CAP = 5
P99_LIMIT_S = 0.2
# During the upload burst the attacker's 50 clients, the server and bob's client share
# the same cores, so bob's reads wait for CPU, not for alice's turn: the starvation this
# test guards against stalled him for 102 s; half a second still proves he is served.
BURST_P99_LIMIT_S = 0.5


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with running_api(
        tmp_path_factory.mktemp("fairness") / "data",
        max_event_streams_per_tenant=str(STREAM_CAP),
        max_concurrent_jobs_per_tenant=str(JOB_CAP),
        metrics_key=OPERATOR_KEY,
        min_free_disk_bytes=str(1 << 20),
    ) as server:
        yield server


def _latencies(
    client: httpx.Client, path: str, count: int, until: threading.Event | None = None
) -> list[float]:
    """Time `count` GETs of `path` one after another (or until `until` is set)."""
    samples: list[float] = []
    while len(samples) < count and not (until is not None and until.is_set()):
        started = time.perf_counter()
        resp = client.get(path)
        samples.append(time.perf_counter() - started)
        assert resp.status_code == 200, resp.text
        time.sleep(0.01)
    return samples


def _metric(api: Api, name: str) -> float:
    text = httpx.get(
        f"{api.base_url}/metrics", timeout=10, headers={"Authorization": f"Bearer {OPERATOR_KEY}"}
    ).text
    line = next(ln for ln in text.splitlines() if ln.startswith(name + " "))
    return float(line.split()[1])


def _open_stream(api: Api, key: str, job_id: str) -> tuple[httpx.Client, httpx.Response]:
    client = api.client(key, timeout=httpx.Timeout(10, read=120))
    resp = client.send(client.build_request("GET", f"/v1/jobs/{job_id}/events"), stream=True)
    return client, resp


def _close(streams: list[tuple[httpx.Client, httpx.Response]]) -> None:
    for client, resp in streams:
        resp.close()
        client.close()


def _wait_for_metric(api: Api, name: str, value: float, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while _metric(api, name) != value:
        assert time.monotonic() < deadline, f"{name} never became {value}"
        time.sleep(0.1)


def test_open_streams_are_capped_and_do_not_starve_another_tenant(api: Api) -> None:
    model = api.add_model("alice")
    jobs = [api.add_job("alice", model) for _ in range(3)]  # queued for good: no worker
    streams = [_open_stream(api, api.key_a, jobs[i % 3]) for i in range(STREAM_CAP)]
    try:
        assert [resp.status_code for _, resp in streams] == [200] * STREAM_CAP
        # 45 streams made the other tenant wait 27 s: past the cap, 429 at once.
        with api.client(api.key_a) as client:
            for _ in range(12):
                resp = client.get(f"/v1/jobs/{jobs[0]}/events")
                assert_problem(resp, 429, "too_many_streams")
                assert int(resp.headers["Retry-After"]) >= 1
        # The cap is per tenant: bob streams his own job, and reads his jobs quickly.
        bob_job = api.add_job("bob", api.add_model("bob"))
        streams.append(_open_stream(api, api.key_b, bob_job))
        assert streams[-1][1].status_code == 200
        with api.client(api.key_b) as bob:
            latencies = _latencies(bob, "/v1/jobs", 150)
        assert p99(latencies) <= P99_LIMIT_S, sorted(latencies)[-5:]
        # Idle streams hold no job-store connection: the polls share the events pool.
        assert _metric(api, "secateurs_event_streams_open") == STREAM_CAP + 1
        assert _metric(api, "secateurs_db_connections_in_use") <= EVENT_THREADS
    finally:
        _close(streams)
    # A closed stream gives its slot back.
    _wait_for_metric(api, "secateurs_event_streams_open", 0)
    again = [_open_stream(api, api.key_a, jobs[0]) for _ in range(STREAM_CAP)]
    try:
        assert [resp.status_code for _, resp in again] == [200] * STREAM_CAP
    finally:
        _close(again)


def _submit_at_once(api: Api, tenant: str, model_id: str, count: int) -> list[httpx.Response]:
    barrier = threading.Barrier(count)

    def submit(_: int) -> httpx.Response:
        with api.client(api.keys[tenant]) as client:
            barrier.wait()
            return client.post("/v1/jobs", json={"model_id": model_id})

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(submit, range(count)))


def _active_jobs(api: Api, tenant: str) -> int:
    from sqlalchemy import func, select

    from infra.db.models import Job

    with api.sessions()() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(Job)
                .where(Job.tenant == tenant, Job.status.in_(("queued", "running")))
            )
            or 0
        )


def assert_cap_holds(api: Api, tenant: str) -> None:
    """30 submits at once against a cap of JOB_CAP: exactly JOB_CAP are accepted."""
    responses = _submit_at_once(api, tenant, api.add_model(tenant), 30)
    codes = sorted(r.status_code for r in responses)
    assert codes == [202] * JOB_CAP + [429] * (30 - JOB_CAP), codes
    for resp in responses:
        if resp.status_code == 429:
            assert_problem(resp, 429, "too_many_jobs")
    assert _active_jobs(api, tenant) == JOB_CAP


def test_concurrent_submits_never_exceed_the_job_cap_sqlite(api: Api) -> None:
    assert_cap_holds(api, "dave")


def test_concurrent_submits_never_exceed_the_job_cap_postgresql(
    postgres_url: str, tmp_path: Path
) -> None:
    with running_api(
        tmp_path / "data",
        database_url=postgres_url,
        max_concurrent_jobs_per_tenant=str(JOB_CAP),
        min_free_disk_bytes=str(1 << 20),
    ) as server:
        assert_cap_holds(server, "dave")


# Uploads `count` files of random bytes at once, each over its own connection, from a
# process of its own (so that its work does not slow the measuring client down).
_ATTACK = """
import os, sys
from concurrent.futures import ThreadPoolExecutor
import httpx
base, key, count, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def one(i):
    with httpx.Client(base_url=base, headers={"Authorization": "Bearer " + key},
                      timeout=600) as client:
        files = {"file": (f"junk{i}.onnx", os.urandom(size))}
        return client.post("/v1/models", files=files).status_code
with ThreadPoolExecutor(count) as pool:
    print(sorted(pool.map(one, range(count))))
"""


def test_junk_uploads_do_not_starve_another_tenant(api: Api) -> None:
    """50 concurrent uploads of 32 MiB of random bytes by alice (45 of them stalled
    another tenant's GET /v1/jobs?limit=1 to 102 s): alice's uploads take turns, bob's
    p99 stays under half a second, and every upload is answered."""
    attack = subprocess.Popen(
        [sys.executable, "-c", _ATTACK, api.base_url, api.key_a, "50", str(32 << 20)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    done = threading.Event()
    threading.Thread(target=lambda: (attack.wait(), done.set()), daemon=True).start()
    try:
        with api.client(api.key_b) as bob:
            time.sleep(0.5)  # the uploads are under way
            latencies = _latencies(bob, "/v1/jobs?limit=1", 400, until=done)
    finally:
        out, _ = attack.communicate(timeout=600)
    codes = out.strip().splitlines()[-1] if out.strip() else out
    assert attack.returncode == 0, out[-2000:]
    print(
        f"bob's GET /v1/jobs during the burst: n={len(latencies)} "
        f"p99={p99(latencies) * 1000:.0f} ms; alice's answers: {codes}"
    )
    assert "500" not in codes and "429" not in codes, codes
    assert len(latencies) >= 20, (len(latencies), codes)
    assert p99(latencies) <= BURST_P99_LIMIT_S, (p99(latencies), sorted(latencies)[-5:], codes)


def test_an_upload_beyond_the_tenants_turns_waits_then_gets_429(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """With one turn per tenant, alice's second upload waits (its body unread) while her
    first is still arriving, and is refused once the wait is over; bob's goes through."""
    with running_api(
        tmp_path_factory.mktemp("turns") / "data",
        max_uploads_per_tenant="1",
        upload_turn_wait_s="1.5",
    ) as server:
        boundary = "slow"
        part = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="m.onnx"\r\n\r\n'
        ).encode()
        head = (
            f"POST /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.key_a}"
            f"\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(part) + 100_000}\r\n\r\n"
        ).encode() + part
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as first:
            first.sendall(head + b"x" * 1000)  # holds alice's only turn
            time.sleep(0.3)
            small = {"file": ("m.onnx", b"\x08" * 1000)}
            with server.client(server.key_a) as alice:
                started = time.monotonic()
                refused = alice.post("/v1/models", files=small)
                waited = time.monotonic() - started
            with server.client(server.key_b) as bob:
                other = bob.post("/v1/models", files=small)
        assert_problem(refused, 429, "too_many_uploads")
        assert refused.headers["Retry-After"]
        assert 1.4 <= waited < 10, waited
        assert other.status_code == 422, other.text  # inspected (junk), not made to wait
