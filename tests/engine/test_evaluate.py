"""Held-back accuracy and agreement with the original model."""

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from tests.engine.tiny_nets import TwoOutputNet, seeded
from worker.engine.errors import EngineError
from worker.engine.measure.evaluate import accuracy, fidelity, output_tensors

torch.set_num_threads(1)


def _picker() -> nn.Linear:
    """Class = index of the largest input feature."""
    layer = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(3))
    return layer


def test_accuracy_counts_top1_hits_across_batches() -> None:
    x = torch.eye(3).repeat(4, 1)  # 12 samples, classes 0,1,2,0,1,2,...
    y = torch.tensor([0, 1, 2] * 4)
    y[[0, 8]] = 1  # samples 0 (class 0) and 8 (class 2) now carry a wrong label
    assert accuracy(_picker(), TensorDataset(x, y), batch_size=5) == pytest.approx(10 / 12)


def test_accuracy_needs_labels() -> None:
    with pytest.raises(EngineError) as err:
        accuracy(_picker(), TensorDataset(torch.eye(3)))
    assert err.value.code == "labels_required"


def test_fidelity_of_a_model_with_itself() -> None:
    model = seeded(TwoOutputNet)
    result = fidelity(model, copy.deepcopy(model), torch.randn(8, 3, 16, 16))
    assert result.top1_agreement == 1.0
    assert result.max_abs_diff == 0.0
    assert result.cosine == pytest.approx(1.0)


def test_fidelity_numbers_for_a_known_change() -> None:
    original = _picker()
    changed = copy.deepcopy(original)
    with torch.no_grad():
        changed.weight[0, 0] = 0.0  # class 0 never scores above zero now
    x = torch.tensor([[2.0, 1.0, -1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [3.0, 1.0, 0.0]])
    result = fidelity(original, changed, x)
    assert result.top1_agreement == pytest.approx(0.5)  # samples 0 and 3 flip
    assert result.max_abs_diff == pytest.approx(3.0)
    with torch.no_grad():
        ref, new = original(x).flatten(), changed(x).flatten()
    assert result.cosine == pytest.approx(float(torch.cosine_similarity(ref, new, dim=0)))


def test_fidelity_without_class_scores_has_no_agreement() -> None:
    conv = nn.Conv2d(3, 2, 1)
    result = fidelity(conv, copy.deepcopy(conv), (torch.randn(2, 3, 4, 4),))
    assert result.top1_agreement is None and result.max_abs_diff == 0.0


def test_fidelity_refuses_changed_output_shapes() -> None:
    with pytest.raises(EngineError) as err:
        fidelity(nn.Linear(4, 3), nn.Linear(4, 2), torch.randn(2, 4))
    assert err.value.code == "output_shape_changed"


def test_output_tensors_flattens_nested_outputs_in_the_exports_order() -> None:
    a, b, c = torch.zeros(1), torch.ones(1), torch.full((1,), 2.0)
    # Dicts in insertion order, as torch.onnx.export lists their values.
    assert [float(t) for t in output_tensors({"z": c, "a": (a, [b], None)})] == [2.0, 0.0, 1.0]


def test_the_loader_and_the_evaluation_flatten_outputs_alike() -> None:
    from worker.engine.outputs import flatten_outputs

    out = {"out": torch.zeros(1), "aux": (torch.ones(1), [torch.full((1,), 2.0)])}
    assert [float(t) for t in flatten_outputs(out)] == [float(t) for t in output_tensors(out)]
    with pytest.raises(EngineError):
        flatten_outputs((torch.zeros(1), None))
