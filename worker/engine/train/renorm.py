"""Temporary BatchNorm for training models whose BatchNorm was folded away.

ONNX exports fold BatchNorm into the convolutions, so a model loaded from ONNX trains like
a deep network without normalisation: after heavy pruning it barely recovers in a few
epochs. `insert_batchnorm` puts a BatchNorm after every convolution; `fold_batchnorm`
merges the trained statistics back into the convolutions, leaving the original module
layout (and the same conv objects) for export.

Given the unpruned model as `reference`, each new norm maps its channel back to the
statistics the same channel had before pruning (what a BatchNorm kept through pruning
does in training mode), which is most of what a pruned network needs to recover. Kept
channels are found by their per-channel values, which pruning copies unchanged: a folded
conv's bias, and the per-channel constants (`ChannelConst`) that alone consume its output.
A converted graph that keeps its batch norm as a Mul and an Add after a bias-free conv
(tf2onnx) is matched by those constants.
"""

from collections.abc import Iterator, Sequence
from typing import cast

import torch
from torch import fx, nn

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


class ConvNorm(nn.Module):
    """A convolution followed by a BatchNorm: the training-time stand-in for the conv."""

    def __init__(self, conv: nn.modules.conv._ConvNd, norm: nn.modules.batchnorm._BatchNorm):
        super().__init__()
        self.conv = conv
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


