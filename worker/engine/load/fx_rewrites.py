"""FX rewrites that make a converted graph prunable: plain torch where torch-pruning needs
it. Used on the graphs onnx2torch builds (`make_prunable`, `fix_outputs`) and on `.pt2`
graphs (`symbolic_reshape`); onnx2torch's modules are recognised by their class names, so
importing this module does not load onnx2torch.

`make_prunable(gm, inputs)` rewrites an onnx2torch GraphModule:
- per-channel constants (`x * c`, `x + c` with `c` of shape (C,1,1), as tf2onnx leaves
  a BatchNorm) become `ChannelConst` modules, which `preflight.CUSTOM_PRUNERS` teaches
  torch-pruning to prune together with the channels they scale;
- `Reshape` by a constant that only flattens becomes `torch.flatten`, and other constant
  reshapes keep the batch and channel dims symbolic, so pruning channels does not
  break a shape baked into the graph;
- `MatMul` by a constant matrix becomes `nn.Linear`;
- a group norm exported as reshape + instance norm + reshape becomes `nn.GroupNorm`;
- a convolution across the channels of a pooled vector (ECA attention: reshape to
  (N, 1, C), Conv1d, reshape back) becomes one `ChannelConv1d`, and a reshape of a
  rank-4 tensor that splits or merges its channel dim with others (a detection head's
  (N, A*K, H, W) -> (N, A, K, H, W), attention heads) or a MatMul of two computed
  tensors becomes a `ChannelRegroup`, which `tp_extensions` teaches torch-pruning not to
  follow (see there); channel shuffles become one `ChannelShuffle`.

`fix_outputs` makes the graph return exactly the ONNX outputs, in order.
The modules these rewrites create live in `channel_modules.py`.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import fx, nn

from worker.engine.load.channel_modules import (
    ChannelConst,
    ChannelConv1d,
    ChannelRegroup,
    ChannelShuffle,
)


def make_prunable(gm: fx.GraphModule, inputs: Sequence[torch.Tensor]) -> fx.GraphModule:
    """Rewrite an onnx2torch GraphModule in place (see the module docstring); returns it."""
    from torch.fx.passes.shape_prop import ShapeProp

    at_batch_two = _shapes_at_batch_two(gm, inputs)
    with torch.no_grad():
        ShapeProp(gm).propagate(*inputs)
    for node, shape in at_batch_two.items():
        node.meta[_BATCH_TWO] = shape
    fold_group_norms(gm)
    channel_axis = _channel_axes(gm)
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        module = gm.get_submodule(node.target)
        kind = type(module).__name__
        if kind == "OnnxBinaryMathOperation":
            _rewrite_channel_const(gm, node, module, channel_axis)
        elif kind == "OnnxReshape":
            _rewrite_reshape(gm, node)
        elif kind == "OnnxMatMul":
            _rewrite_matmul(gm, node)
        elif kind == "OnnxResize":
            _rewrite_resize(gm, node, module)
    split_channel_producers(gm)
    fold_channel_shuffles(gm)
    fold_channel_convs(gm)
    fence_channel_regroups(gm)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    _drop_unused_initializers(gm)
    gm.graph.lint()
    gm.recompile()
    return gm


# Node meta key: the node's output shape when the inputs have batch 2 (see symbolic_reshape).
_BATCH_TWO = "secateurs_shape_at_batch_two"


def _shapes_at_batch_two(gm: fx.GraphModule, inputs: Sequence[torch.Tensor]) -> dict:
    """Every node's output shape at batch 2, or nothing when the graph runs at batch 1 only.

    At batch 1 a reshape cannot tell a kept dim from a batch dim of size 1 folded into it:
    (T, 1, H) -> [-1, H] looks like it keeps T, and is (T * B, H) at any other batch."""
    from torch.fx.passes.shape_prop import ShapeProp

    bigger = tuple(torch.cat([x, x]) if x.dim() else x for x in inputs)
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(*bigger)
    except Exception:  # a batch baked into the graph: batch 1 is all it runs at
        return {}
    return {n: _meta_shape(n) for n in gm.graph.nodes if _meta_shape(n) is not None}


def fix_outputs(gm: fx.GraphModule, output_names: Sequence[str]) -> fx.GraphModule:
    """Make an onnx2torch graph return exactly the ONNX outputs, in order (it returns a
    multi-output node's whole tuple when several outputs come from one node)."""
    producers: dict[str, fx.Node] = {}
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            producers[node.target] = node
        if node.op != "call_module":
            continue
        mapping = getattr(gm.get_submodule(node.target), "onnx_mapping", None)
        if mapping is None:
            continue
        if len(mapping.outputs) == 1:
            producers[mapping.outputs[0]] = node
        else:
            for user in node.users:
                if user.op == "call_function" and user.target is operator.getitem:
                    producers[mapping.outputs[user.args[1]]] = user
            for i, name in enumerate(mapping.outputs):
                if name and name not in producers:
                    with gm.graph.inserting_after(node):
                        producers[name] = gm.graph.call_function(operator.getitem, (node, i))
    missing = [name for name in output_names if name not in producers]
    if missing:
        raise NotImplementedError(f"graph outputs not produced by any node: {missing}")
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    values = [producers[name] for name in output_names]
    out_node.args = (values[0] if len(values) == 1 else tuple(values),)
    gm.recompile()
    return gm


def _meta_shape(node: Any) -> tuple[int, ...] | None:
    meta = getattr(node, "meta", {}).get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


_CHANNELS_FIRST = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.GroupNorm,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
)


