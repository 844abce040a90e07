"""``python -m flash_engine serve``: the engine service the Blender add-on talks to.

Newline-delimited JSON on stdin/stdout (``docs/protocol.md``), no network port. A reading
thread reads requests and answers the cheap ones at once (hello, status, cancel), so a
cancel is read even while a job runs; jobs run one at a time on a worker thread, in the
order they came; the model stays loaded between jobs (``warm.PipelineCache``). The main
thread only watches for the end: shutdown, stdin closing, stdout closing, SIGTERM/SIGINT;
then it cancels every job, lets the running one clean up, and exits.

Nothing but protocol lines reaches the real stdout: at startup the real stdout is kept
for the protocol and fd 1 is pointed at stderr, so prints from libraries, C code or child
processes land in the log instead of corrupting the stream.

This module imports no torch at import time: torch and the model code load on a
background thread at startup (``_warm_up``) and on first use, which keeps the reading loop
alive (it notices stdin closing) while the imports take their seconds.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import queue
import select
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable

from flash_engine import __version__
from flash_engine import protocol as P
from flash_engine.errors import FlashError, JobCancelled

# How long a cancelled job may take to reach its next cancel point when the service has to
# exit (shutdown, stdin closed). After that the process exits anyway: Blender is gone or
# asked us to go, and a hidden staging folder is all a killed job leaves behind.
EXIT_GRACE_S = 5.0
# How long one event may wait to be written before the client counts as gone (it stopped
# reading but keeps its end open: the pipe is full).
WRITE_TIMEOUT_S = 30.0
# How often the main thread looks for a stop signal or a client that stopped reading.
WATCH_INTERVAL_S = 0.1
# Signals that stop the service the way stdin closing does: jobs cancelled, events sent,
# staging folders cleaned.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, name))


def _log(message: str) -> None:
    print(f"flash serve: {message}", file=sys.stderr, flush=True)


_warm_up_thread: threading.Thread | None = None


def _torch_side():
    """The engine's heavy modules; a broken environment becomes one clear error."""
    warming = _warm_up_thread
    if warming is not None and warming is not threading.current_thread():
        warming.join()  # one thread imports torch at a time: two at once risk an import deadlock
    try:
        from flash_engine import animate, devices, warm
    except ImportError as err:
        raise FlashError(f"the engine's Python cannot load the engine: {err}",
                         "run the engine setup again, or point the add-on at a Python with the requirements",
                         code=P.ENVIRONMENT) from err
    return animate, devices, warm


def _warm_up() -> None:
    """Import torch and the model code while the main thread already reads stdin."""
    try:
        _torch_side()
        from flash_engine.library_logs import quiet_libraries

        quiet_libraries()  # the libraries' dtype notes and advice would only fill the log
    except Exception:  # the first request that needs them reports the problem
        pass


# ---------------------------------------------------------------------------------------
# The torch side: model cache, device, memory


