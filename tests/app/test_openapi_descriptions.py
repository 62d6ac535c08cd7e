"""Every property of every schema in the OpenAPI document says what it means.

A field added without a description (a docstring under it, or `Field(description=...)`)
fails here, so the API reference never shows a bare name to a client.
"""

from typing import Any

import pytest

from app.core.config import Settings
from app.main import create_app

# (schema, property) pairs allowed to have no description, each with its reason.
EXCLUDED: dict[tuple[str, str], str] = {
    # FastAPI's own default 422 body, listed only where a route declares no 422 problem
    # response; the API answers every validation error as a Problem (`validation_error`).
    **{("HTTPValidationError", p): "FastAPI's default 422 body" for p in ("detail",)},
    **{
        ("ValidationError", p): "FastAPI's default 422 body"
        for p in ("loc", "msg", "type", "input", "ctx")
    },
    # The webhook routes' response bodies are defined with their routes
    # (app/api/routes/webhooks.py) and not yet described there.
    ("SecretOut", "created_at"): "webhook routes' body, not yet described",
    ("AttemptOut", "attempt"): "webhook routes' body, not yet described",
    ("AttemptOut", "at"): "webhook routes' body, not yet described",
    ("AttemptOut", "duration_ms"): "webhook routes' body, not yet described",
    ("DeliveryOut", "type"): "webhook routes' body, not yet described",
    ("DeliveryOut", "url"): "webhook routes' body, not yet described",
    ("DeliveryOut", "status"): "webhook routes' body, not yet described",
    ("DeliveryOut", "created_at"): "webhook routes' body, not yet described",
    ("DeliveryOut", "delivered_at"): "webhook routes' body, not yet described",
    ("DeliveryOut", "attempts"): "webhook routes' body, not yet described",
    ("DeliveriesOut", "items"): "webhook routes' body, not yet described",
}


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
    missing = [
        f"{name}.{prop}"
        for (name, prop), body in _properties(schemas).items()
        if not _described(body) and (name, prop) not in EXCLUDED
    ]
    assert not missing, (
        "schema properties without a description (add a docstring under the field, or "
        f"Field(description=...)): {', '.join(sorted(missing))}"
    )


def test_exclusions_are_still_needed(schemas: dict[str, Any]) -> None:
    properties = _properties(schemas)
    described = [
        f"{name}.{prop}"
        for (name, prop) in EXCLUDED
        if (name, prop) in properties and _described(properties[(name, prop)])
    ]
    assert not described, f"described now, drop from EXCLUDED: {', '.join(described)}"


def test_the_contract_is_documented(schemas: dict[str, Any]) -> None:
    # The fields a practitioner tunes most, spot-checked for what the docstrings promise.
    prune = schemas["PruneSpec"]["properties"]
    assert "0.9" in prune["max_layer_ratio"]["description"]
    assert "multiples" in prune["round_to"]["description"]
    assert "ms" in schemas["Percentiles"]["properties"]["p50"]["description"]
    assert "bytes" in schemas["Summary"]["properties"]["size_bytes"]["description"]
    # Problem.code keeps the table of codes the document adds.
    assert "| code | meaning |" in schemas["Problem"]["properties"]["code"]["description"]
