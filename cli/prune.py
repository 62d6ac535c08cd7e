"""`secateurs prune`: run the whole engine pipeline locally on one model file.

Torch and the engine are imported inside the command, so that `secateurs serve` (which
shares the typer app) starts without them.
"""

import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from cli.main import app
from contract import shapes
from contract.artifacts import MODEL_FP32_ONNX, MODEL_ONNX, REPORT_JSON


class CliError(Exception):
    """A failure reported as one line: `error: <code>: <message>`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse_shape(text: str | None) -> list[int] | None:
    """ "1,3,224,224" -> [1, 3, 224, 224], in the contract's grammar (`contract.shapes`)."""
    if not text:
        return None
    try:
        return list(shapes.parse_shape(text))
    except shapes.ShapeError as exc:
        raise CliError("invalid_input_shape", f"--input-shape {exc}") from None


def build_spec(
    *,
    target_macs: float | None,
    target_params: float | None,
    channel_ratio: float | None,
    method: str,
    target_latency: float | None = None,
    scope: str,
    round_to: int | None,
    steps: int,
    epochs: int,
    lr: float,
    batch_size: int,
    distill: bool,
    max_drop: float | None,
    providers: list[str],
    iterations: int,
    quantize: str = "none",
) -> Any:
    """The JobSpec the options describe; invalid values become a one-line error."""
    from contract import JobSpec

    chosen = {
        "macs_reduction": target_macs,
        "params_reduction": target_params,
        "channel_ratio": channel_ratio,
        "latency_reduction": target_latency,
    }
    target = {k: v for k, v in chosen.items() if v is not None} or {"macs_reduction": 0.5}
    body = {
        "prune": {
            "method": method,
            "target": target,
            "scope": scope,
            "round_to": round_to,
            "iterative_steps": steps,
        },
        "finetune": {"epochs": epochs, "lr": lr, "batch_size": batch_size, "distill": distill},
        "accuracy_budget": None if max_drop is None else {"max_drop": max_drop},
        "benchmark": {"providers": providers, "iterations": iterations},
        "quantize": {"mode": quantize},
    }
    try:
        return JobSpec.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CliError("invalid_spec", f"{where}: {first['msg']}") from exc


def fp32_path(output: Path) -> Path:
    """Where the pruned float model goes beside a quantized -o: `x.onnx` -> `x.fp32.onnx`."""
    return output.with_name(f"{output.stem}.fp32{output.suffix or '.onnx'}")


