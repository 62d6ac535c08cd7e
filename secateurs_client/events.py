"""Server-Sent Events: parsing the `text/event-stream` of `GET /v1/jobs/{id}/events`."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Event:
    """One event: its `event` name (`status`, `progress`), `id` (None when the server sent
    none) and JSON `data`."""

    event: str
    id: str | None
    data: dict[str, Any]


def parse_events(lines: Iterable[str]) -> Iterator[Event]:
    """Events from the stream's lines (line endings removed), as the SSE format defines
    them: fields up to a blank line, `:` comments (the server's pings) skipped, several
    `data:` lines joined by newlines. An event whose data is not a JSON object is skipped."""
    name: str = "message"
    event_id: str | None = None
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                try:
                    payload = json.loads("\n".join(data))
                except ValueError:
                    payload = None
                if isinstance(payload, dict):
                    yield Event(name, event_id, payload)
            name, event_id, data = "message", None, []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data.append(value)
        elif field == "event":
            name = value
        elif field == "id" and "\0" not in value:
            event_id = value
