"""The pruning job specification (the body of `POST /v1/jobs` minus the ids).

Every field has a default and every number a bound, so a partial body such as
`{"prune": {"target": {"macs_reduction": 0.6}}}` is a whole, valid request.
"""

from typing import Literal, cast, get_args
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from contract.base import Frozen

Method = Literal["l1", "l2", "bn_scale", "taylor", "fpgm", "lamp", "random", "unstructured_l1"]
# sensitivity: per-layer ratios set by a sensitivity scan (worker/engine/analyze/sensitivity.py).
Scope = Literal["global", "layerwise", "sensitivity"]
Fraction = Field(default=None, gt=0.0, lt=1.0)
# The fields of a Target, one of which is set: what `Target.kind` names.
TargetKind = Literal["macs_reduction", "params_reduction", "channel_ratio", "latency_reduction"]


class Target(Frozen):
    """Exactly one of the fields is set: how much to remove, as a fraction in (0, 1).

    `latency_reduction` is measured: onnxruntime latency at batch 1 on the worker's own
    execution provider (0.6 = 60% less time than the original).
    """

    macs_reduction: float | None = Fraction
    """Fraction of multiply-accumulates (batch 1) to remove: 0.6 leaves 40% of the
    compute. Met within 2 points, or the job fails with `target_unreachable`."""
    params_reduction: float | None = Fraction
    """Fraction of parameters to remove, met within 2 points like `macs_reduction`."""
    channel_ratio: float | None = Fraction
    """Fraction of each prunable layer's output channels to remove (before rounding to
    hardware-friendly widths); no MACs or parameter figure is promised."""
    latency_reduction: float | None = Fraction
    """Fraction of onnxruntime latency (batch 1, the worker's own provider) to remove,
    measured: the result lands within 5% of the target time either way."""

    @model_validator(mode="after")
    def _exactly_one(self) -> "Target":
        chosen = [k for k, v in self.model_dump().items() if v is not None]
        if len(chosen) != 1:
            raise ValueError(
                "prune.target needs exactly one of macs_reduction, params_reduction, "
                f"channel_ratio, latency_reduction (got {chosen or 'none'})"
            )
        return self

    @property
    def kind(self) -> TargetKind:
        """The one field that is set."""
        for kind in get_args(TargetKind):
            if getattr(self, kind) is not None:
                return cast(TargetKind, kind)
        raise AssertionError("a validated Target has one field set")

    @property
    def value(self) -> float:
        return float(getattr(self, self.kind))


class PruneSpec(Frozen):
    method: Method = "l2"
    """How channels are ranked for removal: `l1`/`l2` (filter weight norms), `bn_scale`
    (BatchNorm scales), `taylor` (gradient × weight, on the dataset when there is one),
    `fpgm` (distance to the layer's geometric median), `lamp` (layer-adaptive
    magnitude), `random` (a baseline). `unstructured_l1` zeroes single weights instead:
    the file is as large and as fast as before."""
    target: Target = Field(default_factory=lambda: Target(macs_reduction=0.5))
    """How much to remove (default: half the MACs)."""
    scope: Scope = "global"
    """`global`: one ranking across all layers, so layers lose different shares;
    `layerwise`: every layer loses the same share; `sensitivity`: a scan measures each
    layer group's damage first and robust groups are pruned more."""
    iterative_steps: int = Field(default=5, ge=1, le=100)
    """Steps the target is reached in, re-ranking channels after each (1-100). More steps
    rank better and take longer; not used by latency targets or `scope: sensitivity`."""
    round_to: int | None = Field(default=None, ge=1, le=512)
    """Keep every pruned layer's width a multiple of this (1-512). Null (default):
    multiples of 16 for layers of 64+ channels, else 8, relaxed to 8, 4, then any width
    only when the target cannot be met otherwise."""
    ignored_layers: list[str] = Field(default_factory=list, max_length=10_000)
    """Module names of layers whose output channels are kept (e.g. `layer4.1.conv2`, as
    in the prunability report's groups); an unknown name fails the job."""
    max_layer_ratio: float = Field(default=0.9, gt=0.0, le=1.0)
    """Largest fraction of any one layer's channels pruning may remove (0-1, default
    0.9): lower it to keep every layer at least this wide, at the cost of reachable
    targets."""

    @model_validator(mode="after")
    def _channels_for_speed(self) -> "PruneSpec":
        if self.method == "unstructured_l1" and (
            self.target.kind == "latency_reduction" or self.scope == "sensitivity"
        ):
            raise ValueError(
                "method unstructured_l1 removes no channels: it cannot take a "
                "latency_reduction target or the sensitivity scope"
            )
        return self


