"""A model's outputs as one flat sequence of tensors, in one order for every stage.

The order is the one `torch.onnx.export` lists the outputs in (tuples and lists in order,
dicts in insertion order), so "output 0" means the same tensor to the loader, the
preflight, the evaluation, the fine-tuning and the exported file.
"""

from collections.abc import Mapping
from typing import Any

import torch

from worker.engine.errors import UnsupportedModel


def flatten_outputs(out: Any, *, strict: bool = True) -> tuple[torch.Tensor, ...]:
    """`out`'s tensors (a tensor, nested tuples/lists, dict values), flattened.

    `strict` (loading, analysis): anything else is an `UnsupportedModel`. Not strict
    (training and evaluation, where a model in train mode may also return, say, `None`
    for an auxiliary head it does not compute): other values are left out.
    """
    if isinstance(out, torch.Tensor):
        return (out,)
    if isinstance(out, Mapping):
        out = list(out.values())
    if isinstance(out, list | tuple):
        return tuple(t for item in out for t in flatten_outputs(item, strict=strict))
    if not strict:
        return ()
    raise UnsupportedModel(
        f"the model returns {type(out).__name__}; only tensors (or tuples/dicts of tensors) "
        "are supported"
    )
