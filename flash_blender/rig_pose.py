"""Which bone of a rig gives which of OpenPose's 18 body points, and where those points are.

Pure Python (no bpy): ``rig_motion.py`` passes in the armature's bone names and, per frame,
each bone's evaluated head and tail in world space.

A point comes from a bone's head or tail (``HEAD``/``TAIL``), or, for the face points (nose,
eyes, ears), is placed on the head bone (``FACE``): at fixed fractions of its length up,
forward and sideways, the forward and sideways directions taken from the shoulders (the rig's
own bone rolls differ between rigs; the shoulders always say where its left is). A rig with
eye or ear bones uses those instead. The neck, when no bone gives it, is the mid-point of the
shoulders (what OpenPose's neck is).

Built-in mappings (:data:`PRESETS`) cover Rigify's generated rig (its ``DEF-``/``ORG-`` bones,
which follow FK and IK alike), Rigify's metarig (Blender's Human metarig), Mixamo (any
``mixamorig…:`` prefix) and Auto-Rig Pro's deforming bones. :func:`detect` picks the one that
fits an armature's names; the user's table overrides single points; :func:`resolve` turns it
all into one :class:`Mapping`, or a one-line PlanError naming the point and the fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .errors import PlanError

Vec3 = tuple[float, float, float]

# OpenPose's body order ("right" is the person's right); the labels are the engine's names
# (flash_engine.pose.format.BODY_POINT_NAMES).
POINTS = ("nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
          "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
          "right_eye", "left_eye", "right_ear", "left_ear")
REQUIRED = ("right_shoulder", "left_shoulder", "right_hip", "left_hip")  # a body needs these to be placed
FACE_POINTS = ("nose", "right_eye", "left_eye", "right_ear", "left_ear")
HEAD, TAIL, FACE = "HEAD", "TAIL", "FACE"
ENDS = (HEAD, TAIL, FACE)
BONES_PANEL = "FLASH › Motion › Bones"

# Where the face points sit on a head bone that runs from the top of the neck to the top of
# the skull: (up, forward, towards the person's left) in head-bone lengths (a human's
# proportions; map eye and ear bones for exact ones).
FACE_OFFSETS = {
    "nose": (0.25, 0.45, 0.0),
    "right_eye": (0.4, 0.32, -0.13),
    "left_eye": (0.4, 0.32, 0.13),
    "right_ear": (0.32, 0.0, -0.3),
    "left_ear": (0.32, 0.0, 0.3),
}


def label(point: str) -> str:
    """'left shoulder' for 'left_shoulder'."""
    return point.replace("_", " ")


@dataclass(frozen=True)
class PointSource:
    bone: str
    end: str = HEAD  # HEAD, TAIL, or FACE (a face point placed on this head bone)

    def __post_init__(self):
        if self.end not in ENDS:
            raise ValueError(f"unknown bone end {self.end!r}")


@dataclass(frozen=True)
class RigPreset:
    id: str
    name: str
    points: dict  # point -> tuple of candidate (bone, end), the first the armature has wins
    prefixes: tuple[str, ...] = ("",)  # tried in turn: the one that names most bones wins


def _sided(pattern: str, sides: tuple[str, str]) -> tuple[str, str]:
    """(right, left) names from a pattern with ``{s}``: 'upper_arm.{s}' -> upper_arm.R, upper_arm.L."""
    return pattern.format(s=sides[0]), pattern.format(s=sides[1])


def _table(limbs: dict, sides: tuple[str, str], neck: tuple, head: tuple, eyes: tuple = (), ears: tuple = ()) -> dict:
    """A preset's point table: ``limbs`` maps a limb point without side ('shoulder') to its
    bone patterns (whose head is the point); ``head`` names the head bones the face points sit on."""
    table: dict = {}
    for joint, patterns in limbs.items():
        for index, side in enumerate(("right", "left")):
            table[f"{side}_{joint}"] = tuple((_sided(p, sides)[index], HEAD) for p in patterns)
    table["neck"] = tuple((name, HEAD) for name in neck)
    on_head = tuple((name, FACE) for name in head)
    table["nose"] = on_head
    for part, patterns in (("eye", eyes), ("ear", ears)):
        for index, side in enumerate(("right", "left")):
            table[f"{side}_{part}"] = tuple((_sided(p, sides)[index], HEAD) for p in patterns) + on_head
    return table


_RIGIFY_LIMBS = {"shoulder": ("upper_arm.{s}",), "elbow": ("forearm.{s}",), "wrist": ("hand.{s}",),
                 "hip": ("thigh.{s}",), "knee": ("shin.{s}",), "ankle": ("foot.{s}",)}
_MIXAMO_LIMBS = {"shoulder": ("{s}Arm",), "elbow": ("{s}ForeArm",), "wrist": ("{s}Hand",),
                 "hip": ("{s}UpLeg",), "knee": ("{s}Leg",), "ankle": ("{s}Foot",)}
# Auto-Rig Pro: the deforming bones (they follow FK and IK), then the reference bones.
_ARP_LIMBS = {"shoulder": ("arm_stretch.{s}", "arm_ref.{s}"), "elbow": ("forearm_stretch.{s}", "forearm_ref.{s}"),
              "wrist": ("hand.{s}", "hand_ref.{s}"), "hip": ("thigh_stretch.{s}", "thigh_ref.{s}"),
              "knee": ("leg_stretch.{s}", "leg_ref.{s}"), "ankle": ("foot.{s}", "foot_ref.{s}")}

PRESETS = (
    RigPreset("rigify", "Rigify (generated rig)",
              _table(_RIGIFY_LIMBS, ("R", "L"), neck=("spine.004",), head=("spine.006",), eyes=("eye.{s}",),
                     ears=("ear.{s}",)),
              prefixes=("DEF-", "ORG-")),
    RigPreset("metarig", "Rigify metarig / Blender's Human metarig",
              _table(_RIGIFY_LIMBS, ("R", "L"), neck=("spine.004", "neck"), head=("spine.006", "head"),
                     eyes=("eye.{s}",), ears=("ear.{s}",))),
    RigPreset("mixamo", "Mixamo",
              _table(_MIXAMO_LIMBS, ("Right", "Left"), neck=("Neck",), head=("Head",), eyes=("{s}Eye",)),
              prefixes=("mixamorig:", "mixamorig1:", "mixamorig2:", "mixamorig_", "")),
    RigPreset("autorigpro", "Auto-Rig Pro",
              _table(_ARP_LIMBS, ("r", "l"), neck=("neck.x", "neck_ref.x"), head=("head.x", "head_ref.x"),
                     eyes=("c_eye.{s}", "eye_ref.{s}"))),
)
PRESET_IDS = tuple(preset.id for preset in PRESETS)


def get_preset(preset_id: str) -> RigPreset:
    for preset in PRESETS:
        if preset.id == preset_id:
            return preset
    raise PlanError(f"unknown bone mapping {preset_id!r}", f"use one of {', '.join(PRESET_IDS)}")


def _first(preset: RigPreset, prefix: str, point: str, bones) -> PointSource | None:
    for name, end in preset.points.get(point, ()):
        if prefix + name in bones:
            return PointSource(prefix + name, end)
    return None


def _fit(preset: RigPreset, prefix: str, bones) -> tuple[int, int]:
    """(required points found, all points found) of ``preset`` with ``prefix`` on ``bones``."""
    found = [point for point in POINTS if _first(preset, prefix, point, bones) is not None]
    return sum(point in REQUIRED for point in found), len(found)


def detect(bone_names) -> tuple[RigPreset, str] | None:
    """The built-in mapping (and bone-name prefix) that names most of the armature's points,
    the required ones first; None when none names any."""
    bones = set(bone_names)
    best, best_fit = None, (0, 0)
    for preset in PRESETS:
        for prefix in preset.prefixes:
            fit = _fit(preset, prefix, bones)
            if fit > best_fit:
                best, best_fit = (preset, prefix), fit
    return best


@dataclass(frozen=True)
class Mapping:
    """Every point's source on one armature (None: the point is not given; the neck then is
    the shoulders' mid-point)."""

    armature: str
    preset: str | None  # the built-in mapping's id, None when only the user's table maps
    prefix: str
    sources: dict = field(default_factory=dict)  # point -> PointSource | None
    overridden: tuple[str, ...] = ()  # the points the user's table set

    @property
    def mapped(self) -> int:
        return sum(source is not None for source in self.sources.values())

    def record(self) -> dict:
        """What a take's flash.json keeps: point -> [bone, end] (null: not given)."""
        return {point: [source.bone, source.end] if source else None for point, source in self.sources.items()}

    def describe(self) -> str:
        name = get_preset(self.preset).name if self.preset else "your bone table"
        extra = f", {len(self.overridden)} from your table" if self.overridden and self.preset else ""
        return f"{name}: {self.mapped} of {len(POINTS)} points{extra}"


