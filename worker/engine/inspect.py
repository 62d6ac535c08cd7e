"""What an upload is: the model and dataset inspectors the API runs on every upload.

    python -m worker.engine.inspect model PATH [--arch A] [--input-shape 1,3,224,224]
    python -m worker.engine.inspect prunability PATH [--arch A] [--input-shape ...]
    python -m worker.engine.inspect dataset PATH [--sample-shape 3,32,32]
        [--max-memory-bytes N] [--max-cpu-s N]

print exactly one JSON line on stdout, `{"ok": true, "info": {...}}` or
`{"ok": false, "code": "...", "message": "..."}`, and exit 0 either way (non-zero only on
a crash). The network is cut off (`worker.engine.sandbox`) and the limits applied first
thing, so parsing runs without network and under the limits. Imports are
lazy: a dataset never imports torch, a model imports it only once the file looks right.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import traceback
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from contract import DatasetInfo, ModelInfo, ModelStats
from contract.model_info import Prunability
from contract.shapes import ShapeError, parse_shape
from worker.engine.errors import EngineError, InvalidDataset, UnsupportedModel
from worker.engine.sandbox import deny_network

MAX_ARCHIVE_MEMBERS = 100_000
MAX_ARCHIVE_BYTES = 4 << 30  # uncompressed, all members together
MAX_COMPRESSION_RATIO = 100
# Members smaller than this cannot be bombs; small runs of zeros legitimately compress >100:1.
RATIO_CHECK_FROM = 1 << 20
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def inspect_model(
    path: str | Path, *, arch: str | None = None, input_shape: Any = None
) -> ModelInfo:
    """Load the model (format from its bytes) and count its parameters and MACs at batch 1."""
    from worker.engine.load.sniff import MODEL_FORMATS, sniff_format

    fmt = sniff_format(path)  # refuse garbage and pickles before paying for the torch import
    if fmt not in MODEL_FORMATS:
        raise UnsupportedModel(f"the file holds {fmt} data, not a model")
    from worker.engine.load.loaders import load_model
    from worker.engine.measure.stats import count_macs, count_params

    loaded = load_model(path, arch=arch, input_shape=input_shape)
    stats = ModelStats(
        params=count_params(loaded.module),
        macs=count_macs(loaded.module, loaded.example_inputs()),
    )
    return ModelInfo(
        format=loaded.format,  # type: ignore[arg-type]
        inputs=loaded.inputs,
        outputs=loaded.final_outputs or loaded.outputs,  # after any post-processing tail
        stats=stats,
        arch=loaded.arch,
        input_shape=list(loaded.input_shapes[0]),
    )


def inspect_prunability(
    path: str | Path, *, arch: str | None = None, input_shape: Any = None
) -> Prunability:
    """The model's channel groups, which are protected and why, and the largest MACs
    reduction reachable (`worker.engine.analyze.prunability`)."""
    from worker.engine.analyze.prunability import prunability
    from worker.engine.load.loaders import load_model

    return prunability(load_model(path, arch=arch, input_shape=input_shape))


# --- datasets -----------------------------------------------------------------------------


def inspect_dataset(path: str | Path, *, sample_shape: Sequence[int] | None = None) -> DatasetInfo:
    """`.npz` (x, optional integer y, optional mean/std) or a zipped image folder
    (`class_name/*.png|jpg`), read without unpacking it and without pickles."""
    path = Path(path)
    try:
        if not zipfile.is_zipfile(path):
            raise InvalidDataset("a dataset is an .npz file or a .zip of class folders of images")
        with zipfile.ZipFile(path) as archive:
            members = check_archive(archive)
            names = [m.filename for m in members]
            if names and all(n.endswith(".npy") for n in names if not n.endswith("/")):
                return _inspect_npz(archive, sample_shape)
            return _inspect_image_folder(archive, members, sample_shape)
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise InvalidDataset(f"corrupt or truncated archive: {exc}") from exc


def check_archive(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """Refuse (`unsafe_archive`) links, devices, absolute paths, `..`, too many members, too many
    bytes unpacked, or a member (of 1 MiB or more) compressed more than 100:1."""
    members = archive.infolist()
    if len(members) > MAX_ARCHIVE_MEMBERS:
        raise InvalidDataset(
            f"the archive has {len(members)} members (at most {MAX_ARCHIVE_MEMBERS})",
            code="unsafe_archive",
        )
    total = 0
    for info in members:
        name = info.filename.replace("\\", "/")
        parts = PurePosixPath(name).parts
        if name.startswith("/") or ".." in parts or (parts and ":" in parts[0]):
            raise InvalidDataset(
                f"unsafe path in the archive: {info.filename!r}", code="unsafe_archive"
            )
        kind = stat.S_IFMT(info.external_attr >> 16)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise InvalidDataset(f"links are refused: {info.filename!r}", code="unsafe_archive")
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            # Devices, pipes and sockets: nothing a dataset holds, and hostile on extraction.
            raise InvalidDataset(
                f"special files are refused: {info.filename!r}", code="unsafe_archive"
            )
        total += info.file_size
        if info.file_size > RATIO_CHECK_FROM and info.file_size > MAX_COMPRESSION_RATIO * max(
            info.compress_size, 1
        ):
            raise InvalidDataset(
                f"{info.filename!r} is compressed more than {MAX_COMPRESSION_RATIO}:1",
                code="unsafe_archive",
            )
    if total > MAX_ARCHIVE_BYTES:
        raise InvalidDataset(
            f"the archive unpacks to {total} bytes (at most {MAX_ARCHIVE_BYTES})",
            code="unsafe_archive",
        )
    return members


def _read_npy(archive: zipfile.ZipFile, name: str, header_only: bool = False) -> Any:
    import numpy as np

    with archive.open(name) as f:
        if header_only:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _order, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _order, dtype = np.lib.format.read_array_header_2_0(f)
            else:  # 3.0 (utf-8 field names) has no public reader
                shape, _order, dtype = np.lib.format._read_array_header(f, version)  # type: ignore[attr-defined]
            if dtype.hasobject:
                raise InvalidDataset(f"{name} holds Python objects (pickles are refused)")
            return shape, dtype
        try:
            return np.lib.format.read_array(f, allow_pickle=False)
        except ValueError as exc:
            raise InvalidDataset(f"{name} is unreadable (pickles are refused): {exc}") from exc


def _inspect_npz(archive: zipfile.ZipFile, sample_shape: Sequence[int] | None) -> DatasetInfo:
    import numpy as np

    files = {n[: -len(".npy")]: n for n in archive.namelist() if n.endswith(".npy")}
    if "x" not in files:
        raise InvalidDataset("the .npz needs an array named 'x' (samples first)")
    shape, dtype = _read_npy(archive, files["x"], header_only=True)
    if dtype.kind not in "fiu" or len(shape) < 2 or shape[0] == 0:
        raise InvalidDataset(
            f"x must be a non-empty numeric array (N, ...); got {dtype} {list(shape)}"
        )
    n = int(shape[0])
    num_classes = None
    if "y" in files:
        y = _read_npy(archive, files["y"])
        if y.dtype.kind not in "iu" or y.shape != (n,):
            raise InvalidDataset(
                f"y must be {n} integer class labels; got {y.dtype} {list(y.shape)}"
            )
        if (y < 0).any():
            raise InvalidDataset("class labels must be non-negative")
        num_classes = int(y.max()) + 1
    for stat_name in ("mean", "std"):
        if stat_name in files:
            value = _read_npy(archive, files[stat_name])
            channels = shape[1]
            if value.dtype.kind not in "fiu" or value.size not in (1, channels):
                raise InvalidDataset(
                    f"{stat_name} must be a number or one per channel ({channels})"
                )
            if stat_name == "std" and (np.asarray(value) <= 0).any():
                raise InvalidDataset("std must be positive")
    samples = [int(d) for d in shape[1:]]
    _check_sample_shape(samples, sample_shape)
    return DatasetInfo(
        format="npz",
        num_samples=n,
        sample_shape=samples,
        num_classes=num_classes,
        labeled=num_classes is not None,
    )


def _check_sample_shape(samples: list[int], model: Sequence[int] | None) -> None:
    """Samples must fit the model input as the training loader fits them (as they are,
    channels last, or without a channel dimension of 1)."""
    if model is None:
        return
    model = [int(d) for d in model]
    fits = samples == model or (
        len(model) >= 2
        and (samples == model[1:] + model[:1] or (model[0] == 1 and samples == model[1:]))
    )
    if not fits:
        raise InvalidDataset(
            f"samples have shape {samples} but the model takes {model}",
            code="dataset_shape_mismatch",
        )


def _inspect_image_folder(
    archive: zipfile.ZipFile, members: list[zipfile.ZipInfo], sample_shape: Sequence[int] | None
) -> DatasetInfo:
    images = []
    for info in members:
        parts = PurePosixPath(info.filename.replace("\\", "/")).parts
        if info.is_dir() or any(p.startswith((".", "__MACOSX")) for p in parts):
            continue
        if info.filename.lower().endswith(IMAGE_SUFFIXES):
            images.append((parts, info))
    if not images:
        raise InvalidDataset("the archive holds no .png or .jpg images (class_name/image.png)")
    depths = {len(parts) for parts, _ in images}
    if depths == {3} and len({parts[0] for parts, _ in images}) == 1:
        classes = {parts[1] for parts, _ in images}
    elif depths == {2}:
        classes = {parts[0] for parts, _ in images}
    else:
        raise InvalidDataset(
            "a zipped image folder needs class_name/image.png entries (optionally under one "
            "top-level folder)"
        )
    first = _image_shape(archive, images[0][1])
    if sample_shape is not None:
        model = [int(d) for d in sample_shape]
        if len(model) != 3 or model[0] not in (1, 3):
            raise InvalidDataset(
                f"image folders need a model taking (1 or 3, H, W) images, not {model}",
                code="dataset_shape_mismatch",
            )
        first = model  # images are converted and resized to the model input
    return DatasetInfo(
        format="imagefolder",
        num_samples=len(images),
        sample_shape=first,
        num_classes=len(classes),
        labeled=True,
    )


def _image_shape(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> list[int]:
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(archive.read(info))) as image:
            width, height = image.size
            channels = 1 if image.mode in ("1", "L", "I", "I;16", "F") else 3
    except (OSError, Image.DecompressionBombError) as exc:
        raise InvalidDataset(f"unreadable image {info.filename!r}: {exc}") from exc
    return [channels, height, width]


# --- command line -------------------------------------------------------------------------


def _apply_limits(max_memory_bytes: int | None, max_cpu_s: int | None) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if max_memory_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (max_memory_bytes, max_memory_bytes))
    if max_cpu_s:
        # SIGXCPU (fatal) at the soft limit, SIGKILL one second later.
        resource.setrlimit(resource.RLIMIT_CPU, (max_cpu_s, max_cpu_s + 1))


def _shape(text: str) -> list[int]:
    try:
        return list(parse_shape(text))
    except ShapeError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m worker.engine.inspect",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("kind", choices=["model", "prunability", "dataset"])
    parser.add_argument("path", type=Path)
    parser.add_argument("--arch")
    parser.add_argument("--input-shape", type=_shape)
    parser.add_argument("--sample-shape", type=_shape)
    parser.add_argument("--max-memory-bytes", type=int)
    parser.add_argument("--max-cpu-s", type=int)
    return parser


def _inspect(args: argparse.Namespace) -> dict[str, Any]:
    try:
        if args.kind == "model":
            info: Any = inspect_model(args.path, arch=args.arch, input_shape=args.input_shape)
        elif args.kind == "prunability":
            info = inspect_prunability(args.path, arch=args.arch, input_shape=args.input_shape)
        else:
            info = inspect_dataset(args.path, sample_shape=args.sample_shape)
        return {"ok": True, "info": info.model_dump(mode="json")}
    except EngineError as exc:
        return {"ok": False, "code": exc.code, "message": exc.message}
    except MemoryError:
        return {
            "ok": False,
            "code": "invalid_dataset" if args.kind == "dataset" else "too_large",
            "message": "the file needs more memory than the inspector may use",
        }


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Before the file is touched; while the process is single-threaded, as unshare needs.
    deny_network()
    _apply_limits(args.max_memory_bytes, args.max_cpu_s)
    # Native libraries may print; keep stdout for the one result line.
    stdout = os.dup(1)
    os.dup2(2, 1)
    code = 0
    try:
        result = _inspect(args)
    except Exception as exc:  # a bug or a crash in a parser: report it, exit non-zero
        traceback.print_exc()
        default = InvalidDataset if args.kind == "dataset" else UnsupportedModel
        result = {"ok": False, "code": default.code, "message": f"inspection failed: {exc}"[:500]}
        code = 1
    finally:
        sys.stdout.flush()
        os.dup2(stdout, 1)
        os.close(stdout)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
