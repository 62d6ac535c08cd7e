"""Limits of the HTTP layer on a real `secateurs api`: slow clients dropped, odd static
paths, /metrics for operators only, failed keys throttled per address, the per-tenant
storage quota, and a full data disk (507 and /readyz 503, never a 500)."""

import contextlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from app.main import create_app
from app.uploads import commit_upload_row
from infra.config import Settings
from tests.security.apiserver import OPERATOR_KEY, Api, running_api
from tests.security.helpers import assert_problem

HEADER_TIMEOUT_S = 2
BODY_TIMEOUT_S = 2
QUOTA = 8 << 20


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with running_api(
        tmp_path_factory.mktemp("limits") / "data",
        header_timeout_s=str(HEADER_TIMEOUT_S),
        body_timeout_s=str(BODY_TIMEOUT_S),
        upload_idle_timeout_s="1",
        upload_min_bytes_per_s="4096",
        tenant_storage_quota_bytes=str(QUOTA),
        metrics_key=OPERATOR_KEY,
        auth_failures_per_minute="20",
        min_free_disk_bytes=str(1 << 20),
    ) as server:
        yield server


def _connect(api: Api) -> socket.socket:
    return socket.create_connection(("127.0.0.1", api.port), timeout=30)


def _read_until_closed(sock: socket.socket) -> bytes:
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _read_response(sock: socket.socket) -> bytes:
    """One whole response with a Content-Length (it may come in several segments)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def _trickle(sock: socket.socket, data: bytes, every_s: float, stop: threading.Event) -> None:
    """Send `data` a byte at a time until done, stopped or the server hangs up."""
    for byte in data:
        if stop.wait(every_s):
            return
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return


def _dropped_after(api: Api, head: bytes, trickled: bytes) -> tuple[bytes, float]:
    """Send `head` at once, then trickle `trickled`; the reply and when the server closed."""
    stop = threading.Event()
    with _connect(api) as sock:
        started = time.monotonic()
        sock.sendall(head)
        feeder = threading.Thread(target=_trickle, args=(sock, trickled, 0.3, stop), daemon=True)
        feeder.start()
        reply = _read_until_closed(sock)
        waited = time.monotonic() - started
        stop.set()
        feeder.join(5)
    return reply, waited


def test_silent_connection_is_dropped(api: Api) -> None:
    reply, waited = _dropped_after(api, b"", b"")
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert HEADER_TIMEOUT_S - 0.5 <= waited < HEADER_TIMEOUT_S + 5


def test_trickled_headers_are_dropped(api: Api) -> None:
    head = f"GET /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {api.key_a}\r\n".encode()
    reply, waited = _dropped_after(api, head, b"X-Slow: " + b"a" * 200)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b'"code": "request_timeout"' in reply
    assert waited < HEADER_TIMEOUT_S + 5
    # A keep-alive connection that starts its next request and stalls is dropped too.
    with _connect(api) as sock:
        sock.sendall(head + b"\r\n")
        assert _read_response(sock).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        sock.sendall(b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\n")
        assert _read_until_closed(sock).startswith(b"HTTP/1.1 408")
        assert time.monotonic() - started < HEADER_TIMEOUT_S + 5


def test_trickled_json_body_is_dropped(api: Api) -> None:
    body = b'{"model_id": "mdl_x"}' + b" " * 100
    head = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {api.key_a}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    reply, waited = _dropped_after(api, head, body)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:300]
    assert b'"code":"request_timeout"' in reply.replace(b" ", b"")
    assert waited < BODY_TIMEOUT_S + 5


def test_trickled_upload_is_dropped(api: Api) -> None:
    """Bytes keep coming (the idle timeout never fires) but far below the minimum rate."""
    boundary = "trickle"
    part = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="m.onnx"\r\n\r\n'
    ).encode()
    head = (
        f"POST /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {api.key_a}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(part) + 10000}\r\n\r\n"
    ).encode() + part
    reply, waited = _dropped_after(api, head, b"x" * 10000)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:300]
    assert b"slower than" in reply
    assert waited < 10
    assert not list((api.data_dir / "tmp").glob("*.upload"))


@pytest.mark.parametrize(
    "path",
    [
        "/static/%00",
        "/static/a%00b.js",
        "/static/%2e%2e",
        "/static/%2e%2e/%2e%2e/etc/passwd",
        "/static/..%2fapp",
        "/static/" + "a" * 4000,
        "/static/" + "b/" * 600 + "c",
    ],
)
def test_odd_static_paths_are_not_found(api: Api, path: str) -> None:
    resp = httpx.get(api.base_url + path, timeout=10)
    assert resp.status_code in (400, 404), (resp.status_code, resp.text[:300])
    assert "Traceback" not in resp.text


def test_metrics_are_for_the_operator_only(api: Api) -> None:
    url = f"{api.base_url}/metrics"
    assert_problem(httpx.get(url, timeout=10), 401, "unauthorized")
    for key in (api.key_a, api.key_b, "wrong"):
        resp = httpx.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert_problem(resp, 401, "unauthorized")
    resp = httpx.get(url, headers={"Authorization": f"Bearer {OPERATOR_KEY}"}, timeout=10)
    assert resp.status_code == 200 and "secateurs_jobs" in resp.text
    assert "alice" not in resp.text and "bob" not in resp.text


def test_metrics_without_a_key_answer_loopback_only(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path / "data", api_keys="alice:sk_alice_x"))
    try:
        with TestClient(app, client=("203.0.113.9", 40000)) as remote:
            assert_problem(remote.get("/metrics"), 403, "forbidden")
            resp = remote.get("/metrics", headers={"Authorization": "Bearer sk_alice_x"})
            assert_problem(resp, 403, "forbidden")
        with TestClient(app, client=("127.0.0.1", 40000)) as local:
            assert local.get("/metrics").status_code == 200
    finally:
        app.state.engine.dispose()


def test_failed_keys_are_throttled_per_address(api: Api) -> None:
    # uvicorn trusts X-Forwarded-For from 127.0.0.1, as it would from a local proxy.
    attacker = {"X-Forwarded-For": "203.0.113.66"}
    with api.client(api.key_a, **{"X-Forwarded-For": "198.51.100.1"}) as alice:
        assert alice.get("/v1/jobs").status_code == 200  # alice's key proven valid
    with api.client(**attacker) as client:
        for i in range(20):
            resp = client.get("/v1/jobs", headers={"Authorization": f"Bearer guess-{i}"})
            assert_problem(resp, 401, "unauthorized")
        resp = client.get("/v1/jobs", headers={"Authorization": "Bearer guess-more"})
        assert_problem(resp, 429, "too_many_auth_failures")
        assert 1 <= int(resp.headers["Retry-After"]) <= 60
        # A key already proven valid still works from that address (a shared NAT).
        assert (
            client.get("/v1/jobs", headers={"Authorization": f"Bearer {api.key_a}"}).status_code
            == 200
        )
    # Other addresses are not slowed: a valid key, and a wrong one still gets its 401.
    with api.client(api.key_b, **{"X-Forwarded-For": "198.51.100.7"}) as bob:
        started = time.perf_counter()
        assert bob.get("/v1/jobs").status_code == 200
        assert time.perf_counter() - started < 1
        assert_problem(
            bob.get("/v1/jobs", headers={"Authorization": "Bearer nope"}), 401, "unauthorized"
        )


def test_storage_quota(api: Api) -> None:
    """carol holds 6 MiB of her 8 MiB: a 3 MiB upload is refused (before streaming with a
    Content-Length, while streaming without one); at the quota, any upload is."""
    api.add_model("carol", size_bytes=6 << 20)
    with api.client(api.keys["carol"], timeout=60) as carol:
        resp = carol.post("/v1/models", files={"file": ("m.onnx", os.urandom(3 << 20))})
        body = assert_problem(resp, 413, "storage_quota_exceeded")
        assert "quota" in body["detail"]

        def chunked() -> Iterator[bytes]:
            yield (b'--q\r\nContent-Disposition: form-data; name="file"; filename="m.onnx"\r\n\r\n')
            for _ in range(48):
                yield bytes(64 << 10)
            yield b"\r\n--q--\r\n"

        resp = carol.post(
            "/v1/datasets",
            content=chunked(),
            headers={"Content-Type": "multipart/form-data; boundary=q"},
        )
        assert_problem(resp, 413, "storage_quota_exceeded")
        api.add_model("carol", size_bytes=2 << 20)
        resp = carol.post("/v1/models", files={"file": ("m.onnx", b"tiny")})
        assert_problem(resp, 413, "storage_quota_exceeded")
        # Another tenant's room is its own.
        assert_problem(carol.get("/v1/models/mdl_none"), 404, "not_found")
    assert not list((api.data_dir / "tmp").glob("*.upload"))


def test_quota_holds_under_concurrent_commits(tmp_path: Path) -> None:
    """Ten 1000-byte uploads committed at once against a 5000-byte quota: five fit."""
    from infra.db.models import Model, utcnow

    app = create_app(Settings(data_dir=tmp_path / "data"))
    stored: list[str] = []

    class Store:
        def delete(self, key: str) -> None:
            stored.remove(key)

    def commit(i: int) -> str:
        row = Model(
            id=f"mdl_q{i}",
            tenant="t",
            name="m",
            format="onnx",
            arch=None,
            sha256="0" * 64,
            size_bytes=1000,
            storage_key=f"models/mdl_q{i}",
            input_shape=[1],
            inputs=[],
            outputs=[],
            stats={},
            created_at=utcnow(),
        )
        stored.append(row.storage_key)
        barrier.wait()
        try:
            commit_upload_row(app.state.sessionmaker, Store(), row, 5000)  # type: ignore[arg-type]
        except Exception as exc:
            return getattr(exc, "code", type(exc).__name__)
        return "ok"

    barrier = threading.Barrier(10)
    threads_out: list[str] = []
    workers = [
        threading.Thread(target=lambda i=i: threads_out.append(commit(i))) for i in range(10)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    app.state.engine.dispose()
    assert sorted(threads_out) == ["ok"] * 5 + ["storage_quota_exceeded"] * 5
    assert len(stored) == 5  # refused uploads' files are removed


@contextlib.contextmanager
def tiny_filesystem(path: Path, size: str = "16m") -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path` (root only); skips loudly when impossible."""
    path.mkdir(parents=True)
    if os.geteuid() != 0:
        pytest.skip("!!! FULL-DISK TEST SKIPPED: mounting a tiny tmpfs needs root")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"!!! FULL-DISK TEST SKIPPED: cannot mount a tmpfs: {result.stderr}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(directory: Path) -> Path:
    """Write zeros into `directory` until its filesystem has no byte left."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for block in (1 << 20, 4096, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, bytes(block)):
                    pass
    finally:
        os.close(fd)
    return filler


def test_full_disk_is_507_and_not_ready(tmp_path: Path) -> None:
    with (
        tiny_filesystem(tmp_path / "disk") as disk,
        running_api(
            disk / "data", min_free_disk_bytes="0", rate_limit_per_minute="100000"
        ) as server,
    ):
        model = server.add_model("alice")
        with server.client(server.key_a) as alice:
            assert alice.post("/v1/jobs", json={"model_id": model}).status_code == 202
            filler = _fill(disk)
            try:
                resp = httpx.get(f"{server.base_url}/readyz", timeout=10)
                body = assert_problem(resp, 503, "not_ready")
                assert "disk" in body["checks"]
                assert_problem(
                    alice.post("/v1/jobs", json={"model_id": model}), 507, "insufficient_storage"
                )
                resp = alice.post("/v1/models", files={"file": ("m.onnx", b"x" * 1000)})
                assert_problem(resp, 507, "insufficient_storage")
                assert alice.get("/v1/jobs").status_code == 200  # reads still work
            finally:
                filler.unlink()
            assert httpx.get(f"{server.base_url}/readyz", timeout=10).status_code == 200
            assert alice.post("/v1/jobs", json={"model_id": model}).status_code == 202


def test_database_full_is_507_on_every_write(tmp_path: Path) -> None:
    """SQLite's own "database or disk is full" (SQLITE_FULL, here from a page cap) past
    the free-space guard: each writing route answers 507, never 500."""
    settings = Settings(
        data_dir=tmp_path / "data",
        api_keys="alice:sk_alice_full",
        min_free_disk_bytes=0,
        max_concurrent_jobs_per_tenant=100_000,
        rate_limit_per_minute=100_000,
    )
    app = create_app(settings)
    auth = {"Authorization": "Bearer sk_alice_full"}
    with TestClient(app, raise_server_exceptions=False) as client:
        model_id = _seed_model(app)
        job = client.post("/v1/jobs", json={"model_id": model_id}, headers=auth).json()["id"]

        @event.listens_for(app.state.engine, "connect")
        def _cap(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            pages = dbapi_conn.execute("PRAGMA page_count").fetchone()[0]
            dbapi_conn.execute(f"PRAGMA max_page_count = {pages}")

        app.state.engine.dispose()  # new connections, each capped at the current size
        for _ in range(500):
            resp = client.post("/v1/jobs", json={"model_id": model_id}, headers=auth)
            if resp.status_code != 202:
                break
        assert_problem(resp, 507, "insufficient_storage")
        resp = client.post(f"/v1/jobs/{job}/cancel", headers=auth)
        assert resp.status_code in (202, 507), resp.text
        assert client.get("/v1/jobs", headers=auth).status_code == 200
    app.state.engine.dispose()


def _seed_model(app) -> str:  # type: ignore[no-untyped-def]
    from infra.db.models import Model, utcnow

    with app.state.sessionmaker() as session:
        session.add(
            Model(
                id="mdl_full",
                tenant="alice",
                name="m",
                format="onnx",
                arch=None,
                sha256="0" * 64,
                size_bytes=1,
                storage_key="models/mdl_full",
                input_shape=[1, 3, 8, 8],
                inputs=[{"name": "x", "shape": [1, 3, 8, 8], "dtype": "float32"}],
                outputs=[{"name": "y", "shape": [1, 4], "dtype": "float32"}],
                stats={"params": 1, "macs": 1},
                created_at=utcnow(),
            )
        )
        session.commit()
    return "mdl_full"
