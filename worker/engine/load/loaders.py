"""Load any supported upload into a `LoadedModel`: an eval-mode float32 CPU nn.Module that
torch-pruning's DependencyGraph can analyse, plus the original I/O contract.

- ONNX: checks (external data, non-finite weights), onnxslim clean-up (dynamic dims
  kept symbolic), onnx2torch, then `fx_rewrites.make_prunable`; the result is
  checked against onnxruntime on the original bytes.
- `.pt2` (`torch.export.save`): `ExportedProgram.module()`, with aten convolutions,
  linears and norms raised back into nn layers (torch-pruning prunes layers, not aten
  calls) and constant reshapes made channel-agnostic.
- weights only (safetensors, or a torch.save'd state_dict read with weights_only after
  `sniff` checked its pickle): `arch` such as `torchvision:resnet18` or `timm:resnet50`,
  built with random init (no download), `num_classes` taken from the classifier weight.
"""

from __future__ import annotations

import functools
import importlib
import keyword
import math
import re
import sys
import types
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from contract import TensorInfo
from contract.shapes import parse_shapes
from worker.engine.errors import EngineError, UnsupportedModel, describe_failure
from worker.engine.load.screen import check_onnx_allocations, onnx_graphs, screen_onnx, screen_pt2
from worker.engine.load.sniff import sniff_format
from worker.engine.load.tail import split_tail, value_types, weighted_after
from worker.engine.measure.evaluate import same_outputs
from worker.engine.measure.row_order import reordered_difference, selects_rows
from worker.engine.outputs import flatten_outputs
from worker.engine.types import LoadedModel

InputShape = str | Sequence[int] | Sequence[Sequence[int]] | None

DEFAULT_ARCH_INPUT_SHAPE = (1, 3, 224, 224)
MAX_INPUT_ELEMENTS = 1 << 27  # 128 Mi floats (512 MiB) per input at batch 1
_CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights", "params", "module")


def load_model(
    path: str | Path, *, arch: str | None = None, input_shape: InputShape = None
) -> LoadedModel:
    """Load the model at `path` (format detected from its bytes). Raises UnsupportedModel."""
    path = Path(path)
    fmt = sniff_format(path)
    shapes = parse_input_shape(input_shape)
    if fmt == "onnx":
        loaded = _load_onnx(path, shapes)
    elif fmt == "pt2":
        loaded = _load_pt2(path, shapes)
    elif fmt in ("safetensors", "state_dict"):
        loaded = _load_weights(path, fmt, arch, shapes)
    else:
        raise UnsupportedModel(f"the file holds {fmt} data, not a model")
    if arch and fmt in ("onnx", "pt2"):
        loaded.notes.append(f"arch {arch!r} ignored: a {fmt} file carries its own architecture")
    loaded.source_path = path
    loaded.module.eval()
    return loaded


# --- shapes -------------------------------------------------------------------------------


def parse_input_shape(value: InputShape) -> list[tuple[int, ...]] | None:
    """A string in the contract's grammar (`contract.shapes`: inputs separated by `;`), a
    list of ints, or a list of lists."""
    if value is None or value == "" or value == []:
        return None
    try:
        if isinstance(value, str):
            shapes = parse_shapes(value)
        elif all(isinstance(v, int | np.integer) for v in value):
            shapes = [tuple(int(v) for v in value)]  # type: ignore[arg-type]
        else:
            shapes = [tuple(int(v) for v in shape) for shape in value]  # type: ignore[union-attr]
    except (TypeError, ValueError) as exc:  # ShapeError is a ValueError
        raise UnsupportedModel(
            f"input_shape {value!r} is not a list of integers such as 1,3,224,224 ({exc})",
            code="input_shape_mismatch",
        ) from exc
    for shape in shapes:
        if not shape or len(shape) > 8 or any(d < 1 for d in shape):
            raise UnsupportedModel(
                f"input_shape {value!r} needs 1 to 8 positive dimensions",
                code="input_shape_mismatch",
            )
        if math.prod(shape[1:]) > MAX_INPUT_ELEMENTS:
            raise UnsupportedModel(f"input_shape {shape} is too large", code="too_large")
    return shapes


