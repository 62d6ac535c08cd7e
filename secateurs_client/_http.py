"""The HTTP layer: authentication, typed errors and retries with exponential backoff.

A request is retried on 429, 502, 503 and 504 and on connection errors, waiting what the
server's `Retry-After` asks for or else an exponentially growing, jittered delay, for at
most `retries` further attempts. A request body that is a file is re-opened for each
attempt (the `open_files` callback), so an interrupted upload is sent again from its start.
POSTs are retried too: a job submit carries an Idempotency-Key, so its retry never makes a
second job; an upload whose answer was lost may leave an unused copy on the service.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from secateurs_client.errors import ConnectionFailed, error_from_response, parse_retry_after

RETRY_STATUSES = frozenset({429, 502, 503, 504})
USER_AGENT = "secateurs-client/0.1"
# Opens what an attempt sends (e.g. `{"files": {...}}`); files go on the exit stack.
OpenFiles = Callable[[contextlib.ExitStack[Any]], dict[str, Any]]

_sleep = time.sleep  # one name for tests to replace


class Http:
    """An `httpx.Client` bound to one service and key, with retries and typed errors."""

    def __init__(
        self,
        url: str,
        key: str,
        *,
        timeout: float,
        retries: int,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.retries = max(0, retries)
        self.backoff, self.max_backoff = backoff, max_backoff
        self.client = httpx.Client(
            base_url=url.rstrip("/"),
            timeout=timeout,
            transport=transport,
            headers={"Authorization": f"Bearer {key}", "User-Agent": USER_AGENT},
        )

    def close(self) -> None:
        self.client.close()

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number `attempt + 1`: the server's Retry-After when
        it gave one, else full-range jitter over `backoff * 2**attempt` (capped)."""
        if retry_after is not None:
            return retry_after
        return random.uniform(0, min(self.max_backoff, self.backoff * 2**attempt))

    def request(
        self, method: str, path: str, *, open_files: OpenFiles | None = None, **kwargs: Any
    ) -> httpx.Response:
        """Send a request (retried as above); returns the read response or raises the
        typed error for its status."""
        with self.send(method, path, open_files=open_files, **kwargs) as response:
            response.read()
            return response

    @contextlib.contextmanager
    def send(
        self,
        method: str,
        path: str,
        *,
        open_files: OpenFiles | None = None,
        retry_statuses: frozenset[int] = RETRY_STATUSES,
        **kwargs: Any,
    ) -> Iterator[httpx.Response]:
        """Open a streamed response (closed on exit) after retries; its status is a success.

        `retry_statuses` narrows what is retried (an event stream refused with 429 is not
        worth waiting for: the caller polls instead)."""
        attempt = 0
        while True:
            with contextlib.ExitStack() as files:
                extra = open_files(files) if open_files else {}
                try:
                    request = self.client.build_request(method, path, **kwargs, **extra)
                    response = self.client.send(request, stream=True)
                except httpx.TransportError as exc:
                    if attempt >= self.retries:
                        raise ConnectionFailed(
                            f"{method} {path}: {exc!r}", code="connection_error"
                        ) from exc
                    _sleep(self.delay(attempt))
                    attempt += 1
                    continue
            try:
                if response.status_code < 400:
                    yield response
                    return
                response.read()
                if response.status_code in retry_statuses and attempt < self.retries:
                    wait = self.delay(
                        attempt, parse_retry_after(response.headers.get("retry-after"))
                    )
                else:
                    raise error_from_response(response)
            finally:
                response.close()
            _sleep(wait)
            attempt += 1
