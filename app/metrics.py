"""Prometheus metrics of the API: requests, latency, uploads and jobs by status.

Each app gets its own registry so several apps (tests, workers embedding the API) never
collide on metric names.
"""

import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contract import JOB_STATUSES
from infra.db.models import Job

__all__ = ["CONTENT_TYPE", "ApiMetrics", "MetricsMiddleware"]


class ApiMetrics:
    """The metric families and the registry they live in."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "secateurs_http_requests",
            "HTTP requests answered",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "secateurs_http_request_duration_seconds",
            "Time to answer an HTTP request",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.upload_bytes = Counter(
            "secateurs_upload_bytes",
            "Bytes of accepted uploads",
            ["kind"],
            registry=self.registry,
        )
        self.jobs = Gauge(
            "secateurs_jobs",
            "Jobs in the job store by status",
            ["status"],
            registry=self.registry,
        )
        # Totals over all tenants: per-tenant figures would tell one tenant about others
        # if the metrics ever leaked, and explode the label space.
        self.event_streams = Gauge(
            "secateurs_event_streams_open",
            "Open job event streams (this process)",
            registry=self.registry,
        )
        self.db_connections = Gauge(
            "secateurs_db_connections_in_use",
            "Job-store connections checked out of this process's pool",
            registry=self.registry,
        )

    def refresh_jobs(self, session: Session) -> None:
        """Set the jobs gauge from the job store (the source of truth), all tenants."""
        rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
        counts = {str(status): int(n) for status, n in rows}
        for status in JOB_STATUSES:
            self.jobs.labels(status=status).set(counts.get(status, 0))

    def refresh_process(self, state: Any) -> None:
        """Set the gauges read from this process's state (`app.state`)."""
        self.event_streams.set(state.stream_slots.total())
        checked_out = getattr(state.engine.pool, "checkedout", None)
        if checked_out is not None:
            self.db_connections.set(checked_out())

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts requests and times them, labelled with the route *template* (`/v1/jobs/{job_id}`)
    so ids do not explode the label space."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self._observe(scope, status[0], time.perf_counter() - start)

    def _observe(self, scope: Scope, status: int, seconds: float) -> None:
        route: Any = scope.get("route")
        template = getattr(route, "path", None) or "<unmatched>"
        method = scope.get("method", "GET")
        self.metrics.requests.labels(method=method, route=template, status=str(status)).inc()
        self.metrics.latency.labels(method=method, route=template).observe(seconds)
