"""Protection trials on the meta device: the same answers as trials with the data, and a
fall back to the data wherever the meta device cannot tell."""

import copy

import pytest
import torch
from torch import nn

from contract import TensorInfo
from tests.engine import models
from worker.engine.analyze import preflight
from worker.engine.analyze.meta_device import MetaSwap, no_saved_tensors
from worker.engine.types import LoadedModel


def _loaded(module: nn.Module, shape: tuple[int, ...]) -> LoadedModel:
    return LoadedModel(
        module=module.eval(),
        format="pt2",
        inputs=[TensorInfo(name="input", shape=["batch", *shape[1:]])],
        outputs=[TensorInfo(name="output", shape=[])],
        input_shapes=[shape],
    )


class _CountedTrials(preflight._Trials):
    """Counts trials by device, so a test can tell which search gave the answer."""

    runs: list[bool] = []

    def run(self, roots: list[nn.Module]) -> bool:
        _CountedTrials.runs.append(self.on_meta)
        return super().run(roots)


@pytest.fixture
def counted(monkeypatch):
    """Trials run on meta whenever the model runs there (tiny nets run faster with data)."""
    _CountedTrials.runs = []
    monkeypatch.setattr(preflight, "_Trials", _CountedTrials)
    monkeypatch.setattr(preflight, "META_SPEEDUP_NEEDED", 0.0)
    return _CountedTrials.runs


def _analysis(module: nn.Module, shape: tuple[int, ...]) -> preflight.GroupAnalysis:
    return preflight.analyse_groups(module, _loaded(module, shape))


class DividesByItsWidth(nn.Module):
    """`divides` is finite as built and divides by zero with one channel fewer: only the
    data shows it. `plain` prunes."""

    def __init__(self) -> None:
        super().__init__()
        self.plain = nn.Conv2d(3, 8, 3, padding=1)
        self.divides = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.divides(self.plain(x))
        return self.head(y / torch.tensor(float(y.shape[1] - 7)))


class _PlainBakedHead(nn.Module):
    """`plain` prunes; `baked` feeds a reshape to a fixed size (8x8 inputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.plain = nn.Conv2d(3, 8, 3, padding=1)
        self.baked = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8 * 8 * 8, 4)


class ReadsAValue(_PlainBakedHead):
    """Reads a number out of a tensor: nothing to read on the meta device."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.baked(self.plain(x))
        y = y * (1 + int(y.abs().sum().item() > -1))
        return self.head(y.reshape(x.shape[0], 8 * 8 * 8))


def test_the_swap_gives_back_the_same_tensors_with_the_same_values():
    torch.manual_seed(0)
    net = models.ReshapeBakedNet().eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        before = net(x)
    params = list(net.parameters())
    swap = MetaSwap.of(net, (x,), (before,))
    assert swap is not None
    with swap.active():
        assert all(p.device.type == "meta" for p in net.parameters())
        assert net(*swap.inputs((x,))).shape == before.shape
    assert all(a is b for a, b in zip(params, net.parameters(), strict=True))
    with torch.no_grad():
        assert torch.equal(net(x), before)


def test_a_traced_graph_keeps_no_weight_alive():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    x = torch.randn(1, 3, 12, 12)
    with torch.enable_grad(), no_saved_tensors():
        traced = net(x)  # the graph is kept, as torch-pruning keeps it
    assert traced.grad_fn is not None
    assert MetaSwap.of(net, (x,), (traced.detach(),)) is not None


def test_meta_trials_protect_what_trials_with_the_data_protect(counted, monkeypatch):
    torch.manual_seed(0)
    net = models.ReshapeBakedNet()
    on_meta = _analysis(net, (1, 3, 16, 16))
    # Tried with the data, searched on meta, the result confirmed with the data once.
    assert counted[0] is False and any(counted) and counted.count(False) == 2
    monkeypatch.setattr(preflight.MetaSwap, "of", classmethod(lambda *_: None))
    with_data = _analysis(copy.deepcopy(net), (1, 3, 16, 16))
    assert on_meta.protected == {"conv1": "baked_shape", "fc": "reaches_output"}
    assert on_meta.protected == with_data.protected
    assert on_meta.prunable == with_data.prunable


