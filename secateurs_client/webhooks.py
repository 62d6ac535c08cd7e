"""Verify the webhooks the service sends (the Standard Webhooks scheme).

    from secateurs_client.webhooks import verify, WebhookVerificationError

    try:
        event = verify(secret, request.headers, raw_body)
    except WebhookVerificationError:
        return 400
    if seen_before(request.headers["webhook-id"]):  # retries resend the same id
        return 200
    handle(event["type"], event["data"])

`secret` is the tenant's `whsec_…` from `GET /v1/webhooks/secret`. Pass the body exactly
as received: the signature covers its bytes, not the JSON they parse to.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

SECRET_PREFIX = "whsec_"
# Seconds a message's timestamp may be off from now, either way (replayed or early).
DEFAULT_TOLERANCE_S = 300


class WebhookVerificationError(Exception):
    """The message is not a genuine, fresh webhook from the service; `reason` says why:
    `missing_header`, `bad_timestamp`, `stale_timestamp`, `bad_secret` or `bad_signature`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes | str,
    *,
    tolerance: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> Any:
    """Check the message's signature and timestamp; return its JSON body parsed. Raises
    `WebhookVerificationError` for a missing header, a timestamp more than `tolerance`
    seconds from `now` (default: the clock), or no matching `v1` signature."""
    payload = body.encode() if isinstance(body, str) else bytes(body)
    msg_id, timestamp, signatures = _headers(headers)
    _check_fresh(timestamp, tolerance, time.time() if now is None else now)
    expected = _signature(_key(secret), msg_id, timestamp, payload)
    if not any(_matches(expected, candidate) for candidate in signatures.split()):
        raise WebhookVerificationError("bad_signature", "no signature matches this secret")
    return json.loads(payload)


def _headers(headers: Mapping[str, str]) -> tuple[str, str, str]:
    lower = {k.lower(): v for k, v in headers.items()}
    values = []
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        if not lower.get(name):
            raise WebhookVerificationError("missing_header", f"no {name} header")
        values.append(lower[name])
    return values[0], values[1], values[2]


def _check_fresh(timestamp: str, tolerance: float, now: float) -> None:
    try:
        sent = int(timestamp)
    except ValueError as exc:
        raise WebhookVerificationError(
            "bad_timestamp", "webhook-timestamp is not an integer"
        ) from exc
    if abs(now - sent) > tolerance:
        raise WebhookVerificationError(
            "stale_timestamp", f"sent at {sent}, now {now:.0f}: more than {tolerance:g} s apart"
        )


def _key(secret: str) -> bytes:
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise WebhookVerificationError("bad_secret", "the secret is not whsec_ + base64") from exc
    if not key:
        raise WebhookVerificationError("bad_secret", "the secret is empty")
    return key


def _signature(key: bytes, msg_id: str, timestamp: str, payload: bytes) -> bytes:
    signed = f"{msg_id}.{timestamp}.".encode() + payload
    return base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())


def _matches(expected: bytes, candidate: str) -> bool:
    version, _, value = candidate.partition(",")
    # Other versions (e.g. v1a, asymmetric) are skipped, not errors: a sender may add them.
    return version == "v1" and hmac.compare_digest(expected, value.encode())
