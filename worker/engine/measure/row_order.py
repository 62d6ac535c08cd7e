"""Outputs that may list the same rows in another order.

A graph that selects rows by score (TopK, NonMaxSuppression: a detector's top-k
post-process) orders near-tied rows by values that differ in the last bits between
runtimes, so torch and onnxruntime can list the same detections in another order, or
swap two near-equal ones at the cut. Compared element by element such outputs differ
by a whole box; compared row by row, nearest to nearest, they agree, except for the
rows swapped at the cut. With random weights scores crowd together: a pruned YOLOv10-style
head's top 100 swapped 11 with the runners-up. A conversion or export fault moves most
rows, not a fifth of them."""

from __future__ import annotations

from typing import Any

import torch

# Ops whose output order depends on comparing values.
ORDERING_OPS = frozenset({"TopK", "NonMaxSuppression"})
# Row-to-row distances are a rows x rows matrix (128 MiB at this many): no more.
MAX_ROWS = 4096
# The share of rows that may have no counterpart (swapped at the selection's cut).
SPARE_ROWS = 0.2


def selects_rows(graph: Any) -> bool:
    """Whether an ONNX graph (or a subgraph of one of its nodes) holds an ordering op."""
    for node in graph.node:
        if node.op_type in ORDERING_OPS:
            return True
        for attr in node.attribute:
            subgraphs = [attr.g] if attr.HasField("g") else list(attr.graphs)
            if any(selects_rows(g) for g in subgraphs):
                return True
    return False


def unordered_difference(ours: torch.Tensor, theirs: torch.Tensor) -> float | None:
    """The smallest, over the non-batch axes, of the largest distance from a row of
    either tensor to the nearest row of the other (rows taken along that axis; a
    symmetric Hausdorff distance), leaving out the SPARE_ROWS farthest rows of each
    side; None where it cannot be measured."""
    if ours.shape != theirs.shape or ours.dim() < 2 or ours.numel() == 0:
        return None
    best: float | None = None
    for axis in range(1, ours.dim()):
        rows = ours.shape[axis]
        if rows < 2 or rows > MAX_ROWS:
            continue
        # (batch, rows, rows): the largest difference between two rows' features.
        dist = torch.cdist(_rows(ours, axis), _rows(theirs, axis), p=float("inf"))
        spare = int(SPARE_ROWS * rows)
        value = max(_kept_max(dist.amin(2), spare), _kept_max(dist.amin(1), spare))
        best = value if best is None else min(best, value)
    return best


def reordered_difference(diff: float, ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """An output's element-wise difference `diff`, or its row-by-row one where smaller."""
    unordered = unordered_difference(ours, theirs)
    return diff if unordered is None else min(diff, unordered)


def _rows(t: torch.Tensor, axis: int) -> torch.Tensor:
    """(batch, rows along `axis`, everything else), in float64."""
    moved = t.detach().double().movedim(axis, 1)
    return moved.reshape(moved.shape[0], moved.shape[1], -1)


def _kept_max(nearest: torch.Tensor, spare: int) -> float:
    """The largest of each batch's nearest-row distances once its `spare` largest are
    left out."""
    ordered = nearest.sort(dim=1, descending=True).values
    return float(ordered[:, spare].max().item())
