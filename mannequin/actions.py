"""Actions as joint angles over time, and the mannequin's skeleton (forward kinematics).

Pure Python + numpy, no bpy: every action is a function of normalised clip time
``t`` in [0, 1] (an array), ``speed`` (cycles of the action per clip) and ``amplitude``
(a scale on the motion's size) that returns a :class:`Pose` batch, one pose per time.

Conventions (metres, degrees, Z up, the figure faces -Y, its left side is +X):

- ``flex``: the joint's distal end moves forward (arm raised in front, thigh lifted, trunk
  bowed, head nodded). For the knee it is the ordinary bend (the shin goes back); for the
  ankle it lifts the toes.
- ``abd``: the limb moves away from the body's midline, sideways (arm raised to the side);
  for the spine and neck it is a lateral bend to the figure's left.
- ``twist``: rotation about the segment's own axis; for the spine and neck, towards the
  figure's left.
- root: ``x, y`` horizontal shift, ``z`` lift above the ground (a jump), ``yaw`` (turning
  left), ``pitch`` (the pelvis tipping forward, as in a bow).

:func:`forward_kinematics` turns a pose batch into 4×4 world transforms of every segment,
with the feet kept planted on the ground (the root is shifted so that the anchored foot
stays where it stood and the lowest sole touches z = 0, then ``z`` is added).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

JOINTS = ("spine", "neck",
          "l_shoulder", "l_elbow", "r_shoulder", "r_elbow",
          "l_hip", "l_knee", "l_ankle", "r_hip", "r_knee", "r_ankle")
J = {name: index for index, name in enumerate(JOINTS)}
ROOT = ("x", "y", "z", "yaw", "pitch")

# -- skeleton geometry (rest pose, metres, in the parent joint's frame) -------------------------

SPINE_OFFSET = (0.0, 0.0, 0.10)        # root (pelvis centre) -> spine joint (waist)
NECK_OFFSET = (0.0, 0.0, 0.43)         # spine -> neck base
HEAD_CENTRE = (0.0, 0.0, 0.15)         # neck -> head centre
SHOULDER_OFFSET = (0.20, 0.0, 0.38)    # spine -> left shoulder (right: x mirrored)
UPPER_ARM = 0.29
FOREARM = 0.26
HIP_OFFSET = (0.10, 0.0, -0.03)        # root -> left hip
THIGH = 0.43
SHIN = 0.42
FOOT_SOLE = 0.075                      # ankle -> sole, down
FOOT_TOE = 0.15                        # ankle -> toe, forward (-Y)
FOOT_HEEL = 0.05                       # ankle -> heel, back (+Y)

# Segments: name -> (joint whose frame carries it, side). The renderer builds the shapes in
# these frames; forward_kinematics returns one transform per segment in this order.
SEGMENTS = ("pelvis", "torso", "head",
            "l_upper_arm", "l_forearm", "r_upper_arm", "r_forearm",
            "l_thigh", "l_shin", "l_foot", "r_thigh", "r_shin", "r_foot")
SEGMENT_INDEX = {name: index for index, name in enumerate(SEGMENTS)}


@dataclass
class Pose:
    """A batch of poses: ``angles`` (T, 12, 3) degrees (flex, abd, twist) per joint, ``root`` (T, 5)."""

    angles: np.ndarray
    root: np.ndarray
    anchor: str = "both"   # which foot stays planted: "both" (their midpoint), "left", "right"

    @staticmethod
    def rest(count: int) -> "Pose":
        return Pose(np.zeros((count, len(JOINTS), 3)), np.zeros((count, len(ROOT))))

    def set(self, joint: str, flex=None, abd=None, twist=None) -> None:
        for axis, value in enumerate((flex, abd, twist)):
            if value is not None:
                self.angles[:, J[joint], axis] = value

    def mirrored(self) -> "Pose":
        """Left and right swapped: the same action done with the other side."""
        angles = self.angles.copy()
        for name in JOINTS:
            if name.startswith("l_"):
                left, right = J[name], J["r_" + name[2:]]
                angles[:, [left, right]] = angles[:, [right, left]]
        for name in ("spine", "neck"):
            angles[:, J[name], 1:] *= -1  # lateral bend and twist change direction
        root = self.root.copy()
        root[:, 0] *= -1   # x
        root[:, 3] *= -1   # yaw
        anchor = {"left": "right", "right": "left"}.get(self.anchor, self.anchor)
        return Pose(angles, root, anchor)


# -- small smooth building blocks ------------------------------------------------------------------

def _bump(p):
    """0 at p = 0 and 1, 1 at p = 0.5, zero slope at both ends (sin²)."""
    return np.sin(np.pi * p) ** 2


def _window_bump(p, start, end):
    """A sin² bump over [start, end] of the phase, zero elsewhere (C¹ continuous)."""
    q = np.clip((p - start) / (end - start), 0.0, 1.0)
    return np.sin(np.pi * q) ** 2


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _plateau(p, rise=0.2):
    """0 → 1 over the first ``rise`` of the phase, 1, then 1 → 0 over the last ``rise``."""
    return _smoothstep(p / rise) * _smoothstep((1 - p) / rise)


def _phase(t, speed):
    cycles = np.asarray(t, dtype=float) * speed
    return cycles, cycles - np.floor(cycles)


# -- the actions -----------------------------------------------------------------------------------

def arm_wave(t, speed=1.0, amplitude=1.0) -> Pose:
    """Raise the right arm to the side, forearm up, and wave it side to side; lower it."""
    _, p = _phase(t, speed)
    pose = Pose.rest(len(p))
    up = 0.25 + 0.75 * _plateau(p, 0.3)               # the arm starts a little out to the side
    wave = np.sin(2 * np.pi * 2.0 * (p - 0.3)) * _window_bump(p, 0.15, 0.85) ** 0.5
    pose.set("r_shoulder", flex=10 * up, abd=100 * up)
    pose.set("r_elbow", abd=85 * up + 32 * amplitude * wave, flex=10 * up)
    pose.set("l_shoulder", abd=8 * up)
    pose.set("neck", abd=-6 * up)
    pose.set("spine", abd=4 * up * amplitude)
    return pose


def squat(t, speed=1.0, amplitude=1.0) -> Pose:
    """Bend the knees and hips deeply with the arms held out in front; stand back up."""
    _, p = _phase(t, speed)
    pose = Pose.rest(len(p))
    depth = _bump(p) * amplitude
    hip, knee = 95 * depth, 115 * depth
    for side in "lr":
        pose.set(f"{side}_hip", flex=hip, abd=8 * depth)
        pose.set(f"{side}_knee", flex=knee)
        pose.set(f"{side}_ankle", flex=knee - hip - 5 * depth)
        pose.set(f"{side}_shoulder", flex=90 * _bump(p) ** 0.7, abd=6 * depth)
    pose.set("spine", flex=28 * depth)
    pose.set("neck", flex=-18 * depth)
    return pose


def jumping_jack(t, speed=1.0, amplitude=1.0) -> Pose:
    """Hop the feet apart while swinging the arms overhead, then back together."""
    _, p = _phase(t, speed)
    pose = Pose.rest(len(p))
    out = _bump(p)
    for side in "lr":
        pose.set(f"{side}_shoulder", abd=8 + 150 * min(amplitude, 1.15) * out)
        pose.set(f"{side}_elbow", abd=10 * out)
        pose.set(f"{side}_hip", abd=3 + 24 * amplitude * out)
        pose.set(f"{side}_knee", flex=12 * np.sin(2 * np.pi * p) ** 2)
        pose.set(f"{side}_ankle", flex=-12 * np.sin(2 * np.pi * p) ** 2)
    pose.root[:, 2] = 0.12 * amplitude * np.sin(2 * np.pi * p) ** 2   # two small hops a cycle
    return pose


def punch(t, speed=1.0, amplitude=1.0) -> Pose:
    """From a boxing guard, a straight right punch, then a left one."""
    _, p = _phase(t, speed)
    pose = Pose.rest(len(p))
    right = _window_bump(p, 0.0, 0.5) ** 0.8
    left = _window_bump(p, 0.5, 1.0) ** 0.8
    a = amplitude
    for side, hit in (("r", right), ("l", left)):
        pose.set(f"{side}_shoulder", flex=55 + 35 * hit, abd=22 - 14 * hit)
        pose.set(f"{side}_elbow", flex=125 - 120 * hit * min(a, 1.0))
        pose.set(f"{side}_hip", flex=8, abd=7)
        pose.set(f"{side}_knee", flex=14)
        pose.set(f"{side}_ankle", flex=6)
    pose.set("spine", twist=28 * a * (left - right), flex=6)
    return pose


def kick(t, speed=1.0, amplitude=1.0) -> Pose:
    """A front kick with the right leg: chamber the knee, snap it straight, pull back, put it down."""
    _, p = _phase(t, speed)
    pose = Pose.rest(len(p))
    a = amplitude
    lift = _bump(p)                                   # peaks at mid-phase
    chamber = np.sin(2 * np.pi * p) ** 2              # bent at 1/4 and 3/4, straight at 1/2
    pose.set("r_hip", flex=88 * a * lift, abd=22 * lift)
    pose.set("r_knee", flex=80 * chamber + 5 * lift)
    pose.set("r_ankle", flex=-25 * lift)
    pose.set("l_knee", flex=10 * lift)
    pose.set("l_ankle", flex=10 * lift)
    pose.set("spine", flex=-14 * a * lift, abd=8 * lift, twist=-15 * lift)
    for side, sign in (("l", 1), ("r", -1)):
        pose.set(f"{side}_shoulder", flex=40 * lift + 10 * sign * lift, abd=35 * lift)
        pose.set(f"{side}_elbow", flex=80 * lift)
    pose.anchor = "left"
    return pose


def bow(t, speed=1.0, amplitude=1.0) -> Pose:
    """Bend forward from the hips with the head down, then straighten."""
    _, p = _phase(t, speed)
    pose = Pose.rest(len(p))
    b = _plateau(p, 0.4) * amplitude
    pitch = 42 * b
    pose.root[:, 4] = pitch
    for side in "lr":
        pose.set(f"{side}_hip", flex=pitch)          # hip flexion: the legs stay vertical
        pose.set(f"{side}_shoulder", flex=0.6 * pitch, abd=5 * b)
    pose.set("spine", flex=32 * b)
    pose.set("neck", flex=18 * b)
    pose.set("r_elbow", flex=70 * b)                 # the right hand goes to the belly
    pose.set("r_shoulder", flex=0.6 * pitch + 10 * b)
    return pose


def turn(t, speed=1.0, amplitude=1.0) -> Pose:
    """Turn on the spot to the left, stepping, with the arms slightly out."""
    cycles, p = _phase(t, speed)
    pose = Pose.rest(len(p))
    yaw = 180 * amplitude * (np.floor(cycles) + _smoothstep(p * 1.15 - 0.075))
    pose.root[:, 3] = yaw
    step_l = _window_bump(p, 0.05, 0.5)
    step_r = _window_bump(p, 0.45, 0.95)
    for side, step in (("l", step_l), ("r", step_r)):
        pose.set(f"{side}_hip", flex=30 * step, abd=4)
        pose.set(f"{side}_knee", flex=55 * step)
        pose.set(f"{side}_ankle", flex=25 * step)
        pose.set(f"{side}_shoulder", abd=22, flex=8)
        pose.set(f"{side}_elbow", flex=25)
    pose.set("neck", twist=15 * np.sin(np.pi * p))   # the head leads the turn
    return pose


def jump(t, speed=1.0, amplitude=1.0) -> Pose:
    """Crouch, swing the arms up and jump straight up, land and absorb in a crouch."""
    _, p = _phase(t, speed)
    pose = Pose.rest(len(p))
    take_off, landing = 0.34, 0.66
    crouch = _window_bump(p, 0.0, take_off + 0.02) + _window_bump(p, landing - 0.02, 1.0)
    q = np.clip((p - take_off) / (landing - take_off), 0.0, 1.0)
    height = 0.32 * amplitude * 4 * q * (1 - q)
    air = _window_bump(p, take_off - 0.16, landing + 0.16)
    swing_back = _window_bump(p, 0.0, take_off - 0.04)
    hip, knee = 70 * crouch, 95 * crouch
    for side in "lr":
        pose.set(f"{side}_hip", flex=hip + 8 * air)
        pose.set(f"{side}_knee", flex=knee + 10 * air)
        pose.set(f"{side}_ankle", flex=knee - hip - 35 * air)
        pose.set(f"{side}_shoulder", flex=-35 * swing_back + 110 * air, abd=20 * air)
        pose.set(f"{side}_elbow", flex=15 * crouch)
    pose.set("spine", flex=30 * crouch)
    pose.set("neck", flex=-15 * crouch)
    pose.root[:, 2] = height
    return pose


def march(t, speed=1.0, amplitude=1.0) -> Pose:
    """March on the spot: high knees, alternating, with the opposite arm swinging."""
    _, p = _phase(t, speed)
    pose = Pose.rest(len(p))
    left = _window_bump(p, 0.0, 0.5)
    right = _window_bump(p, 0.5, 1.0)
    swing = np.sin(2 * np.pi * p)
    for side, step, sign in (("l", left, 1), ("r", right, -1)):
        pose.set(f"{side}_hip", flex=80 * amplitude * step)
        pose.set(f"{side}_knee", flex=95 * step)
        pose.set(f"{side}_ankle", flex=-10 * step)
        pose.set(f"{side}_shoulder", flex=-40 * amplitude * swing * sign, abd=6)
        pose.set(f"{side}_elbow", flex=70)
    pose.anchor = "lowest"
    return pose


def clap(t, speed=1.0, amplitude=1.0) -> Pose:
    """Arms out in front, clapping the hands together twice."""
    _, p = _phase(t, speed)
    pose = Pose.rest(len(p))
    raised = _plateau(p, 0.25)
    open_ = 0.5 - 0.5 * np.cos(2 * np.pi * 2 * p)     # 0 = hands together
    for side in "lr":
        pose.set(f"{side}_shoulder", flex=80 * raised, twist=0)
        pose.set(f"{side}_shoulder", abd=(-18 + 60 * amplitude * open_) * raised)
        pose.set(f"{side}_elbow", flex=20 * raised, abd=(-25 + 20 * open_) * raised)
    pose.set("neck", flex=6 * raised)
    return pose


def side_bend(t, speed=1.0, amplitude=1.0) -> Pose:
    """Arms overhead, lean the trunk to the left, then to the right, back to upright."""
    _, p = _phase(t, speed)
    pose = Pose.rest(len(p))
    raised = 0.8 + 0.2 * _bump(p)                      # arms overhead from the start
    lean = np.sin(2 * np.pi * p)
    for side in "lr":
        pose.set(f"{side}_shoulder", abd=165 * raised)
        pose.set(f"{side}_elbow", abd=10 * raised)
        pose.set(f"{side}_hip", abd=6)
    pose.set("spine", abd=38 * amplitude * lean)
    pose.set("neck", abd=10 * amplitude * lean)
    return pose


ACTIONS = {
    "arm_wave": arm_wave,
    "squat": squat,
    "jumping_jack": jumping_jack,
    "punch": punch,
    "kick": kick,
    "bow": bow,
    "turn": turn,
    "jump": jump,
    "march": march,
    "clap": clap,
    "side_bend": side_bend,
}

PROMPTS = {
    "arm_wave": "a person is waving an arm.",
    "squat": "a person is doing a squat.",
    "jumping_jack": "a person is doing jumping jacks.",
    "punch": "a person is punching.",
    "kick": "a person is kicking.",
    "bow": "a person is bowing.",
    "turn": "a person is turning around.",
    "jump": "a person is jumping.",
    "march": "a person is marching in place.",
    "clap": "a person is clapping.",
    "side_bend": "a person is bending to the side.",
}


def action_pose(action: str, t, speed: float = 1.0, amplitude: float = 1.0, mirror: bool = False) -> Pose:
    if action not in ACTIONS:
        raise KeyError(f"unknown action {action!r}; known: {', '.join(ACTIONS)}")
    pose = ACTIONS[action](np.atleast_1d(np.asarray(t, dtype=float)), speed, amplitude)
    return pose.mirrored() if mirror else pose


def clip_times(num_frames: int) -> np.ndarray:
    """Normalised times of a clip's frames: 0 for the first frame, 1 for the last."""
    return np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.zeros(1)