def _example(point: str) -> str:
    """Bone names that give ``point`` in the common rigs, for the fix."""
    names = []
    for preset in PRESETS[1:3]:  # metarig and Mixamo names say it best
        candidates = preset.points.get(point, ())
        if candidates:
            names.append(preset.prefixes[0] + candidates[0][0])
    return " or ".join(names)


def resolve(armature: str, bone_names, overrides: dict | None = None) -> Mapping:
    """The armature's mapping: the detected built-in one, with ``overrides`` (point ->
    (bone, end); an empty bone keeps the built-in one) on top. PlanError when the armature
    maps no point, a table entry names a bone the armature lacks, or a required point has no
    bone."""
    bones = set(bone_names)
    overrides = {point: value for point, value in (overrides or {}).items() if value and value[0]}
    unknown = sorted(set(overrides) - set(POINTS))
    if unknown:
        raise PlanError(f"unknown body point {unknown[0]!r}", f"use one of {', '.join(POINTS)}")
    for point in POINTS:
        if point in overrides and overrides[point][1] == FACE and point not in FACE_POINTS:
            raise PlanError(f"the {label(point)} cannot be placed on a head bone (Face)",
                            f"give it a bone's Head or Tail in {BONES_PANEL}")
        if point in overrides and overrides[point][0] not in bones:
            raise PlanError(f"bone '{overrides[point][0]}' (mapped to the {label(point)}) is not in armature "
                            f"'{armature}'", f"pick one of its bones in {BONES_PANEL}")
    found = detect(bones)
    preset, prefix = found if found else (None, "")
    sources = {}
    for point in POINTS:
        if point in overrides:
            bone, end = overrides[point]
            sources[point] = PointSource(bone, end or HEAD)
        else:
            sources[point] = _first(preset, prefix, point, bones) if preset else None
    if not any(sources.values()):
        raise PlanError(f"armature '{armature}' has none of the bone names FLASH knows (Rigify, Mixamo, "
                        "Auto-Rig Pro, Blender's Human metarig)", f"map its bones in {BONES_PANEL}")
    for point in REQUIRED:
        if sources[point] is None:
            raise PlanError(f"armature '{armature}' has no bone for the {label(point)}",
                            f"in {BONES_PANEL} pick the bone whose head is at the {label(point)} "
                            f"(e.g. {_example(point)})")
    return Mapping(armature=armature, preset=preset.id if preset else None, prefix=prefix, sources=sources,
                   overridden=tuple(point for point in POINTS if point in overrides))


