"""The input-shape grammar, one for every process: the API's `input_shape` field, the
CLI's `--input-shape`, the inspector's arguments and the engine's loaders.

One input: integers separated by commas, `x` or spaces, brackets tolerated (`1,3,224,224`,
`1x3x224x224`, `[1, 3, 224, 224]`). Several inputs: shapes separated by `;`. Each shape
has 1 to 8 dimensions, each from 1 to 1,000,000.
"""

import re

MAX_DIMS = 8
MAX_DIM = 1_000_000
EXAMPLE = "1,3,224,224"


class ShapeError(ValueError):
    """A shape that does not follow the grammar; the message says how."""


def parse_shape(text: str) -> tuple[int, ...]:
    """One input's shape."""
    body = text.strip().strip("[]()")
    try:
        shape = tuple(int(part) for part in re.split(r"[,x\s]+", body) if part)
    except ValueError:
        raise ShapeError(
            f"{text.strip()!r} is not a shape: expected integers such as {EXAMPLE}"
        ) from None
    return check_shape(shape, text.strip())


def check_shape(shape: tuple[int, ...], given: object = None) -> tuple[int, ...]:
    """`shape` when it has 1 to MAX_DIMS dimensions, each from 1 to MAX_DIM, else a
    ShapeError quoting `given` (what the caller was given; the shape itself by default)."""
    if not 1 <= len(shape) <= MAX_DIMS or any(d < 1 or d > MAX_DIM for d in shape):
        shown = given if given is not None else list(shape)
        raise ShapeError(
            f"{shown!r}: expected 1 to {MAX_DIMS} dimensions, each from 1 to {MAX_DIM:,}"
        )
    return shape


def parse_shapes(text: str) -> list[tuple[int, ...]]:
    """Every input's shape, separated by `;` (one shape for a single input)."""
    shapes = [parse_shape(part) for part in text.split(";") if part.strip()]
    if not shapes:
        raise ShapeError(f"no shape given: expected integers such as {EXAMPLE}")
    return shapes
