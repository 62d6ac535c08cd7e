"""Channel importance criteria: which filters to remove first.

Each method maps to a torch-pruning importance; the pruner ranks the channels of every
dependency group with it. `taylor` needs gradients: the pruner backpropagates a loss
before each step (see `to_target.py`).
"""

from collections.abc import Callable

import torch_pruning as tp
from torch import nn

from worker.engine.errors import PruningFailed


# What makes each channel criterion, by its name in the contract (`contract.spec.Method`,
# less `unstructured_l1`, which zeroes single weights instead of ranking channels). A test
# checks the two name lists agree.
def _bn_scale(module: nn.Module | None, notes: list[str] | None) -> tp.importance.Importance:
    if module is not None and not has_batchnorm(module):
        if notes is not None:
            notes.append(
                "bn_scale needs BatchNorm layers and the model has none (folded on "
                "export?): ranked channels by their L2 filter norm instead"
            )
        return tp.importance.MagnitudeImportance(p=2)
    return tp.importance.BNScaleImportance()


Factory = Callable[[nn.Module | None, list[str] | None], tp.importance.Importance]
CRITERIA: dict[str, Factory] = {
    "l1": lambda _m, _n: tp.importance.MagnitudeImportance(p=1),
    "l2": lambda _m, _n: tp.importance.MagnitudeImportance(p=2),
    "bn_scale": _bn_scale,
    "taylor": lambda _m, _n: tp.importance.TaylorImportance(),
    "fpgm": lambda _m, _n: tp.importance.FPGMImportance(),
    "lamp": lambda _m, _n: tp.importance.LAMPImportance(),
    "random": lambda _m, _n: tp.importance.RandomImportance(),
}
CHANNEL_METHODS = tuple(CRITERIA)


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
    factory = CRITERIA.get(method)
    if factory is None:
        raise PruningFailed(
            f"unknown channel importance {method!r}; expected one of {', '.join(CHANNEL_METHODS)}",
            code="unknown_method",
        )
    return factory(module, notes)