def _channel_axes(gm: fx.GraphModule) -> dict[fx.Node, int]:
    """For each node whose output has a known channel axis, that axis.

    Convolutions and norms put channels on axis 1, Linear on the last axis; Transpose moves
    the axis, and ops that keep their input's shape keep it.
    """
    axes: dict[fx.Node, int] = {}
    for node in gm.graph.nodes:
        shape = _meta_shape(node)
        if shape is None or len(shape) < 2:
            continue
        module: Any = gm.get_submodule(str(node.target)) if node.op == "call_module" else None
        kind = type(module).__name__
        if (
            isinstance(module, _CHANNELS_FIRST)
            or kind.startswith("OnnxGlobalAveragePool")
            or type(module).__name__ == "GlobalMaxPool"
        ):
            axes[node] = 1
        elif isinstance(module, nn.Linear):
            axes[node] = len(shape) - 1
        elif kind == "OnnxTranspose" and node.args and node.args[0] in axes:
            perm = list(module.perm or range(len(shape))[::-1])
            axes[node] = perm.index(axes[node.args[0]])
        else:
            for arg in node.all_input_nodes:
                arg_shape = _meta_shape(arg)
                if arg in axes and arg_shape is not None:
                    if (
                        len(arg_shape) == len(shape)
                        and arg_shape[axes[arg]] == shape[axes[arg]]
                        and (node.op != "call_module" or _keeps_shape(kind))
                    ):
                        axes[node] = axes[arg]
                        break
    return axes


def _keeps_shape(kind: str) -> bool:
    """Module kinds that never move data between axes (so a channel axis survives them)."""
    return not any(
        word in kind
        for word in (
            "Reshape",
            "Transpose",
            "Flatten",
            "Split",
            "Slice",
            "Gather",
            "Squeeze",
            "Unsqueeze",
            "Expand",
            "Tile",
            "DepthToSpace",
            "Resize",
            "Reduce",
            "MatMul",
            "Gemm",
            "Concat",
            "Pad",
            "Softmax",
            "TopK",
            "Einsum",
            "Shape",
            "Range",
            "Constant",
        )
    )


def _constant_of(gm: fx.GraphModule, node: Any) -> torch.Tensor | None:
    """The tensor behind a get_attr node or an argument-less OnnxConstant, else None."""
    if not isinstance(node, fx.Node):
        return None
    if node.op == "get_attr":
        value = _get_attr(gm, str(node.target))
        return value if isinstance(value, torch.Tensor) else None
    if node.op == "call_module" and not node.args:
        module = gm.get_submodule(str(node.target))
        value = getattr(module, "value", None)
        if type(module).__name__ == "OnnxConstant" and isinstance(value, torch.Tensor):
            return value
    return None


def _get_attr(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _rewrite_channel_const(
    gm: fx.GraphModule, node: fx.Node, module: nn.Module, channel_axis: dict[fx.Node, int]
) -> None:
    if getattr(module, "broadcast", None) == 1 or len(node.args) != 2:
        return  # legacy (opset < 7) broadcasting: leave as it is
    first, second = node.args
    for const_first, act, const_node in ((False, first, second), (True, second, first)):
        const = _constant_of(gm, const_node)
        if const is None or not isinstance(act, fx.Node) or act not in channel_axis:
            continue
        if not const.is_floating_point() or const.numel() < 2:
            return
        act_shape = _meta_shape(act)
        out_shape = _meta_shape(node)
        big = [d for d, size in enumerate(const.shape) if size > 1]
        if (
            act_shape is None
            or out_shape != act_shape
            or len(big) != 1
            or const.dim() > len(act_shape)
        ):
            return
        dim = big[0]
        axis = dim + len(act_shape) - const.dim()
        if axis != channel_axis[act] or const.shape[dim] != act_shape[axis]:
            return
        op = {"add": "add", "sub": "sub", "mul": "mul", "_onnx_div": "div", "div": "div"}.get(
            getattr(module.math_op_function, "__name__", ""), None
        )
        if op is None:
            return
        replacement = ChannelConst(op, const, dim, const_first)
        _swap_module(gm, node, replacement, (act,))
        channel_axis[node] = channel_axis[act]
        return


def _swap_module(gm: fx.GraphModule, node: fx.Node, module: nn.Module, args: tuple) -> None:
    parent, _, name = str(node.target).rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, name, module)
    node.args = args
    node.kwargs = {}


