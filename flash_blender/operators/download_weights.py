"""``flash.download_weights`` and ``flash.cancel_download``: the base weights, from Preferences.

Runs ``<engine python> -m flash_engine.weights fetch --dest <user dir>/weights --json`` (see
``downloads.py``). In the UI a modal timer follows it (the preferences show the size, a
progress bar and Cancel); in background mode it runs blocking and prints its progress. A
cancelled or failed download keeps what it got: pressing the button again resumes.
"""

from __future__ import annotations

import time

import bpy
from bpy.types import Operator

from .. import bundled, downloads, installer
from ..errors import PlanError
from ..services import engine_python, get_prefs, user_dir, weights_dir
from ..progress import STATUS
from .modal import TimerOperator, redraw_panels


def _download_running() -> bool:
    return STATUS.download is not None and not STATUS.download.finished


class FLASH_OT_download_weights(TimerOperator, Operator):
    bl_idname = "flash.download_weights"
    bl_label = "Download Base Weights"
    bl_description = ("Download Stable Diffusion 1.5 and the AnimateDiff motion adapter (several GB) into the "
                      "extension's user folder, with the engine's Python; resumes an unfinished download")

    @classmethod
    def poll(cls, context):
        if _download_running():
            cls.poll_message_set("The download is running")
            return False
        return True

    def _start(self, context) -> downloads.DownloadRun:
        python = engine_python(get_prefs(context))  # the engine's environment has huggingface_hub
        run = downloads.DownloadRun(downloads.fetch_command(python, weights_dir()),
                                    env=installer.child_environment(bundled.engine_root()), cwd=str(user_dir()))
        STATUS.download = run
        return run

    def execute(self, context):
        try:
            run = self._start(context)
        except PlanError as err:
            self.report({'ERROR'}, f"FLASH: {err}")
            return {'CANCELLED'}
        last = ""
        while not run.finished:
            if run.text != last:
                last = run.text
                print(f"FLASH download: {last}")
            time.sleep(0.1)
        return self._end(context, run)

    def invoke(self, context, event):
        if bpy.app.background:
            return self.execute(context)
        try:
            self._start(context)
        except PlanError as err:
            self.report({'ERROR'}, f"FLASH: {err}")
            return {'CANCELLED'}
        self.add_timer(context, 0.2)
        context.window_manager.modal_handler_add(self)
        redraw_panels()
        return {'RUNNING_MODAL'}

    def modal(self, context, event):
        if event.type != 'TIMER':
            return {'PASS_THROUGH'}
        run = STATUS.download
        if run is None:
            self.remove_timer(context)
            return {'CANCELLED'}
        redraw_panels()
        if run.finished:
            return self._end(context, run)
        return {'PASS_THROUGH'}

    def cancel(self, context):
        if STATUS.download is not None:
            STATUS.download.cancel()
        self.remove_timer(context)

    def _end(self, context, run: downloads.DownloadRun):
        self.remove_timer(context)
        redraw_panels()
        if run.cancelled:
            self.report({'WARNING'}, f"FLASH: {run.text}")
            return {'CANCELLED'}
        if not run.ok:
            self.report({'ERROR'}, f"FLASH: {run.text}")
            return {'CANCELLED'}
        self.report({'INFO'}, f"FLASH: base weights downloaded to {weights_dir()}")
        return {'FINISHED'}


class FLASH_OT_cancel_download(Operator):
    bl_idname = "flash.cancel_download"
    bl_label = "Cancel Download"
    bl_description = "Stop the download (what it got is kept: Download again resumes)"

    @classmethod
    def poll(cls, context):
        return _download_running()

    def execute(self, context):
        STATUS.download.cancel()
        redraw_panels()
        return {'FINISHED'}


classes = (FLASH_OT_download_weights, FLASH_OT_cancel_download)
