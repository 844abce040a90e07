"""`flash_engine pose`: a driving clip's poses written as a .pose.json, and its bad inputs."""

import numpy as np
import pytest
from PIL import Image

from flash_engine.cli import main
from flash_engine.pose.format import read_pose_file
from tests.conftest import run_engine


@pytest.fixture(scope="module")
def jump_folder(tmp_path_factory):
    pytest.importorskip("bpy")
    pytest.importorskip("mediapipe")
    import mannequin

    frames = mannequin.render_clip(mannequin.sample_spec("jump", 0, split="test"))
    folder = tmp_path_factory.mktemp("driving") / "jump"
    folder.mkdir()
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{index:03d}.png")
    return folder, frames


def test_pose_writes_poses_fitted_to_the_shot(jump_folder, tmp_path):
    folder, frames = jump_folder
    shot = tmp_path / "shot.png"
    Image.fromarray(frames[0]).resize((192, 192), Image.BICUBIC).save(shot)
    out = tmp_path / "takes" / "t1.pose.json"
    proc = run_engine("pose", "--driving", folder, "--image", shot, "--out", out, "--frames", "6", "--start", "2")
    assert proc.returncode == 0, proc.stderr
    assert "person found in 6 of 6" in proc.stderr and "retargeted" in proc.stderr
    assert f"wrote 6 poses for a 192x192 image to {out}" in proc.stderr
    assert "W0000" not in proc.stderr and "XNNPACK" not in proc.stderr  # MediaPipe's start-up chatter
    seq = read_pose_file(out)
    assert seq.frames == 6 and (seq.width, seq.height) == (192, 192) and seq.fps is None
    assert (seq.body[:, [1, 2, 5, 8, 11], 2] > 0.5).all()
    assert sorted(p.name for p in out.parent.iterdir()) == ["t1.pose.json"]  # no staging file left


def test_pose_without_a_reference_keeps_the_clip_and_its_size(jump_folder, tmp_path, capsys):
    out = tmp_path / "raw.pose.json"
    assert main(["pose", "--driving", str(jump_folder[0]), "--out", str(out), "--frames", "4", "--fps", "8"]) == 0
    assert "not fitted to a person" in capsys.readouterr().err
    seq = read_pose_file(out)
    assert (seq.width, seq.height, seq.frames, seq.fps) == (64, 64, 4, 8.0)


def _error(capsys, *argv):
    assert main(["pose", *map(str, argv)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_an_existing_out_file_is_refused_and_left_alone(tmp_path, capsys):
    out = tmp_path / "mine.pose.json"
    out.write_text("my edits")
    err = _error(capsys, "--driving", tmp_path / "missing.mp4", "--out", out)  # refused before the clip is read
    assert "already exists" in err and "another --out" in err
    assert out.read_text() == "my edits"


@pytest.mark.parametrize("extra, needle", [
    (["--frames", "1"], "'--frames' must be between 2 and 64"),
    (["--start", "-1"], "'--start' must be"),
    (["--fps", "0"], "'--fps' must be"),
    ([], "driving clip not found"),
    (["--image", "nothing.png"], "reference image not found"),
    (["--reference-pose", "nothing.pose.json"], "pose file not found"),
])
def test_bad_inputs_are_one_line_errors(tmp_path, capsys, monkeypatch, extra, needle):
    monkeypatch.chdir(tmp_path)
    err = _error(capsys, "--driving", "missing.mp4", "--out", "t.pose.json", *extra)
    assert needle in err
    assert not (tmp_path / "t.pose.json").exists()


def test_out_must_be_a_json_file_name(tmp_path, capsys):
    assert "e.g. --out take.pose.json" in _error(capsys, "--driving", "x.mp4", "--out", tmp_path / "take")