def _rewrite_reshape(gm: fx.GraphModule, node: fx.Node) -> None:
    if len(node.args) != 2:
        return
    x, shape_node = node.args
    target = _constant_of(gm, shape_node)
    if target is not None and isinstance(x, fx.Node):
        symbolic_reshape(gm, node, x, [int(v) for v in target.flatten().tolist()], zero_copies=True)


def symbolic_reshape(
    gm: fx.GraphModule,
    node: fx.Node,
    x: Any,
    target: list[Any],
    *,
    zero_copies: bool = False,
) -> bool:
    """Replace a reshape of `x` to the constant `target` by one that survives pruning.

    The leading dims the reshape keeps unchanged (batch, channels) are taken from `x` at
    run time instead of the constant; a reshape that flattens the rest becomes
    `torch.flatten`. `target` items may be ints or graph nodes (symbolic sizes);
    `zero_copies`: a 0 means "copy this dim" (ONNX). Needs ShapeProp metadata.
    """
    in_shape, out_shape = _meta_shape(x), _meta_shape(node)
    if in_shape is None or out_shape is None or len(target) != len(out_shape):
        return False
    copy_values = {-1, 0} if zero_copies else {-1}

    def keeps(j: int) -> bool:
        item = target[j]
        if isinstance(item, fx.Node):
            # A size read from a tensor keeps its dim; one computed from sizes (a
            # sequence-first attention's view to L * N rows) folds dims together.
            return _is_size_read(item)
        return item in copy_values or item == in_shape[j]

    # A dim is kept only when it is kept at batch 2 too (a -1 may absorb the batch).
    in_two, out_two = _shape_at_batch_two(x), _shape_at_batch_two(node)
    prefix = 0
    while (
        prefix < min(len(in_shape), len(out_shape))
        and in_shape[prefix] == out_shape[prefix]
        and keeps(prefix)
        and (in_two is None or out_two is None or in_two[prefix] == out_two[prefix])
    ):
        prefix += 1
    if prefix == 0:
        return False
    graph = gm.graph
    with graph.inserting_before(node):
        if prefix == len(out_shape) == len(in_shape):
            new = x  # reshapes to its own shape
        elif prefix == len(out_shape) - 1 < len(in_shape) and out_shape[-1] == math.prod(
            in_shape[prefix:]
        ):
            new = graph.call_function(torch.flatten, (x, prefix))
        else:
            sizes: list[Any] = [graph.call_method("size", (x, i)) for i in range(prefix)]
            for i, item in enumerate(target[prefix:], start=prefix):
                copy = zero_copies and isinstance(item, int) and item == 0
                sizes.append(graph.call_method("size", (x, i)) if copy else item)
            new = graph.call_function(torch.reshape, (x, tuple(sizes)))
    if new is not x:
        new.meta = dict(node.meta)  # same output: later rewrites read its shape
    node.replace_all_uses_with(new)
    graph.erase_node(node)
    return True


def _is_size_read(node: fx.Node) -> bool:
    """`x.size(d)` or aten's `sym_size`: a tensor's own size, not arithmetic on sizes."""
    if node.op == "call_method":
        return node.target == "size"
    return node.op == "call_function" and "sym_size" in str(node.target)


def _shape_at_batch_two(node: Any) -> tuple[int, ...] | None:
    return node.meta.get(_BATCH_TWO) if isinstance(node, fx.Node) else None


def _rewrite_matmul(gm: fx.GraphModule, node: fx.Node) -> None:
    """x @ W for a constant matrix W -> nn.Linear (which torch-pruning understands)."""
    if len(node.args) != 2:
        return
    x, w_node = node.args
    weight = _constant_of(gm, w_node)
    if weight is None or weight.dim() != 2 or not weight.is_floating_point():
        return
    x_shape = _meta_shape(x)
    if x_shape is None or len(x_shape) < 2 or x_shape[-1] != weight.shape[0]:
        return
    bias_node, bias = _following_bias(gm, node, weight.shape[1])
    linear = nn.Linear(weight.shape[0], weight.shape[1], bias=bias is not None)
    with torch.no_grad():
        linear.weight.copy_(weight.t().float())
        if bias is not None:
            linear.bias.copy_(bias.float())
    _swap_module(gm, node, linear, (x,))
    if bias_node is not None:  # MatMul + Add(bias) -> one Linear
        bias_node.replace_all_uses_with(node)
        gm.graph.erase_node(bias_node)


