"""ONNX export with the original names and dynamic dims, onnxruntime verification, .pt2."""

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch_pruning as tp
from torch import nn

from contract import ExportSpec
from worker.engine.analyze.preflight import PRUNER_KWARGS, run_preflight
from worker.engine.errors import ExportFailed, VerificationFailed
from worker.engine.load.loaders import load_model
from worker.engine.load.sniff import sniff_format
from worker.engine.ship.export import export_onnx, save_pt2, verify_onnx


def _dims(value) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def _pruned(path, **kwargs):
    loaded = load_model(path, **kwargs)
    pre = run_preflight(loaded)
    pruner = tp.pruner.MetaPruner(
        loaded.module,
        loaded.example_inputs(),
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=0.5,
        ignored_layers=pre.protected,
        **PRUNER_KWARGS,
    )
    pruner.step()
    return loaded


def test_pruned_export_keeps_names_and_dynamic_batch_and_verifies(tmp_path, res_concat_onnx):
    loaded = _pruned(res_concat_onnx)
    path = export_onnx(loaded.module, loaded, tmp_path / "model.onnx", ExportSpec(opset=17))
    model = onnx.load(str(path))
    assert [(i.name, _dims(i)) for i in model.graph.input] == [("input", ["batch", 3, 32, 32])]
    assert [(o.name, _dims(o)) for o in model.graph.output] == [("output", ["batch", 10])]
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {17}
    assert not list(tmp_path.glob("*.partial*")) and not list(tmp_path.glob("*.data"))
    for batch in (1, 3):
        diff = verify_onnx(path, loaded.module, loaded.example_inputs(batch=batch, seed=batch))
        assert diff < 1e-4


def test_tf_style_names_and_symbolic_dims_survive(tmp_path, tf_style_onnx):
    loaded = _pruned(tf_style_onnx)
    path = export_onnx(loaded.module, loaded, tmp_path / "tf.onnx", ExportSpec())
    model = onnx.load(str(path))
    assert [(i.name, _dims(i)) for i in model.graph.input] == [("input_1:0", ["unk__0", 16, 16, 3])]
    assert [(o.name, _dims(o)) for o in model.graph.output] == [("dense/BiasAdd:0", ["unk__0", 10])]
    verify_onnx(path, loaded.module, loaded.example_inputs(batch=4))


def test_two_outputs_and_non_batch_dynamic_dims(tmp_path, two_output_onnx, conv1d_onnx):
    loaded = _pruned(two_output_onnx)
    path = export_onnx(loaded.module, loaded, tmp_path / "two.onnx", ExportSpec())
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["class_logits", "mask"]
    verify_onnx(path, loaded.module, loaded.example_inputs(batch=2))

    loaded = _pruned(conv1d_onnx, input_shape="1,4,64")
    path = export_onnx(loaded.module, loaded, tmp_path / "seq.onnx", ExportSpec())
    assert _dims(onnx.load(str(path)).graph.input[0]) == ["batch", 4, "time"]
    longer = (torch.randn(2, 4, 150),)  # another length than the one it was traced at
    verify_onnx(path, loaded.module, longer)


def test_static_batch_on_request(tmp_path, tiny_resnet_onnx):
    loaded = load_model(tiny_resnet_onnx)
    path = export_onnx(
        loaded.module, loaded, tmp_path / "static.onnx", ExportSpec(dynamic_batch=False)
    )
    model = onnx.load(str(path))
    assert _dims(model.graph.input[0]) == [1, 3, 32, 32]
    assert _dims(model.graph.output[0]) == [1, 10]


@pytest.mark.parametrize("opset", [13, 20])
def test_requested_opset(tmp_path, tiny_resnet_onnx, opset):
    loaded = load_model(tiny_resnet_onnx)
    path = export_onnx(loaded.module, loaded, tmp_path / "m.onnx", ExportSpec(opset=opset))
    model = onnx.load(str(path))
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {opset}
    verify_onnx(path, loaded.module, loaded.example_inputs())


