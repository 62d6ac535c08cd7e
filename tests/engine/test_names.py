"""The engine's registries of user-facing names agree with the contract's `Literal`s: a
name added to the contract without an implementation (or the reverse) fails here, not in
a job."""

from typing import get_args

import pytest

from contract import QuantizeSpec, Target, TargetKind
from contract.spec import Method
from worker.engine.prune.importance import CRITERIA, make_importance
from worker.engine.ship.quantize import CALIBRATION_METHODS


def _literal_args(model: type, field: str) -> set[str]:
    return set(get_args(model.model_fields[field].annotation))


def test_every_channel_method_of_the_contract_has_a_criterion() -> None:
    # unstructured_l1 ranks single weights, not channels: it has no channel criterion.
    assert set(CRITERIA) == set(get_args(Method)) - {"unstructured_l1"}
    for method in CRITERIA:
        assert make_importance(method) is not None


def test_an_unknown_method_is_a_typed_error() -> None:
    from worker.engine.errors import PruningFailed

    with pytest.raises(PruningFailed) as caught:
        make_importance("l3")
    assert caught.value.code == "unknown_method"


def test_every_calibration_method_of_the_contract_maps_to_onnxruntimes() -> None:
    from onnxruntime.quantization import CalibrationMethod

    assert set(CALIBRATION_METHODS) == _literal_args(QuantizeSpec, "calibration")
    for ours in CALIBRATION_METHODS.values():
        assert hasattr(CalibrationMethod, ours)


@pytest.mark.parametrize("kind", get_args(TargetKind))
def test_a_targets_kind_is_the_field_that_is_set(kind: str) -> None:
    target = Target(**{kind: 0.5})
    assert target.kind == kind
    assert target.value == 0.5
    assert set(get_args(TargetKind)) == set(Target.model_fields)


@pytest.mark.parametrize(
    ("target", "scope", "strategy"),
    [
        ({"latency_reduction": 0.5}, "global", "latency_search"),
        ({"latency_reduction": 0.5}, "sensitivity", "latency_search"),
        ({"macs_reduction": 0.5}, "sensitivity", "allocation"),
        ({"params_reduction": 0.5}, "layerwise", "iterative"),
        ({"channel_ratio": 0.3}, "global", "iterative"),
    ],
)
def test_one_function_chooses_the_pruning_strategy(target, scope, strategy) -> None:  # noqa: ANN001
    from contract import PruneSpec
    from worker.engine.prune.to_target import choose_strategy

    assert choose_strategy(PruneSpec(target=Target(**target), scope=scope)) == strategy
