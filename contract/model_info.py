"""What an upload turned out to be: returned by the model/dataset inspectors."""

from typing import Literal

from pydantic import Field

from contract.base import Frozen

ModelFormat = Literal["onnx", "pt2", "safetensors", "state_dict"]


class TensorInfo(Frozen):
    name: str
    # Dynamic dimensions are given as their symbolic name (e.g. "batch") or null.
    shape: list[int | str | None]
    dtype: str = "float32"


class ModelStats(Frozen):
    params: int
    macs: int


class ModelInfo(Frozen):
    format: ModelFormat
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    stats: ModelStats
    arch: str | None = None
    # The concrete input shape used to run the model (batch 1), dynamic dims filled.
    input_shape: list[int] = Field(default_factory=list)


class DatasetInfo(Frozen):
    format: Literal["npz", "imagefolder"]
    num_samples: int
    sample_shape: list[int]
    num_classes: int | None = None
    labeled: bool
