"""The latency search's candidates and how one is chosen (`latency_search.py` runs the
search; `latency_families.py` builds the families the candidates come from).

A candidate is a pruned copy of the model with its measured readings; its kind (plain
global pruning, latency-priced channels, residual blocks removed) is set by its family.
`search_family` corrects a family's knob by measurement until it is on the aim; `choose`
picks among the finalists; `worth_reaiming`/`reaim`, `recovered_choice`, `polish` and
`settle` finish the choice, and `confirm` times a chosen one afresh.
"""

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from worker.engine.analyze.sensitivity import relative_change
from worker.engine.errors import JobCancelled
from worker.engine.measure.evaluate import output_tensors
from worker.engine.measure.latency import LayerLatencyTable

# Measured latency may exceed the target latency by this fraction and still meet it.
LATENCY_SLACK = 0.05
# A candidate more than this fraction faster than the target is over-pruned (see choose):
# the same band as the slack, so "on target" means within it either way.
OVERSHOOT = LATENCY_SLACK
# Candidates aim this fraction below the target latency (see prune_to_latency), near the
# middle of the band: the next timing run reads a model a few percent off its search's
# ratio either way (seen: 4% faster on mobilenet_v2, 3% slower on efficientnet_b0). Aimed
# 2.5% under, mobilenet_v2 was chosen at 0.476 of its original's time for a 0.5 target
# and timed 0.457, over-pruned, in the next run.
AIM_MARGIN = 0.01
# How close (fraction points of reduction) a candidate must come before the search stops.
_AIM = 0.015
_ROUNDS = 3
# The chosen candidate is brought this close to the aim (fraction of the target latency)
# by a further correction of its own family (see polish): choosing by output change
# favours whichever candidate is slowest, so the winner tends to sit at an edge of the
# band, where the next run's noise takes it out.
_POLISH = 0.01
_POLISH_ROUNDS = 2
# The chosen candidate is timed again in this many fresh runs, each interleaved with the
# original, and its ratio is their mean alone (see confirm). The readings that chose it
# lean towards the aim: of many candidates and corrections, the one whose noisy reading
# fell nearest wins. Seen on a trained mobilenet_v3_small at 128 px (1.2 ms): chosen at
# 0.502 of the original's time, it read 0.504..0.567 (mean 0.535) in nine later runs.
CONFIRM_RUNS = 4
# Finalists tried in turn when the chosen one, timed afresh, is off target (see settle).
_SETTLE_TRIES = 3
# Times the given candidate modules and the original side by side: name -> p50 ms, with
# the original under "original".
MeasureFn = Callable[[dict[str, nn.Module]], dict[str, float]]


# A candidate's error after a short distillation (1 - held-back accuracy, or agreement).
RecoverFn = Callable[[nn.Module], float]


@dataclass
class LatencyRuntime:
    """What a latency target needs from its caller: a table and a way to time models;
    with data to train on, a way to judge a candidate after a short recovery."""

    table: LayerLatencyTable
    measure: MeasureFn
    recover: RecoverFn | None = None


# Prunes a module (the model or a copy of it) in place; given the knob of a family.
ApplyFn = Callable[[nn.Module], None]
# A family of candidates: knob in (0, 1] (the share of cost kept) -> how to prune, and
# whether the knob could be reached.
FamilyFn = Callable[[float], tuple[ApplyFn, bool]]
# How a family prunes: global pruning to a MACs target, channels allocated by the latency
# table, or residual blocks removed (and channels for the rest).
Kind = Literal["plain", "channels", "blocks"]


