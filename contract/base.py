"""Base model for every contract type: unknown fields are errors, instances are frozen."""

from pydantic import BaseModel, ConfigDict


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
