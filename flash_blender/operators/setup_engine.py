"""``flash.setup_engine``: create the managed engine environment (the "Set up engine" button).

Runs ``python -m flash_engine.setup --env <user dir>/engine-env`` with Blender's own Python
in a subprocess. In the UI a modal timer follows its lines (the preferences show them and
a progress bar); in background mode it runs blocking and prints them.
"""

from __future__ import annotations

import sys
import time

import bpy
from bpy.types import Operator

from .. import bundled, installer
from ..engine import MANAGER
from ..services import get_prefs, managed_env_dir, user_dir
from ..progress import STATUS
from .modal import TimerOperator, redraw_panels


def _setup_running() -> bool:
    return STATUS.setup is not None and not STATUS.setup.finished


class FLASH_OT_setup_engine(TimerOperator, Operator):
    bl_idname = "flash.setup_engine"
    bl_label = "Set up engine"
    bl_description = ("Create the engine's own Python environment (PyTorch, diffusers) in the extension's user "
                      "folder; resumable, and safe to run again to update it")

    @classmethod
    def poll(cls, context):
        if _setup_running():
            cls.poll_message_set("The engine setup is running")
            return False
        return True

    def _start(self) -> installer.SetupRun:
        command = installer.setup_command(managed_env_dir(), python=sys.executable)
        run = installer.SetupRun(command, env=installer.child_environment(bundled.engine_root()),
                                 cwd=str(user_dir()))
        STATUS.setup = run
        return run

    def execute(self, context):
        run = self._start()
        seen = 0
        while True:
            finished = run.finished  # before reading: every line is in once it is set
            lines, seen = run.new_lines(seen)
            for line in lines:
                print(f"FLASH setup: {line}")
            if finished:
                break
            time.sleep(0.1)
        return self._end(context, run)

    def invoke(self, context, event):
        if bpy.app.background:
            return self.execute(context)
        self._start()
        self.add_timer(context, 0.2)
        context.window_manager.modal_handler_add(self)
        redraw_panels()
        return {'RUNNING_MODAL'}

    def modal(self, context, event):
        if event.type != 'TIMER':
            return {'PASS_THROUGH'}
        run = STATUS.setup
        if run is None:
            self.remove_timer(context)
            return {'CANCELLED'}
        redraw_panels()
        if run.finished:
            return self._end(context, run)
        return {'PASS_THROUGH'}

    def cancel(self, context):
        if STATUS.setup is not None:
            STATUS.setup.stop()
        self.remove_timer(context)

    def _end(self, context, run: installer.SetupRun):
        self.remove_timer(context)
        redraw_panels()
        if not run.ok:
            self.report({'ERROR'}, f"FLASH: {run.text}")
            return {'CANCELLED'}
        get_prefs(context).engine_source = 'MANAGED'
        MANAGER.shutdown()  # the next job starts an engine from the fresh environment
        self.report({'INFO'}, "FLASH: the engine is set up")
        return {'FINISHED'}


classes = (FLASH_OT_setup_engine,)
