"""Webhooks: the tenant's signing secret, and each job's delivery log.

`GET /v1/webhooks/secret` returns the tenant's `whsec_…` secret (made on first use);
`POST /v1/webhooks/secret` replaces it. `GET /v1/jobs/{id}/deliveries` lists the job's
events and every attempt at delivering them.
"""

from typing import Literal

from fastapi import APIRouter, FastAPI
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.api.deps import DbSession, Tenant
from app.api.lookups import find_job
from app.api.openapi import problem_responses
from app.api.schemas import Timestamp
from app.api.webhook_urls import configure
from infra.config import Settings
from infra.db.models import WebhookAttempt, WebhookEvent, WebhookSecret
from infra.webhooks import rotate_secret, tenant_secret

router = APIRouter(tags=["webhooks"], responses=problem_responses(401, 404, 422, 429))


def install(app: FastAPI, settings: Settings) -> None:
    """Add the webhook routes and apply the settings to the submission check."""
    configure(settings)
    app.include_router(router)


class SecretOut(BaseModel):
    secret: str = Field(description="`whsec_` + base64 key: verify each delivery with it.")
    created_at: Timestamp = Field(description="When this secret was made (RFC 3339, UTC).")

    @classmethod
    def from_row(cls, row: WebhookSecret) -> "SecretOut":
        return cls(secret=row.secret, created_at=row.created_at)


class AttemptOut(BaseModel):
    attempt: int = Field(description="1 for the first try, counting up.")
    at: Timestamp = Field(description="When the attempt started (RFC 3339, UTC).")
    duration_ms: int = Field(description="Wall time of the attempt, to answer or error, ms.")
    status_code: int | None = Field(None, description="The receiver's HTTP status, if any.")
    error: str | None = Field(None, description="Why no status came back (refused, timeout…).")
    response_prefix: str | None = Field(None, description="The start of the receiver's answer.")

    @classmethod
    def from_row(cls, row: WebhookAttempt) -> "AttemptOut":
        return cls(
            attempt=row.attempt,
            at=row.started_at,
            duration_ms=row.duration_ms,
            status_code=row.status_code,
            error=row.error,
            response_prefix=row.response_prefix,
        )


class DeliveryOut(BaseModel):
    id: str = Field(description="The event id, sent as `webhook-id` by every attempt.")
    type: Literal["job.succeeded", "job.failed", "job.cancelled"] = Field(
        description="The event: how the job ended."
    )
    url: str = Field(description="Where it is sent: the job's webhook_url.")
    status: Literal["pending", "delivered", "failed"] = Field(
        description="pending (retried with backoff), delivered (a 2xx came back) or failed "
        "(out of attempts)."
    )
    next_attempt_at: Timestamp | None = Field(
        None, description="When the next attempt is due (pending events only)."
    )
    created_at: Timestamp = Field(description="When the job ended and the event was made.")
    delivered_at: Timestamp | None = Field(
        None, description="When a 2xx answer came back; null until then."
    )
    attempts: list[AttemptOut] = Field(description="Every attempt so far, oldest first.")


class DeliveriesOut(BaseModel):
    items: list[DeliveryOut] = Field(description="The job's events, oldest first.")


@router.get(
    "/v1/webhooks/secret", response_model=SecretOut, summary="The tenant's webhook signing secret"
)
def get_secret(tenant: Tenant, session: DbSession) -> SecretOut:
    """Made on first use; the same until rotated."""
    return SecretOut.from_row(tenant_secret(session, tenant))


@router.post(
    "/v1/webhooks/secret",
    status_code=201,
    response_model=SecretOut,
    summary="Rotate the tenant's webhook signing secret",
)
def new_secret(tenant: Tenant, session: DbSession) -> SecretOut:
    """A fresh secret replaces the old one at once: every delivery from now on, retries
    of earlier events included, is signed with it."""
    row = rotate_secret(session, tenant)
    session.commit()
    return SecretOut.from_row(row)


@router.get(
    "/v1/jobs/{job_id}/deliveries",
    response_model=DeliveriesOut,
    summary="The job's webhook deliveries and their attempts",
)
def list_deliveries(job_id: str, tenant: Tenant, session: DbSession) -> DeliveriesOut:
    job = find_job(session, tenant, job_id)
    events = session.scalars(
        select(WebhookEvent).where(WebhookEvent.job_id == job.id).order_by(WebhookEvent.created_at)
    ).all()
    return DeliveriesOut(items=[_delivery(session, event) for event in events])


def _delivery(session: Session, event: WebhookEvent) -> DeliveryOut:
    attempts = session.scalars(
        select(WebhookAttempt)
        .where(WebhookAttempt.event_id == event.id)
        .order_by(WebhookAttempt.attempt)
    ).all()
    return DeliveryOut(
        id=event.id,
        type=event.type,  # type: ignore[arg-type]
        url=event.url,  # type: ignore[arg-type]
        status=event.status,  # type: ignore[arg-type]
        next_attempt_at=event.next_attempt_at,  # type: ignore[arg-type]
        created_at=event.created_at,
        delivered_at=event.delivered_at,
        attempts=[AttemptOut.from_row(a) for a in attempts],
    )
