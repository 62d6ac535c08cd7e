"""`Client`: the Secateurs HTTP API from Python: upload, submit, follow, download."""

from __future__ import annotations

import contextlib
import hashlib
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from secateurs_client import _http
from secateurs_client.errors import (
    ChecksumMismatch,
    ConnectionFailed,
    JobFailed,
    RateLimited,
    Unavailable,
    WaitTimeout,
)
from secateurs_client.events import parse_events
from secateurs_client.progress import TerminalProgress

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
# The server pings an idle event stream every 15 s: a longer silence is a dead connection.
STREAM_READ_TIMEOUT_S = 45.0
# Consecutive stream failures without an event before `wait` polls instead.
MAX_STREAM_DROPS = 3
# A model upload's answer waits for the server's inspection of the file.
UPLOAD_READ_TIMEOUT_S = 300.0

Progress = bool | Callable[[dict[str, Any]], None] | None
PathLike = str | Path


class _Unset:
    """A keyword left out (as opposed to None, which clears a job's name or tags)."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


@dataclass(frozen=True)
class PruneResult:
    """What `Client.prune` produced: the finished job, the uploaded model (and dataset),
    the downloaded artifacts by name, and the job's report."""

    job: dict[str, Any]
    model: dict[str, Any]
    dataset: dict[str, Any] | None
    artifacts: dict[str, Path]
    report: dict[str, Any]

    @property
    def model_path(self) -> Path:
        """The pruned ONNX model on disk."""
        return self.artifacts["model.onnx"]


