"""uvicorn's HTTP/1.1 protocols with a deadline on reading a request's headers.

uvicorn bounds the idle time between two requests on a keep-alive connection
(`timeout_keep_alive`) but not the time a client takes to send one request's headers:
a client that opens a connection and sends nothing, or trickles its headers a byte at a
time, holds the connection for as long as it likes (slowloris). An ASGI middleware cannot
help, since the app first hears of a request once its headers are complete. So the
protocol itself arms a timer when a connection opens, and again when the first bytes of
a later request arrive, and disarms it when the headers are complete; when it fires the
client gets `408` and the connection is closed.

`secateurs serve` / `secateurs api` pass these classes to uvicorn (`http=`); with plain
uvicorn use `--http app.core.httpproto:TimedHttpToolsProtocol` (or `TimedH11Protocol`).
The deadline comes from the app's settings (`header_timeout_s`), set when it is built.
"""

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

DEFAULT_HEADER_TIMEOUT_S = 20.0
_deadline = {"seconds": DEFAULT_HEADER_TIMEOUT_S}

_BODY = json.dumps(
    {
        "type": "https://secateurs.dev/problems/request-timeout",
        "title": "Request Timeout",
        "status": 408,
        "detail": "the request headers did not arrive in time",
        "code": "request_timeout",
    }
).encode()
TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/problem+json\r\n"
    b"content-length: " + str(len(_BODY)).encode() + b"\r\nconnection: close\r\n\r\n" + _BODY
)


def configure_header_timeout(seconds: float) -> None:
    """Set the header deadline of every connection opened from now on (0 = none)."""
    _deadline["seconds"] = seconds


class HeaderDeadline:
    """Mixed into a uvicorn HTTP protocol, in front of it in the MRO. Relies on what
    both of uvicorn's implementations share: `transport`, `loop`, and `cycle` (the
    request in hand, set once its headers are parsed; `response_complete` after it)."""

    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    cycle: Any
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        if self._awaiting_headers():
            self._arm_header_timer()  # a no-op while armed: the deadline does not move
        else:
            self._disarm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)  # type: ignore[misc]

    def _awaiting_headers(self) -> bool:
        return self.cycle is None or bool(self.cycle.response_complete)

    def _arm_header_timer(self) -> None:
        seconds = _deadline["seconds"]
        if self._header_timer is None and seconds > 0 and not self.transport.is_closing():
            self._header_timer = self.loop.call_later(seconds, self._header_timeout)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or not self._awaiting_headers():
            return
        # Armed only on a new connection or once a request's first bytes came: the client
        # is owed an answer, so say why the connection is closed.
        self.transport.write(TIMEOUT_RESPONSE)
        self.transport.close()


class TimedH11Protocol(HeaderDeadline, H11Protocol):
    """uvicorn's h11 protocol with the header deadline."""


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is optional in uvicorn
    TimedHttpToolsProtocol: type[asyncio.Protocol] = TimedH11Protocol
else:

    class TimedHttpToolsProtocol(HeaderDeadline, HttpToolsProtocol):  # type: ignore[no-redef]
        """uvicorn's httptools protocol (its default when installed) with the deadline."""
