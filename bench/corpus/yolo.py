"""Small YOLO-family detectors built from the published descriptions of their blocks.

Written here from the papers' and READMEs' block diagrams, at toy widths, so that the
coverage bench meets the graph shapes real YOLO exports have: C3, C2f, C3k2, C2PSA,
SPP/SPPF, ELAN, SPPCSPC, RepConv (training form: three parallel branches), anchor-based
heads that decode boxes in the graph (v3, v5, v7), and anchor-free decoupled heads with
a DFL integral and the distance-to-box decode (v8, 11), plus a top-k post-process (v10)
and NMS in the graph (v8 exported with it).
Weights are random; only the structure matters.
"""

import torch
from torch import nn
from torch.nn import functional as F

NUM_CLASSES = 80
STRIDES = (8, 16, 32)
REG_MAX = 16
# Three anchors per level, in pixels, as the anchor-based YOLOs ship them for COCO.
ANCHORS = (
    ((10, 13), (16, 30), (33, 23)),
    ((30, 61), (62, 45), (59, 119)),
    ((116, 90), (156, 198), (373, 326)),
)


class Conv(nn.Module):
    """Conv2d without bias, BatchNorm, then SiLU (v5 onwards) or LeakyReLU (v3)."""

    def __init__(
        self, c1: int, c2: int, k: int = 1, s: int = 1, g: int = 1, act: str = "silu"
    ) -> None:
        super().__init__()
        # v5's 6x6 stride-2 stem pads by 2, so that it halves the size exactly.
        pad = 2 if k == 6 else k // 2
        self.conv = nn.Conv2d(c1, c2, k, s, pad, groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        acts = {"silu": nn.SiLU(), "leaky": nn.LeakyReLU(0.1), "none": nn.Identity()}
        self.act = acts[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """Two convs with a residual add when the widths match."""

    def __init__(
        self, c1: int, c2: int, shortcut: bool = True, k: tuple[int, int] = (1, 3), e: float = 0.5
    ) -> None:
        super().__init__()
        hidden = int(c2 * e)
        self.cv1 = Conv(c1, hidden, k[0])
        self.cv2 = Conv(hidden, c2, k[1])
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class DarknetResidual(nn.Module):
    """YOLOv3's residual unit: 1x1 halving, 3x3 restoring, LeakyReLU, add."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.cv1 = Conv(c, c // 2, 1, act="leaky")
        self.cv2 = Conv(c // 2, c, 3, act="leaky")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cv2(self.cv1(x))


class C3(nn.Module):
    """CSP bottleneck with three convs (v5): a bottleneck branch beside a 1x1 branch."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, k: int = 1) -> None:
        super().__init__()
        hidden = c2 // 2
        self.cv1 = Conv(c1, hidden)
        self.cv2 = Conv(c1, hidden)
        self.cv3 = Conv(2 * hidden, c2)
        self.m = nn.Sequential(
            *(Bottleneck(hidden, hidden, shortcut, (k, 3), 1.0) for _ in range(n))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class C2f(nn.Module):
    """v8's CSP block: split the 1x1 output in two, chain bottlenecks on one half and
    concatenate every intermediate output."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False) -> None:
        super().__init__()
        self.c = c2 // 2
        self.cv1 = Conv(c1, 2 * self.c)
        self.cv2 = Conv((2 + n) * self.c, c2)
        self.m = nn.ModuleList(Bottleneck(self.c, self.c, shortcut, (3, 3), 1.0) for _ in range(n))

    def blocks(self) -> nn.ModuleList:
        return self.m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        for block in self.blocks():
            y.append(block(y[-1]))
        return self.cv2(torch.cat(y, 1))


class C3k2(C2f):
    """11's C2f variant whose inner blocks are small C3 blocks with 3x3 bottlenecks."""

    def __init__(self, c1: int, c2: int, n: int = 1, c3k: bool = True) -> None:
        super().__init__(c1, c2, n, shortcut=True)
        if c3k:
            self.m = nn.ModuleList(C3(self.c, self.c, 2, True, k=3) for _ in range(n))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: one 5x5 max-pool applied three times in a chain."""

    def __init__(self, c1: int, c2: int, act: str = "silu") -> None:
        super().__init__()
        hidden = c1 // 2
        self.cv1 = Conv(c1, hidden, act=act)
        self.cv2 = Conv(hidden * 4, c2, act=act)
        self.pool = nn.MaxPool2d(5, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        for _ in range(3):
            y.append(self.pool(y[-1]))
        return self.cv2(torch.cat(y, 1))


class SPP(nn.Module):
    """YOLOv3-SPP's pooling: 5, 9 and 13 max-pools side by side."""

    def __init__(self, c1: int, c2: int, act: str = "leaky") -> None:
        super().__init__()
        hidden = c1 // 2
        self.cv1 = Conv(c1, hidden, act=act)
        self.cv2 = Conv(hidden * 4, c2, act=act)
        self.pools = nn.ModuleList(nn.MaxPool2d(k, 1, k // 2) for k in (5, 9, 13))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        return self.cv2(torch.cat([x, *(p(x) for p in self.pools)], 1))


class SPPCSPC(nn.Module):
    """v7's SPP inside a CSP split: pooled branch beside a 1x1 branch."""

    def __init__(self, c1: int, c2: int) -> None:
        super().__init__()
        hidden = c2
        self.cv1 = nn.Sequential(Conv(c1, hidden), Conv(hidden, hidden, 3), Conv(hidden, hidden))
        self.pools = nn.ModuleList(nn.MaxPool2d(k, 1, k // 2) for k in (5, 9, 13))
        self.cv5 = nn.Sequential(Conv(4 * hidden, hidden), Conv(hidden, hidden, 3))
        self.cv2 = Conv(c1, hidden)
        self.cv7 = Conv(2 * hidden, c2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.cv1(x)
        y1 = self.cv5(torch.cat([x1, *(p(x1) for p in self.pools)], 1))
        return self.cv7(torch.cat((y1, self.cv2(x)), 1))


class ELAN(nn.Module):
    """v7's efficient layer aggregation: two 1x1 branches, a chain of 3x3 convs on the
    second, and a 1x1 over the concatenation of every other chain output."""

    def __init__(self, c1: int, c2: int, hidden: int, depth: int = 4) -> None:
        super().__init__()
        self.cv1 = Conv(c1, hidden)
        self.cv2 = Conv(c1, hidden)
        self.chain = nn.ModuleList(Conv(hidden, hidden, 3) for _ in range(depth))
        self.out = Conv(hidden * (2 + depth // 2), c2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x), self.cv2(x)]
        z = y[-1]
        for i, conv in enumerate(self.chain):
            z = conv(z)
            if i % 2 == 1:
                y.append(z)
        return self.out(torch.cat(y[::-1], 1))


class MPDown(nn.Module):
    """v7's MP downsampling: a max-pool branch beside a strided 3x3 branch."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.pool = nn.Sequential(nn.MaxPool2d(2, 2), Conv(c, c // 2))
        self.conv = nn.Sequential(Conv(c, c // 2), Conv(c // 2, c // 2, 3, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.conv(x), self.pool(x)), 1)


class RepConv(nn.Module):
    """RepVGG-style block in its training form: 3x3 conv-BN + 1x1 conv-BN (+ BN identity
    when the widths match), summed, then SiLU. Exported unfused, as a user's would be."""

    def __init__(self, c1: int, c2: int, s: int = 1) -> None:
        super().__init__()
        self.dense = Conv(c1, c2, 3, s, act="none")
        self.point = Conv(c1, c2, 1, s, act="none")
        self.identity = nn.BatchNorm2d(c1) if c1 == c2 and s == 1 else None
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dense(x) + self.point(x)
        if self.identity is not None:
            y = y + self.identity(x)
        return self.act(y)


class Attention(nn.Module):
    """11's position-sensitive attention: multi-head attention over pixels from a 1x1 qkv
    conv, plus a depthwise 3x3 positional term on the values."""

    def __init__(self, dim: int, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.key_dim = dim // heads // 2
        self.head_dim = dim // heads
        self.scale = self.key_dim**-0.5
        self.qkv = Conv(dim, dim + 2 * self.key_dim * heads, act="none")
        self.proj = Conv(dim, dim, act="none")
        self.pe = Conv(dim, dim, 3, g=dim, act="none")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(x).view(b, self.heads, 2 * self.key_dim + self.head_dim, h * w)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.head_dim], dim=2)
        attn = ((q.transpose(-2, -1) @ k) * self.scale).softmax(dim=-1)
        y = (v @ attn.transpose(-2, -1)).view(b, c, h, w) + self.pe(v.reshape(b, c, h, w))
        return self.proj(y)


class C2PSA(nn.Module):
    """11's C2 block whose inner blocks are attention plus a 1x1 feed-forward pair."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.c = c // 2
        self.cv1 = Conv(c, 2 * self.c)
        self.cv2 = Conv(2 * self.c, c)
        self.attn = Attention(self.c, heads=max(self.c // 32, 1))
        self.ffn = nn.Sequential(Conv(self.c, 2 * self.c), Conv(2 * self.c, self.c, act="none"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.cv1(x).split((self.c, self.c), dim=1)
        b = b + self.attn(b)
        b = b + self.ffn(b)
        return self.cv2(torch.cat((a, b), 1))


class AnchorDetect(nn.Module):
    """Anchor-based head (v3, v5, v7): a 1x1 conv per level to anchors x (5 + classes),
    reshaped, sigmoid, and boxes decoded on the grid; returns (batch, boxes, 5 + classes)."""

    def __init__(self, channels: tuple[int, ...], v3_decode: bool = False) -> None:
        super().__init__()
        self.no = NUM_CLASSES + 5
        self.na = len(ANCHORS[0])
        self.v3_decode = v3_decode
        self.m = nn.ModuleList(nn.Conv2d(c, self.na * self.no, 1) for c in channels)
        self.register_buffer("anchors", torch.tensor(ANCHORS, dtype=torch.float32))

    def _grid(self, ny: int, nx: int, level: int) -> tuple[torch.Tensor, torch.Tensor]:
        ys, xs = torch.meshgrid(torch.arange(ny), torch.arange(nx), indexing="ij")
        grid = torch.stack((xs, ys), 2).view(1, 1, ny, nx, 2).float()
        anchor = self.anchors[level].view(1, self.na, 1, 1, 2)
        return grid, anchor

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        out = []
        for level, (conv, x) in enumerate(zip(self.m, feats, strict=True)):
            b, _, ny, nx = x.shape
            p = conv(x).view(b, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).sigmoid()
            grid, anchor = self._grid(ny, nx, level)
            stride = STRIDES[level]
            if self.v3_decode:
                xy = (p[..., :2] + grid) * stride
                wh = torch.exp(p[..., 2:4]) * anchor
            else:  # v5/v7: offsets in (-0.5, 1.5), sizes up to 4x the anchor
                xy = (p[..., :2] * 2 - 0.5 + grid) * stride
                wh = (p[..., 2:4] * 2) ** 2 * anchor
            out.append(torch.cat((xy, wh, p[..., 4:]), -1).view(b, -1, self.no))
        return torch.cat(out, 1)


class DFL(nn.Module):
    """Distribution focal loss integral: softmax over REG_MAX bins, then a fixed 1x1 conv
    holding 0..REG_MAX-1, giving each side's expected distance."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(REG_MAX, 1, 1, bias=False).requires_grad_(False)
        self.conv.weight.data[:] = torch.arange(REG_MAX, dtype=torch.float32).view(1, REG_MAX, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, a = x.shape
        return self.conv(x.view(b, 4, REG_MAX, a).transpose(2, 1).softmax(1)).view(b, 4, a)


def _anchor_points(feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell centres (2, A) and their strides (1, A) for the anchor-free decode."""
    points, strides = [], []
    for x, stride in zip(feats, STRIDES, strict=True):
        h, w = x.shape[2:]
        sy, sx = torch.meshgrid(
            torch.arange(h, dtype=torch.float32) + 0.5,
            torch.arange(w, dtype=torch.float32) + 0.5,
            indexing="ij",
        )
        points.append(torch.stack((sx, sy), 0).view(2, -1))
        strides.append(torch.full((1, h * w), float(stride)))
    return torch.cat(points, 1), torch.cat(strides, 1)


class AnchorFreeDetect(nn.Module):
    """Decoupled head (v8, 11): per level a box branch to 4 x REG_MAX and a class branch;
    DFL and distance-to-box decode in the graph; returns (batch, 4 + classes, anchors).
    With `light_cls` the class branch uses depthwise-separable convs, as 11 and v10 do."""

    def __init__(self, channels: tuple[int, ...], light_cls: bool = False) -> None:
        super().__init__()
        c2 = max(16, channels[0] // 4, REG_MAX * 4)
        c3 = max(channels[0], min(NUM_CLASSES, 100))
        self.box = nn.ModuleList(
            nn.Sequential(Conv(c, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * REG_MAX, 1))
            for c in channels
        )
        self.cls = nn.ModuleList(self._cls_branch(c, c3, light_cls) for c in channels)
        self.dfl = DFL()

    @staticmethod
    def _cls_branch(c: int, c3: int, light: bool) -> nn.Sequential:
        if light:
            return nn.Sequential(
                Conv(c, c, 3, g=c),
                Conv(c, c3),
                Conv(c3, c3, 3, g=c3),
                Conv(c3, c3),
                nn.Conv2d(c3, NUM_CLASSES, 1),
            )
        return nn.Sequential(Conv(c, c3, 3), Conv(c3, c3, 3), nn.Conv2d(c3, NUM_CLASSES, 1))

    def raw(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoded boxes (b, 4, A) in pixels, xywh, and class scores (b, classes, A)."""
        b = feats[0].shape[0]
        levels = [
            torch.cat((box(x), cls(x)), 1).view(b, 4 * REG_MAX + NUM_CLASSES, -1)
            for box, cls, x in zip(self.box, self.cls, feats, strict=True)
        ]
        y = torch.cat(levels, 2)
        dist, scores = y.split((4 * REG_MAX, NUM_CLASSES), 1)
        points, strides = _anchor_points(feats)
        lt, rb = self.dfl(dist).chunk(2, 1)
        x1y1, x2y2 = points - lt, points + rb
        boxes = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * strides
        return boxes, scores.sigmoid()

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        boxes, scores = self.raw(feats)
        return torch.cat((boxes, scores), 1)


class TopKDetect(AnchorFreeDetect):
    """v10's one-to-one head exported without NMS: the best MAX_DET anchors by their top
    class score, gathered; returns (batch, MAX_DET, 6): xyxy, score, class."""

    MAX_DET = 100

    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__(channels, light_cls=True)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        boxes, scores = self.raw(feats)
        xy, wh = boxes.split((2, 2), 1)
        xyxy = torch.cat((xy - wh / 2, xy + wh / 2), 1).transpose(1, 2)
        scores = scores.transpose(1, 2)
        k = min(self.MAX_DET, scores.shape[1])
        best, index = scores.amax(-1).topk(k, dim=1)
        picked = xyxy.gather(1, index.unsqueeze(-1).expand(-1, -1, 4))
        cls = scores.gather(1, index.unsqueeze(-1).expand(-1, -1, NUM_CLASSES)).argmax(-1)
        return torch.cat((picked, best.unsqueeze(-1), cls.unsqueeze(-1).float()), -1)


class NmsDetect(AnchorFreeDetect):
    """v8's head exported with NMS in the graph (as an export with `nms=True` does): a
    confidence threshold, torchvision's class-aware NMS (scripted, so an `If` in ONNX),
    the best MAX_DET kept and padded to a fixed (1, MAX_DET, 6): xyxy, score, class.
    Batch 1 only, as such exports are."""

    MAX_DET, CONF = 100, 0.25

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        import torchvision

        boxes, scores = self.raw(feats)
        xy, wh = boxes[0].split((2, 2), 0)
        xyxy = torch.cat((xy - wh / 2, xy + wh / 2), 0).T
        conf, cls = scores[0].max(0)
        passed = conf > self.CONF
        xyxy, conf, cls = xyxy[passed], conf[passed], cls[passed]
        keep = torchvision.ops.batched_nms(xyxy, conf, cls, 0.45)[: self.MAX_DET]
        found = torch.cat((xyxy[keep], conf[keep, None], cls[keep, None].float()), 1)
        return F.pad(found, (0, 0, 0, self.MAX_DET - found.shape[0])).unsqueeze(0)


def yolov8_nms(w: int = 16) -> nn.Module:
    """yolov8 with NMS in the exported graph."""
    return _Yolo(_CspBackbone(w, C2f), C2f, NmsDetect)


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


class YoloV3(nn.Module):
    """Darknet-53 in miniature (residual units, LeakyReLU), SPP, an FPN with upsampling
    and concatenation, and the v3 box decode."""

    def __init__(self, w: int = 16) -> None:
        super().__init__()
        self.stem = Conv(3, w, 3, act="leaky")
        stages, c = [], w
        for n in (1, 1, 2, 2, 1):
            stages.append(
                nn.Sequential(
                    Conv(c, 2 * c, 3, 2, act="leaky"), *(DarknetResidual(2 * c) for _ in range(n))
                )
            )
            c *= 2
        self.stages = nn.ModuleList(stages)
        self.spp = SPP(c, c // 2)
        self.lat4 = Conv(c // 2, c // 4, act="leaky")
        self.p4 = nn.Sequential(
            Conv(c // 4 + c // 2, c // 4, act="leaky"), Conv(c // 4, c // 2, 3, act="leaky")
        )
        self.lat3 = Conv(c // 2, c // 8, act="leaky")
        self.p3 = nn.Sequential(
            Conv(c // 8 + c // 4, c // 8, act="leaky"), Conv(c // 8, c // 4, 3, act="leaky")
        )
        self.detect = AnchorDetect((c // 4, c // 2, c // 2), v3_decode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        c3, c4, c5 = feats[2], feats[3], feats[4]
        p5 = self.spp(c5)
        p4 = self.p4(torch.cat((_up(self.lat4(p5)), c4), 1))
        p3 = self.p3(torch.cat((_up(self.lat3(p4)), c3), 1))
        return self.detect([p3, p4, p5])


class _CspBackbone(nn.Module):
    """Stem and four strided stages of CSP blocks, SPPF last; returns P3, P4, P5."""

    def __init__(self, w: int, block, stem_k: int = 3, tail: nn.Module | None = None) -> None:
        super().__init__()
        self.stem = Conv(3, w, stem_k, 2)
        layers, c = [], w
        for i in range(4):
            layers.append(nn.Sequential(Conv(c, 2 * c, 3, 2), block(2 * c, 2 * c, 1 + i % 2)))
            c *= 2
        self.layers = nn.ModuleList(layers)
        self.sppf = SPPF(c, c)
        self.tail = tail if tail is not None else nn.Identity()
        self.out_channels = (c // 4, c // 2, c)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        feats = []
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        return [feats[1], feats[2], self.tail(self.sppf(feats[3]))]


class _PanNeck(nn.Module):
    """Top-down then bottom-up path aggregation (v5/v8/11 style), one block per merge."""

    def __init__(self, channels: tuple[int, int, int], block) -> None:
        super().__init__()
        c3, c4, c5 = channels
        self.td4 = block(c5 + c4, c4, 1)
        self.td3 = block(c4 + c3, c3, 1)
        self.down3 = Conv(c3, c3, 3, 2)
        self.bu4 = block(c3 + c4, c4, 1)
        self.down4 = Conv(c4, c4, 3, 2)
        self.bu5 = block(c4 + c5, c5, 1)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        p3, p4, p5 = feats
        t4 = self.td4(torch.cat((_up(p5), p4), 1))
        n3 = self.td3(torch.cat((_up(t4), p3), 1))
        n4 = self.bu4(torch.cat((self.down3(n3), t4), 1))
        n5 = self.bu5(torch.cat((self.down4(n4), p5), 1))
        return [n3, n4, n5]


class _Yolo(nn.Module):
    """Backbone, PAN neck, head."""

    def __init__(self, backbone: _CspBackbone, block, head_fn) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = _PanNeck(backbone.out_channels, block)
        self.detect = head_fn(backbone.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.detect(self.neck(self.backbone(x)))


def yolov5(w: int = 16) -> nn.Module:
    """C3 blocks, a 6x6 stem, SPPF, PAN, anchor head with the v5 decode."""
    return _Yolo(_CspBackbone(w, C3, stem_k=6), C3, AnchorDetect)


def yolov8(w: int = 16) -> nn.Module:
    """C2f blocks, SPPF, PAN, decoupled anchor-free head with DFL."""
    return _Yolo(_CspBackbone(w, C2f), C2f, AnchorFreeDetect)


def yolov10(w: int = 16) -> nn.Module:
    """C2f blocks, SPPF, PAN, one-to-one head with the top-k post-process in the graph."""
    return _Yolo(_CspBackbone(w, C2f), C2f, TopKDetect)


def yolo11(w: int = 16) -> nn.Module:
    """C3k2 blocks, SPPF then C2PSA attention, PAN, head with depthwise class branch."""
    c5 = w * 16
    backbone = _CspBackbone(w, C3k2, tail=C2PSA(c5))
    return _Yolo(backbone, C3k2, lambda ch: AnchorFreeDetect(ch, light_cls=True))


class YoloV7(nn.Module):
    """ELAN stages with MP downsampling, SPPCSPC, a PAN of ELAN blocks, RepConv before
    each level's anchor head (v5-style decode)."""

    def __init__(self, w: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(Conv(3, w, 3, 2), Conv(w, 2 * w, 3, 2))
        c = 2 * w
        self.s3 = ELAN(c, 2 * c, c // 2)
        self.d4 = MPDown(2 * c)
        self.s4 = ELAN(2 * c, 4 * c, c)
        self.d5 = MPDown(4 * c)
        self.s5 = ELAN(4 * c, 8 * c, 2 * c)
        self.d3 = nn.Sequential(Conv(2 * c, 2 * c, 3, 2))  # P3 at stride 8
        self.spp = SPPCSPC(8 * c, 4 * c)
        self.lat4 = Conv(4 * c, 2 * c)
        self.td4 = ELAN(2 * c + 4 * c, 2 * c, c)
        self.lat3 = Conv(2 * c, c)
        self.td3 = ELAN(c + 2 * c, c, c // 2)
        self.bu4 = ELAN(c + 2 * c, 2 * c, c)
        self.down3 = MPDown(c)
        self.down4 = MPDown(2 * c)
        self.bu5 = ELAN(2 * c + 4 * c, 4 * c, 2 * c)
        self.rep = nn.ModuleList(RepConv(ci, 2 * ci) for ci in (c, 2 * c, 4 * c))
        self.detect = AnchorDetect((2 * c, 4 * c, 8 * c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        c3 = self.d3(self.s3(x))
        c4 = self.s4(self.d4(c3))
        c5 = self.s5(self.d5(c4))
        p5 = self.spp(c5)
        t4 = self.td4(torch.cat((_up(self.lat4(p5)), c4), 1))
        n3 = self.td3(torch.cat((_up(self.lat3(t4)), c3), 1))
        n4 = self.bu4(torch.cat((self.down3(n3), t4), 1))
        n5 = self.bu5(torch.cat((self.down4(n4), p5), 1))
        return self.detect([r(p) for r, p in zip(self.rep, (n3, n4, n5), strict=True)])


BUILDERS = {
    "yolov3": YoloV3,
    "yolov5": yolov5,
    "yolov7": YoloV7,
    "yolov8": yolov8,
    "yolov10": yolov10,
    "yolo11": yolo11,
}


# Batch-1 exports with NMS in the graph.
WITH_NMS = {"yolov8-nms": yolov8_nms}


def head_convs(model: nn.Module) -> list[nn.Module]:
    """The final 1x1 convs that produce box and class channels: a plain pruner must leave
    them alone, as it leaves a classifier."""
    heads: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, AnchorDetect):
            heads += list(module.m)
        elif isinstance(module, AnchorFreeDetect):
            heads += [branch[-1] for branch in (*module.box, *module.cls)]
            heads.append(module.dfl.conv)
    return heads


def build(name: str, width: int = 16) -> nn.Module:
    """A YOLO-style model by name, random weights, eval mode, seeded."""
    torch.manual_seed(0)
    model = (BUILDERS | WITH_NMS)[name](width).eval()
    # Random BatchNorm statistics, so the exported graph is not trivially uniform.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model
