"""Service figures: job pick-up latency, job polling latency under load, upload throughput.

Starts its own API (uvicorn) and worker on 127.0.0.1 — on Redis + PostgreSQL by default, or
on the embedded defaults (SQLite + SQL broker) with --embedded — and prints:

  * submit → running: median and max of (started_at − created_at) with an idle worker
    (target ≤ 1 s on Redis);
  * GET /v1/jobs/{id} under load: wrk with N keep-alive connections (`wrk -c100`, Debian's
    `wrk`; scripts/system-deps.sh installs it) for a few seconds, polling a job while the
    worker runs it: p50/p90/p99/max and requests per second (targets p99 ≤ 50 ms and
    ≥ 1,000 req/s); without wrk, N Python pollers (the client then costs the cores more).
    Then the same connections spread their polls over --spread queued jobs, round robin:
    polls of one job that arrive together share one read (app.api.status_reader), and
    this second figure shows the service where they cannot;
  * a 1 GiB dataset upload: transfer throughput (target ≥ 200 MB/s) and the RSS growth of
    the API's processes during it (target ≤ 50 MB); the sandboxed child that inspects the
    upload, under a memory limit of its own, is reported beside them.

The client runs on the same machine as the server, so the polling figures include the
client's own share of the cores; they are printed with the core count. The API runs as
`secateurs api --workers N` (--api-workers, default 1), as production runs it.

    python bench/service.py [--embedded] [--api-workers 2] [--jobs 7] [--pollers 100]
                            [--poll-s 10] [--spread 100] [--upload-mib 1024] [--only-polling]
"""

