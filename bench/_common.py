"""Helpers shared by the benchmark scripts: ONNX export, the digits task, a small ResNet,
a sequence task and a Conv1d net, plain training and evaluation loops, and a plain
torch-pruning baseline."""

import copy
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch_pruning as tp
from torch import nn
from torch.nn import functional as F


def export_onnx_file(module: nn.Module, path: Path, shape: tuple[int, ...]) -> Path:
    """Export with a dynamic batch dimension, as a user's own export would look."""
    module = module.eval()
    torch.onnx.export(
        module,
        (torch.randn(*shape),),
        str(path),
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
    )
    return path


def digits(size: int = 16, seed: int = 0) -> tuple[np.ndarray, ...]:
    """scikit-learn's 8x8 digits upsampled to size x size, split 80/20: x_tr, y_tr, x_te, y_te."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = torch.from_numpy(data.images.astype(np.float32) / 16.0).unsqueeze(1)
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    # Centre and scale once so the data needs no further normalisation.
    x = ((images - 0.5) / 0.5).numpy().astype(np.float32)
    y = data.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    return x_tr, y_tr, x_te, y_te


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.down is None else self.down(x)))


class SmallResNet(nn.Module):
    """A ResNet with three stages of two basic blocks (widths w, 2w, 4w)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        widths = [width, 2 * width, 4 * width]
        blocks, cin = [], width
        for i, w in enumerate(widths):
            blocks += [_Block(cin, w, 1 if i == 0 else 2), _Block(w, w, 1)]
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    lr: float = 0.05,
    batch_size: int = 64,
    seed: int = 0,
) -> nn.Module:
    """Plain cross-entropy training: SGD with momentum, cosine schedule, seeded shuffling."""
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    steps = epochs * ((len(xt) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(xt), batch_size):
            idx = order[start : start + batch_size]
            opt.zero_grad()
            F.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def accuracy_torch(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 128) -> float:
    """Top-1 accuracy, in batches so that large images fit in memory."""
    model.eval()
    predicted = np.concatenate(
        [
            model(torch.from_numpy(x[i : i + batch_size])).argmax(1).numpy()
            for i in range(0, len(x), batch_size)
        ]
    )
    return float((predicted == y).mean())


def accuracy_onnx(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: x})
    return float((logits.argmax(1) == y).mean())


def _macs(model: nn.Module, example: torch.Tensor) -> int:
    macs, _ = tp.utils.count_ops_and_params(model, example)
    return int(macs)


def _magnitude_prune(model: nn.Module, example: torch.Tensor, ratio: float) -> nn.Module:
    model = copy.deepcopy(model).eval()
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=[m for m in model.modules() if isinstance(m, nn.Linear)],
    )
    pruner.step()
    return model


def plain_magnitude_prune(
    model: nn.Module, example: torch.Tensor, macs_reduction: float, tries: int = 12
) -> tuple[nn.Module, float]:
    """Uniform per-layer L2 magnitude pruning, no rounding; the ratio is bisected so that
    the MACs drop by `macs_reduction`. Returns the pruned copy and the reduction reached."""
    base = _macs(model, example)
    lo, hi = 0.0, 0.95
    best, best_red = model, 0.0
    for _ in range(tries):
        mid = (lo + hi) / 2
        pruned = _magnitude_prune(model, example, mid)
        reduction = 1.0 - _macs(pruned, example) / base
        if abs(reduction - macs_reduction) < abs(best_red - macs_reduction):
            best, best_red = pruned, reduction
        if reduction < macs_reduction:
            lo = mid
        else:
            hi = mid
    return best, best_red


def sequences(
    n: int = 3000, length: int = 128, noise: float = 0.9, seed: int = 0
) -> tuple[np.ndarray, ...]:
    """Two-channel noisy sine waves in six classes, split 80/20: x_tr, y_tr, x_te, y_te.

    A class is a frequency (4, 5 or 6 cycles per window) and a lag between the channels
    (none or a quarter period), so a model must compare the channels, not only count
    peaks. Phase, amplitude and a small frequency jitter are random; the noise is
    strong enough that a small Conv1d net reaches about 96%, not 100%.
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 6, n)
    cycles = np.array([4.0, 5.0, 6.0])[y % 3] + rng.uniform(-0.3, 0.3, n)
    lag = np.where(y < 3, 0.0, np.pi / 2)
    angle = 2 * np.pi * cycles[:, None] * np.arange(length)[None] / length
    angle += rng.uniform(0, 2 * np.pi, (n, 1))
    x = np.stack([np.sin(angle), np.sin(angle + lag[:, None])], 1)
    x *= rng.uniform(0.5, 1.5, (n, 1, 1))
    x += rng.normal(0.0, noise, x.shape)
    split = int(0.8 * n)
    x, y = x.astype(np.float32), y.astype(np.int64)
    return x[:split], y[:split], x[split:], y[split:]


class SequenceNet(nn.Module):
    """Five Conv1d-BatchNorm-ReLU layers (widths 32, 64, 64, 128, 128; the second and
    fourth halve the length), average pooling and a linear classifier."""

    def __init__(self, in_channels: int = 2, num_classes: int = 6) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for i, width in enumerate((32, 64, 64, 128, 128)):
            kernel = 5 if i < 2 else 3
            stride = 2 if i in (1, 3) else 1
            layers += [
                nn.Conv1d(cin, width, kernel, stride, kernel // 2, bias=False),
                nn.BatchNorm1d(width),
                nn.ReLU(),
            ]
            cin = width
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool1d(self.features(x), 1), 1))


def describe_machine(threads: int) -> str:
    """Cores, threads and the versions that matter to pruning and timing, on two lines."""
    # Imported here so that the training helpers above load without the engine's imports.
    from worker.engine.measure import benchmark

    env = benchmark.environment("cpu", ["CPUExecutionProvider"], threads=threads)
    return (
        f"machine: {env.cpu}, {os.cpu_count()} cores, {env.threads} threads\n"
        f"versions: torch {env.torch}, onnxruntime {env.onnxruntime}, onnx {env.onnx}, "
        f"torch-pruning {env.torch_pruning}"
    )
