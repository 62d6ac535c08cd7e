"""A post-processing tail the engine cannot convert, kept as uploaded around the pruning.

Detectors exported to ONNX end in ops no torch conversion covers: control flow (`If`
around a batched NMS, `Loop`), `NonMaxSuppression`, `ScatterElements`. They hold no
weights; the network before them does all the work. `split_tail(model)` cuts the graph
where the first such op needs its inputs: the head (every node that does not depend on
one) is converted and pruned as a model whose outputs are the tensors the tail reads
(so their shapes are kept, as any output's are); the tail (those ops and everything
downstream of them) is kept as an ONNX graph, and `splice_tail` joins it to the pruned
head's export, giving back the upload's own outputs. A tail holding weighted layers
(a Faster R-CNN's box head after its proposals' NMS) is not cut: pruning would leave
most of the model's work untouched, so such a model is refused as before.

Imports onnx only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

# Ops onnx2torch has no module for that occur in post-processing.
CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})
# Ops whose output rows are chosen by the values of their input.
SELECTING = frozenset({"NonZero", "TopK", "NonMaxSuppression", "Unique"})
# Layers with weights: a tail holding one is not post-processing.
WEIGHTED = frozenset(
    {"Conv", "ConvTranspose", "Gemm", "MatMul", "LSTM", "GRU", "RNN", "Einsum", "ConvInteger"}
)


@dataclass
class Tail:
    """The cut: the head's model (outputs: the tensors the tail reads, then the upload's
    outputs the head makes), the tail's model (inputs: those tensors and the upload's
    inputs it reads; outputs: the upload's outputs it makes), and the ops that forced
    the cut."""

    head: Any
    tail: Any
    ops: list[str]

    def describe(self) -> str:
        count = len(self.tail.graph.node)
        return (
            f"the post-processing after the network ({count} ONNX nodes, from "
            f"{', '.join(self.ops)}) is kept as uploaded and joined to the pruned network"
        )


def split_tail(model: Any, convertible: Callable[[Any], bool]) -> Tail | None:
    """The head and tail of `model` when nodes `convertible` refuses form a weight-free
    tail after a head that holds weighted layers; None otherwise.

    The tail starts, where it can, at the first op that selects by value (score
    thresholds, top-k, NMS) rather than at the unconvertible op itself: what comes after
    such an op has as many rows as the scores pass, and the pruned network must keep
    its outputs' shapes, so the network ends where the selection begins."""
    nodes = list(model.graph.node)
    blocked = _blocked(nodes, convertible)
    if not blocked:
        return None
    selecting = [n for n in nodes if n.op_type in SELECTING]
    return _split_at(model, [*blocked, *selecting]) or _split_at(model, blocked)


def weighted_after(model: Any, convertible: Callable[[Any], bool]) -> list[str]:
    """The layers with weights that depend on an op no conversion covers: why a model
    that holds such ops has no tail to keep (empty when it has one, or no such op)."""
    nodes = list(model.graph.node)
    marks = _downstream(nodes, _blocked(nodes, convertible))
    return [
        n.name or n.op_type
        for n, m in zip(nodes, marks, strict=True)
        if m and n.op_type in WEIGHTED
    ]


def _blocked(nodes: list[Any], convertible: Callable[[Any], bool]) -> list[Any]:
    """Nodes no conversion covers: control flow, and ops without a converter."""
    return [n for n in nodes if n.op_type in CONTROL_FLOW or not convertible(n)]


