"""The mannequin clip generator: actions, specs and splits, Blender rendering, the cache CLI."""

import json
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mannequin.actions import (ACTIONS, FOREARM, PROMPTS, SEGMENTS, action_pose, clip_times, joint_positions,
                               max_step_degrees)
from mannequin.camera import (FIELD_OF_VIEW, NEAR_CLIP, OPENPOSE_POINTS, camera_matrix, figure_transforms, keypoints_2d,
                              openpose_keypoints, openpose_world, project)
from mannequin.spec import AMPLITUDE, HELD_OUT, SPEED, ClipSpec, in_ranges, sample_spec, spec_hues

from tests.conftest import REPO  # noqa: E402
CORE = ("arm_wave", "squat", "jumping_jack", "punch", "kick", "bow", "turn", "jump")


# -- actions (numpy only) --------------------------------------------------------------------------

def test_there_are_at_least_the_eight_core_actions_each_with_a_prompt():
    assert set(CORE) <= set(ACTIONS)
    assert set(PROMPTS) == set(ACTIONS)
    assert all(p.startswith("a person is ") and p.endswith(".") for p in PROMPTS.values())


@pytest.mark.parametrize("action", list(ACTIONS))
def test_action_angles_are_finite_move_and_are_smooth(action):
    t = clip_times(16)
    for speed in SPEED:
        for amplitude in AMPLITUDE:
            pose = action_pose(action, t, speed, amplitude)
            assert pose.angles.shape == (16, 12, 3) and pose.root.shape == (16, 5)
            assert np.isfinite(pose.angles).all() and np.isfinite(pose.root).all()
            points = joint_positions(pose)
            assert np.isfinite(points).all()
            # Motion: some key point travels at least 25 cm during the clip.
            assert (points.max(0) - points.min(0)).max() > 0.25
            # Smooth: bounded frame-to-frame changes even at the fastest speed and largest amplitude.
            assert max_step_degrees(action, 16, speed, amplitude) <= 65.0
            assert np.linalg.norm(np.diff(points, axis=0), axis=-1).max() <= 0.7
            # Feet never go under the floor (soles are the last two key points).
            assert points[:, -2:, 2].min() > -0.02


def test_actions_differ_from_each_other():
    t = clip_times(16)
    trajectories = {a: joint_positions(action_pose(a, t)) for a in ACTIONS}
    for a, b in combinations(ACTIONS, 2):
        gap = np.linalg.norm(trajectories[a] - trajectories[b], axis=-1).mean()
        assert gap > 0.05, (a, b, gap)


def test_speed_amplitude_and_mirror_change_the_motion():
    t = clip_times(16)
    for action in ACTIONS:
        low, high = (joint_positions(action_pose(action, t, amplitude=a)) for a in AMPLITUDE)
        assert np.abs(high - low).max() > 0.05, action
        slow, fast = (joint_positions(action_pose(action, t, speed=s)) for s in SPEED)
        assert np.abs(fast - slow).max() > 0.05, action
    base = joint_positions(action_pose("arm_wave", t))
    mirrored = joint_positions(action_pose("arm_wave", t, mirror=True))
    assert np.allclose(mirrored[..., 0], -base[..., 0][:, _mirror_order()], atol=1e-9)


def _mirror_order():
    from mannequin.actions import SEGMENTS

    names = list(SEGMENTS) + ["l_hand", "r_hand", "head_top", "l_toe", "r_toe"]
    swap = {n: ("r_" + n[2:] if n.startswith("l_") else "l_" + n[2:] if n.startswith("r_") else n) for n in names}
    return [names.index(swap[n]) for n in names]


def test_jump_leaves_the_ground_and_squat_goes_down():
    t = clip_times(16)
    jump = joint_positions(action_pose("jump", t))
    assert jump[:, -2:, 2].min(axis=1).max() > 0.2          # both feet in the air
    squat = joint_positions(action_pose("squat", t))
    assert squat[:, 0, 2].min() < squat[0, 0, 2] - 0.25      # the pelvis drops


# -- specs and splits ------------------------------------------------------------------------------

def test_sample_spec_is_seeded_and_round_trips_through_json():
    a = sample_spec("kick", 7, "train")
    assert a == sample_spec("kick", 7, "train")
    assert a != sample_spec("kick", 8, "train")
    assert a != sample_spec("kick", 7, "test")
    assert ClipSpec.from_dict(json.loads(json.dumps(a.to_dict()))) == a
    rng = np.random.default_rng(3)
    assert sample_spec("bow", rng, "test", seed=3).split == "test"


