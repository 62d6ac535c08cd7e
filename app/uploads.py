"""Streaming multipart uploads: straight to disk with a running SHA-256 and a size cap.

Starlette's form parser spools a whole file before the route runs, with no size limit;
here the request body is parsed as it arrives, so an oversized upload is refused as soon
as it crosses the cap (with or without a Content-Length) and its partial file removed.

A partial file is held under an exclusive `flock` by the process receiving it, from its
creation until the route is done with it; the lock dies with the process, so at start-up
an unlocked `*.upload` file is known to belong to a process that died mid-upload.
"""

import asyncio
import fcntl
import hashlib
import os
import time
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from sqlalchemy.orm import Session, sessionmaker
from starlette.requests import ClientDisconnect, Request

from app.core.disk import NO_SPACE_ERRNOS
from app.core.errors import (
    ApiError,
    InsufficientStorage,
    PayloadTooLarge,
    StorageQuotaExceeded,
    ValidationFailed,
)
from infra.db.models import Dataset, Model
from infra.db.quota import insert_if_fits
from infra.storage import ArtifactStore

# Room for the multipart framing and the small text fields around the file.
FORM_OVERHEAD_BYTES = 1024 * 1024
MAX_FIELD_BYTES = 16 * 1024
FILE_FIELD = "file"
# A client that sends nothing for this long is dropped (slow-loris uploads hold a worker).
DEFAULT_IDLE_TIMEOUT_S = 60.0


@dataclass
class SavedUpload:
    """A file received from a client, on disk, with what we learnt while streaming it."""

    path: Path
    sha256: str
    size_bytes: int
    filename: str | None
    fields: dict[str, str] = field(default_factory=dict)
    lock_fd: int | None = None

    def release(self) -> None:
        """Drop the ownership lock; call once the partial file is moved or removed."""
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None


def _locked_create(dest: Path) -> tuple[IO[bytes], int]:
    """Create `dest` already locked: the file is made under a name the start-up sweep
    ignores, locked, then renamed, so no sweep can see it unlocked."""
    staging = dest.with_name(dest.name + ".new")
    fh = staging.open("wb")
    lock_fd = os.open(staging, os.O_RDONLY)
    fcntl.flock(lock_fd, fcntl.LOCK_EX)
    staging.rename(dest)
    return fh, lock_fd


class _FormSink:
    """Multipart parser callbacks: the file part goes to disk, small fields to memory."""

    def __init__(
        self, dest: Path, max_file_bytes: int, fields: set[str], quota_left_bytes: int | None = None
    ) -> None:
        self.dest = dest
        self.max_file_bytes = max_file_bytes
        self.quota_left_bytes = quota_left_bytes
        self.allowed = fields
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.size = 0
        self.hasher = hashlib.sha256()
        self.got_file = False
        self.lock_fd: int | None = None
        self._fh: IO[bytes] | None = None
        # File bytes parsed but not yet written: `flush()` writes and hashes them on a
        # worker thread, so the event loop never blocks on the disk (a burst of uploads
        # made writes wait for writeback and stalled every other request).
        self._pending: list[bytes] = []
        self._in_file = False
        self._file_done = False
        self._headers: dict[bytes, bytes] = {}
        self._hname = b""
        self._hvalue = b""
        self._part: str | None = None
        self._buf = bytearray()

    def callbacks(self) -> Any:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._headers, self._hname, self._hvalue, self._buf = {}, b"", b"", bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._hname += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._hvalue += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._hname.strip().lower()] = self._hvalue.strip()
        self._hname, self._hvalue = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name == FILE_FIELD:
            if self.got_file:
                raise ValidationFailed(FILE_FIELD, "only one file may be uploaded")
            self.got_file = True
            raw = options.get(b"filename")
            self.filename = raw.decode("utf-8", "replace") if raw is not None else None
            self._fh, self.lock_fd = _locked_create(self.dest)
            self._in_file = True
        elif name not in self.allowed:
            raise ValidationFailed(name or "form", "unknown form field")
        self._part = name

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._in_file:
            self.size += len(chunk)
            if self.size > self.max_file_bytes:
                raise PayloadTooLarge(f"the file is larger than {self.max_file_bytes} bytes")
            if self.quota_left_bytes is not None and self.size > self.quota_left_bytes:
                raise quota_exceeded(self.quota_left_bytes)
            self._pending.append(chunk)
        else:
            self._buf += chunk
            if len(self._buf) > MAX_FIELD_BYTES:
                raise ValidationFailed(self._part or "form", "field value too long")

    def _part_end(self) -> None:
        if self._in_file:
            self._in_file, self._file_done = False, True  # closed by the next flush()
        elif self._part:
            self.fields[self._part] = self._buf.decode("utf-8", "replace")

    def has_pending(self) -> bool:
        return bool(self._pending) or (self._file_done and self._fh is not None)

    def flush(self) -> None:
        """Write and hash the parsed file bytes (blocking: run it off the event loop)."""
        pending, self._pending = self._pending, []
        if self._fh is None:
            return
        for chunk in pending:
            self._fh.write(chunk)
            self.hasher.update(chunk)
        if self._file_done:
            self._fh.close()
            self._fh = None

    def close(self) -> None:
        self._pending = []
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def release(self) -> None:
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None