@dataclass
class Candidate:
    """A pruned copy of the model and what was measured of it.

    `readings`: its latency ÷ the original's, each timed interleaved with the original
    during the search (its family's run, then the finalists' side-by-side run);
    `confirmed`: the readings of fresh runs after it was chosen (`confirm`), which alone
    count once there are any, since the readings that chose it lean towards the aim.
    """

    label: str
    kind: Kind
    apply: ApplyFn
    module: nn.Module
    readings: list[float]
    error: float = 0.0  # relative output change against the original on the runtime inputs
    family: FamilyFn | None = None  # what built it, and with which knob: to re-aim it
    knob: float = 1.0
    recovered: float | None = None  # its error after a short distillation, when judged so
    confirmed: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        """Measured latency ÷ the original's: the mean of the readings that count."""
        counted = self.confirmed or self.readings
        return sum(counted) / len(counted)


@dataclass
class Finish:
    """What the steps after the family searches share (re-aiming, polishing, settling on
    a winner): the model, the finalists so far (to which they add), the aim and the
    target as fractions of the original's time, and how to time and compare."""

    module: nn.Module
    finalists: list[Candidate]
    aim: float
    goal: float
    runtime: LatencyRuntime
    samples: Sequence[torch.Tensor]
    cancel: Callable[[], bool]


def build(module: nn.Module, apply: ApplyFn) -> nn.Module:
    candidate = copy.deepcopy(module).eval()
    apply(candidate)
    return candidate


def search_family(
    module: nn.Module,
    family: FamilyFn,
    goal_ratio: float,
    label: str,
    kind: Kind,
    runtime: LatencyRuntime,
    cancel: Callable[[], bool],
    start: float,
    *,
    rounds: int = _ROUNDS,
    tolerance: float = _AIM,
    tried: Sequence[tuple[float, float]] = (),
) -> tuple[Candidate | None, float]:
    """Correct the family's knob by measurement until the latency ratio is on goal.

    Returns the closest candidate and the knob that produced it, from which the next
    family of the same kind starts. `tried` holds (knob, ratio) measured before, which
    the corrections use but which are not candidates here."""
    knob, best, best_knob = start, None, start
    history = list(tried)  # (knob, measured ratio)
    for _ in range(rounds):
        if cancel():
            raise JobCancelled()
        apply, reached = family(knob)
        candidate = build(module, apply)
        times = runtime.measure({label: candidate})
        ratio = times[label] / times["original"]
        found = Candidate(label, kind, apply, candidate, [ratio], family=family, knob=knob)
        if best is None or closer(found, best, goal_ratio):
            best, best_knob = found, knob
        if abs(ratio - goal_ratio) <= tolerance or not reached and ratio > goal_ratio:
            break
        history.append((knob, ratio))
        knob = next_fraction(history, goal_ratio)
    return best, best_knob


def next_fraction(tried: list[tuple[float, float]], goal: float) -> float:
    """The budget to try next: proportional correction from the closest try, refined by
    the secant through the two closest tries. The table's view of the model is
    proportional to the real one, not equal to it, and widths move in steps, so the
    ratio is not linear in the budget.

    The secant keeps the proportional step's direction and at most twice its size: each
    ratio is a few percent off from one run to the next, and a secant through two close,
    noisy tries can point the wrong way or far past the goal (seen on efficientnet_b0:
    0.529, then 0.511, then 0.385 for a 0.485 aim)."""
    (f1, r1), *others = sorted(tried, key=lambda p: abs(p[1] - goal))
    limit = f1 * goal / r1 - f1
    step = limit
    if others and abs(others[0][1] - r1) >= 1e-6:
        f2, r2 = others[0]
        secant = (goal - r1) * (f2 - f1) / (r2 - r1)
        if secant * limit > 0:
            step = math.copysign(min(abs(secant), 2 * abs(limit)), limit)
    return min(1.0, max(0.02, f1 + step))


def closer(a: Candidate, b: Candidate, goal: float) -> bool:
    """Prefer meeting the goal, then being close to it."""
    a_meets, b_meets = a.ratio <= goal * (1 + LATENCY_SLACK), b.ratio <= goal * (1 + LATENCY_SLACK)
    if a_meets != b_meets:
        return a_meets
    return abs(a.ratio - goal) < abs(b.ratio - goal)


