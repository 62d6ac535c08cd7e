"""Static screening of untrusted model files, before anything deserializes or runs them.

An upload is hostile until shown otherwise. Its loader may unpickle parts of it
(`torch.export.load` hands some members to `pickle`/`torch.load(weights_only=False)`,
`sympy.sympify` evaluates the shape expressions of a `.pt2`, `torch.fx` compiles its node
names into Python source), its graph may call operators that touch files
(`aten::from_file`, ONNX external data), and a few bytes of graph may ask for gigabytes.
This module reads the file as data only (JSON, protobuf) and refuses, with a stable code,
anything outside what a CNN needs:

- `screen_pt2(path)` / `check_pt2_archive(zip)`: the archive holds only the members
  `torch.export.save` writes, no member is unpickled (`use_pickle`, custom, opaque or
  torchbind objects, legacy pickled weights), every name and shape expression is inert,
  and every operator is on `PT2_ALLOWED_OPS` with no in-place write to a graph input,
  parameter or buffer (`unsafe_format`, `unsupported_op`, `too_large`).
- `screen_onnx(model)`: no external data anywhere (graphs, subgraphs at any depth, sparse
  tensors, Constant attributes, local functions) and no node outside the standard domains
  and the model's own functions (`external_data_forbidden`, `unsupported_op`).
- `check_onnx_allocations(model, shapes)`: ONNX shape inference at the concrete input
  shape, plus the outputs of shape-making ops whose target is a constant, bounded per
  tensor (`too_large`), before onnxruntime runs anything.

Imports neither torch nor onnxruntime; `onnx` only for the ONNX checks.
"""

from __future__ import annotations

import json
import math
import re
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from worker.engine.errors import UnsupportedModel

DEFAULT_MAX_TENSOR_BYTES = 1 << 30  # one tensor, at the concrete input shape
# ONNX domains whose operators the standard defines; local functions may add their own.
DEFAULT_ONNX_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})

# --- .pt2: operators -------------------------------------------------------------------------

_ATEN = "torch.ops.aten."

