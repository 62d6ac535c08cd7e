"""Export a (pruned) module as a drop-in replacement of the upload, and check it.

`export_onnx` keeps the original input and output names and declared shapes (dynamic dims
under their original names; the batch dynamic when `spec.dynamic_batch`), at the requested
opset. It uses torch's TorchScript exporter (`dynamo=False`), which still ships in torch
2.14, is fast, and honours onnx2torch's custom export of ONNX-derived modules; the
torch.export-based exporter is the fallback. The file is written whole (no external data)
and renamed into place after `onnx.checker` accepts it. A model whose weights do not fit in
one ONNX file (a protobuf message holds at most 2 GiB) is written with its weights in one
`<name>.data` file beside it, for the engine's own use (the original model, timed and
compared); the shipped `model.onnx` is always one file (`single_file`), and a pruned model
too large for that is refused with the reason.

`verify_onnx` runs the file in onnxruntime (CPU) and compares with the module.
`save_pt2` writes a `torch.export` archive (weights as raw bytes, no pickled classes).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from contract import ExportSpec, TensorInfo
from worker.engine.errors import ExportFailed, VerificationFailed
from worker.engine.load.tail import splice_tail
from worker.engine.measure.row_order import reordered_difference, selects_rows
from worker.engine.outputs import flatten_outputs
from worker.engine.types import LoadedModel

# verify_onnx's default tolerance: this fraction of the largest reference output magnitude
# (at least 1). float32 graphs exported from the same weights agree to ~1e-5 relative.
RELATIVE_TOLERANCE = 1e-3
# Weights above this go to a file beside the model: an ONNX file is one protobuf message,
# which holds at most 2 GiB, and the graph itself needs some of that room.
SINGLE_FILE_WEIGHT_BYTES = 1_900_000_000


def export_onnx(
    module: nn.Module,
    loaded: LoadedModel,
    path: str | Path,
    spec: ExportSpec,
    *,
    single_file: bool = False,
) -> Path:
    """Write `module` as ONNX at `path` with `loaded`'s I/O names and declared shapes; its
    weights go to `sidecar(path)` when one file cannot hold them, unless `single_file`."""
    import onnx

    path = Path(path)
    module.eval()
    inputs = loaded.example_inputs(batch=1)
    with torch.no_grad():
        produced = len(flatten_outputs(module(*inputs)))
    if produced != len(loaded.outputs):
        raise ExportFailed(
            f"the module returns {produced} outputs, the original {len(loaded.outputs)}"
        )
    weights = weight_bytes(module)
    spill = weights > SINGLE_FILE_WEIGHT_BYTES
    if spill and single_file:
        raise ExportFailed(
            f"the pruned model holds {weights / 1e9:.2f} GB of weights and an "
            f"ONNX file holds at most 2 GB: ask for a larger reduction"
        )
    errors = []
    for route in (_export_torchscript, _export_dynamo):
        # A scratch folder per try: an exporter may write weights as files beside the model.
        with tempfile.TemporaryDirectory(prefix=".export-", dir=path.parent) as scratch:
            try:
                exported = Path(scratch) / path.name
                renames = route(module, inputs, exported, loaded, spec, spill)
                model = onnx.load(str(exported))
                _rename_values(model.graph, renames)
                _keep_unused_inputs(model.graph, loaded)
                _declare_shapes(model, loaded, spec)
                _save_checked(model, path, spill)
                return path
            except Exception as exc:  # try the next exporter, report all failures together
                errors.append(f"{route.__name__.removeprefix('_export_')}: {_short(exc)}")
    raise ExportFailed("ONNX export failed (" + "; ".join(errors) + ")")


def weight_bytes(module: nn.Module) -> int:
    """Bytes of the module's parameters and buffers: what its ONNX initializers hold."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def sidecar(path: Path) -> Path:
    """The file beside `path` that holds its weights when one ONNX file cannot."""
    return path.with_name(path.name + ".data")


def onnx_bytes(path: Path) -> int:
    """Size of an exported model: the file, and its weights file when it has one."""
    extra = sidecar(path)
    return path.stat().st_size + (extra.stat().st_size if extra.exists() else 0)


def _save_checked(model: Any, path: Path, spill: bool) -> None:
    """Save `model` at `path` (weights in `sidecar(path)` when `spill`) once `onnx.checker`
    accepts it; a reader never sees a half-written model."""
    import onnx

    tmp = path.with_name(path.name + ".partial")
    _remove(sidecar(path))  # onnx appends to a weights file that is already there
    try:
        if spill:
            onnx.save(
                model,
                str(tmp),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=sidecar(path).name,
                size_threshold=1024,
            )
            onnx.checker.check_model(str(tmp))  # by path: the proto alone is over 2 GB
        else:
            onnx.checker.check_model(model)
            onnx.save(model, str(tmp))
        os.replace(tmp, path)
    except BaseException:
        _remove(sidecar(path))
        raise
    finally:
        _remove(tmp)


