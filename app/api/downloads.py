"""Streaming a stored object to the client with a strong ETag (its SHA-256)."""

from fastapi import Request, Response
from fastapi.responses import StreamingResponse

from app.core.errors import NotFound
from infra.storage import ArtifactStore, KeyNotFound


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    candidates = {tag.strip().removeprefix("W/") for tag in header.split(",")}
    return "*" in candidates or etag in candidates


def stream_object(
    request: Request,
    store: ArtifactStore,
    key: str,
    *,
    sha256: str,
    size_bytes: int,
    media_type: str,
    filename: str,
) -> Response:
    """The object under `key`, or 304 when the client's If-None-Match already names it."""
    etag = f'"{sha256}"'
    headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
    if _etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    try:
        chunks = store.open_stream(key)
    except KeyNotFound as exc:
        raise NotFound("the stored file is missing") from exc
    headers["Content-Length"] = str(size_bytes)
    headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return StreamingResponse(chunks, media_type=media_type, headers=headers)
