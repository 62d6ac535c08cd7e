"""Loading every supported upload into a prunable module, and the typed refusals."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision
from onnx import TensorProto, helper, numpy_helper
from safetensors.torch import save_file
from torch import nn

from contract import ExportSpec
from tests.engine import models
from worker.engine.errors import UnsupportedModel
from worker.engine.load.channel_modules import ChannelConst
from worker.engine.load.loaders import load_model, parse_input_shape
from worker.engine.ship.export import export_onnx


def _ort(path, feeds):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {k: v.numpy() for k, v in feeds.items()})


def _outputs(module, *inputs):
    with torch.no_grad():
        out = module(*inputs)
    return out if isinstance(out, tuple | list) else (out,)


def _code(path, **kwargs) -> str:
    with pytest.raises(UnsupportedModel) as err:
        load_model(path, **kwargs)
    return err.value.code


@pytest.mark.slow
def test_torchvision_resnet18_onnx_reproduces_its_outputs(tmp_path):
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    path = models.to_onnx(net, tmp_path / "resnet18.onnx", (1, 3, 64, 64), output_names=("logits",))
    loaded = load_model(path)
    assert loaded.format == "onnx"
    assert [(i.name, i.shape) for i in loaded.inputs] == [("input", ["batch", 3, 64, 64])]
    assert [(o.name, o.shape) for o in loaded.outputs] == [("logits", ["batch", 10])]
    assert loaded.input_shapes == [(1, 3, 64, 64)]
    for batch in (1, 3):
        x = loaded.example_inputs(batch=batch, seed=batch)
        (ours,) = _outputs(loaded.module, *x)
        torch.testing.assert_close(ours, net(x[0]).detach(), rtol=1e-4, atol=1e-4)
    convs = [m for m in loaded.module.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 20  # torch-pruning sees real layers


def test_residual_concat_onnx(res_concat, res_concat_onnx):
    loaded = load_model(res_concat_onnx)
    x = loaded.example_inputs(batch=2)
    torch.testing.assert_close(
        _outputs(loaded.module, *x)[0], res_concat(*x).detach(), rtol=1e-4, atol=1e-4
    )


def test_conv1d_sequence_model_needs_and_takes_an_input_shape(conv1d, conv1d_onnx):
    with pytest.raises(UnsupportedModel) as err:
        load_model(conv1d_onnx)
    assert err.value.code == "input_shape_required"
    assert "time" in err.value.message and "1,4,N" in err.value.message
    loaded = load_model(conv1d_onnx, input_shape="1,4,100")
    assert loaded.inputs[0].shape == ["batch", 4, "time"]
    assert loaded.input_shapes == [(1, 4, 100)]
    x = loaded.example_inputs()
    torch.testing.assert_close(
        _outputs(loaded.module, *x)[0], conv1d(*x).detach(), rtol=1e-4, atol=1e-4
    )


def test_two_output_model_keeps_names_and_order(two_output, two_output_onnx):
    loaded = load_model(two_output_onnx)
    assert [o.name for o in loaded.outputs] == ["class_logits", "mask"]
    assert loaded.outputs[1].shape == ["batch", 2, 32, 32]
    x = loaded.example_inputs(batch=2)
    ours = _outputs(loaded.module, *x)
    theirs = two_output(*x)
    assert len(ours) == 2
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b.detach(), rtol=1e-4, atol=1e-4)


def test_tf2onnx_style_graph_loads_with_prunable_batchnorm_constants(tf_style_onnx):
    loaded = load_model(tf_style_onnx)
    assert loaded.inputs[0].name == "input_1:0"
    assert loaded.inputs[0].shape == ["unk__0", 16, 16, 3]
    assert loaded.outputs[0].name == "dense/BiasAdd:0"
    consts = [m for m in loaded.module.modules() if isinstance(m, ChannelConst)]
    # Both BatchNorms (the NHWC one and the NCHW one) became prunable per-channel constants.
    assert sorted(c.weight.shape[c.dim] for c in consts) == [8, 8, 16, 16]
    assert any(isinstance(m, nn.Linear) and m.bias is not None for m in loaded.module.modules())
    x = loaded.example_inputs(batch=2, seed=3)
    (expected,) = _ort(tf_style_onnx, {"input_1:0": x[0]})
    np.testing.assert_allclose(
        _outputs(loaded.module, *x)[0].numpy(), expected, rtol=1e-4, atol=1e-5
    )


def _save_graph(path, nodes, inits, shapes: tuple[list, list], opset: int, name: str = "g"):
    """One input 'input' and one output: `shapes` gives their declared dims."""
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shapes[0])],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, shapes[1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _converts_like_onnxruntime(path, batch: int, atol: float = 1e-5) -> None:
    loaded = load_model(path)
    x = loaded.example_inputs(batch=batch)
    (expected,) = _ort(path, {"input": x[0]})
    np.testing.assert_allclose(
        _outputs(loaded.module, *x)[0].numpy(), expected, rtol=1e-4, atol=atol
    )


def _opset18_graph(path):
    """What torch's dynamo exporter writes: ReduceMean with axes as an input, Reshape with
    allowzero=1, Split with num_outputs, Pad with axes."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
        numpy_helper.from_array(np.array([-1, 4], np.int64), "shape"),
        numpy_helper.from_array(np.array([1, 1, 1, 1], np.int64), "pads"),
        numpy_helper.from_array(np.array([2, 3], np.int64), "pad_axes"),
        numpy_helper.from_array(rng.normal(0, 0.3, (4, 3)).astype(np.float32), "fc_w"),
    ]
    node = helper.make_node
    nodes = [
        node("Pad", ["input", "pads", "", "pad_axes"], ["padded"], mode="constant"),
        node("Conv", ["padded", "w"], ["c"]),
        node("Split", ["c"], ["s0", "s1"], axis=1, num_outputs=2),
        node("Mul", ["s0", "s1"], ["gated"]),
        node("ReduceMean", ["gated", "axes"], ["pooled"], keepdims=1),
        node("Reshape", ["pooled", "shape"], ["flat"], allowzero=1),
        node("Gemm", ["flat", "fc_w"], ["logits"]),
    ]
    return _save_graph(path, nodes, inits, (["N", 3, 12, 12], ["N", 3]), 18, "dynamo")


