"""Malformed, unauthenticated and oversized requests: exact problems, never a 5xx."""

import socket
import time
from urllib.parse import urlparse

import pytest

from tests.conftest import Service
from tests.security.conftest import IDLE_TIMEOUT_S
from tests.security.helpers import assert_problem, assert_ready, tmp_files

pytestmark = pytest.mark.e2e

MODEL_ID = "mdl_doesnotexist"


@pytest.mark.parametrize("auth", [None, "Bearer wrong-key", "Basic YWxpY2U6eA==", "Bearer  x"])
def test_missing_or_wrong_key(service: Service, auth: str | None) -> None:
    with service.client() as client:
        headers = {"Authorization": auth} if auth is not None else {}
        if auth is None:
            client.headers.pop("Authorization")
        resp = client.get("/v1/models", headers=headers)
    assert_problem(resp, 401, "unauthorized")
    assert_ready(service)


@pytest.mark.parametrize(
    "body, field",
    [
        ({"model_id": MODEL_ID, "surprise": 1}, "surprise"),
        (
            {"model_id": MODEL_ID, "prune": {"target": {"macs_reduction": 0.5}, "colour": "red"}},
            "prune.colour",
        ),
        ({"model_id": MODEL_ID, "prune": {"target": {"macs_reduction": 1.5}}}, "macs_reduction"),
        ({"model_id": MODEL_ID, "prune": {"target": {"macs_reduction": -0.1}}}, "macs_reduction"),
        ({"model_id": MODEL_ID, "finetune": {"epochs": 10**9}}, "epochs"),
        ({"model_id": MODEL_ID, "prune": {"method": "rm -rf"}}, "method"),
        ({"model_id": MODEL_ID, "benchmark": {"iterations": -5}}, "iterations"),
        ({}, "model_id"),
    ],
)
def test_unknown_and_out_of_range_job_fields(service: Service, body: dict, field: str) -> None:
    with service.client() as client:
        problem = assert_problem(client.post("/v1/jobs", json=body), 422, "validation_error")
    assert field in problem["detail"], problem
    assert_ready(service)


def test_body_that_is_not_json(service: Service) -> None:
    with service.client() as client:
        resp = client.post(
            "/v1/jobs", content=b"\xff\xfe{not json", headers={"Content-Type": "application/json"}
        )
    assert_problem(resp, 400, "bad_request")
    assert_ready(service)


def test_oversized_json_body(service: Service) -> None:
    with service.client() as client:
        resp = client.post("/v1/jobs", json={"model_id": "m" * (2 << 20)})
    assert_problem(resp, 413, "payload_too_large")
    assert_ready(service)


@pytest.mark.parametrize(
    "query",
    [
        "limit=201",
        "limit=0",
        "limit=-1",
        "limit=abc",
        "cursor=" + "A" * 600,
        "cursor=%00%ff",
        "status=exploded",
    ],
)
def test_page_parameters_are_bounded(service: Service, query: str) -> None:
    with service.client() as client:
        resp = client.get(f"/v1/jobs?{query}")
    assert_problem(resp, 422, "validation_error")
    assert_ready(service)


def test_upload_that_is_not_multipart(service: Service) -> None:
    with service.client() as client:
        resp = client.post(
            "/v1/models", content=b"raw bytes", headers={"Content-Type": "application/octet-stream"}
        )
    assert_problem(resp, 415, "unsupported_media_type")
    assert_ready(service)


def test_unknown_form_field(service: Service) -> None:
    with service.client() as client:
        resp = client.post("/v1/models", files={"file": ("m.onnx", b"x")}, data={"shell": "id"})
    assert_problem(resp, 422, "validation_error")
    assert tmp_files(service) == []
    assert_ready(service)


def _read_until_closed(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_slow_client_is_dropped(service: Service) -> None:
    """A client that starts an upload and then stalls gets 408 after the idle timeout; its
    partial file is removed."""
    url = urlparse(service.base_url)
    boundary = "slowb"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="m.onnx"\r\n\r\n'
    ).encode() + bytes(1000)
    request = (
        f"POST /v1/models HTTP/1.1\r\nHost: {url.netloc}\r\n"
        f"Authorization: Bearer {service.key_a}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(head) + 100000}\r\n\r\n"
    ).encode() + head
    started = time.monotonic()
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(request)
        reply = _read_until_closed(sock).decode("latin-1")
    waited = time.monotonic() - started
    assert reply.startswith("HTTP/1.1 408"), reply[:300]
    assert '"code":"request_timeout"' in reply.replace(" ", "")
    assert IDLE_TIMEOUT_S <= waited < IDLE_TIMEOUT_S + 10
    assert tmp_files(service) == []
    assert_ready(service)
