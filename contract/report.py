"""The report of a finished job (`GET /v1/jobs/{id}/report`, `report.json`)."""

from typing import Literal

from pydantic import Field

from contract.base import Frozen

# Fewest timed runs from which a p99 is reported: below it the "p99" is the slowest run or
# two, whatever one stray pause of a shared machine made of them.
P99_MIN_SAMPLES = 200


class Percentiles(Frozen):
    p50: float
    p90: float
    p99: float | None = Field(
        default=None, description=f"null when fewer than {P99_MIN_SAMPLES} runs were timed"
    )
    samples: int | None = Field(default=None, description="timed runs the percentiles are of")


# provider name -> batch size (as a string, JSON keys) -> latency percentiles in ms
LatencyTable = dict[str, dict[str, Percentiles]]


class Summary(Frozen):
    params: int
    macs: int
    size_bytes: int
    accuracy: float | None = None
    latency_ms: LatencyTable = Field(default_factory=dict)


class Ratios(Frozen):
    """Original ÷ pruned (so 2.0 = half), latency_speedup from the first provider, batch 1."""

    macs: float
    params: float
    size: float
    latency_speedup: float | None = None


class Fidelity(Frozen):
    """Agreement of the pruned model with the original on sample inputs."""

    top1_agreement: float | None = None
    max_abs_diff: float
    cosine: float


class LayerChange(Frozen):
    name: str
    out_channels_before: int
    out_channels_after: int


class HistoryPoint(Frozen):
    step: int
    macs: int
    accuracy: float | None = None
    agreement: float | None = None
    params: int | None = None


class Environment(Frozen):
    torch: str
    onnxruntime: str
    device: str
    providers: list[str]
    torch_pruning: str | None = None
    onnx: str | None = None
    cpu: str | None = None
    threads: int | None = None


class Quantization(Frozen):
    """The INT8 step of a job that asked for it (`quantize.mode = "int8"`).

    Models are keyed `original`, `pruned_fp32` (model.fp32.onnx) and `int8` (model.onnx
    when `applied`). Accuracy is measured in onnxruntime on the held-back split (with
    labels); agreement is with the original model (top-1 for class scores, else the
    cosine of the outputs) on the held-back split, or on synthetic inputs without data.
    """

    mode: str
    applied: bool = Field(description="True when model.onnx is the INT8 model")
    calibration: str
    samples: int = Field(description="calibration samples used")
    calibration_data: str = Field(description="dataset (training split) or synthetic")
    per_channel: bool
    nodes_quantized: int = 0
    nodes_float: int = 0
    float_fallback: list[str] = Field(
        default_factory=list, description="nodes left in float because INT8 cost too much"
    )
    excluded: list[str] = Field(default_factory=list, description="nodes the job kept in float")
    measured_on: str = Field(description="what the drop is measured on")
    drop: float | None = Field(default=None, description="INT8's drop from the pruned float")
    tolerance: float
    size_bytes: dict[str, int] = Field(default_factory=dict)
    latency_ms: dict[str, LatencyTable] = Field(default_factory=dict)
    accuracy: dict[str, float] = Field(default_factory=dict)
    agreement: dict[str, float] = Field(default_factory=dict)
    reason: str | None = Field(default=None, description="why INT8 was not applied")


class ReportWarning(Frozen):
    """Something about the result a reader must not miss: it may not be what was asked.

    Codes: `accuracy_drop`, `low_agreement`, `data_free_disagrees`, `slower_than_original`,
    `latency_target_missed`, `too_little_heldout_data`; new codes may be added, so a
    client shows an unknown one by its message.
    """

    code: str = Field(description="stable identifier, e.g. slower_than_original")
    message: str = Field(description="one sentence: what was measured and what it means")
    severity: Literal["warning", "critical"] = Field(
        default="warning",
        description="critical: the model likely fails its purpose (slower than the original, "
        "disagreeing with it on most inputs)",
    )


class Report(Frozen):
    original: Summary
    pruned: Summary
    ratios: Ratios
    fidelity: Fidelity
    layers: list[LayerChange]
    history: list[HistoryPoint]
    environment: Environment
    # Extensions beyond the v1 contract's minimum; clients may ignore them.
    target: dict[str, float] = Field(default_factory=dict)
    verification: dict[str, float] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)
    warnings: list[ReportWarning] = Field(default_factory=list)
    timings_s: dict[str, float] = Field(default_factory=dict)
    # Absent unless the job asked for quantization; `pruned` is then the float model.
    quantization: Quantization | None = None