# -- forward kinematics ----------------------------------------------------------------------------

def _rx(a):
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([o, z, z], -1), np.stack([z, c, -s], -1), np.stack([z, s, c], -1)], -2)


def _ry(a):
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([c, z, s], -1), np.stack([z, o, z], -1), np.stack([-s, z, c], -1)], -2)


def _rz(a):
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)], -2)


def _joint_rotation(angles_deg, flex_sign, side_sign):
    """Rx(flex) · Ry(abd) · Rz(twist) with the signs that give the conventions above."""
    flex, abd, twist = np.radians(angles_deg).T
    return _rx(flex_sign * flex) @ _ry(side_sign * abd) @ _rz(side_sign * twist)


def _transform(rotation, translation):
    out = np.zeros(rotation.shape[:-2] + (4, 4))
    out[..., :3, :3] = rotation
    out[..., :3, 3] = translation
    out[..., 3, 3] = 1.0
    return out


def _child(parent, offset, rotation):
    """parent (T,4,4) · translate(offset) · rotate(rotation (T,3,3))."""
    return parent @ _transform(rotation, np.broadcast_to(np.asarray(offset, float), rotation.shape[:-2] + (3,)))


def _sole_points(foot):
    """Heel and toe of a foot frame (T,4,4) → world points (T, 2, 3)."""
    local = np.array([[0.0, FOOT_HEEL, -FOOT_SOLE, 1.0], [0.0, -FOOT_TOE, -FOOT_SOLE, 1.0]])
    return np.einsum("tij,pj->tpi", foot, local)[..., :3]


