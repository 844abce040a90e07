"""The Motion panel's buttons: Preview Motion, the bone table, reading a reference clip.

``flash.preview_motion`` draws the take's poses (and depth) on a camera plane without the
engine: the same frames, camera and timing a take would read (``motion_take.py``).
"""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, EnumProperty, StringProperty
from bpy.types import Operator

from .. import rig_pose
from ..animate_take import MOTION_OVERRIDES, check_camera, take_choice, take_timing
from ..engine import MANAGER
from ..errors import PlanError
from ..motion_take import prepare_motion, preview_motion
from ..progress import STATUS, one_line
from ..properties import MOTION_ITEMS
from ..rig_motion import clip_info
from ..services import get_prefs, user_dir
from ..take_planning import check_writable, output_root
from ..takes import Shot, reference_size


def shot_of(scene, camera) -> Shot:
    render = scene.render
    return Shot(scene=scene.name, camera=camera.name, frame=scene.frame_current, resolution_x=render.resolution_x,
                resolution_y=render.resolution_y, pixel_aspect_x=render.pixel_aspect_x,
                pixel_aspect_y=render.pixel_aspect_y)


class FLASH_OT_preview_motion(Operator):
    bl_idname = "flash.preview_motion"
    bl_label = "Preview Motion"
    bl_description = ("Draw the take's poses (and depth) as an image sequence on a camera plane, as the engine "
                      "will get them: check that the skeleton lands on the character before animating")
    bl_options = {'REGISTER', 'UNDO'}

    motion: EnumProperty(name="Motion", items=MOTION_ITEMS, default='RIG', options={'SKIP_SAVE'})
    rig: StringProperty(name="Rig", options={'SKIP_SAVE'})
    depth: BoolProperty(name="Depth from Scene", default=False, options={'SKIP_SAVE'})

    @classmethod
    def poll(cls, context):
        if STATUS.busy:
            cls.poll_message_set("A FLASH job is running: wait for it or cancel it")
            return False
        return context.scene is not None

    def execute(self, context):
        scene = context.scene
        overrides = {name: getattr(self, name) for name in MOTION_OVERRIDES
                     if name in self.properties.bl_rna.properties and self.properties.is_property_set(name)}
        try:
            camera = check_camera(scene)
            choice = take_choice(scene, overrides)
            timing = take_timing(scene, choice)
            prefs = get_prefs(context)
            root = output_root(bpy.data.filepath, prefs.output_root, user_dir())
            size = reference_size(choice, shot_of(scene, camera), MANAGER.model_limits())
            prepared = prepare_motion(context, scene, camera, choice.motion, timing)
            check_writable(root.folder)
            plane, folder = preview_motion(context, scene, camera, prepared, timing, size, root,
                                           scene.flash.plane_distance)
        except PlanError as err:
            STATUS.last_error = one_line(err)
            self.report({'ERROR'}, f"FLASH: {STATUS.last_error}")
            return {'CANCELLED'}
        STATUS.last_error = ""
        STATUS.last_message = (f"Motion preview: {timing.describe()}, scene frames {timing.frame_start}-"
                               f"{timing.frame_end}, on plane '{plane.name}' ({folder})")
        self.report({'INFO'}, f"FLASH: {STATUS.last_message}")
        return {'FINISHED'}


def ensure_bone_rows(settings) -> None:
    """The bone table holds one row per OpenPose point, in OpenPose's order."""
    have = {row.point for row in settings.bone_points}
    for point in rig_pose.POINTS:
        if point not in have:
            row = settings.bone_points.add()
            row.point = point


class FLASH_OT_edit_bones(Operator):
    bl_idname = "flash.edit_bones"
    bl_label = "Edit Bone Table"
    bl_description = ("Show a row per OpenPose point: a bone picked there replaces the one the rig's names say "
                      "(empty rows keep the detected bone)")
    bl_options = {'REGISTER', 'UNDO'}

    fill: BoolProperty(name="Copy Detected", default=False, options={'SKIP_SAVE'},
                       description="Fill the empty rows with the bones detected on the picked rig")

    def execute(self, context):
        settings = context.scene.flash
        ensure_bone_rows(settings)
        if self.fill:
            rig = settings.rig
            found = rig_pose.detect(rig.data.bones.keys()) if rig is not None else None
            if found is None:
                self.report({'ERROR'}, "FLASH: pick a rig whose bone names FLASH knows first (Rigify, Mixamo, "
                                       "Auto-Rig Pro)")
                return {'CANCELLED'}
            preset, prefix = found
            bones = set(rig.data.bones.keys())
            for row in settings.bone_points:
                if not row.bone:
                    for name, end in preset.points.get(row.point, ()):
                        if prefix + name in bones:
                            row.bone, row.end = prefix + name, end
                            break
        return {'FINISHED'}


class FLASH_OT_clear_bones(Operator):
    bl_idname = "flash.clear_bones"
    bl_label = "Clear Bone Table"
    bl_description = "Empty every row: the bones the rig's names say are used again"
    bl_options = {'REGISTER', 'UNDO'}

    def execute(self, context):
        for row in context.scene.flash.bone_points:
            row.bone, row.end = "", rig_pose.HEAD
        return {'FINISHED'}


class FLASH_OT_read_clip(Operator):
    bl_idname = "flash.read_clip"
    bl_label = "Read Clip"
    bl_description = "Read the reference clip's length (frames and frame rate)"

    def execute(self, context):
        path = bpy.path.abspath(context.scene.flash.clip_path)
        info = clip_info(path)
        if info.frames < 2:
            self.report({'ERROR'}, f"FLASH: {path} is not a video Blender can read")
            return {'CANCELLED'}
        self.report({'INFO'}, f"FLASH: {info.frames} frames at {info.fps:g} fps")
        return {'FINISHED'}


classes = (FLASH_OT_preview_motion, FLASH_OT_edit_bones, FLASH_OT_clear_bones, FLASH_OT_read_clip)
