"""A job's lifecycle: its statuses, and the stages a running job goes through, in order,
with their share of the progress bar. One definition for the API, the job store, the
worker and the dashboard's figures."""

from typing import Literal

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JOB_STATUSES: tuple[JobStatus, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
# A job in one of these never changes again.
TERMINAL_STATUSES: frozenset[JobStatus] = frozenset({"succeeded", "failed", "cancelled"})

Stage = Literal[
    "loading",
    "analyzing",
    "regularizing",
    "pruning",
    "finetuning",
    "evaluating",
    "exporting",
    "quantizing",
    "benchmarking",
]

# Rough share of wall time per stage; only used to turn per-stage progress into one
# monotone 0..1 figure. Stages a job skips simply jump.
STAGES: dict[str, float] = {
    "loading": 0.03,
    "analyzing": 0.07,
    "regularizing": 0.10,
    "pruning": 0.20,
    "finetuning": 0.30,
    "evaluating": 0.05,
    "exporting": 0.08,
    "quantizing": 0.05,
    "benchmarking": 0.12,
}


def overall_progress(stage: str, fraction: float) -> float:
    """Map progress within `stage` (0..1) onto the whole job (0..1)."""
    done = 0.0
    for name, share in STAGES.items():
        if name == stage:
            return min(1.0, done + share * max(0.0, min(1.0, fraction)))
        done += share
    raise ValueError(f"unknown stage {stage!r}")
