"""Checks on a pruned ONNX file made without the engine's own code: MACs counted from
the shapes onnxruntime computes, the drop-in interface, runs at batch 1 and 2, and
interleaved onnxruntime timing (see shared/spec/benchmarking.md)."""

import contextlib
import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

COUNTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# ONNX element type -> numpy dtype, for the feeds.
DTYPES = {1: np.float32, 10: np.float16, 11: np.float64, 6: np.int32, 7: np.int64, 9: np.bool_}


def session(path: Path, threads: int = 1, optimize: bool = True) -> ort.InferenceSession:
    """A CPU session with spinning off, so two sessions timed in turn do not steal cores."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def _dims(value: onnx.ValueInfoProto) -> list[int | str | None]:
    return [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
        for d in value.type.tensor_type.shape.dim
    ]


def make_feeds(
    path: Path,
    batch: int,
    input_shape: list[list[int]] | None = None,
    fixed: dict[str, np.ndarray] | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Seeded feeds at `batch` for every input: the given shapes where there are any, else
    the graph's own dims (open non-batch dims are an error: the entry must say them)."""
    model = onnx.load(str(path), load_external_data=False)
    rng = np.random.default_rng(seed)
    feeds = {}
    shapes = list(input_shape or [])
    for i, value in enumerate(_real_inputs(model)):
        if fixed and value.name in fixed:
            feeds[value.name] = fixed[value.name]
            continue
        graph_dims = _dims(value)
        dims = list(shapes[i]) if i < len(shapes) else list(graph_dims)
        if graph_dims and not isinstance(graph_dims[0], int):
            dims[0] = batch
        if any(not isinstance(d, int) or d < 1 for d in dims):
            raise ValueError(f"input {value.name} has open dims {dims}; give input_shape")
        dtype = DTYPES.get(value.type.tensor_type.elem_type, np.float32)
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(dims).astype(dtype)
        else:
            feeds[value.name] = np.zeros(dims, dtype=dtype)
    return feeds


def batch_is_dynamic(path: Path) -> bool:
    """True when every input's first dimension is open in the graph."""
    model = onnx.load(str(path), load_external_data=False)
    inputs = _real_inputs(model)
    return bool(inputs) and all(_dims(i)[:1] and not isinstance(_dims(i)[0], int) for i in inputs)


def count_macs(path: Path, feeds: dict[str, np.ndarray]) -> int:
    """Multiply-accumulates of Conv, ConvTranspose, Gemm and MatMul in the main graph, from
    the tensor shapes onnxruntime produces on `feeds` (every operand made an output)."""
    model = onnx.load(str(path), load_external_data=False)
    nodes = [n for n in model.graph.node if n.op_type in COUNTED]
    known = {t.name: list(t.dims) for t in model.graph.initializer}
    known.update({k: list(v.shape) for k, v in feeds.items()})
    wanted = {name for n in nodes for name in (*n.input[:2], n.output[0]) if name}
    fetch = sorted(wanted - set(known))
    present = {o.name for o in model.graph.output}
    for name in fetch:
        if name not in present:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    shapes = dict(known)
    if fetch:
        with _session_of(model, path) as sess:
            values = sess.run(fetch, feeds)
        shapes.update({n: list(v.shape) for n, v in zip(fetch, values, strict=True)})
    return sum(_node_macs(n, shapes) for n in nodes)


def keeps_weights_elsewhere(model: onnx.ModelProto) -> bool:
    """Whether any of the model's weights are stored in other files (ONNX external data)."""
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


@contextlib.contextmanager
def _session_of(model: onnx.ModelProto, path: Path) -> Iterator[ort.InferenceSession]:
    """A session of `model`, a changed copy of the file at `path`. A model whose weights
    lie in files beside `path` is written beside it for as long as the session is open:
    onnxruntime finds those files from the model's own folder, and a model with them
    inline would be over the 2 GB one message holds."""
    if not keeps_weights_elsewhere(model):
        yield ort.InferenceSession(
            model.SerializeToString(), _plain_options(), providers=["CPUExecutionProvider"]
        )
        return
    copy = path.with_name(f".{path.stem}.outputs.onnx")
    onnx.save(model, str(copy))
    try:
        yield ort.InferenceSession(str(copy), _plain_options(), providers=["CPUExecutionProvider"])
    finally:
        copy.unlink(missing_ok=True)


def _plain_options() -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    return options


def _node_macs(node: onnx.NodeProto, shapes: dict[str, list[int]]) -> int:
    x, w, y = shapes[node.input[0]], shapes[node.input[1]], shapes[node.output[0]]
    if node.op_type == "Conv":
        return math.prod(y) * math.prod(w[1:])
    if node.op_type == "ConvTranspose":
        return math.prod(x) * math.prod(w[1:])
    if node.op_type == "Gemm":
        trans_a = any(a.name == "transA" and a.i for a in node.attribute)
        return math.prod(y) * (x[0] if trans_a else x[-1])
    return math.prod(y) * (x[-1] if x else 1)  # MatMul


