"""Typed errors: one class per kind of failure, each carrying the service's problem+json
`code`, `detail` and HTTP `status`.

Every error the API returns is RFC 9457 `application/problem+json` with a stable `code`
(`unsafe_format`, `too_many_jobs`, …); catch the class for the kind of failure and read
`code` for the precise reason.
"""

from __future__ import annotations

from typing import Any

import httpx


class SecateursError(Exception):
    """Base of every error this library raises."""

    def __init__(
        self,
        detail: str,
        *,
        code: str = "error",
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {detail}" if status else f"{code}: {detail}")
        self.detail = detail
        self.code = code
        self.status = status
        self.retry_after = retry_after


class ValidationError(SecateursError):
    """400 or 422: the request or the uploaded file was refused (`code` says why)."""


class AuthError(SecateursError):
    """401 or 403: a missing, wrong or revoked API key."""


class NotFound(SecateursError):
    """404: no such model, dataset, job or artifact for this key's tenant."""


class Conflict(SecateursError):
    """409: the resource is not in a state that allows this (e.g. the job has finished,
    or its report does not exist yet)."""


class PayloadTooLarge(SecateursError):
    """413: the upload is over the service's size limit or the tenant's storage quota."""


class RateLimited(SecateursError):
    """429: too many requests, jobs or streams; `retry_after` is the server's hint."""


class Unavailable(SecateursError):
    """502, 503, 504 or 507: the service cannot serve the request now."""


class ConnectionFailed(Unavailable):
    """The service could not be reached, or the connection broke (no HTTP status)."""


class ChecksumMismatch(SecateursError):
    """A downloaded file's SHA-256 is not the one the service announced."""


class WaitTimeout(SecateursError, TimeoutError):
    """`Client.wait` gave up before the job finished (the job keeps running)."""


class JobFailed(SecateursError):
    """The job ended `failed` or `cancelled`; `code`/`detail` are the job's error and
    `job` is the job as the service last reported it."""

    def __init__(self, job: dict[str, Any]) -> None:
        error = job.get("error") or {}
        super().__init__(
            error.get("message") or f"job {job.get('id')} ended {job.get('status')}",
            code=error.get("code") or str(job.get("status")),
        )
        self.job = job


_BY_STATUS: dict[int, type[SecateursError]] = {
    400: ValidationError,
    401: AuthError,
    403: AuthError,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: ValidationError,
    429: RateLimited,
    502: Unavailable,
    503: Unavailable,
    504: Unavailable,
    507: Unavailable,
}


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` in seconds: delta-seconds or an HTTP date; None when absent or bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from datetime import UTC, datetime
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def error_from_response(response: httpx.Response) -> SecateursError:
    """The typed error for an HTTP error response (its body must have been read)."""
    status = response.status_code
    code, detail = f"http_{status}", response.reason_phrase or "error"
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        code = str(body.get("code") or code)
        detail = str(body.get("detail") or body.get("title") or detail)
    cls = _BY_STATUS.get(status, SecateursError)
    return cls(
        detail,
        code=code,
        status=status,
        retry_after=parse_retry_after(response.headers.get("retry-after")),
    )
