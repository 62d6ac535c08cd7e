"""The job dashboard served at `/` (static files shipped with the package).

The dashboard is plain HTML, CSS and ES modules under `static/`: no build step and no
CDN, so it works offline and behind a firewall. It talks to the API only through the
public `/v1` routes with the user's key, exactly like any other client.
"""

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).resolve().parent / "static"

# Longest path and file name under static/ worth looking up (our names are short).
MAX_PATH = 1024
MAX_NAME = 255
# The files change with each release, not per request: let browsers revalidate cheaply.
_CACHE = {"Cache-Control": "no-cache"}

router = APIRouter(include_in_schema=False)


@router.api_route("/", methods=["GET", "HEAD"])
def index() -> FileResponse:
    """The single page of the dashboard; views are chosen by the URL's hash (`#/jobs`)."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=_CACHE)


@router.api_route("/static/{path:path}", methods=["GET", "HEAD"])
def static_file(path: str) -> FileResponse:
    """A file under `static/`; anything that resolves outside it is a plain 404."""
    target = resolve_static(path)
    if target is None:
        raise HTTPException(status_code=404, detail="Not found")
    return FileResponse(target, headers=_CACHE)


def resolve_static(path: str) -> Path | None:
    """Map a URL path onto a file inside `STATIC_DIR`, or None (missing, a folder, `..`,
    or a name no file of ours has: a NUL byte, an over-long name)."""
    if "\x00" in path or len(path) > MAX_PATH or any(len(p) > MAX_NAME for p in path.split("/")):
        return None  # the filesystem would raise, not answer "no such file"
    try:
        target = (STATIC_DIR / path).resolve()
        if not target.is_relative_to(STATIC_DIR) or not target.is_file():
            return None
    except (OSError, ValueError):  # e.g. a name the filesystem refuses
        return None
    return target
