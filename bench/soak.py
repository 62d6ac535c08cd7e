"""Soak test: N mixed tiny jobs while the worker is SIGKILLed every k seconds and Redis
is restarted once; then drain and count what went wrong.

    python -m bench.soak [--jobs 200] [--kill-every 20] [--max-kills 0] [--drain-timeout 1800]

Starts its own redis-server (free port, no persistence, so the restart loses every
queued message), the API and one worker on a temporary data directory. Prints jobs
lost, duplicate runs and jobs stuck in a non-terminal state after draining (each must
be 0), the outcome and attempts histograms, and the recovery time after each kill (kill
to the next claim of a job). Not a test: it prints figures.
"""

import argparse
import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

# Run as a script (`python bench/soak.py`, as the README says): the repository root on the
# path, for the `bench` package it shares the service set-up with.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.service import Processes, free_port, percentile, tiny_onnx  # noqa: E402

TERMINAL = {"succeeded", "failed", "cancelled"}
METHODS = ["l1", "l2", "random", "fpgm"]


class Redis:
    """A private redis-server with no persistence."""

    def __init__(self, log: Path) -> None:
        self.port, self.log = free_port(), log
        self.proc: subprocess.Popen[bytes] | None = None

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
            ],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Soak(Processes):
    """The service, plus what the soak does to its worker."""

    def _spawn(self, name: str, argv: list[str]) -> None:
        # Append: the worker log of every restart is kept, for the duplicate-run count.
        log = (self.data_dir / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            argv,
            cwd=Path(__file__).resolve().parents[1],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def restart_worker(self) -> None:
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

    def kill_worker(self) -> float:
        proc = self.procs["worker"]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return time.time()

    def db(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.data_dir / "secateurs.db", timeout=30)
        conn.row_factory = sqlite3.Row
        return conn


def _inputs(client: httpx.Client, tmp: Path) -> tuple[str, str]:
    rng = np.random.default_rng(0)
    np.savez(
        tmp / "d.npz",
        x=rng.standard_normal((32, 3, 16, 16), dtype=np.float32),
        y=rng.integers(0, 4, 32),
    )
    ids = []
    for kind, path in (("models", tiny_onnx(tmp / "m.onnx")), ("datasets", tmp / "d.npz")):
        with path.open("rb") as fh:
            resp = client.post(f"/v1/{kind}", files={"file": (path.name, fh)}, timeout=300)
        resp.raise_for_status()
        ids.append(resp.json()["id"])
    return ids[0], ids[1]


def _job(i: int, model_id: str, dataset_id: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model_id": model_id,
        "prune": {
            "method": METHODS[i % len(METHODS)],
            "target": {"channel_ratio": 0.25 + 0.25 * (i % 3) / 2},
            "iterative_steps": 1,
        },
        "benchmark": {"providers": ["cpu"], "batch_sizes": [1], "warmup": 1, "iterations": 3},
        "finetune": None,
    }
    if i % 3 == 0:
        body["dataset_id"] = dataset_id
        body["finetune"] = {"epochs": 1, "batch_size": 16, "distill": False}
    return body


def _ts(text: str) -> float:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _claims_after(soak: Soak, moment: float) -> float | None:
    """Seconds from `moment` to the first claim (a `running` status event) after it."""
    with contextlib.closing(soak.db()) as db:
        rows = db.execute(
            "SELECT data, created_at FROM job_events WHERE kind = 'status' "
            "ORDER BY id DESC LIMIT 2000"
        ).fetchall()
    times = [
        _ts(r["created_at"])
        for r in rows
        if json.loads(r["data"])["status"] == "running" and _ts(r["created_at"]) > moment
    ]
    return min(times) - moment if times else None


def _terminal_count(soak: Soak) -> int:
    with contextlib.closing(soak.db()) as db:
        return db.execute(
            "SELECT count(*) FROM jobs WHERE status IN ('succeeded', 'failed', 'cancelled')"
        ).fetchone()[0]


def _chaos(
    soak: Soak,
    redis: Redis,
    args: argparse.Namespace,
    total: int,
    kills: list[float],
    done: threading.Event,
) -> None:
    """Kill the worker every `kill_every` s (and restart Redis once) until most jobs end."""
    restarted = False
    while not done.wait(args.kill_every):
        if _terminal_count(soak) >= total * args.chaos_until:
            return
        if args.max_kills and len(kills) >= args.max_kills:
            return
        kills.append(soak.kill_worker())
        if not restarted and len(kills) == 2:
            redis.stop()
            redis.start()
            restarted = True
            print(f"[{time.strftime('%X')}] redis restarted", flush=True)
        soak.restart_worker()
        print(f"[{time.strftime('%X')}] worker killed ({len(kills)})", flush=True)


def _report(soak: Soak, accepted: list[str], kills: list[float], elapsed: float) -> None:
    with contextlib.closing(soak.db()) as db:
        rows = {r["id"]: dict(r) for r in db.execute("SELECT * FROM jobs")}
        events = db.execute("SELECT job_id, data FROM job_events WHERE kind = 'status'").fetchall()
        artifacts = Counter(r[0] for r in db.execute("SELECT job_id FROM artifacts"))
        names = db.execute(
            "SELECT count(*), count(DISTINCT job_id || '/' || name) FROM artifacts"
        ).fetchone()
    ends: Counter[str] = Counter()
    for job_id, data in events:
        if json.loads(data)["status"] in ("succeeded", "failed"):
            ends[job_id] += 1
    # A second run that reached the end finds the job taken and says so in the worker log.
    log = (soak.data_dir / "worker.log").read_text(errors="replace")
    overtaken = {j for j in accepted if f"job {j}: lost ownership" in log}
    lost = [j for j in accepted if j not in rows]
    stuck = [j for j in accepted if j in rows and rows[j]["status"] not in TERMINAL]
    duplicates = [j for j in accepted if ends[j] > 1 or j in overtaken]
    statuses = Counter(rows[j]["status"] for j in accepted if j in rows)
    errors = Counter(
        (rows[j]["error_code"] or "")
        for j in accepted
        if j in rows and rows[j]["status"] == "failed"
    )
    attempts = Counter(rows[j]["attempts"] for j in accepted if j in rows)
    recoveries = [r for r in (_claims_after(soak, k) for k in kills) if r is not None]
    print(
        f"\njobs accepted        {len(accepted)}   wall {elapsed:.0f} s   "
        f"worker kills {len(kills)}   redis restarts 1"
    )
    print(f"jobs lost            {len(lost)}")
    print(f"duplicate runs       {len(duplicates)}")
    bare = sum(
        1 for j in accepted if rows.get(j, {}).get("status") == "succeeded" and artifacts[j] == 0
    )
    print(
        f"artifacts            {names[0]} rows, {names[0] - names[1]} duplicated; "
        f"{bare} succeeded jobs without artifacts"
    )
    print(f"stuck after draining {len(stuck)}")
    print(f"outcomes             {dict(sorted(statuses.items()))}")
    if errors:
        print(f"failure codes        {dict(sorted(errors.items()))}")
    print(f"attempts histogram   {dict(sorted(attempts.items()))}")
    if recoveries:
        print(
            f"recovery after kill  median {percentile(recoveries, 50):.1f} s, "
            f"max {max(recoveries):.1f} s over {len(recoveries)} kills"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--kill-every", type=float, default=20.0)
    parser.add_argument(
        "--chaos-until",
        type=float,
        default=0.8,
        help="stop killing once this fraction of jobs has ended",
    )
    parser.add_argument("--max-kills", type=int, default=0, help="0: no cap")
    parser.add_argument("--drain-timeout", type=float, default=1800.0)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="secateurs-soak-"))
    redis = Redis(tmp / "redis.log")
    redis.start()
    soak = Soak(
        tmp,
        {
            "broker_url": f"redis://127.0.0.1:{redis.port}/0",
            "max_concurrent_jobs_per_tenant": str(args.jobs + 10),
            "max_attempts": "5",
        },
    )
    try:
        soak.start()
        with httpx.Client(
            base_url=soak.base_url, timeout=60, headers={"Authorization": f"Bearer {soak.key}"}
        ) as client:
            model_id, dataset_id = _inputs(client, tmp)
            started = time.monotonic()
            kills: list[float] = []
            done = threading.Event()
            chaos = threading.Thread(
                target=_chaos, args=(soak, redis, args, args.jobs, kills, done), daemon=True
            )
            chaos.start()
            accepted = []
            for i in range(args.jobs):
                resp = client.post("/v1/jobs", json=_job(i, model_id, dataset_id))
                if resp.status_code == 202:
                    accepted.append(resp.json()["id"])
                else:
                    print(f"job {i} refused: {resp.status_code} {resp.text[:200]}")
            # The chaos ends by itself (most jobs ended, or the kill cap); draining starts
            # after the last kill, so a job killed late still has its time to finish.
            chaos.join(args.drain_timeout)
            done.set()
            chaos.join()
            deadline = time.monotonic() + args.drain_timeout
            while _terminal_count(soak) < len(accepted) and time.monotonic() < deadline:
                time.sleep(1)
            _report(soak, accepted, kills, time.monotonic() - started)
    finally:
        soak.stop()
        redis.stop()
        print(f"(logs in {tmp})")


if __name__ == "__main__":
    main()
