"""Preset files: the 16 shipped HAA500 actions, strict validation, and lookup."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flash_engine.errors import FlashError
from flash_engine.presets import (
    PRESETS_DIR,
    Preset,
    find_preset,
    list_presets,
    load_preset,
)
from tests.conftest import REPO

PAPER_ACTIONS = {
    "push_up", "arm_wave", "shoot_dance", "running_in_place", "sprint_run", "backflip",
    "soccer_shoot", "drinking_from_a_cup", "balance_beam_jump", "balance_beam_spin",
    "canoeing_sprint", "chopping_wood", "ice_bucket_challenge", "basketball_hook_shot",
    "hugging_human", "face_slapping",
}

GOOD = 'name = "My action"\nprompt = "a person is waving."\n'


def write(folder: Path, filename: str, text: str) -> Path:
    path = folder / filename
    path.write_text(text, encoding="utf-8")
    return path


def bad(tmp_path: Path, text: str, filename: str = "broken.toml") -> FlashError:
    path = write(tmp_path, filename, text)
    with pytest.raises(FlashError) as info:
        load_preset(path)
    err = info.value
    assert err.code == "bad_preset"
    msg = str(err)
    assert "\n" not in msg
    assert filename in msg, msg
    return err


# ---------------------------------------------------------------- shipped presets

def test_presets_dir_is_repo_folder():
    assert PRESETS_DIR == REPO / "presets"
    assert PRESETS_DIR.is_dir()


def test_all_sixteen_shipped_presets_load():
    presets = list_presets()
    ids = [p.id for p in presets]
    assert ids == sorted(ids)
    assert len(ids) == len(set(ids)) == 16
    assert set(ids) == PAPER_ACTIONS
    names = [p.name.lower() for p in presets]
    assert len(set(names)) == 16
    for p in presets:
        assert isinstance(p, Preset)
        assert re.fullmatch(r"[a-z0-9]+(_[a-z0-9]+)*", p.id)
        assert p.path == PRESETS_DIR / f"{p.id}.toml"
        assert (p.frames, p.steps, p.guidance) == (16, 25, 7.5)
        assert p.weights is None and not p.has_weights
        assert p.name and p.name[0].isupper()


def test_shipped_prompts_in_paper_style():
    for p in list_presets():
        assert p.prompt == p.prompt.lower(), p.id
        assert p.prompt.endswith(".") and not p.prompt.endswith(".."), p.id
        assert re.match(r"^(a person is|two people are) [a-z]", p.prompt), p.id
        assert "  " not in p.prompt and p.prompt == p.prompt.strip(), p.id


def test_shipped_files_keep_weights_line_as_comment():
    for path in PRESETS_DIR.glob("*.toml"):
        text = path.read_text(encoding="utf-8")
        assert re.search(r"^# weights = ", text, re.M), path.name


# ---------------------------------------------------------------- load_preset

def test_good_file_and_defaults(tmp_path):
    p = load_preset(write(tmp_path, "my_action.toml", GOOD))
    assert p.id == "my_action"
    assert p.name == "My action"
    assert p.prompt == "a person is waving."
    assert (p.frames, p.steps, p.guidance) == (16, 25, 7.5)
    assert isinstance(p.guidance, float)
    assert p.weights is None and not p.has_weights
    assert p.path == (tmp_path / "my_action.toml").resolve()


def test_explicit_values_and_int_guidance(tmp_path):
    p = load_preset(write(tmp_path, "x.toml", GOOD + "frames = 2\nsteps = 1\nguidance = 30\n"))
    assert (p.frames, p.steps, p.guidance) == (2, 1, 30.0)
    assert isinstance(p.guidance, float)
    p = load_preset(write(tmp_path, "y.toml", GOOD + "guidance = 1.0\n"))
    assert p.guidance == 1.0


def test_preset_is_frozen(tmp_path):
    p = load_preset(write(tmp_path, "x.toml", GOOD))
    with pytest.raises(AttributeError):
        p.frames = 8  # type: ignore[misc]


def test_missing_file(tmp_path):
    with pytest.raises(FlashError) as info:
        load_preset(tmp_path / "nope.toml")
    assert "nope.toml" in str(info.value)
    assert "not found" in str(info.value)
    assert info.value.code == "bad_preset"


def test_unreadable_folder_instead_of_file(tmp_path):
    folder = tmp_path / "folder.toml"
    folder.mkdir()
    with pytest.raises(FlashError) as info:
        load_preset(folder)
    assert "folder.toml" in str(info.value)
    assert "cannot read" in str(info.value)


def test_not_utf8(tmp_path):
    path = tmp_path / "latin.toml"
    path.write_bytes(b'name = "caf\xe9"\nprompt = "a person is waving."\n')
    with pytest.raises(FlashError) as info:
        load_preset(path)
    assert "latin.toml" in str(info.value) and "UTF-8" in str(info.value)


def test_toml_syntax_error_names_line(tmp_path):
    err = bad(tmp_path, 'name = "A"\nprompt = "a person is waving."\nframes = = 3\n')
    assert "TOML syntax error" in str(err)
    assert "line 3" in str(err)


def test_unknown_key_lists_allowed(tmp_path):
    err = bad(tmp_path, GOOD + "fps = 8\n")
    msg = str(err)
    assert "unknown key" in msg and "fps" in msg
    for key in ("name", "prompt", "frames", "steps", "guidance", "weights"):
        assert key in err.hint


@pytest.mark.parametrize("missing", ["name", "prompt"])
def test_missing_required_key(tmp_path, missing):
    lines = {"name": 'name = "A"\n', "prompt": 'prompt = "a person is waving."\n'}
    del lines[missing]
    err = bad(tmp_path, "".join(lines.values()))
    assert "missing required key" in str(err)
    assert missing in err.message


def test_missing_both_required_keys(tmp_path):
    err = bad(tmp_path, "frames = 16\n")
    assert "name" in err.message and "prompt" in err.message


@pytest.mark.parametrize(
    "line, field, got",
    [
        ('frames = "16"', "frames", "(str)"),
        ("frames = 16.0", "frames", "(float)"),
        ("frames = true", "frames", "(bool)"),
        ("steps = false", "steps", "(bool)"),
        ("steps = 2.5", "steps", "(float)"),
        ('guidance = "7.5"', "guidance", "(str)"),
        ("guidance = true", "guidance", "(bool)"),
        ("name = 3", "name", "(int)"),
        ("prompt = [\"a\"]", "prompt", "(list)"),
        ("weights = 5", "weights", "5"),
    ],
)
def test_wrong_types(tmp_path, line, field, got):
    base = {"name": 'name = "A"', "prompt": 'prompt = "a person is waving."'}
    base[field] = line
    err = bad(tmp_path, "\n".join(base.values()) + "\n")
    assert f"'{field}' must be a" in err.message
    assert "at least" not in err.message and "between" not in err.message
    assert got in err.message  # names the wrong value's type
    assert field in err.hint  # the fix shows an example line


@pytest.mark.parametrize(
    "line, field",
    [
        ("frames = 1", "frames"),
        ("frames = -4", "frames"),
        ("steps = 0", "steps"),
        ("guidance = -0.5", "guidance"),
        ("guidance = 30.5", "guidance"),
        ("guidance = nan", "guidance"),
        ("guidance = inf", "guidance"),
    ],
)
def test_out_of_range(tmp_path, line, field):
    err = bad(tmp_path, GOOD + line + "\n")
    assert f"'{field}'" in err.message
    assert "at least" in err.message or "between" in err.message


@pytest.mark.parametrize("field", ["name", "prompt"])
def test_empty_text(tmp_path, field):
    base = {"name": 'name = "A"', "prompt": 'prompt = "a person is waving."'}
    base[field] = f'{field} = "   "'
    err = bad(tmp_path, "\n".join(base.values()) + "\n")
    assert f"'{field}' is empty" in err.message


def test_text_is_stripped(tmp_path):
    p = load_preset(write(tmp_path, "x.toml", 'name = "  A  "\nprompt = " a person is waving. "\n'))
    assert p.name == "A" and p.prompt == "a person is waving."


def test_missing_weights_path(tmp_path):
    err = bad(tmp_path, GOOD + 'weights = "trained/none_here"\n')
    msg = str(err)
    assert str((tmp_path / "trained" / "none_here").resolve()) in msg
    assert "does not exist" in msg
    assert "train" in err.hint and "remove" in err.hint


def test_relative_weights_resolved_against_preset_folder(tmp_path, monkeypatch):
    presets = tmp_path / "mine"
    weights = tmp_path / "mine" / "trained" / "wave"
    weights.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # must not resolve against the working directory
    p = load_preset(write(presets, "wave.toml", GOOD + 'weights = "trained/wave"\n'))
    assert p.has_weights
    assert p.weights == weights.resolve()
    assert p.weights.is_absolute()

    q = load_preset(write(presets, "up.toml", GOOD + 'weights = "../mine/trained/wave"\n'))
    assert q.weights == weights.resolve()


def test_absolute_weights(tmp_path):
    weights = tmp_path / "abs_weights"
    weights.mkdir()
    p = load_preset(write(tmp_path, "x.toml", GOOD + f'weights = "{weights.as_posix()}"\n'))
    assert p.weights == weights.resolve()


def test_to_dict(tmp_path):
    d = load_preset(write(tmp_path, "x.toml", GOOD)).to_dict()
    assert d["id"] == "x" and d["weights"] is None and d["frames"] == 16
    assert d["path"] == str((tmp_path / "x.toml").resolve())


# ---------------------------------------------------------------- list_presets

def test_list_presets_sorted_and_raises_on_bad_file(tmp_path):
    write(tmp_path, "b.toml", GOOD)
    write(tmp_path, "a.toml", 'name = "Other"\nprompt = "a person is jumping."\n')
    write(tmp_path, "notes.txt", "ignored")
    assert [p.id for p in list_presets(tmp_path)] == ["a", "b"]
    write(tmp_path, "c.toml", GOOD + "bogus = 1\n")
    with pytest.raises(FlashError) as info:
        list_presets(tmp_path)
    assert "c.toml" in str(info.value) and "bogus" in str(info.value)


def test_list_presets_missing_folder(tmp_path):
    with pytest.raises(FlashError) as info:
        list_presets(tmp_path / "absent")
    assert "absent" in str(info.value)


# ---------------------------------------------------------------- find_preset

@pytest.mark.parametrize(
    "key",
    ["soccer_shoot", "SOCCER_SHOOT", "Soccer shoot", "soccer shoot", "soccer-shoot", " Soccer  Shoot "],
)
def test_find_soccer_shoot(key):
    assert find_preset(key).id == "soccer_shoot"


@pytest.mark.parametrize("key", ["push_up", "Push-up", "push up", "PUSH-UP"])
def test_find_push_up(key):
    assert find_preset(key).id == "push_up"


def test_find_every_shipped_preset_by_id_and_name():
    for p in list_presets():
        assert find_preset(p.id) == p
        assert find_preset(p.name) == p
        assert find_preset(p.name.upper()) == p


def test_find_by_display_name_differing_from_id(tmp_path):
    write(tmp_path, "wave_custom.toml", 'name = "Big Friendly Wave"\nprompt = "a person is waving."\n')
    assert find_preset("big friendly wave", tmp_path).id == "wave_custom"
    assert find_preset("Big-Friendly-Wave", tmp_path).id == "wave_custom"
    assert find_preset("WAVE CUSTOM", tmp_path).id == "wave_custom"


def test_find_unknown_suggests_nearest():
    with pytest.raises(FlashError) as info:
        find_preset("socer shot")
    err = info.value
    assert err.code == "unknown_preset"
    assert "socer shot" in err.message
    assert "soccer_shoot" in err.hint
    assert "python -m flash_engine info" in err.hint
    assert "\n" not in str(err)


@pytest.mark.parametrize("key, expected", [("hug", "hugging_human"), ("bucket", "ice_bucket_challenge")])
def test_find_unknown_suggests_substring_match(key, expected):
    with pytest.raises(FlashError) as info:
        find_preset(key)
    assert expected in info.value.hint


def test_find_unknown_without_near_match():
    with pytest.raises(FlashError) as info:
        find_preset("zzzzzzzzqqq")
    assert info.value.code == "unknown_preset"
    assert "did you mean" not in info.value.hint
    assert "python -m flash_engine info" in info.value.hint


def test_find_empty_key_is_unknown():
    with pytest.raises(FlashError) as info:
        find_preset("   ")
    assert info.value.code == "unknown_preset"


def test_find_ambiguous_names(tmp_path):
    write(tmp_path, "one.toml", 'name = "Same"\nprompt = "a person is waving."\n')
    write(tmp_path, "two.toml", 'name = "same"\nprompt = "a person is waving."\n')
    with pytest.raises(FlashError) as info:
        find_preset("Same", tmp_path)
    assert "one" in str(info.value) and "two" in str(info.value)


def test_find_by_path(tmp_path):
    path = write(tmp_path, "my_own.toml", 'name = "Own"\nprompt = "a person is dancing."\n')
    p = find_preset(str(path))
    assert p.id == "my_own" and p.prompt == "a person is dancing."
    assert find_preset(path) == p  # a Path object works too


def test_find_by_relative_path(tmp_path, monkeypatch):
    write(tmp_path, "rel.toml", GOOD)
    monkeypatch.chdir(tmp_path)
    assert find_preset("rel.toml").id == "rel"


def test_find_by_path_validates(tmp_path):
    path = write(tmp_path, "bad_own.toml", GOOD + "frames = 1\n")
    with pytest.raises(FlashError) as info:
        find_preset(str(path))
    assert info.value.code == "bad_preset" and "bad_own.toml" in str(info.value)
    with pytest.raises(FlashError) as info:
        find_preset(str(tmp_path / "missing.toml"))
    assert "missing.toml" in str(info.value)
