"""Operations: liveness, readiness (no authentication) and Prometheus metrics (operators
only: the key in `SECATEURS_METRICS_KEY`, or loopback clients when none is set)."""

import hmac
import ipaddress
import logging

from fastapi import APIRouter, Request, Response
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from app.api.deps import client_address
from app.api.openapi import problem_responses
from app.api.schemas import Health
from app.core.disk import free_bytes, too_little_room
from app.core.errors import ApiError, ServiceUnavailable, Unauthorized
from app.metrics import CONTENT_TYPE

log = logging.getLogger(__name__)

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, summary="The process is alive")
def healthz() -> Health:
    return Health(status="ok")


def _check_db(request: Request) -> None:
    with request.app.state.sessionmaker() as session:
        session.execute(text("SELECT 1"))


def _check_broker(request: Request) -> None:
    request.app.state.queue.ping()


def _check_store(request: Request) -> None:
    request.app.state.store.check()


class DiskLow(Exception):
    """The data disk has less free space than the configured floor."""


def _check_disk(request: Request) -> None:
    settings = request.app.state.settings
    if too_little_room(settings.data_dir, settings.min_free_disk_bytes):
        raise DiskLow(
            f"{free_bytes(settings.data_dir)} bytes free on the data disk, under "
            f"the floor of {settings.min_free_disk_bytes}"
        )


@router.get(
    "/readyz",
    response_model=Health,
    summary="Job store, broker and store reachable, room on the data disk",
    responses=problem_responses(503),
)
async def readyz(request: Request) -> Health:
    failed: dict[str, str] = {}
    for name, check in (
        ("database", _check_db),
        ("broker", _check_broker),
        ("artifact_store", _check_store),
        ("disk", _check_disk),
    ):
        try:
            await run_in_threadpool(check, request)
        except Exception as exc:  # any failure means "not ready"; the reason is logged
            log.warning("readiness check %s failed: %s", name, exc)
            failed[name] = type(exc).__name__
    if failed:
        raise ServiceUnavailable(
            f"not ready: {', '.join(sorted(failed))}", extra={"checks": failed}
        )
    return Health(status="ready")


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _authorize_metrics(request: Request) -> None:
    """Metrics cover every tenant: only the operator's key (or, without one configured,
    a client on this machine) may read them; a tenant's API key never does."""
    expected: str = request.app.state.settings.metrics_key
    if expected:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), expected.encode()
        ):
            raise Unauthorized("GET /metrics needs the operator's metrics key")
    elif not _is_loopback(client_address(request)):
        raise ApiError(
            "GET /metrics answers only clients on this machine unless SECATEURS_METRICS_KEY is set",
            status=403,
            code="forbidden",
        )


@router.get(
    "/metrics",
    summary="Prometheus metrics (operators only)",
    responses={200: {"content": {CONTENT_TYPE: {}}}, **problem_responses(401, 403)},
)
def metrics(request: Request) -> Response:
    _authorize_metrics(request)
    app_metrics = request.app.state.metrics
    with request.app.state.sessionmaker() as session:
        app_metrics.refresh_jobs(session)
    app_metrics.refresh_process(request.app.state)
    return Response(app_metrics.render(), media_type=CONTENT_TYPE)
