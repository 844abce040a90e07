"""The mannequin world as an artist's Blender shot: the figure on an armature, keyed in time.

:func:`build_rigged_shot` turns a clip spec into a scene an artist could have blocked: the
world's 13 segment meshes, each parented to a bone of an armature with Rigify metarig names
(``spine`` the pelvis, ``spine.003`` the chest, ``spine.006`` the head, ``upper_arm.L`` …
``foot.R``, ``hand.L/R`` at the wrists, ``eye.L/R`` and ``ear.L/R`` on the head, and a
``nose`` bone the add-on's bone table has to be pointed at: the metarig preset has no nose
bone), in a bone hierarchy like a real rig's. The bones are keyed from the world's forward
kinematics, one key per clip frame on the scene frames the take will play them (at 24 fps,
frames 1, 4, 7, … for the world's 8 fps), and the spec's camera is the scene's camera.

So reading the rig the add-on's way gives the world's ground-truth keypoints
(:func:`mannequin.camera.openpose_keypoints`, the benchmark's rig-pose row), and the shot's
first frame renders as the world's reference frame: ``tests/blender/test_blender_mannequin_rig.py``
checks both, and ``tools/motion_pictures.py`` makes the docs' pictures from it. Needs bpy
(the mannequin's renderer builds the scene; see :func:`mannequin.render.hand_over_scene`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from mannequin import actions as A
from mannequin.camera import face_points_local, figure_transforms, placement
from mannequin.generate import FPS
from mannequin.spec import ClipSpec

SHOT_NAME = "MannequinShot"
ARMATURE_NAME = "Mannequin"
NOSE_BONE = "nose"
# Segment -> (bone, parent bone, length, the bone's direction in the segment's frame: limbs hang
# down the segment's -Z, the trunk and head point up its +Z).
SEGMENT_BONES = {
    "pelvis": ("spine", None, A.SPINE_OFFSET[2], +1),
    "torso": ("spine.003", "spine", A.NECK_OFFSET[2], +1),
    "head": ("spine.006", "spine.003", 0.25, +1),
}
for _side, _suffix in (("l", "L"), ("r", "R")):
    SEGMENT_BONES |= {
        f"{_side}_upper_arm": (f"upper_arm.{_suffix}", "spine.003", A.UPPER_ARM, -1),
        f"{_side}_forearm": (f"forearm.{_suffix}", f"upper_arm.{_suffix}", A.FOREARM, -1),
        f"{_side}_thigh": (f"thigh.{_suffix}", "spine", A.THIGH, -1),
        f"{_side}_shin": (f"shin.{_suffix}", f"thigh.{_suffix}", A.SHIN, -1),
        f"{_side}_foot": (f"foot.{_suffix}", f"shin.{_suffix}", A.FOOT_TOE, -1),
    }
_FACE_BONES = {"nose": "nose", "r_eye": "eye.R", "l_eye": "eye.L", "r_ear": "ear.R", "l_ear": "ear.L"}
SMALL_BONE = 0.04  # length of the bones that only mark a point (hands, face)


class RiggedShot(NamedTuple):
    scene: object
    armature: object
    camera: object
    segments: dict        # segment name -> its mesh object (parented to its bone)
    key_frames: list      # the scene frame of each clip frame


def _axis_turn(direction: int) -> np.ndarray:
    """A bone's frame in its segment's: the bone's +Y (Blender's bone axis) along the segment's
    ``direction`` · Z, a rotation about X."""
    angle = math.radians(90.0 * direction)
    turn = np.eye(4)
    turn[1:3, 1:3] = [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
    return turn


def _translation(offset) -> np.ndarray:
    out = np.eye(4)
    out[:3, 3] = offset
    return out


def bone_layout() -> dict:
    """Bone -> (parent, length, segment, the bone's frame in its segment's frame)."""
    layout = {bone: (parent, length, segment, _axis_turn(direction))
              for segment, (bone, parent, length, direction) in SEGMENT_BONES.items()}
    for side, suffix in (("l", "L"), ("r", "R")):  # the wrist: the forearm's far end
        layout[f"hand.{suffix}"] = (f"forearm.{suffix}", SMALL_BONE, f"{side}_forearm",
                                    _translation((0.0, 0.0, -A.FOREARM)) @ _axis_turn(-1))
    face_points, _normals = face_points_local()
    for (point, bone), at in zip(_FACE_BONES.items(), face_points):  # the world's face points
        layout[bone] = ("spine.006", SMALL_BONE, "head", _translation(at) @ _axis_turn(+1))
    return layout


def armature_space_poses(spec: ClipSpec | None) -> dict:
    """Bone -> (F, 4, 4): each bone's frame in the armature's space for every clip frame of
    ``spec`` (the armature object carries the spec's placement: its scale and position), or
    for the mannequin's rest pose (one frame) when ``spec`` is None."""
    from mannequin.actions import Pose, action_pose, clip_times, forward_kinematics

    pose = Pose.rest(1) if spec is None else action_pose(spec.action, clip_times(spec.num_frames), spec.speed,
                                                           spec.amplitude, spec.mirror)
    segments = forward_kinematics(pose)
    return {bone: segments[:, A.SEGMENT_INDEX[segment]] @ in_segment
            for bone, (_parent, _length, segment, in_segment) in bone_layout().items()}


def build_rigged_shot(spec: ClipSpec, scene_fps: int = 24, start: int = 1) -> RiggedShot:
    """Build the shot (a new scene, made the window's scene) for ``spec``; see the module doc."""
    import bpy
    from mathutils import Matrix

    if scene_fps % FPS:
        raise ValueError(f"scene_fps must be a multiple of the world's {FPS} fps (the keys land on frames)")
    step = scene_fps // FPS
    from mannequin.render import hand_over_scene

    staged = hand_over_scene(spec, SHOT_NAME)
    scene = staged.scene
    if bpy.context.window is not None:
        bpy.context.window.scene = scene
    render = scene.render
    render.fps, render.fps_base = scene_fps, 1.0
    render.resolution_x = render.resolution_y = 512  # a square shot; the take renders at the model's size
    scene.display.render_aa = "8"  # an artist's antialiased render (the world draws 2× and filters)
    scene.frame_start, scene.frame_end = start, start + step * spec.num_frames - 1

    layout = bone_layout()
    data = bpy.data.armatures.new(ARMATURE_NAME)
    armature = bpy.data.objects.new(ARMATURE_NAME, data)
    scene.collection.objects.link(armature)
    armature.matrix_world = Matrix(placement(spec).tolist())  # the bones carry the rest
    view_layer = scene.view_layers[0]
    view_layer.objects.active = armature
    rest = armature_space_poses(None)
    with bpy.context.temp_override(scene=scene, view_layer=view_layer, active_object=armature, object=armature):
        bpy.ops.object.mode_set(mode="EDIT")
        for bone, (_parent, length, _segment, _frame) in layout.items():
            edit = data.edit_bones.new(bone)
            edit.head, edit.tail = (0.0, 0.0, 0.0), (0.0, 1.0, 0.0)
            edit.matrix = Matrix(rest[bone][0].tolist())
            edit.length = length
        for bone, (parent, *_rest) in layout.items():
            if parent:
                data.edit_bones[bone].parent = data.edit_bones[parent]
        bpy.ops.object.mode_set(mode="OBJECT")

    # Each bone's basis on each clip frame: what puts it at the world's pose given its parent's.
    rest_local = {bone: np.array(data.bones[bone].matrix_local) for bone in layout}
    poses = armature_space_poses(spec)
    key_frames = [start + step * k for k in range(spec.num_frames)]
    for k, frame in enumerate(key_frames):
        for bone, (parent, *_rest) in layout.items():
            relative = np.linalg.inv(rest_local[bone]) @ poses[bone][k]
            if parent:
                relative = (np.linalg.inv(rest_local[bone]) @ rest_local[parent]
                            @ np.linalg.inv(poses[parent][k]) @ poses[bone][k])
            pose_bone = armature.pose.bones[bone]
            pose_bone.matrix_basis = Matrix(relative.tolist())
            for path in ("location", "rotation_quaternion", "scale"):
                pose_bone.keyframe_insert(path, frame=frame)

    # The meshes hang on their bones: a bone child sits at the bone's tail, so the parent inverse
    # moves it back to the head, and its basis undoes the bone's turn in the segment's frame.
    for segment, obj in staged.segments.items():
        bone, _parent, length, _direction = SEGMENT_BONES[segment]
        obj.parent, obj.parent_type, obj.parent_bone = armature, "BONE", bone
        obj.matrix_parent_inverse = Matrix(_translation((0.0, -data.bones[bone].length, 0.0)).tolist())
        obj.matrix_basis = Matrix(np.linalg.inv(layout[bone][3]).tolist())
    scene.frame_set(start)
    return RiggedShot(scene, armature, staged.camera, staged.segments, key_frames)


def segment_errors(shot: RiggedShot, spec: ClipSpec) -> float:
    """The largest difference between the meshes' evaluated world matrices on the key frames and
    the world's own segment transforms: the rig carries the figure exactly when this is ~0."""
    import bpy

    truth = figure_transforms(spec)
    worst = 0.0
    for k, frame in enumerate(shot.key_frames):
        shot.scene.frame_set(frame)
        depsgraph = bpy.context.evaluated_depsgraph_get()
        for segment, obj in shot.segments.items():
            got = np.array(obj.evaluated_get(depsgraph).matrix_world)
            worst = max(worst, float(np.abs(got - truth[k, A.SEGMENT_INDEX[segment]]).max()))
    shot.scene.frame_set(shot.key_frames[0])
    return worst
