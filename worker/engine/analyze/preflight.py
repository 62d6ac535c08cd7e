"""Before pruning: run the model, prove the export path, and find the layers to protect.

A layer is protected (its output channels are never pruned) when removing channels from
its group would
- change the shape of a graph output (classifier, detection and segmentation heads: the
  group reaches an output of torch-pruning's dependency graph), or
- crash the model or change an output's shape (a shape baked into the graph: a reshape
  constant, a head count, flatten -> Linear, a split size, an op torch-pruning does not
  understand).
The second kind is found by trial: on a copy of the model, remove a channel from each
candidate group (one per channel group, as the pruner would) and run a forward pass.
All candidates are tried together first and bisected only when that fails, at a reduced
spatial size where the model allows, so the analysis costs a handful of small forward
passes. A model whose trials are costly (a ViT keeps its full input size, and pruning
copies its weights) is bisected on the meta device (`meta_device`), shapes without data.

`build_dependency_graph` and `PRUNER_KWARGS` give the pruner the same view of the model
(custom pruners for the modules the FX rewrites create, `load/channel_modules.py`; the
same root layer types).
"""

from __future__ import annotations

import contextlib
import copy
import io
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import ops

from contract import ExportSpec
from worker.engine.analyze.deadline import Deadline, analysis_budget, timed_forward, watchdog
from worker.engine.analyze.meta_device import MetaSwap, cannot_tell, no_saved_tensors
from worker.engine.analyze.tp_extensions import index_mapping_frozen, register
from worker.engine.errors import AnalysisTimeout, JobCancelled, PruningFailed
from worker.engine.load.channel_modules import ChannelConst, ChannelShuffle
from worker.engine.outputs import flatten_outputs
from worker.engine.tp_adapter import param_names, set_param_names
from worker.engine.types import LoadedModel, Preflight

# The layers whose output channels are pruned. Not nn.LSTM: torch-pruning's LSTM pruner
# mishandles the gate weights, and building an LSTM's group can loop without end; an
# LSTM's input channels are still pruned with the convolution that feeds it.
ROOT_MODULE_TYPES = (ops.TORCH_CONV, ops.TORCH_LINEAR)

# Spatial sizes (dims after the channel dim) tried for the protection trials, smallest first.
_TRIAL_SIZES = (32, 64)

# How many times cheaper than a trial with the data a forward pass on the meta device must
# be for the search to run there: a meta trial also prunes (in Python) and its result is
# confirmed with the data. Small inputs through small layers run faster with the data.
META_SPEEDUP_NEEDED = 3.0
# A forward pass with the data this slow (seconds) makes it worth measuring one on meta
# before the first trial: a trial would cost at least as much, and prune besides.
META_UP_FRONT_S = 0.5


class ChannelConstPruner(tp.pruner.function.BasePruningFunc):
    """Prunes a `ChannelConst`'s constant together with the channels it applies to."""

    TARGET_MODULES = (ChannelConst,)

    def prune_out_channels(self, layer: Any, idxs: Sequence[int]) -> nn.Module:
        keep = sorted(set(range(layer.weight.shape[layer.dim])) - set(idxs))
        layer.weight = self._prune_parameter_and_grad(layer.weight, keep, layer.dim)
        return layer

    prune_in_channels = prune_out_channels  # channels in == channels out, like BatchNorm

    def get_out_channels(self, layer: Any) -> int:
        return int(layer.weight.shape[layer.dim])

    def get_in_channels(self, layer: Any) -> int:
        return int(layer.weight.shape[layer.dim])


class ChannelShufflePruner(tp.pruner.function.BasePruningFunc):
    """Tells torch-pruning how many channels a `ChannelShuffle` passes (in == out). The
    groups that reach one are protected (see `find_protected`): a permutation of channels
    is not something torch-pruning's index mappings can express."""

    TARGET_MODULES = (ChannelShuffle,)

    def prune_out_channels(self, layer: Any, idxs: Sequence[int]) -> nn.Module:
        layer.channels -= len(set(idxs))
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: Any) -> int:
        return int(layer.channels)

    def get_in_channels(self, layer: Any) -> int:
        return int(layer.channels)


