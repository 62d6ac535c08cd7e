"""Loading an ONNX upload: checks (external data, non-finite weights, allocations),
onnxslim clean-up (dynamic dims kept symbolic, kept only where onnxruntime gives the
original's outputs on it), onnx2torch, then `fx_rewrites.make_prunable`; the result is
checked against onnxruntime on the original bytes."""

from __future__ import annotations

import functools
import importlib
import keyword
import re
import sys
import types
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from contract import TensorInfo
from worker.engine.errors import UnsupportedModel
from worker.engine.load.screen import check_onnx_allocations, onnx_graphs, screen_onnx
from worker.engine.load.shapes import (
    resolve_input_shapes,
)
from worker.engine.load.tail import split_tail, value_types, weighted_after
from worker.engine.load.trial import (
    example_inputs,
    run_upload,
    short_error,
)
from worker.engine.measure.row_order import reordered_difference, selects_rows
from worker.engine.types import LoadedModel

# --- ONNX ---------------------------------------------------------------------------------

_ONNX_FLOAT_TYPES = {1: "float32", 10: "float16", 11: "float64", 16: "bfloat16"}


def load_onnx(path: Path, given: list[tuple[int, ...]] | None) -> LoadedModel:
    import onnx

    data = path.read_bytes()
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:
        raise UnsupportedModel(f"not a valid ONNX model: {short_error(exc)}") from exc
    _check_onnx_tensors(model)
    if _drop_unused_opsets(model):
        data = model.SerializeToString()
    graph = model.graph
    if not graph.node or not graph.output:
        raise UnsupportedModel("the ONNX graph has no nodes or no outputs")
    initializer_names = {t.name for t in graph.initializer}
    inputs = [_tensor_info(v) for v in graph.input if v.name not in initializer_names]
    outputs = [_tensor_info(v) for v in graph.output]
    if not inputs:
        raise UnsupportedModel("the ONNX graph has no inputs")
    for info in inputs:
        if info.dtype != "float32":
            raise UnsupportedModel(
                f"input {info.name!r} is {info.dtype}; only float32 inputs are supported",
                code="unsupported_op",
            )
    shapes = resolve_input_shapes(inputs, given)
    check_onnx_allocations(model, shapes)  # before onnxruntime allocates anything
    example = example_inputs(shapes)
    reference = _onnxruntime_outputs(model, data, inputs, example)
    notes = [f"ONNX opset {_opset(model)}, producer {model.producer_name or 'unknown'}"]

    cut = split_tail(model, functools.partial(is_convertible, opsets=opset_versions(model)))
    network = model if cut is None else cut.head
    network_outputs = outputs if cut is None else [_tensor_info(v) for v in network.graph.output]
    if cut is not None:
        reference = _onnxruntime_outputs(network, network.SerializeToString(), inputs, example)
        notes.append(cut.describe())
    prepared = _prepare_onnx(network, inputs, example, reference)
    module: Any = _onnx_to_torch(prepared, [o.name for o in network_outputs], example, reference)
    _name_placeholders(module, [i.name for i in inputs])
    loaded = LoadedModel(module, "onnx", inputs, network_outputs, shapes, notes=notes)
    if cut is not None:
        loaded.tail, loaded.final_outputs = cut.tail, outputs
    return loaded


def _drop_unused_opsets(model: Any) -> bool:
    """Forget imported operator domains that no node uses (exporters and onnxruntime's
    optimiser stamp every domain they know), so later tools see only what runs."""
    used = {"", "ai.onnx"} | {n.domain for graph, _ in onnx_graphs(model) for n in graph.node}
    kept = [o for o in model.opset_import if o.domain in used]
    if len(kept) == len(model.opset_import):
        return False
    del model.opset_import[:]
    model.opset_import.extend(kept)
    return True


