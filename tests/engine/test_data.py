"""Dataset loading: npz arrays and zipped image folders."""

import io
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from worker.engine import inspect
from worker.engine.errors import InvalidDataset
from worker.engine.train.data import load_dataset


def _npz(tmp_path: Path, **arrays: np.ndarray) -> Path:
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


def test_float_npz_with_labels_is_split_seeded(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 4, size=50)
    splits = load_dataset(_npz(tmp_path, x=x, y=y), (1, 3, 8, 8))
    assert splits.labeled and splits.num_classes == int(y.max()) + 1
    assert len(splits.train) == 40 and len(splits.val) == 10
    x_all = torch.cat([splits.train.tensors[0], splits.val.tensors[0]])
    assert torch.allclose(x_all.sum(0), torch.from_numpy(x).sum(0), atol=1e-4)  # a partition
    again = load_dataset(_npz(tmp_path, x=x, y=y), (1, 3, 8, 8))
    assert torch.equal(again.val.tensors[1], splits.val.tensors[1])


def test_uint8_is_scaled_and_normalised(tmp_path: Path) -> None:
    x = np.full((4, 2, 2, 2), 255, dtype=np.uint8)
    x[:, 1] = 0
    path = _npz(tmp_path, x=x, mean=np.array([0.5, 0.25]), std=np.array([0.5, 0.25]))
    splits = load_dataset(path, (1, 2, 2, 2))
    assert not splits.labeled and splits.num_classes is None
    assert len(splits.train) == 4  # unlabeled: everything trains
    data = splits.train.tensors[0]
    assert data.dtype == torch.float32
    assert torch.allclose(data[:, 0], torch.ones(4, 2, 2))  # (1 - 0.5) / 0.5
    assert torch.allclose(data[:, 1], -torch.ones(4, 2, 2))  # (0 - 0.25) / 0.25


def test_nhwc_and_missing_channel_are_adapted(tmp_path: Path) -> None:
    x = np.arange(2 * 4 * 5 * 3, dtype=np.float32).reshape(2, 4, 5, 3)
    splits = load_dataset(_npz(tmp_path, x=x), (1, 3, 4, 5))
    assert splits.train.tensors[0].shape == (2, 3, 4, 5)
    assert splits.train.tensors[0][0, 2, 1, 1] == x[0, 1, 1, 2]
    gray = np.zeros((3, 6, 6), dtype=np.float32)
    assert load_dataset(_npz(tmp_path, x=gray), (1, 1, 6, 6)).train.tensors[0].shape == (3, 1, 6, 6)


def test_shape_mismatch_is_a_typed_error(tmp_path: Path) -> None:
    x = np.zeros((5, 3, 8, 8), dtype=np.float32)
    with pytest.raises(InvalidDataset) as err:
        load_dataset(_npz(tmp_path, x=x), (1, 3, 16, 16))
    assert err.value.code == "dataset_shape_mismatch"


