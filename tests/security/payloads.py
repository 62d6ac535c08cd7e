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
        nodes, "tiny",
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
        helper.make_node("ConstantOfShape", ["shape"], ["big"],
                         value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
        helper.make_node("ReduceSum", ["big"], ["s"], keepdims=0),
        helper.make_node("Add", ["image", "s"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "bomb",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 8, 8])],
        [shape],
    )
    return _save_model(graph, path)


def onnx_endless_loop(path: Path) -> Path:
    """A Loop with a 2^62 trip count whose body does real work: first-running it never ends."""
    from onnx import TensorProto, helper, numpy_helper

    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Sin", ["acc_in"], ["acc_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "cond", "image"], ["logits"], body=body)],
        "endless",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 8, 8])],
        [numpy_helper.from_array(np.array(1 << 62, dtype=np.int64), "trips"),
         numpy_helper.from_array(np.array(True), "cond")],
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
        nodes, "crash",
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

    header = json.dumps({"w": {"dtype": "F32", "shape": [1_000_000, 1_000_000],
                               "data_offsets": [0, 16]}}).encode()
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
    np.savez(path, x=np.zeros((4, 3, 8, 8), dtype=np.float32),
             y=np.array([1, "a", None, 2], dtype=object))
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
