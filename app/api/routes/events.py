"""`GET /v1/jobs/{id}/events`: the job's progress as Server-Sent Events.

The stream replays the `job_events` table (the event id is the row id, so a client that
reconnects with `Last-Event-ID` misses nothing) and polls it for new rows until the job's
terminal status event has been sent.

A stream lives as long as its job, so it holds no database connection while it waits:
each poll opens a short session on the events pool (`app.core.pools`), which also bounds
the connections all streams use together. Each tenant may keep
`max_event_streams_per_tenant` streams open (per API process); more answer 429.
"""

import asyncio
import json
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from sqlalchemy import func, select
from sqlalchemy.orm import Session, defer, sessionmaker
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import Receive, Scope, Send

from app.api.deps import Tenant
from app.api.openapi import problem_responses
from app.core.errors import NotFound, TooManyRequests
from app.core.pools import run_in
from app.core.ratelimit import TenantSlots
from contract import TERMINAL_STATUSES
from infra.db.jobstate import status_payload
from infra.db.models import Job, JobEvent

router = APIRouter(
    prefix="/v1/jobs", tags=["jobs"], responses=problem_responses(401, 404, 422, 429)
)

POLL_INTERVAL_S = 0.3
BATCH = 500
# A client over its stream cap waits for one of its streams to end; jobs take minutes.
TOO_MANY_STREAMS_RETRY_S = 10


class _SlotStreamResponse(EventSourceResponse):
    """An event stream that gives its tenant's slot back when it ends, however it ends
    (the job finished, the client left, or an error)."""

    def __init__(self, *args: Any, slots: TenantSlots, tenant: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots, self._tenant = slots, tenant

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._slots.release(self._tenant)


def _check_job(factory: sessionmaker[Session], tenant: str, job_id: str) -> None:
    with factory() as session:
        found = session.scalar(select(Job.id).where(Job.id == job_id, Job.tenant == tenant))
    if found is None:
        raise NotFound(f"job {job_id!r} not found")


def _snapshot(factory: sessionmaker[Session], job_id: str) -> tuple[dict[str, Any], int]:
    """The job's current status payload and the id of its newest event (0 if none)."""
    with factory() as session:
        # Not the report: it can be megabytes, and a snapshot is taken per stream.
        job = session.get(Job, job_id, options=[defer(Job.report, raiseload=True)])
        assert job is not None
        last = session.scalar(select(func.max(JobEvent.id)).where(JobEvent.job_id == job_id))
        return status_payload(job), int(last or 0)


def _events_after(
    factory: sessionmaker[Session], job_id: str, after: int
) -> tuple[list[tuple[int, str, dict[str, Any]]], str]:
    """Events newer than `after`, oldest first, and the job's current status."""
    with factory() as session:
        rows = session.execute(
            select(JobEvent.id, JobEvent.kind, JobEvent.data)
            .where(JobEvent.job_id == job_id, JobEvent.id > after)
            .order_by(JobEvent.id)
            .limit(BATCH)
        ).all()
        status = session.scalar(select(Job.status).where(Job.id == job_id)) or "failed"
        return [(int(r[0]), str(r[1]), dict(r[2])) for r in rows], status


def _event(kind: str, data: dict[str, Any], event_id: int | None) -> ServerSentEvent:
    return ServerSentEvent(
        data=json.dumps(data), event=kind, id=str(event_id) if event_id is not None else None
    )


async def _stream(
    request: Request, pool: ThreadPoolExecutor, job_id: str, last_event_id: int | None
) -> AsyncIterator[ServerSentEvent]:
    factory = request.app.state.sessionmaker
    snapshot, newest = await run_in(pool, _snapshot, factory, job_id)
    # The snapshot carries the newest event id so that resuming from it skips nothing;
    # when the client is already resuming, it carries none and the replay follows.
    yield _event("status", snapshot, None if last_event_id is not None else newest)
    if snapshot["status"] in TERMINAL_STATUSES and last_event_id is None:
        return
    cursor = last_event_id if last_event_id is not None else newest
    while True:
        rows, status = await run_in(pool, _events_after, factory, job_id, cursor)
        for event_id, kind, data in rows:
            cursor = event_id
            yield _event(kind, data, event_id)
            if kind == "status" and data.get("status") in TERMINAL_STATUSES:
                return
        if not rows and status in TERMINAL_STATUSES:
            return  # terminal without a logged terminal event: nothing more will come
        if len(rows) < BATCH:
            if await request.is_disconnected():
                return
            await asyncio.sleep(POLL_INTERVAL_S)


@router.get(
    "/{job_id}/events",
    summary="Stream a job's progress (Server-Sent Events)",
    response_class=EventSourceResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "`status` and `progress` events, ids resumable with "
            "Last-Event-ID; ends after the terminal status",
        }
    },
)
async def job_events(
    job_id: str,
    request: Request,
    tenant: Tenant,
    last_event_id: Annotated[str | None, Header()] = None,
) -> EventSourceResponse:
    pool = request.app.state.pools.events
    await run_in(pool, _check_job, request.app.state.sessionmaker, tenant, job_id)  # 404 first
    resume = int(last_event_id) if last_event_id and last_event_id.isdigit() else None
    slots: TenantSlots = request.app.state.stream_slots
    if not slots.acquire(tenant):
        raise TooManyRequests(
            f"{slots.limit} event streams are already open for this tenant; "
            "close one or poll GET /v1/jobs/{id}",
            retry_after_s=TOO_MANY_STREAMS_RETRY_S,
            code="too_many_streams",
        )
    return _SlotStreamResponse(
        _stream(request, pool, job_id, resume), ping=15, slots=slots, tenant=tenant
    )