def test_a_slow_forward_pass_sends_even_the_first_trial_to_meta(counted, monkeypatch):
    monkeypatch.setattr(preflight, "META_UP_FRONT_S", 0.0)
    analysis = _analysis(models.ReshapeBakedNet(), (1, 3, 16, 16))
    assert analysis.protected == {"conv1": "baked_shape", "fc": "reaches_output"}
    assert counted[0] is True and counted.count(False) == 1  # only the confirmation


@pytest.mark.parametrize("up_front", [False, True])
def test_what_only_the_data_shows_is_found_with_the_data(counted, monkeypatch, up_front):
    if up_front:
        monkeypatch.setattr(preflight, "META_UP_FRONT_S", 0.0)
    torch.manual_seed(0)
    analysis = _analysis(DividesByItsWidth(), (1, 3, 8, 8))
    assert analysis.protected == {"divides": "baked_shape", "head": "reaches_output"}
    assert analysis.prunable == ["plain"]
    assert any(counted) and counted[-1] is False  # meta passed both; the data did not


def test_a_model_that_reads_a_value_is_tried_with_the_data(counted):
    torch.manual_seed(0)
    analysis = _analysis(ReadsAValue(), (1, 3, 8, 8))
    assert analysis.protected == {"baked": "baked_shape", "head": "reaches_output"}
    assert analysis.prunable == ["plain"]
    assert len(counted) > 1 and not any(counted)


def test_small_layers_are_searched_with_the_data(counted, monkeypatch):
    monkeypatch.setattr(preflight, "META_SPEEDUP_NEEDED", 1e9)
    analysis = _analysis(models.ReshapeBakedNet(), (1, 3, 16, 16))
    assert analysis.protected == {"conv1": "baked_shape", "fc": "reaches_output"}
    assert len(counted) > 1 and not any(counted)


class ReadsAValueOncePruned(_PlainBakedHead):
    """Reads a value only when `plain` has lost a channel: the meta device cannot say
    whether that works, the data can (it does)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.plain(x)
        if y.shape[1] != 8:
            y = y * float(y.abs().max() > -1)
        y = self.baked(y)
        return self.head(y.reshape(x.shape[0], 8 * 8 * 8))


@pytest.mark.parametrize("up_front", [False, True])
def test_a_failure_of_the_meta_device_itself_sends_the_search_to_the_data(
    counted, monkeypatch, up_front
):
    if up_front:
        monkeypatch.setattr(preflight, "META_UP_FRONT_S", 0.0)
    analysis = _analysis(ReadsAValueOncePruned(), (1, 3, 8, 8))
    assert analysis.protected == {"baked": "baked_shape", "head": "reaches_output"}
    assert analysis.prunable == ["plain"]  # not protected for the meta device's sake
    assert any(counted) and counted[-1] is False


def _vit() -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64
    )


@pytest.mark.parametrize(
    ("upload", "runs_on_meta"), [("vit.pt2", True), ("swin.onnx", True), ("vit.onnx", False)]
)
def test_a_transformer_is_searched_on_meta_with_the_same_answer(
    counted, tmp_path, upload, runs_on_meta
):
    """A transformer keeps its full input size and fails its first trial (its attention
    heads are baked into the graph): the search that matters for the largest uploads. The
    converted ViT turns its sizes into a tensor and reads them back (Shape -> Reshape),
    which the meta device cannot: it is searched with the data."""
    from worker.engine.load.loaders import load_model

    torch.manual_seed(0)
    shape, path = (1, 3, 32, 32), tmp_path / upload
    if upload == "vit.pt2":
        models.save_pt2(_vit().eval(), path, shape)
    elif upload == "vit.onnx":
        models.to_onnx(_vit(), path, shape)
    else:
        models.swin_onnx(path, dim=16, heads=[1, 2, 4], window=2, size=32)
    loaded = load_model(path)
    on_meta = preflight.analyse_groups(loaded.module, loaded)
    assert any(counted) == runs_on_meta
    counted.clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(preflight.MetaSwap, "of", classmethod(lambda *_: None))
        with_data = preflight.analyse_groups(loaded.module, loaded)
    assert not any(counted)
    assert on_meta.protected == with_data.protected
    assert on_meta.prunable == with_data.prunable and on_meta.prunable
    assert "baked_shape" in on_meta.protected.values()
