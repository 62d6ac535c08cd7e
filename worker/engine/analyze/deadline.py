"""Time budgets for the analysis, and a watchdog for calls that may not return.

A job runs in its own worker process, in that process's main thread, so a call into
torch-pruning that loops (group discovery on a graph whose index sets multiply) can be
interrupted the way a terminal interrupts a program: a real-time interval timer
(`signal.setitimer`) delivers SIGALRM every `TICK_S` seconds, and its handler raises
in the main thread, out of whatever Python code is running there (the handler runs
between bytecodes; a single C call is left when it returns to Python). The handler
raises `JobCancelled` when the client cancelled and `AnalysisTimeout` once the budget is
spent. Outside the main thread (a test runner's worker thread, an embedding service) no
signal can be used: the watchdog only checks at the callers' own checkpoints.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import Any

from worker.engine.errors import AnalysisTimeout, JobCancelled

# How often the watchdog looks at the clock and the cancel flag: at least once a second.
TICK_S = 0.25
# Analysis budget: a base plus an allowance per prunable layer, capped.
BASE_S, PER_LAYER_S, MAX_S = 20.0, 0.25, 120.0
# Trial forward passes the analysis makes per prunable layer, about: a group's trial
# prunes a copy and runs it once or twice, and most groups hold one or two roots.
TRIALS_PER_LAYER = 1.0


def analysis_budget(layers: int, forward_s: float = 0.0) -> float:
    """Seconds the analysis of a model with `layers` conv/linear layers may take, when one
    forward pass of it takes `forward_s`: the same layer count costs more trials' time
    in a larger model (a Swin-B at 224 pixels against a Swin-T at 128)."""
    return min(MAX_S, BASE_S + layers * (PER_LAYER_S + TRIALS_PER_LAYER * forward_s))


def timed_forward(module: Callable[..., Any], inputs: Sequence[Any]) -> tuple[Any, float]:
    """`module(*inputs)` without gradients, and the seconds it took."""
    import torch

    started = time.perf_counter()
    with torch.no_grad():
        out = module(*inputs)
    return out, time.perf_counter() - started


class Deadline:
    """A point in time after which analysis stops, and the client's cancel flag."""

    def __init__(self, seconds: float, should_cancel: Callable[[], bool] | None = None) -> None:
        self.seconds = seconds
        self.ends = time.monotonic() + seconds
        self._should_cancel = should_cancel

    def cancelled(self) -> bool:
        return bool(self._should_cancel and self._should_cancel())

    def expired(self) -> bool:
        return time.monotonic() >= self.ends

    def check(self, what: str) -> None:
        """Raise JobCancelled or AnalysisTimeout (naming `what`) when it is time to stop."""
        if self.cancelled():
            raise JobCancelled()
        if self.expired():
            raise AnalysisTimeout(
                f"{what} did not finish within the analysis budget of {self.seconds:.0f} s"
            )


@contextmanager
def watchdog(deadline: Deadline, what: str) -> Iterator[None]:
    """Interrupt the code inside (main thread only) when `deadline.check` would raise."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_tick(_signum: int, _frame: FrameType | None) -> None:
        deadline.check(what)

    previous = signal.signal(signal.SIGALRM, on_tick)
    signal.setitimer(signal.ITIMER_REAL, TICK_S, TICK_S)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        signal.signal(signal.SIGALRM, previous)