def interface_problems(
    original: Path, pruned: Path, true_ranks: dict[str, int] | None = None
) -> list[str]:
    """Differences that stop the pruned file being a drop-in: names, ranks, dtypes and
    a batch dimension that was open and is now fixed. `true_ranks`: the ranks of the
    original's outputs as it runs; where a file declares another rank (ddddocr's CRNN
    declares `[1, seqlen]` for a rank-3 output), the pruned file may declare the true one."""
    true_ranks = true_ranks or {}
    a = onnx.load(str(original), load_external_data=False)
    b = onnx.load(str(pruned), load_external_data=False)
    problems = []
    for kind, xs, ys in (
        ("input", _real_inputs(a), _real_inputs(b)),
        ("output", list(a.graph.output), list(b.graph.output)),
    ):
        if [x.name for x in xs] != [y.name for y in ys]:
            problems.append(f"{kind} names {[x.name for x in xs]} -> {[y.name for y in ys]}")
            continue
        for x, y in zip(xs, ys, strict=True):
            dx, dy = _dims(x), _dims(y)
            tx, ty = x.type.tensor_type.elem_type, y.type.tensor_type.elem_type
            if tx != ty:
                problems.append(f"{kind} {x.name} dtype {tx} -> {ty}")
            if len(dx) != len(dy) and true_ranks.get(x.name) != len(dy):
                problems.append(f"{kind} {x.name} rank {len(dx)} -> {len(dy)}")
            elif dx and not isinstance(dx[0], int) and isinstance(dy[0], int):
                problems.append(f"{kind} {x.name} batch dim {dx[0]!r} fixed to {dy[0]}")
    return problems


def output_ranks(path: Path, input_shape, fixed: dict[str, np.ndarray]) -> dict[str, int]:
    """The rank of each output of the file at batch 1, as onnxruntime computes it."""
    outputs = session(path).run(None, make_feeds(path, 1, input_shape, fixed))
    names = [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]
    return {name: np.asarray(value).ndim for name, value in zip(names, outputs, strict=False)}


def run_problems(
    original: Path, pruned: Path, input_shape, fixed: dict[str, np.ndarray]
) -> tuple[list[str], list[int]]:
    """Run both files at batch 1 (and 2 where the original's batch is open); the pruned
    outputs must have the original's shapes and dtypes and be finite where its are.
    Returns the problems and the batch sizes run."""
    batches = [1, 2] if batch_is_dynamic(original) else [1]
    problems: list[str] = []
    a, b = session(original), session(pruned)
    names = [o.name for o in a.get_outputs()]
    counted = _counted_dims(onnx.load(str(original), load_external_data=False))
    for batch in batches:
        feeds = make_feeds(original, batch, input_shape, fixed, seed=batch)
        ya = a.run(None, feeds)
        try:
            yb = b.run(None, feeds)
        except Exception as exc:  # noqa: BLE001 - any runtime error is the finding
            problems.append(f"batch {batch}: pruned model does not run: {_short(exc)}")
            continue
        for name, u, v in zip(names, ya, yb, strict=False):
            u, v = np.asarray(u), np.asarray(v)
            if name in counted and u.ndim == v.ndim:  # as many rows as the scores pass
                if _fixed_shape(u, counted[name]) == _fixed_shape(v, counted[name]):
                    u, v = u.reshape(-1), v.reshape(-1)  # compared whole: finite, dtype
                    u = u[: v.size] if np.isfinite(u).all() else u[:0]
                    v = v[: u.size]
            if u.shape != v.shape or u.dtype != v.dtype:
                problems.append(f"batch {batch}: {name} {u.dtype}{list(u.shape)} -> "
                                f"{v.dtype}{list(v.shape)}")  # fmt: skip
            elif np.issubdtype(v.dtype, np.floating) and not np.isfinite(v[np.isfinite(u)]).all():
                problems.append(f"batch {batch}: {name} has non-finite values")
    return problems, batches


# Ops whose output has as many rows as the input's values select.
_SELECTING = {"NonZero", "NonMaxSuppression"}


def _counted_dims(model: onnx.ModelProto) -> dict[str, list[int]]:
    """For a graph that selects rows by value (a score threshold, NMS), the dims of each
    output it declares open: their sizes depend on the weights, so a pruned model may
    keep fewer or more detections. Empty for any other graph."""
    stack, selects = [model.graph], False
    while stack and not selects:
        graph = stack.pop()
        selects = any(n.op_type in _SELECTING for n in graph.node)
        for node in graph.node:
            for attr in node.attribute:
                stack += ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
    if not selects:
        return {}
    return {
        o.name: [j for j, d in enumerate(_dims(o)) if not isinstance(d, int)]
        for o in model.graph.output
    }


def _fixed_shape(value: np.ndarray, open_dims: list[int]) -> list[int | None]:
    """`value`'s shape with the dims the file leaves open blanked: what it must keep."""
    return [None if j in open_dims else size for j, size in enumerate(value.shape)]


def _short(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


def time_pair(
    original: Path,
    pruned: Path,
    feeds: dict[str, np.ndarray],
    *,
    seconds: float = 4.0,
    threads: int = 1,
) -> dict[str, float]:
    """p50 and p90 (ms) of each file, timed in alternating turns (A B, B A, ...) after a
    warm-up, for about `seconds`, at least 10 turns."""
    sessions = {"original": session(original, threads), "pruned": session(pruned, threads)}
    for s in sessions.values():
        for _ in range(3):
            s.run(None, feeds)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    order = list(sessions)
    start = time.perf_counter()
    turn = 0
    while turn < 10 or (time.perf_counter() - start < seconds and turn < 2000):
        for key in order if turn % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            sessions[key].run(None, feeds)
            times[key].append((time.perf_counter() - t0) * 1000.0)
        turn += 1
    out = {"turns": float(turn)}
    for key, values in times.items():
        out[f"{key}_p50_ms"] = float(np.percentile(values, 50))
        out[f"{key}_p90_ms"] = float(np.percentile(values, 90))
    return out
