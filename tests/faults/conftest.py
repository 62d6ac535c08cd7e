"""A private redis-server (never the machine's shared one) and a real API + Celery worker on
it, for fault tests that kill workers and restart the broker."""

import contextlib
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Service, free_port, port_open, running_service, skip_loudly


@dataclass
class RedisServer:
    """`redis-server` on a free port, with no persistence: a restart loses every message."""

    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", self.port):
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    try:
        subprocess.run(["redis-server", "--version"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        skip_loudly("redis-server", f"cannot run the redis-server binary: {exc}")
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis") / "redis.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def service(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    data_dir = tmp_path_factory.mktemp("faults") / "data"
    with running_service(data_dir, broker_url=redis_server.url, max_attempts="3") as svc:
        yield svc


def job_row(service: Service, job_id: str) -> dict:
    """The job's row, read straight from the job store (the worker's pid is not public)."""
    with contextlib.closing(sqlite3.connect(service.log_dir / "secateurs.db")) as db:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return dict(row)


def status_events(service: Service, job_id: str) -> list[str]:
    """Every status the job passed through, in order, from its event log."""
    import json

    with contextlib.closing(sqlite3.connect(service.log_dir / "secateurs.db")) as db:
        rows = db.execute(
            "SELECT data FROM job_events WHERE job_id = ? AND kind = 'status' ORDER BY id",
            (job_id,),
        ).fetchall()
    return [json.loads(r[0])["status"] for r in rows]
