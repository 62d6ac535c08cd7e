"""The dashboard's files are served from the package, with no way out of `static/`."""

import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.dashboard import STATIC_DIR, resolve_static, router


@pytest.fixture
def client() -> TestClient:
    app = FastAPI()
    app.include_router(router)
    return TestClient(app)


def test_index_loads_the_app_module(client: TestClient) -> None:
    res = client.get("/")
    assert res.status_code == 200
    assert res.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/static/js/main.js">' in res.text


@pytest.mark.parametrize(
    "path,kind",
    [("js/main.js", "javascript"), ("css/app.css", "text/css"), ("favicon.svg", "image/svg+xml")],
)
def test_static_files_have_their_types(client: TestClient, path: str, kind: str) -> None:
    res = client.get(f"/static/{path}")
    assert res.status_code == 200
    assert kind in res.headers["content-type"]
    assert res.content == (STATIC_DIR / path).read_bytes()


@pytest.mark.parametrize(
    "path", ["../__init__.py", "js/../../__init__.py", "js", "missing.js", "/etc/passwd"]
)
def test_nothing_outside_static_is_served(path: str) -> None:
    assert resolve_static(path) is None


def test_encoded_traversal_is_a_404(client: TestClient) -> None:
    assert client.get("/static/%2e%2e/__init__.py").status_code == 404
    assert client.get("/static/js/%2e%2e/%2e%2e/__init__.py").status_code == 404


def test_every_module_import_resolves() -> None:
    # No build step: a typo in an import path would only show up in a browser, so check
    # every relative import of every module points at a shipped file.
    modules = sorted(STATIC_DIR.rglob("*.js"))
    assert len(modules) >= 10
    for module in modules:
        for spec in re.findall(r"""^import .* from '(\.{1,2}/[^']+)';""", module.read_text(), re.M):
            target = (module.parent / spec).resolve()
            assert target.is_file(), f"{module.name} imports missing {spec}"