def test_verify_catches_a_wrong_model(tmp_path, tiny_resnet_onnx):
    loaded = load_model(tiny_resnet_onnx)
    path = export_onnx(loaded.module, loaded, tmp_path / "m.onnx", ExportSpec())
    other = copy.deepcopy(loaded.module)
    with torch.no_grad():
        next(m for m in other.modules() if isinstance(m, nn.Linear)).bias.add_(1.0)
    with pytest.raises(VerificationFailed):
        verify_onnx(path, other, loaded.example_inputs())
    # an explicit tolerance is honoured
    assert verify_onnx(path, other, loaded.example_inputs(), atol=10.0) == pytest.approx(
        1.0, abs=1e-4
    )


def test_a_module_with_other_outputs_is_refused(tmp_path, tiny_resnet_onnx, two_output_onnx):
    loaded = load_model(tiny_resnet_onnx)
    two = load_model(two_output_onnx)
    with pytest.raises(ExportFailed):
        export_onnx(two.module, loaded, tmp_path / "m.onnx", ExportSpec())
    assert not (tmp_path / "m.onnx").exists()


def test_pt2_of_a_pruned_onnx_model_round_trips(tmp_path, tiny_resnet_onnx):
    loaded = _pruned(tiny_resnet_onnx)
    path = save_pt2(loaded.module, loaded, tmp_path / "model.pt2")
    assert sniff_format(path) == "pt2"  # holds no pickle beyond weights
    again = load_model(path)
    assert again.inputs[0].name == "input" and again.inputs[0].shape[0] == "batch"
    x = loaded.example_inputs(batch=3)
    with torch.no_grad():
        np.testing.assert_allclose(again.module(*x).numpy(), loaded.module(*x).numpy(), atol=1e-5)


def test_dynamic_spatial_dims_stay_dynamic_after_pruning(tmp_path, two_output):
    from tests.engine import models

    path = models.to_onnx(
        two_output,
        tmp_path / "fcn.onnx",
        (1, 3, 32, 32),
        output_names=("class_logits", "mask"),
        dynamic={2: "height", 3: "width"},
    )
    loaded = _pruned(path, input_shape="1,3,32,32")
    out = export_onnx(loaded.module, loaded, tmp_path / "pruned.onnx", ExportSpec())
    model = onnx.load(str(out))
    assert _dims(model.graph.input[0]) == ["batch", 3, "height", "width"]
    # another size than the one it was loaded and pruned at
    verify_onnx(out, loaded.module, (torch.randn(2, 3, 48, 40),))


def test_an_ocr_recogniser_with_an_lstm_head(tmp_path):
    """Conv channels feeding the LSTM are pruned (its input shrinks with them); the
    classifier is kept; the export runs at other text widths."""
    import torch.nn as nn

    from tests.engine import models

    torch.manual_seed(0)
    net = models.seeded(models.CRNN)
    path = tmp_path / "crnn.onnx"
    torch.onnx.export(
        net,
        (torch.randn(1, 1, 32, 100),),
        str(path),
        input_names=["image"],
        output_names=["logits"],
        opset_version=17,
        dynamo=False,
        dynamic_axes={"image": {0: "batch", 3: "width"}, "logits": {0: "time", 1: "batch"}},
    )
    loaded = _pruned(path, input_shape="1,1,32,100")
    lstm = next(m for m in loaded.module.modules() if isinstance(m, nn.LSTM))
    assert lstm.input_size == 24 and lstm.hidden_size == 32
    out = export_onnx(loaded.module, loaded, tmp_path / "pruned.onnx", ExportSpec())
    assert _dims(onnx.load(str(out)).graph.output[0]) == ["time", "batch", 12]
    verify_onnx(out, loaded.module, (torch.randn(2, 1, 32, 140),))


