"""Datasets for fine-tuning and evaluation: `.npz` arrays or zipped image folders.

`.npz`: `x` (N, ...) float32 used as is, or uint8 scaled to [0, 1]; optional integer `y`
(N,); optional `mean` / `std` (scalars or one value per channel) applied as
`(x - mean) / std`. Pickled (object) arrays are refused.

Zipped image folders: `class_name/image.png|jpg` (optionally under one top-level folder),
resized to the model's input. Members are read in memory, never extracted. Both kinds
pass the upload inspector's archive check (`worker.engine.inspect.check_archive`: links,
devices, absolute paths, `..`, member count, compression ratio, bytes unpacked) again here,
so a file that reached the store some other way meets the same rules.

Labeled data is split into train and a seeded held-back validation part. Unlabeled data
is all used for distillation; its validation part (a seeded sample of the same images)
only serves to measure agreement with the original model.
"""

import io
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from worker.engine.errors import InvalidDataset
from worker.engine.inspect import check_archive

VAL_FRACTION = 0.2
SPLIT_SEED = 0
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


@dataclass
class DatasetSplits:
    """Train and validation parts. Labeled parts hold (x, y); unlabeled ones hold (x,)."""

    train: TensorDataset
    val: TensorDataset | None
    num_classes: int | None
    labeled: bool


def load_dataset(path: str | Path, input_shape: Sequence[int]) -> DatasetSplits:
    """Load `path` (.npz or .zip) for a model whose first input has `input_shape`.

    `input_shape` includes the batch dimension (e.g. `(1, 3, 32, 32)`); samples must match
    the rest, after the unambiguous fixes (NHWC to NCHW, a missing channel dimension of 1).
    """
    path = Path(path)
    sample_shape = tuple(int(d) for d in input_shape[1:])
    try:
        x, y = _read_archive(path, sample_shape)
    except (zipfile.BadZipFile, EOFError) as exc:
        raise InvalidDataset(f"corrupt or truncated archive: {exc}") from exc
    return _split(torch.from_numpy(x), None if y is None else torch.from_numpy(y))


