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


# --- real-architecture graph patterns (tests/engine/test_real_patterns.py) ---------------


class ConvBnSiLU(nn.Module):
    """YOLOv8's Conv: conv, BatchNorm, SiLU (exported as Conv -> Sigmoid -> Mul)."""

    def __init__(self, cin: int, cout: int, k: int = 1, s: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.silu(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """YOLOv8's bottleneck: two 3x3 convs with a residual addition."""

    def __init__(self, c: int, shortcut: bool = True) -> None:
        super().__init__()
        self.cv1, self.cv2 = ConvBnSiLU(c, c, 3), ConvBnSiLU(c, c, 3)
        self.add = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """YOLOv8's C2f: conv, split in two along the channels, a chain of bottlenecks on the
    second half, concatenation of both halves and every bottleneck's output, 1x1 conv."""

    def __init__(self, cin: int, cout: int, n: int = 1, shortcut: bool = True) -> None:
        super().__init__()
        self.c = cout // 2
        self.cv1 = ConvBnSiLU(cin, 2 * self.c)
        self.cv2 = ConvBnSiLU((2 + n) * self.c, cout)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).split((self.c, self.c), 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    """YOLOv8's spatial pyramid pooling: three chained max-pools, all concatenated."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        hidden = cin // 2
        self.cv1, self.cv2 = ConvBnSiLU(cin, hidden), ConvBnSiLU(4 * hidden, cout)
        self.pool = nn.MaxPool2d(5, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        y.extend(self.pool(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class DFL(nn.Module):
    """YOLOv8's distribution focal loss decoding: a fixed 1x1 conv over reg_max bins."""

    def __init__(self, reg_max: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(reg_max, 1, 1, bias=False).requires_grad_(False)
        self.conv.weight.data[:] = torch.arange(reg_max, dtype=torch.float).view(1, -1, 1, 1)
        self.reg_max = reg_max

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, a = x.shape
        x = x.view(b, 4, self.reg_max, a).transpose(2, 1).softmax(1)
        return self.conv(x).view(b, 4, a)


class YoloStyle(nn.Module):
    """A YOLOv8-style detector: Conv/C2f backbone to stride 32, SPPF, a PAN neck (top-down
    upsample-and-concat, bottom-up strided conv-and-concat, C2f after each), and a
    decoupled head per level (box and class branches, concatenated, flattened, split,
    the box part decoded by DFL)."""

    def __init__(self, width: int = 8, num_classes: int = 4, reg_max: int = 8) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(ConvBnSiLU(3, w, 3, 2), ConvBnSiLU(w, 2 * w, 3, 2))
        self.p3 = nn.Sequential(C2f(2 * w, 2 * w, n=1), ConvBnSiLU(2 * w, 4 * w, 3, 2))
        self.p3b = C2f(4 * w, 4 * w, n=2)
        self.p4 = nn.Sequential(ConvBnSiLU(4 * w, 8 * w, 3, 2), C2f(8 * w, 8 * w, n=2))
        self.p5 = nn.Sequential(
            ConvBnSiLU(8 * w, 16 * w, 3, 2), C2f(16 * w, 16 * w, n=1), SPPF(16 * w, 16 * w)
        )
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.td4 = C2f(24 * w, 8 * w, shortcut=False)
        self.td3 = C2f(12 * w, 4 * w, shortcut=False)
        self.down3 = ConvBnSiLU(4 * w, 4 * w, 3, 2)
        self.bu4 = C2f(12 * w, 8 * w, shortcut=False)
        self.down4 = ConvBnSiLU(8 * w, 8 * w, 3, 2)
        self.bu5 = C2f(24 * w, 16 * w, shortcut=False)
        self.reg_max, self.nc = reg_max, num_classes
        chans = (4 * w, 8 * w, 16 * w)
        hidden = max(16, 4 * w)
        self.box = nn.ModuleList(self._branch(c, 4 * reg_max, hidden) for c in chans)
        self.cls = nn.ModuleList(self._branch(c, num_classes, hidden) for c in chans)
        self.dfl = DFL(reg_max)

    @staticmethod
    def _branch(cin: int, cout: int, hidden: int) -> nn.Sequential:
        return nn.Sequential(
            ConvBnSiLU(cin, hidden, 3), ConvBnSiLU(hidden, hidden, 3), nn.Conv2d(hidden, cout, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p3 = self.p3b(self.p3(self.stem(x)))
        p4 = self.p4(p3)
        p5 = self.p5(p4)
        t4 = self.td4(torch.cat([self.up(p5), p4], 1))
        n3 = self.td3(torch.cat([self.up(t4), p3], 1))
        n4 = self.bu4(torch.cat([self.down3(n3), t4], 1))
        n5 = self.bu5(torch.cat([self.down4(n4), p5], 1))
        heads = zip((n3, n4, n5), self.box, self.cls, strict=True)
        levels = [torch.cat([b(f), c(f)], 1) for f, b, c in heads]
        n = x.shape[0]
        flat = torch.cat([lv.view(n, 4 * self.reg_max + self.nc, -1) for lv in levels], 2)
        box, cls = flat.split((4 * self.reg_max, self.nc), 1)
        return torch.cat([self.dfl(box), cls.sigmoid()], 1)


class DenseLayer(nn.Module):
    """DenseNet's layer: BN-ReLU-1x1 conv, BN-ReLU-3x3 conv on the concat of all before."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, 2 * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(2 * growth)
        self.conv2 = nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.conv1(torch.relu(self.norm1(torch.cat(features, 1))))
        return self.conv2(torch.relu(self.norm2(x)))


class TinyDenseNet(nn.Module):
    """torchvision DenseNet's pattern: each layer reads the concatenation of every earlier
    feature map of its block; a transition (BN-ReLU-1x1-avgpool) between blocks."""

    def __init__(self, growth: int = 32, num_classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self.block1 = nn.ModuleList(DenseLayer(32 + i * growth, growth) for i in range(3))
        c = 32 + 3 * growth
        self.trans = nn.Sequential(
            nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2)
        )
        self.block2 = nn.ModuleList(DenseLayer(c // 2 + i * growth, growth) for i in range(3))
        self.norm = nn.BatchNorm2d(c // 2 + 3 * growth)
        self.fc = nn.Linear(c // 2 + 3 * growth, num_classes)

    @staticmethod
    def _block(layers: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in layers:
            features.append(layer(features))
        return torch.cat(features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.trans(self._block(self.block1, self.stem(x)))
        x = torch.relu(self.norm(self._block(self.block2, x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """torchvision ShuffleNetV2's shuffle: view, transpose, view back."""
    n, c, h, w = x.size()
    x = x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous()
    return x.view(n, -1, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2's unit: a stride-1 unit splits the channels in two and transforms one
    half; a stride-2 unit transforms both; then concatenation and a channel shuffle."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = cout // 2
        branch_in = cin if stride > 1 else half
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
                nn.BatchNorm2d(cin),
                nn.Conv2d(cin, half, 1, bias=False),
                nn.BatchNorm2d(half),
                nn.ReLU(),
            )
        self.branch2 = nn.Sequential(
            nn.Conv2d(branch_in, half, 1, bias=False),
            nn.BatchNorm2d(half),
            nn.ReLU(),
            nn.Conv2d(half, half, 3, stride, 1, groups=half, bias=False),
            nn.BatchNorm2d(half),
            nn.Conv2d(half, half, 1, bias=False),
            nn.BatchNorm2d(half),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class TinyShuffleNet(nn.Module):
    """A ShuffleNetV2-like stack: stride-2 and stride-1 units, 1x1 conv, pooled head."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16))
        self.stage = nn.Sequential(
            ShuffleUnit(16, 32, 2), ShuffleUnit(32, 32, 1), ShuffleUnit(32, 32, 1)
        )
        self.stage2 = nn.Sequential(ShuffleUnit(32, 64, 2), ShuffleUnit(64, 64, 1))
        self.last = nn.Sequential(nn.Conv2d(64, 128, 1, bias=False), nn.BatchNorm2d(128))
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.last(self.stage2(self.stage(torch.relu(self.stem(x))))))
        return self.fc(x.mean((2, 3)))


class BakedReshapeOCR(nn.Module):
    """PP-OCR's recogniser neck: conv features flattened to a sequence, mixed per step, and
    reshaped back to a feature map by a reshape to literal sizes (as Paddle exports them,
    batch -1, then height, width and channels), then a conv and a per-step head."""

    def __init__(self, num_classes: int = 7) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 16, stride=2), conv_bn(16, 32, stride=2), conv_bn(32, 48, stride=2)
        )
        self.mix = nn.Linear(48, 48)
        self.conv = nn.Conv2d(48, 32, 1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x).mean(2, keepdim=True)  # (n, 48, 1, 12)
        seq = self.mix(f.reshape(-1, 48, 12).permute(0, 2, 1))  # (n, 12, 48)
        f = seq.reshape(-1, 1, 12, 48).permute(0, 3, 1, 2)  # sizes baked into the graph
        return self.fc(torch.relu(self.conv(f)).squeeze(2).permute(0, 2, 1))


class ConvLSTMOCR(nn.Module):
    """A CRNN: conv features pooled over the height, a two-layer bidirectional LSTM over
    the width (sequence first), per-step class scores."""

    def __init__(self, num_classes: int = 9) -> None:
        super().__init__()
        self.cnn = nn.Sequential(conv_bn(1, 16, stride=2), conv_bn(16, 32, stride=2))
        self.rnn = nn.LSTM(32, 24, num_layers=2, bidirectional=True)
        self.fc = nn.Linear(48, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = self.cnn(x).mean(dim=2).permute(2, 0, 1)  # (width, batch, channels)
        out, _ = self.rnn(seq)
        t, b, h = out.shape
        return self.fc(out.reshape(t * b, h)).reshape(t, b, -1)


class ConvBnMLP(nn.Module):
    """Conv-BN-ReLU x3, max-pool, flatten, linear: the sensitivity-scope fine-tune case."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(conv_bn(3, 16), conv_bn(16, 32), conv_bn(32, 32))
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(32 * 8 * 8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))
