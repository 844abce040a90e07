""""Set up engine": run the engine installer in a subprocess and follow its output.

Pure Python (no bpy). The installer is ``python -m flash_engine.setup --env DIR``, run with
Blender's own interpreter (``sys.executable``) and the bundled engine on PYTHONPATH. Its
lines ``[n/N] title`` mark the steps, which become the progress bar.
"""

from __future__ import annotations

import collections
import os
import re
import sys
from pathlib import Path

from .process_run import ProcessRun

STEP = re.compile(r"^\[(\d+)/(\d+)\]\s*(.*)$")
LINES_KEPT = 400


def setup_command(env_dir: Path, python: str = sys.executable) -> list[str]:
    return [python, "-m", "flash_engine.setup", "--env", str(env_dir)]


def child_environment(engine_path: Path | None) -> dict:
    """Blender's Python settings stay out of the child; the bundled engine goes on its path."""
    env = dict(os.environ)
    for name in ("PYTHONHOME", "PYTHONSTARTUP", "PYTHONEXECUTABLE", "__PYVENV_LAUNCHER__"):
        env.pop(name, None)
    if engine_path is not None:
        env["PYTHONPATH"] = str(engine_path)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # the installer runs from the extension folder: leave it as installed
    return env


class SetupRun(ProcessRun):
    """One installer run: lines arrive on a thread; ``poll()`` from the UI never blocks."""

    thread_name = "flash-setup-output"

    def __init__(self, command: list[str], env: dict | None = None, cwd: str | None = None):
        self.lines: collections.deque[str] = collections.deque(maxlen=LINES_KEPT)
        self.step = (0, 0, "")  # (n, N, title) of the last "[n/N] title" line
        self.count = 0  # lines read so far (the deque keeps the last LINES_KEPT)
        self._expect_hint = False
        super().__init__(command, env=env, cwd=cwd)

    def on_start_failed(self) -> None:
        self.lines.append(self.error)

    def on_line(self, line: str) -> None:
        self.lines.append(line)
        self.count += 1
        match = STEP.match(line)
        if match:
            self.step = (int(match.group(1)), int(match.group(2)), match.group(3))
        if line.startswith("error: "):  # the installer's last words: "error: what" then "  the fix"
            self.error, self._expect_hint = line[len("error: "):].strip(), True
        elif self._expect_hint:
            if line.strip():
                self.error += f" ({line.strip()})"
            self._expect_hint = False

    def on_exit(self, code: int) -> None:
        if code != 0 and not self.error:
            self.error = f"the engine setup exited with code {code}"

    @property
    def ok(self) -> bool:
        return self.finished and self.returncode == 0

    @property
    def factor(self) -> float:
        n, total, _ = self.step
        if self.finished:
            return 1.0
        return (max(n - 1, 0) + 0.5) / total if total else 0.0

    @property
    def text(self) -> str:
        n, total, title = self.step
        if self.finished:
            return "Engine ready" if self.ok else f"Setup failed: {self.error}"
        return f"[{n}/{total}] {title}" if total else "Starting the installer"

    def tail(self, count: int = 8) -> list[str]:
        with self._lock:
            return list(self.lines)[-count:]

    def new_lines(self, seen: int) -> tuple[list[str], int]:
        """The lines read after the first ``seen`` (those still kept), and the new count."""
        with self._lock:
            lines, count = list(self.lines), self.count
        first_kept = count - len(lines)
        return lines[max(seen - first_kept, 0):], count
