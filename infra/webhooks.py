"""Signed webhooks after the Standard Webhooks specification (standardwebhooks.com).

A job submitted with a `webhook_url` gets one event when it ends (`job.succeeded`,
`job.failed`, `job.cancelled`). The event is written in the same transaction as the job's
terminal status (`record_job_event`, called by `infra.db.jobstate`), so no end is missed
and none is announced twice; the worker's delivery thread (`worker.webhooks`) sends it.

Each request carries `webhook-id` (the event id, the same on every retry), `webhook-timestamp`
(Unix seconds of the attempt) and `webhook-signature`: `v1,` + base64 of
HMAC-SHA256(key, f"{id}.{timestamp}.{body}"), where the key is the base64 part of the
tenant's `whsec_…` secret.

Addresses: a tenant must not make the service call its own network, so loopback, private,
link-local, multicast and other non-global addresses are refused unless the operator
allows them: at submission (`app.api.webhook_urls`) for hosts given as addresses (or
`localhost`), and at each
delivery for every address the host resolves to, the request then going to the checked
address (a second lookup could answer differently: DNS rebinding).

Shared by the API and the worker; no torch.
"""

import base64
import hashlib
import hmac
import ipaddress
import json
import secrets
import socket
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from infra import ids
from infra.db.models import Job, WebhookEvent, WebhookSecret, utcnow

SECRET_PREFIX = "whsec_"
# The specification asks for 24 to 64 random bytes.
SECRET_BYTES = 32
EVENT_ID_PREFIX = "msg"
EVENT_TYPES = {"succeeded": "job.succeeded", "failed": "job.failed", "cancelled": "job.cancelled"}

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class ForbiddenAddress(Exception):
    """The URL's host is, or resolves to, an address webhooks may not reach."""


# Secrets and signatures


def new_secret() -> str:
    """A fresh `whsec_…` secret."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_…` secret: its base64 part, decoded."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value of one message: `v1,<base64 HMAC-SHA256>`."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secret: str, msg_id: str, body: bytes, timestamp: int) -> dict[str, str]:
    """The three Standard Webhooks headers for sending `body` at `timestamp`."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }


def tenant_secret(session: Session, tenant: str) -> WebhookSecret:
    """The tenant's secret, made on first use. Commits when it creates one."""
    row = session.get(WebhookSecret, tenant)
    if row is not None:
        return row
    row = WebhookSecret(tenant=tenant, secret=new_secret(), created_at=utcnow())
    session.add(row)
    try:
        session.commit()
    except IntegrityError:
        # Made at the same moment by another request or the worker: theirs stands.
        session.rollback()
        existing = session.get(WebhookSecret, tenant)
        assert existing is not None
        return existing
    return row


def rotate_secret(session: Session, tenant: str) -> WebhookSecret:
    """Replace the tenant's secret with a fresh one (not committed). Deliveries sent from
    now on, retries of older events included, are signed with the new one."""
    row = session.get(WebhookSecret, tenant)
    if row is None:
        row = WebhookSecret(tenant=tenant)
        session.add(row)
    row.secret, row.created_at = new_secret(), utcnow()
    return row


# Events


def event_payload(job: Job, at: datetime) -> dict[str, Any]:
    """The body of a job's end event: `{type, timestamp, data}` as the specification
    recommends; links are paths under the API's base URL."""
    base = f"/v1/jobs/{job.id}"
    links = {"job": base, "events": f"{base}/events"}
    if job.status == "succeeded":
        links |= {"report": f"{base}/report", "artifacts": f"{base}/artifacts"}
    error = {"code": job.error_code, "message": job.error_message} if job.error_code else None
    return {
        "type": EVENT_TYPES[job.status],
        "timestamp": at.isoformat().replace("+00:00", "Z"),
        "data": {
            "id": job.id,
            "status": job.status,
            "model_id": job.model_id,
            "dataset_id": job.dataset_id,
            "error": error,
            "links": links,
        },
    }


def record_job_event(session: Session, job: Job) -> WebhookEvent | None:
    """Add the end event of `job`, which has just reached a terminal status, when it has a
    webhook_url; it is committed with that status and sent by the worker."""
    url = (job.spec or {}).get("webhook_url")
    if not url or job.status not in EVENT_TYPES:
        return None
    now = utcnow()
    body = json.dumps(event_payload(job, now), separators=(",", ":"), sort_keys=True)
    event = WebhookEvent(
        id=ids.new_id(EVENT_ID_PREFIX),
        job_id=job.id,
        tenant=job.tenant,
        type=EVENT_TYPES[job.status],
        url=url,
        body=body,
        status="pending",
        attempts=0,
        next_attempt_at=now,
        created_at=now,
    )
    session.add(event)
    return event


# Addresses


def is_forbidden(address: IpAddress) -> bool:
    """True for loopback, private, link-local, multicast, reserved, unspecified and every
    other address that is not globally reachable."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    return not address.is_global or address.is_multicast


def _is_loopback_name(host: str) -> bool:
    name = host.lower().rstrip(".")
    return name == "localhost" or name.endswith(".localhost")


def _numeric_address(host: str) -> IpAddress | None:
    """The address of a host written as one, in any form the resolver accepts (`127.1`,
    `2130706433`, `[::1]`…), found without a lookup; None for a name."""
    try:
        infos = socket.getaddrinfo(host, None, flags=socket.AI_NUMERICHOST)
    except (OSError, UnicodeError):  # a name, or one no resolver would take
        return None
    return ipaddress.ip_address(str(infos[0][4][0]).split("%", 1)[0])


def check_url_host(url: str, *, allow_private: bool) -> None:
    """At submission: raise ForbiddenAddress for a host that is a forbidden address or a
    loopback name. Names are resolved only at delivery (they may change meanwhile)."""
    if allow_private:
        return
    host = urlsplit(url).hostname or ""
    if _is_loopback_name(host):
        raise ForbiddenAddress(f"{host} is a loopback name")
    address = _numeric_address(host)
    if address is not None and is_forbidden(address):
        raise ForbiddenAddress(f"{address} is not a public address")


def resolve_checked(host: str, port: int, *, allow_private: bool) -> list[str]:
    """At delivery: every address `host` resolves to, each checked; ForbiddenAddress when
    any is forbidden (one bad answer among good ones is still an attempt to get in)."""
    if not allow_private and _is_loopback_name(host):
        raise ForbiddenAddress(f"{host} is a loopback name")
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = list(dict.fromkeys(str(info[4][0]).split("%", 1)[0] for info in infos))
    if not allow_private:
        for text in addresses:
            if is_forbidden(ipaddress.ip_address(text)):
                raise ForbiddenAddress(f"{host} resolves to {text}, not a public address")
    return addresses
