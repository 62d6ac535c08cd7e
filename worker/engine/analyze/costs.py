"""What a model costs as a function of its layers' widths: the allocator's budgets.

Each cost answers "what does this layer cost with `removed_out` output and `removed_in`
input channels gone", so the allocator can price any step without touching the model.
"""

from collections.abc import Iterable, Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from worker.engine.measure.latency import LayerLatencyTable, LayerShape, layer_shape
from worker.engine.measure.stats import MacProfile
from worker.engine.prune.allocate import LayerCost
from worker.engine.prune.planner import _params_after

_Layer = (nn.modules.conv._ConvNd, nn.Linear)


class MacCost(LayerCost):
    """Multiply-accumulates at batch 1, as the contract counts them."""

    def __init__(self, profile: MacProfile) -> None:
        self.profile = profile
        self.constant = float(profile.other)

    def layers(self) -> Iterable[nn.Module]:
        return self.profile.positions

    def __call__(self, layer: nn.Module, removed_out: float, removed_in: float) -> float:
        if layer not in self.profile.positions:
            return 0.0
        return float(self.profile._layer_macs(layer, removed_out, removed_in))  # type: ignore[arg-type]


class ParamCost(LayerCost):
    """Parameter count, norm layers and other per-channel parameters included."""

    def __init__(self, module: nn.Module) -> None:
        self._layers = [
            m for m in module.modules() if any(True for _ in m.parameters(recurse=False))
        ]
        owned = {id(p) for m in self._layers for p in m.parameters(recurse=False)}
        self.constant = float(sum(p.numel() for p in module.parameters() if id(p) not in owned))

    def layers(self) -> Iterable[nn.Module]:
        return self._layers

    def __call__(self, layer: nn.Module, removed_out: float, removed_in: float) -> float:
        return float(_params_after(layer, round(removed_out), round(removed_in)))


class ChannelCost(LayerCost):
    """Output channels of the conv and linear layers: what a channel ratio counts."""

    def __init__(self, module: nn.Module) -> None:
        self._layers = [m for m in module.modules() if isinstance(m, _Layer)]

    def layers(self) -> Iterable[nn.Module]:
        return self._layers

    def __call__(self, layer: nn.Module, removed_out: float, removed_in: float) -> float:
        width = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
        return max(0.0, float(cast(int, width)) - removed_out)


def input_shapes(module: nn.Module, inputs: Sequence[torch.Tensor]) -> dict[nn.Module, tuple]:
    """The input shape each conv and linear layer sees at batch 1 (first call kept)."""
    shapes: dict[nn.Module, tuple] = {}

    def record(layer: nn.Module, args: tuple, _out: Any) -> None:
        if args and isinstance(args[0], torch.Tensor):
            shapes.setdefault(layer, tuple(args[0].shape))

    handles = [m.register_forward_hook(record) for m in module.modules() if isinstance(m, _Layer)]
    try:
        with torch.no_grad():
            module(*(x[:1] for x in inputs))
    finally:
        for handle in handles:
            handle.remove()
    return shapes


class LatencyCost(LayerCost):
    """Milliseconds on the runtime, from a `LayerLatencyTable` of per-layer timings.

    Layers the table cannot time alone (transposed convs, string paddings) are priced
    by their MACs at the median milliseconds per MAC of the layers it did time.
    """

    def __init__(
        self, table: LayerLatencyTable, profile: MacProfile, shapes: dict[nn.Module, tuple]
    ) -> None:
        self.table = table
        self.macs = MacCost(profile)
        self.shapes: dict[nn.Module, LayerShape | None] = {
            layer: layer_shape(layer, shapes[layer]) if layer in shapes else None
            for layer in profile.positions
        }
        self._ms_per_mac = self._calibrate()

    def _calibrate(self) -> float:
        rates = []
        for layer, shape in self.shapes.items():
            macs = self.macs(layer, 0, 0)
            if shape is not None and macs > 0:
                rates.append(self.table.layer_ms(shape, shape.in_full, shape.out_full) / macs)
        return float(np.median(rates)) if rates else 0.0

    def layers(self) -> Iterable[nn.Module]:
        return self.shapes

    def __call__(self, layer: nn.Module, removed_out: float, removed_in: float) -> float:
        shape = self.shapes.get(layer)
        if shape is None:
            return self.macs(layer, removed_out, removed_in) * self._ms_per_mac
        return self.table.layer_ms(shape, shape.in_full - removed_in, shape.out_full - removed_out)


class WithoutLayers(LayerCost):
    """`cost` over the layers that remain once `gone` are removed with their blocks."""

    def __init__(self, cost: LayerCost, gone: Iterable[nn.Module]) -> None:
        self.cost = cost
        self.gone = set(gone)
        self.constant = cost.constant

    def layers(self) -> Iterable[nn.Module]:
        return [layer for layer in self.cost.layers() if layer not in self.gone]

    def __call__(self, layer: nn.Module, removed_out: float, removed_in: float) -> float:
        return self.cost(layer, removed_out, removed_in)
