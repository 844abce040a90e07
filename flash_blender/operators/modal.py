"""The window timer a modal operator of this add-on runs on, and a registry of them so that
unregistering the add-on can remove any still running."""

from __future__ import annotations

import bpy

ACTIVE_TIMERS: list = []


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


def remove_all_timers() -> None:
    wm = getattr(bpy.context, "window_manager", None)
    for timer in list(ACTIVE_TIMERS):
        ACTIVE_TIMERS.remove(timer)
        if wm is not None:
            try:
                wm.event_timer_remove(timer)
            except (ReferenceError, RuntimeError, ValueError):
                pass
