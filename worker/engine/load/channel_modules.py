"""The modules the FX rewrites (`fx_rewrites.py`) put into a graph so that torch-pruning
can follow its channels: per-channel constants, channel shuffles, convolutions across
channels and ops that regroup channels. torch-pruning learns to prune them (or to stop at
them) in `analyze/tp_extensions.py` and `analyze/preflight.py`. Plain torch: importing
this module loads neither onnx nor onnx2torch.
"""

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

_BINARY_OPS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "add": torch.add,
    "sub": torch.sub,
    "mul": torch.mul,
    "div": torch.div,
}


class ChannelConst(nn.Module):
    """`x <op> c` (or `c <op> x`) for a constant `c` with one channel dimension `dim`.

    `c` is a parameter (it is usually a folded BatchNorm's scale or shift), and
    `preflight.ChannelConstPruner` removes its entries together with the channels of `x`.
    """

    def __init__(self, op: str, const: torch.Tensor, dim: int, const_first: bool = False) -> None:
        super().__init__()
        self.op = op
        self.weight = nn.Parameter(const.detach().float().clone())
        self.dim = dim
        self.const_first = const_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fn = _BINARY_OPS[self.op]
        return fn(self.weight, x) if self.const_first else fn(x, self.weight)

    def extra_repr(self) -> str:
        return f"op={self.op}, shape={tuple(self.weight.shape)}, dim={self.dim}"


class ChannelShuffle(nn.Module):
    """ShuffleNet's channel shuffle, (N, C, ...) -> view (N, g, C/g, ...) -> swap -> (N, C, ...).

    One module instead of reshape -> transpose -> reshape: torch-pruning follows a channel
    through the first reshape into *both* new dims and back, and on a network of chained
    shuffles the index sets it follows multiply with every unit (a ShuffleNetV2's group
    discovery ran for a quarter of an hour). A permutation of channels is not something
    its index mappings express, so `preflight` protects the groups that reach a shuffle.
    """

    def __init__(self, groups: int, channels: int) -> None:
        super().__init__()
        self.groups, self.channels = groups, channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[0], x.shape[1]
        rest = x.shape[2:]
        return x.reshape(n, self.groups, c // self.groups, *rest).transpose(1, 2).reshape(x.shape)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


class ChannelConv1d(nn.Module):
    """ECA attention's convolution over the channels of a pooled (N, C, 1, ...) vector:
    reshape to (N, 1, C), a same-length Conv1d, and back to the input's shape.

    One module instead of reshape -> Conv1d -> reshape: torch-pruning reads the first
    reshape as folding C channels into the Conv1d's single one and the second as unfolding
    them again, so the index set of every channel it follows through an ECA block grows C
    times over (ecaresnet26t's group discovery did not finish in minutes), and the sizes
    baked into the reshapes break once channels go. As one module it passes its channels
    through (`tp_extensions.ChannelConv1dPruner`): the Conv1d's weights do not depend on C,
    so the block keeps working on whatever channels remain."""

    def __init__(self, conv: nn.Conv1d, channels: int) -> None:
        super().__init__()
        self.conv = conv
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.reshape(x.shape[0], 1, -1)).reshape(x.shape)

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


class ChannelRegroup(nn.Module):
    """An op that moves channels between dims: a reshape that splits or merges the
    channel dim of a rank-4 tensor with other dims (a YOLOv5 head's (N, 3*85, H, W) ->
    (N, 3, 85, H, W), attention heads), or a MatMul of two computed tensors (attention).

    torch-pruning maps every rank-4 reshape as a flatten by a stride, which such a
    reshape is not, and follows a channel through a MatMul's inner expand/reshape/bmm the
    same way: the index sets it follows multiply by the stride at each reshape (in
    attention blocks and detection decoders, millions of indices; the group discovery did
    not finish in minutes). `tp_extensions.ChannelRegroupPruner` stops torch-pruning at
    the op instead: the layers before it are tried like any other group by `preflight`
    (where the op's sizes are baked into the graph the trial fails, and they are
    protected)."""

    def __init__(self, inner: nn.Module | None = None) -> None:
        super().__init__()
        self.inner = inner  # the onnx2torch module (OnnxReshape, OnnxMatMul), else None

    def forward(self, x: torch.Tensor, other: Any) -> torch.Tensor:
        if _TRACING.active:
            return _OneNode.apply(self._compute, x, other)
        return self._compute(x, other)

    def _compute(self, x: torch.Tensor, other: Any) -> torch.Tensor:
        if self.inner is not None:
            return self.inner(x, other)
        return torch.reshape(x, other)


class _Tracing(threading.local):
    active = False


_TRACING = _Tracing()


@contextmanager
def regroups_as_one_node() -> Iterator[None]:
    """While torch-pruning traces a model, a `ChannelRegroup` is one autograd node whose
    inputs are the op's inputs. Run as it is, a MatMul's output hangs off the ops torch
    computes it with (view, expand, bmm, view): torch-pruning traced those as ops of their
    own, reshapes whose index mappings multiplied the channels it followed, and a
    global-context block (attention pooling by MatMul, gcresnet33ts) kept the analysis
    running past its budget. Only tracing: nothing backpropagates through this node."""
    previous = _TRACING.active
    _TRACING.active = True
    try:
        yield
    finally:
        _TRACING.active = previous


class _OneNode(torch.autograd.Function):
    """`fn(x, other)` as one node of the autograd graph, for tracing only."""

    @staticmethod
    def forward(ctx: Any, fn: Callable[..., torch.Tensor], x: torch.Tensor, other: Any) -> Any:
        return fn(x, other)

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> Any:
        raise RuntimeError("a ChannelRegroup traced as one node is not trained through")