def resolve_input_shapes(
    inputs: Sequence[TensorInfo], given: list[tuple[int, ...]] | None
) -> list[tuple[int, ...]]:
    """Concrete batch-1 shapes: `given` fills dynamic dims and must agree with fixed ones."""
    if given is not None and len(given) > len(inputs):
        raise UnsupportedModel(
            f"input_shape gives {len(given)} shapes but the model has {len(inputs)} input(s)",
            code="input_shape_mismatch",
        )
    concrete = []
    for i, info in enumerate(inputs):
        declared = info.shape
        shape = given[i] if given is not None and i < len(given) else None
        if shape is not None and len(shape) != len(declared):
            raise UnsupportedModel(
                f"input {info.name!r} has {len(declared)} dimensions {_fmt(declared)}, "
                f"input_shape gives {len(shape)}: {list(shape)}",
                code="input_shape_mismatch",
            )
        dims: list[int] = []
        for j, dim in enumerate(declared):
            if isinstance(dim, int) and dim > 0:
                if shape is not None and shape[j] != dim:
                    raise UnsupportedModel(
                        f"input {info.name!r} is declared {_fmt(declared)}: dimension {j} is "
                        f"fixed at {dim}, input_shape says {shape[j]}",
                        code="input_shape_mismatch",
                    )
                dims.append(dim)
            elif j == 0:
                dims.append(1)  # the batch
            elif shape is not None:
                dims.append(shape[j])
            else:
                example = ",".join(
                    "1" if k == 0 else str(d) if isinstance(d, int) and d > 0 else "N"
                    for k, d in enumerate(declared)
                )
                raise UnsupportedModel(
                    f"input {info.name!r} is declared {_fmt(declared)}: dimension {j} is "
                    f"dynamic, so input_shape is required (e.g. {example})",
                    code="input_shape_required",
                )
        if math.prod(dims[1:]) > MAX_INPUT_ELEMENTS:
            raise UnsupportedModel(
                f"input {info.name!r} of shape {dims} is too large", code="too_large"
            )
        concrete.append(tuple(dims))
    return concrete


def _fmt(shape: Sequence[Any]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _run(
    module: nn.Module, inputs: Sequence[torch.Tensor], what: str, code: str = "invalid_model"
) -> tuple[torch.Tensor, ...]:
    """The module's outputs on `inputs`; a failure is an UnsupportedModel with `code`."""
    try:
        with torch.no_grad():
            return flatten_outputs(module(*inputs))
    except EngineError:
        raise
    except Exception as exc:
        shapes = ", ".join(str(list(t.shape)) for t in inputs)
        raise UnsupportedModel(
            f"{what} does not run at input shape {shapes}: {_short(exc)}", code=code
        ) from exc


def _short(exc: BaseException, limit: int = 300) -> str:
    # Text raised while parsing or running an upload can quote what it read: no data out.
    return describe_failure(exc, limit)


def _example(shapes: Sequence[tuple[int, ...]]) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    return tuple(torch.randn(shape, generator=gen) for shape in shapes)


def _check_finite_tensors(named: Mapping[str, torch.Tensor] | Sequence[tuple[str, Any]]) -> None:
    items = named.items() if isinstance(named, Mapping) else named
    for name, tensor in items:
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
            if not bool(torch.isfinite(tensor).all()):
                raise UnsupportedModel(
                    f"weight {name!r} contains NaN or infinite values", code="non_finite_weights"
                )


# --- ONNX ---------------------------------------------------------------------------------

_ONNX_FLOAT_TYPES = {1: "float32", 10: "float16", 11: "float64", 16: "bfloat16"}


def _load_onnx(path: Path, given: list[tuple[int, ...]] | None) -> LoadedModel:
    import onnx

    data = path.read_bytes()
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:
        raise UnsupportedModel(f"not a valid ONNX model: {_short(exc)}") from exc
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
    example = _example(shapes)
    reference = _onnxruntime_outputs(model, data, inputs, example)
    notes = [f"ONNX opset {_opset(model)}, producer {model.producer_name or 'unknown'}"]

    cut = split_tail(model, functools.partial(_convertible, opsets=_opsets(model)))
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
            raise UnsupportedModel(f"tensor {tensor.name!r} is corrupt: {_short(exc)}") from exc
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
        raise UnsupportedModel(f"onnxruntime cannot run the model: {_short(exc)}") from exc


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
            f"unsupported ONNX construct: {_short(exc)}", code="unsupported_op"
        ) from exc
    except Exception as exc:
        raise UnsupportedModel(f"cannot convert the ONNX graph: {_short(exc)}") from exc
    try:
        gm = conv.fix_outputs(gm.float().eval(), output_names)
    except NotImplementedError as exc:
        raise UnsupportedModel(
            f"unsupported ONNX graph: {_short(exc)}", code="unsupported_op"
        ) from exc
    # onnxruntime ran the original at this shape: a failure here is the conversion's.
    converted = _run(gm, example, "the converted model", code="unsupported_op")
    reorderable = selects_rows(model.graph)
    _compare(converted, reference, "the converted model", reorderable=reorderable)
    try:
        prunable = conv.make_prunable(gm, example)
        rewritten = _run(prunable, example, "the rewritten model")
        _compare(rewritten, reference, "the rewritten model", reorderable=reorderable)
        return prunable
    except Exception as exc:
        # The rewrites only make more of the graph prunable; the plain conversion is right.
        warnings.warn(f"graph rewrites skipped: {_short(exc)}", stacklevel=2)
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


