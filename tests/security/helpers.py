"""Assertions every security test ends with: the exact problem, and a service still ready."""

from pathlib import Path
from typing import Any

import httpx

from tests.conftest import Service


def assert_problem(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """`resp` is an RFC 9457 problem with this status and code, and leaks no internals."""
    assert resp.status_code == status, (resp.status_code, resp.text[:500])
    assert resp.headers["content-type"].startswith("application/problem+json"), resp.headers
    body = resp.json()
    assert (body["status"], body["code"]) == (status, code), body
    assert "Traceback" not in resp.text and 'File "' not in resp.text, resp.text
    return body


def assert_ready(service: Service) -> None:
    """Both processes alive, and the API answers ready (store, broker, artifacts)."""
    for name, proc in service.procs.items():
        assert proc.poll() is None, f"the {name} died\n{service.logs()}"
    resp = httpx.get(f"{service.base_url}/readyz", timeout=10)
    assert resp.status_code == 200, resp.text


def upload(client: httpx.Client, kind: str, path: Path, **fields: str) -> httpx.Response:
    with path.open("rb") as fh:
        return client.post(f"/v1/{kind}", files={"file": (path.name, fh)}, data=fields, timeout=120)


def tmp_files(service: Service) -> list[str]:
    """What is left in the API's upload area (partial files must never stay)."""
    tmp = service.log_dir / "tmp"
    return sorted(p.name for p in tmp.iterdir()) if tmp.exists() else []