CUSTOM_PRUNERS: dict[type, tp.pruner.function.BasePruningFunc] = {
    ChannelConst: ChannelConstPruner(),
    ChannelShuffle: ChannelShufflePruner(),
}
register(CUSTOM_PRUNERS)  # channel Conv1d (ECA) and the regroups torch-pruning stops at

# Extra keyword arguments for torch_pruning's pruners (tp.pruner.MetaPruner and friends).
PRUNER_KWARGS: dict[str, Any] = {
    "customized_pruners": CUSTOM_PRUNERS,
    "root_module_types": list(ROOT_MODULE_TYPES),
}


def build_dependency_graph(
    module: nn.Module,
    example_inputs: Sequence[torch.Tensor],
    output_transform: Any = None,
) -> tp.DependencyGraph:
    """torch-pruning's DependencyGraph of `module`, with this engine's custom pruners."""
    with torch.enable_grad():
        return tp.DependencyGraph().build_dependency(
            module,
            example_inputs=tuple(example_inputs),
            output_transform=output_transform,
            customized_pruners=CUSTOM_PRUNERS,
            verbose=False,
        )


def run_preflight(
    loaded: LoadedModel,
    *,
    opset: int = 17,
    budget_s: float | None = None,
    should_cancel: Any = None,
) -> Preflight:
    """Run the model, round-trip an unpruned export through onnxruntime, find the layers
    to protect. Raises ExportFailed/VerificationFailed when the model cannot be exported
    faithfully (no pruning result could be delivered either).

    The layer analysis stops after `budget_s` seconds (default: `deadline.analysis_budget`
    of the model's layer count and the time of its forward pass) and when `should_cancel()`
    turns true."""
    from worker.engine.ship.export import export_onnx, verify_onnx

    module = loaded.module.eval()
    inputs = loaded.example_inputs(seed=0)
    out, forward_s = timed_forward(module, inputs)
    reference = tuple(t.detach().clone() for t in flatten_outputs(out))
    notes: list[str] = []
    if not all(bool(torch.isfinite(t).all()) for t in reference if t.is_floating_point()):
        notes.append("the model's outputs on random inputs are not all finite")

    spec = ExportSpec(opset=opset, dynamic_batch=True)
    with tempfile.TemporaryDirectory(prefix="secateurs-preflight-") as tmp:
        path = export_onnx(module, loaded, Path(tmp) / "unpruned.onnx", spec)
        diff = verify_onnx(path, module, inputs)
        if _batch_is_dynamic(loaded):
            diff = max(diff, verify_onnx(path, module, loaded.example_inputs(batch=2, seed=1)))

    if budget_s is None:
        budget_s = analysis_budget(_layer_count(module), forward_s)
    protected, found = find_protected(module, loaded, Deadline(budget_s, should_cancel))
    return Preflight(
        protected=protected,
        reference_outputs=reference,
        onnx_max_abs_diff=diff,
        notes=notes + found,
    )


def _batch_is_dynamic(loaded: LoadedModel) -> bool:
    return all(i.shape and not isinstance(i.shape[0], int) for i in loaded.inputs)


def _layer_count(module: nn.Module) -> int:
    return sum(isinstance(m, ROOT_MODULE_TYPES) for m in module.modules())


# Why a group's root layer keeps its output channels (`GroupAnalysis.protected`).
REACHES_OUTPUT = "reaches_output"  # a graph output's shape would change (a head)
CHANNEL_SHUFFLE = "channel_shuffle"  # a permutation of channels pruning cannot follow
BAKED_SHAPE = "baked_shape"  # a trial showed a crash or a changed output shape
NOT_ANALYSED = "not_analysed"  # the analysis budget ran out before a trial showed it safe
PROTECTION_REASONS = {
    REACHES_OUTPUT: "its channels reach a model output",
    CHANNEL_SHUFFLE: "its channels pass a channel shuffle",
    BAKED_SHAPE: "pruning it breaks a shape baked into the graph",
    NOT_ANALYSED: "the analysis budget ran out before it was shown safe",
}


