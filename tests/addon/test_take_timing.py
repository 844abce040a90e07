"""The timing rule (which scene frame shows which clip frame), the colourspace that cancels a
view transform, the plane's fit to a changed camera frame, and the fps a trained action
learns: pure Python, no Blender."""

from __future__ import annotations

import pytest

from flash_blender import camera_frame as cf
from flash_blender.catalog import read_trained_action
from flash_blender.display import frame_colorspace
from flash_blender.timing import HIDE, HOLD, TakeTiming, clip_fps


def image_sequence_file(timing: TakeTiming, offsets: dict[int, int], frame: int) -> int:
    """What Blender's image sequence shows at ``frame``: the held offset key plus its clamp."""
    keys = sorted(offsets)
    offset = offsets[max([k for k in keys if k <= frame], default=keys[0])]
    return min(max(frame - timing.frame_start + 1, 0), timing.clip_frames) + offset


def test_an_8_fps_clip_holds_each_frame_three_scene_frames_at_24():
    timing = TakeTiming(frame_start=5, clip_frames=4, clip_fps=8, scene_fps=24)
    assert timing.scene_frames == 12 and timing.frame_end == 16 and timing.seconds == 0.5
    assert timing.sequence() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_a_16_frame_take_lasts_2_seconds_at_any_scene_rate():
    for fps, frames in ((24, 48), (25, 50), (30, 60), (24000 / 1001, 48), (8, 16), (12, 24)):
        timing = TakeTiming(frame_start=1, clip_frames=16, clip_fps=8, scene_fps=fps)
        assert timing.scene_frames == frames, fps
        assert timing.sequence().count(0) >= 1 and timing.sequence()[-1] == 15
        # each clip frame appears when its time comes: never early
        for j, k in enumerate(timing.sequence()):
            assert k / 8 <= j / fps + 1e-9 < (k + 1) / 8


def test_a_clip_faster_than_the_scene_skips_frames():
    timing = TakeTiming(frame_start=0, clip_frames=8, clip_fps=24, scene_fps=12)
    assert timing.sequence() == [0, 2, 4, 6]


def test_outside_the_take_hold_or_hide():
    timing = TakeTiming(frame_start=10, clip_frames=3, clip_fps=8, scene_fps=24)
    assert [timing.clip_frame(f) for f in (1, 9, 10, 18, 19, 100)] == [0, 0, 0, 2, 2, 2]
    assert [timing.clip_frame(f, HIDE) for f in (9, 10, 18, 19)] == [None, 0, 2, None]
    assert timing.clip_frame(12, HOLD) == timing.clip_frame(12, HIDE) == 0


def test_offset_keys_make_the_image_sequence_follow_the_rule_everywhere():
    for timing in (TakeTiming(5, 4, 8, 24), TakeTiming(1, 16, 8, 25), TakeTiming(-3, 5, 24, 12),
                   TakeTiming(100, 2, 7.5, 30)):
        offsets = dict(timing.offset_keys())
        for frame in range(timing.frame_start - 20, timing.frame_end + 20):
            assert image_sequence_file(timing, offsets, frame) == timing.clip_frame(frame) + 1, (timing, frame)


def test_the_panel_line_and_bad_rates():
    assert TakeTiming(1, 4, 8, 24).describe() == "4 frames at 8 fps: 0.5 s, 12 scene frames at 24 fps"
    with pytest.raises(ValueError):
        TakeTiming(1, 0)
    with pytest.raises(ValueError):
        TakeTiming(1, 4, clip_fps=0)
    assert clip_fps({"fps": 12}) == 12 and clip_fps({"fps": None}) == 8 and clip_fps(None) == 8
    assert clip_fps({"fps": True}) == 8 and clip_fps({"fps": -1}) == 8


def test_the_colourspace_that_cancels_each_view():
    assert frame_colorspace("sRGB", "AgX") == "AgX Base sRGB"
    assert frame_colorspace("sRGB", "Filmic") == "Filmic sRGB"
    assert frame_colorspace("sRGB", "Standard") == "sRGB"
    assert frame_colorspace("sRGB", "Raw") == "Non-Color"
    assert frame_colorspace("Display P3", "AgX") == "sRGB"  # no cancelling space known: plain sRGB
    assert frame_colorspace("sRGB", "AgX", available={"sRGB"}) == "sRGB"


def test_frame_fit_maps_the_base_frame_onto_a_zoomed_shifted_one():
    base = cf.CameraParams(lens=35, shift_x=0.1, resolution_x=64, resolution_y=40)
    for now in (cf.CameraParams(lens=70, shift_x=0.1, resolution_x=64, resolution_y=40),
                cf.CameraParams(lens=50, shift_x=-0.2, shift_y=0.05, sensor_width=24, resolution_x=64,
                                resolution_y=40)):
        sx, sy, ox, oy = cf.frame_fit(base, now, 5.0)
        for (x0, y0, z0), (x1, y1, z1) in zip(cf.frame_corners(base, 5.0), cf.frame_corners(now, 5.0)):
            assert (ox + sx * x0, oy + sy * y0, z0) == pytest.approx((x1, y1, z1))
    assert cf.frame_fit(base, base, 5.0) == pytest.approx((1.0, 1.0, 0.0, 0.0))


def test_a_trained_actions_fps_reaches_the_catalog(tmp_path):
    folder = tmp_path / "disc_roll"
    folder.mkdir()
    (folder / "action.toml").write_text('name = "Disc Roll"\nprompt = "a person rolls"\nfps = 12.5\n')
    assert read_trained_action(folder).fps == 12.5
    (folder / "action.toml").write_text('name = "Disc Roll"\nprompt = "a person rolls"\n')
    assert read_trained_action(folder).fps is None
