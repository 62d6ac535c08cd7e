"""What ranking channels needs beyond the weights, for every pruning strategy: a loss to
take gradients of (`taylor` importance, sensitivity weights) and seeded inputs to measure
on when the job has no data."""

from collections.abc import Callable, Sequence

import torch
from torch import nn

from worker.engine.measure.evaluate import output_tensors
from worker.engine.measure.stats import carries_batch

# A loss of the model as it is now, to backpropagate before ranking by gradients.
LossFn = Callable[[nn.Module], torch.Tensor]


def seeded_samples(inputs: Sequence[torch.Tensor], batch: int = 8) -> tuple[torch.Tensor, ...]:
    """Seeded standard-normal inputs shaped like `inputs`, for data-free measurements."""
    gen = torch.Generator().manual_seed(0)
    shapes = [
        (batch, *x.shape[1:]) if b else x.shape
        for x, b in zip(inputs, carries_batch(inputs), strict=True)
    ]
    return tuple(
        torch.randn(shape, generator=gen, dtype=x.dtype).to(x.device)
        for x, shape in zip(inputs, shapes, strict=True)
    )


def taylor_proxy(module: nn.Module, inputs: Sequence[torch.Tensor]) -> LossFn:
    """Data-free Taylor loss: alignment with the original outputs on seeded random inputs.

    Its gradient is the sensitivity of the outputs along their original direction, so a
    channel's |weight x gradient| estimates how much removing it changes what the model says.
    """
    samples = seeded_samples(inputs, 8)
    with torch.no_grad():
        reference = [t.detach() for t in output_tensors(module(*samples))]

    def loss(m: nn.Module) -> torch.Tensor:
        outs = output_tensors(m(*samples))
        return sum((o * r).mean() for o, r in zip(outs, reference, strict=True))  # type: ignore[return-value]

    return loss


def backprop(module: nn.Module, loss_fn: LossFn) -> None:
    """Fresh gradients of `loss_fn` on `module`'s parameters."""
    module.zero_grad(set_to_none=True)
    with torch.enable_grad():
        loss_fn(module).backward()
