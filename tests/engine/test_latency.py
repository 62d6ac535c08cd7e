"""The per-layer latency table and the latency-target search, on tiny networks.

Timings on a shared machine are noisy, so only the table's plain measurements use the
clock (with a 64x difference in work); the search is tested against a made-up runtime.
"""

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from contract import PruneSpec, Target
from tests.engine.tiny_nets import TinyMobileNet, TinyResNet, seeded
from worker.engine.measure import latency
from worker.engine.measure.latency import LayerLatencyTable, LayerShape, layer_shape
from worker.engine.measure.stats import count_macs
from worker.engine.prune.latency_candidates import (
    CONFIRM_RUNS,
    LATENCY_SLACK,
    Candidate,
    Finish,
    Kind,
    LatencyRuntime,
    choose,
    next_fraction,
    polish,
    reaim,
    recovered_choice,
    settle,
    worth_reaiming,
)
from worker.engine.prune.to_target import prune_model

X = torch.randn(1, 3, 32, 32)
CONV = LayerShape("conv", 64, 64, (32, 32), (3, 3), (1, 1), (1, 1), (1, 1))


def _work_ms(shape: LayerShape, in_ch: int, out_ch: int) -> float:
    """A deterministic stand-in for the clock: time proportional to the layer's MACs."""
    kernel = 1
    for k in shape.kernel:
        kernel *= k
    per_out = 1 if shape.depthwise else in_ch
    return out_ch * per_out * kernel * (shape.spatial[0] if shape.spatial else 1) * 1e-4


def test_a_wide_conv_measures_slower_than_a_narrow_one() -> None:
    table = LayerLatencyTable()
    assert table.point_ms(CONV, 64, 64) > 4 * table.point_ms(CONV, 8, 8)
    assert table.measured == 2


def test_widths_between_grid_points_are_interpolated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(LayerLatencyTable, "_time", lambda self, s, i, o: float(i * o))
    table = LayerLatencyTable()
    # Bilinear interpolation of in x out is exact.
    assert table.layer_ms(CONV, 40, 50) == pytest.approx(2000.0)
    assert table.layer_ms(CONV, 64, 64) == pytest.approx(4096.0)
    # Only grid points were timed, however many widths were asked about.
    assert table.measured <= len(latency._grid(64)) ** 2