def _opsets(model: Any) -> dict[str, int]:
    opsets = {o.domain or "": o.version for o in model.opset_import}
    opsets[""] = opsets.get("", opsets.get("ai.onnx", 0))
    return opsets


def _convertible(node: Any, opsets: dict[str, int]) -> bool:
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
    opsets = _opsets(model)
    missing = set()
    for node in model.graph.node:
        if not _convertible(node, opsets):
            domain = "" if node.domain in ("", "ai.onnx") else node.domain
            missing.add(
                f"{node.op_type} ({domain + ' ' if domain else ''}opset {opsets.get(domain, 0)})"
            )
    if missing:
        message = "unsupported ONNX op(s): " + ", ".join(sorted(missing))
        weighted = weighted_after(model, functools.partial(_convertible, opsets=opsets))
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


# --- torch.export archives ------------------------------------------------------------------


def _load_pt2(path: Path, given: list[tuple[int, ...]] | None) -> LoadedModel:
    screen_pt2(path)  # nothing unpickled, only a CNN's operators: before torch reads it
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.load(str(path))
        module = program.module()
    except Exception as exc:
        raise UnsupportedModel(f"cannot load the torch.export archive: {_short(exc)}") from exc
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
    _check_finite_tensors(list(module.state_dict().items()))
    example = _example(shapes)
    code = "input_shape_mismatch" if given else "invalid_model"
    reference = _run(module, example, "the exported program", code=code)
    try:
        module = raise_aten_layers(_plain_graph_module(module), example)
    except Exception as exc:
        raise UnsupportedModel(
            f"cannot re-express the exported program as layers: {_short(exc)}",
            code="unsupported_op",
        ) from exc
    after = _run(module, example, "the exported program (with layers)")
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


# --- weights + arch -------------------------------------------------------------------------


def _load_weights(
    path: Path, fmt: str, arch: str | None, given: list[tuple[int, ...]] | None
) -> LoadedModel:
    if not arch:
        raise UnsupportedModel(
            f"a {fmt} file holds weights only: give arch too (e.g. torchvision:resnet18 or "
            "timm:resnet50)",
            code="unknown_arch",
        )
    weights = _read_weights(path, fmt)
    _check_finite_tensors(weights)
    module = build_arch(arch, num_classes=None)
    num_classes = _infer_num_classes(module, weights)
    if num_classes is not None:
        module = build_arch(arch, num_classes=num_classes)
    weights = _match_prefix(module, weights)
    _load_state(module, weights, arch)
    module = module.float().eval()
    shapes = given or [DEFAULT_ARCH_INPUT_SHAPE]
    if len(shapes) != 1:
        raise UnsupportedModel("an arch model has one input", code="input_shape_mismatch")
    shapes = [(1, *shapes[0][1:])]
    example = _example(shapes)
    with torch.no_grad():
        raw = _run_raw(module, example)
    names = list(raw.keys()) if isinstance(raw, Mapping) else None
    if names is not None:
        module = _DictToTuple(module)
    out = flatten_outputs(raw)
    if names is None or len(names) != len(out):
        names = ["output"] if len(out) == 1 else [f"output_{i}" for i in range(len(out))]
    inputs = [TensorInfo(name="input", shape=["batch", *shapes[0][1:]])]
    outputs = [
        TensorInfo(name=n, shape=["batch", *t.shape[1:]] if t.dim() else [])
        for n, t in zip(names, out, strict=True)
    ]
    notes = [f"{arch} built with random init, weights loaded from the upload"]
    if num_classes is not None:
        notes.append(f"num_classes={num_classes} (from the classifier weights)")
    return LoadedModel(module, fmt, inputs, outputs, shapes, arch=arch, notes=notes)


def _run_raw(module: nn.Module, example: Sequence[torch.Tensor]) -> Any:
    try:
        return module(*example)
    except Exception as exc:
        shapes = ", ".join(str(list(t.shape)) for t in example)
        raise UnsupportedModel(
            f"the model does not run at input shape {shapes}: {_short(exc)}",
            code="input_shape_mismatch",
        ) from exc


