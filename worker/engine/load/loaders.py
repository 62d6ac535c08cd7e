"""Load any supported upload into a `LoadedModel`: an eval-mode float32 CPU nn.Module that
torch-pruning's DependencyGraph can analyse, plus the original I/O contract.

- ONNX: checks (external data, non-finite weights), onnxslim clean-up (dynamic dims
  kept symbolic), onnx2torch, then `fx_rewrites.make_prunable`; the result is
  checked against onnxruntime on the original bytes.
- `.pt2` (`torch.export.save`): `ExportedProgram.module()`, with aten convolutions,
  linears and norms raised back into nn layers (torch-pruning prunes layers, not aten
  calls) and constant reshapes made channel-agnostic.
- weights only (safetensors, or a torch.save'd state_dict read with weights_only after
  `sniff` checked its pickle): `arch` such as `torchvision:resnet18` or `timm:resnet50`,
  built with random init (no download), `num_classes` taken from the classifier weight.
"""

from __future__ import annotations

from pathlib import Path

from worker.engine.errors import UnsupportedModel
from worker.engine.load.onnx_file import load_onnx
from worker.engine.load.pt2_file import load_pt2
from worker.engine.load.shapes import InputShape, parse_input_shape
from worker.engine.load.sniff import sniff_format
from worker.engine.load.weights_file import load_weights
from worker.engine.types import LoadedModel

__all__ = ["load_model", "parse_input_shape"]


def load_model(
    path: str | Path, *, arch: str | None = None, input_shape: InputShape = None
) -> LoadedModel:
    """Load the model at `path` (format detected from its bytes). Raises UnsupportedModel."""
    path = Path(path)
    fmt = sniff_format(path)
    shapes = parse_input_shape(input_shape)
    if fmt == "onnx":
        loaded = load_onnx(path, shapes)
    elif fmt == "pt2":
        loaded = load_pt2(path, shapes)
    elif fmt in ("safetensors", "state_dict"):
        loaded = load_weights(path, fmt, arch, shapes)
    else:
        raise UnsupportedModel(f"the file holds {fmt} data, not a model")
    if arch and fmt in ("onnx", "pt2"):
        loaded.notes.append(f"arch {arch!r} ignored: a {fmt} file carries its own architecture")
    loaded.source_path = path
    loaded.module.eval()
    return loaded
