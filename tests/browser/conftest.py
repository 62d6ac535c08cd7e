"""Fixtures for the dashboard's browser tests: the real service (`secateurs serve`: API and
one worker on a temporary data directory), tiny seeded upload files, and Chromium.

Chromium is Debian's `/usr/bin/chromium` (`make system-deps` installs it); without it the
tests are skipped with the reason in the summary, never silently passed.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
KEYS = {"alice": "key-alice", "bob": "key-bob"}
REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "test-output" / "screenshots"
READY_TIMEOUT_S = 180
INPUT_SHAPE = (1, 3, 16, 16)
NUM_CLASSES = 4


@dataclass(frozen=True)
class Service:
    url: str
    data_dir: Path
    log: Path


@dataclass(frozen=True)
class Uploads:
    model: Path
    dataset: Path
    garbage: Path


def free_port_local() -> int:
    """A TCP port nobody listens on right now (127.0.0.1)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve_command() -> list[str]:
    # The installed console script is what users run; fall back to its entry point.
    script = Path(sys.executable).parent / "secateurs"
    if script.exists():
        return [str(script), "serve"]
    return [sys.executable, "-c", "from cli.main import main; main()", "serve"]


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(
                f"secateurs serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}"
            )
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"secateurs serve not ready after {READY_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    # The service starts a worker child: signal the whole process group it leads.
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """`secateurs serve` on a free port with a fresh data directory and two tenants."""
    root = tmp_path_factory.mktemp("service")
    port = free_port_local()
    env = {
        **os.environ,
        "SECATEURS_DATA_DIR": str(root / "data"),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "SECATEURS_API_KEYS": ",".join(f"{t}:{k}" for t, k in KEYS.items()),
        # Keep the two shared cores for the job itself.
        "OMP_NUM_THREADS": "1",
    }
    log = root / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            _serve_command(),
            cwd=root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc, log)
        yield Service(url=url, data_dir=root / "data", log=log)
    finally:
        _stop(proc)


def _tiny_onnx(path: Path) -> None:
    import torch
    from torch import nn

    torch.manual_seed(0)
    torch.set_num_threads(1)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, NUM_CLASSES),
    ).eval()
    torch.onnx.export(
        net,
        (torch.randn(*INPUT_SHAPE),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )


def _tiny_npz(path: Path, n: int = 128) -> None:
    # Labels follow the brightest colour channel and image half, so there is something
    # to learn and accuracy is a real number.
    rng = np.random.default_rng(0)
    x = rng.random((n, *INPUT_SHAPE[1:]), dtype=np.float32)
    y = (
        x[:, :2].mean(axis=(2, 3)).argmax(axis=1) * 2
        + (x[:, :, :8].mean(axis=(1, 2, 3)) > x[:, :, 8:].mean(axis=(1, 2, 3)))
    ).astype(np.int64)
    np.savez(path, x=x, y=y)


@pytest.fixture(scope="session")
def uploads(tmp_path_factory: pytest.TempPathFactory) -> Uploads:
    """A tiny seeded conv net as ONNX (1x3x16x16, dynamic batch), a labeled .npz, and junk."""
    root = tmp_path_factory.mktemp("uploads")
    files = Uploads(
        model=root / "tiny-convnet.onnx",
        dataset=root / "tiny.npz",
        garbage=root / "not-a-model.onnx",
    )
    _tiny_onnx(files.model)
    _tiny_npz(files.dataset)
    files.garbage.write_bytes(b"this is not a model\n" * 10)
    return files


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """Debian's Chromium driven by Playwright; skipped, loudly, when it cannot start."""
    if not CHROMIUM.exists() and not shutil.which("chromium"):
        warnings.warn(
            "browser tests skipped: /usr/bin/chromium is missing "
            "(apt-get install -y chromium, or make system-deps)",
            stacklevel=1,
        )
        pytest.skip(
            "!!! CHROMIUM UNAVAILABLE: not installed at /usr/bin/chromium — "
            "install it with `make system-deps`; only the browser tests are skipped"
        )
    from playwright.sync_api import Error, sync_playwright

    executable = str(CHROMIUM) if CHROMIUM.exists() else shutil.which("chromium")
    with sync_playwright() as pw:
        try:
            chromium = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        except Error as exc:
            warnings.warn(f"browser tests skipped: Chromium failed to start: {exc}", stacklevel=1)
            pytest.skip(f"!!! CHROMIUM UNAVAILABLE: {executable} cannot be launched: {exc}")
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS
