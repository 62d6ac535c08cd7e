"""The data disk: how much room is left, and recognising "no room" however it surfaces.

A full disk shows up as an OSError (ENOSPC) from a file write, as SQLite's SQLITE_FULL
("database or disk is full") or as PostgreSQL's `disk_full` (SQLSTATE 53100); each must
answer 507 `insufficient_storage`, never a 500. Before it comes to that, the routes that
create things refuse with 507 once free space drops below a floor, and /readyz says 503.
"""

import errno
import logging
import shutil
import sqlite3
from pathlib import Path

from fastapi import FastAPI, Request
from sqlalchemy.exc import DBAPIError
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app.core.errors import problem_response, unexpected_error

log = logging.getLogger(__name__)

# errno values that mean "no room to write": the disk, a quota, or a file-size limit.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_PG_DISK_FULL = "53100"
NO_ROOM_DETAIL = "the server has no room to store this right now; retry later"


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem holding `path` (for an unprivileged user)."""
    return shutil.disk_usage(path).free


def too_little_room(path: Path, min_free_bytes: int) -> bool:
    """True under the floor; a full disk (no byte free) is always too little."""
    return free_bytes(path) < max(1, min_free_bytes)


def _no_room(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
        return True
    if isinstance(exc, sqlite3.Error):
        return getattr(
            exc, "sqlite_errorcode", None
        ) == sqlite3.SQLITE_FULL or "database or disk is full" in str(exc)
    return getattr(exc, "sqlstate", None) == _PG_DISK_FULL


def is_disk_full(exc: BaseException) -> bool:
    """True when `exc`, or what caused it (SQLAlchemy wraps the driver's error as
    `.orig`), says the disk or a quota is full."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if _no_room(current):
            return True
        todo += [getattr(current, "orig", None), current.__cause__, current.__context__]
    return False


class DiskGuardMiddleware:
    """Refuse the requests that create things (`POST` on `paths`) with 507 while the data
    disk has less than `min_free_bytes` free. Other writes (cancel, delete: they free
    room or write a few bytes) go through; if the disk is truly full they fail with 507
    from the error handlers."""

    def __init__(
        self, app: ASGIApp, *, data_dir: Path, min_free_bytes: int, paths: frozenset[str]
    ) -> None:
        self.app = app
        self.data_dir = data_dir
        self.min_free_bytes = min_free_bytes
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] in self.paths
            and self._low()
        ):
            response = problem_response(507, "insufficient_storage", NO_ROOM_DETAIL)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _low(self) -> bool:
        try:
            return too_little_room(self.data_dir, self.min_free_bytes)
        except OSError:
            return False  # the probe failing is not a full disk; the write will tell


async def _disk_full_or_unexpected(request: Request, exc: Exception) -> Response:
    if is_disk_full(exc):
        log.warning("no room on %s %s: %s", request.method, request.url.path, exc)
        return problem_response(507, "insufficient_storage", NO_ROOM_DETAIL)
    return await unexpected_error(request, exc)


def install_disk_full_handlers(app: FastAPI) -> None:
    """Answer 507 for a write that failed for lack of room (a file write, SQLite or
    PostgreSQL), wherever it happened; any other such error stays a logged 500."""
    for exc_type in (OSError, DBAPIError):
        app.add_exception_handler(exc_type, _disk_full_or_unexpected)
