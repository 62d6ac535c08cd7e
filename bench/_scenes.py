"""A labelled image task at any resolution, made here, for benchmarks that need trained
weights: scikit-learn's handwritten digits placed in cluttered colour scenes.

No image dataset can be downloaded, and a network with random weights has nothing to
lose gracefully, so its accuracy or agreement after pruning says little. Each scene is
one digit (the label), scaled and placed at random on a random dark background in a
random bright colour, beside a smaller distractor digit of another class and pixel
noise: hard enough that pruning costs accuracy a fine-tune must win back, small enough
to train a mobile network on in minutes on a GPU (longer on a CPU at low resolution).
"""

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class Scenes:
    """Images (N, 3, size, size) float32 and labels, split into training and test parts."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def _paste(canvas: torch.Tensor, digit: torch.Tensor, size: int, colour: torch.Tensor, gen):
    """Draw `digit` (8x8, 0..1) scaled to `size` pixels at a random place, in `colour`."""
    side = canvas.shape[-1]
    glyph = F.interpolate(digit[None, None], size=(size, size), mode="bilinear")[0, 0]
    top, left = (int(v) for v in torch.randint(0, side - size + 1, (2,), generator=gen))
    patch = canvas[:, top : top + size, left : left + size]
    canvas[:, top : top + size, left : left + size] = (
        patch * (1 - glyph) + colour[:, None, None] * glyph
    )


def make_scenes(size: int, seed: int = 0, test_share: float = 0.2) -> Scenes:
    """One scene per scikit-learn digit (1,797), seeded; a stratified test split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    digits = torch.from_numpy(data.images.astype(np.float32) / 16.0)
    labels = data.target.astype(np.int64)
    gen = torch.Generator().manual_seed(seed)
    by_class = [np.flatnonzero(labels != c) for c in range(10)]
    images = np.empty((len(labels), 3, size, size), dtype=np.float32)
    for i, digit in enumerate(digits):
        canvas = torch.rand(3, 1, 1, generator=gen).expand(3, size, size) * 0.4
        canvas = canvas.clone()
        others = by_class[labels[i]]
        distractor = digits[others[int(torch.randint(len(others), (1,), generator=gen))]]
        small = int(size * (0.2 + 0.1 * torch.rand(1, generator=gen)))
        _paste(canvas, distractor, small, 0.5 + 0.5 * torch.rand(3, generator=gen), gen)
        big = int(size * (0.4 + 0.3 * torch.rand(1, generator=gen)))
        _paste(canvas, digit, big, 0.6 + 0.4 * torch.rand(3, generator=gen), gen)
        canvas += 0.15 * torch.randn(canvas.shape, generator=gen)
        images[i] = ((canvas - 0.5) / 0.5).numpy()
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, labels, test_size=test_share, random_state=seed, stratify=labels
    )
    return Scenes(x_tr, y_tr, x_te, y_te)


def train_on(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    device: str,
    lr: float = 2e-3,
    batch_size: int = 64,
    seed: int = 0,
) -> nn.Module:
    """Plain cross-entropy training on `device`: AdamW with a cosine schedule (mobile
    networks trained from scratch for a few epochs get nowhere with plain SGD here),
    seeded shuffling and random shifts of up to an eighth of the image. Returns it on
    the CPU."""
    gen = torch.Generator().manual_seed(seed)
    model = model.to(device).train()
    # The whole set fits on any GPU here (224 px: under 1 GB); copying once is faster.
    xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * ((len(xt) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    shift = max(1, x.shape[-1] // 8)
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(xt), batch_size):
            idx = order[start : start + batch_size]
            dy, dx = (int(v) for v in torch.randint(-shift, shift + 1, (2,), generator=gen))
            idx = idx.to(device)
            batch = torch.roll(xt[idx], shifts=(dy, dx), dims=(2, 3))
            opt.zero_grad()
            F.cross_entropy(model(batch), yt[idx]).backward()
            opt.step()
            sched.step()
    _refresh_batchnorm(model, xt, batch_size)
    return model.cpu().eval()


@torch.no_grad()
def average_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Re-estimate BatchNorm running statistics as a plain (cumulative) average over
    `batches`, the rest of the model in eval mode (dropout and stochastic depth off, so
    they do not bias the statistics); returns the model in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    for batch in batches:
        model(batch)
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    return model.eval()


def _refresh_batchnorm(model: nn.Module, x: torch.Tensor, batch_size: int) -> None:
    """Statistics of the final weights, over up to 16 training batches. torchvision's
    mobile networks keep them with momentum 0.01: after a short training they lag far
    behind the weights, and in eval mode the network predicts one class however well it
    trained."""
    count = min(len(x), 16 * batch_size)
    average_batchnorm(model, (x[i : i + batch_size] for i in range(0, count, batch_size)))
