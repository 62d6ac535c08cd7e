"""Webhook delivery: a thread in the worker's main process sends the events that jobs
leave in `webhook_events` (see `infra.webhooks`), and retries them with backoff.

Each attempt claims its event first (moving its due time ahead by a lease), so workers
on several machines never send one attempt twice, and a worker that dies mid-attempt
only delays the next. A receiver that answers 2xx ends the event; anything else (an
error status, a refused connection, a timeout) is tried again after base, 2 x base,
4 x base… seconds, each wait at most `webhook_retry_max_s`, up to `webhook_max_attempts`
tries. Every attempt of an event sends the same `webhook-id` and body, so a receiver
that remembers the ids it has handled handles each event exactly once.

Requests go to an address checked after resolving the host, never follow redirects, give
up after `webhook_timeout_s` per connect or read, and keep only a short prefix of the
answer.
"""

import contextlib
import http.client
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from celery import Celery
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session, sessionmaker

from infra.config import Settings
from infra.db.models import WebhookAttempt, WebhookEvent, utcnow
from infra.db.session import make_engine, make_sessionmaker, session_scope
from infra.webhooks import ForbiddenAddress, resolve_checked, signed_headers, tenant_secret
from worker.background import run_while_worker_runs
from worker.sweeper import ensure_tables

log = logging.getLogger(__name__)

USER_AGENT = "Secateurs-Webhooks/1"
# Bytes of the receiver's answer kept in the delivery log.
RESPONSE_PREFIX_BYTES = 256
ERROR_CHARS = 512
# A whole attempt (connect, send, read the answer's start) may take this many timeouts.
TOTAL_TIMEOUTS = 2


@dataclass(frozen=True)
class Answer:
    """What one attempt got: an HTTP status and the start of the body, or an error."""

    status_code: int | None = None
    prefix: str | None = None
    error: str | None = None
    # True when trying again cannot help (the address is forbidden).
    final: bool = False

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass(frozen=True)
class Backoff:
    """Waits between attempts: base doubling, capped at max_s, for at most `attempts`."""

    base_s: float
    max_s: float
    attempts: int

    def delay_after(self, attempt: int) -> float | None:
        """Seconds before the attempt after `attempt` (1-based); None when none is left."""
        if attempt >= self.attempts:
            return None
        return float(min(self.max_s, self.base_s * 2 ** (attempt - 1)))

    @classmethod
    def from_settings(cls, settings: Settings) -> "Backoff":
        return cls(
            settings.webhook_retry_base_s,
            settings.webhook_retry_max_s,
            settings.webhook_max_attempts,
        )


# Sending


def _connect_any(addresses: list[str], port: int, timeout: float | None) -> socket.socket:
    """A connection to the first of the (checked) addresses that answers."""
    refused: OSError = OSError("no address to connect to")
    for address in addresses:
        try:
            return socket.create_connection((address, port), timeout)
        except OSError as exc:
            refused = exc
    raise refused


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP to checked addresses only, with the URL's host in the Host header."""

    def __init__(self, host: str, port: int, addresses: list[str], timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._addresses = addresses

    def connect(self) -> None:
        self.sock = _connect_any(self._addresses, self.port, self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to checked addresses only; the certificate is verified against the URL's host."""

    def __init__(self, host: str, port: int, addresses: list[str], timeout: float) -> None:
        self._tls = ssl.create_default_context()
        super().__init__(host, port, timeout=timeout, context=self._tls)
        self._addresses = addresses

    def connect(self) -> None:
        sock = _connect_any(self._addresses, self.port, self.timeout)
        self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)


def post(
    url: str, body: bytes, headers: dict[str, str], *, timeout_s: float, allow_private: bool
) -> Answer:
    """POST `body` to `url` once, at the first address it resolves to that answers (every
    one checked first)."""
    parts = urlsplit(url)
    https = parts.scheme == "https"
    host, port = parts.hostname or "", parts.port or (443 if https else 80)
    try:
        addresses = resolve_checked(host, port, allow_private=allow_private)
    except ForbiddenAddress as exc:
        return Answer(error=f"address forbidden: {exc}", final=True)
    except (OSError, UnicodeError) as exc:
        return Answer(error=f"cannot resolve {host}: {exc}"[:ERROR_CHARS])
    kind = _PinnedHTTPSConnection if https else _PinnedHTTPConnection
    conn = kind(host, port, addresses, timeout_s)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    # The timeout bounds each connect and read; a receiver that drips its answer a byte
    # at a time would meet none of them, so the whole attempt has a deadline too.
    limit_s = TOTAL_TIMEOUTS * timeout_s
    cut = threading.Event()
    deadline = threading.Timer(limit_s, _cut, args=(conn, cut))
    deadline.start()
    try:
        conn.request(
            "POST",
            path,
            body=body,
            headers={"content-type": "application/json", "user-agent": USER_AGENT, **headers},
        )
        response = conn.getresponse()
        prefix = response.read(RESPONSE_PREFIX_BYTES).decode("utf-8", "replace")
        answer = Answer(status_code=response.status, prefix=prefix)
    except (OSError, http.client.HTTPException) as exc:
        answer = Answer(error=f"{type(exc).__name__}: {exc}"[:ERROR_CHARS])
    finally:
        deadline.cancel()
        conn.close()
    # Whatever was parsed from a cut answer is not the receiver's whole answer.
    return Answer(error=f"no whole answer within {limit_s:g} s") if cut.is_set() else answer


def _cut(conn: http.client.HTTPConnection, cut: threading.Event) -> None:
    """End an attempt past its deadline: shutting the socket down wakes a blocked read."""
    cut.set()
    if conn.sock is not None:
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_RDWR)


Sender = Callable[..., Answer]


# The delivery loop