# Every operator a `.pt2` graph may call. Built from what `torch.export` (torch 2.14, both
# the default TRAINING dialect and `run_decompositions()`'s ATEN dialect) produces for
# torchvision resnet18, mobilenet_v2/v3_small, efficientnet_b0, densenet121,
# shufflenet_v2, regnet_y_400mf, convnext_tiny, squeezenet, googlenet, vgg11, mnasnet,
# alexnet and timm resnet18, efficientnet_b0, mobilenetv3, regnety, convnext_atto,
# ghostnet, rexnet, mobilevit_xxs, resnest14d, dla34, hrnet_w18_small, cspresnet50,
# densenet121, repvgg_a0, lcnet, tinynet, levit_128s, fastvit_t8, at static and dynamic
# batch; plus the close relatives a CNN uses (other ranks, padding, upsampling modes,
# activations, reductions, elementwise maths). Deliberately absent: anything that reads
# or writes files or storages (from_file, *storage*, set_, save/load), random generators
# and seeds, uninitialised memory (empty*), copy_/fill_/zero_ and other writes that
# exist to mutate, data-dependent shapes (nonzero, unique, item), and every non-aten
# namespace (higher-order ops such as wrap_with_autocast, torchbind, custom libraries).
# In-place variants (trailing `_`) are listed only for activations and arithmetic that
# exports emit for `inplace=True` modules; `_check_nodes` refuses them on inputs.
PT2_ALLOWED_OPS = frozenset(
    {
        _ATEN + op
        for op in (
            # convolution and linear algebra
            "conv1d.default",
            "conv2d.default",
            "conv3d.default",
            "conv1d.padding",
            "conv2d.padding",
            "conv3d.padding",
            "conv_transpose1d.default",
            "conv_transpose2d.input",
            "conv_transpose3d.input",
            "convolution.default",
            "linear.default",
            "matmul.default",
            "mm.default",
            "bmm.default",
            "addmm.default",
            "baddbmm.default",
            "einsum.default",
            "scaled_dot_product_attention.default",
            # normalisation
            "batch_norm.default",
            "_native_batch_norm_legit_no_training.default",
            "layer_norm.default",
            "native_layer_norm.default",
            "group_norm.default",
            "native_group_norm.default",
            "instance_norm.default",
            # activations (and the in-place forms exports emit for inplace=True)
            "relu.default",
            "relu_.default",
            "relu6.default",
            "hardtanh.default",
            "hardtanh_.default",
            "leaky_relu.default",
            "leaky_relu_.default",
            "gelu.default",
            "gelu_.default",
            "silu.default",
            "silu_.default",
            "sigmoid.default",
            "sigmoid_.default",
            "hardsigmoid.default",
            "hardsigmoid_.default",
            "hardswish.default",
            "hardswish_.default",
            "tanh.default",
            "tanh_.default",
            "mish.default",
            "mish_.default",
            "elu.default",
            "elu_.default",
            "selu.default",
            "celu.default",
            "softplus.default",
            "prelu.default",
            "_prelu_kernel.default",
            "softmax.int",
            "_softmax.default",
            "log_softmax.int",
            "_log_softmax.default",
            "dropout.default",
            "dropout_.default",
            "feature_dropout.default",
            "clamp.default",
            "clamp.Tensor",
            "clamp_.default",
            "clamp_min.default",
            "clamp_max.default",
            # pooling, padding, resampling
            "max_pool1d.default",
            "max_pool2d.default",
            "max_pool3d.default",
            "max_pool2d_with_indices.default",
            "avg_pool1d.default",
            "avg_pool2d.default",
            "avg_pool3d.default",
            "adaptive_avg_pool1d.default",
            "adaptive_avg_pool2d.default",
            "adaptive_avg_pool3d.default",
            "_adaptive_avg_pool2d.default",
            "adaptive_max_pool2d.default",
            "pad.default",
            "constant_pad_nd.default",
            "reflection_pad1d.default",
            "reflection_pad2d.default",
            "replication_pad1d.default",
            "replication_pad2d.default",
            "upsample_nearest1d.vec",
            "upsample_nearest2d.vec",
            "upsample_nearest3d.vec",
            "upsample_nearest2d.default",
            "upsample_bilinear2d.vec",
            "upsample_bilinear2d.default",
            "upsample_bicubic2d.vec",
            "upsample_linear1d.vec",
            "upsample_trilinear3d.vec",
            "_upsample_nearest_exact2d.vec",
            "pixel_shuffle.default",
            "pixel_unshuffle.default",
            "channel_shuffle.default",
            # shapes, views, indexing
            "view.default",
            "_unsafe_view.default",
            "reshape.default",
            "reshape_as.default",
            "view_as.default",
            "flatten.using_ints",
            "unflatten.int",
            "permute.default",
            "transpose.int",
            "t.default",
            "contiguous.default",
            "alias.default",
            "as_strided.default",
            "detach.default",
            "clone.default",
            "lift_fresh_copy.default",
            "expand.default",
            "expand_as.default",
            "squeeze.dim",
            "squeeze.dims",
            "squeeze.default",
            "unsqueeze.default",
            "slice.Tensor",
            "select.int",
            "narrow.default",
            "index.Tensor",
            "index_select.default",
            "gather.default",
            "cat.default",
            "stack.default",
            "split.Tensor",
            "split_with_sizes.default",
            "chunk.default",
            "unbind.int",
            "roll.default",
            "flip.default",
            "repeat.default",
            "movedim.int",
            "to.dtype",
            "to.dtype_layout",
            "_to_copy.default",
            "type_as.default",
            "masked_fill.Scalar",
            "masked_fill.Tensor",
            "where.self",
            "where.ScalarSelf",
            "where.ScalarOther",
            "full.default",
            "full_like.default",
            "zeros.default",
            "zeros_like.default",
            "ones.default",
            "ones_like.default",
            "new_zeros.default",
            "new_ones.default",
            "new_full.default",
            "scalar_tensor.default",
            "arange.default",
            "arange.start",
            "arange.start_step",
            # a detector's anchor grid (YOLOv8's make_anchors)
            "meshgrid.default",
            "meshgrid.indexing",
            # reductions
            "mean.dim",
            "mean.default",
            "sum.dim_IntList",
            "sum.default",
            "amax.default",
            "amin.default",
            "max.dim",
            "min.dim",
            "argmax.default",
            "argmin.default",
            "var.correction",
            "std.correction",
            "var_mean.correction",
            "cumsum.default",
            "norm.ScalarOpt_dim",
            "linalg_vector_norm.default",
            "any.dim",
            "any.default",
            "all.dim",
            "all.default",
            # elementwise arithmetic and comparison
            "add.Tensor",
            "add.Scalar",
            "add_.Tensor",
            "sub.Tensor",
            "sub.Scalar",
            "sub_.Tensor",
            "rsub.Scalar",
            "rsub.Tensor",
            "mul.Tensor",
            "mul.Scalar",
            "mul_.Tensor",
            "div.Tensor",
            "div.Scalar",
            "div.Tensor_mode",
            "div_.Tensor",
            "floor_divide.default",
            "remainder.Scalar",
            "remainder.Tensor",
            "neg.default",
            "abs.default",
            "exp.default",
            "log.default",
            "sqrt.default",
            "rsqrt.default",
            "reciprocal.default",
            "pow.Tensor_Scalar",
            "pow.Tensor_Tensor",
            "pow.Scalar",
            "erf.default",
            "sin.default",
            "cos.default",
            "floor.default",
            "ceil.default",
            "round.default",
            "sign.default",
            "maximum.default",
            "minimum.default",
            "eq.Scalar",
            "eq.Tensor",
            "ne.Scalar",
            "ne.Tensor",
            "lt.Scalar",
            "lt.Tensor",
            "le.Scalar",
            "le.Tensor",
            "gt.Scalar",
            "gt.Tensor",
            "ge.Scalar",
            "ge.Tensor",
            "logical_and.default",
            "logical_or.default",
            "logical_not.default",
            "bitwise_not.default",
            # shape arithmetic of dynamic dims and export's own assertions
            "sym_size.int",
            "sym_numel.default",
            "sym_stride.int",
            "_assert_scalar.default",
            "_assert_tensor_metadata.default",
            "sym_constrain_range_for_size.default",
        )
    }
    | {
        # arithmetic on symbolic sizes (dynamic batch) in the forms torch.export writes
        "_operator.add",
        "_operator.sub",
        "_operator.mul",
        "_operator.floordiv",
        "_operator.truediv",
        "_operator.mod",
        "_operator.neg",
        "_operator.eq",
        "_operator.ne",
        "_operator.lt",
        "_operator.le",
        "_operator.gt",
        "_operator.ge",
        "torch.sym_float",
        "torch.sym_int",
        "torch.sym_max",
        "torch.sym_min",
        "torch.sym_not",
    }
)

# Allowed ops whose outputs may share memory with their first tensor argument (schema
# `Tensor(a) self -> Tensor(a)`, and composites such as type_as that return `self` when
# nothing changes). An in-place op on such a view writes the viewed tensor.
PT2_VIEW_OPS = frozenset(
    _ATEN + op
    for op in (
        "view.default",
        "reshape.default",
        "reshape_as.default",
        "view_as.default",
        "flatten.using_ints",
        "unflatten.int",
        "permute.default",
        "transpose.int",
        "t.default",
        "contiguous.default",
        "alias.default",
        "detach.default",
        "expand.default",
        "expand_as.default",
        "squeeze.dim",
        "squeeze.dims",
        "squeeze.default",
        "unsqueeze.default",
        "slice.Tensor",
        "select.int",
        "narrow.default",
        "split.Tensor",
        "split_with_sizes.default",
        "chunk.default",
        "unbind.int",
        "movedim.int",
        "to.dtype",
        "to.dtype_layout",
        "type_as.default",
        "_unsafe_view.default",
        "as_strided.default",
    )
)

# Why an operator outside the list is refused, for the message (first match wins).
_REFUSAL_REASONS = (
    (re.compile(r"from_file|storage|set_|save|load|mmap|pickle|file"), "reads or writes files"),
    (
        re.compile(
            r"rand|bernoulli|normal|uniform|seed|generator|multinomial|exponential_"
            r"|cauchy|geometric|native_dropout"
        ),
        "uses a random generator",
    ),
    (
        re.compile(r"^torch\.ops\.higher_order\.|torchbind|call_torchbind"),
        "is a higher-order or torchbind operator",
    ),
)

