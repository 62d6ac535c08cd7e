"""Shared fixtures for tests that start real services: Redis, PostgreSQL, a moto S3 server,
and the Secateurs API (uvicorn) plus a Celery worker as separate processes.

A test that needs a service that is not running is *skipped*, loudly, naming the service
and how to start it (`make services`); tests that do not need it still run. Nothing is
faked here: a missing service never turns into a silent pass.
"""

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
# A database number of its own, so the tests never touch a developer's queues.
REDIS_TEST_DB = 13
PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def free_port() -> int:
    """A TCP port nobody listens on right now (127.0.0.1)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def skip_loudly(service: str, detail: str) -> None:
    """Skip the current test because `service` is unavailable, saying so in capitals."""
    pytest.skip(
        f"!!! {service.upper()} UNAVAILABLE: {detail} — start it with `make services`; "
        f"only the tests that need {service} are skipped"
    )


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """redis://127.0.0.1:6379/13, emptied before use; skips when Redis is not running."""
    if not port_open(REDIS_HOST, REDIS_PORT):
        skip_loudly("redis", f"nothing listens on {REDIS_HOST}:{REDIS_PORT}")
    import redis

    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_TEST_DB}"
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    except redis.RedisError as exc:
        skip_loudly("redis", f"{REDIS_HOST}:{REDIS_PORT} does not answer: {exc}")
    yield url
    with contextlib.suppress(redis.RedisError):
        client.flushdb()


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """Admin URL of the local PostgreSQL (trust auth, user postgres); skips when absent."""
    if not port_open(PG_HOST, PG_PORT):
        skip_loudly("postgresql", f"nothing listens on {PG_HOST}:{PG_PORT}")
    import psycopg

    url = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/postgres"
    try:
        psycopg.connect(url, connect_timeout=3).close()
    except psycopg.Error as exc:
        skip_loudly("postgresql", f"cannot log in as {PG_USER}: {exc}")
    return url


@pytest.fixture(scope="module")
def postgres_url(postgres_server: str) -> Iterator[str]:
    """SQLAlchemy URL of a fresh database, dropped after the module."""
    import psycopg

    name = f"secateurs_test_{secrets.token_hex(4)}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class S3Server:
    endpoint_url: str
    bucket: str

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    """A moto S3 server on 127.0.0.1 and a random port, with one empty bucket."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    s3 = S3Server(f"http://127.0.0.1:{port}", "secateurs-test")
    s3.client().create_bucket(Bucket=s3.bucket)
    yield s3
    server.stop()


def _stop(proc: subprocess.Popen[bytes], *, warm_s: float = 8.0) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=warm_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@dataclass
class Service:
    """A running API and worker; `key_a`/`key_b` belong to tenants alice and bob."""

    base_url: str
    key_a: str
    key_b: str
    env: dict[str, str]
    log_dir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def client(self, key: str | None = None, timeout: float = 180.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key or self.key_a}"}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def logs(self) -> str:
        parts = []
        for name in self.procs:
            path = self.log_dir / f"{name}.log"
            if path.exists():
                parts.append(f"----- {name} -----\n{path.read_text()[-6000:]}")
        return "\n".join(parts)

    def start_worker(self) -> None:
        self._spawn(
            "worker",
            [
                sys.executable,
                "-c",
                "from cli.main import main; main()",
                "worker",
                "--loglevel",
                "info",
            ],
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if " ready." in (self.log_dir / "worker.log").read_text():
                return
            if self.procs["worker"].poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"the worker did not start\n{self.logs()}")

    def start_api(self, port: int) -> None:
        self._spawn(
            "api",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "app.main:create_app",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200:
                    return
            if self.procs["api"].poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"the API did not become ready\n{self.logs()}")

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = (self.log_dir / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self) -> None:
        for name in ("worker", "api"):
            if name in self.procs:
                _stop(self.procs[name])


def service_env(data_dir: Path, **settings: str) -> dict[str, str]:
    """Environment for the service processes: this one's, minus any SECATEURS_ setting,
    plus `settings` (names without the prefix)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECATEURS_")}
    env.update(
        {
            "SECATEURS_DATA_DIR": str(data_dir),
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
    )
    env.update({f"SECATEURS_{k.upper()}": v for k, v in settings.items()})
    return env


@contextlib.contextmanager
def running_service(data_dir: Path, **settings: str) -> Iterator[Service]:
    """Start the API and one worker with the given settings; stop both afterwards."""
    key_a, key_b = "sk_test_alice_" + secrets.token_hex(8), "sk_test_bob_" + secrets.token_hex(8)
    data_dir.mkdir(parents=True, exist_ok=True)
    settings.setdefault("api_keys", f"alice:{key_a},bob:{key_b}")
    settings.setdefault("rate_limit_per_minute", "100000")
    port = free_port()
    service = Service(
        f"http://127.0.0.1:{port}", key_a, key_b, service_env(data_dir, **settings), data_dir
    )
    try:
        # The API first: it creates the tables and stores the keys.
        service.start_api(port)
        service.start_worker()
        yield service
    finally:
        service.stop()


# The shared service's limits: small, so that the security tests' hostile inputs hit them
# cheaply, and far above what the end-to-end tests' tiny models and datasets need.
SHARED_MAX_MODEL_BYTES = 1 << 20
SHARED_MAX_DATASET_BYTES = 16 << 20
SHARED_IDLE_TIMEOUT_S = 2
# Long enough for a tiny model's honest inspection on a busy machine.
SHARED_INSPECT_TIMEOUT_S = 40


@pytest.fixture(scope="session")
def embedded_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One real service on the server-less defaults (SQLite job store, embedded broker,
    local artifacts), shared by the end-to-end, client, webhook and security tests that
    need no service of their own: starting one costs more than most of those tests.
    Webhooks may go to a loopback receiver, and failed deliveries are retried quickly
    (0.2 s doubling to 0.8 s), so that an outage lasts a couple of seconds."""
    with running_service(
        tmp_path_factory.mktemp("embedded") / "data",
        max_model_bytes=str(SHARED_MAX_MODEL_BYTES),
        max_dataset_bytes=str(SHARED_MAX_DATASET_BYTES),
        upload_idle_timeout_s=str(SHARED_IDLE_TIMEOUT_S),
        inspect_timeout_s=str(SHARED_INSPECT_TIMEOUT_S),
        inspect_memory_total_bytes=str(8 << 30),
        webhook_allow_private="1",
        webhook_retry_base_s="0.2",
        webhook_retry_max_s="0.8",
        webhook_max_attempts="30",
    ) as svc:
        yield svc


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """Keep each phase's report on the item, so fixtures can print service logs on failure."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
