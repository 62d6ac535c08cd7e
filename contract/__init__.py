"""The job contract shared by the API and the engine: pydantic models only, no torch.

`app` validates requests with these models and `worker.engine` consumes them, so the
OpenAPI schema the API publishes is exactly what the engine understands.
"""

from contract.model_info import DatasetInfo, ModelInfo, ModelStats, TensorInfo
from contract.report import (
    Environment,
    Fidelity,
    HistoryPoint,
    LayerChange,
    Percentiles,
    Quantization,
    Ratios,
    Report,
    Summary,
)
from contract.spec import (
    AccuracyBudget,
    BenchmarkSpec,
    ExportSpec,
    FinetuneSpec,
    JobSpec,
    PruneSpec,
    QuantizeSpec,
    RegularizeSpec,
    Target,
    TargetKind,
)
from contract.stages import JOB_STATUSES, STAGES, TERMINAL_STATUSES, JobStatus, Stage

__all__ = [
    "JOB_STATUSES",
    "TERMINAL_STATUSES",
    "JobStatus",
    "AccuracyBudget",
    "BenchmarkSpec",
    "DatasetInfo",
    "Environment",
    "ExportSpec",
    "Fidelity",
    "FinetuneSpec",
    "HistoryPoint",
    "JobSpec",
    "LayerChange",
    "ModelInfo",
    "ModelStats",
    "Percentiles",
    "PruneSpec",
    "Quantization",
    "QuantizeSpec",
    "Ratios",
    "RegularizeSpec",
    "Report",
    "STAGES",
    "Stage",
    "Summary",
    "Target",
    "TargetKind",
    "TensorInfo",
]
