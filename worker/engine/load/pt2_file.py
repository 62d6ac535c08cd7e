"""Loading a `.pt2` upload (`torch.export.save`), screened first: `ExportedProgram.module()`,
with aten convolutions, linears and norms raised back into nn layers (torch-pruning prunes
layers, not aten calls) and constant reshapes made channel-agnostic."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from contract import TensorInfo
from worker.engine.errors import UnsupportedModel
from worker.engine.load.screen import screen_pt2
from worker.engine.load.shapes import (
    resolve_input_shapes,
)
from worker.engine.load.trial import (
    check_finite_tensors,
    example_inputs,
    run_upload,
    short_error,
)
from worker.engine.measure.evaluate import same_outputs
from worker.engine.types import LoadedModel

# --- torch.export archives ------------------------------------------------------------------


def load_pt2(path: Path, given: list[tuple[int, ...]] | None) -> LoadedModel:
    screen_pt2(path)  # nothing unpickled, only a CNN's operators: before torch reads it
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.load(str(path))
        module = program.module()
    except Exception as exc:
        raise UnsupportedModel(f"cannot load the torch.export archive: {short_error(exc)}") from exc
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder"]
    user_inputs = list(program.graph_signature.user_inputs)
    by_name = {n.name: n for n in placeholders}
    inputs = []
    for name in user_inputs:
        value = by_name[name].meta.get("val") if name in by_name else None
        if not isinstance(value, torch.Tensor):
            raise UnsupportedModel(
                f"input {name!r} is not a tensor; only tensor inputs are supported"
            )
        if value.dtype != torch.float32:
            raise UnsupportedModel(
                f"input {name!r} is {value.dtype}; only float32 inputs are supported",
                code="unsupported_op",
            )
        inputs.append(TensorInfo(name=name, shape=_symbolic_shape(value), dtype="float32"))
    output_node = next(n for n in program.graph.nodes if n.op == "output")
    output_values = [
        a.meta.get("val") if isinstance(a, fx.Node) else None for a in output_node.args[0]
    ]
    user_outputs = list(program.graph_signature.user_outputs)
    outputs = [
        TensorInfo(name=str(name), shape=_symbolic_shape(v) if isinstance(v, torch.Tensor) else [])
        for name, v in zip(user_outputs, output_values[-len(user_outputs) :], strict=False)
    ]
    shapes = resolve_input_shapes(inputs, given)
    check_finite_tensors(list(module.state_dict().items()))
    example = example_inputs(shapes)
    code = "input_shape_mismatch" if given else "invalid_model"
    reference = run_upload(module, example, "the exported program", code=code)
    try:
        module = raise_aten_layers(_plain_graph_module(module), example)
    except Exception as exc:
        raise UnsupportedModel(
            f"cannot re-express the exported program as layers: {short_error(exc)}",
            code="unsupported_op",
        ) from exc
    after = run_upload(module, example, "the exported program (with layers)")
    if not same_outputs(after, reference):
        raise UnsupportedModel("re-expressing the exported program as layers changed its outputs")
    return LoadedModel(module, "pt2", inputs, outputs, shapes)


def _symbolic_shape(value: torch.Tensor) -> list[int | str | None]:
    shape: list[int | str | None] = []
    for j, dim in enumerate(value.shape):
        if isinstance(dim, int):
            shape.append(dim)
        else:
            shape.append("batch" if j == 0 else str(dim))
    return shape


def _plain_graph_module(unlifted: fx.GraphModule) -> fx.GraphModule:
    """A regular GraphModule (`.eval()`/`.train()` work, flat positional inputs) from
    `ExportedProgram.module()`, sharing its parameters and buffers."""
    graph = unlifted.graph
    for node in list(graph.nodes):
        if node.op == "call_module" and str(node.target) == "_guards_fn":
            graph.erase_node(node)
        elif node.op == "call_function" and node.target is torch.ops.aten.sym_size.int:
            # `x.size(d)`: the TorchScript exporter records a tensor's size calls and keeps
            # them dynamic, where it bakes aten.sym_size's traced result into the graph
            # (a view(batch, 4, -1) then ran at batch 1 only).
            with graph.inserting_before(node):
                size = graph.call_method("size", tuple(node.args))
            size.meta = dict(node.meta)
            node.replace_all_uses_with(size)
            graph.erase_node(node)
    graph.set_codegen(fx.graph.CodeGen())
    output = next(n for n in graph.nodes if n.op == "output")
    values = output.args[0]
    if isinstance(values, list | tuple) and len(values) == 1:
        output.args = (values[0],)
    elif isinstance(values, list):
        output.args = (tuple(values),)
    return fx.GraphModule(unlifted, graph)


def _as_torch_reshape(graph: fx.Graph, node: fx.Node) -> None:
    """`torch.reshape` in place of an aten view or reshape: the TorchScript exporter keeps
    the sizes it is given from `x.size(d)` dynamic in it, where it bakes their traced
    values into an aten overload's call (a view(batch, 4, -1) ran at batch 1 only)."""
    sizes = node.args[1]
    assert isinstance(sizes, list | tuple)  # an aten view's shape argument
    with graph.inserting_before(node):
        new = graph.call_function(torch.reshape, (node.args[0], tuple(sizes)))
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    graph.erase_node(node)


