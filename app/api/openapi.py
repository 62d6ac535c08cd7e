"""Helpers that document error responses and multipart bodies in the OpenAPI schema."""

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI

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


def _only_problem_content(schema: dict[str, Any]) -> dict[str, Any]:
    # FastAPI also lists a `model=` response under application/json; errors are only ever
    # sent as problem+json, so say just that.
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for response in operation.get("responses", {}).values():
                content = response.get("content", {})
                if PROBLEM_MEDIA_TYPE in content:
                    content.pop("application/json", None)
    return schema


def install_openapi(app: FastAPI) -> None:
    """Build the schema once, with error responses documented as problem+json only."""
    default = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _only_problem_content(default())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
