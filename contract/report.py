"""The report of a finished job (`GET /v1/jobs/{id}/report`, `report.json`)."""

from typing import Literal

from pydantic import Field

from contract.base import Frozen

# Fewest timed runs from which a p99 is reported: below it the "p99" is the slowest run or
# two, whatever one stray pause of a shared machine made of them.
P99_MIN_SAMPLES = 200


class Percentiles(Frozen):
    """Latency of one model on one provider at one batch size, in milliseconds per run
    (wall time of `InferenceSession.run`, after `benchmark.warmup` untimed runs)."""

    p50: float
    """Median latency, ms."""
    p90: float
    """90th percentile latency, ms."""
    p99: float | None = Field(
        default=None, description=f"null when fewer than {P99_MIN_SAMPLES} runs were timed"
    )
    samples: int | None = Field(default=None, description="timed runs the percentiles are of")


# provider name -> batch size (as a string, JSON keys) -> latency percentiles in ms
LatencyTable = dict[str, dict[str, Percentiles]]


class Summary(Frozen):
    """One side of the comparison: the original model or the pruned float one."""

    params: int
    """Number of parameters (weight and bias elements) of the torch model."""
    macs: int
    """Multiply-accumulates of one forward pass at batch 1, counted on the torch model."""
    size_bytes: int
    """Size of the exported ONNX file (original.onnx, or the pruned float model), bytes."""
    accuracy: float | None = None
    """Top-1 accuracy on the held-back split, a fraction 0-1 (0.91 = 91%); null without a
    labeled dataset."""
    latency_ms: LatencyTable = Field(default_factory=dict)
    """onnxruntime latency percentiles, ms: provider name -> batch size (a string key)
    -> percentiles. The original and pruned models are timed interleaved, same inputs."""


class Ratios(Frozen):
    """Original ÷ pruned (so 2.0 = half), latency_speedup from the first provider, batch 1."""

    macs: float
    """Original MACs ÷ pruned MACs (2.0 = half the compute)."""
    params: float
    """Original parameters ÷ pruned parameters."""
    size: float
    """Original ONNX file size ÷ pruned float ONNX file size."""
    latency_speedup: float | None = None
    """Original p50 ÷ pruned p50 at batch 1, on the CPU provider when timed, else the
    first provider timed; null when batch 1 was not timed."""


class Fidelity(Frozen):
    """Agreement of the pruned model with the original on sample inputs."""

    top1_agreement: float | None = None
    """Fraction (0-1) of inputs on which both models predict the same class (argmax of
    the first output); null when the first output is not (batch, classes) scores.
    Measured on up to 64 held-back samples, else on 16 seeded random inputs."""
    max_abs_diff: float
    """Largest absolute difference between any output value of the two models, in the
    outputs' own units, on the same inputs."""
    cosine: float
    """Cosine similarity (-1 to 1; 1 = same direction) of all outputs, flattened and
    concatenated, on the same inputs."""


class LayerChange(Frozen):
    """The width of one pruned layer before and after."""

    name: str
    """The layer's module name in the torch model (e.g. `layer1.0.conv1`)."""
    out_channels_before: int
    """Output channels (features for a linear layer) of the original."""
    out_channels_after: int
    """Output channels kept by pruning."""


class HistoryPoint(Frozen):
    """One pruning step, or one probe of an accuracy budget's search (then the last point
    is the chosen model). The last point carries the final model's accuracy and agreement."""

    step: int
    """1-based index of the step or probe."""
    macs: int
    """MACs (batch 1) of the model after this step."""
    accuracy: float | None = None
    """Held-back top-1 accuracy (fraction 0-1) after this step's short fine-tune (probes)
    or of the final model (last point); null where not measured or without labels."""
    agreement: float | None = None
    """Top-1 agreement with the original (fraction 0-1): after a pruning step, on 8 seeded
    random inputs before any fine-tuning; for a budget probe, after its short fine-tune;
    on the last point, of the final model. Null where not measured or where the output
    is not class scores."""
    params: int | None = None
    """Parameters after this step."""


class Environment(Frozen):
    """Where the figures were measured: compare latencies only between equal environments."""

    torch: str
    """PyTorch version."""
    onnxruntime: str
    """onnxruntime version used for the benchmark."""
    device: str
    """`cpu`, or `cuda:N <card name>`: the device the job ran on."""
    providers: list[str]
    """onnxruntime execution providers timed, in the order of `latency_ms`."""
    torch_pruning: str | None = None
    """torch-pruning version; null when not installed."""
    onnx: str | None = None
    """onnx package version; null when not installed."""
    cpu: str | None = None
    """CPU model name, where the platform tells it."""
    threads: int | None = None
    """onnxruntime intra-op threads (the cores the worker may use)."""


