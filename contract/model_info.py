"""What an upload turned out to be: returned by the model/dataset inspectors."""

from typing import Literal

from pydantic import Field

from contract.base import Frozen

ModelFormat = Literal["onnx", "pt2", "safetensors", "state_dict"]


class TensorInfo(Frozen):
    name: str
    """The input's or output's name in the model (the ONNX graph's, or the one the loader
    gives a torch model's positional input, e.g. `input`)."""
    shape: list[int | str | None]
    """Dimensions, batch first; a dynamic one is given as its symbolic name (e.g. `batch`)
    or null."""
    dtype: str = "float32"
    """Element type, numpy spelling (`float32`, `int64`, ...)."""


class ModelStats(Frozen):
    params: int
    """Number of parameters (weight and bias elements)."""
    macs: int
    """Multiply-accumulates of one forward pass at batch 1 on `input_shape`."""


class ModelInfo(Frozen):
    format: ModelFormat
    """How the upload was stored: `onnx`, `pt2` (torch.export archive), `safetensors` or
    `state_dict` (weights only, rebuilt from `arch`)."""
    inputs: list[TensorInfo]
    """The model's inputs, in call order."""
    outputs: list[TensorInfo]
    """The model's outputs, in order; pruning keeps their names and shapes."""
    stats: ModelStats
    """Size and compute of the model as uploaded."""
    arch: str | None = None
    """The architecture a weights-only upload is rebuilt from (`torchvision:resnet18`,
    `timm:...`); null for ONNX and `.pt2`."""
    input_shape: list[int] = Field(default_factory=list)
    """The concrete shape the model is run with (batch 1, dynamic dimensions filled in):
    what MACs, latency and the pruning itself are measured on."""


class DatasetInfo(Frozen):
    format: Literal["npz", "imagefolder"]
    """`npz` (arrays `x`, optional `y`, `mean`, `std`) or `imagefolder` (a `.zip` of
    `class_name/*.png` folders)."""
    num_samples: int
    """Samples in the upload, before the held-back split is taken from them."""
    sample_shape: list[int]
    """Shape of one sample, without the batch dimension (e.g. `[3, 224, 224]`)."""
    num_classes: int | None = None
    """Distinct labels; null without labels."""
    labeled: bool
    """Whether samples carry class labels: with them accuracy is measured, without them
    only agreement with the original model."""


class ChannelGroup(Frozen):
    """One pruning group: layers whose channels are removed together, named by its root."""

    layer: str = Field(description="the group's root layer (a convolution or linear layer)")
    channels: int = Field(description="the root layer's output channels")
    prunable: bool
    """Whether pruning may remove channels of this group (false: protected, see
    `reason`)."""
    reason: str | None = Field(
        default=None,
        description="why a protected group keeps its channels: reaches_output, "
        "channel_shuffle, baked_shape or not_analysed",
    )
    why: str | None = Field(default=None, description="the reason in words")


class Prunability(Frozen):
    """What structured pruning can do to a model, found before any job runs."""

    groups: list[ChannelGroup]
    """Every channel group of the model, in graph order."""
    prunable_groups: int
    """Groups pruning may cut."""
    protected_groups: int
    """Groups that keep all their channels (see each group's `reason`)."""
    max_macs_reduction: float | None = Field(
        description="the largest MACs reduction reachable with every prunable group cut "
        "as far as max_layer_ratio 0.9 allows; null when the analysis ran out of time"
    )
    analysis_s: float
    """Wall time of the analysis, in seconds."""
    notes: list[str] = Field(default_factory=list)
    """Anything the analysis could not settle or a reader should know, in words."""
