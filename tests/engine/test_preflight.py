"""Preflight: the layers it protects, and that it leaves the model as it found it."""

import torch
import torch_pruning as tp
from torch import nn

from contract import TensorInfo
from tests.engine import models
from worker.engine.analyze.preflight import PRUNER_KWARGS, find_protected, run_preflight
from worker.engine.load.channel_modules import ChannelConst
from worker.engine.load.loaders import load_model
from worker.engine.types import LoadedModel


def _loaded(module: nn.Module, shape: tuple[int, ...], outputs: int = 1) -> LoadedModel:
    names = ["output"] if outputs == 1 else [f"output_{i}" for i in range(outputs)]
    return LoadedModel(
        module=module.eval(),
        format="pt2",
        inputs=[TensorInfo(name="input", shape=["batch", *shape[1:]])],
        outputs=[TensorInfo(name=n, shape=[]) for n in names],
        input_shapes=[shape],
    )


def _names(loaded: LoadedModel, protected: list[nn.Module]) -> set[str]:
    by_id = {id(m): name for name, m in loaded.module.named_modules()}
    return {by_id[id(m)] for m in protected}


def test_protects_the_classifier_and_a_reshape_baked_layer():
    torch.manual_seed(0)
    loaded = _loaded(models.ReshapeBakedNet(), (1, 3, 16, 16))
    pre = run_preflight(loaded)
    assert _names(loaded, pre.protected) == {"fc", "conv1"}
    assert pre.onnx_max_abs_diff < 1e-4
    assert any("reach an output: fc" in n for n in pre.notes)
    assert any("baked into the graph: conv1" in n for n in pre.notes)


def test_the_same_through_onnx(tmp_path):
    torch.manual_seed(0)
    path = models.to_onnx(models.ReshapeBakedNet(), tmp_path / "baked.onnx", (1, 3, 16, 16))
    loaded = load_model(path)
    assert _names(loaded, run_preflight(loaded).protected) == {"fc/Gemm", "conv1/Conv"}


def test_a_resnet_keeps_only_its_head(tiny_resnet_onnx):
    loaded = load_model(tiny_resnet_onnx)
    pre = run_preflight(loaded)
    assert _names(loaded, pre.protected) == {"fc/Gemm"}
    assert len(pre.reference_outputs) == 1 and pre.reference_outputs[0].shape == (1, 10)


def test_every_head_of_a_two_output_model_is_protected(two_output_onnx):
    loaded = load_model(two_output_onnx)
    assert _names(loaded, run_preflight(loaded).protected) == {"cls/Gemm", "dense/Conv"}


def test_preflight_leaves_the_model_untouched(res_concat_onnx):
    loaded = load_model(res_concat_onnx)
    before = {k: v.clone() for k, v in loaded.module.state_dict().items()}
    x = loaded.example_inputs(batch=2)
    with torch.no_grad():
        out_before = loaded.module(*x)
    run_preflight(loaded)
    after = loaded.module.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(*x), out_before, rtol=0, atol=0)


def test_trials_run_at_a_reduced_size_when_the_model_allows():
    torch.manual_seed(0)
    loaded = _loaded(models.TinyResNet(), (1, 3, 96, 96))
    protected, notes = find_protected(loaded.module, loaded)
    assert _names(loaded, protected) == {"fc"}
    assert any("[[1, 3, 32, 32]]" in n for n in notes)


def test_pruning_after_preflight_keeps_the_outputs(tf_style_onnx):
    """tf2onnx's per-channel BatchNorm constants are pruned with their convolutions."""
    loaded = load_model(tf_style_onnx)
    pre = run_preflight(loaded)
    module = loaded.module
    x = loaded.example_inputs(batch=2)
    shapes = [o.shape for o in pre.reference_outputs]
    pruner = tp.pruner.MetaPruner(
        module,
        loaded.example_inputs(),
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=0.5,
        ignored_layers=pre.protected,
        **PRUNER_KWARGS,
    )
    pruner.step()
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 8]
    consts = [m for m in module.modules() if isinstance(m, ChannelConst)]
    assert sorted(c.weight.shape[c.dim] for c in consts) == [4, 4, 8, 8]
    with torch.no_grad():
        out = module(*x)
    assert [out.shape[1:]] == [s[1:] for s in shapes]


def test_a_yolo_style_channel_split_becomes_prunable(tmp_path):
    torch.manual_seed(0)
    net = models.seeded(models.C2fNet)
    path = models.to_onnx(net, tmp_path / "c2f.onnx", (1, 3, 32, 32))
    loaded = load_model(path)
    modules = dict(loaded.module.named_modules())
    # the split conv became one conv per half, so each half is an ordinary group
    halves = sorted(n for n in modules if n.startswith("cv1/cv1/0/Conv__part"))
    assert [modules[n].out_channels for n in halves] == [16, 16]
    pre = run_preflight(loaded)
    assert _names(loaded, pre.protected) == {"fc/Gemm"}
    x = loaded.example_inputs(batch=2)
    pruner = tp.pruner.MetaPruner(
        loaded.module,
        loaded.example_inputs(),
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=0.5,
        ignored_layers=pre.protected,
        **PRUNER_KWARGS,
    )
    pruner.step()
    assert [modules[n].out_channels for n in halves] == [8, 8]
    with torch.no_grad():
        assert loaded.module(*x).shape == (2, 3)


def test_no_layer_of_a_protected_group_is_pruned_on_its_own(tmp_path):
    """A shifted-window Swin: the window reverse is a reshape with the channel count baked
    in, so its attention projection's group is protected. From the projection, the group
    search does not reach the protected root (the windows' spatial slices read as channel
    slices), so the pruner would make it a root of its own: every layer of a protected
    group must be ignored too."""
    from worker.engine.analyze.preflight import (
        ROOT_MODULE_TYPES,
        analyse_groups,
        build_dependency_graph,
    )

    path = models.swin_onnx(tmp_path / "swin.onnx", dim=32, heads=[2, 4, 8], window=7, size=128)
    loaded = load_model(path)
    analysis = analyse_groups(loaded.module, loaded)
    assert analysis.protected
    names = {m: n for n, m in loaded.module.named_modules()}
    graph = build_dependency_graph(loaded.module, loaded.example_inputs(seed=0))
    roots = [
        names[group[0].dep.target.module]
        for group in graph.get_all_groups(
            ignored_layers=analysis.protected_modules, root_module_types=ROOT_MODULE_TYPES
        )
    ]
    assert roots and set(roots) <= set(analysis.prunable)


def test_the_reachable_reduction_keeps_every_layer_of_a_protected_group(tmp_path):
    """The upload's prunability search holds back what a job holds back: a Swin's
    attention value projection, a member of a protected group that the group search
    reaches only from its root, pruned alone broke the window reshape and the search
    raised instead of answering."""
    from worker.engine.analyze.prunability import prunability

    path = models.swin_onnx(tmp_path / "swin.onnx", dim=32, heads=[2, 4, 8], window=7, size=128)
    report = prunability(load_model(path), budget_s=600)  # a loaded machine: no timeout
    assert report.protected_groups and report.prunable_groups
    assert report.max_macs_reduction is not None and 0.1 < report.max_macs_reduction < 0.9