class Engine:
    """Holds the warm pipeline (and with it its action slot); everything that needs torch is here."""

    def __init__(self, defaults: dict | None = None):
        # Settings from the serve command line, used where a request leaves them out.
        self.defaults = {k: v for k, v in (defaults or {}).items() if v is not None}
        self._cache = None

    @property
    def cache(self):
        if self._cache is None:
            _, _, warm = _torch_side()
            self._cache = warm.PipelineCache()
        return self._cache

    @property
    def loads(self) -> int:
        return self._cache.loads if self._cache is not None else 0

    def with_defaults(self, args: dict) -> dict:
        args = dict(args)
        if "model" not in args:  # a model and its motion adapter go together
            for name in ("model", "motion_adapter"):
                if name in self.defaults:
                    args[name] = self.defaults[name]
        for name in ("device", "precision", "offload"):
            if name in self.defaults:
                args.setdefault(name, self.defaults[name])
        return args

    def default_device(self) -> str:
        _, devices, _ = _torch_side()
        return str(devices.pick_device(self.defaults.get("device", "auto")))

    def hello(self) -> dict:
        import importlib.util

        _, devices, _ = _torch_side()
        from flash_engine.models.loading import model_card_actions, model_limits
        from flash_engine.weights import resolve_model_source, weights_status

        try:
            import diffusers
            diffusers_version = diffusers.__version__
        except ImportError:
            diffusers_version = None
        try:
            train_available = importlib.util.find_spec("flash_engine.training.job") is not None
        except ImportError:
            train_available = False
        default_model = resolve_model_source(self.defaults.get("model", "default"))
        try:  # what the add-on clamps and defaults from; a broken folder shows when a job names it
            limits = model_limits(default_model, self.defaults.get("motion_adapter"))
        except FlashError as err:
            limits = None
            _log(f"no limits for the default model: {err}")
        try:  # the actions its card names, with the sentences it learned them by (the add-on's list)
            actions = model_card_actions(default_model)
        except FlashError as err:
            actions = None
            _log(f"no actions of the default model's own: {err}")
        return {
            "protocol": P.PROTOCOL_VERSION,
            "engine_version": __version__,
            "pid": os.getpid(),
            **devices.device_report(),
            "device": self.default_device(),
            "diffusers": diffusers_version,
            "weights": weights_status(),
            "default_model": default_model,
            "model_limits": limits,
            "model_actions": actions.to_report() if actions else None,
            "job_types": {"animate": True, "train": train_available},
            "max_line_bytes": P.MAX_LINE_BYTES,
        }

    def model_status(self) -> dict:
        key = self._cache.key if self._cache is not None else None
        return {
            "loads": self.loads,
            "model": dict(key.__dict__) if key is not None else None,
            "device": key.device if key is not None else self.default_device(),
        }

    def pipeline(self, key, log: Callable[[str], None]):
        """The warm pipeline for ``key`` (loading it only when the key changed) and its action slot."""
        cache = self.cache
        if cache.key != key:
            log(f"loading model {key.model} on {key.device} ({key.dtype})")
            started = time.perf_counter()
            cache.get(key)
            log(f"model loaded in {time.perf_counter() - started:.1f}s")
        return cache.get(key), cache.slot

    def controlnets(self, keys: list, log: Callable[[str], None]) -> list:
        """The warm ControlNets for ``keys`` (after ``pipeline``), loading only those not warm."""
        cache = self.cache
        missing = [folder for folder, identity in keys if (folder, identity) not in cache.loaded_controlnets]
        if missing:
            log(f"loading ControlNet {', '.join(missing)}")
        return cache.controlnets(keys)

    def release(self) -> dict:
        if self._cache is not None:
            self._cache.release()
        self.free_memory()
        return {"released": True, "loads": self.loads}

    def free_memory(self) -> None:
        """Give cached allocator memory back (after a release or an out-of-memory error)."""
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is None:
            return
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        mps = getattr(torch, "mps", None)
        if mps is not None and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            mps.empty_cache()


# ---------------------------------------------------------------------------------------
# Job kinds: job type → (prepare on the reading thread, run on the worker)


@dataclass
class JobKind:
    # Cheap checks before the job is accepted (paths, sizes, presets); raises FlashError.
    # Its third argument reports notes (e.g. skipped clips) as log events of the request.
    prepare: Callable[[Engine, dict, Callable[[str], None]], Any]
    # The work; returns the result event's data.
    run: Callable[[Engine, Any, "JobContext"], dict]


def prepare_animate(engine: Engine, args: dict, report=None):
    """The request checked and resolved (``animate.ResolvedAnimate``: its pipeline key included)."""
    from flash_engine.requests import parse

    animate, _, _ = _torch_side()
    return animate.resolve(parse("animate", engine.with_defaults(args)))


