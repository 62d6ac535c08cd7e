"""Running an upload once, and checking what it holds: its outputs on seeded inputs (a
failure is a typed refusal, its message kept free of the file's data) and its weights
(no NaN or infinite values)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from worker.engine.errors import EngineError, UnsupportedModel, describe_failure
from worker.engine.outputs import flatten_outputs


def run_upload(
    module: nn.Module, inputs: Sequence[torch.Tensor], what: str, code: str = "invalid_model"
) -> tuple[torch.Tensor, ...]:
    """The module's outputs on `inputs`; a failure is an UnsupportedModel with `code`."""
    try:
        with torch.no_grad():
            return flatten_outputs(module(*inputs))
    except EngineError:
        raise
    except Exception as exc:
        shapes = ", ".join(str(list(t.shape)) for t in inputs)
        raise UnsupportedModel(
            f"{what} does not run at input shape {shapes}: {short_error(exc)}", code=code
        ) from exc


def short_error(exc: BaseException, limit: int = 300) -> str:
    # Text raised while parsing or running an upload can quote what it read: no data out.
    return describe_failure(exc, limit)


def example_inputs(shapes: Sequence[tuple[int, ...]]) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    return tuple(torch.randn(shape, generator=gen) for shape in shapes)


def check_finite_tensors(named: Mapping[str, torch.Tensor] | Sequence[tuple[str, Any]]) -> None:
    items = named.items() if isinstance(named, Mapping) else named
    for name, tensor in items:
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
            if not bool(torch.isfinite(tensor).all()):
                raise UnsupportedModel(
                    f"weight {name!r} contains NaN or infinite values", code="non_finite_weights"
                )
