"""A running animate job as the panel sees it: state, phase, step, ETA, result or error.

Pure Python (no bpy). :class:`AnimateJob` is driven by ``tick()`` — by the job loop
(``job_loop.py``): from a timer in the UI, blocking in background mode — and never blocks: it
polls the engine manager until the engine is up, submits the request, then drains the
engine's events and reads the job's state from the client.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .takes import check_model_limits

# phase → (label, where it starts and ends on the overall bar)
PHASES = {
    "render": ("Rendering reference", 0.0, 0.02),
    "start": ("Starting engine", 0.02, 0.08),
    "submitted": ("Waiting for the engine", 0.08, 0.1),
    "load": ("Loading model", 0.1, 0.2),
    "encode": ("Encoding reference", 0.2, 0.25),
    "denoise": ("Denoising", 0.25, 0.9),
    "decode": ("Decoding frames", 0.9, 1.0),
}


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}:{seconds:02d}"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


def one_line(error: BaseException | str) -> str:
    """An error as one line: FlashError-style errors already read "message (fix)"."""
    text = " ".join(str(error).split())
    return text or type(error).__name__


@dataclass
class Progress:
    phase: str = "start"
    step: int = 0
    total: int = 0
    eta_s: float | None = None

    @property
    def label(self) -> str:
        return PHASES.get(self.phase, (self.phase.capitalize(), 0, 1))[0]

    @property
    def factor(self) -> float:
        """Overall completion, 0..1 (phases weighted by their usual share of the time)."""
        _, low, high = PHASES.get(self.phase, ("", 0.0, 1.0))
        inner = self.step / self.total if self.total > 0 else 0.0
        return max(0.0, min(1.0, low + (high - low) * min(1.0, inner)))

    @property
    def text(self) -> str:
        parts = [self.label]
        if self.total > 1:
            parts[0] += f" {self.step}/{self.total}"
        if self.eta_s is not None:
            parts.append(f"ETA {format_eta(self.eta_s)}")
        return " · ".join(parts)


class AnimateJob:
    """One animate request, from starting the engine to its result."""

    job_type = "animate"  # the engine request this job submits (TrainJob: "train")

    def __init__(self, manager, config, args: dict, meta=None, clock=time.monotonic):
        self.manager, self.config, self.args = manager, config, dict(args)
        self.meta = meta  # what its end needs: the take (takes.Take), or a training's dict
        self.state = "starting"  # starting → running → done | failed | cancelled
        self.progress = self.phase_progress("start")
        self.job_id: str | None = None
        self.client = None
        self.result: dict | None = None
        self.error: BaseException | None = None
        self.logs: list[str] = []
        self.engine_logs: list[str] = []  # engine-level log lines not tied to the job
        self.started = clock()
        self._clock = clock
        self._cancel_requested = False
        manager.start(config)

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    @property
    def elapsed(self) -> float:
        return self._clock() - self.started

    @property
    def error_line(self) -> str:
        return one_line(self.error) if self.error is not None else ""

    @property
    def error_code(self) -> str | None:
        return getattr(self.error, "code", None) if self.error is not None else None

    def _fail(self, error: BaseException) -> bool:
        self.error = error
        self.state = "cancelled" if getattr(error, "code", None) == "cancelled" else "failed"
        return True

    def tick(self) -> bool:
        """Advance; True once finished. Never blocks."""
        if self.finished:
            return True
        if self.state == "starting":
            try:
                client = self.manager.ready()
            except Exception as err:
                return self._fail(err)
            if client is None:
                return False
            if self._cancel_requested:
                self.state = "cancelled"
                return True
            try:
                self.check_engine(client.hello_info or {})
                self.job_id = client.submit(self.job_type, self.args)
            except Exception as err:
                return self._fail(err)
            self.client, self.state = client, "running"
            self.progress = self.phase_progress("submitted")
        for event in self.client.poll_events():
            if event.get("type") == "log" and event.get("job") in (None, "") and event.get("request") in (None, ""):
                self.engine_logs.append(event.get("message", ""))
            elif event.get("job") == self.job_id or event.get("request") == self.job_id:
                self.on_event(event)
        state = self.client.job(self.job_id)
        if state.phase:
            self.progress = self.make_progress(state)
        self.logs = list(state.logs)
        if state.finished:
            if state.state == "done":
                self.result, self.state = state.result, "done"
                return True
            return self._fail(state.error)
        return False

    def check_engine(self, hello: dict) -> None:
        """Before submitting: refuse what the started engine's model cannot take (its
        ``hello``), so a too-long clip fails in one line before the job, not after a model load."""
        check_model_limits(self.args, hello.get("model_limits"))

    def on_event(self, event: dict) -> None:
        """Each engine event of this job, in order (subclasses keep what they need)."""

    def phase_progress(self, phase: str) -> Progress:
        """The progress shown before the engine reports steps."""
        return Progress(phase)

    def make_progress(self, state) -> Progress:
        return Progress(state.phase, state.step, state.total, state.eta_s)

    def cancel(self) -> None:
        """Ask the engine to stop this job (it stops within a step); the state follows."""
        self._cancel_requested = True
        if self.state == "starting":  # nothing submitted yet; a starting engine is kept for the next job
            self.state = "cancelled"
        elif self.state == "running" and self.client is not None:
            try:
                self.client.cancel(self.job_id, timeout=5)
            except Exception:  # already finished, or the engine is gone: tick() will tell
                pass

    def abandon(self, reason: str = "the job was stopped") -> None:
        """Cancel, and count the job as over now (nobody will tick it again: its modal
        operator ended, or the file it belonged to is closing)."""
        if self.finished:
            return
        self.cancel()
        self.state = "cancelled"
        self.error = self.error or RuntimeError(reason)


@dataclass
class SessionStatus:
    """What the panel shows between redraws; one per Blender session."""

    job: AnimateJob | None = None
    last_error: str = ""
    last_message: str = ""
    warnings: list[str] = field(default_factory=list)
    setup: object | None = None  # installer.SetupRun while "Set up engine" runs (or its last run)
    download: object | None = None  # downloads.DownloadRun while the base weights download (or its last run)
    # "Custom actions" in the preferences: the training job (training.TrainJob) and what it said
    training: AnimateJob | None = None
    train_error: str = ""
    train_message: str = ""
    train_notes: list[str] = field(default_factory=list)  # skipped clips, before and after the run

    @property
    def busy(self) -> bool:
        """An animate job runs."""
        return self.job is not None and not self.job.finished

    @property
    def training_busy(self) -> bool:
        return self.training is not None and not self.training.finished

    @property
    def engine_busy(self) -> bool:
        """The engine runs one job at a time: a second would wait behind the first."""
        return self.busy or self.training_busy

    def clear_train_messages(self) -> None:
        self.train_error, self.train_message, self.train_notes = "", "", []

    def clear_messages(self) -> None:
        self.last_error, self.last_message, self.warnings = "", "", []


STATUS = SessionStatus()