@dataclass(frozen=True)
class _Claimed:
    id: str
    tenant: str
    url: str
    body: str
    attempt: int


class Deliverer:
    """Finds due events, claims them and makes one attempt at each."""

    def __init__(
        self, settings: Settings, sessions: sessionmaker[Session], *, send: Sender = post
    ) -> None:
        self.settings, self.sessions, self.send = settings, sessions, send
        self.backoff = Backoff.from_settings(settings)
        # Long enough for a whole attempt; a worker that dies holding one delays it so long.
        self.lease = timedelta(seconds=3 * settings.webhook_timeout_s + 30)

    def due(self, limit: int) -> list[str]:
        """Ids of pending events whose next attempt is due, the most overdue first."""
        with self.sessions() as session:
            return list(
                session.scalars(
                    select(WebhookEvent.id)
                    .where(
                        WebhookEvent.status == "pending", WebhookEvent.next_attempt_at <= utcnow()
                    )
                    .order_by(WebhookEvent.next_attempt_at)
                    .limit(limit)
                )
            )

    def claim(self, event_id: str) -> _Claimed | None:
        """Take the event's next attempt, or None when another worker took it first."""
        now = utcnow()
        with session_scope(self.sessions) as session:
            taken = session.execute(
                update(WebhookEvent)
                .where(
                    WebhookEvent.id == event_id,
                    WebhookEvent.status == "pending",
                    WebhookEvent.next_attempt_at <= now,
                )
                .values(next_attempt_at=now + self.lease)
            )
            if taken.rowcount != 1:  # type: ignore[attr-defined]
                return None
            event = session.get(WebhookEvent, event_id)
            assert event is not None
            return _Claimed(event.id, event.tenant, event.url, event.body, event.attempts + 1)

    def deliver(self, event_id: str) -> Answer | None:
        """One attempt at the event, logged; None when it was not ours to make."""
        claimed = self.claim(event_id)
        if claimed is None:
            return None
        with session_scope(self.sessions) as session:
            secret = tenant_secret(session, claimed.tenant).secret
        started, clock = utcnow(), time.monotonic()
        body = claimed.body.encode()
        headers = signed_headers(secret, claimed.id, body, int(time.time()))
        answer = self.send(
            claimed.url,
            body,
            headers,
            timeout_s=self.settings.webhook_timeout_s,
            allow_private=self.settings.webhook_allow_private,
        )
        self._record(claimed, answer, started, time.monotonic() - clock)
        return answer

    def _record(
        self, claimed: _Claimed, answer: Answer, started: datetime, elapsed_s: float
    ) -> None:
        with session_scope(self.sessions) as session:
            session.add(
                WebhookAttempt(
                    event_id=claimed.id,
                    attempt=claimed.attempt,
                    started_at=started,
                    duration_ms=int(elapsed_s * 1000),
                    status_code=answer.status_code,
                    error=answer.error,
                    response_prefix=answer.prefix,
                )
            )
            event = session.get(WebhookEvent, claimed.id)
            assert event is not None
            event.attempts = claimed.attempt
            delay = None if answer.final else self.backoff.delay_after(claimed.attempt)
            if answer.ok:
                event.status, event.delivered_at, event.next_attempt_at = (
                    "delivered",
                    utcnow(),
                    None,
                )
            elif delay is None:
                event.status, event.next_attempt_at = "failed", None
            else:
                event.next_attempt_at = utcnow() + timedelta(seconds=delay)
        outcome = answer.status_code or answer.error
        log.info("webhook %s attempt %d to job's url: %s", claimed.id, claimed.attempt, outcome)


class DeliveryThread(threading.Thread):
    """Every `poll_s`, hands the due events to a pool of `concurrency` senders."""

    def __init__(self, deliverer: Deliverer, *, poll_s: float, concurrency: int) -> None:
        super().__init__(name="webhook-delivery", daemon=True)
        self.deliverer, self.poll_s = deliverer, poll_s
        self.pool = ThreadPoolExecutor(concurrency, thread_name_prefix="webhook")
        self.slots = threading.Semaphore(concurrency)
        self.in_flight: set[str] = set()
        self.lock = threading.Lock()
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self._dispatch()
            except Exception as exc:  # noqa: BLE001 - keep delivering after a store outage
                log.warning("webhooks: pass failed: %s", exc)
            self.stopped.wait(self.poll_s)
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _dispatch(self) -> None:
        for event_id in self.deliverer.due(limit=64):
            with self.lock:
                if event_id in self.in_flight:
                    continue
            if not self.slots.acquire(blocking=False):
                return  # all senders busy; the rest waits for the next pass
            with self.lock:
                self.in_flight.add(event_id)
            self.pool.submit(self._send, event_id)

    def _send(self, event_id: str) -> None:
        try:
            self.deliverer.deliver(event_id)
        except Exception:  # noqa: BLE001 - one event's failure must not stop the others
            log.exception("webhooks: delivering %s failed", event_id)
        finally:
            with self.lock:
                self.in_flight.discard(event_id)
            self.slots.release()


def _main_engine(settings: Settings) -> Engine:
    engine = make_engine(settings.resolved_database_url)
    ensure_tables(engine)
    # Pool children are forked from this process; they must not reuse its connections.
    os.register_at_fork(after_in_child=lambda: engine.dispose(close=False))
    return engine


def install(app: Celery, settings: Settings) -> None:
    """Run the delivery thread beside the worker."""

    def make_thread() -> DeliveryThread:
        deliverer = Deliverer(settings, make_sessionmaker(_main_engine(settings)))
        return DeliveryThread(
            deliverer, poll_s=settings.webhook_poll_s, concurrency=settings.webhook_concurrency
        )

    run_while_worker_runs(make_thread)
