"""The OpenAPI document and its viewers, and helpers that document error responses and
multipart bodies in it.

`/docs` (Swagger UI) and `/redoc` (ReDoc) load their scripts from files shipped with the
package (`app/dashboard/static/vendor/`), not from a CDN, so they work without internet.
"""

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from app.api.schemas import Problem
from app.core.errors import ERROR_CODES, PROBLEM_MEDIA_TYPE

_PROBLEM_SCHEMA = {"$ref": "#/components/schemas/Problem"}

OPENAPI_URL = "/openapi.json"
# The viewers' files, under the dashboard's static route (see vendor/README.md).
_VENDOR = "/static/vendor"
DOCS_ASSETS = {
    "swagger_js": f"{_VENDOR}/swagger-ui/swagger-ui-bundle.js",
    "swagger_css": f"{_VENDOR}/swagger-ui/swagger-ui.css",
    "redoc_js": f"{_VENDOR}/redoc/redoc.standalone.js",
    "favicon": "/static/favicon.svg",
}
# Swagger UI would otherwise send the document to validator.swagger.io for a badge.
_SWAGGER_PARAMETERS = {"validatorUrl": None}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries saying that each status answers with problem+json."""
    return {
        status: {
            "model": Problem,
            "description": HTTPStatus(status).phrase,
            "content": {PROBLEM_MEDIA_TYPE: {"schema": _PROBLEM_SCHEMA}},
        }
        for status in statuses
    }


def multipart_body(
    fields: dict[str, str], *, required: tuple[str, ...] = ("file",)
) -> dict[str, Any]:
    """`openapi_extra=` describing a multipart form with a binary `file` and text fields.

    The routes parse the body themselves (streaming, with a size cap), so FastAPI cannot
    infer it."""
    properties: dict[str, Any] = {"file": {"type": "string", "format": "binary"}}
    properties |= {name: {"type": "string", "description": text} for name, text in fields.items()}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": properties,
                        "required": list(required),
                    }
                }
            },
        }
    }


def _only_problem_content(schema: dict[str, Any]) -> dict[str, Any]:
    # FastAPI also lists a `model=` response under application/json; errors are only ever
    # sent as problem+json, so say just that.
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for response in operation.get("responses", {}).values():
                content = response.get("content", {})
                if PROBLEM_MEDIA_TYPE in content:
                    content.pop("application/json", None)
    return schema


def _codes_table() -> str:
    rows = "\n".join(f"| `{code}` | {meaning} |" for code, meaning in sorted(ERROR_CODES.items()))
    return (
        "A stable snake_case code saying what went wrong; new codes may be added.\n\n"
        f"| code | meaning |\n|---|---|\n{rows}"
    )


def _document_codes(schema: dict[str, Any]) -> dict[str, Any]:
    # A documented table rather than an enum: a client generated with an enum would
    # refuse an answer carrying a code added after it was generated.
    code = schema["components"]["schemas"]["Problem"]["properties"]["code"]
    code["description"] = _codes_table()
    return schema


def _server_url(request: Request) -> str:
    # As the client reached us: scheme and host (after the proxy headers uvicorn trusts)
    # and the root path a proxy mounts us under, so "Try it out" calls the same address.
    return str(request.base_url).rstrip("/")


def _static_url(request: Request, path: str) -> str:
    root: str = request.scope.get("root_path", "")
    return root.rstrip("/") + path


def install_openapi(app: FastAPI) -> None:
    """Serve the schema (built once, error responses documented as problem+json only, its
    `servers` taken from each request) and the two viewers, from local files.

    The app is created with FastAPI's own `openapi_url`, `docs_url` and `redoc_url` off."""
    default = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _document_codes(_only_problem_content(default()))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get(OPENAPI_URL, include_in_schema=False)
    def openapi_document(request: Request) -> JSONResponse:
        return JSONResponse({**app.openapi(), "servers": [{"url": _server_url(request)}]})

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=_static_url(request, OPENAPI_URL),
            title=f"{app.title} API",
            swagger_js_url=_static_url(request, DOCS_ASSETS["swagger_js"]),
            swagger_css_url=_static_url(request, DOCS_ASSETS["swagger_css"]),
            swagger_favicon_url=_static_url(request, DOCS_ASSETS["favicon"]),
            swagger_ui_parameters=_SWAGGER_PARAMETERS,
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(
            openapi_url=_static_url(request, OPENAPI_URL),
            title=f"{app.title} API",
            redoc_js_url=_static_url(request, DOCS_ASSETS["redoc_js"]),
            redoc_favicon_url=_static_url(request, DOCS_ASSETS["favicon"]),
            with_google_fonts=False,
        )