def _following_bias(gm: fx.GraphModule, node: fx.Node, features: int) -> tuple[Any, Any]:
    """The `Add` of a constant vector that alone consumes `node`, and that vector."""
    users = list(node.users)
    if len(users) != 1 or users[0].op != "call_module" or len(users[0].args) != 2:
        return None, None
    add = users[0]
    module = gm.get_submodule(str(add.target))
    if (
        type(module).__name__ != "OnnxBinaryMathOperation"
        or getattr(module.math_op_function, "__name__", "") != "add"
        or getattr(module, "broadcast", None) == 1
    ):
        return None, None
    other = add.args[1] if add.args[0] is node else add.args[0]
    bias = _constant_of(gm, other)
    if bias is None or not bias.is_floating_point() or tuple(bias.shape) != (features,):
        return None, None
    return add, bias


def _rewrite_resize(gm: fx.GraphModule, node: fx.Node, module: Any) -> None:
    """Resize by constant scales or sizes -> `F.interpolate` with them as Python numbers:
    the same computation, without the check that `sizes` repeats the channel count (which
    pruning changes) and without reading tensors at run time (which torch.export cannot)."""
    from onnx2torch.node_converters.resize import _onnx_mode_to_torch_mode

    names = ("roi", "scales", "sizes")
    given = dict(zip(names, node.args[1:], strict=False)) | dict(node.kwargs)
    roi = _constant_of(gm, given.get("roi"))
    if given.get("roi") is not None and (roi is None or (roi.numel() and not module.ignore_roi)):
        return
    x = node.args[0]
    shape = _meta_shape(x)
    if shape is None or len(shape) < 3:
        return
    kwargs: dict[str, Any] = {
        "mode": _onnx_mode_to_torch_mode(module.onnx_mode, len(shape) - 2),
        "align_corners": module.align_corners,
    }
    sizes, scales = _constant_of(gm, given.get("sizes")), _constant_of(gm, given.get("scales"))
    if sizes is not None and sizes.numel():
        kwargs["size"] = tuple(int(v) for v in sizes.tolist()[2:])
    elif scales is not None and scales.numel() and scales.tolist()[:2] == [1, 1]:
        kwargs["scale_factor"] = tuple(float(v) for v in scales.tolist()[2:])
    else:
        return
    with gm.graph.inserting_before(node):
        new = gm.graph.call_function(F.interpolate, (x,), kwargs)
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)


def _drop_unused_initializers(gm: fx.GraphModule) -> None:
    container = getattr(gm, "initializers", None)
    if container is None:
        return
    used = {
        str(n.target).split(".", 1)[1]
        for n in gm.graph.nodes
        if n.op == "get_attr" and str(n.target).startswith("initializers.")
    }
    for name in list(container._buffers):
        if name not in used:
            del container._buffers[name]


# --- channel splits -------------------------------------------------------------------------

_SPLIT_MODULES = ("OnnxSplit13", "OnnxSplit", "Split")


def split_channel_producers(gm: fx.GraphModule) -> int:
    """`conv -> (per-channel ops) -> split along channels` becomes one conv (and one copy
    of the per-channel ops) per part; returns how many producers were rewritten.

    torch-pruning cannot follow a channel split whose parts are used more than once (the
    C2f blocks of YOLOv8 split their first conv's output and use one half twice), and it
    cannot move the bounds of a channel slice. Split into separate convolutions, each part
    is an ordinary prunable group, and the model computes exactly the same. A split is an
    ONNX Split, or Slices along the channels. Needs ShapeProp metadata.
    """
    rewritten = 0
    for node in list(gm.graph.nodes):
        parts = _channel_parts(gm, node)
        if parts is None:
            continue
        chain = _per_channel_chain(gm, node)
        if chain is None:
            continue
        _split_chain(gm, chain, parts)
        rewritten += 1
    if rewritten:
        gm.graph.eliminate_dead_code()
        gm.delete_all_unused_submodules()
        gm.recompile()
    return rewritten


def _module_kind(gm: fx.GraphModule, node: fx.Node) -> str:
    return type(gm.get_submodule(str(node.target))).__name__ if node.op == "call_module" else ""


def _channel_parts(gm: fx.GraphModule, x: fx.Node) -> list[tuple[fx.Node, int, int]] | None:
    """When every use of `x` takes a static channel range (Split outputs, channel
    Slices): (the node that yields the range, first channel, end), else None."""
    shape = _meta_shape(x)
    if shape is None or len(shape) < 3 or not x.users:
        return None
    channels = shape[1]
    parts: list[tuple[fx.Node, int, int]] = []
    for user in x.users:
        kind = _module_kind(gm, user)
        if kind in _SPLIT_MODULES and user.args[0] is x:
            sizes = _split_sizes(user, shape)
            if sizes is None or any(
                u.op != "call_function" or u.target is not operator.getitem for u in user.users
            ):
                return None
            offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
            for getter in user.users:
                index: Any = getter.args[1]
                parts.append((getter, offsets[index], offsets[index + 1]))
        elif kind == "OnnxSlice" and user.args[0] is x:
            bounds = _channel_slice_bounds(gm, user, channels)
            if bounds is None:
                return None
            parts.append((user, *bounds))
        else:
            return None
    if all((start, stop) == (0, channels) for _, start, stop in parts):
        return None
    return parts


