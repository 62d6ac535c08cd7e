"""Base model for every contract type: unknown fields are errors, instances are frozen.

A docstring under a field is its description in the OpenAPI document."""

from pydantic import BaseModel, ConfigDict


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
