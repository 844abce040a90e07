"""A child process whose output the UI follows: lines arrive on a thread, ``poll`` never blocks.

Pure Python (no bpy). The engine setup (``installer.SetupRun``) and the weights download
(``downloads.DownloadRun``) are both one of these: they say what a line means
(``on_line``) and what the exit code means (``on_exit``); starting, reading, the lock and
stopping are here once.
"""

from __future__ import annotations

import subprocess
import threading

STOP_WAIT_S = 10.0  # how long a stopped child may take to close its files before it is killed


class ProcessRun:
    """Runs ``command`` with stdout and stderr merged; subclasses interpret its lines."""

    thread_name = "flash-process-output"

    def __init__(self, command: list[str], env: dict | None = None, cwd: str | None = None):
        self.command = list(command)
        self.returncode: int | None = None
        self.error = ""
        self._lock = threading.Lock()
        try:
            self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, text=True, errors="replace", env=env, cwd=cwd)
        except OSError as err:
            self.process, self.returncode = None, 127
            self.error = f"cannot run {command[0]}: {err}"
            self._thread = None
            self.on_start_failed()
            return
        self._thread = threading.Thread(target=self._read, name=self.thread_name, daemon=True)
        self._thread.start()

    # -- what a subclass says ------------------------------------------------------------

    def on_line(self, line: str) -> None:
        """One line of output (without its newline), called with the lock held."""

    def on_exit(self, code: int) -> None:
        """The process ended with ``code``, called with the lock held, before ``returncode`` is set."""

    def on_start_failed(self) -> None:
        """The command could not be started (``error`` says why)."""

    # -- the rest ------------------------------------------------------------------------

    def _read(self) -> None:
        code = None
        try:
            for raw in self.process.stdout:
                with self._lock:
                    self.on_line(raw.rstrip("\r\n"))
            code = self.process.wait()
        except Exception as err:  # a line it could not read: the run ends, it does not hang as "running"
            self.process.kill()
            code = self.process.wait()
            with self._lock:
                self.error = self.error or f"could not follow {self.command[0]}: {err}"
        finally:
            with self._lock:
                if code is None:
                    code = self.process.poll() if self.process.poll() is not None else -1
                self.on_exit(code)
                self.returncode = code

    @property
    def finished(self) -> bool:
        with self._lock:
            return self.returncode is not None

    def stop(self) -> None:
        """End the process (terminate, then kill) and wait for its output to be read."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self._thread is not None:
            self._thread.join(5)
