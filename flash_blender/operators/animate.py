"""``flash.animate_action``: reference render → engine job → plane and/or strip.

The use case is ``animate_take.py`` (and, without Blender, ``takes.py``); this operator
only chooses the settings and follows the job with the add-on's job loop: modally on a
timer in the UI, so Blender stays usable; blocking in background mode
(``bpy.app.background``) and whenever the operator is executed rather than invoked,
printing its progress. Operator properties that are set override the scene's FLASH
settings, so ``bpy.ops.flash.animate_action(action="soccer_shoot", frames=4)`` works headless.
"""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, StringProperty
from bpy.types import Operator

from ..animate_take import OVERRIDES, TakeEnd, abandon_take, start_take, take_loop
from ..job_loop import JobLoop
from ..progress import STATUS, one_line
from ..properties import CUSTOM_LONG_SIDE, MOTION_ITEMS, OUTPUT_ITEMS
from ..request_limits import options
from .modal import JobOperator, redraw_panels


def abandon_running_job(reason: str) -> None:
    """Stop the running job for good (file closing, add-on disabled)."""
    abandon_take(STATUS.job, reason)


def show_end(end: TakeEnd) -> None:
    """What the panel shows after a take."""
    STATUS.warnings += end.notes
    if end.ok or end.level == "WARNING":
        STATUS.last_message = end.message
    else:
        STATUS.last_error = end.message


class FLASH_OT_animate_action(JobOperator, Operator):
    bl_idname = "flash.animate_action"
    bl_label = "Animate Action"
    bl_description = ("Render the active camera's view, animate it with the chosen action, and bring the clip "
                      "back as a camera plane and/or a sequencer strip")
    bl_options = {'UNDO'}
    refusal_prefix = ""  # the panel shows the same line

    # Overrides: unset ones come from the scene's FLASH settings (limits: the request schema).
    action: StringProperty(name="Action", options={'SKIP_SAVE'},
                           description="Preset id or name, or a trained action's folder name")
    prompt: StringProperty(name="Prompt", options={'SKIP_SAVE'})
    seed: IntProperty(name="Seed", **options("seed"), options={'SKIP_SAVE'})
    frames: IntProperty(name="Frames", **options("frames"), options={'SKIP_SAVE'})
    steps: IntProperty(name="Steps", **options("steps"), options={'SKIP_SAVE'})
    guidance: FloatProperty(name="Guidance", **options("guidance"), options={'SKIP_SAVE'})
    output: EnumProperty(name="Output", items=OUTPUT_ITEMS, default='BOTH', options={'SKIP_SAVE'})
    long_side: IntProperty(name="Long Side", **{**options("long_side"), "default": CUSTOM_LONG_SIDE},
                           options={'SKIP_SAVE'}, description="Set: this long side instead of the model's native size")
    # Only as overrides (scripts, the batch): where takes go, and an MP4 beside the frames.
    output_root: StringProperty(name="Output Folder", options={'SKIP_SAVE'},
                                description="Instead of the preferences' Output Folder (// is beside the .blend)")
    mp4: BoolProperty(name="MP4", default=False, options={'SKIP_SAVE'},
                      description="Also write flash.mp4 next to the frames")
    # Motion overrides (the scene's Motion settings otherwise)
    motion: EnumProperty(name="Motion", items=MOTION_ITEMS, default='ACTION', options={'SKIP_SAVE'})
    rig: StringProperty(name="Rig", options={'SKIP_SAVE'}, description="The armature object's name")
    clip: StringProperty(name="Reference Clip", subtype='FILE_PATH', options={'SKIP_SAVE'})
    depth: BoolProperty(name="Depth from Scene", default=False, options={'SKIP_SAVE'})

    @classmethod
    def poll(cls, context):
        if STATUS.busy:
            cls.poll_message_set("A FLASH job is running: wait for it or cancel it")
            return False
        if STATUS.training_busy:
            cls.poll_message_set("The engine is training an action (Preferences > FLASH Previs): "
                                 "wait for it or cancel it")
            return False
        return context.scene is not None

    def refused(self, context, error: BaseException) -> str:
        STATUS.last_error = one_line(error)
        return STATUS.last_error

    def start_job(self, context) -> JobLoop:
        STATUS.clear_messages()
        overrides = {name: getattr(self, name) for name in OVERRIDES if self.properties.is_property_set(name)}
        output_folder = self.output_root if self.properties.is_property_set("output_root") else None
        start = start_take(context, overrides, output_folder, mp4=self.mp4)
        job = STATUS.job = start.job
        for warning in start.warnings:
            STATUS.warnings.append(warning)
            self.report({'WARNING'}, warning)
        size = "the model's native size" if job.meta.native_size else f"{job.args['width']}x{job.args['height']}"
        print(f"FLASH: {job.meta.name}: {job.args['frames']} frames at {size}")

        def shown(end: TakeEnd) -> None:
            show_end(end)
            for note in end.notes:
                self.report({'INFO'}, note)

        return take_loop(job, shown=shown)


class FLASH_OT_cancel_job(Operator):
    bl_idname = "flash.cancel_job"
    bl_label = "Cancel"
    bl_description = "Stop the running FLASH job (the engine stops within a step; nothing is imported)"

    @classmethod
    def poll(cls, context):
        return STATUS.busy

    def execute(self, context):
        STATUS.job.cancel()
        self.report({'INFO'}, "FLASH: cancelling")
        redraw_panels()
        return {'FINISHED'}


classes = (FLASH_OT_animate_action, FLASH_OT_cancel_job)