class RegularizeSpec(Frozen):
    """Sparsity training before pruning, so the channels removed carry little. Needs a
    dataset; skipped without one."""

    kind: Literal["l1_bn", "group_l2"] = "l1_bn"
    """`l1_bn`: L1 penalty on BatchNorm scales (network slimming; models without
    BatchNorm fall back to `group_l2`); `group_l2`: group lasso over each channel group."""
    strength: float = Field(default=1e-4, gt=0.0, le=1.0)
    """Weight of the penalty added to the loss (default 1e-4); larger pushes more
    channels towards zero and costs more accuracy before pruning."""
    epochs: int = Field(default=3, ge=1, le=1000)
    """Passes over the dataset's training part with the penalty."""


class FinetuneSpec(Frozen):
    """Training after pruning to win back accuracy. Needs a dataset; skipped without one."""

    epochs: int = Field(default=5, ge=0, le=1000)
    """Passes over the dataset's training part; 0 skips fine-tuning."""
    lr: float = Field(default=0.01, gt=0.0, le=10.0)
    """Peak learning rate, reached after a short linear warm-up (3% of the steps) and
    decayed to zero on a cosine."""
    batch_size: int = Field(default=64, ge=1, le=4096)
    """Samples per training step."""
    optimizer: Literal["sgd", "adamw"] = "sgd"
    """`sgd` (momentum 0.9, Nesterov) or `adamw`."""
    distill: bool = True
    """Train towards the original model's outputs (works without labels, for any output
    structure); false trains on the labels (cross-entropy) where the dataset has them."""


class AccuracyBudget(Frozen):
    """Search for the strongest pruning, up to prune.target, whose measured drop fits."""

    max_drop: float = Field(default=0.01, ge=0.0, le=1.0)
    """Largest drop allowed, a fraction 0-1 (0.01 = one point): held-back top-1 accuracy
    with labels, else top-1 agreement with the original."""
    probes: int = Field(default=6, ge=2, le=20)
    """Pruning strengths tried (2-20), each pruned on a copy and briefly fine-tuned (one
    epoch, or at least 300 steps); more probes find the limit more closely, each costs
    time."""


BUDGET_NEEDS_DATASET = (
    "accuracy_budget needs a dataset: without one there is no held-back data to measure "
    "the drop on and none to fine-tune the probes with; add a dataset or remove "
    "accuracy_budget"
)


def require_dataset_for_budget(budget: AccuracyBudget | None, has_dataset: bool) -> None:
    """Raise ValueError (BUDGET_NEEDS_DATASET) for an accuracy budget without a dataset.

    The spec does not say whether the job has a dataset; its callers do (the API body's
    `dataset_id`, the CLI's `--data`), and validate with this. Without data the search
    would judge data-free probes by their agreement on random inputs and ship whatever
    that chose."""
    if budget is not None and not has_dataset:
        raise ValueError(BUDGET_NEEDS_DATASET)


class ExportSpec(Frozen):
    opset: int = Field(default=17, ge=13, le=23)
    """ONNX opset of model.onnx and original.onnx (13-23); lower it for older runtimes."""
    dynamic_batch: bool = True
    """Export the batch dimension as dynamic (any batch size); false fixes it at the size
    the model is exported with (1, unless the model's graph fixes another)."""


Provider = Literal["auto", "cpu", "cuda", "CPUExecutionProvider", "CUDAExecutionProvider"]


