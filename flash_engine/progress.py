"""Progress with an ETA, for stderr lines and protocol events alike."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass


@dataclass
class ProgressUpdate:
    phase: str
    step: int
    total: int
    eta_s: float | None

    def line(self) -> str:
        eta = f" ETA {self.eta_s:.0f}s" if self.eta_s is not None else ""
        return f"{self.phase} {self.step}/{self.total}{eta}"


class ProgressTracker:
    """Turns (phase, step, total) calls into updates; the ETA is for the current phase."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.phase = None
        self.phase_start = 0.0
        self.first_step_at = None

    def update(self, phase: str, step: int, total: int) -> ProgressUpdate:
        now = self.clock()
        if phase != self.phase:
            self.phase, self.phase_start, self.first_step_at = phase, now, None
        eta = None
        if step >= 1 and total > 0:
            # measure from the first finished step: the first one carries warm-up costs
            if self.first_step_at is None:
                self.first_step_at = (now, step)
            start_time, start_step = self.first_step_at
            done = step - start_step
            if done > 0:
                eta = (now - start_time) / done * (total - step)
            elif step >= total:
                eta = 0.0
        return ProgressUpdate(phase, step, total, eta)


def stderr_progress():
    tracker = ProgressTracker()
    interactive = sys.stderr.isatty()

    def report(phase: str, step: int, total: int) -> None:
        update = tracker.update(phase, step, total)
        end = "\r" if interactive and step < total else "\n"
        if interactive or step in (0, total) or step % max(1, total // 5) == 0:
            print(f"  {update.line():<40}", end=end, file=sys.stderr, flush=True)

    return report
