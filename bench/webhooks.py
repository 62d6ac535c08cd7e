"""Webhook figures: how soon a job's end is delivered, and what a receiver outage loses.

Starts its own API and worker on 127.0.0.1 (embedded defaults, the service's default
retry schedule) and a receiver of its own, then:

  * receiver up: N jobs with a `webhook_url`; for each, the delivery's arrival minus the
    job's `finished_at` (target ≤ 1 s);
  * receiver down: N more jobs end while nothing listens on the receiver's port; it comes
    back --outage-s seconds (default 60) after the last of them ended (the outage printed
    runs from the receiver's stop, before those jobs were submitted). Every event must
    arrive (target 0 lost), once (a retry of a delivered event is a duplicate), and the
    bench prints how long after the receiver came back the last one arrived;
  * every delivery's signature is checked with the Standard Webhooks reference library
    (`standardwebhooks`), an implementation independent of the service's.

    python bench/webhooks.py [--jobs 5] [--outage-s 60]
"""

import argparse
import json
import statistics
import tempfile
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
from service import Processes, free_port, machine, submit_jobs, tiny_onnx


class Receiver:
    """An HTTP server on `port` that records each POST with its arrival time."""

    def __init__(self, port: int, received: list[dict]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                received.append(
                    {"at": time.time(), "headers": dict(self.headers.items()), "body": body}
                )
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def finished_at(client: httpx.Client, job_ids: list[str], timeout_s: float = 300) -> dict:
    """Each job's `finished_at`, once all have ended."""
    deadline = time.monotonic() + timeout_s
    ends: dict[str, float] = {}
    while len(ends) < len(job_ids):
        if time.monotonic() > deadline:
            raise SystemExit(f"jobs still unfinished after {timeout_s:.0f} s")
        for job_id in job_ids:
            job = client.get(f"/v1/jobs/{job_id}").json()
            if job.get("finished_at"):
                ends[job_id] = _ts(job["finished_at"])
        time.sleep(0.05)
    return ends


def by_job(received: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for item in received:
        out.setdefault(json.loads(item["body"])["data"]["id"], []).append(item)
    return out


def wait_for_events(received: list[dict], job_ids: list[str], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if set(job_ids) <= set(by_job(received)):
            return True
        time.sleep(0.05)
    return False


def signatures_verify(received: list[dict], secret: str) -> tuple[int, int]:
    """(verified, total) with the reference implementation."""
    from standardwebhooks import Webhook

    reference = Webhook(secret)
    verified = 0
    for item in received:
        headers = {k.lower(): v for k, v in item["headers"].items()}
        try:
            reference.verify(item["body"], headers)
            verified += 1
        except Exception:  # noqa: BLE001, S112 - a failed verification is what is counted
            continue
    return verified, len(received)


def run(args: argparse.Namespace, data_dir: Path) -> None:
    procs = Processes(data_dir, {"webhook_allow_private": "true"})
    procs.start()
    port = free_port()
    url = f"http://127.0.0.1:{port}/hooks"
    received: list[dict] = []
    try:
        client = httpx.Client(
            base_url=procs.base_url, timeout=60, headers={"Authorization": f"Bearer {procs.key}"}
        )
        with tiny_onnx(data_dir / "tiny.onnx").open("rb") as fh:
            model_id = client.post("/v1/models", files={"file": ("tiny.onnx", fh)}).json()["id"]
        secret = client.get("/v1/webhooks/secret").json()["secret"]

        receiver = Receiver(port, received)
        body = {"model_id": model_id, "finetune": None, "webhook_url": url}
        up = submit_jobs(client, body, args.jobs)
        ends = finished_at(client, up)
        arrived = wait_for_events(received, up, timeout_s=30)
        receiver.stop()
        down_since = time.time()
        delays = [
            min(item["at"] for item in by_job(received).get(job_id, [])) - ends[job_id]
            for job_id in up
            if job_id in by_job(received)
        ]
        print(
            f"receiver up, {args.jobs} jobs: {len(delays)} delivered"
            + (
                f", job end -> delivery median {statistics.median(delays) * 1000:.0f} ms, "
                f"max {max(delays) * 1000:.0f} ms"
                if delays
                else ""
            )
            + f" (target <= 1000 ms){'' if arrived else '; some never arrived'}"
        )

        down = submit_jobs(client, body, args.jobs)
        ends = finished_at(client, down)
        back_at = max(ends.values()) + args.outage_s
        time.sleep(max(0.0, back_at - time.time()))
        receiver = Receiver(port, received)
        back = time.time()
        outage_s = back - down_since
        arrived = wait_for_events(received, down, timeout_s=args.outage_s * 4 + 60)
        time.sleep(2.0)  # a duplicate, if any, would come now
        receiver.stop()
        events = by_job(received)
        lost = [j for j in down if j not in events]
        duplicates = sum(len(events.get(j, [])) - 1 for j in down if j in events)
        last = max((min(i["at"] for i in events[j]) for j in down if j in events), default=back)
        print(
            f"receiver down for {outage_s:.0f} s while {args.jobs} jobs ended: "
            f"{args.jobs - len(lost)} delivered, {len(lost)} lost, {duplicates} duplicates "
            f"(target 0 lost); the last arrived {last - back:.1f} s after the receiver came "
            f"back{'' if arrived else ' (the bench stopped waiting)'}"
        )
        verified, total = signatures_verify(received, secret)
        print(
            f"signatures: {verified} of {total} deliveries verify with the reference "
            "implementation (standardwebhooks)"
        )
    finally:
        procs.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=5, help="jobs in each phase")
    parser.add_argument(
        "--outage-s", type=float, default=60.0, help="seconds the receiver stays down"
    )
    args = parser.parse_args()
    print(f"# bench/webhooks.py on {machine()}")
    print("# SQLite + embedded broker, the default retry schedule, receiver on 127.0.0.1")
    with tempfile.TemporaryDirectory(prefix="secateurs-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        run(args, data_dir)


if __name__ == "__main__":
    main()
