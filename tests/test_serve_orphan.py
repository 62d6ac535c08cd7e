"""`secateurs serve` killed outright (SIGKILL, as a supervisor does after its grace period)
must not leave its worker running as an orphan: the worker follows its parent."""

import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import ROOT, free_port, service_env

pytestmark = pytest.mark.e2e

START_TIMEOUT_S = 90
# The worker's own warm stop of an idle worker takes a second or two.
EXIT_TIMEOUT_S = 15


def _wait_until(
    predicate,
    timeout_s: float,
    what: str,  # type: ignore[no-untyped-def]
    proc: subprocess.Popen[bytes],
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"serve exited ({proc.returncode}) before {what}")
        if predicate():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def _ready(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _worker_with_pool(serve: psutil.Process) -> list[psutil.Process]:
    """The worker and its pool processes, once Celery has started its pool."""
    workers = serve.children()
    pool = [child for worker in workers for child in worker.children(recursive=True)]
    return workers + pool if workers and pool else []


def test_the_worker_exits_when_serve_is_killed(tmp_path: Path):
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
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
        env=service_env(tmp_path / "data", api_keys="alice:sk_test_alice_0000"),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    found: list[psutil.Process] = []
    try:
        _wait_until(lambda: _ready(f"http://127.0.0.1:{port}"), START_TIMEOUT_S, "ready", proc)
        serve = psutil.Process(proc.pid)
        _wait_until(
            lambda: bool(found.extend(_worker_with_pool(serve)) or found),
            START_TIMEOUT_S,
            "the worker's pool",
            proc,
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _, alive = psutil.wait_procs(found, timeout=EXIT_TIMEOUT_S)
        assert alive == [], (
            f"still running {EXIT_TIMEOUT_S} s after serve was killed: "
            f"{alive}\n{(tmp_path / 'serve.log').read_text()[-3000:]}"
        )
    finally:
        # Whatever the outcome, leave no process of this test behind.
        for process in [*found, psutil.Process(proc.pid)] if proc.poll() is None else found:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        proc.wait()
        log.close()