def _split_sizes(split: fx.Node, in_shape: tuple[int, ...]) -> list[int] | None:
    """The part sizes of a split along dim 1 (from the traced output shapes)."""
    meta = split.meta.get("tensor_meta")
    if not isinstance(meta, list | tuple):
        return None
    shapes = [tuple(m.shape) for m in meta]
    if any(s[:1] + s[2:] != in_shape[:1] + in_shape[2:] for s in shapes):
        return None  # not a split along the channels
    sizes = [s[1] for s in shapes]
    return sizes if sum(sizes) == in_shape[1] else None


def _channel_slice_bounds(
    gm: fx.GraphModule, node: fx.Node, channels: int
) -> tuple[int, int] | None:
    """(start, stop) of an OnnxSlice taking a static step-1 range of channels only."""
    args = list(node.args) + [None] * 3
    values = [_constant_of(gm, a) if a is not None else None for a in args[1:5]]
    starts, ends, axes, steps = values
    if starts is None or ends is None or starts.numel() != 1 or ends.numel() != 1:
        return None
    if (axes is None and args[3] is not None) or (steps is None and args[4] is not None):
        return None  # computed axes or steps
    rank = len(_meta_shape(node) or ())
    axis = int(axes.item()) if axes is not None else 0
    if axis % max(rank, 1) != 1 or (steps is not None and int(steps.item()) != 1):
        return None
    start, stop, _ = slice(int(starts.item()), int(ends.item())).indices(channels)
    out = _meta_shape(node)
    return (start, stop) if out is not None and out[1] == stop - start > 0 else None


def _per_channel_chain(gm: fx.GraphModule, x: Any) -> list[fx.Node] | None:
    """`x` and the nodes between it and the one convolution it comes from, in graph order,
    when all of them act channel by channel and nothing else uses them; else None."""
    if not isinstance(x, fx.Node):
        return None
    shape = _meta_shape(x)
    seen: set[fx.Node] = set()
    stack = [x]
    conv = None
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        module = gm.get_submodule(str(node.target)) if node.op == "call_module" else None
        if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d) and module.groups == 1:
            if conv is not None and conv is not node:
                return None
            conv = node
            continue
        if not _acts_per_channel(gm, node, module, shape):
            return None
        stack.extend(a for a in node.all_input_nodes if a.op != "get_attr")
    if conv is None or _meta_shape(conv) != shape:
        return None
    chain = [n for n in gm.graph.nodes if n in seen]
    for n in chain:  # nothing outside the chain may use its intermediate results
        if n is not x and any(u not in seen for u in n.users):
            return None
    return chain


def _acts_per_channel(gm: fx.GraphModule, node: fx.Node, module: Any, shape: Any) -> bool:
    if _meta_shape(node) != shape or node.op not in ("call_module", "call_function"):
        return False
    if isinstance(module, nn.modules.batchnorm._BatchNorm | ChannelConst):
        return True
    if module is not None and (
        any(True for _ in module.parameters()) or any(b.numel() > 1 for b in module.buffers())
    ):
        return False
    if getattr(module, "broadcast", None) == 1:
        return False
    for arg in node.all_input_nodes:
        if arg.op == "get_attr":
            const = _constant_of(gm, arg)
            if const is None or const.numel() > 1:
                return False
        elif _meta_shape(arg) != shape:
            return False
    return True


def _split_chain(
    gm: fx.GraphModule, chain: list[fx.Node], parts: list[tuple[fx.Node, int, int]]
) -> None:
    """Give each channel range its own copy of `chain`, and use it where the range was."""
    graph = gm.graph
    copies: dict[tuple[int, int], fx.Node] = {}
    first_use = min((part for part, _, _ in parts), key=lambda n: list(graph.nodes).index(n))
    for part, start, stop in parts:
        if (start, stop) not in copies:
            copies[(start, stop)] = _copy_chain(
                gm, chain, slice(start, stop), first_use, len(copies)
            )
        part.replace_all_uses_with(copies[(start, stop)])
    for part, _, _ in parts:
        split = part.args[0] if part.op == "call_function" else None
        graph.erase_node(part)
        if isinstance(split, fx.Node) and not split.users:
            graph.erase_node(split)


