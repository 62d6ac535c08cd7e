"""Residual blocks found in loaded graphs and removed whole (depth pruning)."""

import copy
from pathlib import Path

import pytest
import torch
from torch import fx, nn

from contract import PruneSpec, Target
from tests.engine import models
from tests.engine.tiny_nets import TinyMobileNet, TinyResNet, seeded
from worker.engine.analyze.blocks import disjoint, find_blocks, remove_blocks, traced_for_blocks
from worker.engine.load.loaders import load_model
from worker.engine.measure.latency import LayerLatencyTable
from worker.engine.measure.stats import count_macs
from worker.engine.prune.latency_search import LatencyRuntime
from worker.engine.prune.to_target import prune_model

X = torch.randn(2, 3, 32, 32)


def _loaded(model: nn.Module, path: Path) -> fx.GraphModule:
    module = load_model(models.to_onnx(model, path, (1, 3, 32, 32))).module
    assert isinstance(module, fx.GraphModule)
    return module


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, fx.GraphModule]:
    torch_model = seeded(TinyMobileNet)
    return torch_model, _loaded(torch_model, tmp_path_factory.mktemp("blocks") / "mnet.onnx")


def test_only_identity_shortcuts_are_blocks(tmp_path: Path) -> None:
    """layer2 and layer3 add a projection of their input: removing them is not possible
    by a skip alone, so layer1 is TinyResNet's one block."""
    module = _loaded(seeded(TinyResNet), tmp_path / "resnet.onnx")
    [block] = find_blocks(module, (X,))
    assert all(name.startswith("layer1") for name in block.layers)
    assert len(block.layers) == 2  # conv1 and conv2


def test_removing_a_block_is_replacing_it_by_its_shortcut(tmp_path: Path) -> None:
    torch_model = seeded(TinyResNet)
    module = _loaded(torch_model, tmp_path / "resnet.onnx")
    remove_blocks(module, find_blocks(module, (X,)))
    # The block's output, relu(x + branch), becomes relu(x) = x after the stem's ReLU.
    torch_model.layer1 = nn.Identity()
    with torch.no_grad():
        assert torch.allclose(module(X), torch_model(X), atol=1e-4)
    convs = [name for name, m in module.named_modules() if isinstance(m, nn.Conv2d)]
    assert convs and not any(name.startswith("layer1") for name in convs)


def test_consecutive_blocks_are_removed_together(mobilenet) -> None:
    torch_model, module = mobilenet
    blocks = find_blocks(module, (X,))
    assert len(blocks) == 2  # the two inverted residuals whose shapes match
    for order in (blocks, blocks[::-1]):
        pruned = copy.deepcopy(module)
        remove_blocks(pruned, order)
        reference = copy.deepcopy(torch_model)
        reference.blocks[0] = nn.Identity()
        reference.blocks[2] = nn.Identity()
        with torch.no_grad():
            assert torch.allclose(pruned(X), reference(X), atol=1e-4)
        assert count_macs(pruned, (X[:1],)) < count_macs(module, (X[:1],))


def test_a_plain_module_or_a_protected_layer_offers_no_block(mobilenet) -> None:
    torch_model, module = mobilenet
    assert find_blocks(torch_model, (X,)) == []
    first = find_blocks(module, (X,))[0]
    left = find_blocks(module, (X,), protected=[first.layers[0]])
    assert [b.add for b in left] == [b.add for b in find_blocks(module, (X,))[1:]]


def test_nested_blocks_are_taken_once() -> None:
    class Nested(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            inner = x + self.a(x)
            return x + self.b(inner)

    module = fx.symbolic_trace(Nested())
    outer, inner = sorted(find_blocks(module, (X,)), key=lambda b: -len(b.nodes))
    assert set(outer.layers) == {"a", "b"} and inner.layers == ("a",)
    assert disjoint([outer, inner]) == [outer]
    remove_blocks(module, [outer, inner])
    assert torch.equal(module(X), X)


def _per_op_runtime(example: torch.Tensor):
    """Each layer costs a fixed 0.2 ms besides its MACs: thinning layers saves little."""

    def ms(module: nn.Module) -> float:
        layers = sum(isinstance(m, nn.Conv2d | nn.Linear) for m in module.modules())
        return 0.2 * layers + count_macs(module, example) * 1e-7

    return ms


def test_a_latency_target_out_of_reach_of_channels_removes_blocks(mobilenet) -> None:
    """With most of the time in per-layer costs, only removing layers reaches 30% less."""
    _, loaded = mobilenet
    module = copy.deepcopy(loaded)
    head = dict(module.named_modules())["classifier/Gemm"]
    runtime = _per_op_runtime(X[:1])

    def measure(candidates: dict[str, nn.Module]) -> dict[str, float]:
        return {"original": runtime(loaded), **{k: runtime(m) for k, m in candidates.items()}}

    result = prune_model(
        module,
        X[:1],
        PruneSpec(target=Target(latency_reduction=0.3)),
        protected=[head],
        latency=LatencyRuntime(table=LayerLatencyTable(), measure=measure),
    )
    figures = result.achieved
    assert figures["latency_ms_measured"] <= 1.05 * figures["latency_ms_target"]
    [note] = [n for n in result.notes if n.startswith("latency target")]
    assert "residual blocks removed" in note.split("(chosen)")[0].rsplit(";", 1)[-1]
    removed = [c for c in result.layers if c.out_channels_after == 0]
    assert removed and all(c.name.startswith("blocks") for c in removed)
    with torch.no_grad():
        assert module(X).shape == (2, 10)


def test_a_pt2_upload_has_its_blocks_found_too(tiny_resnet_pt2: Path) -> None:
    module = load_model(tiny_resnet_pt2).module
    [block] = find_blocks(module, (X,))
    remove_blocks(module, [block])
    with torch.no_grad():
        assert module(X).shape == (2, 10)


def test_a_model_built_from_its_class_is_traced_for_its_blocks() -> None:
    torch_model = seeded(TinyResNet).eval()
    graph = traced_for_blocks(torch_model, (X,))
    assert isinstance(graph, fx.GraphModule)
    assert graph.get_submodule("layer1.conv1") is torch_model.layer1.conv1  # shared layers
    [block] = find_blocks(graph, (X,))
    assert all(name.startswith("layer1") for name in block.layers)
    with torch.no_grad():
        assert torch.equal(graph(X), torch_model(X))


def test_a_trace_trains_after_its_blocks_are_removed() -> None:
    """torchvision's blocks end in `out += identity` and an in-place ReLU: with a block
    gone, that ReLU would overwrite the block before it's output, saved for backward."""
    import torchvision

    graph = traced_for_blocks(torchvision.models.resnet18(num_classes=3), (X,))
    assert graph is not None
    blocks = find_blocks(graph, (X,))
    assert len(blocks) == 5  # the first of each stage but layer1 projects its shortcut
    remove_blocks(graph, blocks[-1:])
    graph.train()(X).sum().backward()


def test_no_trace_where_it_cannot_serve() -> None:
    class Branching(nn.Module):  # data-dependent control flow: symbolic tracing fails
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.conv(x) if x.sum() > 0 else x

    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))  # no shortcut
    traced = fx.symbolic_trace(seeded(TinyResNet))  # a graph already
    for module in (Branching(), plain, traced):
        assert traced_for_blocks(module, (X,)) is None
    resnet = seeded(TinyResNet)
    protected = ["layer1.conv1"]  # the one block's layer: nothing left to remove
    assert traced_for_blocks(resnet, (X,), protected) is None
