"""The API killed mid-upload leaves no partial file once it is back, and a job that runs
past its time limit is stopped and failed with `time_limit_exceeded`. Embedded broker."""

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

from tests.conftest import Service, running_service
from tests.faults.jobs import body, finish, submit, upload_inputs

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SOFT_LIMIT_S = 15


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    data_dir = tmp_path_factory.mktemp("restart") / "data"
    with running_service(
        data_dir,
        job_soft_time_limit_s=str(SOFT_LIMIT_S),
        job_hard_time_limit_s=str(SOFT_LIMIT_S + 30),
    ) as svc:
        yield svc


def _partials(service: Service) -> list[Path]:
    return sorted((service.log_dir / "tmp").glob("*.upload*"))


def test_api_killed_mid_upload_leaves_no_partial_file(service: Service) -> None:
    url = urlparse(service.base_url)
    boundary = "killb"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="m.onnx"\r\n\r\n'
    ).encode()
    request = (
        f"POST /v1/models HTTP/1.1\r\nHost: {url.netloc}\r\n"
        f"Authorization: Bearer {service.key_a}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {50 << 20}\r\n\r\n"
    ).encode() + head
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(request)
        deadline = time.monotonic() + 30
        while not _partials(service) and time.monotonic() < deadline:
            sock.sendall(bytes(64 << 10))
            time.sleep(0.05)
        assert _partials(service), "the upload never reached the disk"
        api = service.procs["api"]
        os.killpg(api.pid, signal.SIGKILL)
        api.wait(timeout=10)
    # The dead process left its partial file behind...
    assert [p.suffix for p in _partials(service)] == [".upload"]
    service.start_api(url.port)
    # ...and the new one swept it at start-up.
    assert _partials(service) == []
    assert httpx.get(f"{service.base_url}/readyz", timeout=10).status_code == 200


def test_job_past_its_time_limit(service: Service, tmp_path: Path) -> None:
    with service.client() as client:
        model_id, dataset_id = upload_inputs(client, tmp_path)
        # batch 1: 64,000 steps, far past the limit even on a fast machine
        job_id = submit(client, body(model_id, dataset_id, epochs=1000, batch_size=1))
        done = finish(client, job_id, timeout_s=300)
        assert done["status"] == "failed", done
        assert done["error"]["code"] == "time_limit_exceeded", done
        assert client.get(f"/v1/jobs/{job_id}/artifacts").json() == []
        # The worker takes the next job.
        after = finish(client, submit(client, body(model_id)), timeout_s=300)
        assert after["status"] == "succeeded", (after, service.logs())