class _DictToTuple(nn.Module):
    """Wraps a model that returns a dict (torchvision segmentation) to return its values."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model(*args).values())


def _read_weights(path: Path, fmt: str) -> dict[str, torch.Tensor]:
    try:
        if fmt == "safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except EngineError:
        raise
    except Exception as exc:
        raise UnsupportedModel(f"cannot read the weights: {_short(exc)}") from exc
    state = _find_state_dict(obj)
    if state is None:
        raise UnsupportedModel("the file holds no state_dict (a mapping of names to tensors)")
    return state


def _find_state_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    if not isinstance(obj, Mapping):
        return None
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if tensors and len(tensors) == len(obj):
        return dict(tensors)
    for key in _CHECKPOINT_KEYS:  # a checkpoint: {"state_dict": {...}, "epoch": 3, ...}
        found = _find_state_dict(obj.get(key))
        if found:
            return found
    return dict(tensors) if tensors else None


def build_arch(arch: str, *, num_classes: int | None = None) -> nn.Module:
    """`torchvision:NAME` or `timm:NAME` (a bare NAME tries torchvision, then timm), with
    random init and no download."""
    source, _, name = arch.partition(":")
    if not name:
        source, name = "", source
    source = source.strip().lower()
    name = name.strip()
    kwargs: dict[str, Any] = {"num_classes": num_classes} if num_classes is not None else {}
    if source in ("torchvision", "tv", ""):
        import torchvision

        if name in torchvision.models.list_models():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    return torchvision.models.get_model(name, weights=None, **kwargs)
                except TypeError as exc:
                    raise UnsupportedModel(
                        f"cannot build {arch}: {_short(exc)}", code="unknown_arch"
                    ) from exc
        if source:
            raise UnsupportedModel(
                f"unknown torchvision architecture {name!r}", code="unknown_arch"
            )
    if source in ("timm", ""):
        import timm

        if timm.is_model(name):
            try:
                return timm.create_model(name, pretrained=False, **kwargs)
            except Exception as exc:
                raise UnsupportedModel(
                    f"cannot build {arch}: {_short(exc)}", code="unknown_arch"
                ) from exc
        raise UnsupportedModel(f"unknown architecture {arch!r}", code="unknown_arch")
    raise UnsupportedModel(
        f"unknown architecture source {source!r} in {arch!r}; use torchvision:NAME or timm:NAME",
        code="unknown_arch",
    )


def _infer_num_classes(module: nn.Module, weights: Mapping[str, torch.Tensor]) -> int | None:
    """The class count of the uploaded classifier when it differs from the default."""
    default = module.state_dict()
    default_classes = getattr(module, "num_classes", None)
    candidates = set()
    for key, tensor in _strip_prefix(default, weights).items():
        ref = default.get(key)
        if ref is None or ref.shape == tensor.shape or ref.dim() != tensor.dim() or ref.dim() == 0:
            continue
        if ref.shape[1:] == tensor.shape[1:] and (default_classes in (None, ref.shape[0])):
            candidates.add(int(tensor.shape[0]))
    return candidates.pop() if len(candidates) == 1 else None


def _strip_prefix(
    default: Mapping[str, Any], weights: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Drop a common wrapper prefix (`module.` from DataParallel, `model.`) when that makes
    the keys match."""
    weights = dict(weights)
    for prefix in ("module.", "model.", "_orig_mod."):
        if (
            weights
            and all(k.startswith(prefix) for k in weights)
            and not any(k.startswith(prefix) for k in default)
        ):
            weights = {k[len(prefix) :]: v for k, v in weights.items()}
    return weights


def _match_prefix(
    module: nn.Module, weights: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    return _strip_prefix(module.state_dict(), weights)


def _load_state(module: nn.Module, weights: Mapping[str, torch.Tensor], arch: str) -> None:
    expected = module.state_dict()
    missing = [k for k in expected if k not in weights and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in weights if k not in expected]
    mismatched = [
        f"{k} {list(weights[k].shape)} (expected {list(expected[k].shape)})"
        for k in weights
        if k in expected and weights[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", mismatched),
        ):
            if keys:
                shown = ", ".join(keys[:5]) + (
                    f" and {len(keys) - 5} more" if len(keys) > 5 else ""
                )
                parts.append(f"{label}: {shown}")
        raise UnsupportedModel(f"the weights do not fit {arch}: " + "; ".join(parts))
    module.load_state_dict(dict(weights), strict=False)