def _boundary(request: Request) -> bytes:
    ctype, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise ApiError(
            "send the file as multipart/form-data", status=415, code="unsupported_media_type"
        )
    return boundary


def quota_exceeded(left: int) -> StorageQuotaExceeded:
    return StorageQuotaExceeded(
        f"the upload does not fit in the {left} bytes left of your storage quota; delete "
        "models or datasets you no longer need"
    )


def _check_declared_length(request: Request, limit: int, quota_left_bytes: int | None) -> None:
    declared = request.headers.get("content-length")
    if not declared or not declared.isdigit():
        return
    if int(declared) > limit:
        raise PayloadTooLarge(f"the request is larger than {limit} bytes")
    # The form fields and framing around the file take less than FORM_OVERHEAD_BYTES.
    if quota_left_bytes is not None and int(declared) > quota_left_bytes + FORM_OVERHEAD_BYTES:
        raise quota_exceeded(quota_left_bytes)


async def _chunks(request: Request, idle_timeout_s: float) -> AsyncIterator[bytes]:
    """The request body, chunk by chunk; 408 when the client stalls past the timeout."""
    stream = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), timeout=idle_timeout_s)
        except StopAsyncIteration:
            return
        except TimeoutError as exc:
            raise ApiError(
                f"no data from the client for {idle_timeout_s:g} s",
                status=408,
                code="request_timeout",
            ) from exc
        yield chunk


def _check_rate(received: int, elapsed_s: float, grace_s: float, min_bytes_per_s: int) -> None:
    """408 when, past its first `grace_s`, the body arrives slower than `min_bytes_per_s`
    on average: trickling a byte now and then must not hold a connection for weeks."""
    if min_bytes_per_s > 0 and elapsed_s > grace_s and received < min_bytes_per_s * elapsed_s:
        raise ApiError(
            f"the upload arrives at {received / elapsed_s:.0f} bytes/s, slower than "
            f"the {min_bytes_per_s} bytes/s this server accepts",
            status=408,
            code="request_timeout",
        )


async def _flush(sink: _FormSink, pool: Executor | None) -> None:
    if not sink.has_pending():
        return
    if pool is None:
        sink.flush()
    else:
        await asyncio.get_running_loop().run_in_executor(pool, sink.flush)


async def _parse_body(
    request: Request,
    parser: MultipartParser,
    sink: _FormSink,
    body_limit: int,
    idle_timeout_s: float,
    min_bytes_per_s: int,
    pool: Executor | None,
) -> None:
    received = 0
    started = time.monotonic()
    async for chunk in _chunks(request, idle_timeout_s):
        received += len(chunk)
        if received > body_limit:
            raise PayloadTooLarge(f"the request is larger than {body_limit} bytes")
        _check_rate(received, time.monotonic() - started, idle_timeout_s, min_bytes_per_s)
        parser.write(chunk)
        await _flush(sink, pool)
    parser.finalize()
    await _flush(sink, pool)


