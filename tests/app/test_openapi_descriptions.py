"""Every property of every schema in the OpenAPI document says what it means.

A field added without a description (a docstring under it, or `Field(description=...)`)
fails here, so the API reference never shows a bare name to a client.
"""

from typing import Any

import pytest

from app.main import create_app
from infra.config import Settings


@pytest.fixture(scope="module")
def schemas() -> dict[str, Any]:
    return create_app(Settings()).openapi()["components"]["schemas"]


def _properties(schemas: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (name, prop): body
        for name, schema in schemas.items()
        for prop, body in schema.get("properties", {}).items()
    }


def _described(body: dict[str, Any]) -> bool:
    text = body.get("description")
    return isinstance(text, str) and bool(text.strip())


def test_every_property_has_a_description(schemas: dict[str, Any]) -> None:
    # FastAPI's own 422 body (HTTPValidationError) is never listed: every route declares
    # its 422 as a Problem, which is what validation errors answer.
    assert "HTTPValidationError" not in schemas
    missing = [
        f"{name}.{prop}"
        for (name, prop), body in _properties(schemas).items()
        if not _described(body)
    ]
    assert not missing, (
        "schema properties without a description (add a docstring under the field, or "
        f"Field(description=...)): {', '.join(sorted(missing))}"
    )


def test_the_contract_is_documented(schemas: dict[str, Any]) -> None:
    # The fields a practitioner tunes most, spot-checked for what the docstrings promise.
    prune = schemas["PruneSpec"]["properties"]
    assert "0.9" in prune["max_layer_ratio"]["description"]
    assert "multiples" in prune["round_to"]["description"]
    assert "ms" in schemas["Percentiles"]["properties"]["p50"]["description"]
    assert "bytes" in schemas["Summary"]["properties"]["size_bytes"]["description"]
    # Problem.code keeps the table of codes the document adds.
    assert "| code | meaning |" in schemas["Problem"]["properties"]["code"]["description"]