def run_animate_job(engine: Engine, job, context: "JobContext") -> dict:
    animate, _, _ = _torch_side()
    animate.prepare(job, report=context.log)  # a driving clip's poses: before the model loads
    context.check_cancel()
    context.progress("load", 0, 1)
    pipeline, slot = engine.pipeline(job.key, context.log)
    controlnets = engine.controlnets(job.controlnet_keys, context.log)
    context.progress("load", 1, 1)
    context.log(f"animate: {job.frames} frames at {job.width}x{job.height}, {job.steps} steps, seed {job.seed}, "
                f"model {job.model} on {job.key.device}")

    def progress(phase: str, step: int, total: int) -> None:
        context.check_cancel()  # the pipeline checks only while denoising: this covers decoding too
        context.progress(phase, step, total)

    metadata = animate.run_animate(job, pipeline, progress=progress, should_cancel=context.should_cancel,
                                   action_slot=slot, controlnets=controlnets)
    return {
        "out": str(job.out),
        "frames": [str(job.out / name) for name in metadata["frames"]],
        "mp4": str(job.out / metadata["mp4"]) if metadata.get("mp4") else None,
        "metadata": metadata,
    }


def _training_module():
    """``flash_engine.training.job`` when this engine has it; else an 'unavailable' error."""
    try:
        from flash_engine.training import job as training_job
    except ModuleNotFoundError as err:
        if not (err.name or "").startswith("flash_engine.training"):
            raise
        raise FlashError("this engine cannot train yet (flash_engine.training.job is missing)",
                         "update the engine", code=P.UNAVAILABLE) from err
    return training_job


def prepare_train(engine: Engine, args: dict, report=None):
    from flash_engine.requests import TrainRequest, parse, specs

    training_job = _training_module()
    # The serve command line's model, device and precision are training's defaults too, so a
    # trained action matches the base that animate uses (offload has no meaning for training).
    known = specs(TrainRequest)
    args = {name: value for name, value in engine.with_defaults(args).items() if name in args or name in known}
    return training_job.resolve_train(parse("train", args), report=report or (lambda line: None))


def run_train_job(engine: Engine, prepared, context: "JobContext") -> dict:
    # Training loads its own models: give it the memory the warm animate pipeline holds.
    # (The trainer checks should_cancel before each step and checkpoints there, so its
    # progress is not made a cancel point the way animate's is.)
    engine.release()
    return _training_module().run_train(prepared, progress=context.progress, should_cancel=context.should_cancel,
                                        log=context.log)


JOB_KINDS: dict[str, JobKind] = {
    "animate": JobKind(prepare_animate, run_animate_job),
    "train": JobKind(prepare_train, run_train_job),
}


# ---------------------------------------------------------------------------------------
# Jobs and the service loop


@dataclass
class Job:
    id: str
    type: str
    request: str
    prepared: Any = None
    cancel: threading.Event = field(default_factory=threading.Event)
    phase: str | None = None
    step: int = 0
    total: int = 0
    eta_s: float | None = None
    started: float | None = None

    @property
    def is_job(self) -> bool:  # a queued release is a task, not a job: no accepted/progress events
        return self.type in JOB_KINDS

    def summary(self) -> dict:
        summary = {"job": self.id, "type": self.type}
        if self.started is not None:
            summary.update(phase=self.phase, step=self.step, total=self.total,
                           eta_s=None if self.eta_s is None else round(self.eta_s, 2),
                           running_s=round(time.monotonic() - self.started, 2))
        return summary


class JobContext:
    """What a running job gets: progress, should_cancel / check_cancel, and log."""

    def __init__(self, server: "Server", job: Job):
        from flash_engine.progress import ProgressTracker

        self.server, self.job, self.tracker = server, job, ProgressTracker()

    def should_cancel(self) -> bool:
        return self.job.cancel.is_set()

    def check_cancel(self) -> None:
        if self.job.cancel.is_set():
            raise JobCancelled()

    def progress(self, phase: str, step: int, total: int, eta_s: float | None = None, **extra) -> None:
        """Report a step. ``eta_s`` overrides the tracker's estimate; ``extra`` numbers (a
        training loss, steps per second) ride along in the event."""
        update = self.tracker.update(phase, step, total)
        job = self.job
        job.phase, job.step, job.total = update.phase, update.step, update.total
        job.eta_s = eta_s if eta_s is not None else update.eta_s
        extra = {k: v for k, v in extra.items() if isinstance(v, (int, float, str, bool)) or v is None}
        self.server.emit(P.progress_event(job.id, update.phase, update.step, update.total, job.eta_s,
                                          request=job.request, **extra))

    def log(self, message: str, level: str = "info") -> None:
        _log(f"[{self.job.id}] {message}")
        self.server.emit(P.log_event(message, level, job=self.job.id, request=self.job.request))


