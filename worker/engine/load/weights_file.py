"""Loading weights only (safetensors, or a torch.save'd state_dict read with weights_only
after `sniff` checked its pickle) into an architecture named by `arch` such as
`torchvision:resnet18` or `timm:resnet50`, built with random init (no download),
`num_classes` taken from the classifier weight."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from contract import TensorInfo
from worker.engine.errors import EngineError, UnsupportedModel
from worker.engine.load.shapes import (
    DEFAULT_ARCH_INPUT_SHAPE,
)
from worker.engine.load.trial import (
    check_finite_tensors,
    example_inputs,
    short_error,
)
from worker.engine.outputs import flatten_outputs
from worker.engine.types import LoadedModel

_CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights", "params", "module")


# --- weights + arch -------------------------------------------------------------------------


def load_weights(
    path: Path, fmt: str, arch: str | None, given: list[tuple[int, ...]] | None
) -> LoadedModel:
    if not arch:
        raise UnsupportedModel(
            f"a {fmt} file holds weights only: give arch too (e.g. torchvision:resnet18 or "
            "timm:resnet50)",
            code="unknown_arch",
        )
    weights = _read_weights(path, fmt)
    check_finite_tensors(weights)
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
    example = example_inputs(shapes)
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
            f"the model does not run at input shape {shapes}: {short_error(exc)}",
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
        raise UnsupportedModel(f"cannot read the weights: {short_error(exc)}") from exc
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
                        f"cannot build {arch}: {short_error(exc)}", code="unknown_arch"
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
                    f"cannot build {arch}: {short_error(exc)}", code="unknown_arch"
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
