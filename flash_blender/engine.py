"""One engine per Blender session: started on first use, reused, restarted after a death.

Pure Python (no bpy); the client class comes from the bundled ``flash_engine.client``
(see ``bundled.py``). The add-on keeps one :class:`EngineManager` (``MANAGER``); its
``shutdown`` runs on unregister, so disabling the add-on leaves no engine process.

Starting an engine imports torch in the engine's interpreter: seconds warm, up to a minute
cold. ``start`` therefore runs on a thread and the modal operator polls ``ready()``;
background mode calls ``wait_ready()``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path


class EngineGone(Exception):
    """The engine stopped outside a job (one line with the fix, like FlashError)."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message, self.hint, self.code = message, hint, "engine_died"

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


@dataclass(frozen=True)
class EngineConfig:
    """Everything that, when changed, needs a fresh engine process."""

    python: str
    serve_args: tuple[str, ...] = ()
    engine_path: str | None = None  # the folder holding flash_engine/ (goes on PYTHONPATH)
    cwd: str | None = None
    log_path: str | None = None
    client_name: str | None = None  # sent with hello, for the engine's log


def serve_args(model: str = "default", device: str = "auto", precision: str = "auto", offload: bool = False,
               motion_adapter: str | None = None) -> tuple[str, ...]:
    """``python -m flash_engine serve`` arguments from the preferences."""
    args = ["--model", model or "default", "--device", device or "auto", "--precision", precision or "auto"]
    if motion_adapter:
        args += ["--motion-adapter", motion_adapter]
    if offload:
        args.append("--offload")
    return tuple(args)


class EngineManager:
    """Owns the session's engine client. Thread-safe; never blocks unless asked to."""

    def __init__(self, client_factory=None):
        # client_factory(config) -> an object with EngineClient's API (tests pass a fake)
        self._factory = client_factory
        self._lock = threading.Lock()
        self._client = None
        self._config: EngineConfig | None = None
        self._thread: threading.Thread | None = None
        self._start_error: BaseException | None = None
        self._start_failure = ""  # why the last start failed, until the next start (what describe() says)
        self.starts = 0  # how many engine processes this session started

    # -- state ---------------------------------------------------------------------------

    @property
    def client(self):
        return self._client

    @property
    def pid(self) -> int | None:
        client = self._client
        return client.pid if client is not None and client.alive else None

    @property
    def starting(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def hello(self, config: EngineConfig | None = None) -> dict | None:
        """What the running engine said in its ``hello``; None while none runs (or one with
        another ``config``)."""
        client = self._client
        if client is None or not client.alive or self.starting or (config is not None and config != self._config):
            return None
        hello = client.hello_info
        return hello if isinstance(hello, dict) else {}

    def model_limits(self, config: EngineConfig | None = None) -> dict | None:
        """What the running engine said of its model (``hello``'s ``model_limits``: native
        width/height, max frames, ...); None while none runs (or one with another ``config``)."""
        limits = (self.hello(config) or {}).get("model_limits")
        return limits if isinstance(limits, dict) else None

    def describe(self) -> str:
        if self.starting:
            return "starting"
        client = self._client
        if client is None:
            return "not started"
        if client.alive:
            hello = client.hello_info or {}
            return f"running (pid {client.pid}, {hello.get('device', '?')})"
        return self._stopped_text(client)

    def _stopped_text(self, client) -> str:
        """Why a client that is not alive stopped. A failed start ends with the client killing
        the engine itself: that kill is not news, the start's error is."""
        if self._start_failure:
            return f"could not start: {self._start_failure}"
        death = client.death
        if death is None or death.expected:
            return "stopped"
        return death.describe()

    # -- lifecycle -----------------------------------------------------------------------

    def _make_client(self, config: EngineConfig):
        if self._factory is not None:
            return self._factory(config)
        from .bundled import engine_module

        client_module = engine_module("client")
        return client_module.EngineClient(config.python, list(config.serve_args), engine_path=config.engine_path,
                                          cwd=config.cwd, log_path=config.log_path, client_name=config.client_name)

    def start(self, config: EngineConfig) -> None:
        """Make sure an engine for ``config`` is running or starting; returns at once.

        A live engine with the same config is reused; a dead one, or one started with other
        settings, is replaced.
        """
        with self._lock:
            if self.starting and self._config == config:
                return
            client = self._client
            if client is not None and client.alive and self._config == config and self._start_error is None:
                return
            previous = self._thread if self.starting else None
            self._config, self._start_error, self._start_failure = config, None, ""
            self._thread = threading.Thread(target=self._start, args=(previous, config), name="flash-engine-start",
                                            daemon=True)
            self._thread.start()

    def _start(self, previous: threading.Thread | None, config: EngineConfig) -> None:
        try:
            if previous is not None:  # settings changed during a start: let that one settle first
                previous.join()
            with self._lock:
                old, self._client, self._start_error = self._client, None, None
            if old is not None:
                old.close()
            client = self._make_client(config)
            self.starts += 1
            with self._lock:
                self._client = client  # visible (pid) while it says hello
            client.start()
        except BaseException as err:  # reported to whoever polls
            with self._lock:
                self._start_error = err
                self._start_failure = " ".join(str(err).split()) or type(err).__name__

    def ready(self):
        """The running client, None while it starts; raises the start's error if it failed."""
        with self._lock:
            if self._start_error is not None:
                error, self._start_error = self._start_error, None
                self._config = None  # the next start() tries again
                raise error
            if self.starting:
                return None
            client = self._client
        if client is None:
            return None
        if not client.alive:  # died between its hello and now
            death = client.death
            if death is None or death.expected or self._start_failure:
                raise EngineGone(f"the engine {self._stopped_text(client)}", "run the job again to restart it")
            raise EngineGone(death.describe(), death.hint())
        return client

    def wait_ready(self, timeout: float | None = None):
        """Block until started (background mode); raises the start's error."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        client = self.ready()
        if client is None:
            raise EngineGone("the engine did not start in time", "see the engine log, then try again")
        return client

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the engine (after a start in progress has settled); idempotent."""
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            client = self._client
            if client is not None and thread.is_alive():
                client.kill()  # a start in progress: don't wait for torch to import
            thread.join(timeout)
        with self._lock:
            client, self._client, self._config, self._thread = self._client, None, None, None
            self._start_error, self._start_failure = None, ""
        if client is not None:
            try:
                client.close(timeout)
            except Exception:
                client.kill()


MANAGER = EngineManager()


def log_file(user_dir: Path, number: int = 1) -> Path:
    """The engine's log; a batch's further engines (``--devices``) each have their own."""
    return Path(user_dir) / ("engine.log" if number == 1 else f"engine-{number}.log")
