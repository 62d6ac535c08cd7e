"""Typed API errors and their mapping to RFC 9457 `application/problem+json`.

Every error the service answers with, including FastAPI's own 404/405/422 and unexpected
exceptions, goes through `problem_response`, so clients always get the same shape:
`{"type", "title", "status", "detail", "code"}` with `status` equal to the HTTP status.
"""

import json
import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"

# Every `code` a problem answer can carry, with what it means: the one list, documented on
# the Problem schema (app.api.openapi). tests/app/test_docs_offline.py finds each code
# the app's sources raise and fails on one missing here; an unlisted code is logged.
ERROR_CODES: dict[str, str] = {
    # the request itself
    "bad_request": "the request is malformed (e.g. a broken multipart body)",
    "invalid_json": "the body is not valid JSON; `detail` gives the line, column and why",
    "unsupported_media_type": "the body's Content-Type is not the one the route reads",
    "validation_error": "a field is missing or invalid; `errors` lists each one",
    "unauthorized": "missing or invalid API key",
    "forbidden": "the key may not do this (e.g. read /metrics)",
    "not_found": "no such route or resource (of this tenant)",
    "method_not_allowed": "the route does not take this method",
    "not_acceptable": "no representation matches the Accept header",
    "http_error": "another HTTP error; the status says which",
    "payload_too_large": "the body is larger than the server accepts",
    "request_timeout": "the body did not arrive in time, or too slowly",
    "client_disconnected": "the client went away mid-request",
    # limits
    "rate_limited": "too many requests; retry after Retry-After seconds",
    "too_many_auth_failures": "too many failed authentications from this client",
    "too_many_jobs": "the tenant's cap of unfinished jobs is reached",
    "too_many_streams": "the tenant's cap of open event streams is reached",
    "too_many_uploads": "the tenant's uploads or inspections in progress are at their cap",
    "storage_quota_exceeded": "the tenant's storage quota has no room for the upload",
    "insufficient_storage": "the server's data disk is (nearly) full; retry later",
    # state
    "conflict": "the resource's state does not allow this",
    "idempotency_key_reused": "the Idempotency-Key was used with a different request",
    "dataset_shape_mismatch": "the dataset's samples do not fit the model's input",
    "dataset_in_use": "an unfinished job uses the dataset",
    "model_in_use": "an unfinished job uses the model",
    "job_finished": "the job has already finished",
    "job_not_succeeded": "the job has not succeeded, so it has no such result",
    "job_not_finished": "the job is queued or running; cancel it first",
    "artifacts_expired": "the job's files were removed after the retention period",
    "report_missing": "the job has no report",
    "webhook_url_forbidden": "the webhook URL points at an address webhooks may not reach",
    # inspecting an upload (the sandboxed inspector's codes, passed through)
    "unprocessable": "the input is well-formed but unusable",
    "invalid_model": "the model file cannot be loaded",
    "invalid_dataset": "the dataset file cannot be read",
    "analysis_failed": "the model's prunability analysis failed",
    "analysis_timeout": "the model's prunability analysis ran out of time",
    "unsupported_op": "the model uses an operator the engine cannot handle",
    "unsafe_format": "the file's format could run code when loaded (e.g. a pickle)",
    "unsafe_archive": "the archive's entries are unsafe (links, paths outside it, bombs)",
    "external_data_forbidden": "the ONNX model refers to external data files",
    "non_finite_weights": "the model's weights hold NaN or infinity",
    "input_shape_required": "the model's input shape cannot be found; give input_shape",
    "input_shape_mismatch": "the given input_shape does not fit the model",
    "unknown_arch": "the state dict's architecture is not one the engine knows",
    "too_large": "the model or dataset is larger than the engine handles",
    "labels_required": "the dataset has no labels where they are needed",
    "not_classification": "the model is not a classifier where one is needed",
    "resources_exceeded": "the inspection ran out of memory or time",
    # the server
    "not_ready": "a dependency (database, broker, store) is unreachable",
    "sandbox_unavailable": "the server cannot isolate untrusted files, so refuses uploads",
    "internal_error": "a fault of the server; the details are in its log",
}


class ApiError(Exception):
    """Base of every error the API reports to its clients."""

    status = 500
    code = "internal_error"

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = headers or {}
        self.extra = extra or {}


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"

    def __init__(self, detail: str = "missing or invalid API key") -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class NotFound(ApiError):
    status, code = 404, "not_found"


