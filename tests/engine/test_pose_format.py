"""The .pose.json format: round trip, every bad file a one-line error naming the fix, fitting a take."""

import json
from pathlib import Path

import numpy as np
import pytest

from flash_engine.errors import FlashError
from flash_engine.pose.format import (BODY_POINT_NAMES, FORMAT, VERSION, PoseSequence, read_pose_file,
                                      write_pose_file)


def _body(frames=3, seed=0):
    rng = np.random.default_rng(seed)
    body = np.concatenate([rng.uniform(0.1, 0.9, (frames, 18, 2)), rng.uniform(0.5, 1, (frames, 18, 1))], -1)
    body[:, 4] = 0  # a missing point: confidence 0
    return body


def _sequence(frames=3, **options):
    return PoseSequence(body=_body(frames), width=96, height=64, fps=12.0, **options)


def _write_json(path, data):
    path.write_text(json.dumps(data))
    return path


def _valid(frames=2):
    return {"format": FORMAT, "version": VERSION, "width": 96, "height": 64, "fps": 8, "points": "openpose-18",
            "frames": [{"body": [[0.5, 0.5, 1.0]] * 18} for _ in range(frames)]}


def _one_line_error(path, *needles):
    with pytest.raises(FlashError) as caught:
        read_pose_file(path)
    text = str(caught.value)
    assert "\n" not in text
    for needle in needles:
        assert needle in text, text
    return text


def test_round_trip_keeps_body_hands_face_size_and_fps(tmp_path):
    rng = np.random.default_rng(1)
    hands = np.concatenate([rng.uniform(0, 1, (3, 2, 21, 2)), rng.uniform(0, 1, (3, 2, 21, 1))], -1)
    face = np.concatenate([rng.uniform(0, 1, (3, 11, 2)), np.ones((3, 11, 1))], -1)
    seq = _sequence(hands=hands, face=face, face_points="mediapipe-pose-face-11")
    path = write_pose_file(seq, tmp_path / "take.pose.json")
    back = read_pose_file(path)
    assert back.body.dtype == np.float32 and back.body.shape == (3, 18, 3)
    np.testing.assert_allclose(back.body[..., :2], seq.body[..., :2], atol=1e-5)  # < 0.05 px at 4096
    np.testing.assert_allclose(back.body[..., 2], seq.body[..., 2], atol=1e-3)
    np.testing.assert_allclose(back.hands, seq.hands, atol=1e-3)
    np.testing.assert_allclose(back.face, seq.face, atol=1e-3)
    assert (back.width, back.height, back.fps, back.face_points) == (96, 64, 12.0, "mediapipe-pose-face-11")
    assert back.source == str(path)
    header = json.loads(path.read_text())
    assert header["format"] == "flash-pose" and header["version"] == 1 and header["points"] == "openpose-18"
    assert len(path.read_text().splitlines()) == 3 + 2  # the header, one line per frame, the end: editable


def test_body_only_file_has_no_hands_or_face_and_missing_hands_read_as_missing(tmp_path):
    data = _valid(2)
    data["frames"][1]["hands"] = [None, [[0.2, 0.3, 0.9]] * 21]
    back = read_pose_file(_write_json(tmp_path / "a.pose.json", data))
    assert back.face is None and back.hands.shape == (2, 2, 21, 3)
    assert (back.hands[0] == 0).all() and (back.hands[1, 0] == 0).all()  # absent: confidence 0
    assert back.hands[1, 1, 5].tolist() == pytest.approx([0.2, 0.3, 0.9])
    plain = read_pose_file(_write_json(tmp_path / "b.pose.json", _valid(1)))
    assert plain.hands is None and plain.face is None and plain.frames == 1


def test_write_never_replaces_a_file_and_leaves_no_partial(tmp_path):
    target = tmp_path / "take.pose.json"
    target.write_text("mine")
    with pytest.raises(FlashError, match="already exists"):
        write_pose_file(_sequence(), target)
    assert target.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["take.pose.json"]


@pytest.mark.parametrize("mutate, needles", [
    (lambda d: d.update(format="something-else"), ("not a FLASH pose file", "docs/pose-format.md")),
    (lambda d: d.update(version=2), ("version 2", "update the FLASH engine")),
    (lambda d: d.update(version="1"), ("\"version\"",)),
    (lambda d: d.update(points="coco-17"), ("openpose-18",)),
    (lambda d: d.update(frames=[]), ("no frames",)),
    (lambda d: d.pop("frames"), ("no frames",)),
    (lambda d: d.update(width=0), ("'width'", "size of the image")),
    (lambda d: d.update(height=64.5), ("'height'",)),
    (lambda d: d.update(fps=-3), ("'fps'",)),
    (lambda d: d["frames"][1].update(body=[[0.5, 0.5, 1.0]] * 17), ("frame 1", "17 points", "needs 18")),
    (lambda d: d["frames"][0].update(body=[[0.5, 0.5]] * 18), ("frame 0", "point 0", "[x, y, confidence]")),
    (lambda d: d["frames"][0]["body"].__setitem__(3, [None, 0.5, 1.0]), ("frame 0", "right elbow", "finite")),
    (lambda d: d["frames"][1]["body"].__setitem__(7, [512, 300, 1.0]), ("left wrist", "outside the image",
                                                                        "divide pixel coordinates")),
    (lambda d: d["frames"][0]["body"].__setitem__(0, [0.5, 0.5, 1.5]), ("nose", "confidence")),
    (lambda d: d["frames"][0].update(hands=[[[0.1, 0.1, 1]] * 20, None]), ("right hand", "20 points")),
    (lambda d: (d["frames"][0].update(face=[[0.1, 0.1, 1]] * 5), d["frames"][1].update(face=[[0.1, 0.1, 1]] * 6)),
     ("different numbers of face points",)),
])
def test_bad_files_are_one_line_errors_naming_the_fix(tmp_path, mutate, needles):
    data = _valid(2)
    mutate(data)
    _one_line_error(_write_json(tmp_path / "bad.pose.json", data), *needles)