def _translate(exc: BaseException) -> BaseException:
    """Map a receive failure to the error the client sees (itself when already typed)."""
    if isinstance(exc, MultipartParseError):
        return ApiError(f"malformed multipart body: {exc}", status=400, code="bad_request")
    if isinstance(exc, ClientDisconnect):
        return ApiError("the client went away", status=400, code="client_disconnected")
    if is_out_of_space(exc):
        return InsufficientStorage(
            "the server has no room to store the upload right now; retry later"
        )
    return exc


def is_out_of_space(exc: BaseException) -> bool:
    """True for a write refused for lack of room (full disk, quota, file-size limit)."""
    return isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS


async def receive_upload(
    request: Request,
    dest: Path,
    *,
    max_file_bytes: int,
    fields: set[str],
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
    min_bytes_per_s: int = 0,
    quota_left_bytes: int | None = None,
    pool: Executor | None = None,
) -> SavedUpload:
    """Stream the multipart body of `request` into `dest` (the `file` part) and collect the
    text `fields`. Raises PayloadTooLarge (413) past `max_file_bytes`,
    StorageQuotaExceeded (413) past `quota_left_bytes` (None: no quota), ValidationFailed
    (422) for a missing file or unknown fields, 408 when the client stalls for
    `idle_timeout_s` or, after that long, sends slower than `min_bytes_per_s` on average,
    507 when the disk is full; `dest` never survives a failure. The returned upload holds
    `dest`'s ownership lock until `release()`. File writes and hashing run on `pool`
    (None: on the event loop)."""
    boundary = _boundary(request)
    body_limit = max_file_bytes + FORM_OVERHEAD_BYTES
    _check_declared_length(request, body_limit, quota_left_bytes)
    dest.parent.mkdir(parents=True, exist_ok=True)
    sink = _FormSink(dest, max_file_bytes, fields, quota_left_bytes)
    parser = MultipartParser(boundary, sink.callbacks())
    try:
        await _parse_body(request, parser, sink, body_limit, idle_timeout_s, min_bytes_per_s, pool)
        if not sink.got_file:
            raise ValidationFailed(FILE_FIELD, "field required")
        sink.close()
    except BaseException as exc:
        sink.close()
        dest.unlink(missing_ok=True)
        sink.release()
        mapped = _translate(exc)
        if mapped is exc:
            raise
        raise mapped from exc
    return SavedUpload(
        dest, sink.hasher.hexdigest(), sink.size, sink.filename, sink.fields, lock_fd=sink.lock_fd
    )


def _owned_by_a_live_process(path: Path) -> bool:
    """True while some process holds the upload's lock (it is still being received)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the lock if we got it
    return False


def remove_stale_uploads(directory: Path, older_than_s: float) -> int:
    """Delete partial uploads left by a process that died mid-upload; returns how many.

    A `*.upload` file goes when no live process holds its lock (another API process may be
    streaming one right now, and holds it); a staging `*.upload.new` file, which a
    process dies holding only between two system calls, goes once `older_than_s` old."""
    cutoff = time.time() - older_than_s
    removed = 0
    for path in [*directory.glob("*.upload"), *directory.glob("*.upload.new")]:
        try:
            stale = (
                path.stat().st_mtime < cutoff
                if path.name.endswith(".new")
                else not _owned_by_a_live_process(path)
            )
            if stale:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue  # removed by another process meanwhile
    return removed


def commit_upload_row(
    factory: sessionmaker[Session], store: ArtifactStore, row: Model | Dataset, quota_bytes: int
) -> None:
    """Commit the row of an already-stored upload within its tenant's storage quota
    (413 `storage_quota_exceeded` otherwise); on refusal or failure remove the stored
    file, so nothing is left without a row."""
    try:
        left = insert_if_fits(factory, row, quota_bytes)
        if left is not None:
            raise quota_exceeded(left)
    except BaseException:
        store.delete(row.storage_key)
        raise
