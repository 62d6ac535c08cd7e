"""Sparsity training before pruning, so that the channels pruning removes carry little.

`l1_bn` pushes BatchNorm scales towards zero (network slimming); `group_l2` applies a
group lasso over each torch-pruning dependency group (conv filters, their BatchNorm and
the next layer's input slices together). The task loss is cross-entropy with labels, or
distillation from a frozen copy of the model taken before training.
"""

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn
from torch.utils.data import DataLoader

from contract import FinetuneSpec, RegularizeSpec
from worker.engine.errors import JobCancelled
from worker.engine.prune.importance import has_batchnorm
from worker.engine.train.data import DatasetSplits
from worker.engine.train.finetune import make_optimizer, task_loss, uses_labels, warmup_cosine

LR = 0.01
BATCH_SIZE = 64
SEED = 0


def _regularizer(
    module: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    spec: RegularizeSpec,
    protected: Sequence[nn.Module],
) -> tuple[tp.pruner.BasePruner, str]:
    """The torch-pruning pruner whose `regularize(model)` adds the penalty's gradient."""
    ignored = list(protected)
    if spec.kind == "l1_bn" and has_batchnorm(module):
        pruner = tp.pruner.BNScalePruner(
            module,
            example_inputs,
            importance=tp.importance.BNScaleImportance(),
            reg=spec.strength,
            ignored_layers=ignored,
        )
        return pruner, "l1_bn"
    importance = tp.importance.GroupMagnitudeImportance(p=2, normalizer=None)
    pruner = tp.pruner.GroupNormPruner(
        module,
        example_inputs,
        importance=importance,
        reg=spec.strength,
        ignored_layers=ignored,
    )
    return pruner, "group_l2"


def regularize(
    module: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    spec: RegularizeSpec,
    splits: DatasetSplits,
    *,
    device: str = "cpu",
    on_progress: Callable[[float], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    protected: Sequence[nn.Module] = (),
) -> list[dict]:
    """Train `module` in place for `spec.epochs` with the sparsity penalty; per-epoch stats.

    `l1_bn` on a model without BatchNorm (folded on export) uses `group_l2` instead; each
    epoch's stats say which ran. `protected` layers are not penalised.
    """
    inputs = (
        (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    )
    module.to(device).eval()
    inputs = tuple(x.to(device) for x in inputs)
    pruner, kind = _regularizer(module, inputs, spec, protected)
    use_labels = uses_labels(splits, module, splits.train.tensors[0].to(device))
    run = _Run(
        module=module,
        pruner=pruner,
        teacher=None if use_labels else copy.deepcopy(module).eval(),
        use_labels=use_labels,
        device=device,
        cancel=should_cancel or (lambda: False),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        loader = DataLoader(
            splits.train,
            batch_size=BATCH_SIZE,
            shuffle=True,
            generator=torch.Generator().manual_seed(SEED),
            drop_last=len(splits.train) > BATCH_SIZE,
        )
        total = spec.epochs * len(loader)
        run.optimizer = make_optimizer(module, FinetuneSpec(lr=LR))
        run.schedule = torch.optim.lr_scheduler.LambdaLR(run.optimizer, warmup_cosine(total))
        history = []
        for epoch in range(spec.epochs):
            offset = epoch * len(loader)

            def tick(done: int, offset: int = offset) -> None:
                if on_progress is not None:
                    on_progress((offset + done) / total)

            loss = run.epoch(loader, tick)
            history.append({"epoch": epoch + 1, "kind": kind, "loss": loss})
    module.eval()
    return history


@dataclass
class _Run:
    """One sparsity-training run: the model, its penalty and its optimiser."""

    module: nn.Module
    pruner: tp.pruner.BasePruner
    teacher: nn.Module | None
    use_labels: bool
    device: str
    cancel: Callable[[], bool]
    optimizer: torch.optim.Optimizer | None = None
    schedule: torch.optim.lr_scheduler.LRScheduler | None = None

    def epoch(self, loader: DataLoader, progress: Callable[[int], object]) -> float:
        """Train one epoch; returns the mean task loss."""
        assert self.optimizer is not None and self.schedule is not None
        self.module.train()
        loss_sum, seen = 0.0, 0
        for done, batch in enumerate(loader, start=1):
            if self.cancel():
                raise JobCancelled()
            x = batch[0].to(self.device)
            y = batch[1].to(self.device) if self.use_labels else None
            target = None
            if self.teacher is not None:
                with torch.no_grad():
                    target = self.teacher(x)
            loss = task_loss(self.module(x), target, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.pruner.regularize(self.module)  # adds the penalty's gradient
            self.optimizer.step()
            self.schedule.step()
            loss_sum += float(loss.detach()) * len(x)
            seen += len(x)
            progress(done)
        return loss_sum / max(seen, 1)
