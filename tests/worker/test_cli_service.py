"""`secateurs keys create`, `worker`, and `serve` as a real process."""

import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from app.core.auth import hash_key
from cli.main import _register, app
from infra.config import Settings
from infra.db.models import ApiKey
from infra.db.session import make_engine, make_sessionmaker
from tests.conftest import ROOT, free_port, service_env

_register()
runner = CliRunner()


def _keys(data_dir) -> list[ApiKey]:
    settings = Settings(data_dir=data_dir, database_url="")
    with make_sessionmaker(make_engine(settings.resolved_database_url))() as s:
        return list(s.scalars(select(ApiKey)))


def test_keys_create_prints_a_key_stored_hashed(tmp_path, monkeypatch):
    monkeypatch.setenv("SECATEURS_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("SECATEURS_DATABASE_URL", raising=False)
    result = runner.invoke(app, ["keys", "create", "--tenant", "acme"])
    assert result.exit_code == 0, result.output
    key = result.output.strip()
    assert key.startswith("sk_") and len(key) > 30
    rows = _keys(tmp_path)
    assert [(r.tenant, r.key_hash) for r in rows] == [("acme", hash_key(key))]
    assert key not in {r.key_hash for r in rows}


def test_keys_create_refuses_an_empty_tenant(tmp_path, monkeypatch):
    monkeypatch.setenv("SECATEURS_DATA_DIR", str(tmp_path))
    result = runner.invoke(app, ["keys", "create", "--tenant", ""])
    assert result.exit_code == 2 and "invalid_tenant" in result.output


def test_first_key_only_when_none_is_configured(tmp_path):
    from cli.service import ensure_first_key

    assert ensure_first_key(Settings(data_dir=tmp_path / "a", api_keys="t:k")) is None
    fresh = Settings(data_dir=tmp_path / "b", database_url="", api_keys="")
    fresh.data_dir.mkdir()
    key = ensure_first_key(fresh)
    assert key and ensure_first_key(fresh) is None
    assert [r.tenant for r in _keys(fresh.data_dir)] == ["default"]


def test_worker_sets_the_gpu_before_starting_celery(tmp_path, monkeypatch):
    from worker.celery_app import celery_app

    seen: dict = {}
    monkeypatch.setenv("SECATEURS_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(
        celery_app,
        "worker_main",
        lambda argv: seen.update(argv=argv, cuda=os.environ.get("CUDA_VISIBLE_DEVICES")),
    )
    result = runner.invoke(app, ["worker", "--gpu", "3"])
    assert result.exit_code == 0, result.output
    argv = seen["argv"]
    assert seen["cuda"] == "3"
    assert argv[argv.index("--concurrency") + 1] == "1"
    assert argv[argv.index("--queues") + 1] == "jobs"
    assert argv[argv.index("--max-tasks-per-child") + 1] == "1"
    assert argv[argv.index("--hostname") + 1].startswith("gpu3-")


@pytest.mark.slow
def test_serve_prints_a_working_key_and_stops_cleanly_on_ctrl_c(tmp_path):
    port = free_port()
    env = service_env(tmp_path / "data", api_keys="")
    env.pop("SECATEURS_DATA_DIR")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from cli.main import main; main()",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path / "data"),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline, output = time.monotonic() + 60, b""
        while b" ready." not in output or b"Uvicorn running" not in output:
            assert time.monotonic() < deadline and proc.poll() is None, output.decode()
            output += os.read(proc.stdout.fileno(), 65536)
        key = re.search(rb"\b(sk_[A-Za-z0-9_-]{20,})\b", output).group(1).decode()
        base = f"http://127.0.0.1:{port}"
        assert (
            httpx.get(f"{base}/v1/jobs", headers={"Authorization": f"Bearer {key}"}).status_code
            == 200
        )
        assert (
            httpx.get(f"{base}/v1/jobs", headers={"Authorization": "Bearer nope"}).status_code
            == 401
        )
        worker_pids = subprocess.run(
            ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True
        ).stdout.split()
        assert worker_pids, "serve started no worker process"
        os.kill(proc.pid, signal.SIGINT)  # what Ctrl-C sends
        assert proc.wait(timeout=30) == 0
        time.sleep(0.5)
        for pid in worker_pids:
            assert not os.path.exists(f"/proc/{pid}"), f"worker {pid} left running"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
