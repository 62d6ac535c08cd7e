"""Sparsity training before pruning."""

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from contract import RegularizeSpec
from tests.engine.tiny_nets import TinyResNet, seeded
from worker.engine.errors import JobCancelled
from worker.engine.train.data import DatasetSplits
from worker.engine.train.regularize import regularize

torch.set_num_threads(1)

X = torch.randn(128, 3, 16, 16, generator=torch.Generator().manual_seed(0))
Y = torch.randint(0, 10, (128,), generator=torch.Generator().manual_seed(1))
LABELED = DatasetSplits(TensorDataset(X, Y), None, num_classes=10, labeled=True)
UNLABELED = DatasetSplits(TensorDataset(X), None, num_classes=None, labeled=False)


def _bn_scale(model: nn.Module) -> float:
    return float(
        sum(m.weight.detach().abs().sum() for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    )


def _conv_norm(model: nn.Module) -> float:
    return float(sum(m.weight.detach().norm() for m in model.modules() if isinstance(m, nn.Conv2d)))


def _run(model: nn.Module, spec: RegularizeSpec, splits: DatasetSplits, **kwargs) -> list[dict]:
    return regularize(model, X[:1], spec, splits, device="cpu", **kwargs)


def test_l1_bn_shrinks_batchnorm_scales_beyond_plain_training() -> None:
    plain, sparse = seeded(TinyResNet, width=8), seeded(TinyResNet, width=8)
    _run(plain, RegularizeSpec(kind="l1_bn", strength=1e-9, epochs=2), LABELED)
    stats = _run(sparse, RegularizeSpec(kind="l1_bn", strength=1.0, epochs=2), LABELED)
    assert _bn_scale(sparse) < 0.95 * _bn_scale(plain)
    assert [s["kind"] for s in stats] == ["l1_bn", "l1_bn"]


def test_group_l2_without_labels_shrinks_weights_and_spares_protected() -> None:
    plain, sparse = seeded(TinyResNet, width=8), seeded(TinyResNet, width=8)
    fc_before = sparse.fc.weight.detach().clone()
    _run(plain, RegularizeSpec(kind="group_l2", strength=1e-9, epochs=2), UNLABELED)
    stats = _run(
        sparse,
        RegularizeSpec(kind="group_l2", strength=0.5, epochs=2),
        UNLABELED,
        protected=[sparse.fc],
    )
    assert _conv_norm(sparse) < 0.95 * _conv_norm(plain)
    assert stats[-1]["kind"] == "group_l2" and stats[-1]["loss"] >= 0
    assert not torch.equal(sparse.fc.weight, fc_before)  # trained, just not penalised


def test_l1_bn_without_batchnorm_uses_group_l2() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)
    )
    stats = _run(model, RegularizeSpec(kind="l1_bn", epochs=1), LABELED, protected=[model[4]])
    assert stats[0]["kind"] == "group_l2"


def test_cancel_and_progress() -> None:
    model = seeded(TinyResNet, width=8)
    seen: list[float] = []
    with pytest.raises(JobCancelled):
        _run(
            copy.deepcopy(model),
            RegularizeSpec(epochs=2),
            LABELED,
            on_progress=seen.append,
            should_cancel=lambda: len(seen) >= 2,
        )
    assert seen == [0.25, 0.5]
