"""MAC and parameter counts against hand computations."""

import pytest
import torch
from torch import nn

from worker.engine.measure.stats import count_macs, count_params

torch.set_num_threads(1)


class ConvLinearNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)  # 8x8x8 outputs x 3*3*3
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=4)  # 8x8x8 outputs x 2*3*3
        self.bn = nn.BatchNorm2d(8)  # not counted
        self.fc = nn.Linear(8, 10)  # 10 x 8
        self.proj = nn.Parameter(torch.randn(10, 6))  # bare matmul: 6 x 10

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.grouped(self.conv(x))))
        return self.fc(x.mean(dim=(2, 3))) @ self.proj


def test_conv_linear_matmul_macs_match_hand_count() -> None:
    model = ConvLinearNet()
    expected = 8 * 8 * 8 * 27 + 8 * 8 * 8 * 18 + 10 * 8 + 10 * 6
    assert count_macs(model, torch.randn(1, 3, 8, 8)) == expected


def test_macs_are_counted_at_batch_one() -> None:
    model = ConvLinearNet()
    assert count_macs(model, torch.randn(4, 3, 8, 8)) == count_macs(model, torch.randn(1, 3, 8, 8))


def test_conv1d_transpose_and_bmm() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = nn.Conv1d(2, 4, 3)  # 4 x 14 outputs x 2*3
            self.up = nn.ConvTranspose2d(4, 2, 2, stride=2)  # 4x3x3 inputs x 2*2*2

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
            seq = self.c1(x)
            attn = torch.bmm(seq, seq.transpose(1, 2))  # 4x4 outputs x 14
            return attn, self.up(y), torch.einsum("bij,bjk->bik", seq, seq.transpose(1, 2))

    expected = 4 * 14 * 6 + 4 * 3 * 3 * 8 + 4 * 4 * 14 + 4 * 14 * 4
    assert count_macs(Net(), (torch.randn(1, 2, 16), torch.randn(1, 4, 3, 3))) == expected


def test_params_and_state_preserved() -> None:
    model = ConvLinearNet().train()
    assert count_params(model) == (3 * 8 * 9 + 8) + (8 * 2 * 9 + 8) + 16 + (8 * 10 + 10) + 60
    count_macs(model, torch.randn(1, 3, 8, 8))
    assert model.training  # the count runs in eval mode and restores the mode


def test_fx_graph_module_is_counted() -> None:
    traced = torch.fx.symbolic_trace(ConvLinearNet())
    assert count_macs(traced, torch.randn(1, 3, 8, 8)) == pytest.approx(
        count_macs(ConvLinearNet(), torch.randn(1, 3, 8, 8))
    )