class Conflict(ApiError):
    status, code = 409, "conflict"


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"


class Unprocessable(ApiError):
    """Input that is well-formed but unusable (a bad model file, mismatched shapes…)."""

    status, code = 422, "unprocessable"


class ValidationFailed(Unprocessable):
    code = "validation_error"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(
            f"{field}: {message}", extra={"errors": [{"field": field, "message": message}]}
        )


class TooManyRequests(ApiError):
    status, code = 429, "rate_limited"

    def __init__(self, detail: str, *, retry_after_s: float, code: str | None = None) -> None:
        seconds = max(1, int(retry_after_s + 0.999))
        super().__init__(detail, code=code, headers={"Retry-After": str(seconds)})


class StorageQuotaExceeded(PayloadTooLarge):
    """The tenant's own storage quota, not the server, has no room for the upload: 413, a
    client-side condition (deleting models or datasets frees room; retrying does not)."""

    code = "storage_quota_exceeded"


class InsufficientStorage(ApiError):
    """The disk (or its quota) is full: nothing wrong with the request, retry later."""

    status, code = 507, "insufficient_storage"


class ServiceUnavailable(ApiError):
    status, code = 503, "not_ready"


def problem_response(
    status: int,
    code: str,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    """Build a problem+json response; `extra` adds extension members (RFC 9457 §3.2)."""
    if code not in ERROR_CODES:
        log.error("problem code %r is not listed in ERROR_CODES", code)
    title = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    body: dict[str, Any] = {
        "type": f"https://secateurs.dev/problems/{code.replace('_', '-')}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    }
    body.update(extra or {})
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def _field_name(loc: tuple[Any, ...] | list[Any]) -> str:
    # FastAPI prefixes the location with where it came from ("body", "query", …); the
    # field path after it is what a client can act on.
    parts = [str(p) for p in loc]
    if len(parts) > 1 and parts[0] in {"body", "query", "path", "header", "cookie"}:
        parts = parts[1:]
    return ".".join(parts) or "body"


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return problem_response(exc.status, exc.code, exc.detail, headers=exc.headers, extra=exc.extra)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_CODES.get(exc.status_code, "http_error")
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    return problem_response(exc.status_code, code, detail, headers=dict(exc.headers or {}))


def _json_syntax_error(exc: RequestValidationError) -> JSONResponse | None:
    """The body is not JSON: where and why, instead of the offset as a field name."""
    error = next((e for e in exc.errors() if e.get("type") == "json_invalid"), None)
    if error is None:
        return None
    loc = error.get("loc", ())
    position = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else 0
    document = (
        exc.body.decode("utf-8", "replace")
        if isinstance(exc.body, bytes)
        else (exc.body if isinstance(exc.body, str) else "")
    )
    reason = str((error.get("ctx") or {}).get("error") or "invalid JSON")
    # json.JSONDecodeError counts lines and columns from the document and the offset.
    where = json.JSONDecodeError(reason, document, position)
    detail = (
        f"the body is not valid JSON: {reason} at line {where.lineno}, "
        f"column {where.colno} (position {position})"
    )
    return problem_response(
        400,
        "invalid_json",
        detail,
        extra={"line": where.lineno, "column": where.colno, "position": position},
    )


def _body_not_json(request: Request, exc: RequestValidationError) -> JSONResponse | None:
    """A JSON route got a body it did not parse: the framework reads JSON only when the
    Content-Type says so, and otherwise validates the raw bytes, which says nothing useful."""
    if not (isinstance(exc.body, bytes) and exc.body):
        return None
    if not any(tuple(e.get("loc", ()))[:1] == ("body",) for e in exc.errors()):
        return None
    given = request.headers.get("content-type") or "none"
    return problem_response(
        415,
        "unsupported_media_type",
        f"the body must be JSON, sent with Content-Type: application/json (got {given})",
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    special = _json_syntax_error(exc) or _body_not_json(request, exc)
    if special is not None:
        return special
    errors = [
        {"field": _field_name(e.get("loc", ())), "message": str(e.get("msg", "invalid"))}
        for e in exc.errors()
    ]
    first = errors[0] if errors else {"field": "body", "message": "invalid request"}
    detail = f"{first['field']}: {first['message']}"
    return problem_response(422, "validation_error", detail, extra={"errors": errors})


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # Logged in full for operators; the client only learns that it was our fault.
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(500, "internal_error", "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception type through `problem_response`."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, unexpected_error)