def test_nan_and_infinity_tokens_and_non_json_are_refused(tmp_path):
    path = tmp_path / "nan.pose.json"
    path.write_text(json.dumps(_valid(1)).replace("0.5, 0.5, 1.0]", "NaN, 0.5, 1.0]", 1))
    _one_line_error(path, "nose", "finite")
    path.write_text(json.dumps(_valid(1)).replace("0.5, 0.5, 1.0]", "0.5, Infinity, 1.0]", 1))
    _one_line_error(path, "finite")
    path.write_text("{\"format\": \"flash-pose\",")
    _one_line_error(path, "not JSON", "line 1")
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    _one_line_error(path, "not JSON")
    _one_line_error(tmp_path / "missing.pose.json", "not found")
    _one_line_error(tmp_path, "folder")


def test_sequences_made_in_code_are_checked_as_files_are():
    body = _body(2)
    body[1, 2, 0] = np.nan
    with pytest.raises(FlashError, match="frame 1 point 2 \\(right shoulder\\)"):
        PoseSequence(body=body, width=64, height=64)
    with pytest.raises(FlashError, match="no frames"):
        PoseSequence(body=np.zeros((0, 18, 3)), width=64, height=64)
    with pytest.raises(ValueError, match="shape"):
        PoseSequence(body=np.zeros((2, 17, 3)), width=64, height=64)


def test_from_pixels_normalises_by_the_image_size():
    pixels = np.zeros((1, 18, 3))
    pixels[0, 0] = [48, 16, 1]
    seq = PoseSequence.from_pixels(pixels, 96, 64)
    assert seq.body[0, 0].tolist() == pytest.approx([0.5, 0.25, 1.0])


def test_check_for_frame_count_names_both_counts_and_the_fix():
    seq = _sequence(frames=24)
    seq.check_for(24, 96, 64)
    with pytest.raises(FlashError) as caught:
        seq.check_for(16, 96, 64)
    text = str(caught.value)
    assert "24 frames" in text and "16" in text and "--frames 24" in text and "\n" not in text


def test_check_for_aspect_same_ratio_at_another_size_is_fine_another_ratio_is_not():
    seq = PoseSequence(body=_body(2), width=1920, height=1080)
    seq.check_for(2, 512, 288)   # 16:9 at another size
    PoseSequence(body=_body(2), width=2048, height=858).check_for(2, 512, 216)  # 214.5 rounded to the size step
    seq.check_for(2, 64, 32, size_step=16)  # 36 rounded down to a 16-step: within half a step
    with pytest.raises(FlashError) as caught:
        seq.check_for(2, 512, 512)
    text = str(caught.value)
    assert "1920x1080" in text and "512x512" in text and "--height 288" in text
    with pytest.raises(FlashError):
        seq.check_for(2, 512, 304)


def test_location_is_the_hip_centre_else_the_neck():
    body = np.zeros((2, 18, 3))
    body[:, 1] = [0.5, 0.3, 0.9]      # neck
    body[:, 8] = [0.4, 0.6, 1.0]      # right hip
    body[:, 11] = [0.6, 0.7, 0.8]     # left hip
    body[1, 11, 2] = 0.0              # frame 1: left hip missing
    location = PoseSequence(body=body, width=64, height=64).location()
    assert location[0].tolist() == pytest.approx([0.5, 0.65, 0.8])
    assert location[1].tolist() == pytest.approx([0.5, 0.3, 0.9])


def test_body_point_names_are_openposes_order():
    assert len(BODY_POINT_NAMES) == 18
    assert BODY_POINT_NAMES[:3] == ("nose", "neck", "right shoulder") and BODY_POINT_NAMES[-1] == "left ear"


def test_the_documented_example_reads(tmp_path):
    doc = (Path(__file__).resolve().parents[2] / "docs" / "pose-format.md").read_text()
    example = doc.split("```json\n", 1)[1].split("```", 1)[0]
    seq = read_pose_file(_write_json_text(tmp_path / "example.pose.json", example))
    assert (seq.frames, seq.width, seq.height, seq.fps) == (1, 1920, 1080, 24.0)
    assert seq.body[0, 17].tolist() == [0, 0, 0]


def _write_json_text(path, text):
    path.write_text(text)
    return path