def test_opset18_forms_convert(tmp_path):
    _converts_like_onnxruntime(_opset18_graph(tmp_path / "opset18.onnx"), batch=3)


def _recurrent_graph(path, op: str, direction: str):
    """A CRNN-style head: Conv1d features, then a (bi)directional LSTM/GRU over time."""
    rng = np.random.default_rng(1)
    hidden, feats = 6, 5
    dirs = 2 if direction == "bidirectional" else 1
    gates = 4 if op == "LSTM" else 3
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.4, (feats, 3, 3)).astype(np.float32), "cw"),
        numpy_helper.from_array(np.array([2, 0, 1], np.int64), "perm_unused"),
        numpy_helper.from_array(
            rng.normal(0, 0.4, (dirs, gates * hidden, feats)).astype(np.float32), "W"
        ),
        numpy_helper.from_array(
            rng.normal(0, 0.4, (dirs, gates * hidden, hidden)).astype(np.float32), "R"
        ),
        numpy_helper.from_array(
            rng.normal(0, 0.2, (dirs, 2 * gates * hidden)).astype(np.float32), "B"
        ),
    ]
    attrs = {"hidden_size": hidden, "direction": direction}
    if op == "GRU":
        attrs["linear_before_reset"] = 1
    node = helper.make_node
    outputs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    nodes = [
        node("Conv", ["input", "cw"], ["feat"], pads=[1, 1]),
        node("Transpose", ["feat"], ["seq"], perm=[2, 0, 1]),
        node(op, ["seq", "W", "R", "B"], outputs, **attrs),
    ]
    graph = helper.make_graph(
        nodes,
        "crnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 7])],
        [
            helper.make_tensor_value_info("Y", TensorProto.FLOAT, [7, dirs, "N", hidden]),
            helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [dirs, "N", hidden]),
        ],
        inits[:1] + inits[2:],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(
    "op,direction", [("LSTM", "bidirectional"), ("LSTM", "reverse"), ("GRU", "forward")]
)
def test_recurrent_heads_convert(tmp_path, op, direction):
    path = _recurrent_graph(tmp_path / f"{op}.onnx", op, direction)
    loaded = load_model(path)
    x = loaded.example_inputs(batch=2)
    expected = _ort(path, {"input": x[0]})
    for ours, theirs in zip(_outputs(loaded.module, *x), expected, strict=True):
        np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-4, atol=1e-5)