@dataclass
class GroupAnalysis:
    """Every pruning group of a model, by the name of its root layer."""

    prunable: list[str] = field(default_factory=list)
    protected: dict[str, str] = field(default_factory=dict)  # root -> one of the reasons
    channels: dict[str, int] = field(default_factory=dict)  # root -> its output channels
    protected_modules: list[nn.Module] = field(default_factory=list)  # of the original
    notes: list[str] = field(default_factory=list)


def find_protected(
    module: nn.Module, loaded: LoadedModel, deadline: Deadline | None = None
) -> tuple[list[nn.Module], list[str]]:
    """The root layers of the pruning groups that must keep their channels, and notes."""
    analysis = analyse_groups(module, loaded, deadline)
    return analysis.protected_modules, analysis.notes


def analyse_groups(
    module: nn.Module, loaded: LoadedModel, deadline: Deadline | None = None
) -> GroupAnalysis:
    """Each pruning group of `module`: prunable, or protected and why.

    Group discovery that outlasts `deadline` is abandoned (`AnalysisTimeout`: nothing is
    known to prune safely); trials that outlast it stop, and the layers not yet shown
    safe are protected, with a note saying so."""
    started = time.perf_counter()
    deadline = deadline or Deadline(analysis_budget(_layer_count(module)))
    work = copy.deepcopy(module).eval()
    inputs = _trial_inputs(work, loaded)
    traced: list[Any] = []

    def keep_outputs(out: Any) -> Any:
        traced.append(out)
        return out

    try:
        with watchdog(deadline, "torch-pruning's search for the layer groups"), no_saved_tensors():
            dg = build_dependency_graph(work, inputs, output_transform=keep_outputs)
            with index_mapping_frozen(dg):
                groups = list(dg.get_all_groups(root_module_types=ROOT_MODULE_TYPES))
    except (JobCancelled, AnalysisTimeout):
        raise
    except Exception as exc:  # torch-pruning's tracing gives up on this graph
        raise PruningFailed(
            f"torch-pruning cannot follow the channels of this model: {type(exc).__name__}: "
            f"{str(exc)[:300]}"
        ) from exc
    output_fns = {t.grad_fn for t in flatten_outputs(traced[0]) if t.grad_fn is not None}
    with torch.no_grad():
        base_forward_s = time.perf_counter()
        base = flatten_outputs(work(*inputs))
        base_forward_s = time.perf_counter() - base_forward_s
    names = {m: n for n, m in work.named_modules()}

    to_output, shuffled, candidates = [], [], []
    members: dict[nn.Module, list[nn.Module]] = {}
    for group in groups:
        root = group[0].dep.target.module
        members[root] = _out_channel_layers(dg, group)
        if any(isinstance(dep.target.module, ChannelShuffle) for dep, _ in group):
            shuffled.append(root)
        elif any(
            dep.target.type == ops.OPTYPE.OUTPUT
            or (dep.target.grad_fn in output_fns and dg.is_out_channel_pruning_fn(dep.handler))
            for dep, _ in group
        ):
            to_output.append(root)
        elif isinstance(root, nn.Module):
            candidates.append(root)

    trials = _Trials(dg, work, inputs, base, deadline, base_forward_s)
    unanalysed: list[nn.Module] = []
    try:
        with watchdog(deadline, "the layer analysis' trial pruning"):
            breaking = trials.breaking(candidates)
    except AnalysisTimeout:
        # Out of time: what no trial has shown safe is protected rather than guessed.
        trials.restore()
        unanalysed = [m for m in candidates if m not in trials.passed]
        breaking = unanalysed
    trials.check_restored()

    original = dict(module.named_modules())
    analysis = GroupAnalysis()
    reasons = [
        *((m, REACHES_OUTPUT) for m in to_output),
        *((m, CHANNEL_SHUFFLE) for m in shuffled),
        *((m, NOT_ANALYSED if unanalysed else BAKED_SHAPE) for m in breaking),
    ]
    for m, reason in reasons:
        if names.get(m) in original:
            analysis.protected.setdefault(names[m], reason)
            # Every layer whose output channels the group holds, not only its root: the
            # pruner skips ignored roots before it builds their groups, and a member whose
            # own search does not reach the root (a window partition read as a channel
            # slice) would become a root of its own, pruned without any trial.
            for layer in dict.fromkeys([m, *members.get(m, ())]):
                if names.get(layer) in original:
                    analysis.protected_modules.append(original[names[layer]])
    analysis.prunable = [
        names[m] for m in candidates if m not in breaking and names.get(m) in original
    ]
    for root in [*analysis.prunable, *analysis.protected]:
        layer = original[root]
        analysis.channels[root] = int(
            getattr(layer, "out_channels", 0) or getattr(layer, "out_features", 0)
        )
    notes = analysis.notes
    if shuffled:
        notes.append(
            f"protected {len(shuffled)} layer(s) whose channels pass a channel shuffle "
            "(a permutation of channels that pruning cannot follow): "
            + _list(names[m] for m in shuffled)
        )
    if to_output:
        notes.append(
            f"protected {len(to_output)} layer(s) whose channels reach an output: "
            + _list(names[m] for m in to_output)
        )
    if unanalysed:
        notes.append(
            f"the analysis budget of {deadline.seconds:.0f} s ran out: protected "
            f"{len(unanalysed)} layer(s) not yet analysed: " + _list(names[m] for m in unanalysed)
        )
    elif breaking:
        notes.append(
            f"protected {len(breaking)} layer(s) whose pruning would break a shape "
            "baked into the graph: " + _list(names[m] for m in breaking)
        )
    notes.append(
        f"analysed {len(groups)} pruning groups with {trials.count} trial forward passes at "
        f"input {[list(t.shape) for t in inputs]} in {time.perf_counter() - started:.1f} s"
    )
    return analysis


