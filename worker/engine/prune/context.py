"""What every pruning strategy is given beside the model, its inputs and the spec: one
object instead of the same six options threaded through each signature."""

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from worker.engine.errors import JobCancelled
from worker.engine.prune.ranking_inputs import LossFn, seeded_samples
from worker.engine.types import CancelFn, StageProgressFn


@dataclass(frozen=True)
class PruneContext:
    """`notes` collects what the report should say; `loss_fn` gives gradients (`taylor`;
    a data-free proxy when None); `weights` are sensitivity weights already scanned (None:
    scan when the scope asks); `sample_inputs` are the inputs to measure on (seeded noise
    when None); `on_progress(fraction)` reports progress within the stage;
    `should_cancel()` is checked between steps."""

    notes: list[str] = field(default_factory=list)
    loss_fn: LossFn | None = None
    weights: dict[str, float] | None = None
    sample_inputs: Sequence[torch.Tensor] | None = None
    on_progress: StageProgressFn | None = None
    should_cancel: CancelFn | None = None

    def samples(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """The inputs to measure on: `sample_inputs`, else seeded noise shaped like `inputs`."""
        if self.sample_inputs is not None:
            return tuple(self.sample_inputs)
        return seeded_samples(inputs)

    def cancelled(self) -> bool:
        return self.should_cancel is not None and self.should_cancel()

    def check_cancel(self) -> None:
        """Raise JobCancelled when the job was cancelled."""
        if self.cancelled():
            raise JobCancelled()

    def report(self, fraction: float) -> None:
        if self.on_progress is not None:
            self.on_progress(fraction)

    def within(self, start: float, end: float) -> "PruneContext":
        """The same context, its progress mapped onto [start, end] of this one's."""
        return replace(self, on_progress=lambda f: self.report(start + (end - start) * f))
