"""A batch's shots shared between engines: one engine per device (``--devices``), each taking
the next shot as it comes free and staying warm for all of its shots.

Pure Python (no bpy). Only engine work runs in parallel: the engines are processes of their
own, and this loop, on Blender's main thread, never blocks on them. It starts a shot (the
caller plans it and renders its reference: Blender data) on an engine that is free and has
said hello, so every shot is planned with its model's limits; polls every running job; and
finishes the shots (the caller imports their takes: Blender data) in shot order. Take
numbers are reserved on disk when a shot starts, so no two shots share a take folder, and
the summary lines, the scene and the take record come out as from one engine running the
shots one after another.

A failed shot fails alone. An engine that dies (or cannot start) fails its shot, naming the
engine, and takes no more shots while another engine runs; the last one left restarts for
the next shot, as a single engine does.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from collections import deque
from dataclasses import dataclass
from typing import Callable

from .batch import SUMMARY_PREFIX, Shot, ShotResult
from .engine import EngineGone
from .errors import PlanError
from .progress import one_line

TICK_S = 0.1  # seconds between polls while nothing else happened


def _no_lines() -> list[str]:
    return []


def _nothing() -> None:
    return None


@dataclass(eq=False)
class Engine:
    """One engine of the batch: its device, the manager that owns its process, its config."""

    device: str
    manager: object  # engine.EngineManager
    config: object  # engine.EngineConfig
    number: int = 1
    several: bool = False  # the batch runs more than one: lines name the engine
    retired: bool = False  # takes no more shots (it died while others run)
    restarting: bool = False  # the last engine left, started again after it stopped

    @property
    def label(self) -> str:
        return f"engine {self.number} ({self.device})"

    @property
    def line_prefix(self) -> str:
        """What its job's progress lines start with."""
        return f"FLASH {self.label}: " if self.several else "FLASH: "

    @property
    def alive(self) -> bool:
        client = self.manager.client
        return client is not None and client.alive


@dataclass(frozen=True)
class ShotJob:
    """A started shot, as the queue drives it (``job_loop.JobLoop``'s shape, with a
    ShotResult at the end)."""

    advance: Callable[[], bool]  # moves the job on, never blocks; True once it is finished
    finish: Callable[[], ShotResult]  # once, after it finished, in shot order: import, say what happened
    lines: Callable[[], list[str]] = _no_lines
    stop: Callable[[], None] = _nothing  # cancel it (Ctrl-C); finish still follows


StartShot = Callable[[Shot, Engine], "ShotJob | ShotResult"]


@dataclass
class _Running:
    index: int
    shot: Shot
    job: ShotJob
    engine: Engine
    engine_failed: bool = False  # the engine was gone when the job ended
    error: str = ""  # its poll broke: the shot fails with this (finish only tidies up)


