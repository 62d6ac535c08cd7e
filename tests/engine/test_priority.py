"""A niced engine process gives its session's autogroup the same nice value."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from worker.engine import priority


class FlakyFile:
    """Refuses the first `refusals` writes as the kernel's rate limit does (EAGAIN)."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.written: list[str] = []

    def exists(self) -> bool:
        return True

    def write_text(self, text: str) -> None:
        if self.refusals:
            self.refusals -= 1
            raise BlockingIOError("rate limited")
        self.written.append(text)


def test_the_nice_value_is_written_to_the_autogroup(monkeypatch, tmp_path: Path):
    autogroup = tmp_path / "autogroup"
    autogroup.write_text("/autogroup-1 nice 0\n")
    monkeypatch.setattr(priority, "AUTOGROUP", autogroup)
    monkeypatch.setattr(os, "getpriority", lambda *_: 10)
    assert priority.keep_niceness() == 10
    assert autogroup.read_text() == "10"


def test_nothing_is_done_at_normal_priority_or_without_autogroups(monkeypatch, tmp_path: Path):
    autogroup = tmp_path / "autogroup"
    autogroup.write_text("unchanged")
    monkeypatch.setattr(priority, "AUTOGROUP", autogroup)
    monkeypatch.setattr(os, "getpriority", lambda *_: 0)
    assert priority.keep_niceness() is None
    assert autogroup.read_text() == "unchanged"
    monkeypatch.setattr(os, "getpriority", lambda *_: 10)
    monkeypatch.setattr(priority, "AUTOGROUP", tmp_path / "missing")
    assert priority.keep_niceness() is None


def test_the_kernels_rate_limit_is_retried(monkeypatch):
    monkeypatch.setattr(priority, "_RETRY_S", 0.0)
    monkeypatch.setattr(os, "getpriority", lambda *_: 7)
    flaky = FlakyFile(refusals=2)
    monkeypatch.setattr(priority, "AUTOGROUP", flaky)
    assert priority.keep_niceness() == 7 and flaky.written == ["7"]
    always = FlakyFile(refusals=10)
    monkeypatch.setattr(priority, "AUTOGROUP", always)
    assert priority.keep_niceness() is None and always.written == []


CHILD = (
    "from worker.engine.priority import keep_niceness, AUTOGROUP\n"
    "print(keep_niceness(), AUTOGROUP.read_text().split()[-1])\n"
)


@pytest.mark.skipif(not priority.AUTOGROUP.exists(), reason="kernel without autogroups")
def test_a_niced_process_in_a_session_of_its_own_gets_a_niced_autogroup():
    # As the sandbox starts the engine: niced, in a new session (hence a new autogroup).
    out = subprocess.run(
        ["nice", "-n", "5", sys.executable, "-c", CHILD],
        capture_output=True,
        text=True,
        check=True,
        start_new_session=True,
        timeout=60,
    ).stdout.split()
    assert out == ["5", "5"]