def _short(exc: BaseException, limit: int = 400) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _dynamic_dims(info: TensorInfo, spec: ExportSpec) -> dict[int, str]:
    """The dims to keep dynamic: those declared dynamic, the batch only if spec says so."""
    dims = {}
    for j, dim in enumerate(info.shape):
        if isinstance(dim, int) and dim > 0:
            continue
        if j == 0 and not spec.dynamic_batch:
            continue
        dims[j] = dim if isinstance(dim, str) and dim else f"{info.name}_dim{j}"
    return dims


def _export_torchscript(
    module: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    path: Path,
    loaded: LoadedModel,
    spec: ExportSpec,
    spill: bool,
) -> dict[str, str]:
    del spill  # this exporter writes the weights beside the model itself when it must
    dynamic_axes = {
        info.name: dims
        for info in [*loaded.inputs, *loaded.outputs]
        if (dims := _dynamic_dims(info, spec))
    }
    # The TorchScript exporter refuses some legal ONNX names ("387", as older exporters
    # named values): export under placeholder names; `export_onnx` renames them to the
    # upload's (the returned placeholder -> name map).
    names = {
        **{f"secateurs_input_{j}": i.name for j, i in enumerate(loaded.inputs)},
        **{f"secateurs_output_{j}": o.name for j, o in enumerate(loaded.outputs)},
    }
    placeholder = {real: safe for safe, real in names.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            inputs,
            str(path),
            input_names=[placeholder[i.name] for i in loaded.inputs],
            output_names=[placeholder[o.name] for o in loaded.outputs],
            dynamic_axes={placeholder[k]: v for k, v in dynamic_axes.items()} or None,
            opset_version=spec.opset,
            do_constant_folding=True,
            dynamo=False,
        )
    return names


def _rename_values(graph: Any, renames: dict[str, str]) -> None:
    """Rename values of `graph` (old -> new) everywhere; a value that already holds a new
    name is moved aside first."""
    taken = {v.name for v in [*graph.input, *graph.output, *graph.value_info]}
    taken |= {t.name for t in graph.initializer}
    taken |= {o for node in graph.node for o in node.output}
    moves = dict(renames)
    for new in set(renames.values()) & taken - set(renames):
        aside = new
        while aside in taken or aside in renames.values():
            aside += "_"
        taken.add(aside)
        moves[new] = aside

    def renamed(name: str) -> str:
        return moves.get(name, name)

    for value in [*graph.input, *graph.output, *graph.value_info, *graph.initializer]:
        value.name = renamed(value.name)
    for node in graph.node:
        node.input[:] = [renamed(n) for n in node.input]
        node.output[:] = [renamed(n) for n in node.output]


def _export_dynamo(
    module: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    path: Path,
    loaded: LoadedModel,
    spec: ExportSpec,
    spill: bool,
) -> dict[str, str]:
    dynamic = [_dynamic_dims(info, spec) for info in loaded.inputs]
    # torch.export specialises dims of size 1; trace at batch 2 when the batch is dynamic.
    if any(0 in dims for dims in dynamic):
        inputs = loaded.example_inputs(batch=2)
    shapes = tuple({j: torch.export.Dim.DYNAMIC for j in dims} or None for dims in dynamic)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            inputs,
            input_names=[i.name for i in loaded.inputs],
            output_names=[o.name for o in loaded.outputs],
            dynamic_shapes=shapes if any(s is not None for s in shapes) else None,
            opset_version=spec.opset,
            dynamo=True,
            external_data=spill,
            verbose=False,
        )
        if program is None:
            raise ExportFailed("the exporter returned no program")
        program.save(str(path), external_data=spill)
    return {}  # the file already has the upload's names


def _keep_unused_inputs(graph: Any, loaded: LoadedModel) -> None:
    """Declare the upload's inputs that no op reads (tf2onnx leaves a Keras Normalization
    layer's statistics as inputs the graph ignores), in the upload's order: the
    exporters drop them, and a drop-in file keeps its inputs."""
    from onnx import TensorProto, helper

    present = {v.name: v for v in graph.input}
    if all(info.name in present for info in loaded.inputs):
        return
    ordered = [
        present.pop(info.name, None)
        or helper.make_tensor_value_info(
            info.name,
            TensorProto.FLOAT,
            [d if isinstance(d, int | str) and d != "" else None for d in info.shape],
        )
        for info in loaded.inputs
    ]
    del graph.input[:]
    graph.input.extend([*ordered, *present.values()])


def _declare_shapes(model: Any, loaded: LoadedModel, spec: ExportSpec) -> None:
    """Give the file's inputs and outputs the upload's declared dims (names included)."""
    for values, infos in ((model.graph.input, loaded.inputs), (model.graph.output, loaded.outputs)):
        by_name = {v.name: v for v in values}
        for info in infos:
            value = by_name.get(info.name)
            if value is None:
                raise ExportFailed(f"the exported graph lost {info.name!r}")
            dims = value.type.tensor_type.shape.dim
            if len(info.shape) != len(dims):
                continue  # declared rank unknown or different: keep what the exporter inferred
            dynamic = _dynamic_dims(info, spec)
            for j, (declared, dim) in enumerate(zip(info.shape, dims, strict=True)):
                if j in dynamic:
                    dim.dim_param = dynamic[j]
                elif isinstance(declared, int) and declared > 0:
                    dim.dim_value = declared
                elif dim.HasField("dim_param"):  # the batch, fixed at export: batch 1
                    dim.dim_value = 1