def test_pt2_archive_round_trip(tiny_resnet, tiny_resnet_pt2):
    loaded = load_model(tiny_resnet_pt2)
    assert loaded.format == "pt2"
    assert loaded.inputs[0].name == "x" and loaded.inputs[0].shape == ["batch", 3, 32, 32]
    x = loaded.example_inputs(batch=2)
    torch.testing.assert_close(_outputs(loaded.module, *x)[0], tiny_resnet(*x).detach())
    # aten calls were raised back into layers, under their original names
    modules = dict(loaded.module.named_modules())
    assert isinstance(modules["layer1.conv1"], nn.Conv2d)
    assert isinstance(modules["layer1.bn1"], nn.BatchNorm2d)
    assert isinstance(modules["fc"], nn.Linear)
    loaded.module.train()  # an ExportedProgram's module refuses this; ours must not
    loaded.module.eval()


def test_a_vision_transformer_archive_exports_with_its_batch_dynamic(tmp_path):
    """A torch.export ViT reads its batch as a size twice: the class token is expanded to
    it, and the attention (sequence first) views its output as L * N rows. Both stay
    symbolic in the loaded graph, so the ONNX export runs at any batch."""
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    net = VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64
    ).eval()
    loaded = load_model(models.save_pt2(net, tmp_path / "vit.pt2", (1, 3, 32, 32)))
    path = export_onnx(loaded.module, loaded, tmp_path / "vit.onnx", ExportSpec())
    for batch in (1, 2, 3):
        x = loaded.example_inputs(batch=batch, seed=batch)
        [got] = _ort(path, {loaded.inputs[0].name: x[0]})
        np.testing.assert_allclose(got, net(*x).detach().numpy(), rtol=1e-4, atol=1e-4)


def test_safetensors_with_a_torchvision_arch(tmp_path):
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=7).eval()
    save_file(net.state_dict(), tmp_path / "weights.safetensors")
    loaded = load_model(
        tmp_path / "weights.safetensors", arch="torchvision:resnet18", input_shape=[1, 3, 32, 32]
    )
    assert (loaded.format, loaded.arch) == ("safetensors", "torchvision:resnet18")
    assert loaded.outputs[0].shape == ["batch", 7]
    assert any("num_classes=7" in n for n in loaded.notes)
    x = loaded.example_inputs(batch=2)
    torch.testing.assert_close(_outputs(loaded.module, *x)[0], net(*x).detach())


def test_state_dict_read_with_weights_only(tmp_path, tiny_resnet):
    net = torchvision.models.resnet18(num_classes=10).eval()
    torch.save(net.state_dict(), tmp_path / "plain.pt")
    wrapped = {f"module.{k}": v for k, v in net.state_dict().items()}  # DataParallel
    torch.save({"epoch": 4, "state_dict": wrapped}, tmp_path / "ckpt.pth")
    x = torch.randn(1, 3, 224, 224)
    for name in ("plain.pt", "ckpt.pth"):
        loaded = load_model(tmp_path / name, arch="resnet18")
        assert loaded.format == "state_dict"
        assert loaded.input_shapes == [(1, 3, 224, 224)]
        torch.testing.assert_close(_outputs(loaded.module, x)[0], net(x).detach())


def test_weights_that_do_not_fit_the_arch(tmp_path, tiny_resnet):
    save_file(tiny_resnet.state_dict(), tmp_path / "w.safetensors")
    with pytest.raises(UnsupportedModel) as err:
        load_model(tmp_path / "w.safetensors", arch="torchvision:resnet18")
    assert err.value.code == "invalid_model"
    assert "missing" in err.value.message and "unexpected" in err.value.message