def _opset(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _tensor_info(value: Any) -> TensorInfo:
    tensor_type = value.type.tensor_type
    dtype = _ONNX_FLOAT_TYPES.get(tensor_type.elem_type)
    if dtype is None:
        import onnx

        try:
            dtype = str(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        except Exception:
            dtype = f"onnx:{tensor_type.elem_type}"
    shape: list[int | str | None] = []
    if tensor_type.HasField("shape"):
        for dim in tensor_type.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value > 0:
                shape.append(int(dim.dim_value))
            elif dim.dim_param:
                shape.append(dim.dim_param)
            else:
                shape.append(None)  # unnamed, or -1 as some exporters write a dynamic dim
    return TensorInfo(name=value.name, shape=shape, dtype=dtype)


def _iter_onnx_tensors(graph: Any) -> Any:
    """Every TensorProto in a graph: initializers, Constant values, subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("sparse_tensor"):
                yield attr.sparse_tensor.values
            if attr.HasField("g"):
                yield from _iter_onnx_tensors(attr.g)
            for sub in attr.graphs:
                yield from _iter_onnx_tensors(sub)


def _check_onnx_tensors(model: Any) -> None:
    """Refuse external data (it would read other files) and non-finite weights."""
    from onnx import numpy_helper

    screen_onnx(model)  # external data anywhere, non-standard domains: before any read
    tensors = list(_iter_onnx_tensors(model.graph))
    for function in model.functions:
        for node in function.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    tensors.append(attr.t)
    for tensor in tensors:
        if tensor.data_type not in (1, 10, 11, 16):
            continue
        try:
            array = numpy_helper.to_array(tensor)
        except Exception as exc:
            message = f"tensor {tensor.name!r} is corrupt: {short_error(exc)}"
            raise UnsupportedModel(message) from exc
        if array.size and not np.isfinite(array.astype(np.float32, copy=False)).all():
            raise UnsupportedModel(
                f"weight {tensor.name!r} contains NaN or infinite values", code="non_finite_weights"
            )


def _onnxruntime_outputs(
    model: Any, data: bytes, inputs: Sequence[TensorInfo], example: Sequence[torch.Tensor]
) -> list[np.ndarray]:
    """The original model's outputs in onnxruntime: the reference for the conversion."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 2
    feeds = {info.name: t.numpy() for info, t in zip(inputs, example, strict=True)}
    try:
        try:
            session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            if "IR version" not in str(exc):
                raise
            # A newer onnx package stamped a newer IR version than this onnxruntime reads;
            # the opsets decide what the graph means, so stamp the oldest that allows them.
            older = onnx.ModelProto()
            older.CopyFrom(model)
            older.ir_version = onnx.helper.find_min_ir_version_for(list(model.opset_import))
            session = ort.InferenceSession(
                older.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
        return list(session.run(None, feeds))
    except Exception as exc:
        raise UnsupportedModel(f"onnxruntime cannot run the model: {short_error(exc)}") from exc


def _prepare_onnx(
    model: Any,
    inputs: Sequence[TensorInfo],
    example: Sequence[torch.Tensor],
    reference: Sequence[np.ndarray],
) -> Any:
    """Let onnxslim fold constants, infer shapes and fuse (Conv+BN, Conv+Mul/Add,
    MatMul+Add -> Gemm), where the slimmed graph still computes what the original does.

    onnxslim trusts the shapes a file declares; a file whose declared output shape is
    wrong (an OCR model that declares `[1, seqlen]` for a `[seqlen, 1, classes]` output)
    comes back computing something else, so its slimmed graph is run in onnxruntime on
    the example and dropped when its outputs differ from the original's.

    Dynamic dims stay symbolic (unnamed ones get a name so that shape inference can
    follow them): fixing them at the concrete input shape would fold sizes such as a
    detector's anchor count into constants, and the pruned model would then only run at
    that one shape while it still declares the dims dynamic.
    """
    import onnx

    work = onnx.ModelProto()
    work.CopyFrom(model)
    initializer_names = {t.name for t in work.graph.initializer}
    for value in work.graph.input:
        if value.name in initializer_names:
            continue
        for j, dim in enumerate(value.type.tensor_type.shape.dim):
            if not dim.dim_param and not (dim.HasField("dim_value") and dim.dim_value > 0):
                dim.dim_param = "batch" if j == 0 else f"{value.name}_dim{j}"
    _drop_reshape_allowzero(work)
    _fold_identity_initializers(work)
    _explicit_same_pads(work)
    try:
        import onnxslim

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            slimmed = onnxslim.slim(work)
        if slimmed is not None and _same_as_reference(slimmed, inputs, example, reference):
            work = slimmed
    except Exception:  # onnxslim is an optimisation: convert the unslimmed graph instead
        pass
    return work


def _same_as_reference(
    model: Any,
    inputs: Sequence[TensorInfo],
    example: Sequence[torch.Tensor],
    reference: Sequence[np.ndarray],
) -> bool:
    try:
        outputs = _onnxruntime_outputs(model, model.SerializeToString(), inputs, example)
        _compare(
            [torch.from_numpy(np.asarray(o)) for o in outputs],
            reference,
            "slimmed",
            reorderable=selects_rows(model.graph),
        )
    except UnsupportedModel:
        return False
    return True


def _fold_identity_initializers(model: Any) -> None:
    """An `Identity` of an initializer becomes an initializer of its own: onnx2torch reads
    a layer's weights only from initializers, and exporters write one for a parameter a
    model uses twice (SSD300's VGG). onnxslim does the same, where its graph is kept."""
    initializers = {t.name: t for t in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    for node in list(model.graph.node):
        folds = node.op_type == "Identity" and node.output[0] not in outputs
        if folds and node.input[0] in initializers:
            copy = model.graph.initializer.add()
            copy.CopyFrom(initializers[node.input[0]])
            copy.name = node.output[0]
            model.graph.node.remove(node)


_SAME_PADDED = ("Conv", "MaxPool", "AveragePool")


def _explicit_same_pads(model: Any) -> None:
    """`auto_pad` SAME_UPPER / SAME_LOWER written as the explicit `pads` onnxruntime
    computes (onnx2torch refuses the attribute; PaddlePaddle's exports use it). The pads
    depend on the input size only along strided dims; a node whose input size is not
    known there is left as it is, and its conversion refuses it."""
    from onnx import helper

    sizes: dict[str, list[int | None]] | None = None
    for node in model.graph.node:
        attrs = {a.name: a for a in node.attribute}
        mode = attrs["auto_pad"].s.decode() if "auto_pad" in attrs else "NOTSET"
        if node.op_type not in _SAME_PADDED or mode not in ("SAME_UPPER", "SAME_LOWER"):
            continue
        kernel = list(attrs["kernel_shape"].ints) if "kernel_shape" in attrs else None
        if kernel is None:
            continue  # a Conv that reads it from its weights: not written by exporters
        rank = len(kernel)
        strides = list(attrs["strides"].ints) if "strides" in attrs else [1] * rank
        dilations = list(attrs["dilations"].ints) if "dilations" in attrs else [1] * rank
        spatial: list[int | None] = [None] * rank
        if any(s != 1 for s in strides):
            if sizes is None:
                sizes = _static_sizes(model)
            spatial = (sizes.get(node.input[0]) or [None] * (rank + 2))[2:]
        pads = _same_pads(kernel, strides, dilations, spatial, upper=mode == "SAME_UPPER")
        if pads is None:
            continue
        for stale in ("auto_pad", "pads"):
            if stale in attrs:
                node.attribute.remove(attrs[stale])
        node.attribute.extend([helper.make_attribute("pads", pads)])


def _same_pads(
    kernel: list[int],
    strides: list[int],
    dilations: list[int],
    spatial: Sequence[int | None],
    upper: bool,
) -> list[int] | None:
    """Begin pads then end pads, as ONNX's SAME padding defines them; None where a
    strided dim's size is unknown."""
    begins, ends = [], []
    for k, s, d, size in zip(kernel, strides, dilations, spatial, strict=True):
        if s == 1:
            total = (k - 1) * d
        elif size is None:
            return None
        else:
            total = max(0, (-(-size // s) - 1) * s + (k - 1) * d + 1 - size)
        small, large = total // 2, total - total // 2
        begins.append(small if upper else large)
        ends.append(large if upper else small)
    return begins + ends


def _static_sizes(model: Any) -> dict[str, list[int | None]]:
    """Each value's dims as shape inference gives them, None where not a known number."""
    return {
        name: [
            d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim
        ]
        for name, v in value_types(model).items()
    }


def _drop_reshape_allowzero(model: Any) -> None:
    """`allowzero=1` only differs from the default when the target shape holds a literal
    0; real shapes never do, and onnx2torch refuses the attribute."""
    from onnx import numpy_helper

    constants = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "Reshape":
            continue
        for attr in list(node.attribute):
            if attr.name == "allowzero" and attr.i == 1:
                shape = constants.get(node.input[1]) if len(node.input) > 1 else None
                if shape is not None and (numpy_helper.to_array(shape) == 0).any():
                    continue  # a genuine zero-size reshape: leave it to fail clearly
                node.attribute.remove(attr)


def _onnx_to_torch(
    model: Any,
    output_names: list[str],
    example: tuple[torch.Tensor, ...],
    reference: list[np.ndarray],
) -> nn.Module:
    onnx2torch = _import_onnx2torch()
    import worker.engine.load.onnx_converters  # noqa: F401  (registers the extra converters)
    from worker.engine.load import fx_rewrites as conv

    _check_converters(model)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm = onnx2torch.convert(model, attach_onnx_mapping=True)
    except NotImplementedError as exc:
        raise UnsupportedModel(
            f"unsupported ONNX construct: {short_error(exc)}", code="unsupported_op"
        ) from exc
    except Exception as exc:
        raise UnsupportedModel(f"cannot convert the ONNX graph: {short_error(exc)}") from exc
    try:
        gm = conv.fix_outputs(gm.float().eval(), output_names)
    except NotImplementedError as exc:
        raise UnsupportedModel(
            f"unsupported ONNX graph: {short_error(exc)}", code="unsupported_op"
        ) from exc
    # onnxruntime ran the original at this shape: a failure here is the conversion's.
    converted = run_upload(gm, example, "the converted model", code="unsupported_op")
    reorderable = selects_rows(model.graph)
    _compare(converted, reference, "the converted model", reorderable=reorderable)
    try:
        prunable = conv.make_prunable(gm, example)
        rewritten = run_upload(prunable, example, "the rewritten model")
        _compare(rewritten, reference, "the rewritten model", reorderable=reorderable)
        return prunable
    except Exception as exc:
        # The rewrites only make more of the graph prunable; the plain conversion is right.
        warnings.warn(f"graph rewrites skipped: {short_error(exc)}", stacklevel=2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm = onnx2torch.convert(model, attach_onnx_mapping=True).float().eval()
        return conv.fix_outputs(gm, output_names)


def _import_onnx2torch() -> Any:
    """onnx2torch, without importing torchvision for it.

    onnx2torch imports torchvision at start-up for its NMS and RoiAlign converters, and
    torchvision brings torch._dynamo: two seconds of every upload's inspection. Those
    two names are stood in for while onnx2torch loads, by functions that import the real
    torchvision when a model that uses them runs.
    """
    if "onnx2torch.converter" in sys.modules or "torchvision" in sys.modules:
        import onnx2torch

        return onnx2torch

    def lazy(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)  # module machinery (__file__, __spec__, ...)

        def call(*args: Any, **kwargs: Any) -> Any:
            return getattr(importlib.import_module("torchvision.ops"), name)(*args, **kwargs)

        return call

    stand_in = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")
    ops.__dict__["__getattr__"] = lazy
    stand_in.__dict__.update(ops=ops, __path__=[])
    sys.modules.update({"torchvision": stand_in, "torchvision.ops": ops})
    try:
        import onnx2torch
    finally:
        for name, module in (("torchvision", stand_in), ("torchvision.ops", ops)):
            if sys.modules.get(name) is module:
                del sys.modules[name]
    return onnx2torch


def _name_placeholders(gm: fx.GraphModule, names: Sequence[str]) -> None:
    """Name the forward's arguments after the ONNX inputs (torch.export and the .pt2
    archive show them), as identifiers."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    taken = {n.name for n in gm.graph.nodes if n.op != "placeholder"}
    for node, name in zip(placeholders, names, strict=False):
        ident = re.sub(r"\W", "_", name)
        ident = ident if ident and not ident[0].isdigit() else f"input_{ident}"
        while ident in taken or keyword.iskeyword(ident):
            ident += "_"
        taken.add(ident)
        node.target = ident
        node.name = ident
    gm.recompile()


def opset_versions(model: Any) -> dict[str, int]:
    opsets = {o.domain or "": o.version for o in model.opset_import}
    opsets[""] = opsets.get("", opsets.get("ai.onnx", 0))
    return opsets


def is_convertible(node: Any, opsets: dict[str, int]) -> bool:
    """Whether onnx2torch (with `onnx_converters`' additions) has a converter for `node`."""
    _import_onnx2torch()  # first, so that torchvision is not imported for it
    from onnx2torch.node_converters.registry import get_converter

    import worker.engine.load.onnx_converters  # noqa: F401  (registers the extra converters)

    domain = "" if node.domain in ("", "ai.onnx") else node.domain
    try:
        get_converter(operation_type=node.op_type, version=opsets.get(domain, 0), domain=domain)
    except NotImplementedError:
        return False
    return True


def _check_converters(model: Any) -> None:
    """Name every op onnx2torch cannot convert, before it fails on the first one."""
    opsets = opset_versions(model)
    missing = set()
    for node in model.graph.node:
        if not is_convertible(node, opsets):
            domain = "" if node.domain in ("", "ai.onnx") else node.domain
            missing.add(
                f"{node.op_type} ({domain + ' ' if domain else ''}opset {opsets.get(domain, 0)})"
            )
    if missing:
        message = "unsupported ONNX op(s): " + ", ".join(sorted(missing))
        weighted = weighted_after(model, functools.partial(is_convertible, opsets=opsets))
        if weighted:
            message += (
                f"; {len(weighted)} layer(s) with weights depend on them "
                f"({', '.join(weighted[:3])}{', ...' if len(weighted) > 3 else ''}), so the "
                "network cannot be pruned up to them with the rest kept as uploaded"
            )
        raise UnsupportedModel(message, code="unsupported_op")


def _compare(
    ours: Sequence[torch.Tensor],
    reference: Sequence[np.ndarray],
    what: str,
    *,
    reorderable: bool = False,
) -> None:
    """Raise UnsupportedModel unless `ours` computes `reference`. `reorderable`: the graph
    selects rows by score, so near-tied rows may come in another order
    (`row_order.unordered_difference`)."""
    if len(ours) != len(reference):
        raise UnsupportedModel(
            f"{what} returns {len(ours)} outputs, onnxruntime {len(reference)}",
            code="unsupported_op",
        )
    for i, (mine, ref) in enumerate(zip(ours, reference, strict=True)):
        ref_t = torch.from_numpy(np.asarray(ref))
        if tuple(mine.shape) != tuple(ref_t.shape):
            raise UnsupportedModel(
                f"{what}: output {i} has shape {list(mine.shape)}, onnxruntime gives "
                f"{list(ref_t.shape)}",
                code="unsupported_op",
            )
        if not ref_t.is_floating_point():
            if not torch.equal(mine.to(ref_t.dtype), ref_t):
                raise UnsupportedModel(
                    f"{what}: output {i} differs from onnxruntime", code="unsupported_op"
                )
            continue
        diff = (mine.float() - ref_t.float()).abs().max().item() if ref_t.numel() else 0.0
        scale = max(1.0, ref_t.float().abs().max().item() if ref_t.numel() else 0.0)
        if not diff <= 1e-3 * scale and reorderable:
            diff = reordered_difference(diff, mine, ref_t)
        if not diff <= 1e-3 * scale:
            raise UnsupportedModel(
                f"{what} disagrees with onnxruntime on output {i} (max abs diff {diff:.3g})",
                code="unsupported_op",
            )
