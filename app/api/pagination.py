"""Cursor pagination, newest first, over (created_at, id).

The cursor is opaque to clients: base64 of the last row's position, so pages stay stable
while new rows are inserted at the head.
"""

import base64
import binascii
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import Session

from app.api.schemas import as_utc
from app.core.errors import ValidationFailed

DEFAULT_LIMIT = 50
MAX_LIMIT = 200

Row = TypeVar("Row")


def encode_cursor(created_at: datetime, row_id: str) -> str:
    raw = f"{as_utc(created_at).isoformat()}|{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Inverse of `encode_cursor`; a tampered cursor is a 422 naming `cursor`."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, row_id = raw.split("|", 1)
        return as_utc(datetime.fromisoformat(stamp)), row_id
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise ValidationFailed("cursor", "invalid cursor") from exc


def paginate(
    session: Session, stmt: Select[Any], entity: Any, limit: int, cursor: str | None
) -> tuple[list[Any], str | None]:
    """Run `stmt` (already filtered) one page at a time: `(rows, next_cursor)`."""
    if cursor:
        created_at, row_id = decode_cursor(cursor)
        stmt = stmt.where(
            or_(
                entity.created_at < created_at,
                and_(entity.created_at == created_at, entity.id < row_id),
            )
        )
    stmt = stmt.order_by(entity.created_at.desc(), entity.id.desc()).limit(limit + 1)
    rows = list(session.scalars(stmt))
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1].created_at, rows[-1].id)
