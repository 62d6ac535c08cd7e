"""`secateurs_client.webhooks.verify` against signatures made independently: the HMAC of
the Standard Webhooks specification written out here, and the reference library."""

import base64
import hashlib
import hmac
import json
import secrets

import pytest

from secateurs_client import WebhookVerificationError, verify_webhook
from secateurs_client.webhooks import verify

NOW = 1_767_225_600
BODY = json.dumps({"type": "job.succeeded", "data": {"id": "job_1"}}).encode()


def make_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def spec_headers(
    secret: str, msg_id: str = "msg_abc", timestamp: int = NOW, body: bytes = BODY
) -> dict[str, str]:
    """Signed as the specification says: v1, base64(HMAC-SHA256(key, id.timestamp.body))."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": "v1," + base64.b64encode(mac).decode(),
    }


def test_accepts_a_genuine_message_and_returns_its_json():
    secret = make_secret()
    assert verify(secret, spec_headers(secret), BODY, now=NOW) == json.loads(BODY)
    assert verify_webhook is verify


def test_header_names_are_case_insensitive_and_str_bodies_work():
    secret = make_secret()
    headers = {k.title(): v for k, v in spec_headers(secret).items()}
    assert verify(secret, headers, BODY.decode(), now=NOW + 299)["type"] == "job.succeeded"


def test_any_of_several_signatures_may_match():
    secret, old = make_secret(), make_secret()
    headers = spec_headers(secret)
    headers["webhook-signature"] = (
        f"v1a,xyz {spec_headers(old)['webhook-signature']} {headers['webhook-signature']}"
    )
    verify(secret, headers, BODY, now=NOW)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda h, b: (h, b + b" "), "bad_signature"),
        (lambda h, b: ({**h, "webhook-id": "msg_other"}, b), "bad_signature"),
        (lambda h, b: ({**h, "webhook-timestamp": str(NOW + 1)}, b), "bad_signature"),
        (
            lambda h, b: ({**h, "webhook-signature": "v2," + h["webhook-signature"][3:]}, b),
            "bad_signature",
        ),
        (
            lambda h, b: ({k: v for k, v in h.items() if k != "webhook-signature"}, b),
            "missing_header",
        ),
        (lambda h, b: ({**h, "webhook-timestamp": "soon"}, b), "bad_timestamp"),
    ],
)
def test_refuses_tampered_messages(change, reason):
    secret = make_secret()
    headers, body = change(spec_headers(secret), BODY)
    with pytest.raises(WebhookVerificationError) as refused:
        verify(secret, headers, body, now=NOW)
    assert refused.value.reason == reason


def test_refuses_another_secret_and_a_broken_one():
    secret = make_secret()
    with pytest.raises(WebhookVerificationError, match="bad_signature"):
        verify(make_secret(), spec_headers(secret), BODY, now=NOW)
    with pytest.raises(WebhookVerificationError) as broken:
        verify("whsec_not base64!", spec_headers(secret), BODY, now=NOW)
    assert broken.value.reason == "bad_secret"


@pytest.mark.parametrize("offset", [-301, 301, 10_000])
def test_refuses_stale_or_early_timestamps(offset):
    secret = make_secret()
    headers = spec_headers(secret, timestamp=NOW + offset)
    with pytest.raises(WebhookVerificationError) as refused:
        verify(secret, headers, BODY, now=NOW)
    assert refused.value.reason == "stale_timestamp"
    verify(secret, headers, BODY, now=NOW, tolerance=20_000)


def test_agrees_with_the_reference_library():
    standardwebhooks = pytest.importorskip("standardwebhooks")
    from datetime import UTC, datetime

    secret = make_secret()
    reference = standardwebhooks.Webhook(secret)
    signature = reference.sign("msg_ref", datetime.fromtimestamp(NOW, UTC), BODY)
    headers = {
        "webhook-id": "msg_ref",
        "webhook-timestamp": str(NOW),
        "webhook-signature": signature,
    }
    assert verify(secret, headers, BODY, now=NOW) == json.loads(BODY)
    # And the other way round: what the reference library accepts, verify accepts.
    fresh = spec_headers(secret, timestamp=int(datetime.now(UTC).timestamp()))
    assert reference.verify(BODY, fresh) == verify(secret, fresh, BODY)