def test_unknown_or_missing_arch(tmp_path, tiny_resnet):
    save_file(tiny_resnet.state_dict(), tmp_path / "w.safetensors")
    for arch in ("torchvision:resnet9000", "timm:not_a_model", "keras:resnet50", None):
        assert _code(tmp_path / "w.safetensors", arch=arch) == "unknown_arch", arch


def test_non_finite_weights(tmp_path, tiny_resnet):
    state = {k: v.clone() for k, v in tiny_resnet.state_dict().items()}
    state["fc.weight"][0, 0] = float("nan")
    save_file(state, tmp_path / "nan.safetensors")
    assert _code(tmp_path / "nan.safetensors", arch="torchvision:resnet18") == "non_finite_weights"
    path = models.tf_style_onnx(tmp_path / "nan.onnx", nan=True)
    assert _code(path) == "non_finite_weights"


def test_external_data_is_refused(tmp_path, tiny_resnet_onnx):
    model = onnx.load(str(tiny_resnet_onnx))
    onnx.save(
        model,
        str(tmp_path / "ext.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="ext.onnx.data",
        size_threshold=0,
    )
    assert _code(tmp_path / "ext.onnx") == "external_data_forbidden"


def test_pickled_module_random_bytes_and_truncation(tmp_path, tiny_resnet, tiny_resnet_onnx):
    torch.save(tiny_resnet, tmp_path / "model.pt")
    assert _code(tmp_path / "model.pt") == "unsafe_format"
    (tmp_path / "random.onnx").write_bytes(np.random.default_rng(0).bytes(10_000))
    assert _code(tmp_path / "random.onnx") == "invalid_model"
    data = tiny_resnet_onnx.read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) - 100])
    assert _code(tmp_path / "cut.onnx") == "invalid_model"


def test_input_shape_must_agree_with_fixed_dims(tiny_resnet_onnx):
    assert _code(tiny_resnet_onnx, input_shape="1,3,64,64") == "input_shape_mismatch"
    assert _code(tiny_resnet_onnx, input_shape="1,3,32") == "input_shape_mismatch"
    assert _code(tiny_resnet_onnx, input_shape="one,two") == "input_shape_mismatch"
    loaded = load_model(tiny_resnet_onnx, input_shape="8,3,32,32")  # the batch is free
    assert loaded.input_shapes == [(1, 3, 32, 32)]


def test_parse_input_shape_forms():
    assert parse_input_shape("1,3,224,224") == [(1, 3, 224, 224)]
    assert parse_input_shape([1, 3, 8, 8]) == [(1, 3, 8, 8)]
    assert parse_input_shape("1x3x8x8;1,10") == [(1, 3, 8, 8), (1, 10)]
    assert parse_input_shape(None) is None
    with pytest.raises(UnsupportedModel):
        parse_input_shape("1,0,8")


