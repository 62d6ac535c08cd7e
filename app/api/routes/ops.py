"""Operations: liveness, readiness and Prometheus metrics (no authentication)."""

import logging

from fastapi import APIRouter, Request, Response
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from app.api.openapi import problem_responses
from app.api.schemas import Health
from app.core.errors import ServiceUnavailable
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


@router.get("/readyz", response_model=Health, summary="Job store, broker and store reachable",
            responses=problem_responses(503))
async def readyz(request: Request) -> Health:
    failed: dict[str, str] = {}
    for name, check in (("database", _check_db), ("broker", _check_broker),
                        ("artifact_store", _check_store)):
        try:
            await run_in_threadpool(check, request)
        except Exception as exc:  # any failure means "not ready"; the reason is logged
            log.warning("readiness check %s failed: %s", name, exc)
            failed[name] = type(exc).__name__
    if failed:
        raise ServiceUnavailable(f"not reachable: {', '.join(sorted(failed))}",
                                 extra={"checks": failed})
    return Health(status="ready")


@router.get("/metrics", summary="Prometheus metrics",
            responses={200: {"content": {CONTENT_TYPE: {}}}})
def metrics(request: Request) -> Response:
    app_metrics = request.app.state.metrics
    with request.app.state.sessionmaker() as session:
        app_metrics.refresh_jobs(session)
    return Response(app_metrics.render(), media_type=CONTENT_TYPE)