def _split_at(model: Any, blocked: list[Any]) -> Tail | None:
    """The cut where `blocked` nodes and what depends on them form the tail."""
    import onnx

    nodes = list(model.graph.node)
    types = value_types(model)
    data = _data_dependent(model)
    in_tail = _downstream(nodes, blocked)
    tail_nodes = [n for n, t in zip(nodes, in_tail, strict=True) if t]
    head_nodes = [n for n, t in zip(nodes, in_tail, strict=True) if not t]
    made_by_head = {o for n in head_nodes for o in n.output if o}
    producer = {o: n for n in head_nodes for o in n.output if o}
    # Sizes, indices and constants (what is computed from shapes and constants alone, or
    # is not float) are computed again in the tail from copies of their nodes: the
    # network's outputs stay the float tensors its inputs' values reach, whose shapes
    # pruning keeps. The head keeps its own nodes.
    copied: dict[int, Any] = {}
    while True:
        reads = _ordered(r for n in [*copied.values(), *tail_nodes] for r in _reads(n))
        made_by_copies = {o for n in copied.values() for o in n.output}
        cut = [r for r in reads if r in made_by_head and r not in made_by_copies]
        if any(name not in types for name in cut):
            return None  # a tensor with no known type cannot be a graph output
        more = [producer[r] for r in cut if not _is_float(types[r]) or r not in data]
        if not more:
            break
        copied.update((id(n), n) for n in more)
    order = {id(n): i for i, n in enumerate(nodes)}
    tail_nodes = sorted([*copied.values(), *tail_nodes], key=lambda n: order[id(n)])
    if any(n.op_type in WEIGHTED for n in tail_nodes):
        return None
    if not any(n.op_type in WEIGHTED for n in head_nodes):
        return None
    outputs = list(model.graph.output)
    head_outputs = cut + [o.name for o in outputs if o.name in made_by_head and o.name not in cut]
    if any(name not in types for name in head_outputs):
        return None
    initializers = {t.name for t in model.graph.initializer}
    graph_inputs = {v.name: v for v in model.graph.input}
    head = _subgraph_model(
        model,
        head_nodes,
        inputs=[v for v in model.graph.input if v.name not in initializers],
        outputs=[types[name] for name in head_outputs],
    )
    tail = _subgraph_model(
        model,
        tail_nodes,
        inputs=[types[name] for name in cut]
        + [graph_inputs[r] for r in reads if r in graph_inputs and r not in initializers],
        outputs=[o for o in outputs if o.name not in made_by_head],
    )
    in_tail_ids = {id(n) for n in tail_nodes}
    ops = sorted({n.op_type for n in blocked if id(n) in in_tail_ids})
    onnx.checker.check_model(head)
    return Tail(head=head, tail=tail, ops=ops)


def _downstream(nodes: list[Any], blocked: list[Any]) -> list[bool]:
    """For each node (in topological order): whether it is blocked or reads, directly or
    inside a subgraph, a tensor a blocked or downstream node makes."""
    blocked_ids = {id(n) for n in blocked}
    tainted: set[str] = set()
    marks = []
    for node in nodes:
        mark = id(node) in blocked_ids or any(r in tainted for r in _reads(node))
        if mark:
            tainted.update(o for o in node.output if o)
        marks.append(mark)
    return marks


def _data_dependent(model: Any) -> set[str]:
    """Tensors of the main graph whose values depend on the graph inputs' values: not
    constants, nor what only shapes (`Shape`, `Size`) and constants make."""
    initializers = {t.name for t in model.graph.initializer}
    data = {v.name for v in model.graph.input if v.name not in initializers}
    for node in model.graph.node:
        if node.op_type not in ("Shape", "Size") and any(r in data for r in _reads(node)):
            data.update(o for o in node.output if o)
    return data


def _reads(node: Any) -> Iterator[str]:
    """Tensors `node` reads: its inputs and the outer names its subgraphs use."""
    yield from (i for i in node.input if i)
    for attr in node.attribute:
        graphs = ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
        for graph in graphs:
            yield from _outer_names(graph)


def _outer_names(graph: Any) -> Iterator[str]:
    """Names a subgraph reads that it neither makes nor declares (outer-scope values)."""
    local = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    for node in graph.node:
        for name in _reads(node):
            if name not in local:
                yield name
        local.update(o for o in node.output if o)


def _is_float(value: Any) -> bool:
    return bool(value.type.tensor_type.elem_type == 1)  # TensorProto.FLOAT


def _ordered(names: Iterator[str]) -> list[str]:
    return list(dict.fromkeys(names))


