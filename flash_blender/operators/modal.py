"""The UI side of the job loop (``job_loop.py``), written once for every long job: a modal
operator on a window timer, or a persistent application timer (a training outlives the
file it started in); in background mode, where no timer runs, the same loop blocks.

Both kinds of timer are registered here, so unregistering the add-on removes any still running.
"""

from __future__ import annotations

import traceback

import bpy

from ..errors import PlanError
from ..job_loop import JobLoop, Outcome, run_blocking

ACTIVE_TIMERS: list = []
APP_TIMERS: dict = {}  # name → the application timer following a job of that kind


def redraw_panels() -> None:
    """Redraw the sidebar and the preferences (progress changed)."""
    wm = bpy.context.window_manager
    for window in getattr(wm, "windows", ()):
        for area in window.screen.areas:
            if area.type in ('VIEW_3D', 'PREFERENCES'):
                area.tag_redraw()


class TimerOperator:
    """Mixin for the modal operators: a timer that wakes ``modal`` while work runs elsewhere."""

    _timer = None

    def add_timer(self, context, interval: float) -> None:
        self._timer = context.window_manager.event_timer_add(interval, window=context.window)
        ACTIVE_TIMERS.append(self._timer)

    def remove_timer(self, context) -> None:
        if self._timer is not None:
            if self._timer in ACTIVE_TIMERS:  # else unregister removed it already
                ACTIVE_TIMERS.remove(self._timer)
                context.window_manager.event_timer_remove(self._timer)
            self._timer = None


class JobOperator(TimerOperator):
    """Mixin: an operator that runs one long job. ``execute`` (scripts, background mode)
    blocks; ``invoke`` follows the job on a window timer, or with ``follow_app_timer`` on
    a persistent application timer (the operator itself then ends at once).

    Subclasses give ``start_job(context) -> JobLoop`` (raising refuses the job: a PlanError
    is reported as it is, anything else also with its traceback) and may override
    ``refused(context, error)`` to keep the error where the panel shows it.
    """

    report_prefix = "FLASH: "
    refusal_prefix = "FLASH: "  # before the line of a job that could not start
    console_prefix = "FLASH: "  # before the outcome an application timer prints
    follow_app_timer: str | None = None  # the name of the application timer to follow with
    _loop: JobLoop | None = None

    def start_job(self, context) -> JobLoop:
        raise NotImplementedError

    def refused(self, context, error: BaseException) -> str:
        """The line reported for a job that could not start."""
        return " ".join(str(error).split()) or type(error).__name__

    def _start(self, context) -> JobLoop | None:
        try:
            return self.start_job(context)
        except Exception as err:
            if not isinstance(err, PlanError):
                traceback.print_exc()
            self.report({'ERROR'}, self.refusal_prefix + self.refused(context, err))
            redraw_panels()
            return None

    def _ended(self, outcome: Outcome):
        if outcome.message:
            self.report({outcome.report_level}, self.report_prefix + outcome.message)
        redraw_panels()
        return {'FINISHED'} if outcome.ok else {'CANCELLED'}

    def execute(self, context):
        loop = self._start(context)
        if loop is None:
            return {'CANCELLED'}
        return self._ended(run_blocking(loop))

    def invoke(self, context, event):
        if bpy.app.background:  # timers never run in background mode
            return self.execute(context)
        loop = self._start(context)
        if loop is None:
            return {'CANCELLED'}
        if self.follow_app_timer:
            follow_with_app_timer(self.follow_app_timer, loop, self.console_prefix)
            return {'FINISHED'}
        self._loop = loop
        self.add_timer(context, loop.interval)
        context.window_manager.modal_handler_add(self)
        redraw_panels()
        return {'RUNNING_MODAL'}

    def modal(self, context, event):
        if event.type != 'TIMER':
            return {'PASS_THROUGH'}
        try:
            finished = self._loop.advance()
        except Exception as err:  # never leave a timer ticking with the job still "running"
            traceback.print_exc()
            self._loop.stop()
            self.remove_timer(context)
            self.report({'ERROR'}, f"{self.report_prefix}the job stopped: {' '.join(str(err).split())}")
            redraw_panels()
            return {'CANCELLED'}
        redraw_panels()
        if not finished:
            return {'PASS_THROUGH'}
        self.remove_timer(context)
        return self._ended(self._loop.finish())

    def cancel(self, context):
        """Blender ended the modal operator (file load, window closed): stop the job."""
        if self._loop is not None:
            self._loop.stop()
        self.remove_timer(context)


def follow_with_app_timer(name: str, loop: JobLoop, prefix: str = "FLASH: ") -> None:
    """Follow ``loop`` on a persistent application timer (it survives opening another
    file), replacing one of the same ``name``; its outcome goes to the console."""
    stop_app_timer(name)

    def tick() -> float | None:
        try:
            finished = loop.advance()
        except Exception as err:  # a timer that raises is dropped by Blender: stop the job with it
            traceback.print_exc()
            APP_TIMERS.pop(name, None)
            loop.stop()
            print(f"{prefix}the job stopped: {' '.join(str(err).split())}")
            redraw_panels()
            return None
        redraw_panels()
        if not finished:
            return loop.interval
        APP_TIMERS.pop(name, None)
        outcome = loop.finish()
        if outcome.message:
            print(prefix + outcome.message)
        return None

    APP_TIMERS[name] = tick
    bpy.app.timers.register(tick, first_interval=loop.interval, persistent=True)


def stop_app_timer(name: str) -> None:
    tick = APP_TIMERS.pop(name, None)
    if tick is not None and bpy.app.timers.is_registered(tick):
        bpy.app.timers.unregister(tick)


def remove_all_timers() -> None:
    wm = getattr(bpy.context, "window_manager", None)
    for timer in list(ACTIVE_TIMERS):
        ACTIVE_TIMERS.remove(timer)
        if wm is not None:
            try:
                wm.event_timer_remove(timer)
            except (ReferenceError, RuntimeError, ValueError):
                pass
    for name in list(APP_TIMERS):
        stop_app_timer(name)