def test_train_and_test_specs_are_disjoint_in_the_held_out_dimensions():
    for kind in ("hue", "camera_azimuth", "camera_elevation"):
        for lo, hi in HELD_OUT[kind]["train"]:
            for tlo, thi in HELD_OUT[kind]["test"]:
                assert hi <= tlo or thi <= lo, (kind, (lo, hi), (tlo, thi))
    for split in ("train", "test"):
        for seed in range(60):
            spec = sample_spec(ACTIONS_LIST[seed % len(ACTIONS_LIST)], seed, split)
            assert in_ranges(spec.camera_azimuth, HELD_OUT["camera_azimuth"][split])
            assert in_ranges(spec.camera_elevation, HELD_OUT["camera_elevation"][split])
            for hue in spec_hues(spec):
                assert in_ranges(hue, HELD_OUT["hue"][split]), (split, seed, hue)


ACTIONS_LIST = list(ACTIONS)


def test_sampled_figures_stay_in_frame():
    outside = 0
    for seed in range(40):
        for split in ("train", "test"):
            points = keypoints_2d(sample_spec(ACTIONS_LIST[seed % len(ACTIONS_LIST)], seed, split))
            outside += int(((points < 0) | (points > 64)).any())
    assert outside <= 4


# -- ground-truth OpenPose keypoints (numpy only) ---------------------------------------------------

