"""Driving clip -> poses: reading the clip, MediaPipe -> OpenPose points, gaps, retargeting."""

import numpy as np
import pytest
from PIL import Image

from flash_engine.errors import FlashError
from flash_engine.pose.driving import (alignment, fill_gaps, openpose_from_mediapipe, poses_from_driving,
                                       read_driving_frames, smooth)
from flash_engine.pose.format import PoseSequence


def _save_folder(frames, folder):
    folder.mkdir(parents=True, exist_ok=True)
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"frame_{index + 1}.png")  # natural order: 1, 2, ..., 10, ...
    return folder


def _numbered_frames(count, size=16):
    """Frames whose grey level is 10 x their index (to tell which ones were read)."""
    return [np.full((size, size, 3), 10 * i, dtype=np.uint8) for i in range(count)]


def _write_mp4(frames, path, fps):
    import imageio.v2 as imageio

    with imageio.get_writer(path, fps=fps, codec="libx264", quality=10, macro_block_size=1,
                            ffmpeg_log_level="error") as writer:
        for frame in frames:
            writer.append_data(frame)
    return path


# -- reading -------------------------------------------------------------------------------------

def test_a_folder_is_read_in_natural_order_from_start(tmp_path):
    folder = _save_folder(_numbered_frames(12), tmp_path / "clip")
    frames, fps = read_driving_frames(folder, 3, start=8)
    assert [int(f[0, 0, 0]) for f in frames] == [80, 90, 100] and fps is None


def test_a_short_folder_or_video_is_a_one_line_error_naming_its_length(tmp_path):
    folder = _save_folder(_numbered_frames(16), tmp_path / "clip")
    with pytest.raises(FlashError) as caught:
        read_driving_frames(folder, 8, start=12)
    text = str(caught.value)
    assert "has 16 frames" in text and "need 20" in text and "at most 4 frames" in text and "\n" not in text
    video = _write_mp4(_numbered_frames(10), tmp_path / "short.mp4", fps=10)
    with pytest.raises(FlashError, match="has 10 frames"):
        read_driving_frames(video, 16, start=0)


def test_a_video_is_picked_at_the_asked_rate(tmp_path):
    video = _write_mp4(_numbered_frames(24), tmp_path / "clip.mp4", fps=24)
    frames, fps = read_driving_frames(video, 4, start=1, fps=8)  # every 3rd frame: 1, 4, 7, 10
    assert fps == pytest.approx(24)
    assert [round(f[8, 8, 0] / 10) for f in frames] == [1, 4, 7, 10]
    frames, _ = read_driving_frames(video, 3, start=0)             # no rate asked: every frame
    assert [round(f[8, 8, 0] / 10) for f in frames] == [0, 1, 2]
    with pytest.raises(FlashError, match="at 8 fps need 25"):
        read_driving_frames(video, 9, start=0, fps=8)


def _file(folder, name, data):
    (folder / name).write_bytes(data)
    return folder / name


def _empty_folder(folder):
    (folder / "frames").mkdir()
    return folder / "frames"


@pytest.mark.parametrize("make, needle", [
    (lambda p: p / "nothing.mp4", "not found"),
    (lambda p: _file(p, "empty.mp4", b""), "empty"),
    (lambda p: _file(p, "junk.mp4", b"not a video at all"), "not a readable video"),
    (lambda p: _file(p, "notes.txt", b"x"), "not a video"),
    (_empty_folder, "no frame images"),
])
def test_unusable_driving_clips_are_one_line_errors(tmp_path, make, needle):
    with pytest.raises(FlashError) as caught:
        read_driving_frames(make(tmp_path), 4)
    assert needle in str(caught.value) and "\n" not in str(caught.value)


# -- points --------------------------------------------------------------------------------------