class Quantization(Frozen):
    """The INT8 step of a job that asked for it (`quantize.mode = "int8"`).

    Models are keyed `original`, `pruned_fp32` (model.fp32.onnx) and `int8` (model.onnx
    when `applied`). Accuracy is measured in onnxruntime on the held-back split (with
    labels); agreement is with the original model (top-1 for class scores, else the
    cosine of the outputs) on the held-back split, or on synthetic inputs without data.
    """

    mode: str
    """The job's `quantize.mode` (`int8`)."""
    applied: bool = Field(description="True when model.onnx is the INT8 model")
    calibration: str
    """Activation range calibration used: `minmax`, `entropy` or `percentile`."""
    samples: int = Field(description="calibration samples used")
    calibration_data: str = Field(description="dataset (training split) or synthetic")
    per_channel: bool
    """Whether weights got one scale per output channel (else one per tensor)."""
    nodes_quantized: int = 0
    """ONNX nodes that run in INT8 in model.onnx."""
    nodes_float: int = 0
    """Quantizable nodes left in float (fallback and `exclude` together)."""
    float_fallback: list[str] = Field(
        default_factory=list, description="nodes left in float because INT8 cost too much"
    )
    excluded: list[str] = Field(default_factory=list, description="nodes the job kept in float")
    measured_on: str = Field(description="what the drop is measured on")
    drop: float | None = Field(
        default=None,
        description="INT8's drop, a fraction 0-1 (0.01 = one point), from the reference "
        "`measured_on` names: the original model under an accuracy budget, else the "
        "pruned float model",
    )
    tolerance: float
    """Largest `drop` allowed, a fraction 0-1: `accuracy_budget.max_drop` (against the
    original model: one budget for pruning and quantization together), else 0.01
    (against the pruned float model)."""
    size_bytes: dict[str, int] = Field(default_factory=dict)
    """ONNX file size in bytes, by model (`original`, `pruned_fp32`, `int8`)."""
    latency_ms: dict[str, LatencyTable] = Field(default_factory=dict)
    """Latency percentiles in ms by model, each as `Summary.latency_ms`; timed interleaved."""
    accuracy: dict[str, float] = Field(default_factory=dict)
    """Held-back top-1 accuracy (fraction 0-1) by model, measured in onnxruntime; empty
    without labels."""
    agreement: dict[str, float] = Field(default_factory=dict)
    """Agreement with the original (fraction 0-1) by model: top-1 for class scores, else
    the cosine of the outputs."""
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
    """The model as uploaded (exported to original.onnx for size and latency)."""
    pruned: Summary
    """The pruned (and fine-tuned) float model; with INT8, model.fp32.onnx."""
    ratios: Ratios
    """Original ÷ pruned figures (2.0 = half)."""
    fidelity: Fidelity
    """How closely the pruned model's outputs follow the original's."""
    layers: list[LayerChange]
    """Every layer whose width changed."""
    history: list[HistoryPoint]
    """The pruning steps, or the accuracy budget's probes then the chosen model."""
    environment: Environment
    """Versions, device, providers and threads the figures were measured with."""
    # Extensions beyond the v1 contract's minimum; clients may ignore them.
    target: dict[str, float] = Field(default_factory=dict)
    """What was asked beside what was reached, as fractions removed (0-1): the target's
    own key (e.g. `macs_reduction`), `achieved_macs_reduction`,
    `achieved_params_reduction`, `achieved_latency_reduction`, `max_accuracy_drop` with a
    budget; latency targets add `latency_ms_original`, `latency_ms_target`,
    `latency_ms_measured` (ms) and `latency_reduction_measured`."""
    verification: dict[str, float] = Field(default_factory=dict)
    """Export checks, each run in onnxruntime (CPU) against the torch model on seeded
    inputs: `onnx_max_abs_diff`, the largest output difference of the pruned export;
    `original_export_max_abs_diff`, the same for the original checked before pruning;
    `onnx_relative_tolerance`, the limit they must stay under as a fraction of the
    largest output magnitude (at least 1): a larger difference fails the job."""
    notes: list[str] = Field(default_factory=list)
    """What a reader should know about how the result was reached, in words."""
    warnings: list[ReportWarning] = Field(default_factory=list)
    """Ways the result may fall short of what was asked; empty when none."""
    timings_s: dict[str, float] = Field(default_factory=dict)
    """Wall time of each stage the job ran, in seconds, keyed by stage (`loading`,
    `pruning`, `finetuning`, ...)."""
    quantization: Quantization | None = None
    """The INT8 step; absent unless the job asked for quantization (`pruned` is then the
    float model)."""
