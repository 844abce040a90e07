"""mannequin/control_benchmark.py: its figures on known values, and a smoke run of the chain on
the built-in model with its own pose ControlNet (rendering needs the `bpy` wheel)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mannequin import control_benchmark as cb


def _detection_of(target: np.ndarray, width: int, height: int, shift=(0.0, 0.0)) -> np.ndarray:
    """A MediaPipe-shaped (33, 3) detection in pixels whose OpenPose points are ``target``'s, moved."""
    from flash_engine.pose.driving import OPENPOSE_FROM_MEDIAPIPE

    detection = np.zeros((33, 3))
    for openpose, mediapipe in OPENPOSE_FROM_MEDIAPIPE.items():
        detection[mediapipe] = [target[openpose, 0] * width + shift[0], target[openpose, 1] * height + shift[1], 0.9]
    return detection


def test_limb_error_is_the_pixel_distance_over_the_limb_points_the_target_has():
    rng = np.random.default_rng(0)
    target = np.concatenate([rng.uniform(0.2, 0.8, (18, 2)), np.ones((18, 1))], axis=1)
    assert cb.limb_error(_detection_of(target, 64, 32), target, 64, 32) == pytest.approx(0.0, abs=1e-9)
    assert cb.limb_error(_detection_of(target, 64, 32, (3.0, 4.0)), target, 64, 32) == pytest.approx(5.0)
    # A point the target lacks does not count, whatever the detection says there.
    detection = _detection_of(target, 64, 32)
    far = target.copy()
    far[4, 2] = 0.0  # right wrist missing in the target
    detection[16, :2] += 40  # MediaPipe's right wrist, far off
    assert cb.limb_error(detection, far, 64, 32) == pytest.approx(0.0, abs=1e-9)
    assert cb.limb_error(detection, target, 64, 32) == pytest.approx(40 * math.sqrt(2) / 12)
    target[:, 2] = 0.0
    assert cb.limb_error(detection, target, 64, 32) is None
    # Over a clip: the frames with a detection only; None when there is none.
    targets = np.stack([far, far])
    assert cb.clip_limb_error([None, _detection_of(far, 64, 32, (0, 2))], targets, 64, 32) == pytest.approx(2.0)
    assert cb.clip_limb_error([None, None], targets, 64, 32) is None


def test_ssim_is_one_for_the_same_clip_and_falls_with_noise():
    rng = np.random.default_rng(1)
    clip = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    noisy = np.clip(clip.astype(int) + rng.normal(0, 40, clip.shape), 0, 255).astype(np.uint8)
    assert cb.ssim(clip, clip) == pytest.approx(1.0)
    assert 0 < cb.ssim(noisy, clip) < 0.9
    assert cb.ssim(noisy[:1], clip[:1]) != cb.ssim(noisy, clip)  # every frame counts


def test_summary_and_pairing_read_means_errors_and_refusals():
    rows = [{"row": "prompt", "action": "kick", "index": i, "held_out": True, "flow_cos": v, "kp_truth": None}
            for i, v in enumerate([0.1, 0.3])]
    rows += [{"row": "rig", "action": "kick", "index": i, "held_out": True, "flow_cos": v, "kp_truth": 2.0}
             for i, v in enumerate([0.5, 0.4])]
    rows += [{"row": "other", "action": "kick", "index": 0, "held_out": True, "failed": "no person found"}]
    table = {r["row"]: r for r in cb.summarise(rows)}
    assert table["prompt"]["flow_cos"] == pytest.approx((0.2, 0.1))
    assert table["prompt"]["kp_truth"] is None and table["rig"]["kp_truth_clips"] == 2
    assert table["other"]["failed"] == 1 and table["other"]["flow_cos"] is None
    assert cb.summarise(rows, "train") == []
    pairs = cb.paired(rows)
    assert set(pairs) == {"rig"}
    assert pairs["rig"]["mean"] == pytest.approx((0.25, 0.15)) and pairs["rig"]["higher"] == 2
    assert "(1 refused)" in cb.table_markdown(cb.summarise(rows))