def test_mediapipe_landmarks_map_to_openpose_points_with_the_neck_between_the_shoulders():
    landmarks = np.array([[i, 100 + i, 0.5 + i / 100] for i in range(33)], dtype=float)
    body, face = openpose_from_mediapipe(landmarks)
    # OpenPose point: MediaPipe landmark (the person's own right and left in both)
    expected = {0: 0, 2: 12, 3: 14, 4: 16, 5: 11, 6: 13, 7: 15, 8: 24, 9: 26, 10: 28, 11: 23, 12: 25, 13: 27,
                14: 5, 15: 2, 16: 8, 17: 7}
    for openpose, mediapipe in expected.items():
        assert body[openpose].tolist() == landmarks[mediapipe].tolist(), openpose
    assert body[1].tolist() == pytest.approx([11.5, 111.5, 0.61])  # mid-shoulders; the lower visibility
    assert face.tolist() == landmarks[:11].tolist()


def test_frames_without_a_person_are_interpolated_and_held_at_the_ends():
    points = np.zeros((6, 2, 3))
    points[1] = [[10, 20, 1], [0, 0, 0.5]]
    points[4] = [[40, 50, 1], [30, 30, 0.5]]
    found = np.array([False, True, False, False, True, False])
    filled = fill_gaps(points, found)
    assert filled[0].tolist() == points[1].tolist()                      # held before the first
    assert filled[2, 0].tolist() == pytest.approx([20, 30, 1])           # a third of the way
    assert filled[3, 1].tolist() == pytest.approx([20, 20, 0.5])
    assert filled[5].tolist() == points[4].tolist()                      # held after the last


def test_smoothing_averages_neighbours_by_confidence_and_keeps_confidences():
    points = np.zeros((3, 1, 3))
    points[:, 0] = [[0, 0, 1], [4, 8, 1], [8, 0, 0]]  # the last frame's point is missing
    smoothed = smooth(points)
    assert smoothed[1, 0].tolist() == pytest.approx([(0 + 2 * 4) / 3, (0 + 2 * 8) / 3, 1])
    assert smoothed[0, 0].tolist() == pytest.approx([(2 * 0 + 4) / 3, (2 * 0 + 8) / 3, 1])
    assert smoothed[2, 0, 2] == 0


def _standing(scale=1.0, offset=(0, 0)):
    body = np.zeros((18, 3))
    body[:, 2] = 1
    body[1, :2] = [0, -50]      # neck
    body[2, :2], body[5, :2] = [-15, -50], [15, -50]
    body[8, :2], body[11, :2] = [-10, 0], [10, 0]
    body[4, :2], body[7, :2] = [-30, -20], [30, 90]  # wrists anywhere: they do not decide
    body[:, :2] = body[:, :2] * scale + offset
    return body


def test_alignment_fits_torso_length_and_centre():
    scale, offset = alignment(_standing(), _standing(2.0, (100, 80)))
    assert scale == pytest.approx(2.0) and offset.tolist() == pytest.approx([100, 80])
    target = _standing(2.0, (100, 80))
    target[7, :2] = [0, 0]   # another arm pose in the reference: the fit does not move
    assert alignment(_standing(), target)[0] == pytest.approx(2.0)


def test_alignment_without_a_torso_uses_the_shared_points_and_refuses_too_few():
    source, target = _standing(), _standing(0.5, (10, 10))
    source[8, 2] = target[11, 2] = 0  # a hip missing in each
    scale, offset = alignment(source, target)
    assert scale == pytest.approx(0.5) and offset.tolist() == pytest.approx([10, 10])
    lonely = np.zeros((18, 3))
    lonely[0] = [5, 5, 1]
    with pytest.raises(FlashError, match="too few points"):
        alignment(lonely, target)


# -- MediaPipe on a rendered mannequin ------------------------------------------------------------

@pytest.fixture(scope="module")
def jump(tmp_path_factory):
    pytest.importorskip("bpy")
    pytest.importorskip("mediapipe")
    import mannequin

    frames = mannequin.render_clip(mannequin.sample_spec("jump", 0, split="test"))  # (16, 64, 64, 3)
    return frames, _save_folder(frames, tmp_path_factory.mktemp("jump") / "clip")


@pytest.fixture(scope="module")
def as_in_clip(jump):
    """The poses of 8 frames from frame 2 as MediaPipe finds them, not retargeted."""
    frames, folder = jump
    return poses_from_driving(folder, 8, 2, reference_image=None)