def _copy_chain(
    gm: fx.GraphModule, chain: list[fx.Node], channels: slice, before: fx.Node, k: int
) -> fx.Node:
    graph = gm.graph
    clones: dict[fx.Node, fx.Node] = {}

    def renamed(arg: fx.Node, clones: dict[fx.Node, fx.Node] = clones) -> fx.Node:
        return clones.get(arg, arg)

    with graph.inserting_before(before):
        for node in chain:
            args = fx.map_arg(node.args, renamed)
            kwargs = fx.map_arg(node.kwargs, renamed)
            if node.op == "call_module":
                name = f"{node.target}__part{k}"
                gm.add_submodule(name, _channel_slice(gm.get_submodule(str(node.target)), channels))
                clones[node] = graph.call_module(name, args, kwargs)
            else:
                clones[node] = graph.call_function(node.target, args, kwargs)  # type: ignore[arg-type]
    return clones[chain[-1]]


def _channel_slice(module: nn.Module, channels: slice) -> nn.Module:
    """A copy of a per-channel module (conv, norm, constant) for some of its channels."""
    import copy

    part = copy.deepcopy(module)
    with torch.no_grad():
        if isinstance(part, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            part.weight = nn.Parameter(part.weight[channels].clone())
            if part.bias is not None:
                part.bias = nn.Parameter(part.bias[channels].clone())
            part.out_channels = part.weight.shape[0]
        elif isinstance(part, nn.modules.batchnorm._BatchNorm):
            for name in ("weight", "bias"):
                if getattr(part, name) is not None:
                    setattr(part, name, nn.Parameter(getattr(part, name)[channels].clone()))
            for name in ("running_mean", "running_var"):
                if getattr(part, name) is not None:
                    setattr(part, name, getattr(part, name)[channels].clone())
            part.num_features = channels.stop - channels.start
        elif isinstance(part, ChannelConst):
            index = [slice(None)] * part.weight.dim()
            index[part.dim] = channels
            part.weight = nn.Parameter(part.weight[tuple(index)].clone())
    return part


# --- channel shuffles -----------------------------------------------------------------------


def fold_channel_shuffles(gm: fx.GraphModule) -> int:
    """Replace every reshape -> transpose(1, 2) -> reshape that permutes the channels of an
    (N, C, ...) tensor by a `ChannelShuffle`; returns how many. Needs ShapeProp metadata."""
    count = 0
    for node in list(gm.graph.nodes):
        found = _shuffle_at(gm, node)
        if found is None:
            continue
        x, groups = found
        shape = _meta_shape(x)
        assert shape is not None
        _call_instead(gm, node, f"channel_shuffle_{count}", ChannelShuffle(groups, shape[1]), x)
        count += 1
    return _tidied(gm, count)


def _reshape_input(gm: fx.GraphModule, node: Any) -> Any:
    """The tensor a reshape-like node reshapes, or None."""
    if not isinstance(node, fx.Node) or not node.args:
        return None
    if node.op == "call_function" and node.target in (torch.reshape, torch.flatten):
        return node.args[0]
    if node.op == "call_method" and node.target in ("reshape", "view"):
        return node.args[0]
    if _module_kind(gm, node) == "OnnxReshape":
        return node.args[0]
    return None


def _shuffle_at(gm: fx.GraphModule, last: fx.Node) -> tuple[fx.Node, int] | None:
    """(x, groups) when `last` ends a channel shuffle of x, else None."""
    swapped = _reshape_input(gm, last)
    if not isinstance(swapped, fx.Node) or _module_kind(gm, swapped) != "OnnxTranspose":
        return None
    first = swapped.args[0] if swapped.args else None
    x = _reshape_input(gm, first)
    shapes = [_meta_shape(n) for n in (x, first, swapped, last)]
    if not isinstance(x, fx.Node) or any(s is None for s in shapes):
        return None
    x_shape, split, moved, out = shapes
    assert x_shape is not None and split is not None and moved is not None
    perm = list(cast(list[int], gm.get_submodule(str(swapped.target)).perm) or [])
    if (
        len(x_shape) < 2
        or out != x_shape
        or len(split) != len(x_shape) + 1
        or perm != [0, 2, 1, *range(3, len(split))]
        or split[0] != x_shape[0]
        or split[1] * split[2] != x_shape[1]
        or tuple(split[3:]) != tuple(x_shape[2:])
        or split[1] < 2
        or split[2] < 2
    ):
        return None
    return x, split[1]


# --- convolutions across channels, and reshapes that regroup channels -----------------------


def _matches(gm: fx.GraphModule, finder: Callable[[fx.GraphModule, fx.Node], Any]) -> Iterator:
    """What `finder` finds at each node of the graph as it was on entry (the caller may
    rewrite it meanwhile), skipping the nodes where it finds nothing."""
    for node in list(gm.graph.nodes):
        found = finder(gm, node)
        if found is not None:
            yield found


def _call_instead(gm: fx.GraphModule, old: fx.Node, name: str, module: nn.Module, x: Any) -> None:
    """A call of `module` (added as `name`) on `x` takes over `old`'s uses and metadata."""
    gm.add_submodule(name, module)
    with gm.graph.inserting_before(old):
        new = gm.graph.call_module(name, (x,))
    new.meta = dict(old.meta)
    old.replace_all_uses_with(new)


def _tidied(gm: fx.GraphModule, rewrites: int) -> int:
    """After `rewrites` replacements (if any), drop the nodes and modules they left
    unused and recompile; returns `rewrites`."""
    if rewrites:
        gm.graph.eliminate_dead_code()
        gm.delete_all_unused_submodules()
        gm.recompile()
    return rewrites


def fold_group_norms(gm: fx.GraphModule) -> int:
    """Replace each group norm as torch exports it (reshape (N, C, ...) -> (N, G, -1),
    InstanceNormalization with unit scale and zero shift, reshape back to the input's
    shape) by an `nn.GroupNorm(G, C)` without affine parameters (the per-channel scale
    and shift that follow stay as they are); returns how many. torch-pruning follows a
    channel into the instance norm's own flattening views by index mappings that grow
    with the spatial size (a PoolFormer's group search did not end within its budget),
    and knows a GroupNorm's channels. Needs ShapeProp metadata."""
    count = 0
    for x, groups, eps, last in _matches(gm, _group_norm_at):
        channels = _meta_shape(x)[1]  # type: ignore[index]
        norm = nn.GroupNorm(groups, channels, eps=eps, affine=False)
        _call_instead(gm, last, f"group_norm_{count}", norm, x)
        count += 1
    return _tidied(gm, count)


def _group_norm_at(gm: fx.GraphModule, norm: fx.Node) -> tuple | None:
    """(x, groups, eps, the reshape back) when `norm` is the instance norm of a group norm
    of x, else None."""
    module = gm.get_submodule(str(norm.target)) if norm.op == "call_module" else None
    if not isinstance(module, nn.modules.instancenorm._InstanceNorm) or len(norm.users) != 1:
        return None
    grouped = norm.args[0]
    if not isinstance(grouped, fx.Node):
        return None
    x = _reshape_input(gm, grouped)
    last = next(iter(norm.users))
    x_shape, grouped_shape = _meta_shape(x), _meta_shape(grouped)
    if (
        not isinstance(x, fx.Node)
        or x_shape is None
        or grouped_shape is None
        or len(x_shape) < 3
        or len(grouped_shape) != 3
        or grouped_shape[0] != x_shape[0]
        or x_shape[1] % grouped_shape[1]
        or _reshape_input(gm, last) is not norm
        or _meta_shape(last) != x_shape
        or _shape_at_batch_two(last) != _shape_at_batch_two(x)
        or len(grouped.users) != 1
    ):
        return None
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    if (weight is not None and not bool((weight == 1).all())) or (
        bias is not None and not bool((bias == 0).all())
    ):
        return None
    return x, grouped_shape[1], float(module.eps), last


def fold_channel_convs(gm: fx.GraphModule) -> int:
    """Replace each reshape (N, C[, 1...]) -> (N, 1, C), Conv1d(1, 1, same length),
    [unary ops], reshape -> (N, C, 1...) by a `ChannelConv1d` and the unary ops on
    (N, C[, 1...]), and a channel-keeping reshape; returns how many. Needs ShapeProp
    metadata."""
    count = 0
    for x, conv_node, unary, last in _matches(gm, _channel_conv_at):
        x_shape = _meta_shape(x)
        assert x_shape is not None
        name = f"channel_conv_{count}"
        conv = cast(torch.nn.Conv1d, gm.get_submodule(str(conv_node.target)))
        gm.add_submodule(name, ChannelConv1d(conv, x_shape[1]))
        graph = gm.graph
        with graph.inserting_before(last):
            y = graph.call_module(name, (x,))
            for op in unary:
                y = graph.call_module(str(op.target), (y,))
            out_shape = _meta_shape(last)
            assert out_shape is not None
            if tuple(out_shape) != tuple(x_shape):
                sizes = [graph.call_method("size", (y, 0)), graph.call_method("size", (y, 1))]
                y = graph.call_function(torch.reshape, (y, (*sizes, *out_shape[2:])))
        y.meta = dict(last.meta)
        last.replace_all_uses_with(y)
        count += 1
    return _tidied(gm, count)


def _channel_conv_at(gm: fx.GraphModule, first: fx.Node) -> tuple | None:
    """(x, conv, unary ops, last reshape) when `first` starts a convolution across the
    channels of x, else None."""
    x = _reshape_input(gm, first)
    x_shape, shape = _meta_shape(x), _meta_shape(first)
    if (
        not isinstance(x, fx.Node)
        or x_shape is None
        or shape is None
        or len(x_shape) < 2
        or any(d != 1 for d in x_shape[2:])
        or tuple(shape) != (x_shape[0], 1, x_shape[1])
        or len(first.users) != 1
    ):
        return None
    conv_node = next(iter(first.users))
    conv = gm.get_submodule(str(conv_node.target)) if conv_node.op == "call_module" else None
    if (
        not isinstance(conv, nn.Conv1d)
        or (conv.in_channels, conv.out_channels, conv.groups) != (1, 1, 1)
        or _meta_shape(conv_node) != shape
        or conv_node.args[0] is not first
    ):
        return None
    unary: list[fx.Node] = []
    node = conv_node
    while len(users := _users_but_sizes(node)) == 1:
        user = users[0]
        if _reshape_input(gm, user) is node:
            out = _meta_shape(user)
            if (
                out is None
                or len(out) < 2
                or out[:2] != x_shape[:2]
                or any(d != 1 for d in out[2:])
            ):
                return None
            return x, conv_node, unary, user
        module = gm.get_submodule(str(user.target)) if user.op == "call_module" else None
        if (
            module is None
            or len(user.args) != 1
            or user.kwargs
            or any(True for _ in module.parameters())
            or any(True for _ in module.buffers())
            or _meta_shape(user) != shape
            or not _keeps_shape(type(module).__name__)
        ):
            return None
        unary.append(user)
        node = user
    return None


def _users_but_sizes(node: fx.Node) -> list[fx.Node]:
    """The users of `node` other than `.size()` calls (a reshape's symbolic sizes)."""
    return [u for u in node.users if not (u.op == "call_method" and u.target == "size")]


def fence_channel_regroups(gm: fx.GraphModule) -> int:
    """Replace each reshape that splits or merges the channel dim of a rank-4 tensor (its
    output keeps neither the input's batch and channel dims nor flattens everything after
    the batch) by a `ChannelRegroup`; returns how many. Needs ShapeProp metadata."""
    count = 0
    for node in list(gm.graph.nodes):
        if _is_activation_matmul(gm, node):
            _fence(gm, node, f"channel_regroup_{count}")
            count += 1
            continue
        x = _reshape_input(gm, node)
        if not isinstance(x, fx.Node) or len(node.args) != 2:
            continue
        if node.op == "call_function" and node.target is not torch.reshape:
            continue  # torch.flatten
        if node.op == "call_method":
            continue
        in_shape, out_shape = _meta_shape(x), _meta_shape(node)
        if in_shape is None or out_shape is None or len(in_shape) != 4:
            continue
        if tuple(out_shape[:2]) == tuple(in_shape[:2]) and not _splits_heads(in_shape, out_shape):
            continue  # batch and channels kept
        if len(out_shape) == 2 and out_shape[1] == math.prod(in_shape[1:]):
            continue  # a flatten, which torch-pruning maps onto the next Linear
        _fence(gm, node, f"channel_regroup_{count}")
        count += 1
    if count:
        gm.delete_all_unused_submodules()
        gm.recompile()
    return count


def _splits_heads(in_shape: Sequence[int], out_shape: Sequence[int]) -> bool:
    """Whether a rank-4 reshape keeps every dim but the last and splits that one: the
    attention heads of a channels-last tensor (MaxViT's (B, windows, tokens, D) ->
    (..., heads, D / heads)). Its dim 1 is not channels, though torch-pruning reads it so
    and maps the reshape as a flatten (the indices it followed grew threefold at each of
    a hundred such reshapes)."""
    return len(out_shape) > 4 and tuple(out_shape[:3]) == tuple(in_shape[:3])


def _is_activation_matmul(gm: fx.GraphModule, node: fx.Node) -> bool:
    """A MatMul of two computed tensors of rank 3 or more (attention's q @ k^T, a @ v)."""
    if _module_kind(gm, node) != "OnnxMatMul" or len(node.args) != 2 or node.kwargs:
        return False
    shapes = [_meta_shape(a) for a in node.args]
    return all(
        isinstance(a, fx.Node) and _constant_of(gm, a) is None and s is not None and len(s) >= 3
        for a, s in zip(node.args, shapes, strict=True)
    )


def _fence(gm: fx.GraphModule, node: fx.Node, name: str) -> None:
    """Replace `node` (a reshape or an OnnxMatMul) by a `ChannelRegroup` of it."""
    inner = gm.get_submodule(str(node.target)) if node.op == "call_module" else None
    gm.add_submodule(name, ChannelRegroup(inner))
    with gm.graph.inserting_before(node):
        new = gm.graph.call_module(name, tuple(node.args))
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