def _reads_a_size(sizes: object) -> bool:
    """Whether an aten call's size list holds a value computed in the graph (`x.size(0)`)."""
    return isinstance(sizes, list | tuple) and any(isinstance(v, fx.Node) for v in sizes)


def _as_tensor_expand(graph: fx.Graph, node: fx.Node) -> None:
    """`x.expand(*sizes)` in place of aten's expand, for the same reason as
    `_as_torch_reshape`: a ViT's class token expanded to `x.size(0)` came out expanded to
    1, and its export ran at batch 1 only."""
    sizes = node.args[1]
    assert isinstance(sizes, list | tuple)
    with graph.inserting_before(node):
        new = graph.call_method("expand", (node.args[0], *sizes))
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    graph.erase_node(node)


def raise_aten_layers(gm: fx.GraphModule, example: Sequence[torch.Tensor]) -> fx.GraphModule:
    """Turn aten convolution/linear/norm calls on parameters back into nn layers."""
    from torch.fx.passes.shape_prop import ShapeProp

    from worker.engine.load import fx_rewrites as conv

    graph = gm.graph
    with torch.no_grad():
        ShapeProp(gm).propagate(*example)
    aten = torch.ops.aten
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        target = node.target
        layer: nn.Module | None = None
        if target in (
            aten.conv1d.default,
            aten.conv2d.default,
            aten.conv3d.default,
            aten.conv1d.padding,
            aten.conv2d.padding,
            aten.conv3d.padding,
        ):
            layer = _conv_layer(gm, node, transposed=False)
        elif target in (
            aten.conv_transpose1d.default,
            aten.conv_transpose2d.input,
            aten.conv_transpose3d.input,
        ):
            layer = _conv_layer(gm, node, transposed=True)
        elif target is aten.linear.default:
            layer = _linear_layer(gm, node)
        elif target in (aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default):
            layer = _batch_norm_layer(gm, node)
        elif target is aten.layer_norm.default:
            layer = _layer_norm_layer(gm, node)
        elif target is aten.group_norm.default:
            layer = _group_norm_layer(gm, node)
        elif target in (aten.view.default, aten.reshape.default, aten._unsafe_view.default):
            if not conv.symbolic_reshape(gm, node, node.args[0], list(node.args[1])):
                _as_torch_reshape(graph, node)
            continue
        elif target is aten.expand.default and _reads_a_size(node.args[1]):
            _as_tensor_expand(graph, node)
            continue
        if layer is None:
            continue
        layer.eval()  # the graph baked eval-mode norms in; .train() later is the caller's choice
        name = _install(gm, node, layer)
        with graph.inserting_before(node):
            new = graph.call_module(name, (node.args[0],))
        if target is aten._native_batch_norm_legit_no_training.default:
            for user in list(node.users):
                if user.op == "call_function" and user.args[1] == 0:
                    user.replace_all_uses_with(new)
        else:
            node.replace_all_uses_with(new)
    graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    graph.lint()
    gm.recompile()
    return gm


def _param(gm: fx.GraphModule, node: Any) -> torch.Tensor | None:
    if node is None:
        return None
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        raise ValueError("not a parameter")
    obj: Any = gm
    for part in str(node.target).split("."):
        obj = getattr(obj, part)
    return obj


def _adopt(layer: nn.Module, name: str, tensor: torch.Tensor | None) -> None:
    """Give `layer` the very tensor object the graph used (shared, not copied)."""
    if tensor is None:
        setattr(layer, name, None)
    elif isinstance(tensor, nn.Parameter):
        layer._parameters[name] = tensor
    else:
        layer._parameters.pop(name, None)
        layer._buffers[name] = tensor