import argparse
import asyncio
import contextlib
import os
import platform
import re
import secrets
import shutil
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

    def __init__(self, data_dir: Path, settings: dict[str, str], api_workers: int = 1) -> None:
        self.data_dir, self.port, self.api_workers = data_dir, free_port(), api_workers
        self.key = "sk_bench_" + secrets.token_hex(8)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SECATEURS_")}
        self.env.update(
            {
                "SECATEURS_DATA_DIR": str(data_dir),
                "PYTHONUNBUFFERED": "1",
                "SECATEURS_API_KEYS": f"bench:{self.key}",
                "SECATEURS_RATE_LIMIT_PER_MINUTE": "10000000",
                "SECATEURS_MAX_CONCURRENT_JOBS_PER_TENANT": "1000",  # the spread's queue
                "SECATEURS_MAX_DATASET_BYTES": str(8 * 1024**3),
                **{f"SECATEURS_{k.upper()}": v for k, v in settings.items()},
            }
        )
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._spawn(
            "api",
            [
                sys.executable,
                "-c",
                "from cli.main import main; main()",
                "api",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                str(self.api_workers),
            ],
        )
        self._wait(lambda: httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200)
        self._spawn(
            "worker",
            [
                sys.executable,
                "-c",
                "from cli.main import main; main()",
                "worker",
                "--loglevel",
                "warning",
            ],
        )
        # The worker logs nothing at warning level when ready; the first job shows it.

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = (self.data_dir / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _wait(self, ready, timeout_s: float = 60) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if ready():
                    return
            time.sleep(0.2)
        raise RuntimeError("the API did not start; see api.log in " + str(self.data_dir))

    def rss_bytes(self, name: str = "api") -> tuple[int, int]:
        """Resident memory of the API's own processes (uvicorn's, and its worker processes
        under --workers N), and of the rest of its process tree: the sandboxed children
        that inspect an upload, each under its own memory limit."""
        own = others = 0
        for pid in _tree(self.procs[name].pid):
            if pid == self.procs[name].pid or _is_multiprocessing(pid):
                own += _rss(pid)
            else:
                others += _rss(pid)
        return own, others

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        out.append(todo.pop())
        todo.extend(children.get(out[-1], []))
    return out


def _is_multiprocessing(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return b"multiprocessing" in Path(f"/proc/{pid}/cmdline").read_bytes()
    return False


def _rss(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def tiny_onnx(path: Path, width: int = 8, depth: int = 1, size: int = 16) -> Path:
    """A conv net exported to ONNX: `depth` 3x3 convolutions of `width` channels on a
    `size`x`size` image, then a pooled linear head. The defaults make a job that starts
    and ends at once (pick-up latency); the polling job's model keeps a core busy."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Conv2d(3 if i == 0 else width, width, 3, padding=1), nn.ReLU()]
    net = nn.Sequential(
        *layers,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, 4),
    ).eval()
    torch.onnx.export(
        net,
        (torch.randn(1, 3, size, size),),
        str(path),
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "b"}, "y": {0: "b"}},
        opset_version=17,
        dynamo=False,
    )
    return path


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def pickup_latency(client: httpx.Client, model_id: str, jobs: int, idle_s: float) -> list[float]:
    """Seconds from created_at to started_at, one job at a time on an idle worker. Each job
    is cancelled as soon as it runs, to free the worker for the next, which is submitted
    `idle_s` later (the pool forks a fresh child after each job and it imports the engine
    while it waits)."""
    body = {
        "model_id": model_id,
        "finetune": None,
        "benchmark": {"providers": ["cpu"], "warmup": 0, "iterations": 1},
    }
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
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, limits=limits, timeout=30
    ) as client:
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


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    """wrk's `812.00us`, `3.45ms`, `1.20s` in milliseconds."""
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNIT_MS[unit]


def parse_wrk(out: str) -> dict[str, float]:
    """The figures of `wrk --latency` output: p50/p90/p99 and max in ms, req/s, errors."""
    figures = {
        f"p{q}": _ms(m.group(1))
        for q in (50, 90, 99)
        if (m := re.search(rf"^\s+{q}%\s+(\S+)", out, re.M))
    }
    figures["max"] = _ms(re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    figures["rps"] = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    figures["requests"] = float(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    figures["non_2xx"] = float(non_2xx.group(1)) if non_2xx else 0.0
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    figures["socket_errors"] = float(sum(map(int, errors.groups()))) if errors else 0.0
    return figures


def wrk_poll(
    procs: Processes, job_ids: list[str], connections: int, seconds: float
) -> dict[str, float]:
    """`wrk -t2 -cN` on GET /v1/jobs/{id} for `seconds`, keep-alive, 5 s request timeout;
    each request to the next of `job_ids` (a Lua script) when there are several."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(_round_robin_lua([f"/v1/jobs/{j}" for j in job_ids]))
        script.flush()
        out = subprocess.run(
            [
                "wrk",
                "-t2",
                f"-c{connections}",
                f"-d{seconds:g}s",
                "--latency",
                "--timeout",
                "5s",
                "-H",
                f"Authorization: Bearer {procs.key}",
                *(["-s", script.name] if len(job_ids) > 1 else []),
                f"{procs.base_url}/v1/jobs/{job_ids[0]}",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    return parse_wrk(out)


def _round_robin_lua(paths: list[str]) -> str:
    listed = ", ".join(f'"{p}"' for p in paths)
    return (
        f"local paths = {{{listed}}}\n"
        "local i = math.random(#paths)\n"
        "request = function()\n"
        "  i = i % #paths + 1\n"
        '  return wrk.format("GET", paths[i])\n'
        "end\n"
    )


def _wrk_figures(w: dict[str, float]) -> str:
    return (
        f"p50 {w['p50']:.1f} ms, p90 {w['p90']:.1f} ms, p99 {w['p99']:.1f} ms, max "
        f"{w['max']:.0f} ms, {w['rps']:.0f} req/s ({w['requests']:.0f} requests, "
        f"{w['non_2xx']:.0f} non-2xx, {w['socket_errors']:.0f} socket errors/timeouts)"
    )


def report_polling(
    args: argparse.Namespace, procs: Processes, client: httpx.Client, job_id: str
) -> None:
    if shutil.which("wrk"):
        start = time.time()
        w = wrk_poll(procs, [job_id], args.pollers, args.poll_s)
        end = time.time()
        print(
            f"GET /v1/jobs/{{id}}, wrk -t2 -c{args.pollers} for {args.poll_s:g} s, "
            f"{args.api_workers} API process(es): {_wrk_figures(w)} "
            f"(targets p99 <= 50 ms, >= 1000 req/s); the job ran during "
            f"{job_overlap(client, job_id, start, end):.1f} s of the {end - start:.1f} s"
        )
        if args.spread > 1:
            others = queued_jobs(client, job_id, args.spread)
            start = time.time()
            w = wrk_poll(procs, others, args.pollers, args.poll_s)
            end = time.time()
            print(
                f"  the same spread over {len(others)} queued jobs, round robin: "
                f"{_wrk_figures(w)}; the running job ran during "
                f"{job_overlap(client, job_id, start, end):.1f} s of the {end - start:.1f} s"
            )
        return
    times = asyncio.run(_poll(procs.base_url, procs.key, job_id, args.pollers, args.each))
    ms = [t * 1000 for t in times]
    print(
        f"GET /v1/jobs/{{id}}, {args.pollers} concurrent Python pollers x {args.each} (no wrk):"
        f" p50 {percentile(ms, 50):.1f} ms, p90 {percentile(ms, 90):.1f} ms, p99 "
        f"{percentile(ms, 99):.1f} ms, {len(ms) / (sum(times) / args.pollers):.0f} req/s "
        f"(target p99 <= 50 ms)"
    )


def running_job(client: httpx.Client, data_dir: Path) -> str:
    """A job for the worker to run while its status is polled (pruning steps and a long
    benchmark of a mid-sized net), returned once it runs."""
    with tiny_onnx(data_dir / "busy.onnx", width=64, depth=6, size=96).open("rb") as fh:
        model = client.post("/v1/models", files={"file": ("busy.onnx", fh)}).json()
    body = {
        "model_id": model["id"],
        "finetune": None,
        "prune": {"target": {"channel_ratio": 0.5}, "iterative_steps": 5},
        "benchmark": {"providers": ["cpu"], "warmup": 0, "iterations": 2000},
    }
    resp = client.post("/v1/jobs", json=body)
    resp.raise_for_status()
    job_id = str(resp.json()["id"])
    deadline = time.monotonic() + 120
    while client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued":
        if time.monotonic() > deadline:
            raise SystemExit("the polling job did not start within 120 s")
        time.sleep(0.05)
    return job_id


def submit_jobs(client: httpx.Client, body: dict, count: int) -> list[str]:
    """The ids of `count` jobs submitted with `body`."""
    ids = []
    for _ in range(count):
        resp = client.post("/v1/jobs", json=body)
        resp.raise_for_status()
        ids.append(str(resp.json()["id"]))
    return ids


def queued_jobs(client: httpx.Client, running: str, count: int) -> list[str]:
    """`count` more jobs of the running job's model, queued behind it."""
    model_id = client.get(f"/v1/jobs/{running}").json()["model_id"]
    return submit_jobs(client, {"model_id": model_id, "finetune": None}, count)


def job_overlap(client: httpx.Client, job_id: str, start: float, end: float) -> float:
    """Seconds of [start, end] during which the job was running (it may have ended)."""
    job = client.get(f"/v1/jobs/{job_id}").json()
    began = _ts(job["started_at"]) if job.get("started_at") else end
    finished = _ts(job["finished_at"]) if job.get("finished_at") else end
    return max(0.0, min(end, finished) - max(start, began))


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
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="big.npz"\r\nContent-Type: application/octet-stream\r\n\r\n'
    ).encode()
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

    base_rss, peak, children_peak = procs.rss_bytes()[0], [0], [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            own, others = procs.rss_bytes()
            peak[0], children_peak[0] = max(peak[0], own), max(children_peak[0], others)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    headers = {
        "Authorization": f"Bearer {procs.key}",
        "Content-Type": f"multipart/form-data; boundary={boundary}",
    }
    resp = httpx.post(f"{procs.base_url}/v1/datasets", content=body(), headers=headers, timeout=600)
    done = time.perf_counter()
    stop.set()
    sampler.join()
    size = path.stat().st_size
    return {
        "status": resp.status_code,
        "bytes": size,
        "transfer_s": sent_at["end"] - sent_at["start"],
        "total_s": done - sent_at["start"],
        "rss_growth": max(0, peak[0] - base_rss),
        "base_rss": base_rss,
        "inspector_rss": children_peak[0],
    }


def machine() -> str:
    import celery
    import fastapi
    import uvicorn

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores (load {load}), Python "
        f"{platform.python_version()}, fastapi {fastapi.__version__}, uvicorn "
        f"{uvicorn.__version__}, celery {celery.__version__}"
    )


def run(args: argparse.Namespace, data_dir: Path, settings: dict[str, str]) -> None:
    procs = Processes(data_dir, settings, api_workers=args.api_workers)
    procs.start()
    try:
        client = httpx.Client(
            base_url=procs.base_url, timeout=60, headers={"Authorization": f"Bearer {procs.key}"}
        )
        with tiny_onnx(data_dir / "tiny.onnx").open("rb") as fh:
            model = client.post("/v1/models", files={"file": ("tiny.onnx", fh)}).json()
        if not args.only_polling:
            lat = pickup_latency(client, model["id"], args.jobs, args.idle_s)
            print(
                f"submit -> running, idle worker, {len(lat)} jobs: median "
                f"{statistics.median(lat) * 1000:.0f} ms, max {max(lat) * 1000:.0f} ms "
                f"(target median <= 1000 ms)"
            )

        report_polling(args, procs, client, running_job(client, data_dir))

        if args.upload_mib and not args.only_polling:
            up = upload_throughput(procs, write_npz(data_dir / "big.npz", args.upload_mib))
            mb = up["bytes"] / 1e6
            print(
                f"upload {up['bytes'] / 2**30:.2f} GiB dataset: HTTP {up['status']}, transfer "
                f"{mb / up['transfer_s']:.0f} MB/s ({up['transfer_s']:.1f} s), with "
                f"inspection {mb / up['total_s']:.0f} MB/s ({up['total_s']:.1f} s) "
                f"(target >= 200 MB/s); API RSS {up['base_rss'] / 2**20:.0f} MiB, growth "
                f"{up['rss_growth'] / 2**20:.1f} MiB (target <= 50 MB); the sandboxed "
                f"inspection beside it peaked at {up['inspector_rss'] / 2**20:.0f} MiB"
            )
    finally:
        procs.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--embedded",
        action="store_true",
        help="SQLite + embedded broker instead of Redis + PostgreSQL",
    )
    parser.add_argument("--jobs", type=int, default=7, help="jobs timed for pick-up")
    parser.add_argument(
        "--idle-s", type=float, default=5.0, help="seconds the worker idles before each timed job"
    )
    parser.add_argument(
        "--api-workers", type=int, default=1, help="API processes (secateurs api --workers)"
    )
    parser.add_argument("--pollers", type=int, default=100, help="concurrent connections")
    parser.add_argument("--poll-s", type=float, default=10.0, help="seconds of wrk polling")
    parser.add_argument("--each", type=int, default=20, help="requests per poller, without wrk")
    parser.add_argument(
        "--spread", type=int, default=100, help="queued jobs polled round robin (1: skip)"
    )
    parser.add_argument("--upload-mib", type=int, default=1024, help="0 skips the upload")
    parser.add_argument(
        "--only-polling", action="store_true", help="skip the pick-up latency and the upload"
    )
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
