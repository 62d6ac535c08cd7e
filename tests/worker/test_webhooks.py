"""Webhook delivery against a real local HTTP receiver: signatures, retries with backoff
reusing the event id, the delivery log, claims, redirects, timeouts and the address check."""

import contextlib
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from contract import JobSpec
from infra.config import Settings
from infra.db.models import Job, WebhookAttempt, WebhookEvent, utcnow
from infra.db.session import session_scope
from infra.webhooks import tenant_secret
from secateurs_client.webhooks import verify
from tests.worker.conftest import FakePipeline, add_job
from worker import runner
from worker.webhooks import Answer, Backoff, Deliverer, DeliveryThread, post


@dataclass
class Receiver:
    """A local HTTP server that records each POST and answers from a script of statuses
    (the last one repeats); `down` refuses connections by closing the listening socket."""

    statuses: list[int] = field(default_factory=lambda: [200])
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    answer: bytes = b"ok"
    received: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self.arrived = threading.Event()
        self.server: ThreadingHTTPServer | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks?src=secateurs"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server hook's name
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.received.append(
                    {
                        "headers": dict(self.headers.items()),
                        "body": body,
                        "path": self.path,
                        "at": time.time(),
                    }
                )
                receiver.arrived.set()
                time.sleep(receiver.delay_s)
                index = min(len(receiver.received), len(receiver.statuses)) - 1
                self.send_response(receiver.statuses[index])
                for name, value in receiver.headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(receiver.answer)))
                self.end_headers()
                self.wfile.write(receiver.answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture
def hook_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "webhook_allow_private": True,
            "webhook_retry_base_s": 0.05,
            "webhook_retry_max_s": 0.2,
            "webhook_max_attempts": 4,
            "webhook_timeout_s": 2.0,
            "webhook_poll_s": 0.02,
        }
    )


def finished_job(
    sessions: sessionmaker[Session], make_ctx: Any, url: str, job_id: str = "job_1"
) -> str:
    """A job with `url` run to success by the runner, which leaves its event pending."""
    add_hooked_job(sessions, job_id, url)
    assert runner.run_job(job_id, make_ctx(FakePipeline())) == "succeeded"
    return job_id


def add_hooked_job(sessions: sessionmaker[Session], job_id: str, url: str) -> None:
    add_job(sessions, job_id)
    with session_scope(sessions) as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(spec=JobSpec(webhook_url=url).model_dump(mode="json"))
        )


def the_event(sessions: sessionmaker[Session], job_id: str = "job_1") -> WebhookEvent:
    with sessions() as session:
        event = session.scalar(select(WebhookEvent).where(WebhookEvent.job_id == job_id))
        assert event is not None
        return event


def attempts(sessions: sessionmaker[Session], event_id: str) -> list[WebhookAttempt]:
    with sessions() as session:
        return list(
            session.scalars(
                select(WebhookAttempt)
                .where(WebhookAttempt.event_id == event_id)
                .order_by(WebhookAttempt.attempt)
            )
        )


def make_due(sessions: sessionmaker[Session], event_id: str) -> None:
    with session_scope(sessions) as session:
        session.execute(
            update(WebhookEvent).where(WebhookEvent.id == event_id).values(next_attempt_at=utcnow())
        )


def secret_of(sessions: sessionmaker[Session], tenant: str = "a") -> str:
    with sessions() as session:
        return tenant_secret(session, tenant).secret


def test_backoff_doubles_to_its_cap_then_stops():
    backoff = Backoff(base_s=5, max_s=60, attempts=6)
    assert [backoff.delay_after(n) for n in range(1, 7)] == [5, 10, 20, 40, 60, None]


def test_runner_end_is_delivered_signed(hook_settings, sessions, make_ctx, receiver):
    job_id = finished_job(sessions, make_ctx, receiver.url)
    event = the_event(sessions)
    assert (event.type, event.status, event.attempts) == ("job.succeeded", "pending", 0)

    answer = Deliverer(hook_settings, sessions).deliver(event.id)
    assert answer is not None and answer.ok
    (got,) = receiver.received
    assert got["path"] == "/hooks?src=secateurs"
    assert got["headers"]["webhook-id"] == event.id
    assert got["headers"]["content-type"] == "application/json"
    payload = verify(secret_of(sessions), got["headers"], got["body"])
    assert payload["type"] == "job.succeeded" and payload["data"]["id"] == job_id
    assert payload["data"]["status"] == "succeeded" and payload["data"]["error"] is None
    assert payload["data"]["links"]["report"] == f"/v1/jobs/{job_id}/report"
    assert payload["data"]["links"]["artifacts"] == f"/v1/jobs/{job_id}/artifacts"

    done = the_event(sessions)
    assert (done.status, done.attempts, done.next_attempt_at) == ("delivered", 1, None)
    (logged,) = attempts(sessions, event.id)
    assert (logged.attempt, logged.status_code, logged.error) == (1, 200, None)
    assert logged.response_prefix == "ok"


