"""The upload inspectors, in process and as the child process the API runs."""

import io
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from worker.engine import inspect
from worker.engine.errors import InvalidDataset
from worker.engine.inspect import inspect_dataset, inspect_model

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> tuple[dict, int, str]:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "worker.engine.inspect",
            *args,
            "--max-memory-bytes",
            str(16 << 30),
            "--max-cpu-s",
            "300",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout + proc.stderr
    return json.loads(lines[0]), proc.returncode, proc.stderr


def _png(size=(12, 10), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color=0 if mode == "L" else (10, 20, 30)).save(buf, "PNG")
    return buf.getvalue()


def _zip(path: Path, members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_model_info_of_an_onnx_file(tiny_resnet_onnx):
    info = inspect_model(tiny_resnet_onnx)
    assert info.format == "onnx"
    assert [(i.name, i.shape) for i in info.inputs] == [("input", ["batch", 3, 32, 32])]
    assert [(o.name, o.shape) for o in info.outputs] == [("logits", ["batch", 10])]
    assert info.input_shape == [1, 3, 32, 32]
    assert info.stats.params > 0 and info.stats.macs > info.stats.params


def test_cli_prints_one_json_line_for_a_good_model(tiny_resnet_onnx):
    result, code, _ = _cli("model", str(tiny_resnet_onnx))
    assert code == 0 and result["ok"] is True
    assert result["info"]["format"] == "onnx"
    assert result["info"]["inputs"][0]["name"] == "input"


def test_cli_refuses_bad_files_with_a_code(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"this is not a model" * 10)
    result, code, _ = _cli("model", str(tmp_path / "junk.onnx"))
    assert code == 0
    assert result["ok"] is False and result["code"] == "invalid_model" and result["message"]

    canary = tmp_path / "canary"

    class Evil:
        def __reduce__(self):
            return (exec, (f"open({str(canary)!r}, 'w').write('pwned')",))

    (tmp_path / "model.pt").write_bytes(pickle.dumps(Evil()))
    result, code, _ = _cli("model", str(tmp_path / "model.pt"))
    assert code == 0 and result["code"] == "unsafe_format"
    assert not canary.exists()


def test_cli_dataset(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.random((12, 3, 8, 8), dtype=np.float32), y=np.arange(12) % 3)
    result, code, _ = _cli("dataset", str(tmp_path / "d.npz"))
    assert code == 0 and result == {
        "ok": True,
        "info": {
            "format": "npz",
            "num_samples": 12,
            "sample_shape": [3, 8, 8],
            "num_classes": 3,
            "labeled": True,
        },
    }


def test_npz_datasets(tmp_path):
    np.savez(
        tmp_path / "u8.npz",
        x=np.zeros((5, 16, 16), np.uint8),
        mean=np.float32(0.5),
        std=np.float32(0.25),
    )
    info = inspect_dataset(tmp_path / "u8.npz")
    assert (info.num_samples, info.sample_shape, info.labeled, info.num_classes) == (
        5,
        [16, 16],
        False,
        None,
    )
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}] * 3, dtype=object))
    np.savez(tmp_path / "noy.npz", z=np.zeros((3, 2), np.float32))
    np.savez(tmp_path / "bady.npz", x=np.zeros((3, 2), np.float32), y=np.array([0.5, 1, 2]))
    for name in ("obj.npz", "noy.npz", "bady.npz"):
        with pytest.raises(InvalidDataset) as err:
            inspect_dataset(tmp_path / name)
        assert err.value.code == "invalid_dataset", name


def test_sample_shape_must_fit_the_model(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 8, 8, 3), np.float32))
    assert inspect_dataset(tmp_path / "d.npz", sample_shape=[3, 8, 8]).sample_shape == [8, 8, 3]
    with pytest.raises(InvalidDataset) as err:
        inspect_dataset(tmp_path / "d.npz", sample_shape=[3, 16, 16])
    assert err.value.code == "dataset_shape_mismatch"


def test_image_folders(tmp_path):
    members = {f"{c}/{i}.png": _png() for c in ("cat", "dog", "eel") for i in range(2)}
    info = inspect_dataset(_zip(tmp_path / "a.zip", members))
    assert (info.format, info.num_samples, info.num_classes, info.sample_shape) == (
        "imagefolder",
        6,
        3,
        [3, 10, 12],
    )
    nested = {f"root/{name}": data for name, data in members.items()} | {"__MACOSX/._x": b""}
    assert inspect_dataset(_zip(tmp_path / "b.zip", nested)).num_samples == 6
    gray = {"a/0.png": _png(mode="L"), "b/0.png": _png(mode="L")}
    assert inspect_dataset(_zip(tmp_path / "c.zip", gray)).sample_shape == [1, 10, 12]
    resized = inspect_dataset(tmp_path / "a.zip", sample_shape=[1, 28, 28])
    assert resized.sample_shape == [1, 28, 28]
    with pytest.raises(InvalidDataset):
        inspect_dataset(_zip(tmp_path / "flat.zip", {"0.png": _png()}))


def _link(path: Path) -> Path:
    info = zipfile.ZipInfo("cat/evil.png")
    info.external_attr = 0o120777 << 16
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(info, "/etc/passwd")
    return path


@pytest.mark.parametrize(
    "make",
    [
        lambda p: _zip(p, {"../escape.png": _png()}),
        lambda p: _zip(p, {"/abs/0.png": _png()}),
        lambda p: _link(p),
        lambda p: _zip(p, {"cat/bomb.png": b"\0" * (8 << 20)}, zipfile.ZIP_DEFLATED),
    ],
)
def test_unsafe_archives(tmp_path, make):
    with pytest.raises(InvalidDataset) as err:
        inspect_dataset(make(tmp_path / "unsafe.zip"))
    assert err.value.code == "unsafe_archive"


def test_archive_size_limits(tmp_path, monkeypatch):
    path = _zip(tmp_path / "many.zip", {f"c/{i}.png": _png() for i in range(5)})
    monkeypatch.setattr(inspect, "MAX_ARCHIVE_MEMBERS", 4)
    with pytest.raises(InvalidDataset) as err:
        inspect_dataset(path)
    assert err.value.code == "unsafe_archive"
    monkeypatch.setattr(inspect, "MAX_ARCHIVE_MEMBERS", 100)
    monkeypatch.setattr(inspect, "MAX_ARCHIVE_BYTES", 100)
    with pytest.raises(InvalidDataset) as err:
        inspect_dataset(path)
    assert err.value.code == "unsafe_archive"


def test_unsafe_zip_through_the_cli(tmp_path):
    result, code, _ = _cli("dataset", str(_zip(tmp_path / "x.zip", {"../../x.png": _png()})))
    assert code == 0 and result["code"] == "unsafe_archive"