def _conv_layer(gm: fx.GraphModule, node: fx.Node, transposed: bool) -> nn.Module | None:
    args: list[Any] = list(node.args) + [None] * 8
    try:
        weight, bias = _param(gm, args[1]), _param(gm, args[2])
    except ValueError:
        return None
    assert weight is not None
    spatial = weight.dim() - 2

    def dims(value: Any, default: int) -> Any:
        if isinstance(value, str):
            return value  # padding="same" / "valid"
        values = (
            list(value)
            if isinstance(value, list | tuple)
            else [default if value is None else value]
        )
        return tuple(values * spatial if len(values) == 1 else values)

    if transposed:
        stride, padding, output_padding, groups, dilation = (
            dims(args[3], 1),
            dims(args[4], 0),
            dims(args[5], 0),
            args[6] or 1,
            dims(args[7], 1),
        )
        cls: Any = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[spatial - 1]
        layer = cls(
            weight.shape[0],
            weight.shape[1] * groups,
            tuple(weight.shape[2:]),
            stride=stride,
            padding=padding,
            output_padding=output_padding,
            groups=groups,
            dilation=dilation,
            bias=bias is not None,
        )
    else:
        stride, padding, dilation, groups = (
            dims(args[3], 1),
            dims(args[4], 0),
            dims(args[5], 1),
            args[6] or 1,
        )
        cls = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[spatial - 1]
        layer = cls(
            weight.shape[1] * groups,
            weight.shape[0],
            tuple(weight.shape[2:]),
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias is not None,
        )
    _adopt(layer, "weight", weight)
    _adopt(layer, "bias", bias)
    return layer


def _linear_layer(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    args: list[Any] = list(node.args) + [None]
    try:
        weight, bias = _param(gm, args[1]), _param(gm, args[2])
    except ValueError:
        return None
    assert weight is not None
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    _adopt(layer, "weight", weight)
    _adopt(layer, "bias", bias)
    return layer


def _batch_norm_layer(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    args: list[Any] = list(node.args)
    x = args[0]
    try:
        weight, bias, mean, var = (_param(gm, a) for a in args[1:5])
    except ValueError:
        return None
    rank = len(x.meta["tensor_meta"].shape) if "tensor_meta" in getattr(x, "meta", {}) else 4
    if mean is None or var is None:
        return None
    if node.target is torch.ops.aten.batch_norm.default:
        momentum, eps = args[6], args[7]
    else:
        momentum, eps = args[5], args[6]
    cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}[rank]
    layer = cls(mean.shape[0], eps=eps, momentum=momentum, affine=weight is not None)
    _adopt(layer, "weight", weight)
    _adopt(layer, "bias", bias)
    _adopt(layer, "running_mean", mean)
    _adopt(layer, "running_var", var)
    return layer


def _layer_norm_layer(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    args: list[Any] = list(node.args) + [None] * 4
    try:
        weight, bias = _param(gm, args[2]), _param(gm, args[3])
    except ValueError:
        return None
    layer = nn.LayerNorm(
        list(args[1]),
        eps=args[4] if args[4] is not None else 1e-5,
        elementwise_affine=weight is not None,
        bias=bias is not None,
    )
    _adopt(layer, "weight", weight)
    _adopt(layer, "bias", bias)
    return layer


def _group_norm_layer(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    args: list[Any] = list(node.args) + [None] * 4
    try:
        weight, bias = _param(gm, args[2]), _param(gm, args[3])
    except ValueError:
        return None
    channels = args[0].meta["tensor_meta"].shape[1]
    layer = nn.GroupNorm(
        args[1], channels, eps=args[4] if args[4] is not None else 1e-5, affine=weight is not None
    )
    _adopt(layer, "weight", weight)
    _adopt(layer, "bias", bias)
    return layer


def _install(gm: fx.GraphModule, node: fx.Node, layer: nn.Module) -> str:
    """Put `layer` where its weight's owner was (`layer1.0.conv1`), when that owner is a
    bare container of exactly these tensors; else beside it under a fresh name."""
    weight = next((a for a in node.args[1:] if isinstance(a, fx.Node) and a.op == "get_attr"), None)
    path = (
        str(weight.target).rsplit(".", 1)[0]
        if weight is not None and "." in str(weight.target)
        else ""
    )
    if path:
        owner = gm.get_submodule(path)
        held = set(layer._parameters) | set(layer._buffers)
        own = set(owner._parameters) | set(owner._buffers)
        if type(owner) is nn.Module and not owner._modules and own <= held:
            for name in own:  # e.g. num_batches_tracked: keep the very tensor
                tensor = getattr(owner, name)
                if tensor is not None and getattr(layer, name, None) is not tensor:
                    _adopt(layer, name, tensor)
            parent, _, leaf = path.rpartition(".")
            setattr(gm.get_submodule(parent) if parent else gm, leaf, layer)
            return path
    base = (path or str(node.name)).replace(".", "_")
    name, i = base, 1
    while hasattr(gm, name):
        name, i = f"{base}_{i}", i + 1
    gm.add_submodule(name, layer)
    return name