def _out_channel_layers(dg: tp.DependencyGraph, group: Any) -> list[nn.Module]:
    """The root-type layers whose output channels `group` prunes."""
    return [
        dep.target.module
        for dep, _ in group
        if isinstance(dep.target.module, ROOT_MODULE_TYPES)
        and dg.is_out_channel_pruning_fn(dep.handler)
    ]


def _list(names: Any, limit: int = 8) -> str:
    names = list(names)
    return ", ".join(names[:limit]) + (
        f" and {len(names) - limit} more" if len(names) > limit else ""
    )


def _trial_inputs(module: nn.Module, loaded: LoadedModel) -> tuple[torch.Tensor, ...]:
    """Example inputs at a reduced spatial size when the model runs there the same way."""
    full = loaded.example_inputs(seed=0)
    with torch.no_grad():
        full_out = flatten_outputs(module(*full))
    for size in _TRIAL_SIZES:
        shapes = [(*shape[:2], *(min(d, size) for d in shape[2:])) for shape in loaded.input_shapes]
        if all(
            tuple(s) == tuple(shape) for s, shape in zip(shapes, loaded.input_shapes, strict=True)
        ):
            break
        gen = torch.Generator().manual_seed(0)
        small = tuple(torch.randn(s, generator=gen) for s in shapes)
        try:
            with torch.no_grad():
                out = flatten_outputs(module(*small))
        except Exception:
            continue
        if len(out) == len(full_out) and all(
            o.dim() == f.dim() and bool(torch.isfinite(o).all())
            for o, f in zip(out, full_out, strict=True)
        ):
            return small
    return full


class _MetaCannotTell(Exception):
    """A trial on the meta device failed for the device's sake, not the model's."""


