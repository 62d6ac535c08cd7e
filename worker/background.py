"""Threads that live beside the worker's main process (the sweeper, webhook delivery)."""

import threading
from collections.abc import Callable
from typing import Any, Protocol

from celery.signals import worker_ready, worker_shutdown


class StoppableThread(Protocol):
    stopped: threading.Event

    def start(self) -> None: ...


def run_while_worker_runs(make_thread: Callable[[], StoppableThread]) -> None:
    """Start the thread `make_thread` builds once the worker is ready (not at import: a
    forked child must not inherit it) and ask it to stop at the worker's shutdown."""
    state: dict[str, StoppableThread] = {}

    @worker_ready.connect(weak=False)
    def _start(**_: Any) -> None:
        state["thread"] = make_thread()
        state["thread"].start()

    @worker_shutdown.connect(weak=False)
    def _stop(**_: Any) -> None:
        if "thread" in state:
            state["thread"].stopped.set()
