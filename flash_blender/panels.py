"""View3D > Sidebar > FLASH: action, prompt, settings, the Animate button, progress."""

from __future__ import annotations

import textwrap

from bpy.types import Panel

from .engine import MANAGER
from .takes import Shot, frames_problem, size_text
from .services import get_catalog
from .progress import STATUS
from .properties import current_action
from .timing import DEFAULT_CLIP_FPS, TakeTiming, scene_fps


def wrapped_label(layout, context, text: str, icon: str = 'NONE') -> None:
    """A long message over several lines, so the sidebar does not cut the fix off."""
    region = getattr(context, "region", None)
    scale = (context.preferences.system.ui_scale if context.preferences else 0.0) or 1.0
    width = max(20, int(((region.width if region else 0) or 300) / (7 * scale)))
    column = layout.column(align=True)
    for number, line in enumerate(textwrap.wrap(text, width) or [""]):
        column.label(text=line, icon=icon if number == 0 else 'BLANK1')


class FLASH_PT_animate(Panel):
    bl_space_type = 'VIEW_3D'
    bl_region_type = 'UI'
    bl_category = "FLASH"
    bl_label = "FLASH Previs"

    @classmethod
    def poll(cls, context):
        return context.scene is not None and hasattr(context.scene, "flash")

    def draw(self, context):
        layout = self.layout
        settings = context.scene.flash

        row = layout.row(align=True)
        row.prop(settings, "action", text="")
        row.operator("flash.refresh_actions", text="", icon='FILE_REFRESH')
        action = current_action(settings)
        if action is None:
            layout.label(text=f"Action '{settings.action_id}' not found: pick another", icon='ERROR')
        elif action.note:
            layout.label(text=action.note, icon='INFO')
        for problem in get_catalog().problems[:3]:
            wrapped_label(layout, context, problem, 'ERROR')

        row = layout.row(align=True)
        row.prop(settings, "prompt", text="", placeholder=action.prompt if action else "prompt")
        row.operator("flash.reset_prompt", text="", icon='LOOP_BACK')

        job = STATUS.job
        if job is not None and not job.finished:
            layout.label(text=job.meta.name, icon='RENDER_ANIMATION')
            layout.progress(factor=job.progress.factor, type='BAR', text=job.progress.text)
            layout.operator("flash.cancel_job", text="Cancel", icon='CANCEL')
        else:
            training = STATUS.training
            if training is not None and not training.finished:
                layout.label(text=f"Training '{training.meta.get('name', '')}': {training.progress.text}", icon='TIME')
            camera = context.scene.camera
            row = layout.row()
            row.scale_y = 1.5
            row.operator("flash.animate_action", text="Animate Action", icon='RENDER_ANIMATION')
            if camera is None:
                layout.label(text="No active camera in this scene", icon='ERROR')

        if STATUS.last_error:
            wrapped_label(layout.box(), context, STATUS.last_error, 'ERROR')
        for warning in STATUS.warnings[-2:]:
            wrapped_label(layout, context, warning, 'INFO')
        if STATUS.last_message:
            wrapped_label(layout, context, STATUS.last_message, 'CHECKMARK')
        layout.label(text=f"Engine: {MANAGER.describe()}", icon='SYSTEM')


class FLASH_PT_settings(Panel):
    bl_space_type = 'VIEW_3D'
    bl_region_type = 'UI'
    bl_category = "FLASH"
    bl_label = "Settings"
    bl_parent_id = "FLASH_PT_animate"

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        settings = context.scene.flash
        layout.prop(settings, "frames")
        limits = MANAGER.model_limits()
        problem = frames_problem(settings.frames, limits)
        if problem:
            layout.label(text=problem, icon='ERROR')
        action = current_action(settings)
        render = context.scene.render
        timing = TakeTiming(context.scene.frame_current, settings.frames,
                            (action.fps if action else None) or DEFAULT_CLIP_FPS, scene_fps(render.fps, render.fps_base))
        layout.label(text=f"Take: {timing.describe()}", icon='TIME')
        row = layout.row(align=True)
        row.prop(settings, "seed")
        row.operator("flash.randomize_seed", text="", icon='FILE_REFRESH')
        layout.prop(settings, "steps")
        layout.prop(settings, "guidance")
        layout.prop(settings, "native_size")
        row = layout.row()
        row.enabled = not settings.native_size
        row.prop(settings, "long_side")
        shot = Shot("", "", 0, render.resolution_x, render.resolution_y, render.pixel_aspect_x, render.pixel_aspect_y)
        layout.label(text=size_text(shot, None if settings.native_size else settings.long_side, limits))
        layout.prop(settings, "output")
        if settings.output in ('PLANE', 'BOTH'):
            layout.prop(settings, "plane_distance")
            layout.prop(settings, "outside")


classes = (FLASH_PT_animate, FLASH_PT_settings)