def read_bounded_line(stream: BinaryIO, limit: int) -> tuple[bytes | None, bool]:
    """One line of at most ``limit`` bytes (not counting its newline): (line, False); (None, False) at end of input;
    (None, True) for a longer line, which is read and dropped in ``limit``-sized pieces so
    it never sits in memory whole."""
    line = stream.readline(limit + 1)
    if not line:
        return None, False
    if len(line) <= limit or line.endswith(b"\n"):
        return line, False
    while True:
        rest = stream.readline(limit)
        if not rest or rest.endswith(b"\n"):
            return None, True


def output_closed(stream) -> bool:
    """Whether nobody reads ``stream`` any more: poll reports an error or hang-up on its file
    descriptor (a pipe whose read end is closed, a terminal that hung up). Streams without a
    descriptor, and systems without poll, are only found out by a failing write."""
    try:
        fd = stream.fileno()
        poller = select.poll()
    except (AttributeError, OSError, ValueError):
        return False
    poller.register(fd, select.POLLOUT)
    return any(mask & (select.POLLERR | select.POLLHUP | select.POLLNVAL) for _, mask in poller.poll(0))


class Server:
    """The request loop. ``stdin``/``stdout`` are binary streams, so tests can drive it in-process."""

    def __init__(self, stdin: BinaryIO, stdout: BinaryIO, engine: Engine | None = None,
                 kinds: dict[str, JobKind] | None = None, max_line_bytes: int = P.MAX_LINE_BYTES,
                 exit_grace_s: float = EXIT_GRACE_S, write_timeout_s: float = WRITE_TIMEOUT_S):
        self.stdin, self.stdout = stdin, stdout
        self.engine = engine or Engine()
        self.kinds = JOB_KINDS if kinds is None else kinds
        self.max_line_bytes = max_line_bytes
        self.exit_grace_s = exit_grace_s
        self.write_timeout_s = write_timeout_s
        # One writer thread owns stdout: an emit waits for its line to be written, but never
        # longer than write_timeout_s, so a client that stops reading (pipe full, still open)
        # cannot hold a thread (and the locks it holds) forever.
        self._lines: queue.SimpleQueue = queue.SimpleQueue()
        self.writer = threading.Thread(target=self._write_lines, name="flash-writer", daemon=True)
        self.writer.start()
        self._jobs = threading.Condition()  # guards queue/running; wakes the worker
        self.queue: list[Job] = []
        self.running: Job | None = None
        self.stopping = threading.Event()
        self.output_broken = False
        # Set by a signal handler (which must take no lock: it runs between any two bytecodes
        # of the main thread); the main thread's watch loop sees it.
        self.stop_signal: int | None = None
        self._auto_ids = itertools.count(1)
        self.worker = threading.Thread(target=self._work, name="flash-worker", daemon=True)
        # A daemon: when the service stops for another reason it may stay blocked reading stdin.
        self.reader = threading.Thread(target=self._read_requests, name="flash-reader", daemon=True)

    # -- output --------------------------------------------------------------------------

    def emit(self, event: dict) -> None:
        line = self._encode(event)
        if line is None or self.output_broken:
            return
        written = threading.Event()
        self._lines.put((line, written))
        if not written.wait(self.write_timeout_s):
            _log(f"the client read nothing for {self.write_timeout_s:.0f}s")
            self._output_lost()

    def _write_lines(self) -> None:
        while True:
            line, written = self._lines.get()
            if not self.output_broken:
                try:
                    self.stdout.write(line)
                    self.stdout.flush()
                except (OSError, ValueError):  # the client is gone: nobody to answer, so stop
                    self._output_lost()
            written.set()

    @staticmethod
    def _encode(event: dict) -> bytes | None:
        """The event's line; an event that is not JSON (a job's result holding an object)
        costs that event, never the writer. A job's final event is replaced by an internal
        error, so the job still ends with exactly one result or error."""
        try:
            return P.encode(event)
        except (TypeError, ValueError, RecursionError) as err:
            _log(f"cannot encode a {event.get('type')} event: {type(err).__name__}: {err}")
            if event.get("type") not in P.TERMINAL_EVENTS:
                return None
            return P.encode(P.error_event(P.INTERNAL, f"the {event.get('type')} could not be sent: "
                                                      f"{type(err).__name__}: {err}",
                                          "the engine log has the details; the service is still running",
                                          request=event.get("request"), job=event.get("job")))

    def _output_lost(self) -> None:
        if not self.output_broken:
            _log("stdout closed (the client stopped reading): stopping")
        self.output_broken = True
        self.stopping.set()

    # -- the main thread: watch for the end ----------------------------------------------

    def serve(self) -> int:
        """Serve until shutdown, end of input, a closed stdout or a stop signal; returns the exit code."""
        self.worker.start()
        self.reader.start()
        try:
            while not self.stopping.wait(WATCH_INTERVAL_S):
                if self.stop_signal is not None:
                    _log(f"{signal.Signals(self.stop_signal).name}: stopping")
                    break
                if output_closed(self.stdout):
                    self._output_lost()
        except KeyboardInterrupt:
            _log("interrupted: stopping")
        self.stop()
        return 0

    def on_signal(self, signum: int, frame=None) -> None:
        """The handler for STOP_SIGNALS (installed by serve_main): record it, nothing more."""
        self.stop_signal = signum

    # -- the reading thread --------------------------------------------------------------

    def _read_requests(self) -> None:
        try:
            while not self.stopping.is_set():
                line, too_long = read_bounded_line(self.stdin, self.max_line_bytes)
                if self.stopping.is_set():
                    break
                if too_long:
                    self.emit(P.error_event(P.LINE_TOO_LONG, f"request line longer than {self.max_line_bytes} bytes",
                                            "send smaller requests (paths, not data)"))
                    continue
                if line is None:
                    _log("stdin closed: stopping")
                    break
                if line.strip():
                    self.handle_line(line)
        except Exception:  # reading itself failed: no request can come any more
            traceback.print_exc()
        finally:
            self.stopping.set()

    def handle_line(self, line: bytes) -> None:
        """Answer one line. Whatever the line holds, it gets an event and the service goes on."""
        try:
            request = P.parse_request(line)
        except P.ProtocolError as err:
            self.emit(P.error_from(err, request=err.request_id))
            return
        except Exception as err:  # parse_request raises only ProtocolError; should it not, still answer
            traceback.print_exc()
            self.emit(P.error_event(P.BAD_JSON, f"unreadable request: {type(err).__name__}",
                                    "send one JSON object per line"))
            return
        request_id = request["id"] or f"auto-{next(self._auto_ids)}"
        kind = request["type"]
        try:
            if kind in P.JOB_REQUESTS:
                self.submit(request_id, kind, request["args"])
            else:
                getattr(self, f"on_{kind}")(request_id, request["args"])
        except FlashError as err:
            self.emit(P.error_from(err, request=request_id))
        except (TypeError, ValueError) as err:  # from request constructors: a bad argument
            self.emit(P.error_event(P.BAD_ARGUMENT, f"bad {kind} arguments: {err}",
                                    f"see docs/protocol.md for the {kind} args", request=request_id))
        except Exception as err:
            traceback.print_exc()
            self.emit(P.error_event(P.INTERNAL, f"{type(err).__name__}: {err}",
                                    "the engine log has the traceback; the service is still running",
                                    request=request_id))

    def submit(self, request_id: str, kind: str, args: dict) -> None:
        """Check a job request (cheap checks only: this runs on the reading thread) and queue it."""
        job_kind = self.kinds.get(kind)
        if job_kind is None:
            raise FlashError(f"this engine has no {kind} jobs", "update the engine", code=P.UNAVAILABLE)
        with self._jobs:
            if self._find(request_id) is not None:
                raise FlashError(f"job id {request_id!r} is already running or queued",
                                 "give each request a new id", code=P.BAD_REQUEST)
        prepared = job_kind.prepare(self.engine, args, lambda line: self.emit(P.log_event(line, request=request_id)))
        job = Job(id=request_id, type=kind, request=request_id, prepared=prepared)
        with self._jobs:
            if self.stopping.is_set():  # stop() has drained the queue, or is about to: nothing would run it
                raise FlashError(f"{kind} request {request_id} was not started: the engine is stopping",
                                 "start the engine again", code=P.CANCELLED)
            position = (self.running is not None) + len(self.queue)
            self.queue.append(job)
            # emitted before the worker can take the job, so 'accepted' precedes its progress
            self.emit(P.accepted_event(request_id, job.id, kind, position))
            self._jobs.notify_all()

    def _find(self, job_id: str) -> Job | None:
        if self.running is not None and self.running.id == job_id:
            return self.running
        return next((job for job in self.queue if job.id == job_id), None)

    # -- control requests: answered at once --------------------------------------------

    def on_hello(self, request_id: str, args: dict) -> None:
        if args.get("client"):
            _log(f"hello from {args['client']}")
        self.emit(P.result_event(request_id, self.engine.hello()))

    def on_status(self, request_id: str, args: dict) -> None:
        self.emit(P.result_event(request_id, self.status()))

    def status(self) -> dict:
        with self._jobs:
            running = self.running.summary() if self.running is not None and self.running.is_job else None
            queue = [job.summary() for job in self.queue]
        return {"running": running, "queue": queue, **self.engine.model_status(), "pid": os.getpid(),
                "protocol": P.PROTOCOL_VERSION}

    def on_cancel(self, request_id: str, args: dict) -> None:
        job_id = args.get("job")
        if not isinstance(job_id, str):
            raise FlashError("cancel needs the job id", 'args: {"job": "<job id>"}', code=P.BAD_ARGUMENT)
        with self._jobs:
            job = self._find(job_id)
            if job is None or not job.is_job:
                raise FlashError(f"no running or queued job {job_id!r}", "it may have finished already",
                                 code=P.UNKNOWN_JOB)
            if job is self.running:
                job.cancel.set()  # the job stops at its next step and reports 'cancelled'
                self.emit(P.result_event(request_id, {"job": job_id, "was": "running"}))
                return
            self.queue.remove(job)
        self.emit(P.result_event(request_id, {"job": job_id, "was": "queued"}))
        self.emit(self._cancelled_event(job))

    def on_release(self, request_id: str, args: dict) -> None:
        # In line behind the jobs already queued: never pull a model out from under a job.
        with self._jobs:
            self.queue.append(Job(id=request_id, type="release", request=request_id))
            self._jobs.notify_all()

    def on_shutdown(self, request_id: str, args: dict) -> None:
        with self._jobs:
            running = [self.running.id] if self.running is not None and self.running.is_job else []
            pending = [job.id for job in self.queue if job.is_job]
        self.emit(P.result_event(request_id, {"stopping": True, "cancelled": running + pending}))
        self.stopping.set()

    # -- stopping ------------------------------------------------------------------------

    def stop(self) -> None:
        """Cancel everything, give the running job a moment to clean up, stop the worker.
        (With a closed stdout the ``cancelled`` events have nowhere to go; the jobs stop all the same.)"""
        self.stopping.set()
        with self._jobs:
            dropped, self.queue = self.queue, []
            if self.running is not None:
                self.running.cancel.set()
            self._jobs.notify_all()
        for job in dropped:
            if job.is_job:
                self.emit(self._cancelled_event(job))
        self.worker.join(self.exit_grace_s)
        if self.worker.is_alive():
            _log(f"the running job did not stop within {self.exit_grace_s:.0f}s: exiting anyway")

    @staticmethod
    def _cancelled_event(job: Job) -> dict:
        return P.error_event(P.CANCELLED, f"{job.type} job {job.id} was cancelled", "", request=job.request,
                             job=job.id)

    # -- the worker ----------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._jobs:
                while not self.queue and not self.stopping.is_set():
                    self._jobs.wait()
                if self.stopping.is_set():  # stop() drains the queue and reports each job
                    return
                job = self.queue.pop(0)
                self.running = job
                job.started = time.monotonic()
            final, out_of_memory = self._run(job)
            with self._jobs:  # atomic with status: a job is either running or has its final event out
                self.running = None
                self.emit(final)
            if out_of_memory:  # the failed job's tensors went with its traceback: give the memory back
                self.engine.free_memory()

    def _run(self, job: Job) -> tuple[dict, bool]:
        """Run one queued task; returns its final event and whether it ran out of memory."""
        if job.type == "release":
            try:
                return P.result_event(job.request, self.engine.release()), False
            except FlashError as err:
                return P.error_from(err, request=job.request), False
        try:
            if job.cancel.is_set():
                raise JobCancelled()
            data = self.kinds[job.type].run(self.engine, job.prepared, JobContext(self, job))
            return P.result_event(job.request, data, job=job.id), False
        except Exception as err:
            if isinstance(err, JobCancelled) or job.cancel.is_set():
                _log(f"[{job.id}] cancelled")
                return self._cancelled_event(job), False
            if isinstance(err, FlashError):
                return P.error_from(err, request=job.request, job=job.id), False
            from flash_engine.devices import is_out_of_memory  # torch is loaded: a job ran

            if is_out_of_memory(err):
                _log(f"[{job.id}] out of memory: {err}")
                return P.error_event(P.OUT_OF_MEMORY, f"out of memory: {P.one_line(err, 200)}",
                                     P.OUT_OF_MEMORY_HINT, request=job.request, job=job.id), True
            traceback.print_exc()
            return P.error_event(P.INTERNAL, f"{type(err).__name__}: {err}",
                                 "the engine log has the traceback; the service is still running",
                                 request=job.request, job=job.id), False
        finally:
            job.prepared = None  # a finished job holds no images or tensors


