"""The scene's FLASH settings (``scene.flash``): what the panel edits and the operator reads."""

from __future__ import annotations

import bpy
from bpy.props import (BoolProperty, CollectionProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty,
                       StringProperty)
from bpy.types import PropertyGroup

from . import rig_pose
from .request_limits import options
from .services import get_catalog

DEFAULT_ACTION = "soccer_shoot"
DEFAULT_SEED = 42
CUSTOM_LONG_SIDE = 512  # where Long Side starts when Native Size is switched off

OUTPUT_ITEMS = [
    ('PLANE', "Plane", "A camera-facing image-sequence plane that fills the camera's frame"),
    ('VSE', "VSE Strip", "An image strip in the Video Sequencer"),
    ('BOTH', "Both", "A camera plane and a sequencer strip"),
]

OUTSIDE_ITEMS = [
    ('HOLD', "Hold First/Last Frame", "Before the take the plane shows its first frame, after it its last"),
    ('HIDE', "Hide Outside the Take", "The plane is hidden (renders and viewport) before and after the take"),
]

MOTION_ITEMS = [
    ('ACTION', "Action", "The action's prompt (and its trained weights) alone decide the motion"),
    ('RIG', "Rig", "An armature in the scene: its pose on each of the take's frames, through the shot's camera, "
                   "steers the person"),
    ('CLIP', "Reference Clip", "A video of a person: the engine reads their poses and moves the shot's person "
                               "the same way"),
]

END_ITEMS = [
    (rig_pose.HEAD, "Head", "The point is at the bone's head (its root)"),
    (rig_pose.TAIL, "Tail", "The point is at the bone's tail (its tip)"),
    (rig_pose.FACE, "On Head", "A face point placed on this head bone, with a human's proportions"),
]

# Blender keeps only pointers to enum item strings: the list must outlive the callback.
_items_keepalive: list = []


def _action_items(self, context):
    global _items_keepalive
    try:
        items = get_catalog().enum_items(getattr(self, "action_id", "") or DEFAULT_ACTION)
    except Exception as err:  # a broken bundle: show it rather than an empty list
        items = [("", "(no actions)", str(err), 0)]
    _items_keepalive = items or [("", "(no actions)", "no presets found: reinstall the extension", 0)]
    return _items_keepalive


def _get_action(self) -> int:
    return get_catalog().index(self.action_id or DEFAULT_ACTION)


def _set_action(self, value: int) -> None:
    actions = get_catalog().refresh()
    if not 0 <= value < len(actions):
        return
    chosen = actions[value]
    if chosen.id != self.action_id:
        self.action_id = chosen.id
        self.prompt = chosen.prompt  # prefilled from the action, then the user's to edit


def _is_armature(_self, obj) -> bool:
    return obj.type == 'ARMATURE'


def _clip_changed(self, _context) -> None:
    """Read the new clip's length now, so the panel can show it (it may not open files while drawing)."""
    from .rig_motion import clip_info, forget_clip_info

    forget_clip_info()
    if self.clip_path:
        try:
            clip_info(bpy.path.abspath(self.clip_path))
        except Exception:  # the panel then offers to read it again; the take checks it anyway
            pass


class FlashBonePoint(PropertyGroup):
    """One row of the bone table: which bone gives an OpenPose point (empty: the detected rig's)."""

    point: StringProperty(name="Point", description="The OpenPose body point")
    bone: StringProperty(name="Bone", description="The bone that gives this point (empty: the one the rig's "
                                                  "names say: Rigify, Mixamo, Auto-Rig Pro)")
    end: EnumProperty(name="End", items=END_ITEMS, default=rig_pose.HEAD)


class FlashSceneSettings(PropertyGroup):
    # The stored choice is the action's id (stable when actions are added or removed);
    # ``action`` is the dropdown over it.
    action_id: StringProperty(name="Action Id", default=DEFAULT_ACTION)
    action: EnumProperty(name="Action", description="What the person in the shot does",
                         items=_action_items, get=_get_action, set=_set_action)
    prompt: StringProperty(name="Prompt", description="The action sentence (empty: the action's own)")
    # Limits and defaults: the engine's request schema (request_limits.py).
    seed: IntProperty(name="Seed", **{**options("seed"), "default": DEFAULT_SEED},
                      description="Same seed, same settings: the same clip")
    frames: IntProperty(name="Frames", **options("frames"),
                        description="Frames in the clip (at most what the model's motion takes)")
    steps: IntProperty(name="Steps", **options("steps"), description="Denoising steps (DDIM)")
    guidance: FloatProperty(name="Guidance", **options("guidance"), precision=1,
                            description="Classifier-free guidance scale")
    output: EnumProperty(name="Output", items=OUTPUT_ITEMS, default='BOTH')
    native_size: BoolProperty(name="Native Size", default=True,
                              description="Clips at the model's own size (64 px for the built-in mannequin model, "
                                          "512 for Stable Diffusion 1.5), the short side following the camera's "
                                          "aspect ratio; off: Long Side")
    long_side: IntProperty(name="Long Side", **{**options("long_side"), "default": CUSTOM_LONG_SIDE}, step=8,
                           subtype='PIXEL', description="The clip's long side in pixels when Native Size is off "
                                                        "(rounded to the model's size step, 8 for Stable "
                                                        "Diffusion); the short side follows the camera's "
                                                        "aspect ratio")
    plane_distance: FloatProperty(name="Plane Distance", min=0.001, default=10.0, unit='LENGTH',
                                  description="How far in front of the camera the clip's plane sits "
                                              "(kept inside the camera's clipping range)")
    outside: EnumProperty(name="Outside the Take", items=OUTSIDE_ITEMS, default='HOLD',
                          description="What a new take's plane shows on the scene frames before and after it")
    # Motion (motion.py): what moves the person, and the scene's depth.
    motion: EnumProperty(name="Motion", items=MOTION_ITEMS, default='ACTION')
    rig: PointerProperty(name="Rig", type=bpy.types.Object, poll=_is_armature,
                         description="The armature whose pose drives the take")
    clip_path: StringProperty(name="Reference Clip", subtype='FILE_PATH', update=_clip_changed,
                              description="A video of a person doing the motion")
    clip_start: IntProperty(name="Start", **options("driving_start"), default=0,
                            description="The clip's first frame the take uses (0: its first)")
    use_depth: BoolProperty(name="Depth from Scene", default=False,
                            description="Also steer by the shot's depth: a depth pass of the camera on each of the "
                                        "take's frames (rendered aside; your render settings stay as they are)")
    pose_strength: FloatProperty(name="Pose Strength", **options("pose_strength"), precision=2,
                                 description="How strongly the rig's or the clip's poses steer")
    depth_strength: FloatProperty(name="Depth Strength", **options("depth_strength"), precision=2,
                                  description="How strongly the scene's depth steers")
    bone_points: CollectionProperty(type=FlashBonePoint, name="Bone Table",
                                    description="Which bone gives each OpenPose point (saved in the file)")


def current_action(settings):
    """The catalog entry for the scene's chosen action (None when it no longer exists)."""
    return get_catalog().get(settings.action_id or DEFAULT_ACTION)


def bone_overrides(settings) -> dict:
    """The bone table's filled rows: point -> (bone, end)."""
    return {row.point: (row.bone, row.end) for row in settings.bone_points if row.bone}


def register() -> None:
    bpy.types.Scene.flash = bpy.props.PointerProperty(type=FlashSceneSettings)


def unregister() -> None:
    del bpy.types.Scene.flash
