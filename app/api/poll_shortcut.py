"""The status poll, `GET /v1/jobs/{id}`, answered in front of the framework's stack.

Clients poll a job's status many times a second between them (another service watching
its jobs, a dashboard open in several tabs). Profiled at 100 connections, three quarters
of such a request's CPU went to the framework around a one-row read: Starlette's error
and exception middlewares, ours (metrics, disk guard, body deadline and limit, each
wrapping `send`), FastAPI's route matching over every route, and dependency solving.

`PollShortcut.answer` takes the common case of that one route and answers it with the
same bytes the route gives: a well-formed job id, a bearer key this process validated
recently (`KeyCache`), a request with no body, and a tenant within its rate limit. It
charges the rate limit, reads through the app's status reader (app.api.status_reader) and
counts the request in the metrics as the route would. Anything else (no key or an
unknown one, a throttled tenant, a job not found, a failed read) it declines before
sending a byte, and the request takes the full stack, which authenticates, refuses and
explains as usual.
"""

import re
import time
from typing import Any

from starlette.types import Receive, Scope, Send

ROUTE = "/v1/jobs/{job_id}"
# The ids this service issues (infra.ids); any other text is left to the route's 404.
_PATH = re.compile(r"/v1/jobs/(job_[0-9a-z]{20})")
_BEARER = b"bearer "
_HEADERS = [(b"content-type", b"application/json")]


def _request_headers(scope: Scope) -> tuple[bytes | None, bool]:
    """The Authorization header's value, and whether the request announces a body."""
    authorization, has_body = None, False
    for name, value in scope["headers"]:
        if name == b"authorization":
            authorization = value
        elif name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            has_body = True
    return authorization, has_body


class PollShortcut:
    """Answers the status polls that need nothing but a cached key and a row."""

    def __init__(self, state: Any) -> None:
        self.state = state
        metrics = state.metrics
        self._count_ok = metrics.requests.labels(method="GET", route=ROUTE, status="200")
        self._latency = metrics.latency.labels(method="GET", route=ROUTE)

    def _job_id(self, scope: Scope) -> str | None:
        if scope["type"] != "http" or scope["method"] != "GET":
            return None
        path: str = scope["path"]
        root: str = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        match = _PATH.fullmatch(path)
        return match.group(1) if match else None

    def _tenant(self, scope: Scope) -> str | None:
        authorization, has_body = _request_headers(scope)
        if authorization is None or has_body:
            return None
        if authorization[: len(_BEARER)].lower() != _BEARER:
            return None
        key = authorization[len(_BEARER) :].strip().decode("latin-1")
        tenant: str | None = self.state.key_cache.get(key) if key else None
        # A throttled tenant is declined without charging it: the full stack charges it
        # once more and answers its 429 with Retry-After.
        if tenant is None or self.state.limiter.acquire(tenant) > 0:
            return None
        return tenant

    async def answer(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Answer the request and return True, or return False having sent nothing."""
        job_id = self._job_id(scope)
        if job_id is None:
            return False
        start = time.perf_counter()
        tenant = self._tenant(scope)
        if tenant is None:
            return False
        state = self.state
        try:
            body = await state.status_reader.read(tenant, job_id)
        except Exception:
            # Not found, or the database failing: the route answers it with its problem,
            # and charges the rate limit itself.
            state.limiter.refund(tenant)
            return False
        headers = [(b"content-length", str(len(body)).encode()), *_HEADERS]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self._count_ok.inc()
        self._latency.observe(time.perf_counter() - start)
        return True
