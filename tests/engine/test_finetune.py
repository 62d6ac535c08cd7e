"""Recovery training: labels, distillation, determinism, folded BatchNorm, cancel."""

import copy

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset

from contract import FinetuneSpec, PruneSpec, Target
from tests.engine.tiny_nets import TinyResNet, TwoOutputNet, seeded
from worker.engine.errors import InvalidDataset, JobCancelled
from worker.engine.measure.evaluate import accuracy
from worker.engine.prune.to_target import prune_model
from worker.engine.train.data import DatasetSplits
from worker.engine.train.finetune import distance_to_teacher, finetune
from worker.engine.train.renorm import ConvNorm, fold_batchnorm, insert_batchnorm

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits() -> DatasetSplits:
    data = load_digits()
    x = (torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0 - 0.3) / 0.4
    y = torch.tensor(data.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    val, train = order[:360], order[360:]
    return DatasetSplits(
        train=TensorDataset(x[train], y[train]),
        val=TensorDataset(x[val], y[val]),
        num_classes=10,
        labeled=True,
    )


@pytest.fixture(scope="module")
def trained(digits: DatasetSplits) -> nn.Module:
    torch.manual_seed(0)
    model = TinyResNet(in_ch=1, width=8)
    spec = FinetuneSpec(epochs=4, lr=0.05, distill=False, batch_size=128)
    finetune(model, None, digits, spec)
    assert accuracy(model, digits.val) > 0.9
    return model


def _pruned(model: nn.Module) -> nn.Module:
    student = copy.deepcopy(model)
    spec = PruneSpec(target=Target(macs_reduction=0.75), iterative_steps=2)
    prune_model(student, torch.randn(1, 1, 8, 8), spec, protected=[student.fc])
    return student


def test_finetune_recovers_accuracy_after_aggressive_pruning(
    digits: DatasetSplits, trained: nn.Module
) -> None:
    student = _pruned(trained)
    before = accuracy(student, digits.val)
    progress: list[float] = []
    stats = finetune(
        student,
        trained,
        digits,
        FinetuneSpec(epochs=3, batch_size=128),
        on_progress=progress.append,
    )
    after = accuracy(student, digits.val)
    assert after > before + 0.3
    assert [s["epoch"] for s in stats] == [1, 2, 3]
    assert stats[-1]["val_accuracy"] == pytest.approx(after)
    assert stats[-1]["val_distance"] < stats[0]["val_distance"]
    assert progress == sorted(progress) and progress[-1] == pytest.approx(1.0)
    assert len(progress) == 3 * (len(digits.train) // 128)  # one call per batch
    assert not student.training


def test_finetune_is_deterministic_on_cpu(digits: DatasetSplits, trained: nn.Module) -> None:
    spec = FinetuneSpec(epochs=1, batch_size=128, optimizer="adamw", lr=0.003)
    runs = []
    for _ in range(2):
        student = _pruned(trained)
        finetune(student, trained, digits, spec)
        runs.append(torch.cat([p.detach().flatten() for p in student.parameters()]))
    assert torch.equal(runs[0], runs[1])


@torch.no_grad()
def _calibrated(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """BatchNorm running statistics measured on `x`, as a trained model would have them."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    model.train()(x)
    return model.eval()


def test_distillation_without_labels_on_two_outputs() -> None:
    x = torch.randn(96, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    teacher = _calibrated(seeded(TwoOutputNet), x)
    student = copy.deepcopy(teacher)
    spec = PruneSpec(target=Target(macs_reduction=0.6), iterative_steps=2)
    prune_model(student, x[:1], spec, protected=[student.cls, student.dense])
    splits = DatasetSplits(
        train=TensorDataset(x[:64]), val=TensorDataset(x[64:]), num_classes=None, labeled=False
    )
    before = distance_to_teacher(student, teacher, splits.val, device="cpu")
    stats = finetune(student, teacher, splits, FinetuneSpec(epochs=4, batch_size=16, lr=0.02))
    after = distance_to_teacher(student, teacher, splits.val, device="cpu")
    assert after < 0.7 * before
    assert stats[-1]["val_distance"] == pytest.approx(after)
    assert "val_accuracy" not in stats[-1]


def test_unlabeled_without_distillation_is_refused() -> None:
    model = seeded(TwoOutputNet)
    splits = DatasetSplits(
        train=TensorDataset(torch.randn(8, 3, 16, 16)), val=None, num_classes=None, labeled=False
    )
    with pytest.raises(InvalidDataset) as err:
        finetune(model, copy.deepcopy(model), splits, FinetuneSpec(distill=False))
    assert err.value.code == "labels_required"


def test_cancel_between_batches(digits: DatasetSplits, trained: nn.Module) -> None:
    calls: list[float] = []
    with pytest.raises(JobCancelled):
        finetune(
            copy.deepcopy(trained),
            trained,
            digits,
            FinetuneSpec(epochs=2, batch_size=128),
            on_progress=calls.append,
            should_cancel=lambda: len(calls) >= 2,
        )
    assert len(calls) == 2


def _folded(model: nn.Module) -> nn.Module:
    """A copy with every BatchNorm folded into the conv before it (as ONNX export does)."""
    model = copy.deepcopy(model).eval()
    traced = torch.fx.symbolic_trace(model)
    modules = dict(traced.named_modules())
    for node in list(traced.graph.nodes):
        target = modules.get(node.target) if node.op == "call_module" else None
        if isinstance(target, nn.BatchNorm2d) and node.args[0].op == "call_module":
            conv = modules[node.args[0].target]
            fused = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, target)
            parent, _, name = node.args[0].target.rpartition(".")
            setattr(traced.get_submodule(parent) if parent else traced, name, fused)
            node.replace_all_uses_with(node.args[0])
            traced.graph.erase_node(node)
    traced.recompile()
    traced.delete_all_unused_submodules()
    return traced


def test_temporary_batchnorm_preserves_the_function(digits: DatasetSplits) -> None:
    model = _folded(seeded(TinyResNet, in_ch=1, width=8))
    x = digits.val.tensors[0][:32]
    reference = model(x)
    names = insert_batchnorm(model, (x,))
    assert names and all(isinstance(model.get_submodule(n), ConvNorm) for n in names)
    assert torch.allclose(model.eval()(x), reference, atol=1e-4)
    fold_batchnorm(model, names)
    assert not any(isinstance(m, ConvNorm | nn.BatchNorm2d) for m in model.modules())
    assert torch.allclose(model(x), reference, atol=1e-4)


def test_folded_model_recovers_and_keeps_its_layout(
    digits: DatasetSplits, trained: nn.Module
) -> None:
    teacher = _folded(trained)
    student = _pruned(teacher)
    convs = [m for m in student.modules() if isinstance(m, nn.Conv2d)]
    before = accuracy(student, digits.val)
    finetune(student, teacher, digits, FinetuneSpec(epochs=4, batch_size=64))
    assert [m for m in student.modules() if isinstance(m, nn.Conv2d)] == convs  # same objects
    assert not any(isinstance(m, ConvNorm | nn.BatchNorm2d) for m in student.modules())
    assert accuracy(student, digits.val) > before + 0.3


def test_temporary_batchnorm_restores_the_original_channel_statistics(
    digits: DatasetSplits, trained: nn.Module
) -> None:
    teacher = _folded(trained)
    student = _pruned(teacher)
    x = digits.val.tensors[0][:64]
    names = insert_batchnorm(student, (x,), reference=teacher)
    name = "layer2.conv1"
    wrapped, original = student.get_submodule(name), teacher.get_submodule(name)
    assert wrapped.conv.out_channels < original.out_channels
    kept = [int((original.bias == b).nonzero()) for b in wrapped.conv.bias]
    outputs = {}
    wrapped.register_forward_hook(lambda _m, _i, out: outputs.update(student=out))
    original.register_forward_hook(lambda _m, _i, out: outputs.update(teacher=out))
    with torch.no_grad():
        student.eval()(x)
        teacher(x)
    means = {k: v.mean(dim=(0, 2, 3)) for k, v in outputs.items()}
    assert torch.allclose(means["student"], means["teacher"][kept], atol=1e-3)
    fold_batchnorm(student, names)


def test_with_a_teacher_the_loss_is_distillation_alone():
    # Labels do not pull the student away from the original once there is a teacher.
    from worker.engine.train.finetune import distillation_loss, task_loss

    student, teacher = torch.randn(8, 10), torch.randn(8, 10)
    wrong_labels = torch.zeros(8, dtype=torch.long)
    loss = task_loss(student, teacher, wrong_labels)
    assert torch.allclose(loss, distillation_loss(student, teacher))
    assert not torch.allclose(task_loss(student, None, wrong_labels), loss)