def test_retries_resend_the_same_id_and_body_until_2xx(hook_settings, sessions, make_ctx):
    receiver = Receiver(statuses=[503, 500, 204])
    try:
        finished_job(sessions, make_ctx, receiver.url)
        event_id = the_event(sessions).id
        deliverer = Deliverer(hook_settings, sessions)
        first = deliverer.deliver(event_id)
        assert first is not None and first.status_code == 503
        pending = the_event(sessions)
        assert pending.status == "pending" and pending.attempts == 1
        # Not due before its backoff: a second pass right away finds nothing to send.
        assert event_id not in deliverer.due(10)
        for _ in range(2):
            make_due(sessions, event_id)
            deliverer.deliver(event_id)
    finally:
        receiver.stop()
    assert [a.status_code for a in attempts(sessions, event_id)] == [503, 500, 204]
    assert {r["headers"]["webhook-id"] for r in receiver.received} == {event_id}
    assert len({r["body"] for r in receiver.received}) == 1
    assert the_event(sessions).status == "delivered"


def test_gives_up_after_the_last_attempt(hook_settings, sessions, make_ctx):
    receiver = Receiver(statuses=[500])
    try:
        finished_job(sessions, make_ctx, receiver.url)
        event_id = the_event(sessions).id
        deliverer = Deliverer(hook_settings, sessions)
        for _ in range(hook_settings.webhook_max_attempts):
            make_due(sessions, event_id)
            deliverer.deliver(event_id)
    finally:
        receiver.stop()
    failed = the_event(sessions)
    assert (failed.status, failed.attempts, failed.next_attempt_at) == ("failed", 4, None)
    make_due(sessions, event_id)
    assert Deliverer(hook_settings, sessions).deliver(event_id) is None  # nothing left


def test_an_attempt_is_claimed_once(hook_settings, sessions, make_ctx, receiver):
    finished_job(sessions, make_ctx, receiver.url)
    event_id = the_event(sessions).id
    one, two = Deliverer(hook_settings, sessions), Deliverer(hook_settings, sessions)
    assert one.claim(event_id) is not None
    assert two.claim(event_id) is None and two.deliver(event_id) is None
    assert receiver.received == []


def test_private_address_refused_at_delivery_without_retry(
    hook_settings, sessions, make_ctx, receiver
):
    finished_job(sessions, make_ctx, receiver.url)
    strict = hook_settings.model_copy(update={"webhook_allow_private": False})
    answer = Deliverer(strict, sessions).deliver(the_event(sessions).id)
    assert answer is not None and answer.final and "127.0.0.1" in (answer.error or "")
    assert receiver.received == []
    assert the_event(sessions).status == "failed"


def test_redirects_are_not_followed(hook_settings, sessions, make_ctx, receiver):
    target = Receiver()
    receiver.statuses, receiver.headers = [307], {"location": target.url}
    try:
        finished_job(sessions, make_ctx, receiver.url)
        answer = Deliverer(hook_settings, sessions).deliver(the_event(sessions).id)
    finally:
        target.stop()
    assert answer is not None and answer.status_code == 307 and not answer.ok
    assert target.received == [] and the_event(sessions).status == "pending"


def test_slow_receivers_time_out_and_answers_are_cut(hook_settings, sessions, make_ctx, receiver):
    receiver.answer = b"x" * 10_000
    finished_job(sessions, make_ctx, receiver.url)
    deliverer = Deliverer(hook_settings, sessions)
    event_id = the_event(sessions).id
    deliverer.deliver(event_id)
    assert len(attempts(sessions, event_id)[0].response_prefix or "") == 256

    receiver.delay_s = 1.0
    quick = Deliverer(hook_settings.model_copy(update={"webhook_timeout_s": 0.2}), sessions)
    finished_job(sessions, make_ctx, receiver.url, job_id="job_2")
    slow_id = the_event(sessions, "job_2").id
    started = time.monotonic()
    answer = quick.deliver(slow_id)
    assert time.monotonic() - started < 0.9
    assert answer is not None and answer.status_code is None and "timed out" in answer.error


