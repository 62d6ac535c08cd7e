"""Request dependencies: the database session, the caller's tenant, shared services."""

from collections.abc import AsyncIterator
from typing import Annotated

from anyio import CancelScope
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from app.core.auth import KeyCache, tenant_for_key
from app.core.errors import TooManyRequests, Unauthorized
from app.core.pools import run_in
from app.core.ratelimit import FailureThrottle, TokenBucketLimiter
from app.inspector import Inspector
from app.metrics import ApiMetrics
from app.queue import JobQueue
from infra.config import Settings
from infra.storage import ArtifactStore

# auto_error=False: a missing header must answer our 401 problem, not FastAPI's 403.
_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def get_session(request: Request) -> AsyncIterator[Session]:
    """A session for this request. Routes commit explicitly; anything left is rolled back.

    Async, so that neither opening it (no I/O: the connection is taken at the first query)
    nor closing it waits for a thread of Starlette's pool: closing hands the connection
    back on the `release` pool, which never waits for anything (see app.core.pools)."""
    state = request.app.state
    session: Session = state.sessionmaker()
    try:
        yield session
    finally:
        # Shielded: a client that disconnects must not leave the connection checked out.
        with CancelScope(shield=True):
            await run_in(state.pools.release, session.close)


def get_store(request: Request) -> ArtifactStore:
    return request.app.state.store  # type: ignore[no-any-return]


def get_queue(request: Request) -> JobQueue:
    return request.app.state.queue  # type: ignore[no-any-return]


def get_inspector(request: Request) -> Inspector:
    return request.app.state.inspector  # type: ignore[no-any-return]


def get_metrics(request: Request) -> ApiMetrics:
    return request.app.state.metrics  # type: ignore[no-any-return]


def client_address(request: Request) -> str:
    """The client's address (the proxy's `X-Forwarded-For` when uvicorn trusts it)."""
    return request.client.host if request.client else "unknown"


def _lookup(factory: sessionmaker[Session], key: str) -> str | None:
    with factory() as session:
        return tenant_for_key(session, key)


async def get_tenant(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """Authenticate the API key and charge the tenant's rate limit.

    Async, with recently validated keys cached and lookups on a pool of their own: it must
    never wait behind the blocking work of other requests (uploads, streams). An address
    that keeps presenting wrong keys gets 429 without a lookup, except for keys already
    proven valid, so clients sharing its address (NAT) keep working."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized()
    state = request.app.state
    cache: KeyCache = state.key_cache
    key = credentials.credentials
    tenant = cache.get(key)
    if tenant is None:
        tenant = await _authenticate(request, key)
        cache.put(key, tenant)
    limiter: TokenBucketLimiter = state.limiter
    wait = limiter.acquire(tenant)
    if wait > 0:
        raise TooManyRequests("request rate limit exceeded", retry_after_s=wait)
    return tenant


async def _authenticate(request: Request, key: str) -> str:
    state = request.app.state
    throttle: FailureThrottle = state.auth_throttle
    address = client_address(request)
    wait = throttle.blocked_for(address)
    if wait > 0:
        raise TooManyRequests(
            "too many failed authentications from this address",
            retry_after_s=wait,
            code="too_many_auth_failures",
        )
    tenant = await run_in(state.pools.auth, _lookup, state.sessionmaker, key) if key else None
    if tenant is None:
        throttle.record_failure(address)
        raise Unauthorized()
    return tenant


Tenant = Annotated[str, Depends(get_tenant)]
DbSession = Annotated[Session, Depends(get_session)]
Store = Annotated[ArtifactStore, Depends(get_store)]
Queue = Annotated[JobQueue, Depends(get_queue)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
InspectorDep = Annotated[Inspector, Depends(get_inspector)]
MetricsDep = Annotated[ApiMetrics, Depends(get_metrics)]
