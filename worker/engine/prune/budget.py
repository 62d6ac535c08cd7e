"""The strongest pruning whose measured drop stays inside an accuracy budget.

Strength is the target's fraction removed (0.9 = 90% fewer MACs). What matters at high
strengths is the compression factor 1 / (1 - strength): 90% → 95% doubles it. So the
search runs on log(compression), where the drop curve of a network is closer to smooth,
and it aims at the budget by interpolating the measured drops (kept 15% off the failing
end), halving the bracket instead when interpolation lands within 15% of the fitting end
(a cliff far above the budget would otherwise pin it there) or, before any pruned probe
has fitted, below the middle. The first probe is the strongest allowed; if that fits,
nothing else is tried.

Measured drops are noisy: on a few hundred held-back samples a probe fits or fails by a
sample or two. The true drop rises with compression, so the search judges every probe
by a monotone (isotonic) fit through all the drops measured so far rather than by its
own reading alone, and once the bracket is narrower than measurements can tell apart
(factors within 20%) it probes above the failing end instead of splitting hairs: if
that fits, the failure below it was noise and pools away. A lone failure otherwise caps
the search for good, and a method whose drop stays just inside the budget over a wide
range of compression (the better one) is the one that loses most to it.

The search is pure: `probe(strength)` prunes a copy, fine-tunes it briefly and measures
it; the caller decides how.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from scipy.optimize import isotonic_regression

# Keep each new probe at least this share of the bracket away from its ends.
_GUARD = 0.15
# Compression factors within this ratio of each other are not told apart by a held-back
# measurement; a bracket this narrow is re-tested above rather than split further.
_RESOLVED = math.log(1.2)


@dataclass(frozen=True)
class ProbeResult:
    strength: float  # the target value probed: the fraction removed
    score: float  # accuracy (with labels) or agreement, after the probe's short fine-tune
    macs: int
    params: int
    accuracy: float | None = None
    agreement: float | None = None
    # The fraction the probe actually removed: short of `strength` when the model holds
    # layers back (protected layers, max_layer_ratio); None when not measured.
    reached: float | None = None


@dataclass
class BudgetSearch:
    chosen: float | None  # the strongest probed strength whose drop fitted; None: none did
    probes: list[ProbeResult] = field(default_factory=list)
    fitted: list[float] = field(default_factory=list)  # each probe's drop, monotone fit


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


def monotone_drops(points: list[tuple[float, float]]) -> list[float]:
    """The drops of (log compression, drop) points fitted non-decreasing in compression
    (isotonic regression), in the points' order. Where a stronger probe dropped less than
    a milder one, both get their mean: one of the two readings was noise. Equal
    compressions pool whatever their order."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    fit = isotonic_regression([points[i][1] for i in order]).x
    fitted = [0.0] * len(points)
    for rank, i in enumerate(order):
        fitted[i] = float(fit[rank])
    return fitted


def _bracket(
    points: list[tuple[float, float]], fitted: list[float], max_drop: float
) -> tuple[tuple[float, float], tuple[float, float] | None]:
    """(strongest fitting, mildest failing) as (x, fitted drop); the unpruned model
    (0, 0) when nothing fits, None when nothing fails."""
    fits = [(x, f) for (x, _), f in zip(points, fitted, strict=True) if f <= max_drop]
    fails = [(x, f) for (x, _), f in zip(points, fitted, strict=True) if f > max_drop]
    return max(fits, default=(0.0, 0.0)), min(fails, default=None)


def _next_probe(
    points: list[tuple[float, float]],
    low: tuple[float, float],
    high: tuple[float, float],
    max_drop: float,
    top: float,
) -> float | None:
    """Inside the bracket while it is wider than measurements resolve; else just above
    its failing end (at most `top`), unless that was probed already (None: nothing left
    to learn)."""
    if high[0] - low[0] >= _RESOLVED:
        return _next_x(low, high, max_drop)
    retest = min(high[0] + _RESOLVED, top)
    if any(abs(x - retest) < _RESOLVED / 2 for x, _ in points):
        return None
    return retest


def search_strength(
    probe: Callable[[float], ProbeResult],
    *,
    reference: float,
    max_drop: float,
    upper: float,
    probes: int = 6,
) -> BudgetSearch:
    """Probe up to `probes` strengths in (0, upper]; the drop is `reference - score`.

    The chosen strength is the strongest probe whose drop fits by the monotone fit. Its
    own drop fits too: the last probe of a pooled run is never above the run's mean."""
    result = BudgetSearch(chosen=None)
    points: list[tuple[float, float]] = []  # (log compression, measured drop)
    top = _log_compression(upper)
    x: float | None = top
    while x is not None and len(points) < probes:
        found = probe(_strength(x))
        result.probes.append(found)
        points.append((x, reference - found.score))
        result.fitted = monotone_drops(points)
        low, high = _bracket(points, result.fitted, max_drop)
        x = None if high is None else _next_probe(points, low, high, max_drop, top)
    strongest = max(
        (p for p, f in zip(result.probes, result.fitted, strict=True) if f <= max_drop),
        key=lambda p: p.strength,
        default=None,
    )
    result.chosen = strongest.strength if strongest is not None else None
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
