"""The accuracy-budget search on made-up drop curves: what it probes and what it keeps."""

import math

import pytest

from worker.engine.budget import ProbeResult, sampling_warning, search_strength


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


def test_a_held_back_part_too_small_for_the_budget_is_called_out() -> None:
    # 287 samples near 99%: a standard error of 0.0059, over half a 0.01 budget.
    warning = sampling_warning(0.99, 287, 0.01)
    assert warning is not None and "287 held-back samples" in warning
    # Ten times the samples, or a budget five times as wide: the drops are resolved.
    assert sampling_warning(0.99, 2870, 0.01) is None
    assert sampling_warning(0.99, 287, 0.05) is None
