"""How the add-on drives a long job (an animate or training job, the engine setup, the
weights download), written once.

Pure Python (no bpy). A :class:`JobLoop` says how to move a job on without blocking
(``advance``), what to print while it runs, how to stop it, and what to report at its end
(``finish``). :func:`run_blocking` drives it in background mode and from scripts;
``operators/modal.py`` drives the same loop from a window timer (a modal operator) or a
persistent application timer in the UI.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Outcome:
    """What a job's end reports: ``ok`` (the operator FINISHED) and one line at ``level``."""

    ok: bool
    message: str = ""
    level: str = ""  # INFO, WARNING or ERROR; empty: INFO when ok, else ERROR

    @property
    def report_level(self) -> str:
        return self.level or ("INFO" if self.ok else "ERROR")


def _no_lines() -> list[str]:
    return []


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class JobLoop:
    advance: Callable[[], bool]  # moves the job on, never blocks; True once it is finished
    finish: Callable[[], Outcome]  # once, after it finished: tidy up, say what happened
    lines: Callable[[], list[str]] = _no_lines  # the console lines since the last call (blocking mode)
    stop: Callable[[], None] = _nothing  # Blender ended the job's operator, or Ctrl-C
    interval: float = 0.1  # seconds between advances
    stop_wait: float = 0.0  # after Ctrl-C: how long the job may take to stop cleanly (a checkpoint)


def run_blocking(loop: JobLoop, report: Callable[[str], None] = print, sleep=time.sleep,
                 clock=time.monotonic) -> Outcome:
    """Advance until finished, printing its lines; then its outcome. Ctrl-C stops the job,
    gives it ``stop_wait`` seconds to end, finishes it and raises again."""
    try:
        while True:
            finished = loop.advance()  # before the lines: once finished, every line is in
            for line in loop.lines():
                report(line)
            if finished:
                break
            sleep(loop.interval)
    except KeyboardInterrupt:
        loop.stop()
        deadline = clock() + loop.stop_wait
        while clock() < deadline and not loop.advance():
            sleep(loop.interval)
        loop.finish()
        raise
    return loop.finish()


def changed_lines(text: Callable[[], str], prefix: str = "FLASH: ", every_s: float = 0.0,
                  phase: Callable[[], object] | None = None, clock=time.monotonic) -> Callable[[], list[str]]:
    """A ``JobLoop.lines`` that prints ``text()`` when it changed: at most every ``every_s``
    seconds, except when ``phase()`` changed (a new phase always shows)."""
    last = {"text": None, "phase": object(), "time": float("-inf")}

    def lines() -> list[str]:
        now, current = clock(), text()
        current_phase = phase() if phase is not None else None
        if current == last["text"] or (current_phase == last["phase"] and now - last["time"] < every_s):
            return []
        last.update(text=current, phase=current_phase, time=now)
        return [prefix + current]

    return lines
