"""Shape-only forward passes: a module's tensors moved to PyTorch's meta device in place.

A protection trial asks one question of a pruned copy: does it still run, with the same
output shapes? On the meta device a tensor has a shape and no data, so pruning copies no
weights and a forward pass computes no values: each trial costs Python time only. For
torchvision's vit_h_14 (630 M weights) on two cores, a trial that prunes half its groups
took 6 s with the data and under half a second on meta. A graph of many small ops (a
converted ONNX Swin) runs no faster on meta than with the data; preflight measures both.

The tensors are swapped in place (`torch.utils.swap_tensors`), so every reference to
them, torch-pruning's dependency graph included, sees the change, and `MetaSwap` swaps
the data back afterwards. The swap needs each tensor to be held by nothing but its
module: autograd graphs that saved them must not exist (`no_saved_tensors` while
tracing). A model that cannot be swapped, or that does not run on meta (an op without a
meta kernel, a value read from a tensor), is `None` from `MetaSwap.of`.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from worker.engine.outputs import flatten_outputs


@contextlib.contextmanager
def no_saved_tensors() -> Iterator[None]:
    """Autograd saves shape-only stand-ins rather than the tensors themselves.

    For tracing that only walks the graph's structure (torch-pruning reads no saved
    tensor, only saved sizes and dims): the weights stay free to swap, and a large
    model's activations are not kept alive by the traced graph."""

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(tensor, device="meta")

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda stand_in: stand_in):
        yield


class MetaSwap:
    """A module's tensors, swappable between their data and meta stand-ins."""

    def __init__(self, tensors: list[torch.Tensor]) -> None:
        self._tensors = tensors
        self._others = [_meta_twin(t) for t in tensors]
        self.on_meta = False
        self.forward_s = 0.0  # one forward pass on meta, as measured by `of`

    @classmethod
    def of(
        cls, module: nn.Module, inputs: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor]
    ) -> MetaSwap | None:
        """The swap for `module`, when on meta it gives `outputs`' shapes from `inputs`."""
        swap = cls(_tensors_of(module))
        try:
            with swap.active():
                started = time.perf_counter()
                with torch.no_grad():
                    got = flatten_outputs(module(*swap.inputs(inputs)))
                swap.forward_s = time.perf_counter() - started
        except Exception:  # a tensor held elsewhere, no meta kernel, a value read: no swap
            return None
        same = len(got) == len(outputs) and all(
            g.shape == o.shape for g, o in zip(got, outputs, strict=True)
        )
        return swap if same else None

    def inputs(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return tuple(_meta_twin(t) for t in inputs) if self.on_meta else tuple(inputs)

    def to_meta(self) -> None:
        if not self.on_meta:
            self._swap()
            self.on_meta = True

    def to_real(self) -> None:
        if self.on_meta:
            self._swap()
            self.on_meta = False

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        self.to_meta()
        try:
            yield
        finally:
            self.to_real()

    def _swap(self) -> None:
        # The analysis watchdog interrupts with SIGALRM; half a swap must never be left.
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        try:
            self._swap_all()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)

    def _swap_all(self) -> None:
        done = 0
        try:
            for tensor, other in zip(self._tensors, self._others, strict=True):
                torch.utils.swap_tensors(tensor, other)
                done += 1
        except RuntimeError:
            for tensor, other in zip(self._tensors[:done], self._others[:done], strict=True):
                torch.utils.swap_tensors(tensor, other)  # all or nothing
            raise


def cannot_tell(exc: BaseException) -> bool:
    """Whether a failure on meta is the meta device's own (a value it does not have, a
    kernel it lacks, a tensor left on another device) rather than the model's."""
    text = str(exc).lower()
    return isinstance(exc, NotImplementedError) or "meta" in text or "device" in text


def _tensors_of(module: nn.Module) -> list[torch.Tensor]:
    """Parameters, buffers and plain tensor attributes (an FX graph's constants), once each:
    the floating-point ones. Integer tensors stay: they hold sizes, axes and indices that
    a converted graph reads as numbers (an ONNX Slice's starts and ends)."""
    found: dict[int, torch.Tensor] = {}
    for layer in module.modules():
        values: list[Any] = [
            *layer._parameters.values(),
            *layer._buffers.values(),
            *vars(layer).values(),
        ]
        for value in values:
            if (
                isinstance(value, torch.Tensor)
                and value.device.type != "meta"
                and value.is_floating_point()
            ):
                found.setdefault(id(value), value)
    return list(found.values())


def _meta_twin(tensor: torch.Tensor) -> torch.Tensor:
    twin = torch.empty_like(tensor, device="meta")
    if isinstance(tensor, nn.Parameter):
        return nn.Parameter(twin, requires_grad=tensor.requires_grad)
    return twin
