"""Plain data passed between engine stages."""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from contract import TensorInfo

# (stage, overall progress 0..1) -> None. See contract.stages.overall_progress.
ProgressFn = Callable[[str, float], None]
# Progress within one stage, 0..1 (what a stage reports before the pipeline maps it).
StageProgressFn = Callable[[float], None]
# Called often (between batches); True means stop now (raise JobCancelled).
CancelFn = Callable[[], bool]


@dataclass
class LoadedModel:
    """A model ready for analysis: an nn.Module (eval, float32, CPU) plus its I/O contract."""

    module: nn.Module
    format: str  # onnx | pt2 | safetensors | state_dict
    inputs: list[TensorInfo]  # as declared by the original (dynamic dims kept as names/None)
    outputs: list[TensorInfo]
    input_shapes: list[tuple[int, ...]]  # concrete shapes, batch 1
    arch: str | None = None
    source_path: Path | None = None
    notes: list[str] = field(default_factory=list)
    # An ONNX upload's post-processing that `module` leaves out (`tail.split_tail`): its
    # graph, spliced after the pruned export, and the upload's own outputs, which it
    # makes from `outputs` (then the tensors it reads).
    tail: Any = None
    final_outputs: list[TensorInfo] | None = None

    def example_inputs(self, batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, ...]:
        """Seeded random inputs of the concrete shapes, with the given batch size.

        An input whose first dim is declared as a fixed size other than 1 has no batch
        dim (a recurrent state `[layers, 1, hidden]`): it keeps its shape."""
        gen = torch.Generator().manual_seed(seed)
        return tuple(
            torch.randn(shape if self._fixed_first_dim(j) else (batch, *shape[1:]), generator=gen)
            for j, shape in enumerate(self.input_shapes)
        )

    def _fixed_first_dim(self, j: int) -> bool:
        declared = self.inputs[j].shape if j < len(self.inputs) else []
        return bool(declared) and isinstance(declared[0], int) and declared[0] > 1


@dataclass
class Preflight:
    """What the preflight found before any pruning."""

    protected: list[nn.Module]  # layers whose output channels reach a graph output
    reference_outputs: tuple[torch.Tensor, ...]  # original outputs on example_inputs(seed=0)
    onnx_max_abs_diff: float  # unpruned export vs torch: how faithful the export path is
    notes: list[str] = field(default_factory=list)
