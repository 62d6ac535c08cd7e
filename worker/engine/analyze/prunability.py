"""A model's prunability: its channel groups, which are protected and why, and the
largest MACs reduction reachable. Shown at upload, before anyone submits a job.

The groups come from the same analysis a job runs (`preflight.analyse_groups`); the
reachable reduction from pruning a copy with every protected group ignored, to a target
no model reaches, in one step, so what it stops at is the most the defaults allow."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

from contract import PruneSpec, Target
from contract.model_info import ChannelGroup, Prunability
from worker.engine.analyze.deadline import Deadline, analysis_budget, timed_forward, watchdog
from worker.engine.analyze.preflight import PROTECTION_REASONS, ROOT_MODULE_TYPES, analyse_groups
from worker.engine.errors import AnalysisTimeout, EngineError
from worker.engine.prune.to_target import prune_model
from worker.engine.types import LoadedModel

# Beyond any real model: pruning stops where the layers reach max_layer_ratio.
_UNREACHABLE_TARGET = 0.99


def prunability(
    loaded: LoadedModel,
    *,
    budget_s: float | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> Prunability:
    started = time.perf_counter()
    layers = sum(isinstance(m, ROOT_MODULE_TYPES) for m in loaded.module.modules())
    _, forward_s = timed_forward(loaded.module.eval(), loaded.example_inputs())
    deadline = Deadline(budget_s or analysis_budget(layers, forward_s), should_cancel)
    analysis = analyse_groups(loaded.module.eval(), loaded, deadline)
    groups = [
        ChannelGroup(layer=name, channels=analysis.channels[name], prunable=True)
        for name in analysis.prunable
    ] + [
        ChannelGroup(
            layer=name,
            channels=analysis.channels[name],
            prunable=False,
            reason=reason,
            why=PROTECTION_REASONS[reason],
        )
        for name, reason in analysis.protected.items()
    ]
    notes = list(analysis.notes)
    # Every layer a protected group holds, not only its root (as a job's pruning does):
    # a member the group search reaches only from the root would otherwise be pruned alone.
    names = {m: n for n, m in loaded.module.named_modules()}
    held = [names[m] for m in analysis.protected_modules if m in names]
    reachable = _max_macs_reduction(loaded, held, deadline, notes)
    return Prunability(
        groups=groups,
        prunable_groups=len(analysis.prunable),
        protected_groups=len(analysis.protected),
        max_macs_reduction=reachable,
        analysis_s=round(time.perf_counter() - started, 2),
        notes=notes,
    )


def _max_macs_reduction(
    loaded: LoadedModel, protected: list[str], deadline: Deadline, notes: list[str]
) -> float | None:
    work = copy.deepcopy(loaded.module).eval()
    spec = PruneSpec(
        target=Target(macs_reduction=_UNREACHABLE_TARGET),
        iterative_steps=1,
        ignored_layers=protected,
    )
    try:
        with watchdog(deadline, "the search for the largest reachable reduction"):
            result = prune_model(work, loaded.example_inputs(), spec)
    except AnalysisTimeout:
        notes.append("the analysis budget ran out before the largest reduction was found")
        return None
    except EngineError as exc:
        if exc.code != "nothing_to_prune":
            raise
        return 0.0
    return round(result.achieved["macs_reduction"], 4)
