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


class ChannelGroup(Frozen):
    """One pruning group: layers whose channels are removed together, named by its root."""

    layer: str = Field(description="the group's root layer (a convolution or linear layer)")
    channels: int = Field(description="the root layer's output channels")
    prunable: bool
    reason: str | None = Field(
        default=None,
        description="why a protected group keeps its channels: reaches_output, "
        "channel_shuffle, baked_shape or not_analysed",
    )
    why: str | None = Field(default=None, description="the reason in words")


class Prunability(Frozen):
    """What structured pruning can do to a model, found before any job runs."""

    groups: list[ChannelGroup]
    prunable_groups: int
    protected_groups: int
    max_macs_reduction: float | None = Field(
        description="the largest MACs reduction reachable with every prunable group cut "
        "as far as max_layer_ratio 0.9 allows; null when the analysis ran out of time"
    )
    analysis_s: float
    notes: list[str] = Field(default_factory=list)