def _parent(root: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, child = name.rpartition(".")
    return (root.get_submodule(path) if path else root), child


def _plain_convs(module: nn.Module) -> Iterator[tuple[str, nn.modules.conv._ConvNd]]:
    for name, m in module.named_modules():
        if type(m) in _CONVS and name:
            yield name, m  # type: ignore[misc]


@torch.no_grad()
def _output_stats(
    module: nn.Module, convs: Sequence[tuple[str, nn.Module]], inputs: tuple[torch.Tensor, ...]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-channel mean and variance of every conv's output on `inputs`."""
    stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(name: str):  # noqa: ANN202
        def record(_m: nn.Module, _inp: object, out: torch.Tensor) -> None:
            dims = [0, *range(2, out.dim())]
            stats[name] = out.mean(dim=dims), out.var(dim=dims, unbiased=False)

        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in convs]
    was_training = module.training
    module.eval()
    try:
        module(*inputs)
    finally:
        module.train(was_training)
        for handle in handles:
            handle.remove()
    return stats


def _channel_values(root: nn.Module, name: str, conv: nn.Module) -> torch.Tensor | None:
    """Per output channel of `conv`, the values pruning carries with it unchanged: its bias,
    then the weights of the chain of per-channel constants that alone consume its output
    (a converted batch norm's Mul and Add). Shape (channels, values); None without any."""
    columns = [] if conv.bias is None else [cast(torch.Tensor, conv.bias).detach().flatten()]
    channels = cast(torch.Tensor, conv.weight).shape[0]
    if isinstance(root, fx.GraphModule):
        node = next(
            (n for n in root.graph.nodes if n.op == "call_module" and n.target == name), None
        )
        while node is not None and len(node.users) == 1:
            (user,) = node.users
            if user.op != "call_module":
                break
            const = root.get_submodule(cast(str, user.target))
            weight = getattr(const, "weight", None)
            if type(const).__name__ != "ChannelConst" or not isinstance(weight, torch.Tensor):
                break
            if weight.numel() != channels:
                break
            columns.append(weight.detach().flatten())
            node = user
    return torch.stack(columns, dim=1) if columns else None


def _kept_channels(conv: nn.Module, original: nn.Module | None) -> torch.Tensor | None:
    """For each output channel of `conv`, its index in `original`, matched by bias value
    (a module on its own: see `_channel_values` for the constants that follow it)."""
    if original is None:
        return None
    return _matching_rows(_channel_values(conv, "", conv), _channel_values(original, "", original))


def _matching_rows(kept: torch.Tensor | None, full: torch.Tensor | None) -> torch.Tensor | None:
    """For each row of `kept` (a pruned conv's channel values), its row index in `full`
    (the unpruned conv's)."""
    if kept is None or full is None or kept.shape[1] != full.shape[1]:
        return None
    same = (kept[:, None, :] == full[None, :, :]).all(dim=2)
    if not bool((same.sum(dim=1) == 1).all()):
        return None  # missing or ambiguous (repeated values): no reliable match
    return same.float().argmax(dim=1)


def _target_stats(
    name: str,
    values: torch.Tensor | None,
    own: tuple[torch.Tensor, torch.Tensor],
    reference: dict[str, tuple[torch.Tensor | None, tuple[torch.Tensor, torch.Tensor]]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and variance each channel should have: the unpruned one's where known."""
    if name in reference:
        original, (mean, var) = reference[name]
        kept = _matching_rows(values, original)
        if kept is not None:
            return mean[kept], var[kept]
    return own


@torch.no_grad()
def _reference_stats(
    reference: nn.Module | None, names: list[str], inputs: tuple[torch.Tensor, ...]
) -> dict[str, tuple[torch.Tensor | None, tuple[torch.Tensor, torch.Tensor]]]:
    if reference is None:
        return {}
    convs = [(n, m) for n, m in _plain_convs(reference) if n in set(names)]
    stats = _output_stats(reference, convs, inputs)
    return {n: (_channel_values(reference, n, m), stats[n]) for n, m in convs if n in stats}


def insert_batchnorm(
    module: nn.Module, inputs: tuple[torch.Tensor, ...], reference: nn.Module | None = None
) -> list[str]:
    """Wrap every plain convolution in a `ConvNorm` calibrated on `inputs`; returns the names.

    Each norm's running statistics are its input's on `inputs`; its affine
    parameters restore the matching `reference` channel's statistics, or, without a
    match, the channel's own (so that the wrapped model computes what it did before).
    """
    convs = list(_plain_convs(module))
    stats = _output_stats(module, convs, inputs)
    reference_stats = _reference_stats(reference, [n for n, _ in convs], inputs)
    # Read before any conv is wrapped: the chain of constants starts at the bare conv.
    values = {name: _channel_values(module, name, conv) for name, conv in convs}
    for name, conv in convs:
        if name not in stats:
            continue  # not on the path from these inputs
        target_mean, target_var = _target_stats(name, values[name], stats[name], reference_stats)
        # The weight, not `out_channels`, says how many channels the conv has: the
        # attribute is bookkeeping that a pruning function may have left stale.
        channels = conv.weight.shape[0]
        norm = _NORMS[conv.weight.dim() - 2](channels, eps=1e-5).to(conv.weight.device)
        with torch.no_grad():
            norm.weight.copy_((target_var + norm.eps).sqrt())
            norm.bias.copy_(target_mean)
        parent, child = _parent(module, name)
        setattr(parent, child, ConvNorm(conv, norm))
    names = [name for name, _ in convs if name in stats]
    _measure_running_stats(module, names, inputs)
    return names


@torch.no_grad()
def _measure_running_stats(
    module: nn.Module, names: list[str], inputs: tuple[torch.Tensor, ...]
) -> None:
    """Running statistics as the new norms see them, each after the norms upstream of it."""
    norms = [cast(ConvNorm, module.get_submodule(name)).norm for name in names]
    was_training = module.training
    module.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a plain average over this one pass
        norm.train()
    try:
        module(*inputs)
    finally:
        for norm in norms:
            norm.momentum = 0.1
        module.train(was_training)


@torch.no_grad()
def fold_batchnorm(module: nn.Module, names: list[str]) -> None:
    """Merge each `ConvNorm`'s running statistics into its conv and put the conv back."""
    for name in names:
        parent, child = _parent(module, name)
        wrapped = getattr(parent, child)
        if not isinstance(wrapped, ConvNorm):
            continue
        conv, norm = wrapped.conv, wrapped.norm
        # A ConvNorm's norm always tracks running statistics (it is built that way).
        mean, var = cast(torch.Tensor, norm.running_mean), cast(torch.Tensor, norm.running_var)
        scale = norm.weight / (var + norm.eps).sqrt()
        bias = conv.bias if conv.bias is not None else torch.zeros_like(mean)
        shape = (-1,) + (1,) * (conv.weight.dim() - 1)
        conv.weight.mul_(scale.view(shape))
        new_bias = (bias - mean) * scale + norm.bias
        if conv.bias is None:
            conv.bias = nn.Parameter(new_bias.detach().clone())
        else:
            conv.bias.copy_(new_bias)
        setattr(parent, child, conv)
