"""The accuracy-budget search on made-up drop curves: what it probes and what it keeps."""

import math
import random

import pytest

from worker.engine.prune.budget import (
    ProbeResult,
    monotone_drops,
    sampling_warning,
    search_strength,
)


def _probe_with(drop_of, tried: list[float]):
    def probe(strength: float) -> ProbeResult:
        tried.append(strength)
        return ProbeResult(strength=strength, score=1.0 - drop_of(strength), macs=1, params=1)

    return probe


def test_strongest_allowed_fits_so_one_probe() -> None:
    tried: list[float] = []
    found = search_strength(
        _probe_with(lambda s: 0.0, tried), reference=1.0, max_drop=0.01, upper=0.9
    )
    assert tried == [pytest.approx(0.9)]
    assert found.chosen == pytest.approx(0.9)


def test_linear_drop_settles_just_inside_the_budget() -> None:
    tried: list[float] = []
    found = search_strength(
        _probe_with(lambda s: s, tried), reference=1.0, max_drop=0.35, upper=0.8, probes=6
    )
    assert found.chosen is not None
    assert 0.3 <= found.chosen <= 0.35
    assert tried[0] == pytest.approx(0.8)
    assert len(tried) <= 6
    assert all(0 < s <= 0.8 + 1e-9 for s in tried)


def test_chosen_is_the_strongest_probe_that_fitted_even_when_drops_are_noisy() -> None:
    sequence = [0.5, 0.005, 0.3, 0.02, 0.001, 0.2]
    drops = iter(sequence)
    tried: list[float] = []
    found = search_strength(
        _probe_with(lambda s: next(drops), tried), reference=0.9, max_drop=0.01, upper=0.95
    )
    fitted = [s for s, d in zip(tried, sequence, strict=False) if d <= 0.01]
    assert found.chosen == max(fitted)


def test_nothing_fits() -> None:
    found = search_strength(
        _probe_with(lambda s: 1.0, []), reference=1.0, max_drop=0.01, upper=0.5, probes=3
    )
    assert found.chosen is None
    assert len(found.probes) == 3


def test_searches_compression_not_strength() -> None:
    """A cliff at 12x compression, 50x allowed: halving the strength (0.98 -> 0.49 -> ...)
    would stay below 2x; searching log(compression) gets within a factor of 1.5 of the cliff."""
    cliff = 1 - 1 / 12

    found = search_strength(
        _probe_with(lambda s: 0.0 if s < cliff else 0.5, []),
        reference=1.0,
        max_drop=0.01,
        upper=0.98,
        probes=6,
    )
    assert found.chosen is not None
    compression = 1 / (1 - found.chosen)
    assert 12 / 1.5 <= compression < 12
    assert math.isclose(found.probes[0].strength, 0.98)


def test_a_cliff_far_above_the_budget_does_not_pin_the_search_low() -> None:
    """The strongest probe breaks the model (90 points down); plain interpolation would
    creep up from the unpruned end by a sixth of the bracket per probe."""
    cliff = 1 - 1 / 12
    found = search_strength(
        _probe_with(lambda s: 0.0 if s < cliff else 0.9, []),
        reference=1.0,
        max_drop=0.01,
        upper=0.98,
        probes=6,
    )
    assert found.chosen is not None
    # Creeping by the guard ends at 8.8x in six probes; halving reaches past 10x.
    assert 1 / (1 - found.chosen) >= 10


def test_a_convex_curve_is_not_probed_near_the_origin_after_the_first_failure() -> None:
    """Flat, then steep in log(compression), as pruned networks are: 50x drops 4.5 points
    with a 1-point budget. A straight line from the unpruned model would aim at 2.4x,
    below what is known to fit; the second probe goes no lower than the middle (7x)."""
    tried: list[float] = []
    found = search_strength(
        _probe_with(lambda s: 0.045 * (math.log(1 / (1 - s)) / math.log(50)) ** 4, tried),
        reference=1.0,
        max_drop=0.01,
        upper=1 - 1 / 50,
        probes=6,
    )
    assert 1 / (1 - tried[1]) >= 7 - 1e-6
    assert found.chosen is not None
    # Where the curve meets the budget: 50 ** ((1 / 4.5) ** (1 / 4)) = 14.7x.
    assert 12 <= 1 / (1 - found.chosen) < 14.7


