"""Tiny seeded torchvision-style networks for the pruning-core tests."""

import torch
from torch import nn


def conv_bn(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class BasicBlock(nn.Module):
    """A ResNet basic block with an optional 1x1 projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + shortcut)


class TinyResNet(nn.Module):
    """A few-channel ResNet: stem, three stages of basic blocks, pooled linear head."""

    def __init__(self, in_ch: int = 3, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.stem = conv_bn(in_ch, width)
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(width, 2 * width, stride=2)
        self.layer3 = BasicBlock(2 * width, 4 * width, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class ResConcatNet(nn.Module):
    """Residual additions and a channel concatenation of two branches."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = conv_bn(3, 32)
        self.block = BasicBlock(32, 32)
        self.branch_a = conv_bn(32, 32)
        self.branch_b = conv_bn(32, 32)
        self.fuse = conv_bn(64, 64, stride=2)
        self.block2 = BasicBlock(64, 64)
        self.head = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(self.stem(x))
        x = torch.cat([self.branch_a(x), self.branch_b(x)], dim=1)
        x = self.block2(self.fuse(x))
        return self.head(x.mean(dim=(2, 3)))


class Conv1dNet(nn.Module):
    """A 1-D signal classifier."""

    def __init__(self, in_ch: int = 4, num_classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(in_ch, 32, 5, padding=2),
            nn.BatchNorm1d(32),
            nn.ReLU(),
            nn.Conv1d(32, 64, 5, stride=2, padding=2),
            nn.BatchNorm1d(64),
            nn.ReLU(),
            nn.Conv1d(64, 64, 3, padding=1),
            nn.BatchNorm1d(64),
            nn.ReLU(),
        )
        self.head = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=2))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 project, residual when shapes match."""

    def __init__(self, cin: int, cout: int, expand: int, stride: int = 1) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        self.body = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.use_residual else out


class TinyMobileNet(nn.Module):
    """A MobileNetV2-like stack of depthwise-separable inverted residuals."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16, stride=2)
        self.blocks = nn.Sequential(
            InvertedResidual(16, 16, 4),
            InvertedResidual(16, 24, 4, stride=2),
            InvertedResidual(24, 24, 4),
            InvertedResidual(24, 32, 4),
        )
        self.last = nn.Sequential(
            nn.Conv2d(32, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU6()
        )
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.last(self.blocks(self.stem(x)))
        return self.classifier(x.mean(dim=(2, 3)))


class TwoOutputNet(nn.Module):
    """A shared backbone with a class head and a dense (segmentation-like) head."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.backbone = nn.Sequential(conv_bn(3, 32), conv_bn(32, 64), conv_bn(64, 64))
        self.cls = nn.Linear(64, num_classes)
        self.dense = nn.Conv2d(64, 2, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.backbone(x)
        return self.cls(feats.mean(dim=(2, 3))), self.dense(feats)


def seeded(cls: type[nn.Module], seed: int = 0, **kwargs: object) -> nn.Module:
    """An instance of `cls` with seeded weights and non-trivial BatchNorm scales, in eval mode."""
    torch.manual_seed(seed)
    model = cls(**kwargs)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            # Default BN scales are all ones, which would make bn_scale ranking a tie.
            nn.init.uniform_(m.weight, 0.2, 1.0)
    return model.eval()