@pytest.mark.slow
def test_smoke_run_scores_every_row_drives_with_the_right_poses_and_resumes(tmp_path, capsys):
    pytest.importorskip("bpy")
    pytest.importorskip("mediapipe")
    from flash_engine.models.loading import MANNEQUIN_DIR, mannequin_available

    if not mannequin_available() or not (MANNEQUIN_DIR / "controlnet_pose").is_dir():
        pytest.skip("the built-in model or its pose ControlNet is not here")
    report = tmp_path / "control.md"
    report.write_text("# Notes\n\nhand-written reading that must survive\n")
    args = ["--smoke", "--actions", "kick", "--work", str(tmp_path / "work"), "--cache", str(tmp_path / "cache"),
            "--report", str(report), "--json", str(tmp_path / "r.json"), "--threads", "1", "--quiet"]
    assert cb.main(args) == 0
    data = json.loads((tmp_path / "r.json").read_text())
    rows = {(r["row"], r["index"]): r for r in data["rows"]}
    assert set(rows) == {(name, i) for name in cb.ROWS for i in range(2)}
    for (name, index), row in rows.items():
        assert "failed" not in row, row
        assert -1 - 1e-9 <= row["flow_cos"] <= 1 + 1e-9 and 0 <= row["ssim"] <= 1 + 1e-9 and 0 <= row["found"] <= 1
        assert (row["seconds"] is None) == (name in cb.REFERENCE_ROWS)
    truth = rows[("truth", 0)]
    assert truth["flow_cos"] == pytest.approx(1.0) and truth["ssim"] == pytest.approx(1.0)
    assert rows[("round_trip", 0)]["psnr"] < 100  # scored, not copied
    # The rig row is driven by the truth's own keypoints; the driving rows by MediaPipe on the
    # clip itself and on the other clip, each fitted to the person in the reference.
    rig = rows[("rig", 0)]
    assert rig["kp_control"] == rig["kp_truth"]
    assert rows[("mediapipe", 0)]["driving"] == "kick_00000" and rows[("other", 0)]["driving"] == "kick_00001"
    assert rows[("other", 1)]["driving"] == "kick_00000"
    assert rows[("prompt", 0)]["flow_cos"] != rig["flow_cos"]  # the pose changes the take
    text = report.read_text()
    assert "hand-written reading that must survive" in text and "| pose from the ground-truth rig |" in text
    assert "Paired with prompt only" in capsys.readouterr().out

    lines = (tmp_path / "work" / "results.jsonl").read_text().splitlines()
    assert len(lines) == len(cb.ROWS) * 2
    assert cb.main(args) == 0  # a second run scores nothing again
    assert (tmp_path / "work" / "results.jsonl").read_text().splitlines() == lines
    assert report.read_text().count("control-benchmark:start") == 1


def test_bad_options_are_refused_before_any_model_loads(tmp_path, capsys, monkeypatch):
    from flash_engine.models import loading

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(loading, "load_base", no_loading)
    with pytest.raises(SystemExit):
        cb.run(cb.smoke_config(references=1), tmp_path / "work", tmp_path / "cache")
    assert cb.main(["--smoke", "--controlnet", str(tmp_path / "missing"), "--work", str(tmp_path / "w")]) == 2
    assert "ControlNet" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="unknown action"):
        cb.run(cb.smoke_config(actions=("moonwalk",)), tmp_path / "work", tmp_path / "cache")


def test_the_driving_partner_does_not_change_with_the_number_of_references():
    assert [cb.driving_partner(i, 4) for i in range(4)] == [1, 0, 3, 2]
    assert [cb.driving_partner(i, 8) for i in range(4)] == [1, 0, 3, 2]
    assert [cb.driving_partner(i, 3) for i in range(3)] == [1, 0, 1]
    assert all(cb.driving_partner(i, n) != i for n in (2, 3, 5, 8) for i in range(n))
