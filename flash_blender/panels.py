"""View3D > Sidebar > FLASH: action, prompt, settings, the Animate button, progress."""

from __future__ import annotations

import textwrap

import bpy
from bpy.types import Panel

from . import rig_pose
from .engine import MANAGER
from .motion import describe_clip
from .takes import Shot, frames_problem, size_text
from .services import get_catalog
from .progress import STATUS
from .properties import END_ITEMS, bone_overrides, current_action
from .rig_motion import known_clip_info
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


END_LABELS = {identifier: name.lower() for identifier, name, _ in END_ITEMS}


class FLASH_PT_motion(Panel):
    bl_space_type = 'VIEW_3D'
    bl_region_type = 'UI'
    bl_category = "FLASH"
    bl_label = "Motion"
    bl_parent_id = "FLASH_PT_animate"

    def draw(self, context):
        layout = self.layout
        settings = context.scene.flash
        layout.row().prop(settings, "motion", expand=True)
        column = layout.column()
        column.use_property_split = True
        column.use_property_decorate = False
        if settings.motion == 'RIG':
            column.prop(settings, "rig")
            rig = settings.rig
            if rig is None:
                column.label(text="Pick the armature whose pose drives the take", icon='INFO')
            else:
                ok, text = rig_pose.mapping_status(rig.name, rig.data.bones.keys(), bone_overrides(settings))
                wrapped_label(column, context, f"Bones: {text}" if ok else text, 'CHECKMARK' if ok else 'ERROR')
        elif settings.motion == 'CLIP':
            column.prop(settings, "clip_path")
            column.prop(settings, "clip_start")
            row = column.row(align=True)
            info = known_clip_info(bpy.path.abspath(settings.clip_path)) if settings.clip_path else None
            row.label(text=describe_clip(info, settings.clip_start) if settings.clip_path else "Clip: none picked")
            row.operator("flash.read_clip", text="", icon='FILE_REFRESH')
        if settings.motion != 'ACTION':
            column.prop(settings, "pose_strength")
        column.prop(settings, "use_depth")
        if settings.use_depth:
            column.prop(settings, "depth_strength")
        row = layout.row()
        row.enabled = settings.motion == 'RIG' or settings.use_depth
        row.operator("flash.preview_motion", icon='HIDE_OFF')


class FLASH_PT_motion_bones(Panel):
    bl_space_type = 'VIEW_3D'
    bl_region_type = 'UI'
    bl_category = "FLASH"
    bl_label = "Bones"
    bl_parent_id = "FLASH_PT_motion"
    bl_options = {'DEFAULT_CLOSED'}

    @classmethod
    def poll(cls, context):
        return context.scene is not None and context.scene.flash.motion == 'RIG'

    def draw(self, context):
        layout = self.layout
        settings = context.scene.flash
        rig = settings.rig
        rows = settings.bone_points
        if len(rows) < len(rig_pose.POINTS):
            layout.operator("flash.edit_bones", icon='BONE_DATA')
            return
        row = layout.row(align=True)
        row.operator("flash.edit_bones", text="Copy Detected", icon='COPYDOWN').fill = True
        row.operator("flash.clear_bones", text="Clear", icon='X')
        detected = rig_pose.detected_sources(rig.data.bones.keys()) if rig is not None else {}
        for item in rows:
            line = layout.row(align=True)
            line.label(text=rig_pose.label(item.point))
            if rig is not None:
                line.prop_search(item, "bone", rig.data, "bones", text="")
            else:
                line.prop(item, "bone", text="")
            line.prop(item, "end", text="")
            if not item.bone:
                source = detected.get(item.point)
                hint = f"{source.bone} ({END_LABELS[source.end]})" if source else (
                    "shoulders' mid-point" if item.point == "neck" else "not given")
                layout.label(text=f"    auto: {hint}")


classes = (FLASH_PT_animate, FLASH_PT_settings, FLASH_PT_motion, FLASH_PT_motion_bones)