def test_object_arrays_are_refused(tmp_path: Path) -> None:
    path = _npz(tmp_path, x=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(InvalidDataset) as err:
        load_dataset(path, (1, 1))
    assert err.value.code == "invalid_dataset"


def test_bad_labels_are_refused(tmp_path: Path) -> None:
    x = np.zeros((4, 2), dtype=np.float32)
    with pytest.raises(InvalidDataset):
        load_dataset(_npz(tmp_path, x=x, y=np.array([0.5, 1, 2, 3])), (1, 2))


def _png(color: tuple[int, int, int], size: int = 12) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def test_zipped_image_folder(tmp_path: Path) -> None:
    path = tmp_path / "images.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for i in range(5):
            archive.writestr(f"root/cat/{i}.png", _png((255, 0, 0)))
            archive.writestr(f"root/dog/{i}.jpg", _png((0, 0, 255)))
        archive.writestr("root/readme.txt", "ignored")
    splits = load_dataset(path, (1, 3, 8, 8))
    assert splits.labeled and splits.num_classes == 2
    assert len(splits.train) == 8 and len(splits.val) == 2
    x, y = splits.train.tensors
    assert x.shape == (8, 3, 8, 8)
    red = x[y == 0]
    assert torch.allclose(red[:, 0], torch.ones_like(red[:, 0]), atol=0.02)
    assert float(red[:, 2].max()) < 0.02


@pytest.mark.parametrize("name", ["../evil/a.png", "/abs/a.png"])
def test_unsafe_paths_are_refused(tmp_path: Path, name: str) -> None:
    path = tmp_path / "bad.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("cls/ok.png", _png((1, 2, 3)))
        archive.writestr(name, _png((1, 2, 3)))
    with pytest.raises(InvalidDataset) as err:
        load_dataset(path, (1, 3, 8, 8))
    assert err.value.code == "unsafe_archive"


def test_links_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "link.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("cls/ok.png", _png((1, 2, 3)))
        info = zipfile.ZipInfo("cls/link.png")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/passwd")
    with pytest.raises(InvalidDataset) as err:
        load_dataset(path, (1, 3, 8, 8))
    assert err.value.code == "unsafe_archive"


# The loader runs the upload inspector's archive check (one implementation), on image
# folders and on .npz files alike.


def _special(path: Path, mode: int) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("cls/ok.png", _png((1, 2, 3)))
        info = zipfile.ZipInfo("cls/dev.png")
        info.external_attr = (mode | 0o666) << 16
        archive.writestr(info, b"")
    return path


def _bomb(path: Path) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("cls/bomb.png", bytes(8 << 20))  # 8 MiB of zeros: over 100:1
    return path


def _npz_bomb(path: Path) -> Path:
    with path.open("wb") as fh:  # a file object: savez would add ".npz" to a name
        np.savez_compressed(fh, x=np.zeros((1024, 1024, 2), dtype=np.float32))
    return path


@pytest.mark.parametrize(
    ("make", "phrase"),
    [
        (lambda p: _special(p, stat.S_IFCHR), "special files"),
        (lambda p: _special(p, stat.S_IFIFO), "special files"),
        (_bomb, "compressed more than 100:1"),
        (_npz_bomb, "compressed more than 100:1"),
    ],
    ids=["char_device", "fifo", "zip_bomb", "npz_bomb"],
)
def test_inspector_archive_rules_apply(tmp_path: Path, make, phrase: str) -> None:
    with pytest.raises(InvalidDataset) as err:
        load_dataset(make(tmp_path / "bad.zip"), (1, 3, 8, 8))
    assert err.value.code == "unsafe_archive"
    assert phrase in err.value.message


def test_archive_limits_are_the_inspectors(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "images.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for i in range(3):
            archive.writestr(f"cls/{i}.png", _png((1, 2, 3)))
    npz = _npz(tmp_path, x=np.zeros((3, 2), np.float32), y=np.arange(3), mean=np.zeros(1))
    assert len(load_dataset(path, (1, 3, 8, 8)).train) == 2  # within the limits
    monkeypatch.setattr(inspect, "MAX_ARCHIVE_MEMBERS", 2)
    for data in (path, npz):
        with pytest.raises(InvalidDataset, match="members \\(at most 2\\)") as err:
            load_dataset(data, (1, 3, 8, 8) if data == path else (1, 2))
        assert err.value.code == "unsafe_archive"
    monkeypatch.setattr(inspect, "MAX_ARCHIVE_MEMBERS", 100)
    monkeypatch.setattr(inspect, "MAX_ARCHIVE_BYTES", 100)
    with pytest.raises(InvalidDataset, match="unpacks to") as err:
        load_dataset(path, (1, 3, 8, 8))
    assert err.value.code == "unsafe_archive"


@pytest.mark.parametrize("content", [b"not an archive", b"PK\x03\x04truncated"])
def test_files_that_are_no_archive_are_invalid(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "data.npz"
    path.write_bytes(content)
    with pytest.raises(InvalidDataset) as err:
        load_dataset(path, (1, 2))
    assert err.value.code == "invalid_dataset"


def test_truncated_image_zip_is_invalid(tmp_path: Path) -> None:
    path = tmp_path / "images.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for i in range(4):
            archive.writestr(f"cls/{i}.png", _png((1, 2, 3)) * 50)
    data = path.read_bytes()
    # Keep the central directory, cut into the members' data: the listing reads fine,
    # the images do not.
    path.write_bytes(data[:200] + bytes(len(data) - 200 - 300) + data[-300:])
    with pytest.raises(InvalidDataset) as err:
        load_dataset(path, (1, 3, 8, 8))
    assert err.value.code == "invalid_dataset"