def test_depthwise_layers_depend_on_one_width(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(LayerLatencyTable, "_time", lambda self, s, i, o: float(i))
    dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
    shape = layer_shape(dw, (1, 32, 16, 16))
    assert shape is not None and shape.depthwise
    table = LayerLatencyTable()
    assert table.layer_ms(shape, 16, 16) == pytest.approx(16.0)


def test_grouped_convs_are_timed_at_widths_their_groups_divide(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pruning keeps a grouped conv's group count and shrinks every group alike, so only
    widths that are multiples of the groups exist, and only those are built and timed."""
    timed: list[tuple[int, int]] = []

    def fake(self, shape, in_ch, out_ch):
        model = latency._conv_graph(shape, in_ch, out_ch)  # must be a valid grouped conv
        group = next(a.i for a in model.graph.node[0].attribute if a.name == "group")
        assert group == 6
        timed.append((in_ch, out_ch))
        return float(in_ch * out_ch)

    monkeypatch.setattr(LayerLatencyTable, "_time", fake)
    shape = layer_shape(nn.Conv2d(48, 48, 3, padding=1, groups=6), (1, 48, 16, 16))
    assert shape is not None and not shape.depthwise and shape.groups == 6
    table = LayerLatencyTable()
    assert table.layer_ms(shape, 48, 48) == pytest.approx(48.0 * 48.0)
    assert table.layer_ms(shape, 24, 24) < table.layer_ms(shape, 36, 36)
    assert timed and all(i % 6 == 0 and o % 6 == 0 for i, o in timed)
    assert "g6" in shape.key(48, 48)


def test_the_cache_file_keeps_measurements_between_tables(tmp_path: Path) -> None:
    first = LayerLatencyTable(cache_dir=tmp_path)
    first.point_ms(CONV, 16, 16)
    first.save()
    [cache] = list(tmp_path.glob("latency-*CPUExecutionProvider*.json"))
    assert len(json.loads(cache.read_text())) == 1
    second = LayerLatencyTable(cache_dir=tmp_path)
    assert second.point_ms(CONV, 16, 16) == first.point_ms(CONV, 16, 16)
    assert second.measured == 0
    cache.write_text("{not json")
    assert LayerLatencyTable(cache_dir=tmp_path).point_ms(CONV, 16, 16) > 0  # re-measured


def _candidate(label: str, ratio: float, error: float, kind: Kind = "channels") -> Candidate:
    return Candidate(label, kind, lambda module: None, nn.Identity(), [ratio], error)


def _finish(finalists: list[Candidate], aim: float, probe: LatencyRuntime) -> Finish:
    """The steps after the family searches, for a 0.5 target on a stand-in model."""
    return Finish(nn.Identity(), finalists, aim, 0.5, probe, (torch.ones(1, 3),), lambda: False)


def test_choice_prefers_the_band_around_the_target_then_the_closest_outputs() -> None:
    goal = 0.5
    picks = [
        _candidate("misses", goal * (1 + LATENCY_SLACK) + 1e-6, 0.1),
        _candidate("under, outputs further off", 0.49, 3.0),
        _candidate("under, closer outputs", 0.48, 2.5),
        _candidate("over, within the band", goal * (1 + LATENCY_SLACK) - 1e-6, 2.0),
    ]
    # Within 5% either way is on target; the band's edge is then corrected (_polish).
    assert choose(picks, goal).label == "over, within the band"
    assert choose(picks[:3], goal).label == "under, closer outputs"


def test_choice_prefers_a_hair_over_the_target_to_far_faster_than_asked() -> None:
    # The latency-priced candidates re-timed just over a 50% target; plain pruning had
    # overshot to 80% less time. On target wins, the closest outputs first.
    goal = 0.5
    picks = [
        _candidate("over-pruned", 0.2, 0.9),
        _candidate("a hair over", 0.501, 1.1),
        _candidate("a bit more over", 0.51, 1.0),
    ]
    assert choose(picks, goal).label == "a bit more over"
    # Far faster still beats missing the target.
    assert choose([picks[0], _candidate("misses", 0.6, 0.1)], goal).label == "over-pruned"


def test_choice_never_returns_a_dominated_candidate() -> None:
    # Both meet the target; "simple" is faster and closer to the original: it must win.
    picks = [_candidate("fancy", 0.5, 2.0), _candidate("simple", 0.48, 1.5)]
    assert choose(picks, 0.5).label == "simple"
    # Nothing meets the target: the fastest is returned.
    assert choose([_candidate("a", 0.8, 1.0), _candidate("b", 0.7, 5.0)], 0.5).label == "b"


def test_a_far_faster_candidate_with_closer_outputs_gets_its_family_re_aimed() -> None:
    family = lambda knob: (lambda module: None, True)  # noqa: E731
    on_target = _candidate("on target", 0.49, 2.0)
    better_way = Candidate(
        "better way", "channels", lambda m: None, nn.Identity(), [0.4], 1.5, family, 0.5
    )
    worse_way = Candidate(
        "worse way", "channels", lambda m: None, nn.Identity(), [0.3], 2.5, family, 0.4
    )
    finalists = [on_target, better_way, worse_way]
    assert choose(finalists, 0.5) is on_target
    assert worth_reaiming(finalists, on_target, 0.5) is better_way
    # Outputs no closer than the chosen one's: nothing to re-aim.
    assert worth_reaiming([on_target, worse_way], on_target, 0.5) is None
    # Nothing nearer the target was found: the far faster winner is re-aimed itself.
    assert worth_reaiming([worse_way], worse_way, 0.5) is worse_way


def test_re_aiming_prunes_less_and_lands_on_target() -> None:
    """A family whose measured ratio equals its knob; its candidate overshot to 0.3."""
    knobs: list[float] = []

    def family(knob: float):
        knobs.append(knob)
        return (lambda module: setattr(module, "knob", knob)), True

    def measure(candidates: dict[str, nn.Module]) -> dict[str, float]:
        return {"original": 1.0, **{k: m.knob for k, m in candidates.items()}}

    overshot = Candidate("plain", "plain", lambda m: None, nn.Identity(), [0.3], 0.5, family, 0.3)
    on_target = _candidate("on target", 0.49, 2.0)
    probe = LatencyRuntime(table=LayerLatencyTable(), measure=measure)
    finish = _finish([on_target, overshot], 0.485, probe)
    chosen = reaim(finish, overshot, on_target)
    assert knobs == [pytest.approx(0.485)]  # one proportional correction sufficed
    assert chosen.label == "plain, re-aimed" and chosen.ratio == pytest.approx(0.485)


def test_a_winner_at_the_edge_of_the_band_is_corrected_towards_the_aim() -> None:
    """Its family's measured ratio is its knob; it won at 0.476 for a 0.495 aim, where
    the next run's few percent of noise takes it out of a 0.475..0.525 band."""
    knobs: list[float] = []

    def family(knob: float):
        knobs.append(knob)
        return (lambda module: setattr(module, "knob", knob)), True

    def measure(candidates: dict[str, nn.Module]) -> dict[str, float]:
        return {"original": 1.0, **{k: getattr(m, "knob", 0.476) for k, m in candidates.items()}}

    edge = Candidate("edge", "channels", lambda m: None, nn.Identity(), [0.476], 0.5, family, 0.476)
    finalists = [edge]
    probe = LatencyRuntime(table=LayerLatencyTable(), measure=measure)
    chosen = polish(_finish(finalists, 0.495, probe), edge)
    assert knobs == [pytest.approx(0.495)]
    assert chosen.label == "edge, corrected" and chosen.ratio == pytest.approx(0.495)
    assert finalists[-1] is chosen
    # Already near the aim, also when timed afresh: nothing is built.
    near_module = nn.Identity()
    near_module.knob = 0.492
    near = Candidate("near", "channels", lambda m: None, near_module, [0.492], 0.5, family, 0.492)
    assert polish(_finish([near], 0.495, probe), near) is near and len(knobs) == 1


def test_a_winner_chosen_on_a_lucky_reading_is_timed_afresh_and_corrected() -> None:
    """The winner read 0.495, on the aim, while the search chose it; timed afresh it runs
    at 0.54 of the original's time. Its family's true ratio is its knob x 0.54 / 0.495."""
    bias = 0.54 / 0.495
    runs: list[list[str]] = []

    def family(knob: float):
        return (lambda module: setattr(module, "true", knob * bias)), True

    def measure(candidates: dict[str, nn.Module]) -> dict[str, float]:
        runs.append(sorted(candidates))
        return {"original": 1.0, **{k: m.true for k, m in candidates.items()}}

    lucky_module = nn.Identity()
    lucky_module.true = 0.54
    lucky = Candidate(
        "lucky", "channels", lambda m: None, lucky_module, [0.495], 0.5, family, 0.495
    )
    probe = LatencyRuntime(table=LayerLatencyTable(), measure=measure)
    finalists = [lucky]
    chosen = polish(_finish(finalists, 0.495, probe), lucky)
    assert runs[:CONFIRM_RUNS] == [["lucky"]] * CONFIRM_RUNS  # afresh, before anything else
    assert lucky.ratio == pytest.approx(0.54)  # the lucky reading no longer counts
    assert chosen.label == "lucky, corrected" and chosen.ratio == pytest.approx(0.495)
    assert runs[-CONFIRM_RUNS:] == [["lucky", "lucky, corrected"]] * CONFIRM_RUNS


def test_a_correction_that_lands_no_nearer_keeps_the_winner() -> None:
    """The family reads 0.45 whatever its knob: the correction is not nearer the aim."""

    def family(knob: float):
        return (lambda module: setattr(module, "knob", knob)), True

    def measure(candidates: dict[str, nn.Module]) -> dict[str, float]:
        return {"original": 1.0, **{k: 0.476 if k == "edge" else 0.45 for k in candidates}}

    edge = Candidate("edge", "channels", lambda m: None, nn.Identity(), [0.476], 0.5, family, 0.476)
    probe = LatencyRuntime(table=LayerLatencyTable(), measure=measure)
    chosen = polish(_finish([edge], 0.495, probe), edge)
    assert chosen is edge and chosen.ratio == pytest.approx(0.476)


def test_a_winner_off_target_when_timed_afresh_gives_way_to_the_next_finalist() -> None:
    """The winner removed a block that alone saves more than asked: it read 0.495 while
    chosen, runs at 0.43 whatever its knob, and no correction brings it back."""

    def stuck(knob: float):
        return (lambda module: setattr(module, "true", 0.43)), False

    def measure(candidates: dict[str, nn.Module]) -> dict[str, float]:
        return {"original": 1.0, **{k: m.true for k, m in candidates.items()}}

    def module_at(true: float) -> nn.Module:
        module = nn.Identity()
        module.true = true
        return module

    blocks = Candidate(
        "blocks", "blocks", lambda m: None, module_at(0.43), [0.495], 0.5, stuck, 0.9
    )
    blocks.recovered = 0.1
    channels = Candidate("channels", "channels", lambda m: None, module_at(0.497), [0.5], 0.9)
    plain = Candidate("plain", "plain", lambda m: None, module_at(0.49), [0.49], 1.2)
    plain.recovered = 0.3
    finalists = [blocks, channels, plain]
    probe = LatencyRuntime(table=LayerLatencyTable(), measure=measure)
    chosen = settle(_finish(finalists, 0.495, probe), blocks)
    # The judged one comes before the closer outputs of one that was not judged.
    assert chosen is plain and plain.ratio == pytest.approx(0.49)
    assert blocks.ratio == pytest.approx(0.43)
    # Nothing else on target: the best of those timed afresh.
    lone = Candidate("lone", "blocks", lambda m: None, module_at(0.43), [0.495], 0.5, stuck, 0.9)
    assert settle(_finish([lone], 0.495, probe), lone) is lone


def test_the_best_of_each_kind_is_judged_after_a_short_distillation() -> None:
    """Just pruned, the channel-thinned candidate's outputs are the closest; after a short
    distillation the one that removed blocks has recovered more, and wins."""
    finalists = [
        _candidate("global pruning to MACs", 0.49, 0.97, "plain"),
        _candidate("latency-priced, x8", 0.5, 0.95),
        _candidate("latency-priced, x16/x8", 0.49, 0.96),
        _candidate("latency-priced, 2 residual blocks removed", 0.5, 1.05, "blocks"),
        _candidate("latency-priced, 3 residual blocks removed", 0.3, 0.5, "blocks"),  # faster
    ]
    after = {"global pruning to MACs": 0.2, "latency-priced, x8": 0.15}
    judged: list[str] = []

    def recover(module: nn.Module) -> float:
        label = next(c.label for c in finalists if c.module is module)
        judged.append(label)
        return after.get(label, 0.08)

    chosen = recovered_choice(finalists, choose(finalists, 0.5), 0.5, recover, lambda: False)
    assert chosen.label == "latency-priced, 2 residual blocks removed"
    # One per kind, the closest outputs of its kind; nothing off target.
    assert sorted(judged) == sorted([*after, "latency-priced, 2 residual blocks removed"])
    # A single kind on target: nothing to judge.
    alone = [finalists[1], finalists[2]]
    assert recovered_choice(alone, finalists[1], 0.5, recover, lambda: False) is finalists[1]
    assert len(judged) == 3


def _made_up_runtime(example: torch.Tensor, overhead_ms: float = 0.3):
    """Latency = MACs-proportional work + a fixed overhead, deterministic."""

    def ms(module: nn.Module) -> float:
        return count_macs(module, example) * 1e-6 + overhead_ms

    return ms


@pytest.mark.parametrize("net", [TinyResNet, TinyMobileNet])
def test_latency_target_is_met_on_the_made_up_runtime(net, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(LayerLatencyTable, "_time", lambda self, s, i, o: _work_ms(s, i, o))
    model = seeded(net)
    original = seeded(net)
    head = model.fc if hasattr(model, "fc") else model.classifier
    runtime = _made_up_runtime(X)
    calls: list[int] = []

    def measure(candidates: dict[str, nn.Module]) -> dict[str, float]:
        calls.append(len(candidates))
        return {"original": runtime(original), **{k: runtime(m) for k, m in candidates.items()}}

    probe = LatencyRuntime(table=LayerLatencyTable(), measure=measure)
    result = prune_model(
        model,
        X,
        PruneSpec(target=Target(latency_reduction=0.4)),
        protected=[head],
        latency=probe,
    )
    figures = result.achieved
    assert figures["latency_ms_target"] == pytest.approx(0.6 * figures["latency_ms_original"])
    assert figures["latency_ms_measured"] <= figures["latency_ms_target"] * (1 + LATENCY_SLACK)
    # The model itself is what was measured last.
    assert runtime(model) == pytest.approx(figures["latency_ms_measured"])
    assert max(calls) == 5  # the finalists were timed side by side (a re-aim may follow)
    [note] = [n for n in result.notes if n.startswith("latency target 40.0% less time")]
    assert "global pruning to MACs" in note and "latency-priced, x16/x8" in note
    assert "latency-priced, sensitivity-weighted, x8" in note
    assert note.count("(chosen)") == 1
    assert model(X).shape == (1, 10)


def test_latency_target_without_a_runtime_is_refused() -> None:
    from worker.engine.errors import PruningFailed

    model = seeded(TinyResNet)
    with pytest.raises(PruningFailed) as err:
        prune_model(model, X, PruneSpec(target=Target(latency_reduction=0.4)), protected=[model.fc])
    assert err.value.code == "invalid_spec"


def test_choice_does_not_take_a_far_faster_candidate_for_closer_outputs() -> None:
    # Random-weight outputs barely tell candidates apart; speed beyond the target does.
    picks = [_candidate("over-pruned", 0.3, 0.99), _candidate("on target", 0.49, 1.0)]
    assert choose(picks, 0.5).label == "on target"
    # Nothing on target: the one meeting the target most narrowly.
    picks = [_candidate("far", 0.2, 0.5), _candidate("less far", 0.35, 0.9)]
    assert choose(picks, 0.5).label == "less far"


def test_budget_correction_follows_the_proportional_step_when_noise_turns_the_secant() -> None:
    """Keeping more cost measured faster (0.529 then 0.511): noise, not the model. The
    secant would keep still more (0.549) and move away from a 0.485 aim."""
    guess = next_fraction([(0.50, 0.529), (0.52, 0.511)], 0.485)
    assert guess == pytest.approx(0.52 * 0.485 / 0.511)


def test_budget_correction_steps_at_most_twice_the_proportional_step() -> None:
    """Two tries 0.002 apart in ratio: their secant would cut the budget from 0.49 to
    0.275 and land far faster than asked; the step stops at twice the proportional one."""
    proportional_step = 0.49 * 0.485 / 0.528 - 0.49
    guess = next_fraction([(0.50, 0.530), (0.49, 0.528)], 0.485)
    assert guess == pytest.approx(0.49 + 2 * proportional_step)


def test_budget_correction_takes_a_secant_that_refines_the_proportional_step() -> None:
    # The ratio moves 0.8 per unit of budget: the secant's step, smaller than twice the
    # proportional one, is taken as it is.
    guess = next_fraction([(0.60, 0.56), (0.55, 0.52)], 0.485)
    assert guess == pytest.approx(0.55 + (0.485 - 0.52) / 0.8)
