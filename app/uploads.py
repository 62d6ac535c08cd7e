"""Streaming multipart uploads: straight to disk with a running SHA-256 and a size cap.

Starlette's form parser spools a whole file before the route runs, with no size limit;
here the request body is parsed as it arrives, so an oversized upload is refused as soon
as it crosses the cap (with or without a Content-Length) and its partial file removed.
"""

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from app.core.errors import ApiError, PayloadTooLarge, ValidationFailed

# Room for the multipart framing and the small text fields around the file.
FORM_OVERHEAD_BYTES = 1024 * 1024
MAX_FIELD_BYTES = 16 * 1024
FILE_FIELD = "file"


@dataclass
class SavedUpload:
    """A file received from a client, on disk, with what we learnt while streaming it."""

    path: Path
    sha256: str
    size_bytes: int
    filename: str | None
    fields: dict[str, str] = field(default_factory=dict)


class _FormSink:
    """Multipart parser callbacks: the file part goes to disk, small fields to memory."""

    def __init__(self, dest: Path, max_file_bytes: int, fields: set[str]) -> None:
        self.dest = dest
        self.max_file_bytes = max_file_bytes
        self.allowed = fields
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.size = 0
        self.hasher = hashlib.sha256()
        self.got_file = False
        self._fh: IO[bytes] | None = None
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
            self._fh = self.dest.open("wb")
        elif name not in self.allowed:
            raise ValidationFailed(name or "form", "unknown form field")
        self._part = name

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._fh is not None:
            self.size += len(chunk)
            if self.size > self.max_file_bytes:
                raise PayloadTooLarge(f"the file is larger than {self.max_file_bytes} bytes")
            # Plain blocking writes: chunks are small and land in the page cache.
            self._fh.write(chunk)
            self.hasher.update(chunk)
        else:
            self._buf += chunk
            if len(self._buf) > MAX_FIELD_BYTES:
                raise ValidationFailed(self._part or "form", "field value too long")

    def _part_end(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        elif self._part:
            self.fields[self._part] = self._buf.decode("utf-8", "replace")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _boundary(request: Request) -> bytes:
    ctype, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise ApiError("send the file as multipart/form-data", status=415,
                       code="unsupported_media_type")
    return boundary


def _check_declared_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the request is larger than {limit} bytes")


async def receive_upload(
    request: Request, dest: Path, *, max_file_bytes: int, fields: set[str]
) -> SavedUpload:
    """Stream the multipart body of `request` into `dest` (the `file` part) and collect the
    text `fields`. Raises PayloadTooLarge (413) past `max_file_bytes`, ValidationFailed
    (422) for a missing file or unknown fields; `dest` never survives a failure."""
    boundary = _boundary(request)
    body_limit = max_file_bytes + FORM_OVERHEAD_BYTES
    _check_declared_length(request, body_limit)
    dest.parent.mkdir(parents=True, exist_ok=True)
    sink = _FormSink(dest, max_file_bytes, fields)
    parser = MultipartParser(boundary, sink.callbacks())
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > body_limit:
                raise PayloadTooLarge(f"the request is larger than {body_limit} bytes")
            parser.write(chunk)
        parser.finalize()
        if not sink.got_file:
            raise ValidationFailed(FILE_FIELD, "field required")
    except MultipartParseError as exc:
        sink.close()
        dest.unlink(missing_ok=True)
        raise ApiError(f"malformed multipart body: {exc}", status=400, code="bad_request") from exc
    except ClientDisconnect as exc:
        sink.close()
        dest.unlink(missing_ok=True)
        raise ApiError("the client went away", status=400, code="client_disconnected") from exc
    except BaseException:
        sink.close()
        dest.unlink(missing_ok=True)
        raise
    sink.close()
    return SavedUpload(dest, sink.hasher.hexdigest(), sink.size, sink.filename, sink.fields)


def remove_stale_uploads(directory: Path, older_than_s: float) -> int:
    """Delete `*.upload` files left by a process that died mid-upload; returns how many.

    Only old files go: another API process may be streaming a fresh one right now."""
    cutoff = time.time() - older_than_s
    removed = 0
    for path in directory.glob("*.upload"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue  # removed by another process meanwhile
    return removed
