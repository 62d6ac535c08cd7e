"""Writing a torch network as a user would upload it: ONNX at opset 17 with a dynamic
batch (TorchScript exporter, the one most users still call), or a torch.export .pt2."""

import contextlib
import io
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from corpus import Built, SkipEntry
from corpus.checks import keeps_weights_elsewhere

OPSET = 17


class Flat(nn.Module):
    """Wraps a network whose output is a dict, list or nested tuple so that it returns a
    flat tuple of tensors, as an ONNX export sees it."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(_flatten(self.inner(*args)))


def _flatten(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    return [t for item in value for t in _flatten(item)]


def output_count(module: nn.Module, example: tuple) -> int:
    with torch.no_grad():
        return len(_flatten(module(*example)))


def export_onnx(
    module: nn.Module,
    example: tuple,
    path: Path,
    *,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    dynamic_batch: bool = True,
) -> Path:
    """ONNX export; a failure of torch's exporter is a SkipEntry('export: ...')."""
    module = module.eval()
    inputs = input_names or (
        ["input"] if len(example) == 1 else [f"input{i}" for i in range(len(example))]
    )
    outputs = output_names or [f"output{i}" for i in range(output_count(module, example))]
    axes = {name: {0: "batch"} for name in inputs + outputs} if dynamic_batch else None
    try:
        # The exporter prints pages of tracer warnings per model; they say nothing here.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                example,
                str(path),
                dynamo=False,
                opset_version=OPSET,
                input_names=inputs,
                output_names=outputs,
                dynamic_axes=axes,
            )
    except Exception as exc:  # noqa: BLE001 - any exporter failure is torch's, not ours
        raise SkipEntry(f"export: {type(exc).__name__}: {_first_line(exc)}") from exc
    return path


def export_pt2(module: nn.Module, example: tuple, path: Path) -> Path:
    """torch.export archive with a dynamic batch dimension."""
    batch = torch.export.Dim("batch", min=1, max=1024)
    shapes = tuple({0: batch} for _ in example)
    # Traced at batch 2: at batch 1 torch.export specialises the batch to the constant 1.
    pair = tuple(torch.cat([x, x]) for x in example)
    try:
        program = torch.export.export(module.eval(), pair, dynamic_shapes=shapes)
        torch.export.save(program, str(path))
    except Exception as exc:  # noqa: BLE001
        raise SkipEntry(f"export: {type(exc).__name__}: {_first_line(exc)}") from exc
    return path


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""


def built_from_torch(
    module: nn.Module,
    shape: tuple[int, ...],
    workdir: Path,
    name: str,
    *,
    fmt: str = "onnx",
    keep: list[nn.Module] | None = None,
    output_names: list[str] | None = None,
) -> Built:
    """Export `module` at `shape` (batch first) as `fmt`, with an ONNX reference beside it.

    A network over 2 GB exports to ONNX only with its weights in files beside the model,
    which an upload may not have (`external_data_forbidden`): its user uploads the
    torch.export archive instead (with the service's model size limit raised), and so
    does the bench. The reference keeps its weights files: onnxruntime reads them here."""
    torch.manual_seed(0)
    example = (torch.randn(*shape),)
    module = module.eval()
    reference = export_onnx(module, example, workdir / f"{name}.onnx", output_names=output_names)
    if fmt == "onnx" and keeps_weights_elsewhere(
        onnx.load(str(reference), load_external_data=False)
    ):
        fmt = "pt2"
    model = reference if fmt == "onnx" else export_pt2(module, example, workdir / f"{name}.pt2")
    keep = keep if keep is not None else default_keep(module)
    return Built(model=model, reference=reference, module=module, example=example, keep=keep)


def default_keep(module: nn.Module) -> list[nn.Module]:
    """The final classifier: the last Linear, or failing one the last convolution."""
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1:]
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d | nn.Conv1d)]
    return convs[-1:]
