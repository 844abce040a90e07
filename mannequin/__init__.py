"""Deterministic, seeded clips of a 3D mannequin performing human actions, rendered with Blender.

>>> from mannequin import sample_spec, render_clip
>>> spec = sample_spec("jump", seed, split="train")
>>> frames = render_clip(spec)          # uint8 (16, 64, 64, 3); same spec, same pixels
>>> depth = render_depth(spec)         # uint16 (16, 64, 64) near = bright, and its range in metres
>>> from mannequin.camera import openpose_keypoints
>>> poses = openpose_keypoints(spec)   # (16, 18, 3): OpenPose points [x, y] in 0..1, confidence

``render_clip`` / ``render_depth`` / ``ground_truth`` / ``reference_frame`` import bpy on first use; everything
else (actions, specs) is numpy only. See ``mannequin/README.md``.
"""

from mannequin.actions import ACTIONS, PROMPTS, action_pose, clip_times, forward_kinematics
from mannequin.spec import HELD_OUT, SPLITS, ClipSpec, clip_seed, sample_spec


def render_clip(spec):
    from mannequin.render import render_clip as _render_clip

    return _render_clip(spec)


def render_depth(spec):
    from mannequin.render import render_depth as _render_depth

    return _render_depth(spec)


def ground_truth(spec):
    from mannequin.render import ground_truth as _ground_truth

    return _ground_truth(spec)


def reference_frame(spec):
    from mannequin.render import reference_frame as _reference_frame

    return _reference_frame(spec)


__all__ = ["ACTIONS", "PROMPTS", "HELD_OUT", "SPLITS", "ClipSpec", "action_pose", "clip_times",
           "clip_seed", "forward_kinematics", "ground_truth", "reference_frame", "render_clip", "render_depth",
           "sample_spec"]
