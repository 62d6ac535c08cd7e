"""The report's warnings: what in a finished job's result a reader must not miss.

Notes say how the job ran; a warning says the result may not be what was asked for: it
lost more accuracy than allowed, disagrees with the original, runs slower than it, or
missed its latency band. Each is judged from the report's own measurements, and a
slowdown only where it is beyond the timing's own spread, so that noise raises none.
"""

import math
from typing import Literal

from contract import Fidelity, JobSpec, Percentiles, Summary
from contract.report import LatencyTable, ReportWarning

CPU = "CPUExecutionProvider"

# Without an accuracy budget, a held-back accuracy this much lower (absolute) is flagged.
ACCURACY_DROP = 0.02
# Without a budget, agreement (top-1, else output cosine) below this is flagged.
LOW_AGREEMENT = 0.9
# Below this the pruned model disagrees with the original on most inputs.
MOST_INPUTS = 0.5
# A pruned model is called slower only when its p50 is at least this much above the
# original's: interleaved runs of the same pair agree within about 1% from one run to the
# next, so smaller gaps are the machine, not the model.
SLOWER = 1.02
# ... and above it by more than this many standard errors of the difference of medians.
NOISE_SIGMAS = 2.0
# A latency target is met when the measured time is within this fraction of the target
# time either way: latency_search's LATENCY_SLACK and OVERSHOOT.
LATENCY_BAND = 0.05
# The p90 of a normal distribution is this many standard deviations above its median,
# and the median's standard error is this factor times sigma / sqrt(n).
_P90_SIGMAS = 1.2816
_MEDIAN_SE = 1.2533


def warn(
    code: str, message: str, severity: Literal["warning", "critical"] = "warning"
) -> ReportWarning:
    return ReportWarning(code=code, message=message, severity=severity)


def timed_pair(
    original: LatencyTable, pruned: LatencyTable
) -> tuple[str, str, Percentiles, Percentiles] | None:
    """(provider, batch, original's, pruned's percentiles) that the speed-up is read from:
    the CPU provider, else the first timed on both; batch 1, else the smallest."""
    providers = [p for p in original if p in pruned]
    if not providers:
        return None
    provider = CPU if CPU in providers else providers[0]
    batches = [b for b in original[provider] if b in pruned[provider]]
    if not batches:
        return None
    batch = "1" if "1" in batches else min(batches, key=int)
    return provider, batch, original[provider][batch], pruned[provider][batch]


def median_error(p: Percentiles) -> float:
    """Standard error of a p50 in ms, from its p90's distance to it and the number of runs
    (latency is skewed to the slow side, so this overstates it: the safe side); 0 when
    the number of runs is unknown."""
    if not p.samples or p.samples < 2:
        return 0.0
    sigma = max(p.p90 - p.p50, 0.0) / _P90_SIGMAS
    return _MEDIAN_SE * sigma / math.sqrt(p.samples)


def slowdown(original: Summary, pruned: Summary) -> tuple[float, str] | None:
    """(times slower, what was compared) when the pruned model's p50 is above the
    original's by more than SLOWER and more than NOISE_SIGMAS standard errors; else None."""
    pair = timed_pair(original.latency_ms, pruned.latency_ms)
    if pair is None:
        return None
    provider, batch, before, after = pair
    if before.p50 <= 0 or after.p50 < before.p50 * SLOWER:
        return None
    spread = NOISE_SIGMAS * math.hypot(median_error(before), median_error(after))
    if after.p50 - before.p50 <= spread:
        return None
    where = f"p50 {after.p50:.3g} ms against {before.p50:.3g} ms ({provider}, batch {batch}"
    where += f"; timing spread ±{spread:.2g} ms)" if spread else ")"
    return after.p50 / before.p50, where


def slower_warning(spec: JobSpec, original: Summary, pruned: Summary) -> list[ReportWarning]:
    if spec.prune.method == "unstructured_l1":
        return []  # a note says it gives no speed-up; it is timed as the dense model it is
    found = slowdown(original, pruned)
    if found is None:
        return []
    times, where = found
    advice = ""
    if spec.prune.round_to is not None and spec.prune.round_to < 8:
        advice = "; widths in multiples of 8 or 16 (round_to) usually run faster"
    return [
        warn(
            "slower_than_original",
            f"the pruned model measured {times:.2f}x slower than the original on this "
            f"machine: {where}{advice}",
            "critical",
        )
    ]


