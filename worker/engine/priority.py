"""A niced engine process stays niced against the rest of the machine.

The worker starts a job's engine at a low priority (`SECATEURS_JOB_NICENESS`) so that, on
a machine it shares with the API, status polls keep their CPU. But Linux kernels with
autogroup scheduling (`/proc/sys/kernel/sched_autogroup_enabled`, on by default in most
distributions) share the CPU between sessions first and apply nice values only within a
session; the sandbox starts the engine in a session of its own, so its nice value meant
nothing: measured with 100 polling connections on two cores, the job still took 70% of a
core. Giving the session's autogroup the process's own nice value restores the intent.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

AUTOGROUP = Path("/proc/self/autogroup")
# The kernel lets an unprivileged process change an autogroup's nice once per 100 ms
# across the whole machine (EAGAIN otherwise).
_RETRY_S = 0.11


def keep_niceness() -> int | None:
    """Set this session's autogroup to this process's nice value, when it is above 0.
    Returns the value set, or None where there is nothing to do or it cannot be done."""
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    if nice <= 0 or not AUTOGROUP.exists():
        return None
    for attempt in range(3):
        try:
            AUTOGROUP.write_text(str(nice))
            return nice
        except BlockingIOError:
            time.sleep(_RETRY_S * (attempt + 1))
        except OSError:
            return None
    return None
