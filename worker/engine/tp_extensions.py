"""torch-pruning's knowledge of the modules `onnx_converters` creates beyond `ChannelConst`
and `ChannelShuffle`: customized pruners, registered with `register`; and
`index_mapping_frozen`, for building many groups of a model that does not change.

- `ChannelConv1d` (ECA attention's convolution across channels) passes its channels
  through, like a BatchNorm, and has nothing to prune: its Conv1d's weights do not depend
  on the channel count.
- `ChannelRegroup` (a reshape that splits or merges the channel dim with other dims) is a
  stop: its input and output channels are pruned by different functions, so torch-pruning
  builds no dependency through it, and a group ends at its input. The layers before one
  are tried by `preflight` like any group: where the reshape's sizes are baked into the
  graph the trial fails and they are protected.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch_pruning as tp
from torch import nn
from torch_pruning.dependency import index_mapping

from worker.engine.onnx_converters import ChannelConv1d, ChannelRegroup


class ChannelConv1dPruner(tp.pruner.function.BasePruningFunc):
    """In == out channels; pruning only counts them."""

    TARGET_MODULES = (ChannelConv1d,)

    def prune_out_channels(self, layer: Any, idxs: Sequence[int]) -> nn.Module:
        layer.channels -= len(set(idxs))
        return layer

    prune_in_channels = prune_out_channels  # channels in == channels out, like BatchNorm

    def get_out_channels(self, layer: Any) -> int:
        return int(layer.channels)

    def get_in_channels(self, layer: Any) -> int:
        return int(layer.channels)


class ChannelRegroupPruner(tp.pruner.function.BasePruningFunc):
    """No dependency between input and output channels (two different functions), and no
    channel count for torch-pruning's shape inference to carry across."""

    TARGET_MODULES = (ChannelRegroup,)

    def prune_out_channels(self, layer: Any, idxs: Sequence[int]) -> nn.Module:
        return layer

    def prune_in_channels(self, layer: Any, idxs: Sequence[int]) -> nn.Module:
        return layer

    def get_out_channels(self, layer: Any) -> None:
        return None

    def get_in_channels(self, layer: Any) -> None:
        return None


def custom_pruners() -> dict[type, tp.pruner.function.BasePruningFunc]:
    return {ChannelConv1d: ChannelConv1dPruner(), ChannelRegroup: ChannelRegroupPruner()}


def register(pruners: dict) -> dict:
    """Add this module's pruners to `pruners` (preflight's CUSTOM_PRUNERS); returns it."""
    for layer_type, pruner in custom_pruners().items():
        pruners.setdefault(layer_type, pruner)
    return pruners


@contextmanager
def index_mapping_frozen(graph: tp.DependencyGraph) -> Iterator[None]:
    """torch-pruning recomputes the channel index mapping of every concat, split and
    reshape in the graph each time it builds a group. Where the model does not change
    (listing the groups, planning a step) it is computed once on entry: on a DenseNet
    (hundreds of groups behind long concat chains) the recomputing was 95% of the
    pruning time."""
    update = index_mapping.update_index_mapping
    update(graph)
    index_mapping.update_index_mapping = lambda _graph: None  # type: ignore[assignment]
    try:
        yield
    finally:
        index_mapping.update_index_mapping = update
