"""How good a pruned model is: held-back accuracy and agreement with the original."""

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from contract import Fidelity
from worker.engine.errors import EngineError
from worker.engine.outputs import flatten_outputs


def output_tensors(out: Any) -> tuple[torch.Tensor, ...]:
    """The tensors of a model's output, in the export's order (`outputs.flatten_outputs`),
    leaving out anything that is not a tensor."""
    return flatten_outputs(out, strict=False)


def same_outputs(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> bool:
    """Whether two lists of output tensors agree in number, shapes and values (float32
    rounding allowed): what a rewrite of a model's graph must keep."""
    return len(a) == len(b) and all(
        x.shape == y.shape and torch.allclose(x, y, rtol=1e-4, atol=1e-5)
        for x, y in zip(a, b, strict=True)
    )


def is_classification(output: torch.Tensor) -> bool:
    """A (batch, classes) output with several classes: treated as class scores."""
    return output.dim() == 2 and output.shape[1] > 1 and output.is_floating_point()


def _as_tuple(inputs: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)


@torch.no_grad()
def accuracy(
    module: nn.Module, dataset: TensorDataset, *, device: str = "cpu", batch_size: int = 256
) -> float:
    """Top-1 accuracy of the model's first output on a labeled (x, y) dataset."""
    if len(dataset.tensors) < 2:
        raise EngineError("accuracy needs a labeled dataset", code="labels_required")
    was_training = module.training
    module.eval()
    correct = total = 0
    try:
        for x, y in DataLoader(dataset, batch_size=batch_size):
            scores = output_tensors(module(x.to(device)))[0]
            if scores.dim() < 2 or scores.shape[0] != y.shape[0]:
                raise EngineError(
                    f"the first output {tuple(scores.shape)} is not per-sample class scores",
                    code="not_classification",
                )
            predicted = scores.argmax(dim=1).cpu()
            correct += int((predicted == y.view_as(predicted)).sum())
            total += int(y.numel())
    finally:
        module.train(was_training)
    return correct / max(total, 1)


@torch.no_grad()
def fidelity(
    original: nn.Module, pruned: nn.Module, inputs: torch.Tensor | Sequence[torch.Tensor]
) -> Fidelity:
    """Agreement of `pruned` with `original` on `inputs` (one batch, on the models' device).

    top-1 agreement is reported only for classification-like first outputs; the maximum
    absolute difference and the cosine similarity cover every output.
    """
    args = _as_tuple(inputs)
    states = original.training, pruned.training
    original.eval()
    pruned.eval()
    try:
        reference = output_tensors(original(*args))
        candidate = output_tensors(pruned(*args))
    finally:
        original.train(states[0])
        pruned.train(states[1])
    shapes = [tuple(t.shape) for t in reference], [tuple(t.shape) for t in candidate]
    if shapes[0] != shapes[1]:
        raise EngineError(
            f"the pruned model's output shapes {shapes[1]} differ from the original {shapes[0]}",
            code="output_shape_changed",
        )
    agreement = None
    if reference and is_classification(reference[0]):
        same = reference[0].argmax(dim=1) == candidate[0].argmax(dim=1)
        agreement = float(same.float().mean())
    ref = torch.cat([t.detach().float().flatten().cpu() for t in reference])
    cand = torch.cat([t.detach().float().flatten().cpu() for t in candidate])
    max_abs = float((ref - cand).abs().max()) if ref.numel() else 0.0
    cosine = float(torch.nn.functional.cosine_similarity(ref, cand, dim=0, eps=1e-12))
    return Fidelity(top1_agreement=agreement, max_abs_diff=max_abs, cosine=cosine)