def value_types(model: Any) -> dict[str, Any]:
    """ValueInfo (type and shape) of every tensor of the main graph that ONNX shape
    inference can type: declared outputs, then inferred values."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # an unknown shape must not hide the declared ones
        inferred = model
    types = {v.name: v for v in inferred.graph.value_info if v.type.HasField("tensor_type")}
    types.update({v.name: v for v in model.graph.output})
    types.update({v.name: v for v in model.graph.input})
    return {name: v for name, v in types.items() if v.type.tensor_type.elem_type}


def _subgraph_model(model: Any, nodes: list[Any], *, inputs: list, outputs: list) -> Any:
    """A model of `nodes` with `model`'s opsets, metadata and the initializers they read."""
    from onnx import helper

    read = {r for n in nodes for r in _reads(n)}
    initializers = [t for t in model.graph.initializer if t.name in read]
    graph = helper.make_graph(
        nodes, model.graph.name or "graph", inputs, outputs, initializer=initializers
    )
    part = helper.make_model(graph, opset_imports=list(model.opset_import))
    part.ir_version = model.ir_version
    part.producer_name = model.producer_name
    del part.functions[:]
    part.functions.extend(model.functions)
    return part


def splice_tail(head: Any, tail: Any, final_outputs: list[str]) -> Any:
    """One model: `head` (the pruned network's export) with `tail`'s nodes after it, its
    outputs the upload's (`final_outputs`, in order). The tail is converted to the
    head's opset first when they differ; its internal names that the head also uses
    are renamed."""
    import onnx
    from onnx import version_converter

    head_opset = _default_opset(head)
    if _default_opset(tail) != head_opset:
        tail = version_converter.convert_version(tail, head_opset)
    tail = _renamed_apart(tail, _names(head.graph))
    merged = onnx.ModelProto()
    merged.CopyFrom(head)
    graph = merged.graph
    graph.node.extend(tail.graph.node)
    graph.initializer.extend(tail.graph.initializer)
    graph.value_info.extend(tail.graph.value_info)
    by_name = {v.name: v for v in [*head.graph.output, *tail.graph.output]}
    del graph.output[:]
    graph.output.extend(by_name[name] for name in final_outputs)
    for opset in tail.opset_import:
        if opset.domain not in {o.domain for o in merged.opset_import}:
            merged.opset_import.append(opset)
    merged.ir_version = max(head.ir_version, tail.ir_version)
    onnx.checker.check_model(merged)
    return merged


def _default_opset(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _names(graph: Any) -> set[str]:
    names = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    return names | {o for n in graph.node for o in n.output} | {n.name for n in graph.node}


def _renamed_apart(tail: Any, taken: set[str]) -> Any:
    """`tail` with the names it makes (nodes' outputs, initializers, node names) that
    clash with `taken` given a fresh prefix, everywhere they are read (subgraphs too).
    Its inputs, which the head makes, and its outputs keep their names."""
    import onnx

    keep = {v.name for v in tail.graph.input} | {v.name for v in tail.graph.output}
    made = {o for n in tail.graph.node for o in n.output} | {t.name for t in tail.graph.initializer}
    renames = {name: f"postprocess/{name}" for name in made & taken if name not in keep}
    out = onnx.ModelProto()
    out.CopyFrom(tail)
    _rename_in(out.graph, renames)
    for node in out.graph.node:
        if node.name in taken:
            node.name = f"postprocess/{node.name}"
    return out


def _rename_in(graph: Any, renames: dict[str, str]) -> None:
    if not renames:
        return
    for value in graph.output:  # the main graph's are kept; a subgraph may return a renamed one
        value.name = renames.get(value.name, value.name)
    for tensor in graph.initializer:
        tensor.name = renames.get(tensor.name, tensor.name)
    for value in graph.value_info:
        value.name = renames.get(value.name, value.name)
    for node in graph.node:
        node.input[:] = [renames.get(i, i) for i in node.input]
        node.output[:] = [renames.get(o, o) for o in node.output]
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _rename_in(sub, renames)
