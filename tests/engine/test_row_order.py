"""Outputs of a graph that orders rows by score, compared across runtimes."""

import onnx
import torch
from onnx import TensorProto, helper

from worker.engine.measure.row_order import reordered_difference, selects_rows, unordered_difference


def _detections(seed: int = 0, rows: int = 100) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((2, rows, 6), generator=gen) * 300


def test_the_same_rows_in_another_order_do_not_differ() -> None:
    ours = _detections()
    theirs = ours[:, torch.randperm(100, generator=torch.Generator().manual_seed(1))]
    assert (ours - theirs).abs().max() > 10
    assert unordered_difference(ours, theirs) == 0.0
    # An exact match is 0.0, not "no answer": the element-wise difference must not return.
    assert reordered_difference(50.0, ours, theirs) == 0.0
    assert reordered_difference(50.0, torch.zeros(3), torch.ones(3)) == 50.0


def test_a_few_rows_swapped_at_the_cut_are_spared() -> None:
    ours = _detections()
    theirs = ours.clone()
    theirs[:, -10:] = _detections(seed=2)[:, :10]  # the runners-up, not the last ten
    assert unordered_difference(ours, theirs) == 0.0


def test_rows_that_moved_are_a_difference() -> None:
    ours = _detections()
    assert unordered_difference(ours, ours + 1.0) == 1.0
    assert unordered_difference(ours, _detections(seed=3)) > 10
    theirs = ours.clone()
    theirs[:, :40] = _detections(seed=4)[:, :40]  # far more than a cut's share
    assert unordered_difference(ours, theirs) > 10


def test_shapes_that_cannot_be_compared_row_by_row() -> None:
    assert unordered_difference(torch.zeros(3), torch.zeros(3)) is None
    assert unordered_difference(torch.zeros(1, 4), torch.zeros(1, 5)) is None


def _graph(nodes: list, inputs: list, outputs: list) -> onnx.GraphProto:
    return helper.make_graph(nodes, "g", inputs, outputs)


def test_ordering_ops_are_found_in_subgraphs_too() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    k = helper.make_tensor_value_info("k", TensorProto.INT64, [1])
    values = helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, 2])
    index = helper.make_tensor_value_info("i", TensorProto.INT64, [1, 2])
    topk = helper.make_node("TopK", ["x", "k"], ["v", "i"])
    assert selects_rows(_graph([topk], [x, k], [values, index]))
    relu = helper.make_node("Relu", ["x"], ["y"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])
    assert not selects_rows(_graph([relu], [x], [y]))
    branch = _graph([topk], [], [values, index])
    cond = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    if_node = helper.make_node("If", ["c"], ["v", "i"], then_branch=branch, else_branch=branch)
    assert selects_rows(_graph([if_node], [cond, x, k], [values, index]))