def tier(c: Candidate, goal_ratio: float) -> int:
    """0: on target (within LATENCY_SLACK of it, either way); 1: far faster than asked
    (over-pruned); 2: misses (slower)."""
    if c.ratio > goal_ratio * (1 + LATENCY_SLACK):
        return 2
    return 0 if c.ratio >= goal_ratio * (1 - OVERSHOOT) else 1


def choose(finalists: list[Candidate], goal_ratio: float) -> Candidate:
    """On target, the outputs closest to the original's; never one that another candidate
    on target beats on both speed and closeness.

    With none on target: one far faster than asked (the one meeting the target most
    narrowly: it lost the least of what the user meant to keep; seen on efficientnet_b0,
    80% less time for a 50% target), before the fastest of the misses. Choosing by
    closeness favours the slowest candidate in the band, at its edge: polish then
    corrects the winner towards the aim."""
    tiers = {id(c): tier(c, goal_ratio) for c in finalists}
    best_tier = min(tiers.values())
    group = [c for c in finalists if tiers[id(c)] == best_tier]
    if best_tier == 0:
        best = min(group, key=lambda c: c.error)
    elif best_tier == 1:
        best = max(group, key=lambda c: c.ratio)
    else:
        best = min(group, key=lambda c: c.ratio)
    for other in finalists:
        if tiers[id(other)] == 0 and other.ratio < best.ratio and other.error <= best.error:
            best = other
    return best


@torch.no_grad()
def measure_errors(
    original: nn.Module, finalists: list[Candidate], samples: Sequence[torch.Tensor]
) -> None:
    reference = output_tensors(original.eval()(*samples))
    for c in finalists:
        c.error = relative_change(output_tensors(c.module.eval()(*samples)), reference)


def worth_reaiming(finalists: list[Candidate], chosen: Candidate, goal: float) -> Candidate | None:
    """A far faster candidate whose family deserves a second try at the target: the chosen
    one itself when nothing was nearer, or one whose outputs are closer than the chosen
    one's although it pruned more (its way of pruning is the better one)."""
    overshot = [c for c in finalists if tier(c, goal) == 1 and c.family is not None]
    if any(c is chosen for c in overshot):
        return chosen
    nearer = [c for c in overshot if c.error < chosen.error]
    return min(nearer, key=lambda c: c.error) if nearer else None


def reaim(f: Finish, overshot: Candidate, chosen: Candidate) -> Candidate:
    """Search `overshot`'s family once more from a knob corrected towards the target, add
    what it finds to the finalists and choose again."""
    assert overshot.family is not None
    start = min(1.0, overshot.knob * f.aim / max(overshot.ratio, 1e-6))
    label = f"{overshot.label}, re-aimed"
    refined, _ = search_family(
        f.module, overshot.family, f.aim, label, overshot.kind, f.runtime, f.cancel, start
    )
    if refined is None:
        return chosen
    # Its ratio is its own search's run alone; the others' the mean of two.
    measure_errors(f.module, [refined], f.samples)
    f.finalists.append(refined)
    return choose(f.finalists, f.goal)


def recovered_choice(
    finalists: list[Candidate],
    chosen: Candidate,
    goal: float,
    recover: RecoverFn,
    cancel: Callable[[], bool],
) -> Candidate:
    """Of each kind of pruning (global, channels by latency, blocks removed) the candidate
    on target with the closest outputs, judged after a short distillation: the lowest
    error then wins. The outputs of a model just pruned to half its time are far off
    whichever way it was pruned (relative change near 1 for all on a trained
    MobileNetV3), and what the fine-tune wins back differs by kind: removing whole
    blocks leaves every other layer intact."""
    contenders: dict[Kind, Candidate] = {}
    for c in sorted((c for c in finalists if tier(c, goal) == 0), key=lambda c: c.error):
        contenders.setdefault(c.kind, c)
    if len(contenders) < 2:
        return chosen
    for c in contenders.values():
        if cancel():
            raise JobCancelled()
        c.recovered = recover(c.module)
    return min(contenders.values(), key=lambda c: c.recovered or 0.0)


