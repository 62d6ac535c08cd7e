"""An upload's input shapes: the `input_shape` a user gives (`contract.shapes` grammar),
and the concrete batch-1 shapes it makes of the model's declared ones."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from contract import TensorInfo
from contract.shapes import check_shape, parse_shapes
from worker.engine.errors import UnsupportedModel

InputShape = str | Sequence[int] | Sequence[Sequence[int]] | None

DEFAULT_ARCH_INPUT_SHAPE = (1, 3, 224, 224)
MAX_INPUT_ELEMENTS = 1 << 27  # 128 Mi floats (512 MiB) per input at batch 1


def parse_input_shape(value: InputShape) -> list[tuple[int, ...]] | None:
    """A string in the contract's grammar (`contract.shapes`: inputs separated by `;`), a
    list of ints, or a list of lists."""
    if value is None or value == "" or value == []:
        return None
    try:
        if isinstance(value, str):
            shapes = parse_shapes(value)
        elif all(isinstance(v, int | np.integer) for v in value):
            shapes = [check_shape(tuple(int(v) for v in value))]  # type: ignore[arg-type]
        else:
            shapes = [check_shape(tuple(int(v) for v in shape)) for shape in value]  # type: ignore[union-attr]
    except (TypeError, ValueError) as exc:  # ShapeError is a ValueError
        raise UnsupportedModel(
            f"input_shape {value!r} is not a list of integers such as 1,3,224,224 ({exc})",
            code="input_shape_mismatch",
        ) from exc
    for shape in shapes:
        if math.prod(shape[1:]) > MAX_INPUT_ELEMENTS:
            raise UnsupportedModel(f"input_shape {shape} is too large", code="too_large")
    return shapes


def resolve_input_shapes(
    inputs: Sequence[TensorInfo], given: list[tuple[int, ...]] | None
) -> list[tuple[int, ...]]:
    """Concrete batch-1 shapes: `given` fills dynamic dims and must agree with fixed ones."""
    if given is not None and len(given) > len(inputs):
        raise UnsupportedModel(
            f"input_shape gives {len(given)} shapes but the model has {len(inputs)} input(s)",
            code="input_shape_mismatch",
        )
    concrete = []
    for i, info in enumerate(inputs):
        declared = info.shape
        shape = given[i] if given is not None and i < len(given) else None
        if shape is not None and len(shape) != len(declared):
            raise UnsupportedModel(
                f"input {info.name!r} has {len(declared)} dimensions {format_shape(declared)}, "
                f"input_shape gives {len(shape)}: {list(shape)}",
                code="input_shape_mismatch",
            )
        dims: list[int] = []
        for j, dim in enumerate(declared):
            if isinstance(dim, int) and dim > 0:
                if shape is not None and shape[j] != dim:
                    raise UnsupportedModel(
                        f"input {info.name!r} is declared {format_shape(declared)}: "
                        f"dimension {j} is "
                        f"fixed at {dim}, input_shape says {shape[j]}",
                        code="input_shape_mismatch",
                    )
                dims.append(dim)
            elif j == 0:
                dims.append(1)  # the batch
            elif shape is not None:
                dims.append(shape[j])
            else:
                example = ",".join(
                    "1" if k == 0 else str(d) if isinstance(d, int) and d > 0 else "N"
                    for k, d in enumerate(declared)
                )
                raise UnsupportedModel(
                    f"input {info.name!r} is declared {format_shape(declared)}: dimension {j} is "
                    f"dynamic, so input_shape is required (e.g. {example})",
                    code="input_shape_required",
                )
        if math.prod(dims[1:]) > MAX_INPUT_ELEMENTS:
            raise UnsupportedModel(
                f"input {info.name!r} of shape {dims} is too large", code="too_large"
            )
        concrete.append(tuple(dims))
    return concrete


def format_shape(shape: Sequence[Any]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
