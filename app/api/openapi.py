"""Helpers that document error responses and multipart bodies in the OpenAPI schema."""

from http import HTTPStatus
from typing import Any

from app.api.schemas import Problem
from app.core.errors import PROBLEM_MEDIA_TYPE

_PROBLEM_SCHEMA = {"$ref": "#/components/schemas/Problem"}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries saying that each status answers with problem+json."""
    return {
        status: {
            "model": Problem,
            "description": HTTPStatus(status).phrase,
            "content": {PROBLEM_MEDIA_TYPE: {"schema": _PROBLEM_SCHEMA}},
        }
        for status in statuses
    }


def multipart_body(fields: dict[str, str], *, required: tuple[str, ...] = ("file",)) -> dict:
    """`openapi_extra=` describing a multipart form with a binary `file` and text fields.

    The routes parse the body themselves (streaming, with a size cap), so FastAPI cannot
    infer it."""
    properties: dict[str, Any] = {"file": {"type": "string", "format": "binary"}}
    properties |= {name: {"type": "string", "description": text} for name, text in fields.items()}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": properties,
                               "required": list(required)}
                }
            },
        }
    }