def forward_kinematics(pose: Pose) -> np.ndarray:
    """World transforms (T, len(SEGMENTS), 4, 4) of every segment, feet on the ground."""
    count = pose.angles.shape[0]
    ang = pose.angles
    root_rot = _rz(np.radians(pose.root[:, 3])) @ _rx(np.radians(pose.root[:, 4]))
    root = _transform(root_rot, np.zeros((count, 3)))
    frames = {"pelvis": root}
    spine = _child(root, SPINE_OFFSET, _joint_rotation(ang[:, J["spine"]], +1, +1))
    frames["torso"] = spine
    frames["head"] = _child(spine, NECK_OFFSET, _joint_rotation(ang[:, J["neck"]], +1, +1))
    for side, sign in (("l", 1.0), ("r", -1.0)):
        shoulder_at = (sign * SHOULDER_OFFSET[0], SHOULDER_OFFSET[1], SHOULDER_OFFSET[2])
        upper = _child(spine, shoulder_at, _joint_rotation(ang[:, J[f"{side}_shoulder"]], -1, -sign))
        frames[f"{side}_upper_arm"] = upper
        frames[f"{side}_forearm"] = _child(upper, (0, 0, -UPPER_ARM),
                                           _joint_rotation(ang[:, J[f"{side}_elbow"]], -1, -sign))
        hip_at = (sign * HIP_OFFSET[0], HIP_OFFSET[1], HIP_OFFSET[2])
        thigh = _child(root, hip_at, _joint_rotation(ang[:, J[f"{side}_hip"]], -1, -sign))
        frames[f"{side}_thigh"] = thigh
        shin = _child(thigh, (0, 0, -THIGH), _joint_rotation(ang[:, J[f"{side}_knee"]], +1, -sign))
        frames[f"{side}_shin"] = shin
        frames[f"{side}_foot"] = _child(shin, (0, 0, -SHIN), _joint_rotation(ang[:, J[f"{side}_ankle"]], -1, -sign))
    out = np.stack([frames[name] for name in SEGMENTS], axis=1)

    # Ground the figure: the anchored foot keeps its rest position on the floor.
    soles = {side: _sole_points(out[:, SEGMENT_INDEX[f"{side}_foot"]]) for side in "lr"}
    lowest = np.minimum(soles["l"][..., 2].min(-1), soles["r"][..., 2].min(-1))
    rest_ankle = np.array([HIP_OFFSET[0], 0.0]), np.array([-HIP_OFFSET[0], 0.0])
    ankle_l = out[:, SEGMENT_INDEX["l_foot"], :2, 3]
    ankle_r = out[:, SEGMENT_INDEX["r_foot"], :2, 3]
    yaw = np.radians(pose.root[:, 3])
    rot2 = np.stack([np.stack([np.cos(yaw), -np.sin(yaw)], -1), np.stack([np.sin(yaw), np.cos(yaw)], -1)], -2)
    rest_l = rot2 @ rest_ankle[0]
    rest_r = rot2 @ rest_ankle[1]
    if pose.anchor == "left":
        shift = rest_l - ankle_l
    elif pose.anchor == "right":
        shift = rest_r - ankle_r
    elif pose.anchor == "lowest":
        left_down = (soles["l"][..., 2].min(-1) <= soles["r"][..., 2].min(-1))[:, None]
        shift = np.where(left_down, rest_l - ankle_l, rest_r - ankle_r)
    else:
        shift = 0.5 * (rest_l + rest_r) - 0.5 * (ankle_l + ankle_r)
    out[..., 0, 3] += (shift[:, 0] + pose.root[:, 0])[:, None]
    out[..., 1, 3] += (shift[:, 1] + pose.root[:, 1])[:, None]
    out[..., 2, 3] += (-lowest + pose.root[:, 2])[:, None]
    return out


