"""A one-line progress display for a terminal, without extra dependencies."""

from __future__ import annotations

import sys
from typing import Any, TextIO


class TerminalProgress:
    """Shows a job's status, stage and progress. On a terminal one line is rewritten in
    place (`\\r`); elsewhere (a log file, CI) a line is printed whenever the status or
    stage changes."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._last = ""
        self._width = 0

    def __call__(self, state: dict[str, Any]) -> None:
        status, stage = state.get("status") or "running", state.get("stage")
        fraction = float(state.get("progress") or 0.0)
        bar = "#" * int(fraction * 20)
        text = f"{status:<9} {stage or '':<13} [{bar:<20}] {fraction:6.1%}"
        if self.tty:
            if text != self._last:
                self.stream.write("\r" + text.ljust(self._width))
                self._width = max(self._width, len(text))
                self.stream.flush()
        elif text.split("[")[0] != self._last.split("[")[0]:
            self.stream.write(text + "\n")
            self.stream.flush()
        self._last = text

    def close(self) -> None:
        """End the line (on a terminal) so that later output starts on a fresh one."""
        if self.tty and self._last:
            self.stream.write("\n")
            self.stream.flush()
        self._last = ""