def test_a_receiver_dripping_its_answer_is_cut_at_the_deadline(hook_settings, sessions, make_ctx):
    # Each byte comes well within the read timeout; the whole answer never does.
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def drip() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            while not stop.is_set():
                with contextlib.suppress(OSError):
                    conn.sendall(b"x")
                time.sleep(0.05)

    threading.Thread(target=drip, daemon=True).start()
    port = listener.getsockname()[1]
    finished_job(sessions, make_ctx, f"http://127.0.0.1:{port}/")
    quick = Deliverer(hook_settings.model_copy(update={"webhook_timeout_s": 0.3}), sessions)
    started = time.monotonic()
    try:
        answer = quick.deliver(the_event(sessions).id)
    finally:
        stop.set()
        listener.close()
    assert time.monotonic() - started < 1.5
    assert answer is not None and answer.error == "no whole answer within 0.6 s"
    assert the_event(sessions).status == "pending"


def test_a_receiver_down_then_back_gets_the_event_once(hook_settings, sessions, make_ctx):
    receiver = Receiver()
    port = receiver.port
    receiver.stop()  # down: connections refused
    finished_job(sessions, make_ctx, f"http://127.0.0.1:{port}/hooks")
    thread = DeliveryThread(Deliverer(hook_settings, sessions), poll_s=0.02, concurrency=2)
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while len(attempts(sessions, the_event(sessions).id)) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        back = Receiver(port=port)
        assert back.arrived.wait(5)
        time.sleep(0.3)  # more passes: nothing more is sent
    finally:
        thread.stopped.set()
        thread.join(5)
        back.stop()
    log = attempts(sessions, the_event(sessions).id)
    assert all(a.status_code is None and "Connection refused" in (a.error or "") for a in log[:-1])
    assert log[-1].status_code == 200 and len(back.received) == 1
    assert the_event(sessions).status == "delivered"
    # Waits grew: each failed attempt was followed by a longer pause (0.05, 0.1, 0.2 s).
    starts = [a.started_at for a in log]
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert all(gap >= timedelta(seconds=0.04) for gap in gaps)


def test_answer_ok_means_2xx():
    assert Answer(status_code=200).ok and Answer(status_code=299).ok
    assert not Answer(status_code=302).ok and not Answer(error="refused").ok


def test_payload_of_a_failed_job(hook_settings, sessions, make_ctx, receiver):
    from worker.engine.errors import EngineError

    add_hooked_job(sessions, "job_f", receiver.url)
    failing = FakePipeline(raise_exc=EngineError("it broke"))
    assert runner.run_job("job_f", make_ctx(failing)) == "failed"
    Deliverer(hook_settings, sessions).deliver(the_event(sessions, "job_f").id)
    payload = json.loads(receiver.received[0]["body"])
    assert payload["type"] == "job.failed" and payload["data"]["status"] == "failed"
    assert payload["data"]["error"]["message"] == "it broke"
    assert "report" not in payload["data"]["links"]


@pytest.fixture
def tls_receiver(tmp_path, monkeypatch) -> Iterator[tuple[Receiver, str]]:
    """A receiver serving HTTPS with a certificate for `localhost` only."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    receiver = Receiver()
    assert receiver.server is not None
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(cert, key)
    receiver.server.socket = server_side.wrap_socket(receiver.server.socket, server_side=True)
    yield receiver, str(cert)
    receiver.stop()


def test_tls_is_verified_against_the_urls_host(tls_receiver, monkeypatch):
    receiver, cert = tls_receiver
    body, headers = b"{}", {"webhook-id": "msg_tls"}
    unknown = post(
        f"https://localhost:{receiver.port}/", body, headers, timeout_s=2, allow_private=True
    )
    assert unknown.error and "CERTIFICATE_VERIFY_FAILED" in unknown.error

    trusted = ssl.create_default_context(cafile=cert)
    monkeypatch.setattr("worker.webhooks.ssl.create_default_context", lambda: trusted)
    # Pinned to the checked address, still verified as `localhost` (SNI and hostname).
    ok = post(f"https://localhost:{receiver.port}/", body, headers, timeout_s=2, allow_private=True)
    assert ok.status_code == 200 and receiver.received[-1]["headers"]["webhook-id"] == "msg_tls"
    mismatch = post(
        f"https://127.0.0.1:{receiver.port}/", body, headers, timeout_s=2, allow_private=True
    )
    assert mismatch.error and "CERTIFICATE_VERIFY_FAILED" in mismatch.error