# --- .pt2: archive layout --------------------------------------------------------------------

_DIALECTS = frozenset({"TRAINING", "ATEN"})
# Scalar types (torch/_export/serde/schema.py ScalarType) a weight may have.
_DTYPE_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 2, 7: 4, 8: 8, 12: 1, 13: 2}
_LAYOUT_STRIDED = 7
_WEIGHT_RECORD = re.compile(r"weight_\d+")
_CONSTANT_RECORD = re.compile(r"tensor_\d+")
_MODEL_JSON = re.compile(r"models/([A-Za-z0-9_]+)\.json")
# Node, value and argument names become Python identifiers in code torch.fx generates and
# compiles; parameter paths become attribute chains in it.
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Module names may hold dashes, slashes and the like (ModuleDict keys, ONNX node names
# kept by the converter); never quotes, backslashes or spaces, which would leave the
# string literal torch.fx writes them into.
_FQN = re.compile(r"""[^\s"'`\\.]+(\.[^\s"'`\\.]+)*""")
_CALL_FQN = re.compile(r"""[^\s"'`\\]*""")
_SYMBOL = re.compile(r"[a-z]{1,4}[0-9]+")
_PY_KEYWORDS = frozenset(
    "False None True and as assert async await break class continue def del elif else "
    "except finally for from global if import in is lambda nonlocal not or pass raise "
    "return try while with yield".split()
)
# Inside strings of the graph JSON only newlines and tabs may be control characters: a
# carriage return or form feed ends a line in Python source, and torch.fx writes node
# metadata into the source it compiles.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x85\u2028\u2029]")

# `sympy.sympify` *evaluates* these strings, so only this vocabulary passes: torch's
# printed forms (`Mul(Integer(64), Symbol('s77', positive=True, integer=True))`, or infix
# `2*s0 + 1`) of the shape functions torch registers. No attribute access, no subscripts,
# no strings but symbol names, no powers (huge integers are a denial of service).
_SYMPY_NAMES = frozenset(
    {
        "Symbol",
        "Integer",
        "Float",
        "Rational",
        "Add",
        "Mul",
        "Max",
        "Min",
        "Abs",
        "Eq",
        "Ne",
        "Lt",
        "Le",
        "Gt",
        "Ge",
        "StrictLessThan",
        "StrictGreaterThan",
        "LessThan",
        "GreaterThan",
        "Equality",
        "Unequality",
        "And",
        "Or",
        "Not",
        "Piecewise",
        "floor",
        "ceiling",
        "FloorDiv",
        "ModularIndexing",
        "Where",
        "PythonMod",
        "Mod",
        "CleanDiv",
        "CeilToInt",
        "FloorToInt",
        "CeilDiv",
        "TruncToInt",
        "RoundToInt",
        "ToFloat",
        "Identity",
        "IntTrueDiv",
        "FloatTrueDiv",
        "True",
        "False",
        "true",
        "false",
        "oo",
        "positive",
        "integer",
        "nonnegative",
        "negative",
        "real",
        "finite",
        "infinite",
        "zero",
        "nonzero",
        "even",
        "odd",
        "nonpositive",
        "extended_real",
        "commutative",
    }
)
_SYMPY_TOKEN = re.compile(
    r"\s+|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<num>[0-9]{1,20}(\.[0-9]{1,20})?(e[-+]?[0-9]{1,3})?)"
    r"|(?P<str>'[a-z]{1,4}[0-9]+')|(?P<op>//|==|!=|<=|>=|[-+*/%(),<>=&|~])"
)
_MAX_EXPR_CHARS = 2000

# Argument kinds a CNN's nodes use; graphs (higher-order ops), custom objects and
# operators as values are refused.
_ARGUMENT_KINDS = frozenset(
    {
        "as_none",
        "as_tensor",
        "as_tensors",
        "as_int",
        "as_ints",
        "as_float",
        "as_floats",
        "as_string",
        "as_strings",
        "as_sym_int",
        "as_sym_ints",
        "as_scalar_type",
        "as_memory_format",
        "as_layout",
        "as_device",
        "as_bool",
        "as_bools",
        "as_sym_bool",
        "as_sym_bools",
        "as_optional_tensors",
        "as_sym_float",
        "as_sym_floats",
        "as_optional_tensor",
        "as_complex",
        "as_int_lists",
        "as_float_lists",
    }
)
_INPUT_SPECS = frozenset({"user_input", "parameter", "buffer", "tensor_constant", "constant_input"})
_TREESPEC_TYPES = frozenset(
    {None, "builtins.tuple", "builtins.list", "builtins.dict", "collections.OrderedDict"}
)


def screen_pt2(path: str | Path, *, max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES) -> None:
    """Refuse a `.pt2` archive that `torch.export.load` would unpickle or whose graph does
    more than a CNN's arithmetic. Reads the zip and its JSON only."""
    try:
        with zipfile.ZipFile(path) as zf:
            check_pt2_archive(zf, max_tensor_bytes=max_tensor_bytes)
    except zipfile.BadZipFile as exc:
        raise UnsupportedModel(f"corrupt or truncated zip archive: {exc}") from exc


def check_pt2_archive(
    zf: zipfile.ZipFile, *, max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES
) -> None:
    """`screen_pt2` on an open archive (`sniff` calls it before torch is imported)."""
    members = _pt2_members(zf)
    models = sorted(m.group(1) for name in members if (m := _MODEL_JSON.fullmatch(name)))
    if not models:
        raise UnsupportedModel("the .pt2 archive holds no exported program (models/*.json)")
    accounted = {
        "archive_format",
        "archive_version",
        "byteorder",
        ".data/version",
        ".data/serialization_id",
    }
    _expect_text(zf, members, "archive_format", "pt2")
    _expect_text(zf, members, "archive_version", "0")
    for model in models:
        accounted |= _check_pt2_model(zf, members, model, max_tensor_bytes)
    for name in members:
        if name in accounted or (name.startswith("extra/") and len(name) > len("extra/")):
            continue  # extra/ files are read as text and never interpreted
        raise UnsupportedModel(
            f"the .pt2 archive holds {name!r}, which torch.export.save does not write for "
            "an exported program (compiled code, pickled objects or legacy weights are "
            "refused)",
            code="unsafe_format",
        )


def _pt2_members(zf: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """Members by name below the archive's single root folder. Duplicates, compression
    and encryption are refused: torch's own zip reader must see exactly what we read."""
    infos = zf.infolist()
    roots = {info.filename.split("/", 1)[0] for info in infos}
    if len(roots) != 1 or any("/" not in info.filename for info in infos):
        raise UnsupportedModel(
            "the .pt2 archive must hold its members in one root folder", code="unsafe_format"
        )
    members: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        name = info.filename.split("/", 1)[1]
        if info.is_dir() and not name:
            continue
        if name in members or info.flag_bits & 0x1 or info.compress_type != zipfile.ZIP_STORED:
            raise UnsupportedModel(
                f"the .pt2 archive member {name!r} is duplicated, encrypted or compressed; "
                "torch.export.save writes each member once, stored",
                code="unsafe_format",
            )
        members[name] = info
    return members


def _read(zf: zipfile.ZipFile, members: Mapping[str, zipfile.ZipInfo], name: str) -> bytes:
    if name not in members:
        raise UnsupportedModel(f"the .pt2 archive lacks {name!r}")
    return zf.read(members[name])


def _expect_text(
    zf: zipfile.ZipFile, members: Mapping[str, zipfile.ZipInfo], name: str, value: str
) -> None:
    if _read(zf, members, name).strip() != value.encode():
        raise UnsupportedModel(
            f"the .pt2 archive's {name} is not {value!r}: not an archive this torch loads"
        )


def _json(zf: zipfile.ZipFile, members: Mapping[str, zipfile.ZipInfo], name: str) -> Any:
    try:
        return json.loads(_read(zf, members, name))
    except (ValueError, RecursionError) as exc:
        raise UnsupportedModel(f"the .pt2 archive's {name} is not valid JSON") from exc


def _check_pt2_model(
    zf: zipfile.ZipFile,
    members: Mapping[str, zipfile.ZipInfo],
    model: str,
    max_tensor_bytes: int,
) -> set[str]:
    """Check one exported program and its payloads; return the member names it uses."""
    program_name = f"models/{model}.json"
    weights_name = f"data/weights/{model}_weights_config.json"
    constants_name = f"data/constants/{model}_constants_config.json"
    inputs_name = f"data/sample_inputs/{model}.pt"
    used = {program_name, weights_name, constants_name}
    used |= _check_payloads(
        zf, members, weights_name, "data/weights/", _WEIGHT_RECORD, max_tensor_bytes
    )
    used |= _check_payloads(
        zf, members, constants_name, "data/constants/", _CONSTANT_RECORD, max_tensor_bytes
    )
    if inputs_name in members:
        # torch.load(weights_only=True) reads it, and on failure retries without
        # weights_only: its pickle must rebuild tensors and nothing else.
        from worker.engine.load.sniff import check_torch_save_archive

        check_torch_save_archive(
            _read(zf, members, inputs_name), f"the .pt2 archive ({inputs_name})"
        )
        used.add(inputs_name)
    check_exported_program(_json(zf, members, program_name), max_tensor_bytes=max_tensor_bytes)
    return used


def _check_payloads(
    zf: zipfile.ZipFile,
    members: Mapping[str, zipfile.ZipInfo],
    config_name: str,
    folder: str,
    record: re.Pattern[str],
    max_tensor_bytes: int,
) -> set[str]:
    """Weights/constants config: raw tensors only, each inside its record."""
    config = _json(zf, members, config_name)
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict) or set(config) != {"config"}:
        raise UnsupportedModel(f"the .pt2 archive's {config_name} is malformed")
    used = set()
    for fqn, meta in entries.items():
        what = f"{fqn!r} in {config_name}"
        if not isinstance(meta, dict):
            raise UnsupportedModel(f"{what} is malformed")
        if meta.get("use_pickle") is not False:
            raise UnsupportedModel(
                f"{what} is stored as a pickle (use_pickle), which loading would execute; "
                "only raw tensors are accepted",
                code="unsafe_format",
            )
        path_name = meta.get("path_name")
        if not isinstance(path_name, str) or not record.fullmatch(path_name):
            raise UnsupportedModel(
                f"{what} is stored as {path_name!r}: not a raw tensor record (custom, opaque "
                "and torchbind objects are unpickled on load)",
                code="unsafe_format",
            )
        if not isinstance(fqn, str) or not _FQN.fullmatch(fqn):
            raise UnsupportedModel(f"the .pt2 archive names a tensor {fqn!r}", code="unsafe_format")
        name = folder + path_name
        if name not in members:
            raise UnsupportedModel(f"{what} refers to {name!r}, which the archive lacks")
        _check_payload_meta(
            meta.get("tensor_meta"), members[name].file_size, what, max_tensor_bytes
        )
        used.add(name)
    return used


def _check_payload_meta(meta: Any, record_bytes: int, what: str, max_tensor_bytes: int) -> None:
    """Plain strided CPU/CUDA tensor whose view fits its record (an empty record makes
    the loader allocate zeros of the declared size: that is bounded too)."""
    if not isinstance(meta, dict):
        raise UnsupportedModel(f"{what} has no tensor metadata", code="unsafe_format")
    itemsize = _DTYPE_BYTES.get(meta.get("dtype"))  # type: ignore[arg-type]
    device = meta.get("device")
    if (
        itemsize is None
        or meta.get("layout") != _LAYOUT_STRIDED
        or not isinstance(device, dict)
        or device.get("type") not in ("cpu", "cuda")
    ):
        raise UnsupportedModel(
            f"{what} is not a plain tensor (dtype {meta.get('dtype')}, layout "
            f"{meta.get('layout')})",
            code="unsupported_op",
        )
    sizes = [_literal_int(s, what) for s in meta.get("sizes", [])]
    strides = [_literal_int(s, what) for s in meta.get("strides", [])]
    offset = _literal_int(meta.get("storage_offset"), what)
    if len(sizes) != len(strides) or min([offset, *sizes, *strides]) < 0 or len(sizes) > 8:
        raise UnsupportedModel(f"{what} has an impossible shape", code="invalid_model")
    numel = math.prod(sizes)
    _bound(numel * itemsize, max_tensor_bytes, what)
    if record_bytes == 0:
        return  # the loader makes zeros(sizes), bounded above
    extent = offset + 1 + sum((n - 1) * s for n, s in zip(sizes, strides, strict=True))
    extent = extent if numel else 0
    if record_bytes % itemsize or extent * itemsize > record_bytes:
        raise UnsupportedModel(
            f"{what} reaches past its record ({record_bytes} bytes)", code="invalid_model"
        )


def _literal_int(value: Any, what: str) -> int:
    if isinstance(value, dict) and set(value) == {"as_int"} and type(value["as_int"]) is int:
        return int(value["as_int"])
    raise UnsupportedModel(f"{what} has a non-literal size", code="unsafe_format")


def _bound(nbytes: int, limit: int, what: str) -> None:
    if nbytes > limit:
        raise UnsupportedModel(
            f"{what} would take {nbytes / (1 << 30):.3g} GiB, over the {limit / (1 << 30):.3g} "
            "GiB allowed for one tensor",
            code="too_large",
        )


# --- .pt2: the exported program --------------------------------------------------------------


def check_exported_program(
    program: Any, *, max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES
) -> None:
    """Check a serialized ExportedProgram (the parsed models/<name>.json)."""
    if not isinstance(program, dict) or not isinstance(program.get("graph_module"), dict):
        raise UnsupportedModel("the .pt2 archive's program is malformed")
    _check_strings(program)
    verifiers = program.get("verifiers") or []
    if not isinstance(verifiers, list) or not set(verifiers) <= _DIALECTS:
        raise UnsupportedModel(f"unknown export dialect {verifiers!r}", code="unsupported_op")
    if program.get("guards_code"):
        # Python source that torch compiles into the loaded module's guard function.
        raise UnsupportedModel("the exported program carries guard code", code="unsafe_format")
    for key in program.get("range_constraints") or {}:
        _check_symbol(key)
    module = program["graph_module"]
    graph = module.get("graph")
    if not isinstance(graph, dict):
        raise UnsupportedModel("the .pt2 archive's program has no graph")
    if graph.get("custom_obj_values") or module.get("treespec_namedtuple_fields"):
        raise UnsupportedModel(
            "the exported program holds custom (torchbind/opaque) objects or named tuples",
            code="unsafe_format",
        )
    for node in graph.get("nodes") or []:  # the operators first: the clearest refusal
        target = node.get("target") if isinstance(node, dict) else None
        if target not in PT2_ALLOWED_OPS:
            raise UnsupportedModel(_refusal(str(target)), code="unsupported_op")
    _check_names_and_exprs(program)
    _check_signature(module.get("signature"))
    for entry in module.get("module_call_graph") or []:
        _check_call_entry(entry)
    _check_nodes(graph, max_tensor_bytes)


def _check_strings(value: Any) -> None:
    """No control characters (line breaks other than \\n) anywhere in the JSON."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str) and _CONTROL.search(item):
            raise UnsupportedModel(
                "the exported program holds control characters in its text",
                code="unsafe_format",
            )


def _check_identifier(name: Any) -> None:
    if not isinstance(name, str) or not _IDENT.fullmatch(name) or name in _PY_KEYWORDS:
        raise UnsupportedModel(
            f"the exported program names a value {str(name)[:60]!r}: not an identifier",
            code="unsafe_format",
        )


def _check_symbol(name: Any) -> None:
    if not isinstance(name, str) or not _SYMBOL.fullmatch(name):
        raise UnsupportedModel(
            f"the exported program names a symbol {str(name)[:60]!r}", code="unsafe_format"
        )


def check_sym_expr(expr: Any) -> None:
    """Refuse a shape expression that is more than sympy arithmetic on shape symbols."""
    if not isinstance(expr, str) or len(expr) > _MAX_EXPR_CHARS or "**" in expr:
        raise UnsupportedModel(
            "the exported program has an overlong shape expression or a power in one",
            code="unsafe_format",
        )
    pos = 0
    while pos < len(expr):
        token = _SYMPY_TOKEN.match(expr, pos)
        if token is None or token.end() == pos:
            raise UnsupportedModel(
                f"the exported program's shape expression {expr[:80]!r} holds "
                f"{expr[pos : pos + 10]!r}, which is not shape arithmetic",
                code="unsafe_format",
            )
        name = token.group("name")
        if name is not None and name not in _SYMPY_NAMES and not _SYMBOL.fullmatch(name):
            raise UnsupportedModel(
                f"the exported program's shape expression calls {name!r}", code="unsafe_format"
            )
        pos = token.end()


def _check_names_and_exprs(value: Any) -> None:
    """Every `name`/`as_name` is an identifier, every dict of values is keyed by them, and
    every `expr_str` is shape arithmetic."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
            continue
        if not isinstance(item, dict):
            continue
        for key, sub in item.items():
            if key in ("name", "as_name", "custom_obj_name"):
                if sub is not None:  # a node's name is optional
                    _check_identifier(sub)
            elif key == "expr_str":
                check_sym_expr(sub)
            elif key in ("tensor_values", "sym_int_values", "sym_bool_values", "sym_float_values"):
                for name in sub if isinstance(sub, dict) else ():
                    _check_identifier(name)
            elif key in (
                "parameter_name",
                "buffer_name",
                "tensor_constant_name",
                "user_input_name",
            ) and not (isinstance(sub, str) and _FQN.fullmatch(sub)):
                raise UnsupportedModel(
                    f"the exported program names a tensor {str(sub)[:60]!r}", code="unsafe_format"
                )
            if key == "metadata":
                continue  # free text (stack traces), checked for control characters only
            if isinstance(sub, dict | list):
                stack.append(sub)


def _check_signature(signature: Any) -> None:
    if not isinstance(signature, dict):
        raise UnsupportedModel("the exported program has no signature")
    for spec in signature.get("input_specs") or []:
        kind = next(iter(spec), None) if isinstance(spec, dict) else None
        if kind not in _INPUT_SPECS:
            raise UnsupportedModel(
                f"the exported program takes a {kind} input (custom objects and effect "
                "tokens are refused)",
                code="unsafe_format" if kind == "custom_obj" else "unsupported_op",
            )
    for spec in signature.get("output_specs") or []:
        kind = next(iter(spec), None) if isinstance(spec, dict) else None
        if kind != "user_output":
            raise UnsupportedModel(
                f"the exported program has a {kind} output: it mutates its inputs or "
                "buffers, or is a training graph. Export the model in eval mode "
                "(model.eval()) for inference",
                code="unsupported_op",
            )


def _check_call_entry(entry: Any) -> None:
    """Module call graph: module paths, argument names and pytree specs of plain
    containers (they become the loaded module's forward signature)."""
    if not isinstance(entry, dict) or not _CALL_FQN.fullmatch(str(entry.get("fqn", ""))):
        raise UnsupportedModel(
            "the exported program's module call graph is malformed", code="unsafe_format"
        )
    signature = entry.get("signature")
    if signature is None:
        return
    for name in signature.get("forward_arg_names") or []:
        _check_identifier(name)
    for key in ("in_spec", "out_spec"):
        try:
            spec = json.loads(signature.get(key) or "null")
        except (ValueError, TypeError, RecursionError) as exc:
            raise UnsupportedModel(f"the exported program's {key} is malformed") from exc
        _check_treespec(spec)


def _check_treespec(spec: Any) -> None:
    stack = [spec]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            if item.get("type") not in _TREESPEC_TYPES:
                raise UnsupportedModel(
                    f"the exported program's inputs or outputs are a {item.get('type')!r}; "
                    "only tensors in tuples, lists and dicts are supported",
                    code="unsupported_op",
                )
            context = item.get("context")
            if isinstance(context, str) and context != "null":
                try:
                    keys = json.loads(context)
                except ValueError as exc:
                    raise UnsupportedModel("the exported program's spec is malformed") from exc
                for key in keys if isinstance(keys, list) else [keys]:
                    if key is not None:
                        _check_identifier(key)
            stack.extend(item.get("children_spec") or [])


def _tensor_names(arg: Any) -> list[str]:
    """The tensor value names an Argument refers to."""
    if not isinstance(arg, dict) or len(arg) != 1:
        raise UnsupportedModel("the exported program has a malformed argument")
    kind, value = next(iter(arg.items()))
    if kind not in _ARGUMENT_KINDS:
        raise UnsupportedModel(
            f"the exported program passes an argument of kind {kind!r} (graphs, operators "
            "and custom objects as values are refused)",
            code="unsupported_op",
        )
    if kind == "as_tensor":
        return [value["name"]]
    if kind == "as_tensors":
        return [v["name"] for v in value]
    if kind == "as_optional_tensor":
        return [value["as_tensor"]["name"]] if "as_tensor" in value else []
    if kind == "as_optional_tensors":
        return [v["as_tensor"]["name"] for v in value if "as_tensor" in v]
    return []


def _check_nodes(graph: Mapping[str, Any], max_tensor_bytes: int) -> None:
    """Operators on the allowlist, no in-place write to an input (or a view of one), and
    tensors within the bound at the shapes the graph records."""
    sizes = _recorded_sizes(graph.get("tensor_values") or {}, max_tensor_bytes)
    # Graph inputs are user inputs, parameters, buffers and constants alike.
    inputs = {n for a in graph.get("inputs") or [] for n in _tensor_names(a)}
    for node in graph.get("nodes") or []:
        target = node["target"]  # on the allowlist (check_exported_program)
        args = {}
        for named in node.get("inputs") or []:
            _check_identifier(named.get("name"))
            args[named["name"]] = named.get("arg")
        for arg in args.values():
            _tensor_names(arg)  # refuses graphs, operators and custom objects as values
        outputs = [n for a in node.get("outputs") or [] for n in _tensor_names(a)]
        # The loader binds arguments by name: in-place ops write, and views alias, `self`.
        written = set(_tensor_names(args["self"])) if "self" in args else set()
        if _is_inplace(target) and written & inputs:
            raise UnsupportedModel(
                f"operator {_short_op(target)} writes in place to the graph input, parameter "
                f"or buffer {sorted(written)[0]!r}",
                code="unsupported_op",
            )
        if target in PT2_VIEW_OPS and written & inputs:
            inputs |= set(outputs)  # a view of an input is the input for later writes
        _check_created_size(target, args, sizes, max_tensor_bytes)


def _is_inplace(target: str) -> bool:
    name = target.rsplit(".", 2)[-2] if target.startswith(_ATEN) else ""
    return name.endswith("_") and not name.startswith("_")


def _short_op(target: str) -> str:
    return target.removeprefix("torch.ops.").replace(".default", "")


def _refusal(target: str) -> str:
    if not target.startswith(("torch.ops.", "_operator.", "torch.", "math.")):
        reason = "is not a torch operator"
    elif not target.startswith(_ATEN) and target.startswith("torch.ops."):
        reason = "is a custom or higher-order operator (only aten operators are allowed)"
    else:
        reason = next(
            (why for pattern, why in _REFUSAL_REASONS if pattern.search(target)),
            "is not among the operators a CNN needs",
        )
    return f"operator {_short_op(target)[:80]} {reason}; it is refused before loading"


def _recorded_sizes(values: Mapping[str, Any], max_tensor_bytes: int) -> dict[str, int]:
    """Elements of each value the graph records with literal (or hinted) sizes, bounded."""
    sizes = {}
    for name, meta in values.items():
        if not isinstance(meta, dict):
            continue
        dims = []
        for dim in meta.get("sizes") or []:
            if "as_int" in dim:
                dims.append(dim["as_int"])
            elif (
                isinstance(dim.get("as_expr"), dict)
                and (dim["as_expr"].get("hint") or {}).get("as_int") is not None
            ):
                dims.append(dim["as_expr"]["hint"]["as_int"])
            else:
                dims.append(1)
        if not all(isinstance(d, int) for d in dims):
            raise UnsupportedModel(f"value {name!r} has a malformed shape")
        numel = math.prod(dims)
        itemsize = _DTYPE_BYTES.get(meta.get("dtype", 0), 8)
        _bound(numel * itemsize, max_tensor_bytes, f"value {name!r}")
        sizes[name] = numel
    return sizes


# Creation ops whose output size is an argument: bounded from the argument itself, since
# the sizes a graph records are only what the file claims.
_SIZE_ARGS = {
    _ATEN + "full.default": "size",
    _ATEN + "zeros.default": "size",
    _ATEN + "ones.default": "size",
    _ATEN + "new_zeros.default": "size",
    _ATEN + "new_ones.default": "size",
    _ATEN + "new_full.default": "size",
    _ATEN + "expand.default": "size",
    _ATEN + "repeat.default": "repeats",
}


def _check_created_size(
    target: str, args: Mapping[str, Any], sizes: Mapping[str, int], max_tensor_bytes: int
) -> None:
    what = f"operator {_short_op(target)}"
    if target in _SIZE_ARGS:
        dims = _int_list(args.get(_SIZE_ARGS[target]))
        numel = math.prod(max(d, 1) for d in dims)
        if target.endswith("repeat.default"):
            self_names = _tensor_names(args.get("self", {"as_none": True}))
            numel *= sizes.get(self_names[0], 1) if self_names else 1
        _bound(numel * 4, max_tensor_bytes, what)
    elif target.startswith(_ATEN + "meshgrid."):
        # Each output holds the product of the inputs' lengths (as the graph records
        # them; the sandbox's memory limit stops a file that understates them).
        tensors = _tensor_names(args.get("tensors", {"as_none": True}))
        _bound(math.prod(sizes.get(n, 1) for n in tensors) * 4, max_tensor_bytes, what)
    elif target.startswith(_ATEN + "arange."):
        values = [_number(args.get(k)) for k in ("start", "end", "step")]
        start, end, step = values[0] or 0, values[1], values[2] or 1
        if end is not None and step:
            _bound(max(0, math.ceil((end - start) / step)) * 8, max_tensor_bytes, what)


def _int_list(arg: Any) -> list[int]:
    if not isinstance(arg, dict):
        return []
    if "as_ints" in arg:
        return [int(v) for v in arg["as_ints"]]
    if "as_sym_ints" in arg:
        return [int(v["as_int"]) for v in arg["as_sym_ints"] if "as_int" in v]
    return []


def _number(arg: Any) -> float | None:
    if isinstance(arg, dict):
        for key in ("as_int", "as_float"):
            if isinstance(arg.get(key), int | float):
                return float(arg[key])
        if isinstance(arg.get("as_sym_int"), dict) and "as_int" in arg["as_sym_int"]:
            return float(arg["as_sym_int"]["as_int"])
    return None


# --- ONNX ------------------------------------------------------------------------------------


def screen_onnx(model: Any, *, domains: Iterable[str] = DEFAULT_ONNX_DOMAINS) -> None:
    """Refuse external data anywhere in `model` and operators outside `domains` (plus the
    model's own local functions, whose bodies pass the same checks)."""
    for tensor, where in _onnx_tensors(model):
        if tensor.data_location == 1 or len(tensor.external_data):  # TensorProto.EXTERNAL
            raise UnsupportedModel(
                f"tensor {tensor.name!r} ({where}) is stored as external data; upload a "
                "single-file ONNX model with its weights embedded",
                code="external_data_forbidden",
            )
    _check_onnx_domains(model, frozenset(domains))


def onnx_graphs(model: Any) -> Iterator[tuple[Any, str]]:
    """Every graph: the main one, attribute subgraphs at any depth (If/Loop/Scan), local
    functions' bodies (as a pseudo-graph of nodes) and training-info graphs."""
    stack: list[tuple[Any, str]] = [(model.graph, "the main graph")]
    stack += [(f, f"function {f.domain}:{f.name}") for f in model.functions]
    for info in model.training_info:
        stack += [(info.initialization, "training info"), (info.algorithm, "training info")]
    while stack:
        graph, where = stack.pop()
        yield graph, where
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("g"):
                    stack.append((attr.g, f"a subgraph of {node.op_type} in {where}"))
                stack += [(g, f"a subgraph of {node.op_type} in {where}") for g in attr.graphs]


def _onnx_tensors(model: Any) -> Iterator[tuple[Any, str]]:
    """Every TensorProto the model holds, with where it is."""
    for graph, where in onnx_graphs(model):
        for tensor in getattr(graph, "initializer", ()):
            yield tensor, f"an initializer of {where}"
        for sparse in getattr(graph, "sparse_initializer", ()):
            yield sparse.values, f"a sparse initializer of {where}"
            yield sparse.indices, f"a sparse initializer of {where}"
        attributes = [a for n in graph.node for a in n.attribute]
        attributes += list(getattr(graph, "attribute_proto", ()))  # function defaults
        for attr in attributes:
            held = [attr.t] if attr.HasField("t") else []
            held += list(attr.tensors)
            sparse = [attr.sparse_tensor] if attr.HasField("sparse_tensor") else []
            for sp in [*sparse, *attr.sparse_tensors]:
                held += [sp.values, sp.indices]
            for tensor in held:
                yield tensor, f"an attribute in {where}"


def _check_onnx_domains(model: Any, allowed: frozenset[str]) -> None:
    local = {(f.domain, f.name) for f in model.functions}
    for function in model.functions:
        if function.domain in allowed:
            raise UnsupportedModel(
                f"local function {function.name!r} is declared in the standard domain "
                f"{function.domain!r}, where it would stand in for a built-in operator",
                code="unsupported_op",
            )
    # An imported domain that no node uses is inert (exporters stamp their own, and
    # onnxruntime's optimiser stamps all it knows); the nodes below are what would run.
    for graph, where in onnx_graphs(model):
        for node in graph.node:
            if node.domain not in allowed and (node.domain, node.op_type) not in local:
                raise UnsupportedModel(
                    f"operator {node.domain}:{node.op_type} ({where}) is outside the allowed "
                    f"domains {_domains(allowed)}",
                    code="unsupported_op",
                )


def _domains(domains: Iterable[str]) -> str:
    return ", ".join(sorted({repr(d or "ai.onnx") for d in domains}))


# Shape-making ops and the input that decides their output's size.
_SHAPE_INPUTS = {"Expand": 1, "ConstantOfShape": 0, "Tile": 1, "Upsample": 1}


def check_onnx_allocations(
    model: Any,
    input_shapes: Sequence[Sequence[int]],
    *,
    max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES,
) -> None:
    """Refuse (`too_large`) a model with a tensor over `max_tensor_bytes` at these input
    shapes (one per graph input that is not an initializer), found without running it:
    ONNX shape inference with data propagation, then the outputs of Expand,
    ConstantOfShape, Tile, Resize, Upsample and Range whose shape inputs are constants."""
    import onnx

    work = onnx.ModelProto()
    work.CopyFrom(model)
    initializers = {t.name for t in work.graph.initializer}
    feeds = [v for v in work.graph.input if v.name not in initializers]
    for value, shape in zip(feeds, input_shapes, strict=False):
        declared = value.type.tensor_type.shape.dim
        if len(declared) == len(shape):
            for dim, size in zip(declared, shape, strict=True):
                dim.Clear()
                dim.dim_value = int(size)
    inferred = _infer(work)
    known: dict[str, tuple[list[int | None], int]] = {}
    for graph, where in onnx_graphs(inferred):
        values = [
            *getattr(graph, "value_info", ()),
            *getattr(graph, "output", ()),
            *getattr(graph, "input", ()),
        ]
        for value in values:
            if isinstance(value, str):
                continue  # a function's inputs and outputs are bare names
            found = _value_shape(value)
            if found is None:
                continue
            known[value.name] = found
            dims = [d for d in found[0] if d is not None]
            if len(dims) == len(found[0]):
                _bound(
                    math.prod(dims) * found[1], max_tensor_bytes, f"tensor {value.name!r} ({where})"
                )
    for graph, where in onnx_graphs(inferred):
        constants = _small_constants(graph)
        for node in graph.node:
            _check_constant_shape(node, constants, known, max_tensor_bytes, where)


def _infer(model: Any) -> Any:
    """Shape inference, strict where the model allows it; the model as it was when
    inference cannot run at all (the constant-target checks still apply)."""
    import onnx

    for strict in (True, False):
        try:
            return onnx.shape_inference.infer_shapes(
                model, check_type=False, strict_mode=strict, data_prop=True
            )
        except Exception:  # noqa: BLE001 - a model inference rejects is judged without it
            continue
    return model


def _itemsize(elem_type: int) -> int:
    import onnx

    try:
        return max(1, onnx.helper.tensor_dtype_to_np_dtype(elem_type).itemsize)
    except Exception:  # noqa: BLE001 - strings and unknown types: a byte per element
        return 1


def _value_shape(value: Any) -> tuple[list[int | None], int] | None:
    tensor_type = value.type.tensor_type
    if not value.type.HasField("tensor_type") or not tensor_type.HasField("shape"):
        return None
    dims = [
        d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else None
        for d in tensor_type.shape.dim
    ]
    return dims, _itemsize(tensor_type.elem_type)


def _small_constants(graph: Any, limit: int = 64) -> dict[str, list[float]]:
    """Values of the graph's small numeric constants (initializers and Constant nodes):
    the shapes, repeats, scales and ranges that decide how much an op allocates."""
    from onnx import numpy_helper

    found: dict[str, list[float]] = {}
    tensors = [(t.name, t) for t in getattr(graph, "initializer", ())]
    for node in graph.node:
        if node.op_type != "Constant" or not node.output:
            continue
        for attr in node.attribute:
            if attr.name == "value" and attr.HasField("t"):
                tensors.append((node.output[0], attr.t))
            elif attr.name == "value_ints":
                found[node.output[0]] = [float(v) for v in attr.ints]
            elif attr.name in ("value_int", "value_float"):
                found[node.output[0]] = [float(attr.i if attr.name == "value_int" else attr.f)]
    for name, tensor in tensors:
        if math.prod(tensor.dims) > limit or tensor.data_location == 1:
            continue
        try:
            found[name] = [float(v) for v in numpy_helper.to_array(tensor).reshape(-1)]
        except Exception:  # noqa: BLE001 - an unreadable constant decides nothing here
            continue
    return found


def _check_constant_shape(
    node: Any,
    constants: Mapping[str, list[float]],
    known: Mapping[str, tuple[list[int | None], int]],
    max_tensor_bytes: int,
    where: str,
) -> None:
    """Bound what a shape-making op allocates when its shape input is a constant (a lower
    bound where the data input's size is unknown)."""
    op = node.op_type
    inputs = list(node.input)
    what = f"the output of {op} {node.name or node.output[0]!r} ({where})"
    out = known.get(node.output[0]) if node.output else None
    itemsize = out[1] if out else 4
    if op == "Range" and all(i in constants for i in inputs[:3]):
        start, limit, delta = (constants[i][0] for i in inputs[:3])
        if delta:
            _bound(max(0, math.ceil((limit - start) / delta)) * itemsize, max_tensor_bytes, what)
        return
    index = _SHAPE_INPUTS.get(op)
    if op == "Resize":  # sizes (input 3) when given, else scales (input 2)
        index = 3 if len(inputs) > 3 and inputs[3] else 2
    if index is None or len(inputs) <= index or inputs[index] not in constants:
        return
    values = constants[inputs[index]]
    data = known.get(inputs[0]) if op != "ConstantOfShape" else None
    data_dims = data[0] if data else []
    if op == "ConstantOfShape" or (op == "Resize" and index == 3):
        numel = math.prod(max(int(v), 1) for v in values)
    elif op == "Expand":
        # broadcasting: each output dim is the larger of the two
        rank = max(len(values), len(data_dims))
        padded = [1] * (rank - len(data_dims)) + [d or 1 for d in data_dims]
        target = [1] * (rank - len(values)) + [max(int(v), 1) for v in values]
        numel = math.prod(max(a, b) for a, b in zip(padded, target, strict=True))
    elif op == "Tile":
        numel = math.prod(max(int(v), 1) for v in values) * math.prod(d or 1 for d in data_dims)
    else:  # Upsample and Resize scales
        numel = int(
            math.prod([(d or 1) * max(v, 1.0) for d, v in zip(data_dims, values, strict=False)])
        )
    _bound(int(numel) * itemsize, max_tensor_bytes, what)
