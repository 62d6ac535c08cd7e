"""Residual blocks that can be removed whole: depth pruning, for latency targets.

Channel pruning thins every layer but keeps every operation. On a runtime where each
operation has a cost of its own (a kernel launch, a pass over memory, an element-wise
activation or a squeeze-and-excitation gate that MACs do not see), a mobile network
keeps much of its time however thin it gets: a MobileNetV3 at 128 px ran slower after
30% fewer MACs by uniform channel pruning, and 2.05x faster with four of its six
residual blocks removed, at 92.2% test accuracy after the same three epochs of
fine-tuning (95.6% before).

A block is `y = skip + branch(skip)` where the branch reads nothing but `skip` (and
the model's own weights), nothing outside the block reads the branch, and both sides
have one shape. Removing it makes `y = skip`: a residual network is built so that each
block only adds a correction. Blocks are found in FX graphs, which is what an ONNX or
`.pt2` upload loads as; a model built from its class (a weights upload) is traced into
one first (`traced_for_blocks`).
"""

import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from worker.engine.measure.evaluate import output_tensors, same_outputs

_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_WEIGHTED = (nn.modules.conv._ConvNd, nn.Linear)


@dataclass(frozen=True)
class Block:
    add: str  # the residual addition's node
    skip: str  # the node the block adds its branch to
    nodes: frozenset[str]  # the branch's nodes, the addition included
    layers: tuple[str, ...]  # qualified names of the modules the branch calls


def _is_add(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in _ADD_FUNCTIONS or str(node.target) == "aten.add.Tensor"
    if node.op == "call_method":
        return node.target in ("add", "add_")
    if node.op == "call_module":
        # onnx2torch's Add (its Sub, Mul and Div share the class)
        return getattr(gm.get_submodule(str(node.target)), "math_op_function", None) is torch.add
    return False


def _branch(skip: fx.Node, out: fx.Node) -> set[fx.Node] | None:
    """The nodes `out` is computed from, back to `skip`; None when `out` also reads
    another input of the model, or does not read `skip` at all."""
    branch: set[fx.Node] = set()
    reads_skip = False
    stack = [out]
    while stack:
        node = stack.pop()
        if node is skip:
            reads_skip = True
            continue
        if node in branch:
            continue
        if node.op == "placeholder":
            return None
        branch.add(node)
        stack.extend(node.all_input_nodes)
    return branch if reads_skip else None


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _as_block(gm: fx.GraphModule, add: fx.Node, skip: fx.Node, out: fx.Node) -> Block | None:
    if skip.op == "get_attr" or _shape(skip) is None or _shape(skip) != _shape(add):
        return None
    branch = _branch(skip, out)
    if branch is None or any(
        user not in branch and user is not add for node in branch for user in node.users
    ):
        return None
    layers = tuple(
        str(n.target)
        for n in branch
        if n.op == "call_module" and isinstance(gm.get_submodule(str(n.target)), _WEIGHTED)
    )
    if not layers:
        return None  # a bias or a constant, not a block
    return Block(add.name, skip.name, frozenset(n.name for n in branch | {add}), layers)


@torch.no_grad()
def find_blocks(
    module: nn.Module, inputs: Sequence[torch.Tensor], protected: Iterable[str] = ()
) -> list[Block]:
    """The removable residual blocks of an FX graph module, in graph order, outermost
    first where blocks nest; none for another module. A block holding a `protected`
    layer (by qualified name) is not removable."""
    if not isinstance(module, fx.GraphModule):
        return []
    ShapeProp(module).propagate(*inputs)
    keep = set(protected)
    blocks = []
    for node in module.graph.nodes:
        if not _is_add(module, node) or len(node.args) < 2:
            continue
        a, b = node.args[0], node.args[1]
        if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)):
            continue
        block = _as_block(module, node, a, b) or _as_block(module, node, b, a)
        if block is not None and not keep.intersection(block.layers):
            blocks.append(block)
    return blocks


def remove_blocks(module: fx.GraphModule, blocks: Iterable[Block]) -> None:
    """Replace each block's output by its skip input, in place, and drop what only the
    removed branches used (their layers included)."""
    nodes = {n.name: n for n in module.graph.nodes}
    replaced: dict[str, str] = {}  # a removed addition -> the node standing in for it
    for block in blocks:
        if block.add not in nodes or block.add in replaced:
            continue  # inside a block removed already
        skip = block.skip
        while skip in replaced:  # the block before this one was removed too
            skip = replaced[skip]
        nodes[block.add].replace_all_uses_with(nodes[skip])
        replaced[block.add] = skip
    module.graph.eliminate_dead_code()
    module.delete_all_unused_submodules()
    module.recompile()


def disjoint(blocks: Iterable[Block]) -> list[Block]:
    """The blocks in order, skipping any that overlaps one taken before it."""
    taken: list[Block] = []
    used: set[str] = set()
    for block in blocks:
        if used.isdisjoint(block.nodes):
            taken.append(block)
            used |= block.nodes
    return taken


@torch.no_grad()
def traced_for_blocks(
    module: nn.Module, inputs: Sequence[torch.Tensor], protected: Iterable[str] = ()
) -> fx.GraphModule | None:
    """`module` traced into an FX graph (`torch.fx.symbolic_trace`) when it is not one,
    the trace computes the same outputs on `inputs` and it holds removable blocks; None
    otherwise (a model with data-dependent control flow does not trace).

    The trace shares the module's layers, under the same qualified names, and its
    in-place operations are made out-of-place (see `_out_of_place`). What a module
    decides by `self.training` outside its layers is fixed to eval mode: torchvision's
    stochastic depth, for one, stays off while the pruned model is fine-tuned."""
    if isinstance(module, fx.GraphModule):
        return None
    module.eval()
    try:
        expected = output_tensors(module(*inputs))
        graph = fx.symbolic_trace(module)
        _out_of_place(graph)
        same = same_outputs(expected, output_tensors(graph.eval()(*inputs)))
    except Exception:  # whatever stops a trace (or runs it), the model keeps its class
        return None
    if not same or not find_blocks(graph, inputs, protected):
        return None
    return graph


_OUT_OF_PLACE = {
    operator.iadd: operator.add,
    operator.isub: operator.sub,
    operator.imul: operator.mul,
    operator.itruediv: operator.truediv,
}


def _out_of_place(graph: fx.GraphModule) -> None:
    """Make in-place operations out-of-place: once a block is removed, the in-place
    activation that followed it (torchvision's `relu(out += identity)`) would overwrite
    the previous block's output, which that block's activation saved for backward, and
    fine-tuning would fail. The layers are shared with the traced model, which changes
    with them (not in what it computes)."""
    for layer in graph.modules():
        if isinstance(getattr(layer, "inplace", None), bool):
            setattr(layer, "inplace", False)  # noqa: B010 - any module's flag, not one class's
    for node in graph.graph.nodes:
        if node.op == "call_function" and node.target in _OUT_OF_PLACE:
            node.target = _OUT_OF_PLACE[node.target]
        elif node.op == "call_method" and str(node.target).endswith("_"):
            plain = str(node.target)[:-1]
            if not plain.startswith("_") and hasattr(torch.Tensor, plain):
                node.target = plain
        if node.kwargs.get("inplace") is True:
            node.kwargs = {**node.kwargs, "inplace": False}
    graph.recompile()
