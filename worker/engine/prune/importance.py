"""Channel importance criteria: which filters to remove first.

Each method maps to a torch-pruning importance; the pruner ranks the channels of every
dependency group with it. `taylor` needs gradients: the pruner backpropagates a loss
before each step (see `prune.py`).
"""

import torch_pruning as tp
from torch import nn

from worker.engine.errors import PruningFailed

CHANNEL_METHODS = ("l1", "l2", "bn_scale", "taylor", "fpgm", "lamp", "random")


def has_batchnorm(module: nn.Module) -> bool:
    """True when the model keeps affine BatchNorm layers (ONNX exports usually fold them)."""
    return any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine for m in module.modules()
    )


def make_importance(
    method: str, *, module: nn.Module | None = None, notes: list[str] | None = None
) -> tp.importance.Importance:
    """The torch-pruning importance for `method` (one of CHANNEL_METHODS).

    With `module` given, `bn_scale` on a model without BatchNorm falls back to `l2` and
    says so in `notes`.
    """
    if method == "l1":
        return tp.importance.MagnitudeImportance(p=1)
    if method == "l2":
        return tp.importance.MagnitudeImportance(p=2)
    if method == "bn_scale":
        if module is not None and not has_batchnorm(module):
            if notes is not None:
                notes.append(
                    "bn_scale needs BatchNorm layers and the model has none (folded on "
                    "export?): ranked channels by their L2 filter norm instead"
                )
            return tp.importance.MagnitudeImportance(p=2)
        return tp.importance.BNScaleImportance()
    if method == "taylor":
        return tp.importance.TaylorImportance()
    if method == "fpgm":
        return tp.importance.FPGMImportance()
    if method == "lamp":
        return tp.importance.LAMPImportance()
    if method == "random":
        return tp.importance.RandomImportance()
    raise PruningFailed(
        f"unknown channel importance {method!r}; expected one of {', '.join(CHANNEL_METHODS)}",
        code="unknown_method",
    )
