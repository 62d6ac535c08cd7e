"""Service figures: job pick-up latency, job polling latency under load, upload throughput.

Starts its own API (uvicorn) and worker on 127.0.0.1 — on Redis + PostgreSQL by default, or
on the embedded defaults (SQLite + SQL broker) with --embedded — and prints:

  * submit → running: median and max of (started_at − created_at) with an idle worker
    (target ≤ 1 s on Redis);
  * GET /v1/jobs/{id}: p50/p90/p99 with N concurrent pollers (target p99 ≤ 50 ms);
  * a 1 GiB dataset upload: transfer throughput (target ≥ 200 MB/s) and the API's RSS growth
    during it (target ≤ 50 MB).

The client runs on the same machine as the server, so the polling figures include the
client's own share of the cores; they are printed with the core count.

    python bench/service.py [--embedded] [--jobs 7] [--pollers 100] [--upload-mib 1024]
"""

import argparse
import asyncio
import contextlib
import os
import platform
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REDIS_URL = "redis://127.0.0.1:6379/14"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    import psycopg

    name = f"secateurs_bench_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Processes:
    """The API and one worker as child processes of this script."""

    def __init__(self, data_dir: Path, settings: dict[str, str]) -> None:
        self.data_dir, self.port = data_dir, free_port()
        self.key = "sk_bench_" + secrets.token_hex(8)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SECATEURS_")}
        self.env.update({"SECATEURS_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1",
                         "SECATEURS_API_KEYS": f"bench:{self.key}",
                         "SECATEURS_RATE_LIMIT_PER_MINUTE": "10000000",
                         "SECATEURS_MAX_DATASET_BYTES": str(8 * 1024**3),
                         **{f"SECATEURS_{k.upper()}": v for k, v in settings.items()}})
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._spawn("api", [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory",
                            "--host", "127.0.0.1", "--port", str(self.port),
                            "--log-level", "warning", "--no-access-log"])
        self._wait(lambda: httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200)
        self._spawn("worker", [sys.executable, "-c", "from cli.main import main; main()",
                               "worker", "--loglevel", "warning"])
        # The worker logs nothing at warning level when ready; the first job shows it.

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = (self.data_dir / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def _wait(self, ready, timeout_s: float = 60) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if ready():
                    return
            time.sleep(0.2)
        raise RuntimeError("the API did not start; see api.log in " + str(self.data_dir))

    def rss_bytes(self, name: str = "api") -> int:
        for line in Path(f"/proc/{self.procs[name].pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def tiny_onnx(path: Path) -> Path:
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 4)).eval()
    torch.onnx.export(net, (torch.randn(1, 3, 16, 16),), str(path), input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}},
                      opset_version=17, dynamo=False)
    return path


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def pickup_latency(client: httpx.Client, model_id: str, jobs: int,
                   idle_s: float) -> list[float]:
    """Seconds from created_at to started_at, one job at a time on an idle worker. Each job
    is cancelled as soon as it runs, to free the worker for the next, which is submitted
    `idle_s` later (the pool forks a fresh child after each job and it imports the engine
    while it waits)."""
    body = {"model_id": model_id, "finetune": None,
            "benchmark": {"providers": ["cpu"], "warmup": 0, "iterations": 1}}
    out: list[float] = []
    for i in range(jobs + 1):  # the first warms the worker up and is not counted
        job = client.post("/v1/jobs", json=body).json()
        while (job := client.get(f"/v1/jobs/{job['id']}").json())["status"] == "queued":
            time.sleep(0.02)
        if i:
            out.append(_ts(job["started_at"]) - _ts(job["created_at"]))
        client.post(f"/v1/jobs/{job['id']}/cancel")
        while client.get(f"/v1/jobs/{job['id']}").json()["status"] == "running":
            time.sleep(0.05)
        time.sleep(idle_s)
    return out


async def _poll(base_url: str, key: str, job_id: str, pollers: int, each: int) -> list[float]:
    limits = httpx.Limits(max_connections=pollers, max_keepalive_connections=pollers)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits,
                                 timeout=30) as client:
        await client.get(f"/v1/jobs/{job_id}")

        async def one() -> list[float]:
            times = []
            for _ in range(each):
                start = time.perf_counter()
                resp = await client.get(f"/v1/jobs/{job_id}")
                times.append(time.perf_counter() - start)
                resp.raise_for_status()
            return times

        results = await asyncio.gather(*(one() for _ in range(pollers)))
    return [t for r in results for t in r]


def write_npz(path: Path, mib: int) -> Path:
    """A labeled uint8 dataset of about `mib` MiB (3x32x32 samples)."""
    n = mib * 1024 * 1024 // (3 * 32 * 32)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    np.savez(path, x=x, y=(np.arange(n) % 10).astype(np.int64))
    return path


