"""The strongest pruning whose measured drop stays inside an accuracy budget.

Strength is the target's fraction removed (0.9 = 90% fewer MACs). What matters at high
strengths is the compression factor 1 / (1 - strength): 90% → 95% doubles it. So the
search runs on log(compression), where the drop curve of a network is closer to smooth,
and it aims at the budget by interpolating the measured drops (kept 15% off the failing
end), halving the bracket instead when interpolation lands within 15% of the fitting end
(a cliff far above the budget would otherwise pin it there) or, before any pruned probe
has fitted, below the middle. The first probe is the strongest allowed; if that fits,
nothing else is tried.

The search is pure: `probe(strength)` prunes a copy, fine-tunes it briefly and measures
it; the caller decides how.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field

# Keep each new probe at least this share of the bracket away from its ends.
_GUARD = 0.15


@dataclass(frozen=True)
class ProbeResult:
    strength: float  # the target value probed: the fraction removed
    score: float  # accuracy (with labels) or agreement, after the probe's short fine-tune
    macs: int
    params: int
    accuracy: float | None = None
    agreement: float | None = None


@dataclass
class BudgetSearch:
    chosen: float | None  # the strongest probed strength whose drop fitted; None: none did
    probes: list[ProbeResult] = field(default_factory=list)


def _log_compression(strength: float) -> float:
    return -math.log(max(1.0 - strength, 1e-9))


def _strength(x: float) -> float:
    return 1.0 - math.exp(-x)


def _next_x(low: tuple[float, float], high: tuple[float, float], max_drop: float) -> float:
    """Where the drop is expected to reach the budget, between a fitting and a failing
    probe, kept off the failing end; the middle when it lands near the fitting end (a
    cliff: the failing probe's drop is far above the budget, and interpolation would
    creep up from the fitting end).

    While the fitting end is still the unpruned model, never below the middle: drop
    curves are flat and then steep in log(compression), so a straight line from the
    origin lands far short (on digits, 50x failing by 4.5 points with a 1-point budget
    aimed at 2.4x, a probe wasted on a factor the search had already passed)."""
    (x_lo, d_lo), (x_hi, d_hi) = low, high
    width = x_hi - x_lo
    middle = (x_lo + x_hi) / 2
    guess = x_lo + (max_drop - d_lo) * width / max(d_hi - d_lo, 1e-12)
    if x_lo == 0.0:
        guess = max(guess, middle)
    if guess < x_lo + _GUARD * width:
        return middle
    return min(guess, x_hi - _GUARD * width)


def search_strength(
    probe: Callable[[float], ProbeResult],
    *,
    reference: float,
    max_drop: float,
    upper: float,
    probes: int = 6,
) -> BudgetSearch:
    """Probe up to `probes` strengths in (0, upper]; the drop is `reference - score`."""
    result = BudgetSearch(chosen=None)
    low = (0.0, 0.0)  # unpruned: no drop, by definition
    high: tuple[float, float] | None = None
    x = _log_compression(upper)
    for _ in range(probes):
        found = probe(_strength(x))
        result.probes.append(found)
        drop = reference - found.score
        if drop <= max_drop:
            if result.chosen is None or found.strength > result.chosen:
                result.chosen = found.strength
            low = max(low, (x, drop))
            if high is None:
                break  # the strongest allowed fits
        else:
            high = (x, drop) if high is None or x < high[0] else high
        if high is None or high[0] - low[0] < 1e-3:
            break
        x = _next_x(low, high, max_drop)
    return result


def sampling_warning(score: float, samples: int, max_drop: float) -> str | None:
    """A warning when the held-back part is too small to tell drops near the budget apart:
    the binomial standard error of an accuracy near `score` on `samples` is over half the
    budget. Then a probe fits or fails by a sample or two, and the chosen strength moves by
    a large factor from one split to the next (seen on 287 digits: 0.5x to 3x)."""
    if samples <= 0:
        return None
    error = math.sqrt(max(score * (1.0 - score), 0.0) / samples)
    if error <= max_drop / 2:
        return None
    return (
        f"accuracy budget: measured on {samples} held-back samples, one sample is "
        f"{1 / samples:.4f} of accuracy and the standard error near {score:.3f} is "
        f"{error:.4f}, more than half the budget ({max_drop:.3f}): a probe near the budget "
        "fits or fails by chance; more labelled samples make the search sharper"
    )
