"""``flash.setup_engine``: create the managed engine environment (the "Set up engine" button).

Runs ``python -m flash_engine.setup --env <user dir>/engine-env`` with Blender's own Python
in a subprocess, followed by the add-on's job loop: in the UI on a modal timer (the
preferences show its lines and a progress bar); in background mode blocking, printing them.
"""

from __future__ import annotations

import sys

from bpy.types import Operator

from .. import bundled, installer
from ..engine import MANAGER
from ..job_loop import JobLoop, Outcome
from ..progress import STATUS
from ..services import get_prefs, managed_env_dir, user_dir
from .modal import JobOperator

SETUP_TICK_S = 0.2


def _setup_running() -> bool:
    return STATUS.setup is not None and not STATUS.setup.finished


class FLASH_OT_setup_engine(JobOperator, Operator):
    bl_idname = "flash.setup_engine"
    follow_app_timer = "setup"  # survives the Preferences window closing or another file opening
    bl_label = "Set up engine"
    bl_description = ("Create the engine's own Python environment (PyTorch, diffusers) in the extension's user "
                      "folder; resumable, and safe to run again to update it")

    @classmethod
    def poll(cls, context):
        if _setup_running():
            cls.poll_message_set("The engine setup is running")
            return False
        return True

    def start_job(self, context) -> JobLoop:
        command = installer.setup_command(managed_env_dir(), python=sys.executable)
        run = installer.SetupRun(command, env=installer.child_environment(bundled.engine_root()),
                                 cwd=str(user_dir()))
        STATUS.setup = run
        seen = 0

        def lines() -> list[str]:
            nonlocal seen
            new, seen = run.new_lines(seen)
            return [f"FLASH setup: {line}" for line in new]

        def finish() -> Outcome:
            if not run.ok:
                return Outcome(False, run.text)
            get_prefs(context).engine_source = 'MANAGED'
            MANAGER.shutdown()  # the next job starts an engine from the fresh environment
            return Outcome(True, "the engine is set up")

        return JobLoop(advance=lambda: run.finished, finish=finish, lines=lines, stop=run.stop,
                       interval=SETUP_TICK_S)


classes = (FLASH_OT_setup_engine,)
