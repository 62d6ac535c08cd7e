"""Webhooks on the API side: signatures, the address policy, the secret routes, the event
written with a job's end, and the delivery log."""

import base64
import hashlib
import hmac
import ipaddress
import json
import socket

import pytest
from sqlalchemy import select

from app.api import webhook_urls
from infra import webhooks
from infra.config import Settings
from infra.db.models import WebhookEvent
from tests.app.helpers import AUTH_A, AUTH_B, assert_problem, upload_model


@pytest.fixture
def model_id(client):
    return upload_model(client).json()["id"]


def spec_signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The signature as the Standard Webhooks specification defines it, written out here."""
    key = base64.b64decode(secret.split("_", 1)[1])
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def test_signature_follows_the_specification():
    secret = webhooks.new_secret()
    assert secret.startswith("whsec_") and len(webhooks.secret_key(secret)) == 32
    body = b'{"type":"job.succeeded"}'
    headers = webhooks.signed_headers(secret, "msg_1", body, 1_700_000_000)
    assert headers["webhook-id"] == "msg_1" and headers["webhook-timestamp"] == "1700000000"
    assert headers["webhook-signature"] == spec_signature(secret, "msg_1", 1_700_000_000, body)
    assert webhooks.new_secret() != secret


def test_signature_matches_the_reference_library():
    standardwebhooks = pytest.importorskip("standardwebhooks")
    from datetime import UTC, datetime

    secret, body = webhooks.new_secret(), b'{"a":1}'
    reference = standardwebhooks.Webhook(secret)
    at = datetime.fromtimestamp(1_700_000_000, UTC)
    assert webhooks.sign(secret, "msg_x", 1_700_000_000, body) == reference.sign("msg_x", at, body)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "239.255.255.250",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "2001:db8::1",
    ],
)
def test_non_public_addresses_are_forbidden(address):
    assert webhooks.is_forbidden(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address):
    assert not webhooks.is_forbidden(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://127.1/",
        "http://2130706433/",
        "http://0x7f.1/",
        "http://[::1]:8080/",
        "http://[::ffff:127.0.0.1]/",
        "https://localhost/",
        "http://LOCALHOST./",
        "http://api.localhost/",
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.5:9000/",
        "http://[fe80::1]/",
    ],
)
def test_submission_check_refuses_addresses_in_any_spelling(url):
    with pytest.raises(webhooks.ForbiddenAddress):
        webhooks.check_url_host(url, allow_private=False)
    webhooks.check_url_host(url, allow_private=True)


def test_submission_check_leaves_names_to_the_delivery():
    webhooks.check_url_host("https://hooks.example.com/x", allow_private=False)
    webhooks.check_url_host("http://8.8.8.8/", allow_private=False)


def fake_resolver(monkeypatch, answers: list[str]) -> None:
    def getaddrinfo(host, port, *args, **kwargs):
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in answers
        ]

    monkeypatch.setattr(webhooks.socket, "getaddrinfo", getaddrinfo)


def test_delivery_check_refuses_a_name_with_any_private_answer(monkeypatch):
    # A rebinding name may answer one public and one private address: either is refused.
    fake_resolver(monkeypatch, ["93.184.216.34", "10.0.0.7"])
    with pytest.raises(webhooks.ForbiddenAddress, match="10.0.0.7"):
        webhooks.resolve_checked("evil.example", 443, allow_private=False)
    assert webhooks.resolve_checked("evil.example", 443, allow_private=True) == [
        "93.184.216.34",
        "10.0.0.7",
    ]
    fake_resolver(monkeypatch, ["93.184.216.34", "93.184.216.34"])
    assert webhooks.resolve_checked("ok.example", 443, allow_private=False) == ["93.184.216.34"]


def test_submit_refuses_a_private_webhook_url(client, model_id):
    resp = client.post(
        "/v1/jobs",
        headers=AUTH_A,
        json={"model_id": model_id, "webhook_url": "http://127.0.0.1:9/hook"},
    )
    body = assert_problem(resp, 422, "webhook_url_forbidden")
    assert "127.0.0.1" in body["detail"]


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/",
        "http://user:pw@example.com/",
        "example.com/hook",
        "http://exa mple.com/",
    ],
)
def test_submit_refuses_a_malformed_webhook_url(client, model_id, url):
    resp = client.post("/v1/jobs", headers=AUTH_A, json={"model_id": model_id, "webhook_url": url})
    assert assert_problem(resp, 422, "validation_error")["errors"][0]["field"] == "webhook_url"


def test_allowed_private_url_is_stored_and_announced_at_the_end(app, client, model_id, settings):
    webhook_urls.configure(settings.model_copy(update={"webhook_allow_private": True}))
    try:
        resp = client.post(
            "/v1/jobs",
            headers=AUTH_A,
            json={"model_id": model_id, "webhook_url": "http://127.0.0.1:9/hook"},
        )
    finally:
        webhook_urls.configure(settings)
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert job["spec"]["webhook_url"] == "http://127.0.0.1:9/hook"
    assert client.get(f"/v1/jobs/{job['id']}/deliveries", headers=AUTH_A).json() == {"items": []}

    # A queued job cancelled by the API ends there: its event is written with the status.
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=AUTH_A).status_code == 202
    log = client.get(f"/v1/jobs/{job['id']}/deliveries", headers=AUTH_A).json()["items"]
    assert [(d["type"], d["status"], d["attempts"]) for d in log] == [
        ("job.cancelled", "pending", [])
    ]
    assert log[0]["id"].startswith("msg_") and log[0]["next_attempt_at"].endswith("Z")
    with app.state.sessionmaker() as session:
        event = session.scalar(select(WebhookEvent).where(WebhookEvent.job_id == job["id"]))
    payload = json.loads(event.body)
    assert payload["type"] == "job.cancelled" and payload["timestamp"].endswith("Z")
    assert payload["data"]["id"] == job["id"] and payload["data"]["status"] == "cancelled"
    assert payload["data"]["error"]["code"] == "cancelled"
    assert payload["data"]["links"]["job"] == f"/v1/jobs/{job['id']}"
    assert "report" not in payload["data"]["links"]
    assert_problem(client.get(f"/v1/jobs/{job['id']}/deliveries", headers=AUTH_B), 404, "not_found")


def test_jobs_without_a_url_get_no_event(app, client, model_id):
    job = client.post("/v1/jobs", headers=AUTH_A, json={"model_id": model_id}).json()
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=AUTH_A)
    with app.state.sessionmaker() as session:
        assert session.scalars(select(WebhookEvent)).all() == []


def test_secret_is_made_once_and_rotated(client):
    first = client.get("/v1/webhooks/secret", headers=AUTH_A)
    assert first.status_code == 200
    secret = first.json()["secret"]
    assert secret.startswith("whsec_") and first.json()["created_at"].endswith("Z")
    assert client.get("/v1/webhooks/secret", headers=AUTH_A).json()["secret"] == secret
    assert client.get("/v1/webhooks/secret", headers=AUTH_B).json()["secret"] != secret
    rotated = client.post("/v1/webhooks/secret", headers=AUTH_A)
    assert rotated.status_code == 201 and rotated.json()["secret"] != secret
    assert (
        client.get("/v1/webhooks/secret", headers=AUTH_A).json()["secret"]
        == rotated.json()["secret"]
    )
    assert client.get("/v1/webhooks/secret").status_code == 401


def test_defaults_retry_for_about_a_day():
    settings = Settings()
    total, delay = 0.0, settings.webhook_retry_base_s
    for _ in range(settings.webhook_max_attempts - 1):
        total += min(delay, settings.webhook_retry_max_s)
        delay *= 2
    assert 20 * 3600 < total < 30 * 3600
    assert not settings.webhook_allow_private