def _read_archive(
    path: Path, sample_shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Check the archive once, then read it as an .npz (a zip holding `x.npy`; stored names
    carry no suffix) or as zipped image folders."""
    if not zipfile.is_zipfile(path):
        raise InvalidDataset("a dataset is an .npz file or a .zip of class folders of images")
    with zipfile.ZipFile(path) as archive:
        members = check_archive(archive)
        if any(m.filename == "x.npy" for m in members):
            return _read_npz(path, sample_shape)
        return _read_image_zip(archive, members, sample_shape)


def _read_npz(path: Path, sample_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except ValueError as exc:  # object arrays need pickle, which is refused
        raise InvalidDataset(f"unreadable .npz (pickled arrays are refused): {exc}") from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InvalidDataset(f"not a readable .npz file: {exc}") from exc
    if "x" not in arrays:
        raise InvalidDataset("the .npz needs an array named 'x' (samples first)")
    x = _as_float(arrays["x"])
    x = _fit_shape(x, sample_shape)
    x = _normalise(x, arrays.get("mean"), arrays.get("std"))
    y = _labels(arrays["y"], len(x)) if "y" in arrays else None
    if not np.isfinite(x).all():
        raise InvalidDataset("x holds NaN or infinite values")
    return x, y


def _as_float(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    if x.dtype.kind not in "fiu" or x.ndim < 2 or len(x) == 0:
        raise InvalidDataset(
            f"x must be a non-empty numeric array (N, ...); got {x.dtype} {tuple(x.shape)}"
        )
    return x.astype(np.float32)


def _fit_shape(x: np.ndarray, sample: tuple[int, ...]) -> np.ndarray:
    """Samples shaped like the model input, fixing layouts only where that is unambiguous."""
    got = tuple(x.shape[1:])
    if got == sample:
        return x
    if len(sample) >= 2 and got == sample[1:] + sample[:1]:  # channels last
        return np.ascontiguousarray(np.moveaxis(x, -1, 1))
    if len(sample) >= 2 and sample[0] == 1 and got == sample[1:]:  # no channel dimension
        return x[:, None]
    raise InvalidDataset(
        f"samples have shape {list(got)} but the model takes {list(sample)}",
        code="dataset_shape_mismatch",
    )


def _normalise(x: np.ndarray, mean: np.ndarray | None, std: np.ndarray | None) -> np.ndarray:
    """(x - mean) / std with scalar or per-channel (dimension 1) statistics."""
    channels = x.shape[1]
    for name, value in (("mean", mean), ("std", std)):
        if value is None:
            continue
        if value.dtype.kind not in "fiu" or value.size not in (1, channels):
            raise InvalidDataset(f"{name} must be a number or one per channel ({channels})")
    if std is not None and (np.asarray(std) <= 0).any():
        raise InvalidDataset("std must be positive")
    shape = (1, -1) + (1,) * (x.ndim - 2)
    if mean is not None:
        x = x - np.asarray(mean, dtype=np.float32).reshape(shape)
    if std is not None:
        x = x / np.asarray(std, dtype=np.float32).reshape(shape)
    return x.astype(np.float32)


def _labels(y: np.ndarray, n: int) -> np.ndarray:
    if y.dtype.kind not in "iu" or y.shape != (n,):
        raise InvalidDataset(f"y must be {n} integer class labels; got {y.dtype} {y.shape}")
    if (y < 0).any():
        raise InvalidDataset("class labels must be non-negative")
    return y.astype(np.int64)


def _images(members: list[zipfile.ZipInfo]) -> list[zipfile.ZipInfo]:
    """The images among checked members, skipping folders, hidden files and anything else."""
    images = []
    for info in members:
        name = PurePosixPath(info.filename.replace("\\", "/"))
        hidden = any(p.startswith((".", "__MACOSX")) for p in name.parts)
        if not (info.is_dir() or hidden) and name.suffix.lower() in IMAGE_SUFFIXES:
            images.append(info)
    return images


def _class_of(members: list[zipfile.ZipInfo]) -> list[str]:
    """Each member's class: its parent folder, allowing one shared top-level folder."""
    parts = [PurePosixPath(m.filename.replace("\\", "/")).parts for m in members]
    depth = {len(p) for p in parts}
    if depth == {3} and len({p[0] for p in parts}) == 1:
        parts = [p[1:] for p in parts]
    elif depth != {2}:
        raise InvalidDataset(
            "a zipped image folder needs class_name/image.png entries (optionally under one "
            "top-level folder)"
        )
    return [p[0] for p in parts]


def _read_image_zip(
    archive: zipfile.ZipFile, members: list[zipfile.ZipInfo], sample_shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    if len(sample_shape) != 3 or sample_shape[0] not in (1, 3):
        raise InvalidDataset(
            f"image folders need a model taking (1 or 3, H, W) images, not {list(sample_shape)}",
            code="dataset_shape_mismatch",
        )
    channels, height, width = sample_shape
    images = _images(members)
    if not images:
        raise InvalidDataset("the archive holds no .png or .jpg images")
    classes = _class_of(images)
    names = sorted(set(classes))
    x = np.empty((len(images), channels, height, width), dtype=np.float32)
    for i, info in enumerate(images):
        x[i] = _decode(archive.read(info), channels, (width, height), info.filename)
    y = np.array([names.index(c) for c in classes], dtype=np.int64)
    return x, y


def _decode(data: bytes, channels: int, size: tuple[int, int], name: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            mode = "L" if channels == 1 else "RGB"
            resized = image.convert(mode).resize(size, Image.Resampling.BILINEAR)
            pixels = np.asarray(resized, dtype=np.float32) / 255.0
    except (OSError, Image.DecompressionBombError) as exc:
        raise InvalidDataset(f"unreadable image {name}: {exc}") from exc
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def _split(x: torch.Tensor, y: torch.Tensor | None) -> DatasetSplits:
    """Seeded held-back validation part: VAL_FRACTION of the samples, at least one."""
    n = len(x)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_val = max(1, round(VAL_FRACTION * n)) if n > 1 else 0
    val_idx, train_idx = order[:n_val], order[n_val:]
    if y is None:
        val = TensorDataset(x[val_idx]) if n_val else None
        return DatasetSplits(train=TensorDataset(x), val=val, num_classes=None, labeled=False)
    return DatasetSplits(
        train=TensorDataset(x[train_idx], y[train_idx]),
        val=TensorDataset(x[val_idx], y[val_idx]) if n_val else None,
        num_classes=int(y.max()) + 1,
        labeled=True,
    )
