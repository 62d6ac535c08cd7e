"""A deadline on reading a request's body, for the routes that take small JSON bodies.

A client that sends its headers and then trickles the body a byte at a time would hold a
connection and a request for as long as it likes. The upload routes bound their own
(large) bodies with an idle timeout and a minimum rate (`app.uploads`); every other body
must arrive whole within `timeout_s`, or the client gets 408 and the connection closes.
"""

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import problem_response


class _BodyTimeout(Exception):
    """The body did not arrive before the deadline."""


class BodyTimeoutMiddleware:
    """408 `request_timeout` when a request's body is not complete `timeout_s` after the
    app first asks for it, on every path not in `exempt`. Once the body is in, later
    receives (waiting for a disconnect while streaming a response) have no deadline."""

    def __init__(self, app: ASGIApp, *, timeout_s: float, exempt: frozenset[str]) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt or self.timeout_s <= 0:
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        body_done = False
        started = False

        async def timed_receive() -> Message:
            nonlocal deadline, body_done
            if body_done:
                return await receive()
            deadline = deadline or loop.time() + self.timeout_s
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise _BodyTimeout from None
            body_done = message["type"] != "http.request" or not message.get("more_body")
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, timed_receive, tracking_send)
        except _BodyTimeout:
            if started:
                raise
            response = problem_response(
                408,
                "request_timeout",
                f"the request body did not arrive within {self.timeout_s:g} s",
                headers={"Connection": "close"},
            )
            await response(scope, receive, send)
