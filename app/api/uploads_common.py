"""What the model and dataset upload routes share: a per-tenant slot, the quota check,
receiving the file, finding an earlier upload of the same file, form-field parsing and
cleaning up."""

import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.requests import Request

from app.core.errors import InsufficientStorage, TooManyRequests, ValidationFailed
from app.core.pools import run_in
from app.core.ratelimit import NoTurn, TenantTurns
from app.uploads import SavedUpload, is_out_of_space, quota_exceeded, receive_upload
from contract.shapes import ShapeError, parse_shape
from infra.config import Settings
from infra.db.models import Dataset, Model
from infra.db.quota import quota_left

# Retry-After for an upload refused because the tenant has too many in progress.
TOO_MANY_UPLOADS_RETRY_S = 5.0

_ARCH_RE = re.compile(r"^[A-Za-z0-9_.-]+:[A-Za-z0-9_.\-/]+$")
MAX_NAME = 256

Upload = TypeVar("Upload", Model, Dataset)


def parse_input_shape(raw: str | None) -> list[int] | None:
    """`"1,3,224,224"` -> `[1, 3, 224, 224]`, in the contract's grammar (`contract.shapes`)."""
    if raw is None or not raw.strip():
        return None
    try:
        return list(parse_shape(raw))
    except ShapeError as exc:
        raise ValidationFailed("input_shape", str(exc)) from exc


def parse_arch(raw: str | None) -> str | None:
    """`torchvision:resnet18`-style names; which ones exist is the inspector's call."""
    if raw is None or not raw.strip():
        return None
    arch = raw.strip()
    if len(arch) > 256 or not _ARCH_RE.match(arch):
        raise ValidationFailed("arch", "expected 'library:name', e.g. torchvision:resnet18")
    return arch


def display_name(raw: str | None, filename: str | None, fallback: str) -> str:
    """The name shown to clients: the given one, else the uploaded file's base name.
    Only ever metadata: storage keys are built from ids."""
    if raw and raw.strip():
        return raw.strip()[:MAX_NAME]
    if filename:
        base = PureWindowsPath(PurePosixPath(filename).name).name.strip()
        if base:
            return base[:MAX_NAME]
    return fallback


def same_file_uploads(
    factory: sessionmaker[Session], entity: type[Upload], tenant: str, sha256: str
) -> list[Upload]:
    """The tenant's live (not deleted) uploads of this kind with this SHA-256, oldest first:
    uploading the same file again answers the existing one instead of storing a copy."""
    with factory(expire_on_commit=False) as session:
        return list(
            session.scalars(
                select(entity)
                .where(
                    entity.tenant == tenant, entity.sha256 == sha256, entity.deleted_at.is_(None)
                )
                .order_by(entity.created_at, entity.id)
            )
        )


@contextmanager
def scratch_upload(tmp: Path, saved: SavedUpload) -> Iterator[None]:
    """Around inspecting and storing a received upload: a full disk answers 507, and the
    scratch file and its ownership lock are released whatever happens."""
    try:
        yield
    except OSError as exc:
        if is_out_of_space(exc):
            raise InsufficientStorage(
                "the server has no room to store the upload right now; retry later"
            ) from exc
        raise
    finally:
        tmp.unlink(missing_ok=True)
        saved.release()


@asynccontextmanager
async def received_upload(
    request: Request,
    tenant: str,
    settings: Settings,
    tmp: Path,
    *,
    max_file_bytes: int,
    fields: set[str],
) -> AsyncIterator[SavedUpload]:
    """The upload streamed to `tmp`, for the route to inspect and store inside the block.

    A tenant has at most `max_uploads_per_tenant` uploads received and inspected at once;
    the others wait, their bodies unread, so that one tenant's burst of large uploads
    cannot take the server's bandwidth and CPU from every other tenant. One that waits
    longer than `upload_turn_wait_s` is refused (429 too_many_uploads)."""
    async with _upload_turn(request, tenant):
        factory = request.app.state.sessionmaker
        pool = request.app.state.pools.uploads
        left = await run_in(pool, quota_left, factory, tenant, settings.tenant_storage_quota_bytes)
        if left is not None and left <= 0:
            raise quota_exceeded(0)
        saved = await receive_upload(
            request,
            tmp,
            max_file_bytes=max_file_bytes,
            fields=fields,
            idle_timeout_s=settings.upload_idle_timeout_s,
            min_bytes_per_s=settings.upload_min_bytes_per_s,
            quota_left_bytes=left,
            pool=pool,
        )
        with scratch_upload(tmp, saved):
            yield saved


@asynccontextmanager
async def _upload_turn(request: Request, tenant: str) -> AsyncIterator[None]:
    turns: TenantTurns = request.app.state.upload_turns
    try:
        async with turns.turn(tenant):
            yield
    except NoTurn as exc:
        raise TooManyRequests(
            f"{turns.limit} uploads of this tenant have been in progress for "
            f"{turns.wait_s:.0f} s; retry when one has finished",
            retry_after_s=TOO_MANY_UPLOADS_RETRY_S,
            code="too_many_uploads",
        ) from exc
