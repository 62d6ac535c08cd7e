"""The FastAPI application: `uvicorn app.main:create_app --factory`.

Nothing happens at import: `create_app` builds the settings (or takes the ones given),
the job store, the artifact store, the queue client and the routes. Importing this module
must not import torch.
"""

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import Receive, Scope, Send

from app.api.bodylimit import BodyLimitMiddleware
from app.api.openapi import install_openapi
from app.api.poll_shortcut import PollShortcut
from app.api.routes import artifacts, datasets, events, jobs, models, ops, webhooks
from app.api.status_reader import make_status_reader
from app.core.auth import KeyCache, sync_settings_keys
from app.core.disk import DiskGuardMiddleware, install_disk_full_handlers
from app.core.errors import install_error_handlers
from app.core.httpproto import configure_header_timeout
from app.core.pools import Pools
from app.core.ratelimit import FailureThrottle, TenantSlots, TenantTurns, TokenBucketLimiter
from app.core.timeouts import BodyTimeoutMiddleware
from app.dashboard import router as dashboard_router
from app.inspector import Inspector, PoolLimits
from app.metrics import ApiMetrics, MetricsMiddleware
from app.prunability import Analyses
from app.queue import JobQueue
from app.uploads import remove_stale_uploads
from infra.config import Settings
from infra.db.session import init_db, make_engine, make_sessionmaker, session_scope
from infra.sandbox import Sandbox, describe
from infra.storage import make_store

log = logging.getLogger(__name__)

DESCRIPTION = """Structured pruning as a service: upload a CNN, submit a pruning job, download
a smaller, faster, verified ONNX model. Every `/v1` route needs `Authorization: Bearer <key>`;
errors are RFC 9457 `application/problem+json` with a stable `code`."""
# A partial upload older than this belongs to a process that died mid-upload.
STALE_UPLOAD_S = 24 * 3600
# Routes whose bodies are uploads, streamed and bounded by the routes themselves.
UPLOAD_PATHS = frozenset({"/v1/models", "/v1/datasets"})
# Routes that create things, refused with 507 while the data disk is nearly full.
CREATE_PATHS = UPLOAD_PATHS | {"/v1/jobs"}


# A request allocates thousands of short-lived objects; with the default threshold (700)
# the collector ran so often that it set the tail latency of status polls (at 100
# connections: p99 282 -> 117 ms, 1,600 -> 2,200 requests/s with a job running).
GC_THRESHOLDS = (50_000, 20, 20)


class SecateursApp(FastAPI):
    """FastAPI, with the status polls' shortcut in front of its middleware stack."""

    poll_shortcut: PollShortcut | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        shortcut = self.poll_shortcut
        if shortcut is not None and await shortcut.answer(scope, receive, send):
            return
        await super().__call__(scope, receive, send)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    gc.set_threshold(*GC_THRESHOLDS)
    await app.state.status_reader.open()
    yield
    await app.state.status_reader.close()
    app.state.queue.close()
    app.state.pools.shutdown()
    app.state.engine.dispose()


def _sync_keys(factory: sessionmaker[Session], settings: Settings) -> None:
    keys = settings.parsed_api_keys()
    try:
        with session_scope(factory) as session:
            sync_settings_keys(session, keys)
    except IntegrityError:
        # Another API process (uvicorn --workers N) inserted the same keys at the same
        # moment; once more now sees its rows.
        with session_scope(factory) as session:
            sync_settings_keys(session, keys)


def _make_inspector(settings: Settings) -> Inspector:
    sandbox = Sandbox.from_settings(settings)
    log.log(logging.WARNING if sandbox.insecure else logging.INFO, "%s", describe(sandbox))
    pool = PoolLimits(
        concurrency=settings.inspect_concurrency,
        per_tenant=settings.inspect_per_tenant,
        max_waiting=settings.inspect_max_waiting,
        memory_total_bytes=settings.inspect_memory_total_bytes,
    )
    return Inspector(
        sandbox=sandbox,
        scratch_root=settings.data_dir / "scratch",
        timeout_s=settings.inspect_timeout_s,
        pool=pool,
    )


def _init_state(app: FastAPI, settings: Settings) -> None:
    tmp = settings.data_dir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    if removed := remove_stale_uploads(tmp, STALE_UPLOAD_S):
        log.info("removed %d stale partial uploads", removed)
    engine = make_engine(settings.resolved_database_url)
    init_db(engine)
    factory = make_sessionmaker(engine)
    _sync_keys(factory, settings)
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessionmaker = factory
    app.state.store = make_store(settings)
    app.state.queue = JobQueue(settings.resolved_broker_url)
    app.state.inspector = _make_inspector(settings)
    app.state.pools = Pools()
    app.state.analyses = Analyses(
        app.state.store, factory, app.state.pools.uploads, settings.data_dir / "scratch"
    )
    app.state.status_reader = make_status_reader(app.state)
    app.state.limiter = TokenBucketLimiter(settings.rate_limit_per_minute)
    app.state.metrics = ApiMetrics()
    app.state.key_cache = KeyCache(settings.key_cache_ttl_s)
    app.state.auth_throttle = FailureThrottle(settings.auth_failures_per_minute)
    app.state.stream_slots = TenantSlots(settings.max_event_streams_per_tenant)
    app.state.upload_turns = TenantTurns(
        settings.max_uploads_per_tenant, settings.upload_turn_wait_s
    )
    # The HTTP protocol reads its header deadline from here (see app.core.httpproto).
    configure_header_timeout(settings.header_timeout_s)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application and everything it holds on `app.state`."""
    settings = settings or Settings()
    # The document and its viewers are served by install_openapi, from local files.
    app = SecateursApp(
        title="Secateurs",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=_lifespan,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    _init_state(app, settings)
    install_error_handlers(app)
    install_disk_full_handlers(app)
    # Uploads cap their own (much larger) bodies while streaming them to disk. Each
    # middleware added wraps the ones before it: the metrics see every answer, the disk
    # guard refuses before a body is read, the body deadline covers the body limit's reads.
    app.add_middleware(BodyLimitMiddleware, exempt=UPLOAD_PATHS)
    app.add_middleware(
        BodyTimeoutMiddleware, timeout_s=settings.body_timeout_s, exempt=UPLOAD_PATHS
    )
    app.add_middleware(
        DiskGuardMiddleware,
        data_dir=settings.data_dir,
        min_free_bytes=settings.min_free_disk_bytes,
        paths=CREATE_PATHS,
    )
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    for module in (models, datasets, jobs, events, artifacts, ops):
        app.include_router(module.router)
    app.include_router(dashboard_router)
    webhooks.install(app, settings)
    install_openapi(app)
    app.poll_shortcut = PollShortcut(app.state)
    return app