def latency_warning(spec: JobSpec, speedup: float | None) -> list[ReportWarning]:
    """A latency target whose final benchmark lands outside its band."""
    target = spec.prune.target
    if target.kind != "latency_reduction" or not speedup:
        return []
    wanted = 1.0 - target.value  # the pruned model's time as a fraction of the original's
    measured = 1.0 / speedup
    off = measured / wanted - 1.0
    if abs(off) <= LATENCY_BAND:
        return []
    side = "over" if off > 0 else "under"
    return [
        warn(
            "latency_target_missed",
            f"latency target {target.value:.0%} less time: the final benchmark measured "
            f"{1.0 - measured:.1%} less, {abs(off):.1%} {side} the target time (band "
            f"±{LATENCY_BAND:.0%})",
        )
    ]


def quality_warnings(
    spec: JobSpec,
    original: Summary,
    pruned: Summary,
    fidelity: Fidelity,
    *,
    data_free: bool,
    synthetic: bool,
) -> list[ReportWarning]:
    """Held-back accuracy lost beyond the budget (or ACCURACY_DROP); without labels, agreement
    with the original below 1 - budget (or LOW_AGREEMENT), measured on `synthetic` inputs
    or on held-back samples."""
    budget = spec.accuracy_budget
    if original.accuracy is not None and pruned.accuracy is not None:
        limit = budget.max_drop if budget is not None else ACCURACY_DROP
        drop = original.accuracy - pruned.accuracy
        if drop <= limit:
            return []
        allowed = "the accuracy budget" if budget is not None else "the warning threshold"
        return [
            warn(
                "accuracy_drop",
                f"held-back accuracy fell by {drop:.1%} ({original.accuracy:.1%} to "
                f"{pruned.accuracy:.1%}), more than {allowed} of {limit:.1%}",
            )
        ]
    return agreement_warnings(spec, fidelity, data_free=data_free, synthetic=synthetic)


def agreement_warnings(
    spec: JobSpec, fidelity: Fidelity, *, data_free: bool, synthetic: bool
) -> list[ReportWarning]:
    """Agreement below 1 - budget (or LOW_AGREEMENT); data-free, below half: critical."""
    top1 = fidelity.top1_agreement
    agreement, measure = (top1, "top-1") if top1 is not None else (fidelity.cosine, "cosine")
    inputs = "synthetic inputs" if synthetic else "held-back samples"
    if data_free and agreement < MOST_INPUTS:
        return [
            warn(
                "data_free_disagrees",
                f"pruned without data, the model agrees with the original on {agreement:.1%} "
                f"({measure}) of {inputs}: it needs fine-tuning on data (submit with a "
                "dataset) before it can replace the original",
                "critical",
            )
        ]
    budget = spec.accuracy_budget
    floor = 1.0 - budget.max_drop if budget is not None else LOW_AGREEMENT
    if agreement >= floor:
        return []
    return [
        warn(
            "low_agreement",
            f"the pruned model agrees with the original on {agreement:.1%} ({measure}) of "
            f"{inputs}, below {floor:.1%}",
            "critical" if agreement < MOST_INPUTS else "warning",
        )
    ]


def derive_warnings(
    spec: JobSpec,
    original: Summary,
    pruned: Summary,
    fidelity: Fidelity,
    *,
    speedup: float | None,
    data_free: bool,
    synthetic: bool | None = None,
) -> list[ReportWarning]:
    """Every warning the report's own figures call for. `synthetic`: agreement was measured
    on synthetic inputs (default: when data-free; also a multi-input model with data)."""
    synthetic = data_free if synthetic is None else synthetic
    return [
        *quality_warnings(
            spec, original, pruned, fidelity, data_free=data_free, synthetic=synthetic
        ),
        *slower_warning(spec, original, pruned),
        *latency_warning(spec, speedup),
    ]


def unique(warnings: list[ReportWarning]) -> list[ReportWarning]:
    """Without repeats (the same code and message), in order."""
    return list({(w.code, w.message): w for w in warnings}.values())
