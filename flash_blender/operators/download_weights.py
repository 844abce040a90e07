"""``flash.download_weights`` and ``flash.cancel_download``: the base weights, from Preferences.

Runs ``<engine python> -m flash_engine.weights fetch --dest <user dir>/weights --json`` (see
``downloads.py``), followed by the add-on's job loop: in the UI on a modal timer (the
preferences show the size, a progress bar and Cancel); in background mode blocking, printing
its progress. A cancelled or failed download keeps what it got: pressing the button again
resumes.
"""

from __future__ import annotations

from bpy.types import Operator

from .. import bundled, downloads, installer
from ..job_loop import JobLoop, Outcome, changed_lines
from ..progress import STATUS
from ..services import engine_python, get_prefs, user_dir, weights_dir
from .modal import JobOperator, redraw_panels

DOWNLOAD_TICK_S = 0.2


def _download_running() -> bool:
    return STATUS.download is not None and not STATUS.download.finished


class FLASH_OT_download_weights(JobOperator, Operator):
    bl_idname = "flash.download_weights"
    follow_app_timer = "download"  # not the Preferences window's timer: closing it must not cancel GBs
    bl_label = "Download Base Weights"
    bl_description = ("Download Stable Diffusion 1.5 and the AnimateDiff motion adapter (several GB) into the "
                      "extension's user folder, with the engine's Python; resumes an unfinished download")

    @classmethod
    def poll(cls, context):
        if _download_running():
            cls.poll_message_set("The download is running")
            return False
        return True

    def start_job(self, context) -> JobLoop:
        python = engine_python(get_prefs(context))  # the engine's environment has huggingface_hub
        run = downloads.DownloadRun(downloads.fetch_command(python, weights_dir()),
                                    env=installer.child_environment(bundled.engine_root()), cwd=str(user_dir()))
        STATUS.download = run

        def finish() -> Outcome:
            if run.cancelled:
                return Outcome(False, run.text, "WARNING")
            if not run.ok:
                return Outcome(False, run.text)
            return Outcome(True, f"base weights downloaded to {weights_dir()}")

        return JobLoop(advance=lambda: run.finished, finish=finish,
                       lines=changed_lines(lambda: run.text, prefix="FLASH download: "), stop=run.cancel,
                       interval=DOWNLOAD_TICK_S)


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