class Client:
    """A client of one Secateurs service, authenticated with one API key.

    `timeout` bounds each network operation (connect, each read, each write) in seconds;
    `retries` is how many times a request is retried after a 429, 502, 503 or 504 answer
    or a connection error, waiting `Retry-After` or an exponential, jittered backoff.
    Use it as a context manager, or call `close()`.
    """

    def __init__(
        self,
        url: str,
        key: str,
        *,
        timeout: float = 60.0,
        retries: int = 5,
        backoff: float = 0.5,
        poll_interval: float = 2.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.timeout, self.poll_interval = timeout, poll_interval
        self._http = _http.Http(
            url, key, timeout=timeout, retries=retries, backoff=backoff, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    # Uploads -----------------------------------------------------------------------------

    def upload_model(
        self,
        path: PathLike,
        *,
        name: str | None = None,
        arch: str | None = None,
        input_shape: str | Sequence[int] | None = None,
    ) -> dict[str, Any]:
        """Upload a model file (ONNX, `.pt2`, or weights with `arch`, e.g.
        `"torchvision:resnet18"`); returns the created model (`id`, `format`, `stats`, …).

        `input_shape` (e.g. `(1, 3, 224, 224)`) fills the model's dynamic dimensions."""
        if input_shape is not None and not isinstance(input_shape, str):
            input_shape = ",".join(str(int(d)) for d in input_shape)
        fields = {"name": name, "arch": arch, "input_shape": input_shape}
        return self._upload("models", Path(path), fields)

    def upload_dataset(self, path: PathLike, *, name: str | None = None) -> dict[str, Any]:
        """Upload a dataset (`.npz` with `x` and optional `y`, or a `.zip` image folder);
        returns the created dataset (`id`, `num_samples`, `labeled`, …)."""
        return self._upload("datasets", Path(path), {"name": name})

    def _upload(self, kind: str, path: Path, fields: dict[str, str | None]) -> dict[str, Any]:
        data = {k: v for k, v in fields.items() if v is not None}

        def open_file(stack: contextlib.ExitStack[Any]) -> dict[str, Any]:
            # Opened afresh for each attempt: a retry sends the file from its start.
            return {
                "files": {"file": (path.name, stack.enter_context(path.open("rb")))},
                "data": data,
            }

        timeout = httpx.Timeout(self.timeout, read=max(self.timeout, UPLOAD_READ_TIMEOUT_S))
        return self._json("POST", f"/v1/{kind}", open_files=open_file, timeout=timeout)

    # Jobs --------------------------------------------------------------------------------

    def submit(
        self,
        model_id: str,
        spec: Mapping[str, Any],
        *,
        dataset_id: str | None = None,
        idempotency_key: str | None = None,
        name: str | None = None,
        tags: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Submit a pruning job; returns the job (`status` "queued").

        `spec` is the job's fields as in the API (`prune`, `finetune`, `benchmark`, …; any
        may be left out). `name` (a short display name) and `tags` (labels to find it by)
        are optional. An `Idempotency-Key` is always sent (a random one unless given),
        so a retried submit never creates a second job."""
        body = {**spec, "model_id": model_id}
        if dataset_id is not None:
            body["dataset_id"] = dataset_id
        if name is not None:
            body["name"] = name
        if tags:
            body["tags"] = list(tags)
        headers = {"Idempotency-Key": idempotency_key or f"sc-{uuid.uuid4().hex}"}
        return self._json("POST", "/v1/jobs", json=body, headers=headers)

    def get_job(self, job_id: str) -> dict[str, Any]:
        """The job as it is now (`status`, `stage`, `progress`, `error`, …)."""
        return self._json("GET", f"/v1/jobs/{_q(job_id)}")

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Ask for the job to stop; raises `Conflict` when it has already finished."""
        return self._json("POST", f"/v1/jobs/{_q(job_id)}/cancel")

    def delete_job(self, job_id: str) -> None:
        """Delete a finished job with its events and files; raises `Conflict`
        (`job_not_finished`) while it is queued or running."""
        self._http.request("DELETE", f"/v1/jobs/{_q(job_id)}")

    def update_job(
        self, job_id: str, *, name: str | None = UNSET, tags: Sequence[str] | None = UNSET
    ) -> dict[str, Any]:
        """Rename or retag a job, in any status; returns the job. Only what is given
        changes: `name=None` removes the name, `tags=[]` (or None) every tag."""
        body: dict[str, Any] = {}
        if name is not UNSET:
            body["name"] = name
        if tags is not UNSET:
            body["tags"] = None if tags is None else list(tags)
        return self._json("PATCH", f"/v1/jobs/{_q(job_id)}", json=body)

    def jobs(
        self,
        *,
        status: str | None = None,
        model_id: str | None = None,
        dataset_id: str | None = None,
        tag: str | None = None,
        q: str | None = None,
        sort: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every job of this key's tenant, fetched a page at a time: newest first, or in
        the `sort` order (`"-speedup"`, `"finished_at"`, `"name"`, … as the API lists);
        `tag` and `q` (part of the name) narrow it like `status`, `model_id` and
        `dataset_id`. Each job's `result` has its headline figures once it succeeded."""
        params = {
            k: v
            for k, v in {
                "status": status,
                "model_id": model_id,
                "dataset_id": dataset_id,
                "tag": tag,
                "q": q,
                "sort": sort,
            }.items()
            if v is not None
        }
        cursor: str | None = None
        while True:
            page = self._json(
                "GET",
                "/v1/jobs",
                params={**params, "limit": 200, **({"cursor": cursor} if cursor else {})},
            )
            yield from page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def report(self, job_id: str) -> dict[str, Any]:
        """The report of a succeeded job; raises `Conflict` before it has succeeded."""
        return self._json("GET", f"/v1/jobs/{_q(job_id)}/report")

    def artifacts(self, job_id: str) -> list[dict[str, Any]]:
        """The job's files: `[{"name", "size_bytes", "sha256", "media_type"}, …]`."""
        items: list[dict[str, Any]] = self._http.request(
            "GET", f"/v1/jobs/{_q(job_id)}/artifacts"
        ).json()
        return items

    def wait(
        self, job_id: str, *, timeout: float | None = None, progress: Progress = None
    ) -> dict[str, Any]:
        """Block until the job ends; returns it when it succeeded, else raises `JobFailed`.

        Follows the job's event stream, resuming with `Last-Event-ID` after a dropped
        connection, and polls `GET /v1/jobs/{id}` instead when streams are refused (429,
        too many open) or keep failing. `progress=True` shows a progress line on stderr; a
        callable receives each `{"status", "stage", "progress", …}` update. `timeout`
        (seconds) raises `WaitTimeout`; the job itself keeps running."""
        deadline = None if timeout is None else time.monotonic() + timeout
        display = TerminalProgress() if progress is True else None
        show = display or (progress if callable(progress) else _ignore)
        try:
            job = self._follow(job_id, deadline, show) or self._poll(job_id, deadline, show)
        finally:
            if display is not None:
                display.close()
        if job["status"] != "succeeded":
            raise JobFailed(job)
        return job

    def _follow(
        self, job_id: str, deadline: float | None, show: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any] | None:
        """Follow the event stream to the job's end and return the job; None when the
        stream is refused or keeps failing (the caller then polls)."""
        state: dict[str, Any] = {}
        last_id: str | None = None
        drops = 0
        while drops < MAX_STREAM_DROPS:
            headers = {"Accept": "text/event-stream"}
            if last_id is not None:
                headers["Last-Event-ID"] = last_id
            read_s = (
                STREAM_READ_TIMEOUT_S
                if deadline is None
                else max(0.01, min(STREAM_READ_TIMEOUT_S, deadline - time.monotonic()))
            )
            try:
                with self._http.send(
                    "GET",
                    f"/v1/jobs/{_q(job_id)}/events",
                    headers=headers,
                    timeout=httpx.Timeout(self.timeout, read=read_s),
                    retry_statuses=frozenset({502, 503, 504}),
                ) as response:
                    if not response.headers.get("content-type", "").startswith("text/event-stream"):
                        return None
                    for event in parse_events(response.iter_lines()):
                        drops = 0
                        last_id = event.id if event.id is not None else last_id
                        state.update(event.data)
                        if event.event == "progress":
                            state.setdefault("status", "running")
                        show(dict(state))
                        if event.event == "status" and event.data.get("status") in TERMINAL:
                            return self.get_job(job_id)
                        _check(deadline, job_id)
            except (RateLimited, Unavailable):
                return None  # refused (too many streams) or down: poll instead
            except httpx.TransportError:
                pass  # dropped mid-stream: resume after the last event received
            drops += 1  # a failure, or a stream that ended before the job did
            _check(deadline, job_id)
            _http._sleep(self._http.delay(drops - 1))
        return None

    def _poll(
        self, job_id: str, deadline: float | None, show: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any]:
        while True:
            job = self.get_job(job_id)
            show({k: job.get(k) for k in ("status", "stage", "progress", "error")})
            if job["status"] in TERMINAL:
                return job
            _check(deadline, job_id)
            wait = self.poll_interval
            if deadline is not None:
                wait = max(0.0, min(wait, deadline - time.monotonic()))
            _http._sleep(wait)

    # Artifacts ---------------------------------------------------------------------------

    def download(self, job_id: str, artifact_name: str, dest: PathLike) -> Path:
        """Stream one artifact (e.g. `"model.onnx"`) to `dest` (a file, or a directory to
        put it in) and check its SHA-256 against the service's; returns the file's path.

        The file appears only once complete and verified; a mismatch raises
        `ChecksumMismatch`. A connection lost mid-way starts the download again."""
        target = Path(dest)
        if target.is_dir():
            target = target / Path(artifact_name).name
        url = f"/v1/jobs/{_q(job_id)}/artifacts/{_q(artifact_name)}"
        attempt = 0
        while True:
            try:
                self._fetch(url, target, lambda: self._listed_sha256(job_id, artifact_name))
                return target
            except httpx.TransportError as exc:
                if attempt >= self._http.retries:
                    raise ConnectionFailed(f"GET {url}: {exc!r}", code="connection_error") from exc
                _http._sleep(self._http.delay(attempt))
                attempt += 1

    def _fetch(self, url: str, target: Path, listed: Callable[[], str | None]) -> None:
        part = target.with_name(target.name + ".part")
        digest = hashlib.sha256()
        try:
            with self._http.send("GET", url) as response, part.open("wb") as out:
                for chunk in response.iter_bytes(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
                expected = _etag_sha256(response.headers.get("etag"))
            # The ETag is the file's SHA-256; the artifact listing also has it.
            expected = expected or listed()
            if expected is None:
                raise ChecksumMismatch(
                    f"{url}: the service gave no SHA-256 to check", code="checksum_missing"
                )
            if digest.hexdigest() != expected.lower():
                raise ChecksumMismatch(
                    f"{url}: SHA-256 {digest.hexdigest()}, expected {expected}",
                    code="checksum_mismatch",
                )
            part.replace(target)
        finally:
            part.unlink(missing_ok=True)

    def _listed_sha256(self, job_id: str, name: str) -> str | None:
        for item in self.artifacts(job_id):
            if item.get("name") == name:
                return str(item["sha256"])
        return None

    # All in one --------------------------------------------------------------------------

    def prune(
        self,
        model_path: PathLike,
        spec: Mapping[str, Any] | None = None,
        *,
        dataset_path: PathLike | None = None,
        dest_dir: PathLike | None = None,
        arch: str | None = None,
        input_shape: str | Sequence[int] | None = None,
        timeout: float | None = None,
        progress: Progress = None,
        name: str | None = None,
        tags: Sequence[str] | None = None,
    ) -> PruneResult:
        """Upload the model (and dataset), submit the job (with its `name` and `tags`, if
        given), wait for it, and download every artifact into `dest_dir` (default: a
        directory named after the job id).

        Raises `JobFailed` when the job fails; the uploads stay on the service."""
        model = self.upload_model(model_path, arch=arch, input_shape=input_shape)
        dataset = self.upload_dataset(dataset_path) if dataset_path is not None else None
        job = self.submit(
            model["id"],
            spec or {},
            dataset_id=dataset["id"] if dataset else None,
            name=name,
            tags=tags,
        )
        job = self.wait(job["id"], timeout=timeout, progress=progress)
        out = Path(dest_dir) if dest_dir is not None else Path(job["id"])
        out.mkdir(parents=True, exist_ok=True)
        files = {
            a["name"]: self.download(job["id"], a["name"], out / Path(a["name"]).name)
            for a in self.artifacts(job["id"])
        }
        return PruneResult(
            job=job, model=model, dataset=dataset, artifacts=files, report=self.report(job["id"])
        )

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        body: dict[str, Any] = self._http.request(method, path, **kwargs).json()
        return body


def _q(segment: str) -> str:
    return quote(segment, safe="")


def _ignore(_: dict[str, Any]) -> None:
    return None


def _check(deadline: float | None, job_id: str) -> None:
    if deadline is not None and time.monotonic() >= deadline:
        raise WaitTimeout(f"job {job_id} has not finished yet", code="wait_timeout")


def _etag_sha256(etag: str | None) -> str | None:
    """The SHA-256 in an ETag (`"<hex>"`, possibly weak `W/`), or None."""
    value = (etag or "").removeprefix("W/").strip('"').lower()
    if len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value
    return None