def upload_throughput(procs: Processes, path: Path) -> dict[str, float]:
    """Stream `path` as a multipart dataset upload; time the transfer and sample the API's
    RSS every 20 ms while it runs."""
    boundary = "bench" + secrets.token_hex(8)
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"big.npz\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    sent_at: dict[str, float] = {}

    def body() -> Iterator[bytes]:
        sent_at["start"] = time.perf_counter()
        yield head
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                yield chunk
        yield tail
        sent_at["end"] = time.perf_counter()

    base_rss, peak = procs.rss_bytes(), [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], procs.rss_bytes())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    headers = {"Authorization": f"Bearer {procs.key}",
               "Content-Type": f"multipart/form-data; boundary={boundary}"}
    resp = httpx.post(f"{procs.base_url}/v1/datasets", content=body(), headers=headers,
                      timeout=600)
    done = time.perf_counter()
    stop.set()
    sampler.join()
    size = path.stat().st_size
    return {"status": resp.status_code, "bytes": size,
            "transfer_s": sent_at["end"] - sent_at["start"],
            "total_s": done - sent_at["start"],
            "rss_growth": max(0, peak[0] - base_rss), "base_rss": base_rss}


def machine() -> str:
    import celery
    import fastapi
    import uvicorn

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores (load {load}), Python "
            f"{platform.python_version()}, fastapi {fastapi.__version__}, uvicorn "
            f"{uvicorn.__version__}, celery {celery.__version__}")


def run(args: argparse.Namespace, data_dir: Path, settings: dict[str, str]) -> None:
    procs = Processes(data_dir, settings)
    procs.start()
    try:
        client = httpx.Client(base_url=procs.base_url, timeout=60,
                              headers={"Authorization": f"Bearer {procs.key}"})
        with tiny_onnx(data_dir / "tiny.onnx").open("rb") as fh:
            model = client.post("/v1/models", files={"file": ("tiny.onnx", fh)}).json()
        lat = pickup_latency(client, model["id"], args.jobs, args.idle_s)
        print(f"submit -> running, idle worker, {len(lat)} jobs: median "
              f"{statistics.median(lat) * 1000:.0f} ms, max {max(lat) * 1000:.0f} ms "
              f"(target median <= 1000 ms)")

        job_id = client.get("/v1/jobs", params={"limit": 1}).json()["items"][0]["id"]
        times = asyncio.run(_poll(procs.base_url, procs.key, job_id, args.pollers, args.each))
        ms = [t * 1000 for t in times]
        print(f"GET /v1/jobs/{{id}}, {args.pollers} concurrent pollers x {args.each}: p50 "
              f"{percentile(ms, 50):.1f} ms, p90 {percentile(ms, 90):.1f} ms, p99 "
              f"{percentile(ms, 99):.1f} ms, {len(ms) / (sum(times) / args.pollers):.0f} req/s "
              f"(target p99 <= 50 ms)")

        if args.upload_mib:
            up = upload_throughput(procs, write_npz(data_dir / "big.npz", args.upload_mib))
            mb = up["bytes"] / 1e6
            print(f"upload {up['bytes'] / 2**30:.2f} GiB dataset: HTTP {up['status']}, transfer "
                  f"{mb / up['transfer_s']:.0f} MB/s ({up['transfer_s']:.1f} s), with "
                  f"inspection {mb / up['total_s']:.0f} MB/s ({up['total_s']:.1f} s) "
                  f"(target >= 200 MB/s); API RSS {up['base_rss'] / 2**20:.0f} MiB, growth "
                  f"{up['rss_growth'] / 2**20:.1f} MiB (target <= 50 MB)")
    finally:
        procs.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--embedded", action="store_true",
                        help="SQLite + embedded broker instead of Redis + PostgreSQL")
    parser.add_argument("--jobs", type=int, default=7, help="jobs timed for pick-up")
    parser.add_argument("--idle-s", type=float, default=5.0,
                        help="seconds the worker idles before each timed job")
    parser.add_argument("--pollers", type=int, default=100)
    parser.add_argument("--each", type=int, default=20, help="requests per poller")
    parser.add_argument("--upload-mib", type=int, default=1024, help="0 skips the upload")
    args = parser.parse_args()
    backend = "SQLite + embedded broker" if args.embedded else "Redis + PostgreSQL"
    print(f"# bench/service.py on {machine()}")
    print(f"# backend: {backend}, local artifact store, API and worker on 127.0.0.1")
    with tempfile.TemporaryDirectory(prefix="secateurs-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        if args.embedded:
            run(args, data_dir, {})
        else:
            import redis

            redis.Redis.from_url(REDIS_URL).flushdb()
            with postgres_database() as db_url:
                run(args, data_dir, {"broker_url": REDIS_URL, "database_url": db_url})


if __name__ == "__main__":
    main()