def joint_positions(pose: Pose) -> np.ndarray:
    """World positions (T, N, 3) of the key points (segment origins, limb ends, head top)."""
    world = forward_kinematics(pose)
    ends = {"l_forearm": FOREARM, "r_forearm": FOREARM}
    points = [world[:, i, :3, 3] for i in range(len(SEGMENTS))]
    for name, length in ends.items():
        points.append((world[:, SEGMENT_INDEX[name]] @ np.array([0, 0, -length, 1.0]))[:, :3])
    head = world[:, SEGMENT_INDEX["head"]] @ np.array([*HEAD_CENTRE[:2], HEAD_CENTRE[2] + 0.12, 1.0])
    points.append(head[:, :3])
    for side in "lr":
        points.append(_sole_points(world[:, SEGMENT_INDEX[f"{side}_foot"]])[:, 1])
    return np.stack(points, axis=1)


def max_step_degrees(action: str, num_frames: int, speed: float, amplitude: float) -> float:
    """The largest frame-to-frame change of any joint angle or of the root yaw (degrees)."""
    pose = action_pose(action, clip_times(num_frames), speed, amplitude)
    steps = np.abs(np.diff(pose.angles, axis=0)).max(initial=0.0)
    return float(max(steps, np.abs(np.diff(pose.root[:, 3:], axis=0)).max(initial=0.0)))


__all__ = ["ACTIONS", "PROMPTS", "JOINTS", "ROOT", "SEGMENTS", "Pose", "action_pose", "clip_times",
           "forward_kinematics", "joint_positions", "max_step_degrees"]
