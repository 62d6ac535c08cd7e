"""Format detection from content, and pickles read without being executed."""

import collections
import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.engine import models
from worker.engine.errors import UnsupportedModel
from worker.engine.load.sniff import SAFE_PICKLE_GLOBALS, pickle_globals, sniff_format


class Canary:
    """Unpickling this writes a file: proof that a pickle was executed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (exec, (f"open({str(self.path)!r}, 'w').write('pwned')",))


def _code(path: Path) -> str:
    with pytest.raises(UnsupportedModel) as err:
        sniff_format(path)
    return err.value.code


def test_model_formats_are_told_from_their_bytes(
    tmp_path, tiny_resnet, tiny_resnet_onnx, tiny_resnet_pt2
):
    state = tiny_resnet.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "weights.onnx")
    torch.save(state, tmp_path / "weights.safetensors")
    torch.save(state, tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)
    assert sniff_format(tiny_resnet_onnx) == "onnx"
    assert sniff_format(tiny_resnet_pt2) == "pt2"
    # The names lie; the content decides.
    assert sniff_format(tmp_path / "weights.onnx") == "safetensors"
    assert sniff_format(tmp_path / "weights.safetensors") == "state_dict"
    assert sniff_format(tmp_path / "legacy.bin") == "state_dict"


def test_a_checkpoint_dict_of_weights_is_a_state_dict(tmp_path, tiny_resnet):
    optimizer = torch.optim.SGD(tiny_resnet.parameters(), lr=0.1, momentum=0.9)
    torch.save(
        {"epoch": 3, "state_dict": tiny_resnet.state_dict(), "optimizer": optimizer.state_dict()},
        tmp_path / "ckpt.pt",
    )
    assert sniff_format(tmp_path / "ckpt.pt") == "state_dict"


def test_datasets_are_told_apart(tmp_path):
    with open(tmp_path / "data.bin", "wb") as f:  # np.savez would append .npz to a path
        np.savez(f, x=np.zeros((2, 3), np.float32))
    with zipfile.ZipFile(tmp_path / "images.npz", "w") as zf:
        zf.writestr("cat/0.png", b"png")
    assert sniff_format(tmp_path / "data.bin") == "npz"
    assert sniff_format(tmp_path / "images.npz") == "zip"


def test_a_pickled_module_is_unsafe(tmp_path, tiny_resnet):
    torch.save(tiny_resnet, tmp_path / "model.pt")
    with pytest.raises(UnsupportedModel) as err:
        sniff_format(tmp_path / "model.pt")
    assert err.value.code == "unsafe_format"
    assert "TinyResNet" in err.value.message


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_a_code_running_pickle_is_refused_unexecuted(tmp_path, protocol):
    canary = tmp_path / "canary"
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(Canary(canary), protocol=protocol))
    assert _code(tmp_path / "evil.pkl") == "unsafe_format"
    assert not canary.exists()


def test_a_torch_save_with_code_inside_is_refused_unexecuted(tmp_path):
    canary = tmp_path / "canary"
    torch.save({"weight": torch.zeros(2), "extra": Canary(canary)}, tmp_path / "sd.pt")
    assert _code(tmp_path / "sd.pt") == "unsafe_format"
    assert not canary.exists()


def test_stack_global_operands_are_resolved():
    data = pickle.dumps(collections.OrderedDict(a=1), protocol=4)
    assert pickle_globals(data) == {"collections.OrderedDict"}
    assert pickle_globals(data) <= SAFE_PICKLE_GLOBALS
    assert pickle_globals(pickle.dumps(os.system, protocol=4)) == {f"{os.system.__module__}.system"}


def test_garbage_and_truncated_files_are_invalid(tmp_path, tiny_resnet_onnx, tiny_resnet_pt2):
    rng = np.random.default_rng(0)
    (tmp_path / "random.bin").write_bytes(rng.bytes(4096))
    (tmp_path / "empty.onnx").write_bytes(b"")
    data = tiny_resnet_onnx.read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    zipped = tiny_resnet_pt2.read_bytes()
    (tmp_path / "cut.pt2").write_bytes(zipped[: len(zipped) // 2])
    for name in ("random.bin", "empty.onnx", "cut.onnx", "cut.pt2"):
        assert _code(tmp_path / name) == "invalid_model", name


def test_random_bytes_starting_like_a_pickle_are_invalid_not_unsafe(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"\x80\x04" + bytes(range(256)) * 4)
    assert _code(tmp_path / "x.bin") == "invalid_model"


def test_pt2_archives_are_scanned_for_pickles(tmp_path, tiny_resnet_pt2):
    canary = tmp_path / "canary"
    with (
        zipfile.ZipFile(tiny_resnet_pt2) as src,
        zipfile.ZipFile(tmp_path / "evil.pt2", "w") as dst,
    ):
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("sample_inputs/model.pt"):
                buf = io.BytesIO()
                torch.save({"x": Canary(canary)}, buf)
                data = buf.getvalue()
            dst.writestr(info, data)
    assert _code(tmp_path / "evil.pt2") == "unsafe_format"
    assert not canary.exists()


def test_tf_style_graph_is_onnx(tmp_path):
    assert sniff_format(models.tf_style_onnx(tmp_path / "model.bin")) == "onnx"
