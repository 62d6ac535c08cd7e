"""A cap on request bodies for the JSON routes.

The upload routes stream and cap their own bodies (`app.uploads`); every other route
reads small JSON, so anything bigger than `max_bytes` is refused with 413 before it is
buffered whole, whether or not the client sent a Content-Length.
"""

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import problem_response

DEFAULT_MAX_JSON_BYTES = 1024 * 1024


class BodyLimitMiddleware:
    """Refuse bodies over `max_bytes` on every path not in `exempt`."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int = DEFAULT_MAX_JSON_BYTES,
        exempt: frozenset[str] = frozenset(),
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            response = problem_response(
                413, "payload_too_large", f"the request body is larger than {self.max_bytes} bytes"
            )
            await response(scope, receive, send)
            return
        # Read the (small) body up front so an oversized one is refused here, with our
        # 413, instead of failing inside the framework's body parsing.
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before sending its body: nobody to answer
            chunks.append(message.get("body", b""))
            received += len(chunks[-1])
            if received > self.max_bytes:
                response = problem_response(
                    413,
                    "payload_too_large",
                    f"the request body is larger than {self.max_bytes} bytes",
                )
                await response(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls wait for the disconnect, as usual

        await self.app(scope, replay, send)