class _Trials:
    """Prune one channel per channel group from sets of groups, run, restore."""

    def __init__(
        self,
        dg: tp.DependencyGraph,
        work: nn.Module,
        inputs: tuple[torch.Tensor, ...],
        base: tuple[torch.Tensor, ...],
        deadline: Deadline | None = None,
        base_forward_s: float = 0.0,
    ) -> None:
        self.dg, self.work, self.inputs, self.base = dg, work, inputs, base
        self.deadline, self.base_forward_s = deadline, base_forward_s
        self._meta: MetaSwap | None | Literal[False] = False  # False: not yet tried
        self.count = 0
        self.passed: set[nn.Module] = set()  # roots some successful trial pruned
        self._ch_groups: dict[nn.Module, int] = {}
        self._grouping_s = 0.0  # spent working out `_ch_groups`
        # Pruning replaces parameters and attributes, and changes some lists in place (an
        # LSTM's flat weights, torch-pruning's own records of concat and split sizes):
        # keep each object's attributes, with copies of its lists and dicts.
        layers = list(work.modules())
        own = set(map(id, layers))
        records = [
            op
            for op in (node.module for node in dg.module2node.values())
            if isinstance(op, nn.Module) and id(op) not in own
        ]
        self._saved = [(m, _state(m)) for m in [*layers, *records]]
        self._module2node = dict(dg.module2node)
        self._param_to_name = param_names(dg)
        self._node_modules = {node: node.module for node in dg.module2node.values()}

    @property
    def on_meta(self) -> bool:
        """Whether trials run on the meta device now."""
        return bool(self._meta and self._meta.on_meta)

    def breaking(self, roots: list[nn.Module]) -> list[nn.Module]:
        """The roots whose pruning breaks the model.

        The search runs on the meta device when a forward pass there is much cheaper than
        a trial with the data (large weights to copy, large activations): decided before
        the first trial when a forward pass with the data is slow already, else after a
        first trial of all roots together with the data has failed. What the meta search
        finds safe is then run once with the data (the values stay finite, no kernel
        refuses what its meta twin allowed); if that run fails, or the meta device cannot
        tell, the search is repeated with the data."""
        if not roots:
            return []
        meta, known_to_fail = None, False
        if self.base_forward_s >= META_UP_FRONT_S:
            meta = self._cheaper_meta(self.base_forward_s)
        if meta is None:
            started = time.perf_counter()
            if self.run(roots):
                return []
            known_to_fail = True
            # What the first trial spent pruning (copying weights), less what it spent
            # working out each group once; a search's trials prune about half as much.
            pruning_s = time.perf_counter() - started - self._grouping_s - self.base_forward_s
            meta = self._cheaper_meta(self.base_forward_s + max(pruning_s, 0.0) / 2)
            if meta is None:
                return self._search(roots, known_to_fail=True)
        found = self._search_on_meta(meta, roots, known_to_fail=known_to_fail)
        return found if found is not None else self._search(roots, known_to_fail=False)

    def _cheaper_meta(self, trial_with_data_s: float) -> MetaSwap | None:
        """The model's meta swap, when its forward pass beats a trial with the data."""
        if self._meta is False:
            self._meta = MetaSwap.of(self.work, self.inputs, self.base)
        meta = self._meta
        if meta is None or meta.forward_s * META_SPEEDUP_NEEDED >= trial_with_data_s:
            return None
        return meta

    def _search_on_meta(
        self, meta: MetaSwap, roots: list[nn.Module], *, known_to_fail: bool
    ) -> list[nn.Module] | None:
        """The meta search's answer once confirmed with the data; None when it is not."""
        shown_safe = set(self.passed)
        try:
            with meta.active():
                found = self._search(roots, known_to_fail=known_to_fail)
            rest = [m for m in roots if m not in found]
            if not rest or self.run(rest):
                return found
        except _MetaCannotTell:
            pass  # the meta device's own failure, not the model's
        self.passed = shown_safe  # what only meta passed is not known to be safe
        return None

    def _search(self, roots: list[nn.Module], *, known_to_fail: bool) -> list[nn.Module]:
        """The breaking roots among `roots` (which fail together, if `known_to_fail`)."""
        breaking = self._bisect(roots) if known_to_fail else self.failing(roots)
        if breaking and breaking != roots and not self.run([m for m in roots if m not in breaking]):
            breaking = self.one_by_one(roots)  # only fail together: greedily
        return breaking

    def failing(self, roots: list[nn.Module]) -> list[nn.Module]:
        """The roots whose pruning breaks the model (bisecting failed sets)."""
        if not roots or self.run(roots):
            return []
        return self._bisect(roots)

    def _bisect(self, roots: list[nn.Module]) -> list[nn.Module]:
        """`failing` of roots known to fail together."""
        if len(roots) == 1:
            return roots
        mid = len(roots) // 2
        left, right = self.failing(roots[:mid]), self.failing(roots[mid:])
        if left or right:
            return left + right
        return self.one_by_one(roots)  # the halves only fail together

    def one_by_one(self, roots: list[nn.Module]) -> list[nn.Module]:
        passing: list[nn.Module] = []
        failing = []
        for root in roots:
            if self.run([*passing, root]):
                passing.append(root)
            else:
                failing.append(root)
        return failing

    def run(self, roots: list[nn.Module]) -> bool:
        """Whether the model still runs, with the same output shapes, with channels removed
        from every group in `roots`."""
        if self.deadline is not None:
            self.deadline.check("the layer analysis' trial pruning")
        self.count += 1
        try:
            for root in roots:
                self._prune_one(root)
            # A failing FX graph prints its code to stderr; failing is expected here.
            inputs = self._meta.inputs(self.inputs) if self._meta else self.inputs
            with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
                out = flatten_outputs(self.work(*inputs))
            ok = len(out) == len(self.base) and all(
                o.shape == b.shape and _finite(o) for o, b in zip(out, self.base, strict=True)
            )
        except (JobCancelled, AnalysisTimeout):
            raise  # the watchdog's, not the trial's
        except Exception as exc:
            if self.on_meta and cannot_tell(exc):
                raise _MetaCannotTell from exc  # not the model's failure: search with data
            return False
        finally:
            self._restore()
        if ok:
            self.passed.update(roots)
        return ok

    def restore(self) -> None:
        """Put the model back after an interrupted trial."""
        self._restore()

    def _prune_one(self, root: nn.Module) -> None:
        pruner = self.dg.get_pruner_of_module(root)
        channels = pruner.get_out_channels(root)
        if not channels or channels < 2:
            return
        if root not in self._ch_groups:  # the same for every trial: work it out once
            started = time.perf_counter()
            group = self.dg.get_pruning_group(
                root, pruner.prune_out_channels, list(range(channels))
            )
            self._ch_groups[root] = _channel_groups(self.dg, group)
            self._grouping_s += time.perf_counter() - started
        ch_groups = self._ch_groups[root]
        size = channels // ch_groups
        if size < 2:
            return
        idxs = [g * size + size - 1 for g in range(ch_groups)]
        self.dg.get_pruning_group(root, pruner.prune_out_channels, idxs).prune(record_history=False)

    def _restore(self) -> None:
        for obj, state in self._saved:
            obj.__dict__.clear()
            obj.__dict__.update(_state_copy(state))
        self.dg.module2node = dict(self._module2node)
        set_param_names(self.dg, self._param_to_name)
        for node, module in self._node_modules.items():
            node.module = module

    def check_restored(self) -> None:
        with torch.no_grad():
            out = flatten_outputs(self.work(*self.inputs))
        if any(not torch.equal(o, b) for o, b in zip(out, self.base, strict=True)):
            raise PruningFailed("the layer analysis could not restore the model between trials")


