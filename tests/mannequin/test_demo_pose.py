"""mannequin/demo_pose.py: the demo's poses are the reference's own clip doing another action,
and a file the card does not name as this command's is never removed."""

import json
import shutil

import numpy as np

from flash_engine.models.loading import MANNEQUIN_DIR
from flash_engine.pose.format import read_pose_file
from mannequin import demo_pose
from mannequin.camera import openpose_keypoints


def _model(tmp_path, pose=None):
    folder = tmp_path / "model"
    folder.mkdir()
    card = json.loads((MANNEQUIN_DIR / "mannequin.json").read_text())
    card["demo"].pop("pose", None)
    if pose is not None:
        card["demo"]["pose"] = pose
    (folder / "mannequin.json").write_text(json.dumps(card))
    return folder


def test_the_poses_are_the_demo_clips_spec_doing_the_action_and_a_rerun_replaces_its_own(tmp_path):
    folder = _model(tmp_path)
    assert demo_pose.main(["--model-dir", str(folder), "--action", "bow"]) == 0
    card = json.loads((folder / "mannequin.json").read_text())
    spec = demo_pose.demo_spec(card, "bow")
    assert spec.action == "bow" and card["demo"]["pose"]["action"] == "bow"
    written = read_pose_file(folder / demo_pose.POSE_FILE)
    assert np.allclose(written.body[..., :2], openpose_keypoints(spec)[..., :2], atol=1e-5)
    assert demo_pose.main(["--model-dir", str(folder), "--action", "kick"]) == 0  # its own file: replaced
    assert json.loads((folder / "mannequin.json").read_text())["demo"]["pose"]["action"] == "kick"


def test_a_pose_file_the_card_does_not_name_as_its_own_is_left_as_it_is(tmp_path, capsys):
    folder = _model(tmp_path)
    shutil.copy(MANNEQUIN_DIR / demo_pose.POSE_FILE, folder / demo_pose.POSE_FILE)
    before = (folder / demo_pose.POSE_FILE).read_bytes()
    card_before = (folder / "mannequin.json").read_text()
    assert demo_pose.main(["--model-dir", str(folder)]) == 2
    assert "left as it is" in capsys.readouterr().err
    assert (folder / demo_pose.POSE_FILE).read_bytes() == before
    assert (folder / "mannequin.json").read_text() == card_before
