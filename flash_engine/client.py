"""Start and talk to the engine service from any Python (Blender's included).

Standard library only, like ``protocol``: the add-on imports this module and nothing else
from the engine. The engine runs in its own interpreter (the managed environment, or a
Python the user points at) as ``python -m flash_engine serve``; a crash or an out-of-memory
kill there ends a process, never Blender.

Two ways to use it::

    engine = EngineClient(python="/path/to/env/bin/python", engine_path=addon_dir)
    engine.start()                                   # starts the service and says hello

    # blocking (scripts, tests): returns the result data or raises EngineError
    result = engine.animate({"image": ..., "out": ..., "action": "soccer_shoot"}, timeout=600)

    # polling (a Blender modal operator or timer): never blocks
    job = engine.submit("animate", {...})
    for event in engine.poll_events(): ...          # every event, in order
    state = engine.job(job)                          # state, phase, step, total, eta_s, result, error
    engine.cancel(job)

A reading thread turns the engine's stdout into events; another keeps the last lines of
its stderr (and appends them to ``log_path``). When the engine dies, every waiting call
raises EngineDied, ``engine.death`` says how (exit code or signal, last stderr lines), and
``engine.restart()`` starts a fresh one.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from flash_engine import protocol as P
from flash_engine.errors import FlashError

SERVE_COMMAND = ("-m", "flash_engine", "serve")
START_TIMEOUT_S = 180.0  # a cold start imports torch and diffusers: seconds warm, a minute on a cold disk
CONTROL_TIMEOUT_S = 60.0  # hello/status/cancel/release answer at once once torch is imported
STDERR_LINES_KEPT = 200
EVENTS_KEPT = 10_000  # poll_events backlog; the oldest go first when nobody polls


class EngineError(FlashError):
    """An error event from the engine (or the client's own: timeout, engine_died)."""

    def __init__(self, message: str, hint: str = "", code: str = P.INTERNAL, job: str | None = None,
                 request: str | None = None):
        super().__init__(message, hint, code=code)
        self.job, self.request = job, request

    @classmethod
    def from_event(cls, event: dict) -> "EngineError":
        return cls(event.get("message", ""), event.get("hint", ""), code=event.get("code", P.INTERNAL),
                   job=event.get("job"), request=event.get("request"))


class EngineTimeout(EngineError):
    def __init__(self, message: str, hint: str = "", job: str | None = None, request: str | None = None):
        super().__init__(message, hint, code="timeout", job=job, request=request)


@dataclasses.dataclass(frozen=True)
class EngineDeath:
    """How the engine process ended."""

    returncode: int | None
    signal: str | None  # "SIGKILL" when a signal ended it (POSIX)
    stderr_tail: tuple[str, ...]
    expected: bool  # we asked it to stop (close/shutdown/kill by the client)

    def describe(self) -> str:
        if self.signal:
            how = f"killed by signal {self.signal}"
        elif self.returncode is None:
            how = "closed its output"
        elif self.returncode == 0:
            how = "exited"
        elif sys.platform == "win32" and self.returncode < 0 or self.returncode > 0xFFFF:
            how = f"exited with status 0x{self.returncode & 0xFFFFFFFF:08X}"  # an NTSTATUS such as an access violation
        else:
            how = f"exited with code {self.returncode}"
        return f"the engine {how}"

    def hint(self) -> str:
        last = next((line for line in reversed(self.stderr_tail) if line.strip()), "")
        parts = []
        if self.signal == "SIGKILL":
            parts.append("if nobody killed it, the system probably ran out of memory: "
                         "try fewer frames or a lower resolution")
        if last:
            parts.append(f"its last output: {last.strip()}")
        parts.append("restart the engine")
        return "; ".join(parts)


class EngineDied(EngineError):
    def __init__(self, death: EngineDeath, job: str | None = None, request: str | None = None):
        super().__init__(death.describe(), death.hint(), code=P.ENGINE_DIED, job=job, request=request)
        self.death = death


@dataclasses.dataclass
class JobState:
    """What the client knows of one job, from its events."""

    id: str
    type: str
    state: str = "submitted"  # submitted → queued → running → done | failed | cancelled
    queue_position: int | None = None
    phase: str | None = None
    step: int = 0
    total: int = 0
    eta_s: float | None = None
    result: dict | None = None
    error: EngineError | None = None
    logs: list = dataclasses.field(default_factory=list)
    events: list = dataclasses.field(default_factory=list, repr=False)

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")


def engine_environment(engine_path: str | os.PathLike | None = None, extra: dict | None = None,
                       base: dict | None = None) -> dict:
    """The environment for the engine's interpreter.

    Blender's own Python settings must not leak into another interpreter: PYTHONHOME would
    make it load Blender's standard library. ``engine_path`` is the folder that holds the
    ``flash_engine`` package (the add-on ships it inside the extension folder), which the
    engine never writes into: no bytecode caches there.
    """
    env = dict(os.environ if base is None else base)
    for name in ("PYTHONHOME", "PYTHONSTARTUP", "PYTHONEXECUTABLE", "__PYVENV_LAUNCHER__"):
        env.pop(name, None)
    if engine_path is not None:
        env["PYTHONPATH"] = str(Path(engine_path))
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no __pycache__ inside the installed extension
    env.update(extra or {})
    return env


def cuda_device_count(python: str | os.PathLike = sys.executable, engine_path: str | os.PathLike | None = None,
                      timeout: float = START_TIMEOUT_S) -> int:
    """How many CUDA GPUs the engine's own torch sees (0: none, or a CPU build), asked of its
    interpreter without starting an engine: the add-on never imports torch itself."""
    code = "import torch; print(torch.cuda.device_count())"
    fix = "check the engine's Python in the add-on's preferences, or set up the engine"
    try:
        proc = subprocess.run([str(python), "-c", code], env=engine_environment(engine_path), capture_output=True,
                              text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise EngineError(f"cannot ask the engine how many CUDA GPUs it sees: {err}", fix,
                          code="engine_unstartable") from err
    words = proc.stdout.split()
    if proc.returncode != 0 or not words or not words[-1].isdigit():
        last = next((line.strip() for line in reversed(proc.stderr.splitlines()) if line.strip()),
                    f"exit code {proc.returncode}")
        raise EngineError(f"cannot ask the engine how many CUDA GPUs it sees: {last}", fix, code="engine_unstartable")
    return int(words[-1])


class EngineClient:
    """One engine process and the conversation with it. Thread-safe."""

    def __init__(self, python: str | os.PathLike = sys.executable, serve_args: list[str] | tuple = (), *,
                 engine_path: str | os.PathLike | None = None, env: dict | None = None,
                 cwd: str | os.PathLike | None = None, log_path: str | os.PathLike | None = None,
                 client_name: str | None = None):
        self.python = str(python)
        self.client_name = client_name  # sent with hello, for the engine's log
        self.serve_args = [str(arg) for arg in serve_args]
        self.engine_path, self.extra_env, self.cwd = engine_path, env, cwd
        self.log_path = Path(log_path) if log_path else None
        self.process: subprocess.Popen | None = None
        self.hello_info: dict | None = None
        self.death: EngineDeath | None = None
        self.bad_lines = 0  # stdout lines that were not protocol events (there should be none)
        self._cond = threading.Condition()
        self._write_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._jobs: dict[str, JobState] = {}
        self._replies: dict[str, dict | None] = {}  # control request id → its result/error event
        self._events: collections.deque = collections.deque(maxlen=EVENTS_KEPT)
        self._stderr: collections.deque = collections.deque(maxlen=STDERR_LINES_KEPT)
        self._threads: list[threading.Thread] = []
        self._closing = False

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.death is None and self.process.poll() is None

    def start(self, timeout: float = START_TIMEOUT_S) -> dict:
        """Start the service and wait for its hello; returns the hello data (versions, device, weights)."""
        if self.alive:
            raise EngineError("the engine is already running", "call restart() for a fresh one", code="busy")
        self.death, self._closing = None, False
        self._stderr.clear()
        flags = {"creationflags": subprocess.CREATE_NO_WINDOW} if sys.platform == "win32" else {
            "start_new_session": True}  # Ctrl-C in Blender's terminal is not meant for the engine
        try:
            self.process = subprocess.Popen(
                [self.python, *SERVE_COMMAND, *self.serve_args],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=engine_environment(self.engine_path, self.extra_env), cwd=self.cwd, **flags,
            )
        except OSError as err:  # no such file, not executable
            raise EngineError(f"cannot start the engine with {self.python}: {err.strerror or err}",
                              "check the engine's Python in the add-on's preferences, or set up the engine",
                              code="engine_unstartable") from err
        process = self.process
        # stderr's reader first: the events reader joins it when the process dies
        self._threads = [
            threading.Thread(target=self._read_stderr, args=(process,), name="flash-client-stderr", daemon=True),
            threading.Thread(target=self._read_events, args=(process,), name="flash-client-events", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        try:
            self.hello_info = self.hello(timeout=timeout, client=self.client_name)
        except EngineDied:
            raise
        except EngineError:  # it runs but cannot work (no torch, a hung import): don't leave it behind
            self.kill()
            raise
        if self.hello_info.get("protocol") != P.PROTOCOL_VERSION:
            self.kill()
            raise EngineError(f"the engine speaks protocol {self.hello_info.get('protocol')}, "
                              f"the add-on {P.PROTOCOL_VERSION}", "update the add-on and the engine together",
                              code=P.VERSION_MISMATCH)
        return self.hello_info

    def restart(self, timeout: float = START_TIMEOUT_S) -> dict:
        """A fresh engine (after a death, or to get a clean one); the old one is stopped first."""
        self.close()
        return self.start(timeout=timeout)

    def close(self, timeout: float = 10.0) -> int | None:
        """Ask the engine to shut down (cancelling its jobs), kill it if it won't; returns its exit code."""
        process = self.process
        if process is None:
            return None
        self._closing = True
        if process.poll() is None:
            try:
                self._send(P.make_request("shutdown", self._new_id()))
                process.stdin.close()  # stdin closing is a shutdown too, should the request not get through
            except (EngineError, OSError):
                pass
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        self._join_readers()
        return process.returncode

    def kill(self) -> None:
        """Kill the engine now (no cleanup on its side)."""
        if self.process is not None and self.process.poll() is None:
            self._closing = True
            self.process.kill()
            self.process.wait(10)
        self._join_readers()

    def __enter__(self) -> "EngineClient":
        if not self.alive:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- blocking API --------------------------------------------------------------------

    def hello(self, timeout: float = CONTROL_TIMEOUT_S, client: str | None = None) -> dict:
        return self.request("hello", {"client": client} if client else {}, timeout)

    def status(self, timeout: float = CONTROL_TIMEOUT_S) -> dict:
        """{running, queue, loads, model, device, pid, protocol}."""
        return self.request("status", {}, timeout)

    def release(self, timeout: float | None = None) -> dict:
        """Free the models and GPU memory (after the jobs already queued)."""
        return self.request("release", {}, timeout)

    def cancel(self, job_id: str, timeout: float = CONTROL_TIMEOUT_S) -> dict:
        """Cancel a running job (it stops within a step) or drop a queued one: {job, was}."""
        return self.request("cancel", {"job": job_id}, timeout)

    def shutdown(self, timeout: float = 10.0) -> int | None:
        return self.close(timeout)

    def animate(self, args: dict | None = None, timeout: float | None = None, on_event=None, **kwargs) -> dict:
        """Animate and wait: returns {out, frames, mp4, metadata} or raises EngineError.

        ``args`` are AnimateRequest's fields (image, out, action, prompt, frames, ...); paths
        are made absolute here, since the engine's working folder is not the caller's.
        """
        args = {**(args or {}), **kwargs}
        for name in ("image", "out", "weights"):
            if isinstance(args.get(name), (str, os.PathLike)):
                args[name] = os.path.abspath(os.path.expanduser(args[name]))
        return self.run("animate", args, timeout, on_event)

    def train(self, args: dict, timeout: float | None = None, on_event=None) -> dict:
        return self.run("train", args, timeout, on_event)

    def run(self, job_type: str, args: dict, timeout: float | None = None, on_event=None) -> dict:
        """Submit a job and wait for its end. ``on_event(event)`` sees each of its events, in
        order, on the calling thread. On timeout the job is cancelled and EngineTimeout raised."""
        job_id = self.submit(job_type, args)
        try:
            return self.wait(job_id, timeout, on_event)
        except EngineTimeout:
            try:
                self.cancel(job_id, timeout=10)
            except EngineError:
                pass
            raise

    def request(self, request_type: str, args: dict, timeout: float | None = CONTROL_TIMEOUT_S) -> dict:
        """Send a control request and wait for its result data (or raise its error)."""
        request_id = self._new_id()
        with self._cond:
            self._replies[request_id] = None
        self._send(P.make_request(request_type, request_id, args))
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._replies.get(request_id) is None:
                if self.death is not None:
                    self._replies.pop(request_id, None)
                    raise EngineDied(self.death, request=request_id)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    self._replies.pop(request_id, None)
                    raise EngineTimeout(f"no answer to {request_type} within {timeout:.0f}s",
                                        "the engine may be busy importing or stuck: see its log", request=request_id)
                self._cond.wait(remaining)
            event = self._replies.pop(request_id)
        if event["type"] == "error":
            raise EngineError.from_event(event)
        return event["data"]

    # -- polling API ---------------------------------------------------------------------

    def submit(self, job_type: str, args: dict) -> str:
        """Send a job request; returns its job id at once (the request id: see docs/protocol.md)."""
        job_id = self._new_id()
        with self._cond:
            self._jobs[job_id] = JobState(id=job_id, type=job_type)
        try:
            self._send(P.make_request(job_type, job_id, args))
        except EngineError as err:
            with self._cond:
                self._finish(self._jobs[job_id], "failed", err)
            raise
        return job_id

    def poll_events(self, timeout: float = 0.0) -> list[dict]:
        """Every event since the last call, oldest first; waits up to ``timeout`` for the first."""
        with self._cond:
            if not self._events and timeout > 0:
                self._cond.wait_for(lambda: self._events or self.death is not None, timeout)
            events = list(self._events)
            self._events.clear()
        return events

    def job(self, job_id: str) -> JobState:
        """A snapshot of a job's state (safe to read while events keep coming)."""
        with self._cond:
            state = self._jobs.get(job_id)
            if state is None:
                raise KeyError(job_id)
            return dataclasses.replace(state, logs=list(state.logs), events=list(state.events))

    def wait(self, job_id: str, timeout: float | None = None, on_event=None) -> dict:
        """Wait for a job's end: its result data, or raise its EngineError (EngineDied, EngineTimeout)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delivered = 0
        while True:
            with self._cond:
                state = self._jobs[job_id]
                while len(state.events) == delivered and not state.finished:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise EngineTimeout(f"{state.type} job {job_id} did not finish within {timeout:.0f}s",
                                            "cancel it or wait longer", job=job_id, request=job_id)
                    self._cond.wait(remaining)
                new_events = state.events[delivered:]
                delivered = len(state.events)
                finished, result, error = state.finished, state.result, state.error
            if on_event is not None:
                for event in new_events:
                    on_event(event)
            if finished:
                if error is not None:
                    raise error
                return result

    def stderr_tail(self, lines: int = 20) -> list[str]:
        with self._cond:
            return list(self._stderr)[-lines:]

    def send_raw(self, data: bytes) -> None:
        """Write bytes to the engine's stdin as they are (tests and debugging only)."""
        with self._write_lock:
            self.process.stdin.write(data)
            self.process.stdin.flush()

    # -- internals -----------------------------------------------------------------------

    def _new_id(self) -> str:
        return f"c{next(self._ids)}"

    def _send(self, message: dict) -> None:
        if self.process is None:
            raise EngineError("the engine is not started", "call start()", code=P.ENGINE_DIED)
        try:
            with self._write_lock:
                self.process.stdin.write(P.encode(message))
                self.process.stdin.flush()
        except (OSError, ValueError):  # broken pipe: the engine is gone; the reader records how
            self._join_readers(timeout=5)
            with self._cond:
                death = self.death
            if death is None:
                raise EngineError("cannot write to the engine", "restart the engine", code=P.ENGINE_DIED) from None
            raise EngineDied(death) from None

    def _join_readers(self, timeout: float = 10.0) -> None:
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout)

    def _read_stderr(self, process: subprocess.Popen) -> None:
        log = open(self.log_path, "a", encoding="utf-8") if self.log_path else None
        try:
            for raw in iter(process.stderr.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                with self._cond:
                    self._stderr.append(line)
                if log:
                    log.write(line + "\n")
                    log.flush()
        finally:
            if log:
                log.close()

    def _read_events(self, process: subprocess.Popen) -> None:
        for raw in iter(process.stdout.readline, b""):
            try:
                event = P.parse_event(raw)
            except P.ProtocolError as err:
                with self._cond:
                    self.bad_lines += 1
                    self._stderr.append(f"[not a protocol line: {err.message}] {raw[:200]!r}")
                continue
            with self._cond:
                self._route(event)
                self._events.append(event)
                self._cond.notify_all()
        self._record_death(process)

    def _route(self, event: dict) -> None:
        """Update job states and waiting requests from one event (called with the lock held)."""
        request, kind = event.get("request"), event["type"]
        job_id = event.get("job") or (request if request in self._jobs else None)
        state = self._jobs.get(job_id) if job_id else None
        if state is not None:
            state.events.append(event)
            if kind == "accepted":
                state.queue_position = event["queue_position"]
                state.state = "running" if event["queue_position"] == 0 else "queued"
            elif kind == "progress":
                state.state = "running"
                state.phase, state.step, state.total, state.eta_s = (
                    event["phase"], event["step"], event["total"], event["eta_s"])
            elif kind == "log":
                state.logs.append(event["message"])
            elif kind == "result":
                state.result = event["data"]
                self._finish(state, "done", None)
            elif kind == "error":
                error = EngineError.from_event(event)
                self._finish(state, "cancelled" if error.code == P.CANCELLED else "failed", error)
        elif request in self._replies and kind in P.TERMINAL_EVENTS:
            self._replies[request] = event

    def _finish(self, state: JobState, outcome: str, error: EngineError | None) -> None:
        state.state, state.error = outcome, error
        self._cond.notify_all()

    def _record_death(self, process: subprocess.Popen) -> None:
        try:
            returncode = process.wait(5)
        except subprocess.TimeoutExpired:  # stdout closed but the process lingers: finish it
            process.kill()
            returncode = process.wait(5)
        self._threads[0].join(2)  # the stderr reader: the last lines tell why it died
        name = None
        if returncode is not None and returncode < 0 and sys.platform != "win32":
            try:
                name = signal.Signals(-returncode).name
            except ValueError:
                name = f"signal {-returncode}"
        with self._cond:
            if process is not self.process:
                return
            death = EngineDeath(returncode, name, tuple(self._stderr)[-20:], expected=self._closing)
            self.death = death
            for state in self._jobs.values():
                if not state.finished:
                    error = EngineDied(death, job=state.id, request=state.id)
                    self._finish(state, "failed", error)
                    self._events.append(P.error_event(P.ENGINE_DIED, error.message, error.hint,
                                                      request=state.id, job=state.id))
            if not death.expected:
                self._events.append(P.error_event(P.ENGINE_DIED, death.describe(), death.hint()))
            self._cond.notify_all()
