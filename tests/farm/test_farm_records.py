"""The bpy-free side of farm runs: take records (written whole, read back as the same takes,
refused in one line when missing or not ours), a take folder read from disk only when it is
a finished take, and flash_batch's farm options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flash_blender import batch, take_records
from flash_blender.errors import PlanError
from flash_blender.take_planning import plan_take
from flash_blender.takes import Take


def a_take(root: Path, camera="Kamera Ü") -> Take:
    plan = plan_take(root, "Scène", camera, "soccer_shoot")
    return Take(plan=plan, scene="Scène", camera=camera, frame_start=12, in_project=False, output="PLANE",
                distance=10.0, outside="HOLD", action="soccer_shoot", action_name="Soccer shoot",
                base_model_only=True, seed=2**40, prompt="a kick.", reference_size=(64, 48), native_size=False,
                motion={"kind": "rig", "rig": "Hero"}, motion_files=(root / "pose.json",))


def test_a_record_gives_back_the_same_takes(tmp_path):
    takes = [a_take(tmp_path), a_take(tmp_path, "Cam A")]
    path = take_records.write_record(tmp_path / "job" / "shot-01.json", takes)
    assert take_records.read_record(path) == takes
    assert [p.name for p in path.parent.iterdir()] == ["shot-01.json"]  # no staging file left
    take_records.write_record(path, takes[:1])  # a re-queued shot replaces its own record
    assert take_records.read_record(path) == takes[:1]
    user_file = tmp_path / "notes.json"
    user_file.write_text('{"mine": true}')
    with pytest.raises(PlanError, match="is not a FLASH take record; it was left as it is"):
        take_records.write_record(user_file, takes)
    assert user_file.read_text() == '{"mine": true}'


@pytest.mark.parametrize("content, error", [
    (None, "no take record"),
    ("{not json", "cannot read the take record"),
    (json.dumps({"version": 99, "takes": []}), "is not a FLASH take record"),
    (json.dumps({"version": 1, "takes": [{"plan": {}}]}), "is not a FLASH take record"),
])
def test_a_missing_or_foreign_record_is_one_line(tmp_path, content, error):
    path = tmp_path / "shot-01.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(PlanError, match=error) as caught:
        take_records.read_record(path)
    assert "\n" not in str(caught.value)


def test_only_a_finished_take_folder_is_imported(tmp_path):
    take = a_take(tmp_path)
    with pytest.raises(PlanError, match="is not finished on disk"):
        take_records.take_on_disk(take)  # no folder
    take.folder.mkdir()
    (take.folder / "frame_0001.png").write_bytes(b"png")
    with pytest.raises(PlanError, match="is not finished on disk"):
        take_records.take_on_disk(take)  # frames but no engine manifest
    (take.folder / "flash.json").write_text(json.dumps({"fps": 12}))
    (take.folder / "frame_0002.png").write_bytes(b"png")
    (take.folder / "notes.png").write_bytes(b"png")
    result = take_records.take_on_disk(take)
    assert [f.name for f in result.frames] == ["frame_0001.png", "frame_0002.png"]
    assert result.fps == 12 and result.mp4 is None


def test_farm_options_of_flash_batch():
    options = batch.parse_args(["--marker", "F 01", "--marker", "F_40", "--out", "/mnt/p", "--out-must-exist",
                                "--record", "/mnt/p/r.json"])
    assert (options.mode, options.markers, options.out_must_exist, options.record) == \
        ("markers", ["F 01", "F_40"], True, "/mnt/p/r.json")
    options = batch.parse_args(["--import-takes", "a.json", "b.json", "--save", "/x/c.blend", "--save-numbered"])
    assert options.import_records == ["a.json", "b.json"] and options.save_numbered
    for bad in (["--import-takes", "a.json", "--camera", "A"], ["--out-must-exist"], ["--marker", "M", "--camera", "A"]):
        with pytest.raises(SystemExit) as stop:
            batch.parse_args(bad)
        assert stop.value.code == 2


def test_marker_shots_by_name(tmp_path):
    markers = [(1, "F_01", "Side"), (30, "F_01", "Top"), (9, "loose", None)]
    shots = batch.select_shots("markers", "S", active=None, cameras=["Side", "Top"], markers=markers,
                               marker_names=["F_01", "loose", "F_O1x"])
    assert [(s.camera, s.frame) for s in shots] == [("Side", 1), ("Top", 30), (None, None), (None, None)]
    assert not shots[0].error and not shots[1].error
    assert shots[2].error.startswith("timeline marker 'loose' of scene 'S' has no camera bound")
    assert shots[3].error.startswith("no timeline marker named 'F_O1x' in scene 'S'")
    assert "did you mean F_01?" in shots[-1].error


def test_check_out_exists_and_a_numbered_save(tmp_path):
    with pytest.raises(batch.BatchError, match="does not exist on this machine"):
        batch.check_out_exists(tmp_path / "share")
    batch.check_out_exists(tmp_path)
    blend = tmp_path / "shot.blend"
    blend.write_bytes(b"")
    (tmp_path / "copy.blend").write_bytes(b"")
    with pytest.raises(batch.BatchError, match="--save-numbered"):
        batch.save_target(str(blend), str(tmp_path / "copy.blend"), False)
    assert batch.save_target(str(blend), str(tmp_path / "copy.blend"), False, numbered=True) == \
        (tmp_path / "copy_2.blend").resolve()