def test_unsupported_op_is_named(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Hardmax", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "hardmax.onnx"))
    with pytest.raises(UnsupportedModel) as err:
        load_model(tmp_path / "hardmax.onnx")
    assert err.value.code == "unsupported_op"
    assert "Hardmax" in err.value.message


def test_onnx_loading_does_not_import_torchvision(tiny_resnet_onnx, tmp_path):
    """The upload inspector loads ONNX without torchvision (and torch._dynamo), yet a
    model using torchvision's NMS still converts and runs."""
    import subprocess
    import sys
    from pathlib import Path

    nms = tmp_path / "nms.onnx"
    boxes = np.array([[[0, 0, 1, 1], [0, 0.1, 1, 1.1], [0, 0.9, 1, 1.9]]], np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"]),
            helper.make_node("ReduceMean", ["c"], ["m"], axes=[1, 2, 3], keepdims=0),
            helper.make_node("Reshape", ["m", "shape"], ["m3"]),
            helper.make_node("Mul", ["m3", "base"], ["scores"]),
            helper.make_node("NonMaxSuppression", ["boxes", "scores", "top", "iou"], ["selected"]),
        ],
        "nms",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("selected", TensorProto.INT64, [None, 3])],
        [
            numpy_helper.from_array(boxes, "boxes"),
            numpy_helper.from_array(np.ones((2, 3, 3, 3), np.float32), "w"),
            numpy_helper.from_array(np.array([1, 1, 1], np.int64), "shape"),
            numpy_helper.from_array(np.array([[[0.9, 0.8, 0.7]]], np.float32), "base"),
            numpy_helper.from_array(np.array([3], np.int64), "top"),
            numpy_helper.from_array(np.array([0.5], np.float32), "iou"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    onnx.save(model, str(nms))
    script = (
        "import sys\n"
        "from worker.engine.load.loaders import load_model\n"
        f"load_model({str(tiny_resnet_onnx)!r})\n"
        "print(sorted(m for m in ('torchvision', 'torch._dynamo') if m in sys.modules))\n"
        f"loaded = load_model({str(nms)!r})\n"
        "print(loaded.module(*loaded.example_inputs()).tolist())\n"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=root, timeout=300
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "[]"
    assert lines[1] == "[[0, 0, 0], [0, 0, 2]]"


def _hard_sigmoid_graph(path):
    """Two gates: PyTorch's HardSigmoid constants (alpha 1/6) and ONNX's defaults (0.2)."""
    weight = np.random.default_rng(3).normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32)
    node = helper.make_node
    nodes = [
        node("Conv", ["input", "w"], ["feat"], pads=[1, 1, 1, 1]),
        node("HardSigmoid", ["feat"], ["torch_gate"], alpha=1 / 6, beta=0.5),
        node("HardSigmoid", ["torch_gate"], ["onnx_gate"]),
        node("Mul", ["feat", "onnx_gate"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "gates",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_hard_sigmoid_re_exports_as_one_node(tmp_path):
    """PyTorch's constants load as torch's Hardsigmoid, which exports back as one
    HardSigmoid node rather than Mul, Add and Clip; other constants keep their values."""
    path = _hard_sigmoid_graph(tmp_path / "gates.onnx")
    loaded = load_model(path)
    assert sum(isinstance(m, nn.Hardsigmoid) for m in loaded.module.modules()) == 1
    x = loaded.example_inputs(batch=2)
    (expected,) = _ort(path, {"input": x[0]})
    np.testing.assert_allclose(_outputs(loaded.module, *x)[0].numpy(), expected, atol=1e-6)
    again = export_onnx(loaded.module, loaded, tmp_path / "again.onnx", ExportSpec())
    ops = [n.op_type for n in onnx.load(str(again)).graph.node]
    assert ops.count("HardSigmoid") == 1  # the ONNX-default gate stays onnx2torch's module
    assert "Clip" in ops


def _clip_graph(path):
    """SwinV2's logit scale: `torch.clamp(s, max=c)` exports as Clip with no min input;
    beside it a Clip whose min is computed from the data (Clip(x, ReduceMin(x)))."""
    rng = np.random.default_rng(2)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.4, (4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array(0.25, np.float32), "high"),
    ]
    node = helper.make_node
    nodes = [
        node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1]),
        node("Clip", ["c", "", "high"], ["capped"]),
        node("ReduceMin", ["c"], ["low"], keepdims=0),
        node("Clip", ["capped", "low"], ["floored"]),
        node("Clip", ["floored", "", ""], ["output"]),
    ]
    return _save_graph(path, nodes, inits, (["N", 3, 8, 8], ["N", 4, 8, 8]), 17, "clip")


def test_clip_without_a_bound_or_with_a_computed_one_converts(tmp_path):
    _converts_like_onnxruntime(_clip_graph(tmp_path / "clip.onnx"), batch=2, atol=1e-6)


def test_a_weight_read_through_identity_converts(tmp_path, monkeypatch):
    """Exporters write a parameter a model uses twice as an `Identity` of one
    initializer (SSD300's VGG); onnx2torch reads layer weights only from initializers.
    onnxslim would fold it, but its graph is not always kept: here it fails."""
    import onnxslim

    def failing_slim(model):
        raise RuntimeError("slim failed")

    monkeypatch.setattr(onnxslim, "slim", failing_slim)
    rng = np.random.default_rng(3)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.4, (4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(0, 0.4, (4, 4, 3, 3)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.normal(0, 0.1, (4,)).astype(np.float32), "b"),
    ]
    node = helper.make_node
    nodes = [
        node("Identity", ["b"], ["b_again"]),
        node("Conv", ["input", "w", "b"], ["c1"], pads=[1, 1, 1, 1]),
        node("Relu", ["c1"], ["r1"]),
        node("Conv", ["r1", "w2", "b_again"], ["output"], pads=[1, 1, 1, 1]),
    ]
    shapes = (["N", 3, 8, 8], ["N", 4, 8, 8])
    _converts_like_onnxruntime(_save_graph(tmp_path / "m.onnx", nodes, inits, shapes, 17), 2)


def test_layer_norm_over_a_symbolic_dim_converts(tmp_path):
    """onnx2torch sized LayerNorm from the input's declared dims, 0 where symbolic
    (MobileViT's patches); the scale gives the normalized shape."""
    rng = np.random.default_rng(4)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.4, (8, 8)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(1, 0.1, (8,)).astype(np.float32), "scale"),
        numpy_helper.from_array(rng.normal(0, 0.1, (8,)).astype(np.float32), "bias"),
    ]
    nodes = [
        helper.make_node("LayerNormalization", ["input", "scale", "bias"], ["x"], axis=-1),
        helper.make_node("MatMul", ["x", "w"], ["output"]),
    ]
    path = _save_graph(tmp_path / "ln.onnx", nodes, inits, (["N", "L", "C"], ["N", "L", "C"]), 17)
    loaded = load_model(path, input_shape=[2, 5, 8])
    x = loaded.example_inputs(batch=2)
    (expected,) = _ort(path, {"input": x[0]})
    got = _outputs(loaded.module, *x)[0].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def _same_padded_graph(path, size: int | str):
    """PaddlePaddle's SAME padding: even kernels (one more pad after than before), a
    pooling, and a strided conv whose pads depend on the input size."""
    rng = np.random.default_rng(4)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.4, (4, 3, 2, 2)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(0, 0.4, (6, 4, 3, 3)).astype(np.float32), "w2"),
    ]
    node = helper.make_node
    nodes = [
        node("Conv", ["input", "w"], ["c"], auto_pad="SAME_UPPER", kernel_shape=[2, 2]),
        node("MaxPool", ["c"], ["p"], auto_pad="SAME_LOWER", kernel_shape=[2, 2]),
        node(
            "Conv", ["p", "w2"], ["output"], auto_pad="SAME_UPPER", kernel_shape=[3, 3],
            strides=[2, 2],
        ),
    ]  # fmt: skip
    out = size if isinstance(size, str) else (size + 1) // 2
    return _save_graph(path, nodes, inits, (["N", 3, size, size], ["N", 6, out, out]), 17, "same")