OPENPOSE_ORDER = ("nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist", "r_hip",
                  "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "r_eye", "l_eye", "r_ear", "l_ear")
P = {name: index for index, name in enumerate(OPENPOSE_ORDER)}
FACE = [P[name] for name in ("nose", "r_eye", "l_eye", "r_ear", "l_ear")]


def _camera_depth(points, spec):
    """Distance along the camera's view axis, computed here from the camera's matrix."""
    cam = camera_matrix(spec.camera_azimuth, spec.camera_elevation, spec.camera_distance)
    return -((points - cam[:3, 3]) @ cam[:3, 2])


def test_openpose_keypoints_order_sides_and_mirror():
    assert OPENPOSE_POINTS == OPENPOSE_ORDER
    spec = ClipSpec("arm_wave", num_frames=5, size=48)             # waves the person's right arm
    for mirror in (False, True):
        keypoints = openpose_keypoints(spec.replace(mirror=mirror))
        assert keypoints.shape == (5, 18, 3)
        assert (keypoints[..., 2] == 1).all()                      # facing the camera, all in frame
        peak = keypoints[2]
        raised, lowered = ("l", "r") if mirror else ("r", "l")
        assert peak[P[f"{raised}_wrist"], 1] < peak[P[f"{raised}_shoulder"], 1] - 0.1      # up (y is down)
        assert peak[P[f"{lowered}_wrist"], 1] > peak[P[f"{lowered}_shoulder"], 1] + 0.1
        # Facing the camera, the person's right is on the image's left, whichever arm waves.
        for part in ("shoulder", "elbow", "hip", "knee", "ankle", "eye", "ear"):
            assert (keypoints[:, P[f"r_{part}"], 0] < keypoints[:, P[f"l_{part}"], 0]).all(), part
        assert np.allclose(keypoints[:, P["neck"], :2],
                           (keypoints[:, P["r_shoulder"], :2] + keypoints[:, P["l_shoulder"], :2]) / 2, atol=1e-3)
        assert (keypoints[:, P["nose"], 1] < keypoints[:, P["neck"], 1]).all()
        assert (keypoints[:, P["neck"], 1] < keypoints[:, P["r_hip"], 1]).all()
    behind = openpose_keypoints(spec.replace(camera_azimuth=180.0))  # seen from behind: sides swap
    assert (behind[:, P["r_shoulder"], 0] > behind[:, P["l_shoulder"], 0]).all()


def test_openpose_keypoints_are_the_projected_rig_points():
    spec = sample_spec("kick", 4, "test", num_frames=6, size=64)
    keypoints = openpose_keypoints(spec)
    world, _ = openpose_world(spec)
    # The pixel coordinates of the camera model, divided by the size: the image is 0..1.
    assert np.allclose(keypoints[..., :2] * spec.size,
                       project(world, spec.camera_azimuth, spec.camera_elevation, spec.camera_distance, spec.size))
    # Limb points are the joints of the forward kinematics the renderer poses the segments with.
    transforms = figure_transforms(spec)
    assert np.allclose(world[:, P["r_knee"]], transforms[:, SEGMENTS.index("r_shin"), :3, 3])
    assert np.allclose(world[:, P["l_elbow"]], transforms[:, SEGMENTS.index("l_forearm"), :3, 3])
    bone = np.linalg.norm(world[:, P["r_wrist"]] - world[:, P["r_elbow"]], axis=-1)
    assert np.allclose(bone, FOREARM * spec.scale)


def test_openpose_confidence_is_zero_out_of_frame_and_behind_the_camera():
    close = ClipSpec("jumping_jack", num_frames=3, size=32, camera_distance=2.0, camera_elevation=0.0)
    keypoints = openpose_keypoints(close)[[0]]                     # standing, 0.8 m of the figure in view
    inside = ((keypoints[..., :2] >= 0) & (keypoints[..., :2] < 1)).all(-1)
    assert not inside[:, [P["nose"], P["r_ankle"], P["l_ankle"]]].any() and inside[:, [P["r_hip"], P["l_hip"]]].all()
    assert np.array_equal(keypoints[..., 2] == 1, inside)
    # The camera inside the figure's head: the face and the front of the body are behind it.
    inside_head = ClipSpec("squat", num_frames=3, size=32, camera_distance=0.6, camera_elevation=60.0,
                           position=(0.0, -0.3))
    keypoints = openpose_keypoints(inside_head)
    depth = _camera_depth(openpose_world(inside_head)[0], inside_head)
    assert (depth < 0).any() and (depth > NEAR_CLIP).any()
    assert (keypoints[..., 2][depth <= NEAR_CLIP] == 0).all()
    assert (keypoints[..., :2][depth <= NEAR_CLIP] == 0).all()
    assert np.isfinite(keypoints).all()


def test_face_points_the_camera_cannot_see_have_zero_confidence():
    turn = openpose_keypoints(ClipSpec("turn", num_frames=5, size=48))   # yaw 0 → 180: ends with its back to us
    assert (turn[0, :, 2] == 1).all()
    assert (turn[-1, [P["nose"], P["r_eye"], P["l_eye"]], 2] == 0).all()
    assert (turn[-1, [P["r_ear"], P["l_ear"]], 2] == 1).all()          # ears stick out: seen from behind
    assert (turn[-1, [i for i in range(18) if i not in FACE], 2] == 1).all()   # body points stay
    profile = openpose_keypoints(ClipSpec("squat", num_frames=1, size=48, camera_azimuth=80.0))  # from its left
    assert profile[0, P["l_ear"], 2] == 1 and profile[0, P["l_eye"], 2] == 1
    assert profile[0, P["r_ear"], 2] == 0 and profile[0, P["r_eye"], 2] == 0


# -- rendering (Blender) ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def render():
    pytest.importorskip("bpy")
    from mannequin.render import render_clip

    return render_clip


def _figure_mask(render, spec):
    """Pixels that change when only the body colours change: the figure. The body is drawn white,
    then black (not in the spec's own colours, which may be close to any fixed recolouring)."""
    white, black = ({f"{part}_colour": (grey,) * 3 for part in ("head", "torso", "arms", "legs")}
                    for grey in (0.95, 0.02))
    a, b = render(spec.replace(**white)).astype(int), render(spec.replace(**black)).astype(int)
    return np.abs(a - b).max(axis=-1) > 40


def _grown(mask):
    """The mask grown by one pixel (4-neighbours) in each frame."""
    return mask | np.roll(mask, 1, 1) | np.roll(mask, -1, 1) | np.roll(mask, 1, 2) | np.roll(mask, -1, 2)


def test_render_clip_shape_determinism_motion_and_figure(render):
    from mannequin import ground_truth, reference_frame

    spec = sample_spec("jumping_jack", 11, "train", num_frames=8, size=48)
    clip = render(spec)
    assert clip.shape == (8, 48, 48, 3) and clip.dtype == np.uint8
    other = render(sample_spec("bow", 2, "test", num_frames=4, size=32))
    assert other.shape == (4, 32, 32, 3)
    assert np.array_equal(render(spec), clip)                 # same spec, same pixels, whatever came between
    assert np.array_equal(ground_truth(spec), clip)
    assert np.array_equal(reference_frame(spec), clip[0])
    assert np.abs(np.diff(clip.astype(int), axis=0)).mean(axis=(1, 2, 3)).min() > 0.3   # every frame moves

    mask = _figure_mask(render, spec)
    area = mask.mean(axis=(1, 2))
    assert (area > 0.03).all() and (area < 0.5).all()
    assert (mask[0] != mask[4]).mean() > 0.01                  # the figure's shape changes
    # The numpy camera model agrees with Blender's: projected joints land on the figure.
    points = np.round(keypoints_2d(spec)).astype(int).clip(0, 47)
    hits = _grown(mask)[np.arange(8)[:, None], points[..., 1], points[..., 0]]
    assert hits.mean() > 0.8


def _at(images, keypoints):
    """The pixel (F, P) of images (F, H, W) under each keypoint (F, P, 3): pixel i spans [i, i+1)/size."""
    size = images.shape[-1]
    index = np.floor(keypoints[..., :2] * size).astype(int).clip(0, size - 1)
    return images[np.arange(len(images))[:, None], index[..., 1], index[..., 0]]


_on = _at   # of a mask: whether each keypoint falls on it


def test_openpose_keypoints_lie_on_the_rendered_figure(render):
    specs = [sample_spec(action, seed, split, num_frames=5, size=48)
             for action, seed, split in (("arm_wave", 0, "test"), ("kick", 0, "train"), ("jumping_jack", 1, "train"),
                                         ("bow", 0, "test"), ("punch", 0, "test"))]
    assert {s.mirror for s in specs} == {True, False} and {s.split for s in specs} == {"train", "test"}
    body = [i for i in range(18) if i not in FACE]
    for spec in specs:
        mask = _figure_mask(render, spec)
        keypoints = openpose_keypoints(spec)
        seen = keypoints[..., 2] == 1
        assert seen[:, body].all(), spec                            # these figures stay in frame
        assert _on(mask, keypoints)[:, body].all(), spec            # every limb point on the figure's pixels
        face = keypoints[:, FACE]                                   # on the head's surface: within a pixel
        assert _on(_grown(mask), face)[seen[:, FACE]].all(), spec


def test_keypoints_sides_match_the_rendered_figure(render):
    """The waving arm of the render is where the keypoints put that side's wrist, and the mirror's
    is on the other side of the image: the person's right on the image's left."""
    for mirror in (False, True):
        spec = ClipSpec("arm_wave", num_frames=3, size=48, mirror=mirror)
        mask = _figure_mask(render, spec)[1]
        keypoints = openpose_keypoints(spec)[1]
        wrist = keypoints[P["l_wrist" if mirror else "r_wrist"]]
        reflected = wrist.copy()
        reflected[0] = 2 * keypoints[P["neck"], 0] - wrist[0]        # the same height on the other side
        assert _on(mask[None], wrist[None, None])[0, 0] and not _on(mask[None], reflected[None, None])[0, 0]
        assert (wrist[0] > keypoints[P["neck"], 0]) == mirror        # unmirrored: the image's left
        assert wrist[1] < keypoints[P["nose"], 1]


def test_keypoint_coordinates_are_pixel_centres(render):
    """x·size − 0.5 is the pixel index of a point: the figure's pixels are centred on its midline
    (the neck) to a fraction of a pixel; the pixel-index convention would be half a pixel off."""
    for position in ((0.13, 0.0), (-0.17, 0.1)):
        spec = ClipSpec("squat", num_frames=1, size=48, position=position)   # standing straight, facing us
        mask = _figure_mask(render, spec)[0]
        centre = (np.nonzero(mask)[1] + 0.5).mean()
        assert abs(centre - openpose_keypoints(spec)[0, P["neck"], 0] * spec.size) < 0.25


# -- depth (Blender) -------------------------------------------------------------------------------

def _floor_depth(spec, near, far, radius):
    """The 16-bit depth image of the floor disc alone (background 0), computed here with numpy."""
    from mannequin.depth import DEPTH_MAX
    from mannequin.render import SUPERSAMPLE

    n = spec.size * SUPERSAMPLE
    cam = camera_matrix(spec.camera_azimuth, spec.camera_elevation, spec.camera_distance)
    focal = 0.5 * n / np.tan(np.radians(FIELD_OF_VIEW) / 2)
    centres = (np.arange(n) + 0.5 - n / 2) / focal
    rays = centres[None, :, None] * cam[:3, 0] - centres[:, None, None] * cam[:3, 1] - cam[:3, 2]   # depth 1
    with np.errstate(divide="ignore"):
        depth = -cam[2, 3] / rays[..., 2]                                   # where each ray meets z = 0
    hit = cam[:3, 3] + depth[..., None] * rays
    on = (depth > 0) & (np.hypot(hit[..., 0], hit[..., 1]) <= radius)
    value = np.where(on, (1 / np.where(on, depth, 1.0) - 1 / far) / (1 / near - 1 / far), 0.0)
    return value.reshape(spec.size, SUPERSAMPLE, spec.size, SUPERSAMPLE).mean(axis=(1, 3)) * DEPTH_MAX


def test_render_depth_is_16_bit_near_bright_and_matches_the_figure(render):
    from mannequin.depth import depth_metres
    from mannequin.render import FLOOR_RADIUS, render_depth

    for spec in (sample_spec("jumping_jack", 2, "test", num_frames=4, size=48),
                 ClipSpec("kick", num_frames=4, size=32, camera_elevation=2.0, mirror=True)):
        frames = render(spec)
        depth = render_depth(spec)
        assert np.array_equal(render(spec), frames)                 # the colour frames are untouched
        assert depth.images.shape == (4, spec.size, spec.size) and depth.images.dtype == np.uint16
        assert depth.images.max() > 0.9 * 65535                     # the nearest point is the brightest
        assert len(np.unique(depth.images)) > 150 and (depth.images % 257).any()   # not 8-bit levels
        assert 0 < depth.near < depth.far

        figure = _figure_mask(render, spec)
        near_figure = _grown(_grown(figure))
        assert depth.images[figure].mean() > 2 * depth.images[~near_figure].mean()   # near = bright
        # Away from the figure (and from the disc's polygon edge) the depth is the floor's, computed
        # here through the same camera, and 0 on the background.
        floor, inner, outer = (_floor_depth(spec, depth.near, depth.far, r)
                               for r in (FLOOR_RADIUS, FLOOR_RADIUS - 0.05, FLOOR_RADIUS + 0.05))
        clear = ~near_figure & (inner == outer)
        assert np.abs(depth.images - floor)[clear].max() <= 2
        assert (depth.images[clear & (floor == 0)] == 0).all() and (clear & (floor == 0)).any()
        # The figure's depth mask (nearer than the floor) is the figure's colour mask, give or take
        # the edge pixels the colour mask's threshold leaves out.
        nearer = depth.images.astype(float) - floor > 0.02 * 65535
        assert nearer[figure].all() and not (nearer & ~_grown(figure) & clear).any()
        assert (nearer & ~figure).sum() < 0.15 * figure.sum()
        # In metres, the figure's surface is a few centimetres in front of its joints.
        keypoints = openpose_keypoints(spec)
        joints = _camera_depth(openpose_world(spec)[0], spec)
        surface = _at(depth_metres(depth.images, depth.near, depth.far), keypoints)
        assert 0.0 < np.median((joints - surface)[keypoints[..., 2] == 1]) < 0.15


def test_appearance_and_camera_change_the_pixels(render):
    spec = ClipSpec("squat", num_frames=1, size=32)
    base = render(spec)
    for change in (dict(background_colour=(0.9, 0.2, 0.2)), dict(ground_colour=(0.1, 0.8, 0.1)),
                   dict(camera_azimuth=40.0), dict(camera_elevation=28.0), dict(light_azimuth=120.0),
                   dict(light_energy=1.2), dict(position=(0.2, 0.0)), dict(scale=0.85)):
        assert not np.array_equal(render(spec.replace(**change)), base), change


# -- the cache CLI ---------------------------------------------------------------------------------

def test_generate_cli_writes_clips_that_training_accepts(tmp_path, render):
    from flash_engine.training.clips import scan_clips
    from mannequin.generate import main

    out = tmp_path / "cache"
    command = [sys.executable, "-m", "mannequin.generate", "--out", str(out), "--actions", "jump", "bow",
               "--clips-per-action", "2", "--split", "test", "--seed", "5", "--size", "32", "--frames", "8",
               "--quiet"]
    subprocess.run(command, cwd=REPO, check=True, timeout=120)
    split = out / "test"
    lines = [json.loads(line) for line in (split / "specs.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and {line["action"] for line in lines} == {"jump", "bow"}
    assert json.loads((split / "prompts.json").read_text())["jump"] == PROMPTS["jump"]
    scan = scan_clips([(split / "jump", PROMPTS["jump"]), (split / "bow", PROMPTS["bow"])],
                      num_frames=8, stride=1, resolution=(32, 32))
    assert len(scan.good) == 4 and not scan.bad
    assert all(clip.frames.shape[0] == 8 for clip in scan.good)

    # The files hold exactly what render_clip gives for the recorded spec.
    first = lines[0]
    spec = ClipSpec.from_dict(first["spec"])
    frames = np.stack([np.asarray(Image.open(p)) for p in sorted((split / first["path"]).glob("*.png"))])
    assert np.array_equal(frames, render(spec))

    # Idempotent: a second run renders nothing and leaves the clips alone; mp4 also works.
    stamp = (split / first["path"] / "frame_0001.png").stat().st_mtime_ns
    main(["--out", str(out), "--actions", "jump", "bow", "--clips-per-action", "2", "--split", "test",
          "--seed", "5", "--size", "32", "--frames", "8", "--quiet"])
    assert (split / first["path"] / "frame_0001.png").stat().st_mtime_ns == stamp
    main(["--out", str(out), "--actions", "kick", "--clips-per-action", "1", "--split", "train",
          "--size", "32", "--frames", "8", "--format", "mp4", "--quiet"])
    scan = scan_clips([(out / "train" / "kick", PROMPTS["kick"])], num_frames=8, stride=1, resolution=(32, 32))
    assert len(scan.good) == 1 and not scan.bad


def test_generate_adds_keypoints_and_depth_beside_clips_without_touching_them(tmp_path, render):
    from flash_engine.pose.format import read_pose_file
    from flash_engine.training.clips import scan_clips
    from mannequin.depth import read_depth_pngs
    from mannequin.generate import (FPS, clip_path, clip_spec, depth_path, generate, is_complete, keypoints_path,
                                    sidecar_path)
    from mannequin.render import render_depth

    out = tmp_path / "cache"
    options = dict(actions=["kick"], clips_per_action=2, split="test", seed=3, size=32, frames=4)
    generate(out, **options)
    clips = [clip_path(out / "test", "kick", i, "png") for i in range(2)]
    specs = [clip_spec("kick", i, "test", 3, 32, 4) for i in range(2)]
    files = sorted(p for clip in clips for p in (*clip.iterdir(), sidecar_path(clip)))
    stamps = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}
    index = (out / "test" / "specs.jsonl").read_text()

    summary = generate(out, **options, keypoints=True, depth=True)       # an existing cache learns them
    assert summary["rendered"] == 0 and summary["depth_only"] == 2
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files} == stamps   # clips and sidecars untouched
    assert sorted(p for clip in clips for p in (*clip.iterdir(), sidecar_path(clip))) == files
    assert (out / "test" / "specs.jsonl").read_text() == index
    for clip, spec in zip(clips, specs):
        assert is_complete(clip, spec, "png")
        poses = read_pose_file(keypoints_path(clip))
        assert (poses.width, poses.height, poses.fps, poses.frames) == (32, 32, FPS, 4)
        assert np.allclose(poses.body, openpose_keypoints(spec), atol=1e-5)
        depth = render_depth(spec)
        assert np.array_equal(read_depth_pngs(depth_path(clip)), depth.images)
        record = json.loads((depth_path(clip) / "depth.json").read_text())
        assert (record["near_m"], record["far_m"]) == (depth.near, depth.far)
        assert ClipSpec.from_dict(record["clip"]["spec"]) == spec
    scan = scan_clips([(out / "test" / "kick", PROMPTS["kick"])], num_frames=4, stride=1, resolution=(32, 32))
    assert len(scan.good) == 2 and not scan.bad                          # the new files are not clips

    extras = [keypoints_path(clips[0]), *depth_path(clips[0]).iterdir()]
    extra_stamps = [p.stat().st_mtime_ns for p in extras]
    summary = generate(out, **options, keypoints=True, depth=True)       # idempotent
    assert summary["depth_only"] == 0 and summary["keypoints_added"] == 0
    assert [p.stat().st_mtime_ns for p in extras] == extra_stamps

    # A clip rendered again loses the old keypoints and depth; new clips get them in the same pass.
    sidecar_path(clips[1]).write_text("{}")
    generate(out, **options)
    assert not keypoints_path(clips[1]).exists() and not depth_path(clips[1]).exists()
    assert keypoints_path(clips[0]).exists() and depth_path(clips[0]).exists()
    summary = generate(out, **{**options, "clips_per_action": 3}, keypoints=True, depth=True)
    assert summary["rendered"] == 1 and summary["depth_only"] == 1
    assert all(keypoints_path(clip).exists() and depth_path(clip).is_dir()
               for clip in (*clips, clip_path(out / "test", "kick", 2, "png")))