def polish(f: Finish, chosen: Candidate) -> Candidate:
    """The chosen candidate timed afresh, and its family corrected once more towards the
    aim when the fresh reading is more than _POLISH off it; the nearer of the two wins.

    Both are then timed afresh side by side: a correction that reads nearer only by one
    run's noise does not replace the chosen, and neither ratio is one that chose it."""
    confirm([chosen], f.runtime)
    if chosen.family is None or abs(chosen.ratio - f.aim) <= _POLISH * f.goal:
        return chosen
    tried = [(chosen.knob, chosen.ratio)]
    refined, _ = search_family(
        f.module,
        chosen.family,
        f.aim,
        f"{chosen.label}, corrected",
        chosen.kind,
        f.runtime,
        f.cancel,
        next_fraction(tried, f.aim),
        rounds=_POLISH_ROUNDS,
        tolerance=_POLISH * f.goal,
        tried=tried,
    )
    if refined is None or refined.knob == chosen.knob:
        return chosen
    earlier = chosen.confirmed
    confirm([refined, chosen], f.runtime)
    chosen.confirmed = earlier + chosen.confirmed  # both confirmations count alike
    measure_errors(f.module, [refined], f.samples)
    f.finalists.append(refined)
    return refined if abs(refined.ratio - f.aim) < abs(chosen.ratio - f.aim) else chosen


def settle(f: Finish, chosen: Candidate) -> Candidate:
    """The chosen candidate, timed afresh and polished; when it is still off target, the
    next finalist on target in the same order of preference (the lowest error after a
    short distillation where judged so, else choose's), at most _SETTLE_TRIES in all.
    None on target: the best of those timed afresh, by choose.

    Seen on mobilenet_v3_small at 64 px: the winner, with one residual block removed,
    read 0.49 of the original's time in its search and 0.43 afresh; that block alone
    saves more than half the time asked, so no correction of its family slows it."""
    settled: list[Candidate] = []
    candidate = chosen
    for _ in range(_SETTLE_TRIES):
        polished = polish(f, candidate)
        settled += [c for c in (candidate, polished) if all(c is not t for t in settled)]
        if tier(polished, f.goal) == 0:
            return polished
        rest = [c for c in f.finalists if tier(c, f.goal) == 0 and all(c is not t for t in settled)]
        if not rest:
            break
        judged = [c for c in rest if c.recovered is not None]
        candidate = (
            min(judged, key=lambda c: c.recovered or 0.0) if judged else choose(rest, f.goal)
        )
    return choose(settled, f.goal)


def confirm(candidates: Sequence[Candidate], runtime: LatencyRuntime) -> None:
    """Set each candidate's ratio to its mean over CONFIRM_RUNS fresh runs, all of them
    side by side with the original: none of the readings that chose it counts."""
    readings: dict[str, list[float]] = {c.label: [] for c in candidates}
    for _ in range(CONFIRM_RUNS):
        times = runtime.measure({c.label: c.module for c in candidates})
        for c in candidates:
            readings[c.label].append(times[c.label] / times["original"])
    for c in candidates:
        c.confirmed = readings[c.label]


def summary(
    finalists: list[Candidate], chosen: Candidate, goal: float, table: LayerLatencyTable
) -> str:
    listed = "; ".join(
        f"{c.label}: {1 - c.ratio:.1%} less time, output change {c.error:.3g}"
        + (
            f", error {c.recovered:.3g} after a short distillation"
            if c.recovered is not None
            else ""
        )
        + (" (chosen)" if c is chosen else "")
        for c in finalists
    )
    return (
        f"latency target {1 - goal:.1%} less time on {table.provider} ({table.threads} "
        f"threads): {listed}; {table.measured} layer shapes timed for the latency table"
    )