def test_same_padding_converts_as_explicit_pads(tmp_path):
    _converts_like_onnxruntime(_same_padded_graph(tmp_path / "same.onnx", 9), batch=2)


def test_same_padding_of_a_strided_conv_on_an_open_size_is_refused(tmp_path):
    with pytest.raises(UnsupportedModel, match="SAME_UPPER"):
        load_model(_same_padded_graph(tmp_path / "same.onnx", "H"), input_shape=[1, 3, 9, 9])


def test_a_split_into_one_part_converts(tmp_path, monkeypatch):
    """SSD300's head splits a tensor into a single part; its user must get the tensor.
    onnxslim drops such a Split, but its graph is not always kept: here it fails."""
    import onnxslim

    def failing_slim(model):
        raise RuntimeError("slim failed")

    monkeypatch.setattr(onnxslim, "slim", failing_slim)
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array(rng.normal(0, 0.4, (4, 3, 3, 3)).astype(np.float32), "w")]
    node = helper.make_node
    nodes = [
        node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1]),
        node("Split", ["c"], ["part"], axis=1),
        node("Relu", ["part"], ["output"]),
    ]
    path = _save_graph(tmp_path / "split.onnx", nodes, inits, (["N", 3, 8, 8], ["N", 4, 8, 8]), 13)
    _converts_like_onnxruntime(path, batch=2)