# ---------------------------------------------------------------------------------------
# Where the points are


def _sub(a: Vec3, b: Vec3) -> Vec3:
    return (a[0] - b[0], a[1] - b[1], a[2] - b[2])


def _add_scaled(a: Vec3, b: Vec3, s: float) -> Vec3:
    return (a[0] + b[0] * s, a[1] + b[1] * s, a[2] + b[2] * s)


def _dot(a: Vec3, b: Vec3) -> float:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _cross(a: Vec3, b: Vec3) -> Vec3:
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def _unit(a: Vec3) -> Vec3 | None:
    length = math.sqrt(_dot(a, a))
    return None if length < 1e-12 else (a[0] / length, a[1] / length, a[2] / length)


def face_point(point: str, head: Vec3, tail: Vec3, left_shoulder: Vec3, right_shoulder: Vec3) -> Vec3 | None:
    """A face point on the head bone ``head``→``tail`` (see :data:`FACE_OFFSETS`); None when the
    shoulders do not say a side (they coincide, or line up with the head bone)."""
    up_vector = _sub(tail, head)
    length = math.sqrt(_dot(up_vector, up_vector))
    up = _unit(up_vector)
    across = _sub(left_shoulder, right_shoulder)
    if up is None:
        return None
    left = _unit(_add_scaled(across, up, -_dot(across, up)))  # the shoulders' line, square to the head
    if left is None:
        return None
    forward = _cross(left, up)  # facing -Y with its left at +X and up +Z: forward is -Y
    rise, ahead, side = FACE_OFFSETS[point]
    position = _add_scaled(head, up, rise * length)
    position = _add_scaled(position, forward, ahead * length)
    return _add_scaled(position, left, side * length)


def world_points(mapping: Mapping, bones: dict) -> list[Vec3 | None]:
    """The 18 points in world space for one frame; ``bones``: name -> (head, tail) in world
    space. None where the mapping gives no point."""
    def end_of(source: PointSource) -> Vec3 | None:
        if source.bone not in bones:
            return None
        head, tail = bones[source.bone]
        return tuple(tail if source.end == TAIL else head)

    points: dict = {point: end_of(source) for point, source in mapping.sources.items()
                    if source is not None and source.end != FACE}
    right, left = points.get("right_shoulder"), points.get("left_shoulder")
    if points.get("neck") is None and right is not None and left is not None:
        points["neck"] = tuple((a + b) / 2 for a, b in zip(right, left))
    for point, source in mapping.sources.items():
        if source is not None and source.end == FACE:
            if source.bone in bones and right is not None and left is not None:
                head, tail = bones[source.bone]
                points[point] = face_point(point, tuple(head), tuple(tail), left, right)
    return [points.get(point) for point in POINTS]


def bones_needed(mapping: Mapping) -> list[str]:
    """The bones whose positions :func:`world_points` reads."""
    return sorted({source.bone for source in mapping.sources.values() if source is not None})


def detected_sources(bone_names) -> dict:
    """What the detected built-in mapping gives each point on these bones (None: nothing)."""
    bones = set(bone_names)
    found = detect(bones)
    if found is None:
        return {point: None for point in POINTS}
    preset, prefix = found
    return {point: _first(preset, prefix, point, bones) for point in POINTS}


def mapping_status(armature: str, bone_names, overrides: dict | None = None) -> tuple[bool, str]:
    """For the panel: (ok, 'Mixamo: 18 of 18 points') or (False, the error line)."""
    try:
        return True, resolve(armature, bone_names, overrides).describe()
    except PlanError as err:
        return False, str(err)
