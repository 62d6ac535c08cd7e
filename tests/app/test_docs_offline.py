"""The API documentation works offline (its viewers are served from the package), says
where the API is, and lists every error code the app can answer with."""

import ast
import re
from pathlib import Path

from app.core.errors import _STATUS_CODES, ERROR_CODES

ROOT = Path(__file__).resolve().parents[2]
# src= and href= of the page: scripts, style sheets, the icon.
_ASSET = re.compile(r"""(?:src|href)=["']([^"']+)["']""")


def _assets(html: str) -> list[str]:
    return _ASSET.findall(html)


def _check_served_locally(client, page: str, expected: int) -> None:
    resp = client.get(page)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    assert not re.search(r"https?://", resp.text), f"{page} refers to another site"
    assets = _assets(resp.text)
    assert len(assets) == expected, assets
    for url in assets:
        assert url.startswith("/static/"), url
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 100, url


def test_swagger_ui_loads_only_local_files(client):
    _check_served_locally(client, "/docs", expected=3)  # its script, its css, the icon
    script = client.get("/static/vendor/swagger-ui/swagger-ui-bundle.js")
    assert "javascript" in script.headers["content-type"] and b"SwaggerUIBundle" in script.content


def test_redoc_loads_only_local_files(client):
    _check_served_locally(client, "/redoc", expected=2)  # its script, the icon
    script = client.get("/static/vendor/redoc/redoc.standalone.js")
    assert b"Redoc" in script.content


def test_the_document_names_the_server_it_was_fetched_from(client, app):
    from fastapi.testclient import TestClient

    assert client.get("/openapi.json").json()["servers"] == [{"url": "http://testserver"}]
    resp = client.get("/openapi.json", headers={"Host": "api.example.org:8443"})
    assert resp.json()["servers"] == [{"url": "http://api.example.org:8443"}]
    # Behind a proxy that mounts the API under a path, the pages and the servers follow.
    with TestClient(app, root_path="/secateurs") as mounted:
        assert mounted.get("/openapi.json").json()["servers"] == [
            {"url": "http://testserver/secateurs"}
        ]
        assert "url: '/secateurs/openapi.json'" in mounted.get("/docs").text


def test_the_problem_code_lists_every_code(client):
    spec = client.get("/openapi.json").json()
    described = spec["components"]["schemas"]["Problem"]["properties"]["code"]["description"]
    for code in ERROR_CODES:
        assert f"| `{code}` |" in described


def _literal(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _codes_in(path: Path, callers: set[str] | None = None) -> set[str]:
    """The string codes a module's source gives: `code=`/`fallback_code=` arguments,
    `problem_response(status, "code", …)`, and class attributes `code = "…"` (alone or in
    `status, code = …`). With `callers`, only arguments of calls to those names."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            if callers is not None and name not in callers:
                continue
            found |= {
                v
                for k in node.keywords
                if k.arg in {"code", "fallback_code"}
                if (v := _literal(k.value))
            }
            if name == "problem_response" and len(node.args) > 1 and _literal(node.args[1]):
                found.add(node.args[1].value)
        elif isinstance(node, ast.ClassDef) and callers is None:
            for statement in node.body:
                found |= _class_codes(statement)
    return found


def _class_codes(statement: ast.stmt) -> set[str]:
    if not isinstance(statement, ast.Assign):
        return set()
    codes = set()
    for target in statement.targets:
        if isinstance(target, ast.Name) and target.id == "code" and _literal(statement.value):
            codes.add(statement.value.value)  # type: ignore[attr-defined]
        if isinstance(target, ast.Tuple) and isinstance(statement.value, ast.Tuple):
            for name, value in zip(target.elts, statement.value.elts, strict=False):
                if isinstance(name, ast.Name) and name.id == "code" and _literal(value):
                    codes.add(value.value)  # type: ignore[attr-defined]
    return codes


def test_every_code_the_app_can_answer_with_is_listed():
    raised = set().union(*(_codes_in(path) for path in (ROOT / "app").rglob("*.py")))
    raised |= set(_STATUS_CODES.values()) | {"http_error"}
    assert len(raised) > 25  # the scan finds the codes, not nothing
    # Uploads are inspected by the engine in a sandbox, whose loading errors pass through.
    inspection = set().union(
        *(
            _codes_in(path, callers={"UnsupportedModel", "InvalidDataset", "UnsafeArchive"})
            for path in (ROOT / "worker" / "engine").rglob("*.py")
        )
    )
    assert {"unsupported_op", "unsafe_format"} <= inspection
    missing = (raised | inspection) - set(ERROR_CODES)
    assert not missing, f"add these to app.core.errors.ERROR_CODES: {sorted(missing)}"
