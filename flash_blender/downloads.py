""""Download base weights": run the engine's downloader in a subprocess and follow it.

Pure Python (no bpy, no torch). The download runs in the engine's own environment, the one
that has huggingface_hub: ``<engine python> -m flash_engine.weights fetch --dest DIR --json``
(``HF_ENDPOINT`` and the other hub settings pass through). It prints one JSON object a
line (progress, done, error), which become the progress bar. Cancel ends the process; the
bytes it got stay in ``DIR/.flash-download`` and the next run continues from them.
"""

from __future__ import annotations

import json
import time

from .process_run import ProcessRun


def fetch_command(python: str, dest) -> list[str]:
    return [python, "-m", "flash_engine.weights", "fetch", "--dest", str(dest), "--json"]


def format_size(count: int | None) -> str:
    if count is None:
        return "?"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"


def state_text(state: dict) -> str:
    """One line for the preferences from ``flash_engine.weights.download_state``."""
    if state["state"] == "complete":
        return f"Base weights: downloaded ({format_size(state['total'])})"
    if state["state"] == "partial":
        return (f"Base weights: {format_size(state['done'])} of {format_size(state['total'])} downloaded "
                "(Resume continues)")
    return "Base weights: not downloaded (the built-in model animates until they are)"


class DownloadRun(ProcessRun):
    """One downloader run: events arrive on a thread; the UI polls without blocking."""

    thread_name = "flash-download-output"

    def __init__(self, command: list[str], env: dict | None = None, cwd: str | None = None, clock=time.monotonic):
        self.done, self.total, self.file = 0, None, ""
        self.cancelled = False
        self.output: list[str] = []  # what was not an event (tracebacks, warnings): for the error
        self._clock = clock
        self._rate: tuple | None = None  # (when, bytes then, bytes/s), from the first event on
        super().__init__(command, env=env, cwd=cwd)

    def on_line(self, line: str) -> None:
        line = line.strip()
        try:
            event = json.loads(line) if line.startswith("{") else None
        except ValueError:
            event = None
        if not isinstance(event, dict):
            if line:
                self.output = (self.output + [line])[-20:]
            return
        kind = event.get("event")
        if kind in ("progress", "done"):
            self._progress(int(event.get("done") or 0), event.get("total"), event.get("file", ""))
        elif kind == "error":
            hint = event.get("hint")
            self.error = event.get("message", "the download failed") + (f" ({hint})" if hint else "")

    def on_exit(self, code: int) -> None:
        if code != 0 and not self.error and not self.cancelled:
            last = self.output[-1] if self.output else ""
            self.error = f"the download stopped with code {code}" + (f": {last}" if last else "")

    def _progress(self, done: int, total, file: str) -> None:
        now = self._clock()
        if self._rate is None:  # a resumed download starts with bytes it did not fetch now
            self._rate = (now, done, 0.0)
        when, before, _ = self._rate
        if now - when >= 1.0:  # a rate over the last second or so, not per event
            self._rate = (now, done, max(done - before, 0) / (now - when))
        self.done, self.total, self.file = done, total, file

    @property
    def ok(self) -> bool:
        return self.finished and self.returncode == 0 and not self.cancelled

    @property
    def factor(self) -> float:
        with self._lock:
            return min(1.0, self.done / self.total) if self.total else 0.0

    @property
    def text(self) -> str:
        with self._lock:
            done, total, error = self.done, self.total, self.error
            rate = self._rate[2] if self._rate else 0.0
        if self.finished:
            if self.cancelled:
                return f"Download cancelled at {format_size(done)} of {format_size(total)} (Resume continues)"
            return "Base weights downloaded" if self.returncode == 0 else f"Download failed: {error}"
        if total is None:
            return "Asking the model hub for the files"
        speed = f" · {format_size(int(rate))}/s" if rate else ""
        return f"{format_size(done)} of {format_size(total)}{speed}"

    def cancel(self) -> None:
        """Stop the download; what it got stays for the next run. Returns at once (the UI
        must not wait for it): the downloader closes its file and exits, and the job loop
        sees it finish."""
        with self._lock:
            if self.returncode is None:
                self.cancelled = True
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
