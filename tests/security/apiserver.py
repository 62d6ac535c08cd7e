"""The API alone, started the way production starts it (`secateurs api`: uvicorn with the
service's HTTP protocol and options), for the fairness and limits tests. No worker: jobs
stay queued, which is what the tests of streams and caps want."""

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from contract import JobSpec
from infra.db.models import Job, Model, utcnow
from infra.ids import JOB, new_id
from tests.conftest import ROOT, free_port, service_env

OPERATOR_KEY = "sk_test_operator_" + "0" * 16
# alice attacks, bob measures, carol and dave have tests of their own (quota, job cap).
TENANTS = ("alice", "bob", "carol", "dave")


@dataclass
class Api:
    """A running `secateurs api`; `key_a`/`key_b` belong to tenants alice and bob."""

    base_url: str
    port: int
    keys: dict[str, str]
    data_dir: Path
    database_url: str
    proc: subprocess.Popen[bytes]

    @property
    def key_a(self) -> str:
        return self.keys["alice"]

    @property
    def key_b(self) -> str:
        return self.keys["bob"]

    def client(self, key: str | None = None, timeout: float = 30.0, **headers: str) -> httpx.Client:
        auth = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.base_url, headers={**auth, **headers}, timeout=timeout)

    def log(self) -> str:
        path = self.data_dir.parent / "api.log"
        return path.read_text(errors="replace")[-6000:] if path.exists() else ""

    def sessions(self) -> sessionmaker:  # type: ignore[type-arg]
        return sessionmaker(create_engine(self.database_url), expire_on_commit=False)

    def add_model(self, tenant: str, size_bytes: int = 1) -> str:
        """A model row written directly: the routes under test never read its file."""
        model_id = f"mdl_{tenant}_{secrets.token_hex(6)}"
        with self.sessions()() as session:
            session.add(
                Model(
                    id=model_id,
                    tenant=tenant,
                    name="m",
                    format="onnx",
                    arch=None,
                    sha256="0" * 64,
                    size_bytes=size_bytes,
                    storage_key=f"models/{model_id}",
                    input_shape=[1, 3, 8, 8],
                    inputs=[{"name": "x", "shape": [1, 3, 8, 8], "dtype": "float32"}],
                    outputs=[{"name": "y", "shape": [1, 4], "dtype": "float32"}],
                    stats={"params": 1, "macs": 1},
                    created_at=utcnow(),
                )
            )
            session.commit()
        return model_id

    def add_job(self, tenant: str, model_id: str, status: str = "queued") -> str:
        job_id = new_id(JOB)
        with self.sessions()() as session:
            session.add(
                Job(
                    id=job_id,
                    tenant=tenant,
                    model_id=model_id,
                    spec=JobSpec().model_dump(mode="json"),
                    status=status,
                    progress=0.0,
                    attempts=0,
                    stage_times={},
                    created_at=utcnow(),
                )
            )
            session.commit()
        return job_id


def _wait_ready(api: Api, deadline_s: float = 60.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{api.base_url}/readyz", timeout=2).status_code == 200:
                return
        if api.proc.poll() is not None:
            break
        time.sleep(0.2)
    raise RuntimeError(f"the API did not become ready\n{api.log()}")


@contextlib.contextmanager
def running_api(data_dir: Path, **settings: str) -> Iterator[Api]:
    """`secateurs api` on 127.0.0.1 and a free port with these settings (names without the
    SECATEURS_ prefix); stopped afterwards."""
    keys = {tenant: f"sk_test_{tenant}_{secrets.token_hex(8)}" for tenant in TENANTS}
    data_dir.mkdir(parents=True, exist_ok=True)
    settings.setdefault("api_keys", ",".join(f"{t}:{k}" for t, k in keys.items()))
    settings.setdefault("rate_limit_per_minute", "100000")
    database_url = settings.get("database_url") or f"sqlite:///{data_dir / 'secateurs.db'}"
    port = free_port()
    env = service_env(data_dir, **settings)
    log = (data_dir.parent / "api.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from cli.main import main; main()",
            "api",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    api = Api(f"http://127.0.0.1:{port}", port, keys, data_dir, database_url, proc)
    try:
        _wait_ready(api)
        yield api
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()


def p99(samples: list[float]) -> float:
    """The 99th percentile (nearest rank) of `samples`."""
    ordered = sorted(samples)
    return ordered[max(0, int(round(0.99 * len(ordered))) - 1)]