class _DflHead(nn.Module):
    """A YOLOv8 head's distribution integral: conv, then view(batch, 4, -1) and a view of
    the batch taken from the input (torch.export records both sizes symbolically)."""

    def __init__(self) -> None:
        super().__init__()
        self.box = nn.Conv2d(3, 64, 3, padding=1)
        self.dfl = nn.Conv2d(16, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        boxes = self.box(x).view(b, 64, -1)
        dist = boxes.view(b, 4, 16, -1).transpose(2, 1).softmax(1)
        return self.dfl(dist).view(b, 4, -1)


def test_an_archive_with_views_of_its_batch_exports_a_dynamic_batch(tmp_path) -> None:
    """The TorchScript exporter baked the traced batch into the views of a .pt2 archive's
    graph (aten overloads fed by aten.sym_size): the file ran at batch 1 only."""
    from tests.engine import models

    path = models.save_pt2(_DflHead(), tmp_path / "head.pt2", (1, 3, 8, 8))
    loaded = load_model(path)
    out = export_onnx(loaded.module, loaded, tmp_path / "head.onnx", ExportSpec())
    for batch in (1, 3):
        verify_onnx(out, loaded.module, loaded.example_inputs(batch=batch))


def test_an_input_no_op_reads_is_kept(tmp_path, monkeypatch) -> None:
    """tf2onnx leaves a Keras Normalization layer's statistics as graph inputs nothing
    reads; the TorchScript exporter dropped them and the export failed ('the exported
    graph lost') where the dynamo exporter could not take the model either (Keras
    EfficientNetB0): here it is the only route."""
    from onnx import TensorProto, helper, numpy_helper

    from worker.engine.ship import export

    def no_dynamo(*args, **kwargs):
        raise RuntimeError("not this route")

    monkeypatch.setattr(export, "_export_dynamo", no_dynamo)

    weight = numpy_helper.from_array(np.full((4, 3, 3, 3), 0.1, np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        "unused_input",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8]),
            helper.make_tensor_value_info("stats", TensorProto.FLOAT, [1, 1, 1, 3]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "m.onnx")
    loaded = load_model(tmp_path / "m.onnx")
    out = export_onnx(loaded.module, loaded, tmp_path / "out.onnx", ExportSpec())
    assert [i.name for i in onnx.load(out).graph.input] == ["x", "stats"]
    verify_onnx(out, loaded.module, loaded.example_inputs())


def test_weights_one_file_cannot_hold_go_beside_it(tmp_path, tiny_resnet_onnx, monkeypatch):
    """A model over the 2 GB a single ONNX file holds (here: a limit lowered to a few KB)
    is written with its weights in `<name>.data`, which onnxruntime reads from beside it;
    writing it again replaces the weights file rather than appending to it."""
    import worker.engine.ship.export as export

    monkeypatch.setattr(export, "SINGLE_FILE_WEIGHT_BYTES", 4096)
    loaded = load_model(tiny_resnet_onnx)
    path = tmp_path / "original.onnx"
    for _ in range(2):
        export_onnx(loaded.module, loaded, path, ExportSpec())
        weights = export.sidecar(path)
        assert weights.stat().st_size >= export.weight_bytes(loaded.module) * 0.9
        assert path.stat().st_size < weights.stat().st_size
        assert export.onnx_bytes(path) == path.stat().st_size + weights.stat().st_size
        assert verify_onnx(path, loaded.module, loaded.example_inputs(batch=2)) < 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["original.onnx", "original.onnx.data"]


def test_a_shipped_model_too_large_for_one_file_is_refused_with_the_reason(
    tmp_path, tiny_resnet_onnx, monkeypatch
):
    import worker.engine.ship.export as export

    monkeypatch.setattr(export, "SINGLE_FILE_WEIGHT_BYTES", 4096)
    loaded = load_model(tiny_resnet_onnx)
    with pytest.raises(ExportFailed, match="at most 2 GB: ask for a larger reduction"):
        export_onnx(loaded.module, loaded, tmp_path / "model.onnx", ExportSpec(), single_file=True)
    assert not list(tmp_path.iterdir())
