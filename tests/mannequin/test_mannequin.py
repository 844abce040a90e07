"""The mannequin clip generator: actions, specs and splits, Blender rendering, the cache CLI."""

import json
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mannequin.actions import ACTIONS, PROMPTS, action_pose, clip_times, joint_positions, max_step_degrees
from mannequin.camera import keypoints_2d
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


# -- rendering (Blender) ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def render():
    pytest.importorskip("bpy")
    from mannequin.render import render_clip

    return render_clip


def _figure_mask(render, spec):
    """Pixels that change when only the body colours change: the figure."""
    recoloured = spec.replace(head_colour=(0.05, 0.9, 0.9), torso_colour=(0.9, 0.9, 0.05),
                              arms_colour=(0.05, 0.05, 0.9), legs_colour=(0.9, 0.05, 0.9))
    a, b = render(spec).astype(int), render(recoloured).astype(int)
    return np.abs(a - b).max(axis=-1) > 40


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
    grown = mask | np.roll(mask, 1, 1) | np.roll(mask, -1, 1) | np.roll(mask, 1, 2) | np.roll(mask, -1, 2)
    hits = grown[np.arange(8)[:, None], points[..., 1], points[..., 0]]
    assert hits.mean() > 0.8


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
