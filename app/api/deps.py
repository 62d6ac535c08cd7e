"""Request dependencies: the database session, the caller's tenant, shared services."""

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.core.auth import tenant_for_key
from app.core.config import Settings
from app.core.errors import TooManyRequests, Unauthorized
from app.core.ratelimit import TokenBucketLimiter
from app.inspector import Inspector
from app.metrics import ApiMetrics
from app.queue import JobQueue
from app.storage import ArtifactStore

# auto_error=False: a missing header must answer our 401 problem, not FastAPI's 403.
_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_session(request: Request) -> Iterator[Session]:
    """A session for this request. Routes commit explicitly; anything left is rolled back."""
    session: Session = request.app.state.sessionmaker()
    try:
        yield session
    finally:
        session.close()


def get_store(request: Request) -> ArtifactStore:
    return request.app.state.store  # type: ignore[no-any-return]


def get_queue(request: Request) -> JobQueue:
    return request.app.state.queue  # type: ignore[no-any-return]


def get_inspector(request: Request) -> Inspector:
    return request.app.state.inspector  # type: ignore[no-any-return]


def get_metrics(request: Request) -> ApiMetrics:
    return request.app.state.metrics  # type: ignore[no-any-return]


def get_tenant(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """Authenticate the API key and charge the tenant's rate limit."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized()
    with request.app.state.sessionmaker() as session:
        tenant = tenant_for_key(session, credentials.credentials)
    if tenant is None:
        raise Unauthorized()
    limiter: TokenBucketLimiter = request.app.state.limiter
    wait = limiter.acquire(tenant)
    if wait > 0:
        raise TooManyRequests("request rate limit exceeded", retry_after_s=wait)
    return tenant


Tenant = Annotated[str, Depends(get_tenant)]
DbSession = Annotated[Session, Depends(get_session)]
Store = Annotated[ArtifactStore, Depends(get_store)]
Queue = Annotated[JobQueue, Depends(get_queue)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
InspectorDep = Annotated[Inspector, Depends(get_inspector)]
MetricsDep = Annotated[ApiMetrics, Depends(get_metrics)]