def _finite(tensor: torch.Tensor) -> bool:
    """No inf or NaN; a meta tensor has no values to check."""
    if tensor.device.type == "meta" or not tensor.is_floating_point():
        return True
    return bool(torch.isfinite(tensor).all())


def _state(obj: Any) -> dict[str, Any]:
    return _state_copy(obj.__dict__)


def _state_copy(state: dict[str, Any]) -> dict[str, Any]:
    """A copy of an object's attributes one level deep (lists and dicts copied, not the
    tensors and modules in them)."""
    return {k: v.copy() if isinstance(v, list | dict) else v for k, v in state.items()}


def _channel_groups(dg: tp.DependencyGraph, group: Any) -> int:
    """Channel groups of a group (grouped convolutions), as torch-pruning's pruners see them."""
    counts = [1]
    for dep, _ in group:
        module = dep.target.module
        if not isinstance(module, nn.Module):
            continue
        if isinstance(module, ops.TORCH_CONV) and module.groups == module.out_channels:
            continue  # depthwise: pruned channel by channel
        pruner = dg.get_pruner_of_module(module)
        if pruner is None:
            continue
        if dg.is_out_channel_pruning_fn(dep.handler):
            counts.append(pruner.get_out_channel_groups(module))
        else:
            counts.append(pruner.get_in_channel_groups(module))
    return max(counts)