class BenchmarkSpec(Frozen):
    providers: list[Provider] = Field(
        default_factory=lambda: list[Provider](["auto"]), min_length=1, max_length=4
    )
    """onnxruntime execution providers to time (1-4): `auto` is CUDA when the worker
    runs on a GPU with the CUDA provider installed, else CPU; `cuda` asks for CUDA
    whatever the device. The CPU provider is always timed too."""
    batch_sizes: list[int] = Field(default_factory=lambda: [1], min_length=1, max_length=8)
    """Batch sizes to time (1-8 of them, each 1-1024); ratios and speed-up use batch 1."""
    warmup: int = Field(default=10, ge=0, le=1000)
    """Untimed runs per model before timing starts."""
    iterations: int = Field(default=50, ge=1, le=10_000)
    """Timed runs per model, provider and batch size, original and pruned interleaved;
    p99 is reported from 200 runs up."""

    @model_validator(mode="after")
    def _batch_bounds(self) -> "BenchmarkSpec":
        if any(b < 1 or b > 1024 for b in self.batch_sizes):
            raise ValueError("benchmark.batch_sizes must each be in 1..1024")
        return self


class QuantizeSpec(Frozen):
    """Post-training static quantization of the pruned model (onnxruntime, QDQ format)."""

    mode: Literal["none", "int8"] = Field(
        default="none",
        description=(
            "none: ship the pruned float model. int8: also quantize it to INT8 (weights "
            "int8, activations uint8, QDQ format); model.onnx is then the INT8 model and "
            "model.fp32.onnx the pruned float one. Inputs and outputs stay float32."
        ),
    )
    calibration: Literal["minmax", "entropy", "percentile"] = Field(
        default="minmax",
        description="How activation ranges are calibrated on the calibration samples.",
    )
    samples: int = Field(
        default=128,
        ge=1,
        le=4096,
        description=(
            "Calibration samples, from the dataset's training part, or seeded synthetic "
            "inputs shaped like the model input when the job has no dataset."
        ),
    )
    per_channel: bool = Field(
        default=True, description="One weight scale per output channel (else per tensor)."
    )
    fallback: Literal["auto", "none"] = Field(
        default="auto",
        description=(
            "auto: when INT8 loses more than accuracy_budget.max_drop against the original "
            "model (or one point against the pruned float model without a budget), keep "
            "the most sensitive layers in float, fewest first, until it fits. none: "
            "quantize every layer it can."
        ),
    )
    exclude: list[str] = Field(
        default_factory=list,
        max_length=10_000,
        description=(
            "ONNX node names kept in float (never quantized), as the exported model names "
            "them (model.fp32.onnx, e.g. /layer1/layer1.0/conv1/Conv)."
        ),
    )


class JobSpec(Frozen):
    """What to do to a model. The API adds `model_id` and `dataset_id` around it."""

    prune: PruneSpec = Field(default_factory=PruneSpec)
    """What to remove and how (default: `l2`, half the MACs, global)."""
    regularize: RegularizeSpec | None = None
    """Sparsity training before pruning; null (default) skips it."""
    finetune: FinetuneSpec | None = Field(default_factory=FinetuneSpec)
    """Fine-tuning after pruning (default: 5 epochs of distillation, when the job has a
    dataset); null skips it."""
    accuracy_budget: AccuracyBudget | None = None
    """Search for the strongest pruning up to `prune.target` whose drop fits; needs a
    dataset. Null (default): prune to the target as given."""
    export: ExportSpec = Field(default_factory=ExportSpec)
    """How the pruned model is exported to ONNX."""
    benchmark: BenchmarkSpec = Field(default_factory=BenchmarkSpec)
    """How the original and pruned models are timed for the report."""
    quantize: QuantizeSpec = Field(
        default_factory=QuantizeSpec,
        description="Quantize the pruned model after export (default: no quantization).",
    )
    webhook_url: str | None = Field(
        default=None,
        max_length=2048,
        description=(
            "An http(s) URL that receives a signed POST (Standard Webhooks: webhook-id, "
            "webhook-timestamp, webhook-signature) when the job ends: job.succeeded, "
            "job.failed or job.cancelled. Retried with backoff until it answers 2xx. "
            "Loopback, private, link-local and multicast addresses are refused."
        ),
    )

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url_shape(cls, url: str | None) -> str | None:
        if url is not None:
            check_url_shape(url)
        return url


def check_url_shape(url: str) -> None:
    """Raise ValueError unless `url` is an absolute http(s) URL with a host and no
    credentials (they would be stored and shown with the job). Whether its address may be
    reached is the service's decision, made at submission and again at each delivery."""
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise ValueError("must not contain whitespace or control characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError("must name a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry credentials")
    if parts.fragment:
        raise ValueError("must not have a fragment")
    _ = parts.port  # raises ValueError for a port that is not a number in 0..65535