def test_poses_of_a_rendered_person(jump, as_in_clip):
    seq = as_in_clip
    assert seq.body.shape == (8, 18, 3) and (seq.width, seq.height) == (64, 64) and seq.fps is None
    assert seq.face.shape == (8, 11, 3) and seq.face_points == "mediapipe-pose-face-11"
    px = seq.body[..., :2] * 64
    assert np.abs(px[:, 1] - (px[:, 2] + px[:, 5]) / 2).max() < 0.5      # the neck between the shoulders
    assert (seq.body[:, [1, 2, 5, 8, 11], 2] > 0.5).all()                 # a torso found in every frame
    # the jump: the hips rise and come back down
    hips = seq.location()[:, 1] * 64
    assert hips.max() - hips.min() > 4


def test_retargeted_so_frame_0_lands_on_the_reference_pose(jump, as_in_clip):
    scale, offset = 1.5, np.array([12.0, 20.0])
    reference_px = as_in_clip.body[0].astype(np.float64) * [64, 64, 1]
    reference_px[:, :2] = reference_px[:, :2] * scale + offset                 # another person, bigger, elsewhere
    reference = PoseSequence.from_pixels(reference_px[None], 128, 128)
    lines = []
    seq = poses_from_driving(jump[1], 8, 2, reference_image=None, reference_pose=reference, report=lines.append)
    assert (seq.width, seq.height) == (128, 128)
    px = seq.body[..., :2].astype(np.float64) * 128
    confident = reference_px[:, 2] > 0.3
    assert np.abs(px[0, confident] - reference_px[confident, :2]).max() < 0.5  # frame 0 on the reference
    driven = as_in_clip.body[..., :2].astype(np.float64) * 64 * scale + offset
    assert np.abs(px - driven).max() < 0.5                                      # every frame moved alike
    assert any("scale 1.5" in line for line in lines)


def test_retargeted_to_the_person_in_the_reference_image(jump):
    frames, folder = jump
    # the reference: the clip's frame 2, enlarged x2 (same person, twice the size)
    image = Image.fromarray(frames[2]).resize((128, 128), Image.BICUBIC)
    seq = poses_from_driving(folder, 8, 2, reference_image=image)
    assert (seq.width, seq.height) == (128, 128)
    from flash_engine.pose.driving import detect_person

    target = detect_person(np.asarray(image))[0]
    torso = [1, 2, 5, 8, 11]
    assert np.abs(seq.body[0, torso, :2] * 128 - target[torso, :2]).max() < 3  # px of 128


def test_a_frame_without_a_person_is_interpolated(jump, as_in_clip, tmp_path):
    frames = jump[0].copy()
    frames[2 + 3] = 0  # the 4th frame used: black
    lines = []
    seq = poses_from_driving(_save_folder(frames, tmp_path / "blank"), 8, 2, reference_image=None,
                             report=lines.append)
    assert any("7 of 8" in line and "interpolated: 3" in line for line in lines)
    assert (seq.body[3, [1, 2, 5, 8, 11], 2] > 0.5).all()
    torso = [1, 2, 5, 8, 11]
    assert np.abs(seq.body[3, torso, :2] - as_in_clip.body[3, torso, :2]).max() * 64 < 3


def test_a_clip_without_a_person_and_a_reference_without_one_are_one_line_errors(jump, tmp_path):
    black = _save_folder([np.zeros((64, 64, 3), np.uint8)] * 4, tmp_path / "black")
    with pytest.raises(FlashError) as caught:
        poses_from_driving(black, 4, 0, reference_image=None)
    assert "no person found" in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(FlashError) as caught:
        poses_from_driving(jump[1], 4, 0, reference_image=np.zeros((64, 64, 3), np.uint8))
    assert "reference image" in str(caught.value) and "--reference-pose" in str(caught.value)


def test_a_reference_pose_of_another_aspect_than_the_reference_image_is_refused(jump, as_in_clip):
    with pytest.raises(FlashError, match="reference pose was made for a 64x64 image"):
        poses_from_driving(jump[1], 4, 0, reference_image=np.zeros((64, 96, 3), np.uint8),
                           reference_pose=as_in_clip)
