"""A real `secateurs api` under 200 concurrent connections polling job status while a
worker-like writer updates the job: every request is answered, none with 5xx, none late.

The failure this guards against is the thread/connection deadlock: a full thread pool whose
requests wait for database connections held by sessions waiting for a thread to close
them (answers stop, then `QueuePool limit ... reached`)."""

import asyncio
import threading
import time
from collections import Counter
from pathlib import Path

from infra.db.jobstate import set_progress
from infra.db.models import Job
from tests.aio import run_coroutine
from tests.security.apiserver import running_api

CONNECTIONS = 200
POLLS_EACH = 5
# Far above any honest answer on a busy 2-core machine; a deadlocked API never answers.
REQUEST_TIMEOUT_S = 20.0


def _writer(sessions, job_id: str, stop: threading.Event) -> int:  # type: ignore[no-untyped-def]
    """Commit progress events as fast as a pruning worker would, and faster."""
    writes = 0
    while not stop.is_set():
        with sessions() as session:
            job = session.get(Job, job_id)
            set_progress(session, job, "prune", min(0.99, writes / 1000))
            session.commit()
        writes += 1
        time.sleep(0.01)
    return writes


async def _get(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str, key: str
) -> str:
    """One keep-alive GET on an open connection; its status code. A bare HTTP/1.1 client:
    a pooled client's own bookkeeping for 200 connections would cost more than the server."""
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {key}\r\n\r\n".encode()
    )
    await writer.drain()
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    length = next(
        int(line.split(":", 1)[1])
        for line in head.split("\r\n")
        if line.lower().startswith("content-length:")
    )
    await reader.readexactly(length)
    return head.split(" ", 2)[1]


async def _poller(port: int, key: str, paths: list[str], outcomes: Counter[str]) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        outcomes[type(exc).__name__] += len(paths)
        return
    try:
        for path in paths:
            try:
                outcomes[
                    await asyncio.wait_for(_get(reader, writer, path, key), REQUEST_TIMEOUT_S)
                ] += 1
            except TimeoutError:
                outcomes["timeout"] += 1
                return
            except (OSError, asyncio.IncompleteReadError) as exc:
                outcomes[type(exc).__name__] += 1
                return
    finally:
        writer.close()


async def _poll_all(port: int, key: str, job_id: str) -> Counter[str]:
    """CONNECTIONS connections at once, each sending POLLS_EACH requests in turn: mostly
    status polls, with the list and a route on a request session in the mix."""
    outcomes: Counter[str] = Counter()
    status = [f"/v1/jobs/{job_id}"] * (POLLS_EACH - 1)
    mixed = ["/v1/jobs?limit=5", f"/v1/jobs/{job_id}/artifacts"]
    await asyncio.gather(
        *(_poller(port, key, [*status, mixed[i % 2]], outcomes) for i in range(CONNECTIONS))
    )
    return outcomes


def test_200_connections_polling_a_running_job_are_all_answered(tmp_path: Path) -> None:
    with running_api(tmp_path / "data") as api:
        job_id = api.add_job("alice", api.add_model("alice"), status="running")
        stop = threading.Event()
        writes: list[int] = []
        writer = threading.Thread(
            target=lambda: writes.append(_writer(api.sessions(), job_id, stop))
        )
        writer.start()
        try:
            started = time.monotonic()
            outcomes = run_coroutine(_poll_all(api.port, api.key_a, job_id))
            elapsed = time.monotonic() - started
        finally:
            stop.set()
            writer.join()
        assert outcomes == {"200": CONNECTIONS * POLLS_EACH}, (outcomes, api.log())
        assert writes and writes[0] > 0
        # And it still answers at once afterwards: nothing was left holding connections.
        with api.client(api.key_a, timeout=5) as client:
            assert client.get(f"/v1/jobs/{job_id}").json()["progress"] > 0
        print(f"{CONNECTIONS * POLLS_EACH} requests in {elapsed:.1f} s")
