"""The pruning job specification (the body of `POST /v1/jobs` minus the ids).

Every field has a default and every number a bound, so a partial body such as
`{"prune": {"target": {"macs_reduction": 0.6}}}` is a whole, valid request.
"""

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from contract.base import Frozen

Method = Literal["l1", "l2", "bn_scale", "taylor", "fpgm", "lamp", "random", "unstructured_l1"]
# sensitivity: per-layer ratios set by a sensitivity scan (see worker/engine/sensitivity.py).
Scope = Literal["global", "layerwise", "sensitivity"]
Fraction = Field(default=None, gt=0.0, lt=1.0)


class Target(Frozen):
    """Exactly one of the fields is set: how much to remove, as a fraction in (0, 1).

    `latency_reduction` is measured: onnxruntime latency at batch 1 on the worker's own
    execution provider (0.6 = 60% less time than the original).
    """

    macs_reduction: float | None = Fraction
    params_reduction: float | None = Fraction
    channel_ratio: float | None = Fraction
    latency_reduction: float | None = Fraction

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
    def kind(self) -> str:
        return next(k for k, v in self.model_dump().items() if v is not None)

    @property
    def value(self) -> float:
        return float(getattr(self, self.kind))


class PruneSpec(Frozen):
    method: Method = "l2"
    target: Target = Field(default_factory=lambda: Target(macs_reduction=0.5))
    scope: Scope = "global"
    iterative_steps: int = Field(default=5, ge=1, le=100)
    # None = choose hardware-friendly widths automatically (multiples of 8 or 16).
    round_to: int | None = Field(default=None, ge=1, le=512)
    ignored_layers: list[str] = Field(default_factory=list, max_length=10_000)
    max_layer_ratio: float = Field(default=0.9, gt=0.0, le=1.0)

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
    kind: Literal["l1_bn", "group_l2"] = "l1_bn"
    strength: float = Field(default=1e-4, gt=0.0, le=1.0)
    epochs: int = Field(default=3, ge=1, le=1000)


class FinetuneSpec(Frozen):
    epochs: int = Field(default=5, ge=0, le=1000)
    lr: float = Field(default=0.01, gt=0.0, le=10.0)
    batch_size: int = Field(default=64, ge=1, le=4096)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    distill: bool = True


class AccuracyBudget(Frozen):
    """Search for the strongest pruning, up to prune.target, whose measured drop fits."""

    max_drop: float = Field(default=0.01, ge=0.0, le=1.0)
    # Pruning strengths tried, each pruned on a copy and briefly fine-tuned.
    probes: int = Field(default=6, ge=2, le=20)


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
    dynamic_batch: bool = True


Provider = Literal["auto", "cpu", "cuda", "CPUExecutionProvider", "CUDAExecutionProvider"]


class BenchmarkSpec(Frozen):
    providers: list[Provider] = Field(
        default_factory=lambda: list[Provider](["auto"]), min_length=1, max_length=4
    )
    batch_sizes: list[int] = Field(default_factory=lambda: [1], min_length=1, max_length=8)
    warmup: int = Field(default=10, ge=0, le=1000)
    iterations: int = Field(default=50, ge=1, le=10_000)

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
            "auto: when INT8 loses more than accuracy_budget.max_drop (or one point without "
            "a budget) against the pruned float model, keep the most sensitive layers in "
            "float, fewest first, until it fits. none: quantize every layer it can."
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
    regularize: RegularizeSpec | None = None
    finetune: FinetuneSpec | None = Field(default_factory=FinetuneSpec)
    accuracy_budget: AccuracyBudget | None = None
    export: ExportSpec = Field(default_factory=ExportSpec)
    benchmark: BenchmarkSpec = Field(default_factory=BenchmarkSpec)
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
