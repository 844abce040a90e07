"""The person judge (MediaPipe Pose, a detector we did not train) and the base's person report."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mannequin import base_report
from mannequin.judge import LANDMARK_COUNT, LIMB_LANDMARKS, Judgement, keypoint_error, score
from tests.conftest import REPO

pytest.importorskip("mediapipe", reason="the judge runs MediaPipe (pip install mediapipe==0.10.21)")


def detection(shift=(0.0, 0.0)):
    points = np.zeros((LANDMARK_COUNT, 3))
    points[:, 0] = np.arange(LANDMARK_COUNT) + shift[0]
    points[:, 1] = 2 * np.arange(LANDMARK_COUNT) + shift[1]
    points[:, 2] = 1.0
    return points


def test_score_counts_detections_and_measures_limb_error_only_where_both_found():
    frames = [detection((3, 4)), None, detection(), None]
    reference = [detection(), detection(), None, None]
    judged = score(frames, reference)
    assert (judged.frames, judged.found, judged.reference_found, judged.both_found) == (4, 2, 2, 1)
    assert judged.keypoint_error_px == pytest.approx(5.0)  # a (3, 4) shift of every limb point
    moved_face = detection()
    moved_face[0, :2] += 50  # the nose is not a limb landmark
    assert 0 not in LIMB_LANDMARKS and keypoint_error(moved_face, detection()) == 0.0
    assert score([None, None], [None, detection()]).keypoint_error_px is None
    with pytest.raises(ValueError, match="2 frames against a reference of 3"):
        score([None, None], [None] * 3)


@pytest.fixture(scope="module")
def clip():
    from mannequin import render_clip, sample_spec

    return render_clip(sample_spec("jump", 0, "test", num_frames=6, size=64))


@pytest.fixture(scope="module")
def judge():
    from mannequin.judge import PoseJudge

    with PoseJudge() as own:
        yield own


def test_mediapipe_finds_the_rendered_mannequin_and_not_an_empty_frame(clip, judge):
    found = judge.clip(clip)
    assert sum(p is not None for p in found) >= 4, "MediaPipe should see the rendered figure"
    assert judge.keypoints(np.zeros((64, 64, 3), np.uint8)) is None
    assert judge.keypoints(np.full((64, 64, 3), 128, np.uint8)) is None
    points = next(p for p in found if p is not None)
    assert points.shape == (LANDMARK_COUNT, 3)
    # In the frame's own pixels (not the ×4 enlargement the detector sees), on the figure.
    assert 0 < points[LIMB_LANDMARKS, 0].mean() < 64 and 0 < points[LIMB_LANDMARKS, 1].mean() < 64


def test_keypoint_error_sees_a_figure_moved_by_a_few_pixels(clip, judge):
    frame = clip[0]
    moved = np.roll(frame, 3, axis=1)  # the figure 3 px to the right (the background is flat there)
    same = score(judge.clip([frame]), judge.clip([frame]))
    shifted = score(judge.clip([moved]), judge.clip([frame]))
    assert same.keypoint_error_px == 0.0
    assert 1.5 < shifted.keypoint_error_px < 4.5


def write_frames(folder, frames):
    folder.mkdir()
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"frame_{index + 1:04d}.png")
    return folder


def run_judge(*args):
    return subprocess.run([sys.executable, "-m", "mannequin.judge", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_the_cli_judges_a_take_against_its_reference_and_refuses_bad_folders(tmp_path, clip):
    truth = write_frames(tmp_path / "truth", clip)
    blank = write_frames(tmp_path / "blank", np.zeros_like(clip))
    Image.fromarray(np.zeros((16, 96, 3), np.uint8)).save(blank / "strip.png")  # a take's strip is not a frame
    result = run_judge(blank, "--reference", truth, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["frames"] == len(clip) and data["found"] == 0 and data["reference_found"] >= 4
    assert data["keypoint_error_px"] is None and data["rate"] == 0.0

    empty = tmp_path / "empty"
    empty.mkdir()
    short = write_frames(tmp_path / "short", clip[:2])
    for args, words in (((empty,), "has no .png frames"), ((tmp_path / "missing",), "is not a folder"),
                        ((short, "--reference", truth), "has 2 frames, the reference 6")):
        result = run_judge(*args)
        assert result.returncode == 2 and words in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_the_report_reads_rates_with_a_standard_error_over_clips():
    mean, error = base_report.rate_with_error([16, 8, 0, 8], 16)
    assert mean == pytest.approx(0.5)
    assert error == pytest.approx(np.std([1, 0.5, 0, 0.5], ddof=1) / 2)
    assert math.isnan(base_report.rate_with_error([4], 16)[1])
    assert base_report.psnr(np.zeros((2, 2)), np.zeros((2, 2))) > 100
    assert Judgement(frames=4, found=1).rate == 0.25


def test_the_blur_rows_blur_by_the_std_asked_and_read_in_the_table():
    edge = np.zeros((1, 16, 16, 3), np.uint8)
    edge[:, :, 8:] = 255
    assert np.array_equal(base_report.blurred(edge, 0), edge)
    soft, softer = base_report.blurred(edge, 0.5)[0, 8], base_report.blurred(edge, 1.5)[0, 8]
    assert 0 < soft[8, 0] < 255 and softer[6, 0] > soft[6, 0] > 0 == edge[0, 8, 6, 0]  # wider with the std
    result = {"model": "m", "identity": "abcdef12", "original_found": "8/16", "original": (0.5, 0.1),
              "round_trip_found": "4/16", "round_trip": (0.25, 0.1), "round_trip_psnr": (30.0, 29.0, 31.0),
              "keypoint_error_px": None, "generated_found": "1/16", "generated": (0.06, 0.0),
              "generated_truth": (0.9, 0.0), "seconds_per_clip": 1.0, "blurred_originals": {0.5: "6/16"}}
    lines = base_report.table([result]).splitlines()
    assert "| original frames after a Gaussian blur of 0.5 px | 6/16 |" in lines
    assert lines.index("| original frames after a Gaussian blur of 0.5 px | 6/16 |") == 4  # beside the round trip