# --- verification ---------------------------------------------------------------------------


def verify_onnx(
    path: str | Path,
    module: nn.Module,
    inputs: Sequence[torch.Tensor],
    *,
    atol: float | None = None,
) -> float:
    """Max abs difference between onnxruntime (CPU) on `path` and `module` on `inputs`.

    Raises VerificationFailed when outputs differ in number or shape, are not finite, or
    differ by more than `atol` (default: RELATIVE_TOLERANCE x the largest reference
    magnitude, at least 1).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feeds = {
            spec.name: t.detach().cpu().float().numpy()
            for spec, t in zip(session.get_inputs(), inputs, strict=True)
        }
        got = session.run(None, feeds)
    except Exception as exc:
        raise VerificationFailed(
            f"onnxruntime cannot run the exported model: {_short(exc)}"
        ) from exc
    module.eval()
    with torch.no_grad():
        ref = flatten_outputs(module(*inputs))
    if len(got) != len(ref):
        raise VerificationFailed(f"onnxruntime returns {len(got)} outputs, torch {len(ref)}")
    diffs: list[tuple[float, torch.Tensor, torch.Tensor]] = []
    scale = 1.0
    for i, (ort_out, torch_out) in enumerate(zip(got, ref, strict=True)):
        theirs = torch.from_numpy(ort_out)
        if tuple(theirs.shape) != tuple(torch_out.shape):
            raise VerificationFailed(
                f"output {i}: onnxruntime shape {list(theirs.shape)}, torch {list(torch_out.shape)}"
            )
        if theirs.numel() == 0:
            continue
        ours = torch_out.detach().cpu().to(theirs.dtype)
        if not theirs.is_floating_point():
            if not torch.equal(theirs, ours):
                raise VerificationFailed(f"output {i}: onnxruntime and torch disagree")
            continue
        if not bool(torch.isfinite(theirs).all()) or not bool(torch.isfinite(ours).all()):
            raise VerificationFailed(f"output {i} is not finite")
        diffs.append(((theirs.double() - ours.double()).abs().max().item(), ours, theirs))
        scale = max(scale, ours.abs().max().item())
    tolerance = atol if atol is not None else RELATIVE_TOLERANCE * scale
    if any(diff > tolerance for diff, _, _ in diffs) and _selects_rows(path):
        diffs = [
            (d if d <= tolerance else reordered_difference(d, o, t), o, t) for d, o, t in diffs
        ]
    worst = max((diff for diff, _, _ in diffs), default=0.0)
    if worst > tolerance:
        raise VerificationFailed(
            f"onnxruntime and torch outputs differ by {worst:.3g} (tolerance {tolerance:.3g})"
        )
    return worst


def _selects_rows(path: str | Path) -> bool:
    import onnx

    return selects_rows(onnx.load(str(path), load_external_data=False).graph)


def join_tail(path: str | Path, loaded: LoadedModel) -> None:
    """Rewrite the exported network at `path` with the upload's post-processing joined
    after it (`tail.splice_tail`), when the loader cut one off; else leave it."""
    import onnx

    if loaded.tail is None:
        return
    assert loaded.final_outputs is not None
    try:
        model = splice_tail(
            onnx.load(str(path)), loaded.tail, [o.name for o in loaded.final_outputs]
        )
    except Exception as exc:
        raise ExportFailed(
            f"joining the post-processing to the pruned network failed: {_short(exc)}"
        ) from exc
    onnx.save(model, str(path))


# --- torch.export ---------------------------------------------------------------------------


def save_pt2(module: nn.Module, loaded: LoadedModel, path: str | Path) -> Path:
    """Write `module` as a `torch.export` archive (`torch.export.load` reads it back)."""
    path = Path(path)
    tmp = path.with_name(f"{path.stem}.partial{path.suffix or '.pt2'}")
    module.eval()
    dynamic_batch = any(not isinstance(i.shape[0], int) for i in loaded.inputs if i.shape)
    attempts: list[tuple[tuple[torch.Tensor, ...], Any]] = []
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=4096)
        shapes = tuple(
            {0: batch} if i.shape and not isinstance(i.shape[0], int) else None
            for i in loaded.inputs
        )
        attempts.append((loaded.example_inputs(batch=2), shapes))
    attempts.append((loaded.example_inputs(batch=1), None))
    errors = []
    for inputs, shapes in attempts:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                program = torch.export.export(module, inputs, dynamic_shapes=shapes, strict=False)
                torch.export.save(program, str(tmp))
            os.replace(tmp, path)
            return path
        except Exception as exc:
            errors.append(_short(exc))
        finally:
            _remove(tmp)
    raise ExportFailed("torch.export failed: " + "; ".join(errors))