def _convex(s: float) -> float:
    """4.5 points down at 50x, flat and then steep in log(compression): 1 point at 14.7x."""
    return 0.045 * (math.log(1 / (1 - s)) / math.log(50)) ** 4


def test_a_failure_by_noise_is_retested_above_and_pooled_away() -> None:
    """Between 9x and 10.5x every probe reads a sample over the budget, though the curve
    stays inside it up to 14.7x. Splitting the bracket ended at 9.0x (probes at 9.9, 9.4,
    9.0 and 9.3x); once the bracket is narrower than a 20% step, the search probes above
    it instead, and the monotone fit pools the noisy failures with the fit above them."""

    def drop(s: float) -> float:
        return 0.0105 if 9 <= 1 / (1 - s) <= 10.5 else _convex(s)

    tried: list[float] = []
    found = search_strength(
        _probe_with(drop, tried), reference=1.0, max_drop=0.01, upper=0.98, probes=6
    )
    assert found.chosen is not None
    assert 1 / (1 - found.chosen) >= 11
    assert drop(found.chosen) <= 0.01
    # The pooled failures are judged fitting too: every probe up to the chosen one fits.
    assert all(
        f <= 0.01
        for p, f in zip(found.probes, found.fitted, strict=True)
        if p.strength <= found.chosen
    )


def test_a_lucky_reading_above_a_clear_failure_does_not_win() -> None:
    """2 points down at 9-11x, then 0.9 points at 11x and beyond (a reading a few samples
    lucky): pooled with the failure below it, the re-test fails as well."""

    def drop(s: float) -> float:
        factor = 1 / (1 - s)
        if factor >= 40:
            return 0.045
        return 0.003 if factor < 9 else 0.02 if factor < 11 else 0.009

    tried: list[float] = []
    found = search_strength(
        _probe_with(drop, tried), reference=1.0, max_drop=0.01, upper=0.98, probes=6
    )
    assert any(1 / (1 - s) >= 11 for s in tried[1:])  # the re-test above the failure
    assert found.chosen is not None
    assert 1 / (1 - found.chosen) < 9


def _noisy_convex(rng: random.Random):
    readings: dict[float, float] = {}

    def drop(s: float) -> float:
        # One reading per strength: the same probe measured on the same samples.
        return readings.setdefault(s, max(0.0, _convex(s) + rng.gauss(0, 0.006)))

    return drop


def test_the_chosen_probe_fits_on_its_own_reading_whatever_the_noise() -> None:
    rng = random.Random(0)
    for _ in range(200):
        drop = _noisy_convex(rng)
        found = search_strength(
            _probe_with(drop, []), reference=1.0, max_drop=0.01, upper=0.98, probes=6
        )
        fitted = dict(zip((p.strength for p in found.probes), found.fitted, strict=True))
        by_strength = [fitted[s] for s in sorted(fitted)]
        assert by_strength == sorted(by_strength)
        if found.chosen is not None:
            assert drop(found.chosen) <= 0.01
            assert all(f > 0.01 for s, f in fitted.items() if s > found.chosen)


def test_monotone_drops_pool_a_stronger_probe_that_dropped_less() -> None:
    # (log compression, drop), in probing order: 50x, 7x, 10x, 12x (12x read lucky).
    points = [(3.91, 0.045), (1.95, 0.003), (2.30, 0.0105), (2.48, 0.0065)]
    assert monotone_drops(points) == pytest.approx([0.045, 0.003, 0.0085, 0.0085])
    # The same strength probed twice: one drop for both, whatever the order.
    assert monotone_drops([(2.0, 0.004), (2.0, 0.012)]) == pytest.approx([0.008, 0.008])


def test_a_held_back_part_too_small_for_the_budget_is_called_out() -> None:
    # 287 samples near 99%: a standard error of 0.0059, over half a 0.01 budget.
    warning = sampling_warning(0.99, 287, 0.01)
    assert warning is not None and "287 held-back samples" in warning
    # Ten times the samples, or a budget five times as wide: the drops are resolved.
    assert sampling_warning(0.99, 2870, 0.01) is None
    assert sampling_warning(0.99, 287, 0.05) is None