def run_shots(shots: list[Shot], engines: list[Engine], start: StartShot,
              on_result: Callable[[ShotResult], None] | None = None, report: Callable[[str], None] = print,
              sleep: Callable[[float], None] = time.sleep, interval: float = TICK_S) -> list[ShotResult]:
    """Every shot on the first free engine; the results in shot order (``on_result`` hears
    each as soon as it and those before it are finished). ``start(shot, engine)`` plans and
    starts a shot on a ready engine: a ShotJob, or a ShotResult for a shot that cannot start.
    Shots with an error need no engine. Ctrl-C stops every running job and finishes the done
    ones before it is raised again."""
    results: list[ShotResult | None] = [ShotResult(s, False, reason=s.error) if s.error else None for s in shots]
    pending = deque(index for index, shot in enumerate(shots) if not shot.error)
    engines = list(engines)[:len(pending)]  # never more engines than shots
    for engine in engines:  # all at once: their torch imports overlap
        engine.manager.start(engine.config)
    running: dict[int, _Running] = {}  # by id(engine)
    done: dict[int, _Running] = {}  # finished jobs by shot index, until the shots before them are finished
    told = 0  # results[:told] went to on_result

    def tell() -> None:
        nonlocal told
        while told < len(results):
            if results[told] is None and told in done:
                results[told] = _finish(done.pop(told))
            if results[told] is None:
                return
            if on_result is not None:
                on_result(results[told])
            told += 1

    try:
        tell()
        while told < len(results):
            moved = False
            for engine in engines:
                if not pending or engine.retired or id(engine) in running:
                    continue
                ready = _ready(engine, engines, report)
                if ready is False:
                    continue
                index = pending.popleft()
                started = _start(start, shots[index], engine) if ready is True else \
                    ShotResult(shots[index], False, reason=ready)
                if isinstance(started, ShotResult):
                    results[index] = started
                else:
                    running[id(engine)] = _Running(index, shots[index], started, engine)
                moved = True
            for key, run in list(running.items()):
                try:
                    finished = run.job.advance()
                except Exception as err:  # a broken poll fails its shot, not the batch
                    traceback.print_exc()
                    run.job.stop()
                    run.error = one_line(err)
                    del running[key]
                    done[run.index] = run
                    moved = True
                    continue
                for line in run.job.lines():
                    report(line)
                if finished:
                    del running[key]
                    done[run.index] = run
                    run.engine_failed = not run.engine.alive
                    if run.engine_failed:
                        _retire(run.engine, engines, report, "stopped")
                    moved = True
            tell()
            if not moved and told < len(results):
                sleep(interval)
    except BaseException:  # Ctrl-C (or a broken import): stop what runs, keep what is done
        for run in running.values():
            run.job.stop()
            done[run.index] = run
        for index in sorted(done):
            try:
                _finish(done[index])
            except Exception:
                traceback.print_exc()
        raise
    return results


def _ready(engine: Engine, engines: list[Engine], report) -> bool | str:
    """True once the engine has said hello and may take a shot; False while it starts; a
    reason when the next shot fails without a job. One that cannot start (or died while
    idle) is retired while another engine can take its shots; the last one is restarted, and
    when that fails too the next shot fails saying why, as a single engine's shot does."""
    try:
        client = engine.manager.ready()
    except Exception as err:  # EngineGone: it died after its hello; anything else: its start failed
        why = "stopped" if isinstance(err, EngineGone) else "could not start"
        if _retire(engine, engines, report, f"{why}: {one_line(err)}"):
            return False
        if engine.restarting:  # the restart failed too
            engine.restarting = False
            return f"{engine.label}: {one_line(err)}" if engine.several else one_line(err)
        engine.restarting = True
        engine.manager.start(engine.config)
        return False
    if client is None:
        if not engine.manager.starting:  # nothing under way: a start that settled without a client
            engine.manager.start(engine.config)
        return False
    engine.restarting = False
    return True


def _retire(engine: Engine, engines: list[Engine], report, why: str) -> bool:
    """Take ``engine`` out of the queue when another engine can run the remaining shots."""
    if not any(other is not engine and not other.retired for other in engines):
        return False
    engine.retired = True
    report(f"{SUMMARY_PREFIX} {engine.label} {why}; the other engines take the remaining shots")
    return True


def _start(start: StartShot, shot: Shot, engine: Engine) -> ShotJob | ShotResult:
    try:
        return start(shot, engine)
    except PlanError as err:  # refused before the job: nothing was made
        return ShotResult(shot, False, reason=str(err))
    except Exception as err:  # one broken shot must not take the others down
        traceback.print_exc()
        return ShotResult(shot, False, reason=one_line(err))


def _finish(run: _Running) -> ShotResult:
    try:
        result = run.job.finish()
    except Exception as err:  # one broken import must not take the others down
        traceback.print_exc()
        result = ShotResult(run.shot, False, reason=one_line(err))
    if run.error:
        result = ShotResult(run.shot, False, reason=run.error)
    elif not result.ok and run.engine_failed and run.engine.several:
        result = dataclasses.replace(result, reason=f"{run.engine.label}: {result.reason}")
    return result
