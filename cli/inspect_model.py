"""`secateurs inspect`: what a model file is and what pruning can do to it, locally.

The same analysis the API gives at `GET /v1/models/{id}/prunability`: the channel groups,
which are protected and why, and the largest reachable MACs reduction."""

import json
from pathlib import Path
from typing import Annotated

import typer

from cli.main import app
from cli.prune import CliError, _fail, parse_shape


@app.command()
def inspect(
    model: Annotated[Path, typer.Argument(help="an .onnx, .pt2, .safetensors or .pt file")],
    input_shape: Annotated[str | None, typer.Option(help="e.g. 1,3,224,224")] = None,
    arch: Annotated[str | None, typer.Option(help="e.g. torchvision:resnet18")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Show a model's inputs, size and prunability."""
    try:
        if not model.is_file():
            raise CliError("not_found", f"no such file: {model}")
        from worker.engine.inspect import inspect_model, inspect_prunability

        shape = parse_shape(input_shape)
        info = inspect_model(model, arch=arch, input_shape=shape)
        report = inspect_prunability(model, arch=arch, input_shape=shape)
    except CliError as exc:
        _fail(exc.code, exc.message)
    except Exception as exc:  # engine errors carry a stable code; anything else is ours
        _fail(getattr(exc, "code", "internal_error"), getattr(exc, "message", str(exc)))
    if as_json:
        print(
            json.dumps(
                {
                    "model": info.model_dump(mode="json"),
                    "prunability": report.model_dump(mode="json"),
                },
                indent=2,
            )
        )
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(
        f"{info.format} model, input {info.input_shape}, "
        f"{info.stats.params:,} parameters, {info.stats.macs:,} MACs"
    )
    table = Table("group (root layer)", "channels", "prunable", "why protected")
    for group in report.groups:
        table.add_row(
            group.layer, str(group.channels), "yes" if group.prunable else "no", group.why or ""
        )
    console.print(table)
    reachable = report.max_macs_reduction
    console.print(
        f"{report.prunable_groups} prunable, {report.protected_groups} protected; "
        "largest reachable MACs reduction: "
        + (f"{reachable:.1%}" if reachable is not None else "unknown (out of time)")
    )
    for note in report.notes:
        console.print(f"note: {note}")
