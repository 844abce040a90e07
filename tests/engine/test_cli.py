"""The command line as a user runs it: outputs, metadata and every bad input."""

import json

import pytest
from PIL import Image

from flash_engine.cli import main
from tests.conftest import draw_scene, run_engine

FAST = ["--model", "tiny", "--frames", "3", "--steps", "2", "--seed", "3"]


def test_tiny_run_writes_frames_and_complete_metadata(tmp_path, reference_png):
    out = tmp_path / "clip"
    proc = run_engine("animate", "--image", reference_png, "--action", "soccer shoot", "--model", "tiny",
                      "--frames", "4", "--steps", "2", "--width", "64", "--height", "40", "--seed", "11",
                      "--out", out, "--mp4")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # results go to files, progress to stderr
    assert "denoise 2/2" in proc.stderr
    pngs = sorted(out.glob("frame_*.png"))
    assert [p.name for p in pngs] == [f"frame_{i:04d}.png" for i in range(1, 5)]
    for png in pngs:
        with Image.open(png) as image:
            assert image.size == (64, 40)
    assert (out / "flash.mp4").stat().st_size > 0
    meta = json.loads((out / "flash.json").read_text())
    assert meta["settings"] == {
        "prompt": "a person is shooting a soccer ball.", "negative_prompt": "", "num_frames": 4, "steps": 2,
        "guidance": 7.5, "seed": 11, "width": 64, "height": 40, "adain": True,
    }
    assert meta["preset"] == "soccer_shoot"
    assert meta["action"]["base_model_only"] is True and meta["action"]["weights"] is None
    assert meta["model"]["source"] == "tiny" and meta["model"]["identity"].startswith("tiny-")
    assert meta["frames"] == [p.name for p in pngs] and meta["mp4"] == "flash.mp4"
    assert set(meta["timings_s"]) >= {"encode", "denoise", "decode", "write", "total"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_default_size_follows_the_image_aspect(tmp_path):
    image = tmp_path / "wide.png"
    draw_scene(160, 90).save(image)
    out = tmp_path / "clip"
    assert main(["animate", "--image", str(image), "--prompt", "a person is waving.", *FAST,
                 "--long-side", "64", "--out", str(out)]) == 0
    with Image.open(out / "frame_0001.png") as frame:
        assert frame.size == (64, 40)  # 16:9 → 64 × 36 → rounded to a multiple of 8


def expect_error(capsys, args, *words):
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert err.startswith("error: ") and "\n" not in err, err
    for word in words:
        assert word in err, err
    return err


def test_missing_image(tmp_path, capsys):
    expect_error(capsys, ["animate", "--image", str(tmp_path / "nope.png"), "--prompt", "x", *FAST,
                          "--out", str(tmp_path / "o")], "not found", "--image")
    assert not (tmp_path / "o").exists()


def test_folder_as_image(tmp_path, capsys):
    expect_error(capsys, ["animate", "--image", str(tmp_path), "--prompt", "x", *FAST,
                          "--out", str(tmp_path / "o")], "not a file")


def test_text_file_named_png(tmp_path, capsys):
    fake = tmp_path / "fake.png"
    fake.write_text("this is not an image")
    expect_error(capsys, ["animate", "--image", str(fake), "--prompt", "x", *FAST, "--out", str(tmp_path / "o")],
                 "not a readable image", "PNG")
    assert not (tmp_path / "o").exists()


def test_truncated_image(tmp_path, capsys, reference_png):
    broken = tmp_path / "broken.png"
    broken.write_bytes(reference_png.read_bytes()[:200])  # a real PNG header, cut off mid-data
    expect_error(capsys, ["animate", "--image", str(broken), "--prompt", "x", *FAST, "--out", str(tmp_path / "o")],
                 "not a readable image")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flag, value", [("--width", "100"), ("--height", "36"), ("--long-side", "500")])
def test_size_not_multiple_of_eight(tmp_path, capsys, reference_png, flag, value):
    expect_error(capsys, ["animate", "--image", str(reference_png), "--prompt", "x", *FAST, flag, value,
                          "--out", str(tmp_path / "o")], "multiple of 8", "use ")


def test_too_few_frames(tmp_path, capsys, reference_png):
    expect_error(capsys, ["animate", "--image", str(reference_png), "--prompt", "x", "--model", "tiny",
                          "--frames", "1", "--out", str(tmp_path / "o")], "between 2 and 64", "frames from 2")
    assert not (tmp_path / "o").exists()


def test_unknown_preset(tmp_path, capsys, reference_png):
    expect_error(capsys, ["animate", "--image", str(reference_png), "--action", "socer shoot", *FAST,
                          "--out", str(tmp_path / "o")], "soccer_shoot", "info")


def test_missing_weights_folder(tmp_path, capsys, reference_png):
    expect_error(capsys, ["animate", "--image", str(reference_png), "--prompt", "x", "--model",
                          str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")], "not found", "weights fetch")


def test_incomplete_weights_folder(tmp_path, capsys, reference_png):
    folder = tmp_path / "weights"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "config.json").write_text("{}")
    (folder / "vae").mkdir()
    (folder / "vae" / "diffusion_pytorch_model.bin").write_bytes(b"\x80pickle")
    err = expect_error(capsys, ["animate", "--image", str(reference_png), "--prompt", "x", "--model", str(folder),
                                "--out", str(tmp_path / "o")], "incomplete weights folder", "no text_encoder/",
                       "pickle")
    assert "motion_adapter" in err
    assert not (tmp_path / "o").exists()


def test_missing_action_weights(tmp_path, capsys, reference_png):
    expect_error(capsys, ["animate", "--image", str(reference_png), "--prompt", "x", *FAST, "--weights",
                          str(tmp_path / "no_action"), "--out", str(tmp_path / "o")], "action weights folder")


def test_existing_output_is_refused_then_replaced_with_overwrite(tmp_path, capsys, reference_png):
    out = tmp_path / "clip"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ["animate", "--image", str(reference_png), "--prompt", "a person is waving.", *FAST,
            "--long-side", "64", "--out", str(out)]
    expect_error(capsys, args, "already exists", "--overwrite")
    assert (out / "keep.txt").read_text() == "mine"
    expect_error(capsys, args + ["--overwrite"], "not written by the engine")  # not a take: never replaced
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    out.rmdir()
    assert main(args) == 0
    assert main(args + ["--overwrite"]) == 0
    assert (out / "flash.json").exists()


def test_no_prompt_and_no_action(tmp_path, capsys, reference_png):
    expect_error(capsys, ["animate", "--image", str(reference_png), *FAST, "--out", str(tmp_path / "o")],
                 "--action", "--prompt")


def test_info_json_lists_presets_and_device():
    proc = run_engine("info", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["device"] == "cpu" and report["torch"].startswith("2.13")
    assert len(report["presets"]) == 16
    assert {"found", "folder", "problems"} <= set(report["weights"])


def info_sections(text: str) -> dict[str, list[str]]:
    """``info``'s text: each header line (no indent) → its indented lines."""
    sections, current = {}, None
    for line in text.splitlines():
        if line.startswith("  ") and current is not None:
            sections[current].append(line.strip())
        else:
            current = line
            sections[current] = []
    return sections


def section(sections: dict, start: str) -> dict[str, str]:
    """The lines of the one section whose header starts with ``start``, by their first word."""
    (lines,) = [lines for header, lines in sections.items() if header.startswith(start)]
    return {line.split()[0]: line for line in lines}


def test_info_on_mannequin_offers_the_sentences_it_learned_and_marks_the_presets_it_did_not(capsys):
    from flash_engine.models.loading import MANNEQUIN_CARD, MANNEQUIN_DIR

    card = json.loads((MANNEQUIN_DIR / MANNEQUIN_CARD).read_text(encoding="utf-8"))
    assert main(["info", "--model", "mannequin"]) == 0
    sections = info_sections(capsys.readouterr().out)
    learned = section(sections, "actions mannequin learned")
    assert list(learned) == card["train_actions"]
    assert learned["arm_wave"].endswith("a person is waving an arm.")  # the preset says "doing an arm wave"
    for action in card["train_actions"]:
        assert learned[action].endswith(card["prompts"][action])
    held_out = section(sections, "actions held out of mannequin's training")
    assert list(held_out) == card["held_out_actions"]
    assert "not learned by mannequin: train it first" in held_out["kick"]
    assert held_out["kick"].endswith(card["prompts"]["kick"])
    presets = section(sections, "presets")
    assert len(presets) == 16
    assert "[not learned by mannequin: train it first]" in presets["soccer_shoot"]  # HAA500 means nothing to it
    assert "[not learned by mannequin: train it first]" in presets["arm_wave"]  # not the sentence it learned

    assert main(["info", "--model", "mannequin", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == "mannequin"
    assert {"id": "arm_wave", "prompt": "a person is waving an arm."} in report["model_actions"]["learned"]
    assert [a["id"] for a in report["model_actions"]["held_out"]] == card["held_out_actions"]
    assert {p["id"]: p["learned"] for p in report["presets"]}["soccer_shoot"] is False


def test_info_on_a_model_without_a_card_lists_the_presets_as_before(capsys):
    assert main(["info", "--model", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "learned" not in out
    presets = section(info_sections(out), "presets")
    assert len(presets) == 16 and "[base model only]" in presets["soccer_shoot"]
    assert main(["info", "--model", "tiny", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model_actions"] is None and {p["learned"] for p in report["presets"]} == {None}


def test_info_reads_a_folders_own_model_card(tmp_path, capsys):
    card = {"name": "toy", "train_actions": ["press"], "held_out_actions": [],
            "prompts": {"press": "a person is doing push-ups."}}  # push_up's own sentence
    (tmp_path / "mannequin.json").write_text(json.dumps(card))
    assert main(["info", "--model", str(tmp_path)]) == 0
    sections = info_sections(capsys.readouterr().out)
    assert section(sections, "actions toy learned")["press"].endswith("a person is doing push-ups.")
    presets = section(sections, "presets")
    assert "[learned by toy]" in presets["push_up"] and "[not learned by toy: train it first]" in presets["backflip"]


@pytest.mark.slow
def test_animate_action_on_mannequin_uses_the_sentence_it_learned_not_the_presets(tmp_path):
    from flash_engine.models.loading import MANNEQUIN_CARD, MANNEQUIN_DIR
    from flash_engine.presets import find_preset

    card = json.loads((MANNEQUIN_DIR / MANNEQUIN_CARD).read_text(encoding="utf-8"))
    assert find_preset("arm_wave").prompt != card["prompts"]["arm_wave"]  # the reason for the rule
    image = MANNEQUIN_DIR / card["demo"]["image"]
    common = ["--image", image, "--model", "mannequin", "--frames", "2", "--steps", "1", "--seed", "1"]
    own = run_engine("animate", "--action", "arm_wave", *common, "--out", tmp_path / "own")
    assert own.returncode == 0, own.stderr
    manifest = json.loads((tmp_path / "own" / "flash.json").read_text())
    assert manifest["settings"]["prompt"] == card["prompts"]["arm_wave"] and manifest["preset"] is None
    assert manifest["action"]["model_action"] == "arm_wave"
    preset_only = run_engine("animate", "--action", "soccer_shoot", *common, "--out", tmp_path / "preset")
    assert preset_only.returncode == 0, preset_only.stderr
    manifest = json.loads((tmp_path / "preset" / "flash.json").read_text())
    assert manifest["settings"]["prompt"] == find_preset("soccer_shoot").prompt
    assert manifest["preset"] == "soccer_shoot" and manifest["action"]["model_action"] is None
    told = run_engine("animate", "--action", "arm_wave", "--prompt", "a person is clapping.", *common,
                      "--out", tmp_path / "told")
    assert json.loads((tmp_path / "told" / "flash.json").read_text())["settings"]["prompt"] == "a person is clapping."