# ---------------------------------------------------------------------------------------
# Entry points


def protocol_stdout() -> BinaryIO:
    """Keep the real stdout for protocol lines; send everything else written to fd 1 to stderr."""
    sys.stdout.flush()
    protocol_fd = os.dup(1)  # not inherited by child processes (PEP 446)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(protocol_fd, "wb", buffering=0)


def serve_main(args: argparse.Namespace) -> int:
    """Run the service with the serve command line's model settings as request defaults."""
    stdout = protocol_stdout()
    defaults = {name: getattr(args, name, None)
                for name in ("model", "motion_adapter", "device", "precision", "offload")}
    if defaults.get("model") == "default":
        defaults["model"] = None
    if not defaults.get("offload"):
        defaults["offload"] = None
    server = Server(sys.stdin.buffer, stdout, Engine(defaults))
    for signum in STOP_SIGNALS:
        signal.signal(signum, server.on_signal)
    global _warm_up_thread
    _warm_up_thread = threading.Thread(target=_warm_up, name="flash-warm-up", daemon=True)
    _warm_up_thread.start()
    _log(f"engine {__version__} ready (pid {os.getpid()}, protocol {P.PROTOCOL_VERSION})")
    code = server.serve()
    if server.stop_signal is not None and server.stop_signal != signal.SIGINT:
        # Cleaned up; now end as that signal would have, so whoever sent it sees it worked.
        sys.stderr.flush()
        signal.signal(server.stop_signal, signal.SIG_DFL)
        os.kill(os.getpid(), server.stop_signal)
    if server.worker.is_alive() or server.reader.is_alive():
        # A job stuck inside one long step, or the reader blocked on a stdin that is still
        # open: don't wait for them (or for torch's teardown).
        sys.stderr.flush()
        os._exit(code)
    return code