def _fmt_count(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def _fmt_p50(summary: Any) -> str:
    table = summary.latency_ms
    provider = "CPUExecutionProvider" if "CPUExecutionProvider" in table else next(iter(table), "")
    by_batch = table.get(provider, {})
    if "1" not in by_batch:
        return "-"
    return f"{by_batch['1'].p50:.2f} ms"


def _fmt_acc(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def summary_table(report: Any) -> Any:
    """Before/after table: params, MACs, size, p50 latency, accuracy, agreement."""
    from rich.table import Table

    o, p, r, f = report.original, report.pruned, report.ratios, report.fidelity
    table = Table(title="secateurs prune")
    for column in ("", "original", "pruned", "ratio"):
        table.add_column(column, justify="right" if column else "left")
    speedup = "-" if r.latency_speedup is None else f"{r.latency_speedup:.2f}x"
    table.add_row("params", _fmt_count(o.params), _fmt_count(p.params), f"{r.params:.2f}x")
    table.add_row("MACs", _fmt_count(o.macs), _fmt_count(p.macs), f"{r.macs:.2f}x")
    size_o, size_p = _fmt_count(o.size_bytes) + "B", _fmt_count(p.size_bytes) + "B"
    table.add_row("ONNX size", size_o, size_p, f"{r.size:.2f}x")
    table.add_row("latency p50 (batch 1)", _fmt_p50(o), _fmt_p50(p), speedup)
    table.add_row("accuracy", _fmt_acc(o.accuracy), _fmt_acc(p.accuracy), "")
    agreement = "-" if f.top1_agreement is None else _fmt_acc(f.top1_agreement)
    table.add_row("top-1 agreement", "", agreement, "")
    table.add_row("output cosine", "", f"{f.cosine:.4f}", "")
    q = report.quantization
    if q is not None and q.applied:
        int8 = {"latency_ms": q.latency_ms.get("int8", {})}
        table.add_row("INT8 size", "", _fmt_count(q.size_bytes["int8"]) + "B", "")
        table.add_row("INT8 latency p50", "", _fmt_p50(SimpleNamespace(**int8)), "")
        if "int8" in q.accuracy:
            table.add_row("INT8 accuracy", "", _fmt_acc(q.accuracy["int8"]), "")
        table.add_row("INT8 agreement", "", _fmt_acc(q.agreement.get("int8")), "")
    return table


ProgressFn = Callable[[str, float], None]


class LineProgress:
    """Progress for a log or CI, where a bar draws nothing: one line on `stream` when the
    stage changes and each time the whole job passes another tenth."""

    STEP = 0.1

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._stage: str | None = None
        self._tenths = -1

    def __call__(self, stage: str, overall: float) -> None:
        tenths = int(overall / self.STEP + 1e-9)
        if stage == self._stage and tenths <= self._tenths:
            return
        self._stage, self._tenths = stage, tenths
        print(f"progress: {overall:4.0%} {stage}", file=self._stream, flush=True)


@contextmanager
def progress_reporter() -> Iterator[ProgressFn]:
    """An on_progress callback drawing on stderr: a bar in a terminal, else lines. stderr,
    so that stdout carries only the result (`--json`)."""
    if not sys.stderr.isatty():
        yield LineProgress(sys.stderr)
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description:<13}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("loading", total=1.0)
        yield lambda stage, overall: bar.update(task, completed=overall, description=stage)


def _run(
    model: Path, output: Path, report_path: Path | None, spec: Any, options: dict[str, Any]
) -> Any:
    """Run the pipeline showing its progress; copy model.onnx (and report.json) into place."""
    from worker.engine.pipeline import run_pipeline

    with tempfile.TemporaryDirectory(prefix="secateurs-") as tmp:
        with progress_reporter() as on_progress:
            result = run_pipeline(model, spec, Path(tmp), on_progress=on_progress, **options)
        output.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(result.artifacts[MODEL_ONNX], output)
        if MODEL_FP32_ONNX in result.artifacts:
            shutil.copyfile(result.artifacts[MODEL_FP32_ONNX], fp32_path(output))
        if report_path is not None:
            shutil.copyfile(result.artifacts[REPORT_JSON], report_path)
    return result.report


@app.command()
def prune(
    model: Annotated[Path, typer.Argument(help="ONNX, .pt2, safetensors or state_dict file")],
    output: Annotated[Path, typer.Option("--output", "-o", help="where to write the ONNX")],
    target_macs: Annotated[
        float | None, typer.Option(help="fraction of MACs to remove (default 0.5)")
    ] = None,
    target_params: Annotated[float | None, typer.Option(help="fraction of params")] = None,
    channel_ratio: Annotated[float | None, typer.Option(help="fraction of channels")] = None,
    target_latency: Annotated[
        float | None,
        typer.Option(help="fraction of onnxruntime latency to remove, measured on this machine"),
    ] = None,
    method: Annotated[
        str, typer.Option(help="l1 l2 bn_scale taylor fpgm lamp random unstructured_l1")
    ] = "l2",
    scope: Annotated[str, typer.Option(help="global, layerwise or sensitivity")] = "global",
    round_to: Annotated[int | None, typer.Option(help="channel multiple (default: auto)")] = None,
    steps: Annotated[int, typer.Option(help="iterative pruning steps")] = 5,
    data: Annotated[Path | None, typer.Option(help=".npz or zipped image folders")] = None,
    epochs: Annotated[int, typer.Option(help="fine-tuning epochs (with --data)")] = 5,
    lr: Annotated[float, typer.Option(help="fine-tuning learning rate")] = 0.01,
    batch_size: Annotated[int, typer.Option(help="fine-tuning batch size")] = 64,
    distill: Annotated[bool, typer.Option(help="distil from the original")] = True,
    max_drop: Annotated[float | None, typer.Option(help="accuracy budget, e.g. 0.01")] = None,
    input_shape: Annotated[str | None, typer.Option(help="e.g. 1,3,224,224")] = None,
    arch: Annotated[str | None, typer.Option(help="e.g. torchvision:resnet18")] = None,
    report: Annotated[Path | None, typer.Option(help="also write report.json here")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N")] = "cpu",
    iterations: Annotated[int, typer.Option(help="benchmark iterations")] = 50,
    quantize: Annotated[
        str,
        typer.Option(
            help="none, or int8: quantize the pruned model (INT8 to -o, the float model "
            "beside it as NAME.fp32.onnx)"
        ),
    ] = "none",
    json_output: Annotated[
        bool, typer.Option("--json", help="print the report as JSON on stdout, no table")
    ] = False,
) -> None:
    """Prune MODEL, fine-tune it if --data is given, and write a verified ONNX to -o."""
    try:
        if not model.is_file():
            raise CliError("not_found", f"no such file: {model}")
        if data is not None and not data.is_file():
            raise CliError("not_found", f"no such file: {data}")
        if device != "cpu" and not device.startswith("cuda"):
            raise CliError("invalid_device", f"--device must be cpu, cuda or cuda:N: {device!r}")
        spec = build_spec(
            target_macs=target_macs,
            target_params=target_params,
            channel_ratio=channel_ratio,
            target_latency=target_latency,
            method=method,
            scope=scope,
            round_to=round_to,
            steps=steps,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            distill=distill,
            max_drop=max_drop,
            providers=["auto"],
            iterations=iterations,
            quantize=quantize,
        )
        _require_data_for_budget(spec, data is not None)
        options = {
            "dataset_path": data,
            "arch": arch,
            "input_shape": parse_shape(input_shape),
            "device": device,
            # Latency targets keep their per-layer timings here between runs.
            "cache_dir": Path.home() / ".cache" / "secateurs",
        }
        result = _run(model, output, report, spec, options)
    except CliError as exc:
        _fail(exc.code, exc.message)
    except KeyboardInterrupt:
        _fail("cancelled", "interrupted", status=130)
    except Exception as exc:  # engine errors carry a stable code; anything else is ours
        _fail(getattr(exc, "code", "internal_error"), getattr(exc, "message", str(exc)))
    _show(result, output, report, json_output)


def _require_data_for_budget(spec: Any, has_data: bool) -> None:
    from contract.spec import require_dataset_for_budget

    try:
        require_dataset_for_budget(spec.accuracy_budget, has_data)
    except ValueError as exc:
        raise CliError("invalid_spec", f"--max-drop: {exc} (--data)") from None


def _show(result: Any, output: Path, report: Path | None, json_output: bool) -> None:
    """The report as JSON on stdout; else the table, its warnings and notes."""
    from rich.console import Console

    written = [str(output)]
    if result.quantization is not None and result.quantization.applied:
        written.append(f"{fp32_path(output)} (float)")
    wrote = "wrote " + ", ".join(written) + (f" and {report}" if report else "")
    if json_output:
        print(result.model_dump_json(indent=2))
        print(wrote, file=sys.stderr)
        return
    console = Console()
    console.print(summary_table(result))
    # Whole lines (soft_wrap), so that a log keeps each message greppable on one line.
    for line, style in warning_lines(result):
        console.print(line, style=style, markup=False, soft_wrap=True)
    for note in result.notes:
        console.print(f"note: {note}", markup=False, soft_wrap=True)
    console.print(wrote, markup=False, soft_wrap=True)


def warning_lines(report: Any) -> list[tuple[str, str]]:
    """(line, rich style) per report warning: `warning: <message> [<code>]`, critical first."""
    ordered = sorted(report.warnings, key=lambda w: w.severity != "critical")
    return [
        (
            f"{w.severity}: {w.message} [{w.code}]",
            "bold red" if w.severity == "critical" else "yellow",
        )
        for w in ordered
    ]


def _fail(code: str, message: str, status: int = 1) -> None:
    first_line = (message.strip().splitlines() or [""])[0]
    print(f"error: {code}: {first_line}", file=sys.stderr)
    raise typer.Exit(status)
