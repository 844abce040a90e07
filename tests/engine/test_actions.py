"""Action artifacts on top of a base: loaded, applied, removed, refused on the wrong base."""

import numpy as np
import pytest
import torch

from flash_engine.actions import ActionSlot, read_action, write_action
from flash_engine.errors import FlashError
from flash_engine.pipeline import AnimationSettings
from tests.conftest import draw_scene

SETTINGS = dict(prompt="a person is waving.", num_frames=3, steps=2, width=64, height=48, seed=9)


def trained_like_state(unet):
    """Motion-module and spatial K/V tensors, perturbed as a training run would leave them."""
    generator = torch.Generator().manual_seed(0)
    return {name: param.detach() + 0.5 * torch.randn(param.shape, generator=generator)
            for name, param in unet.named_parameters()
            if "motion_modules" in name or (".attentions." in name and ("attn1.to_k" in name or "attn1.to_v" in name))}


def test_action_changes_the_clip_and_reset_restores_the_base(tiny_pipeline, tmp_path):
    unet = tiny_pipeline.base.unet
    state = trained_like_state(unet)
    folder = write_action(tmp_path / "wave", name="wave", prompt="a person is waving.",
                          base_model=tiny_pipeline.base.identity, unet_state=state,
                          meta={"steps_done": 10, "clips": ["a.mp4"]})
    action = read_action(folder)
    assert action.meta["steps_done"] == 10 and action.meta["clips"] == ["a.mp4"]
    image = draw_scene()
    before = tiny_pipeline(image, AnimationSettings(**SETTINGS)).frames
    slot = ActionSlot(tiny_pipeline)
    slot.apply(action)
    with_action = tiny_pipeline(image, AnimationSettings(**SETTINGS)).frames
    slot.reset()
    after = tiny_pipeline(image, AnimationSettings(**SETTINGS)).frames
    assert not np.array_equal(before, with_action)
    assert np.array_equal(before, after)


def test_only_trained_tensors_are_stored(tiny_pipeline, tmp_path):
    from safetensors.torch import load_file

    state = trained_like_state(tiny_pipeline.base.unet)
    folder = write_action(tmp_path / "a", name="a", prompt="p", base_model="x", unet_state=state)
    stored = load_file(folder / "unet.safetensors")
    assert set(stored) == set(state)
    assert sum(v.numel() for v in stored.values()) < sum(p.numel() for p in tiny_pipeline.base.unet.parameters())


def test_decoder_layers_are_applied_and_restored(tiny_pipeline, tmp_path):
    decoder = tiny_pipeline.decoder
    original = {k: v.clone() for k, v in decoder.enhancement_state_dict().items()}
    changed = {k: v + 0.1 for k, v in original.items()}
    folder = write_action(tmp_path / "d", name="d", prompt="p", base_model=tiny_pipeline.base.identity,
                          unet_state={}, decoder_state=changed)
    slot = ActionSlot(tiny_pipeline)
    slot.apply(read_action(folder))
    assert all(torch.equal(decoder.enhancement_state_dict()[k], changed[k]) for k in changed)
    slot.reset()
    assert all(torch.equal(decoder.enhancement_state_dict()[k], original[k]) for k in original)


def test_wrong_base_is_refused(tiny_pipeline, tmp_path):
    folder = write_action(tmp_path / "x", name="kick", prompt="p", base_model="some-other-base",
                          unet_state=trained_like_state(tiny_pipeline.base.unet))
    with pytest.raises(FlashError) as err:
        ActionSlot(tiny_pipeline).apply(read_action(folder))
    assert err.value.code == "base_mismatch" and "some-other-base" in str(err.value)


@pytest.mark.parametrize("broken", ["no_manifest", "no_unet", "bad_toml", "no_base"])
def test_broken_action_folders(tmp_path, broken):
    folder = write_action(tmp_path / "a", name="a", prompt="p", base_model="b",
                          unet_state={"w": torch.zeros(2)})
    if broken == "no_manifest":
        (folder / "action.toml").unlink()
    elif broken == "no_unet":
        (folder / "unet.safetensors").unlink()
    elif broken == "bad_toml":
        (folder / "action.toml").write_text("name = [unclosed")
    else:
        (folder / "action.toml").write_text('name = "a"\nprompt = "p"\n')
    with pytest.raises(FlashError) as err:
        read_action(folder)
    assert err.value.code == "weights_incomplete"


def test_cli_uses_action_weights_and_says_so(tiny_pipeline, tmp_path, reference_png):
    import json

    from flash_engine.cli import main

    folder = write_action(tmp_path / "wave", name="wave", prompt="a person is waving both arms.",
                          base_model=tiny_pipeline.base.identity,
                          unet_state=trained_like_state(tiny_pipeline.base.unet))
    out = tmp_path / "clip"
    assert main(["animate", "--image", str(reference_png), "--weights", str(folder), "--model", "tiny",
                 "--frames", "3", "--steps", "2", "--long-side", "64", "--out", str(out)]) == 0
    meta = json.loads((out / "flash.json").read_text())
    assert meta["action"] == {"name": "wave", "weights": str(folder.resolve()), "base_model_only": False,
                              "model_action": None}
    assert meta["settings"]["prompt"] == "a person is waving both arms."


def _truncated(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 5])


def _pickled(path):
    torch.save({"w": torch.zeros(4)}, path)  # a torch pickle under the safetensors name


def _hundred_bytes(path):
    path.write_bytes(bytes(range(100)))


def _header_not_json(path):
    header = b"{not json at all}"
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(16))


def _offsets_beyond_the_file(path):
    import json

    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 4096]}}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(16))


@pytest.mark.parametrize("file", ["unet.safetensors", "decoder.safetensors"])
@pytest.mark.parametrize("damage", [_truncated, _pickled, _hundred_bytes, _header_not_json,
                                    _offsets_beyond_the_file], ids=lambda f: f.__name__.strip("_"))
def test_damaged_weight_files_are_refused_when_the_action_is_read(tmp_path, file, damage):
    folder = write_action(tmp_path / "a", name="a", prompt="p", base_model="b",
                          unet_state={"w": torch.zeros(64)}, decoder_state={"d": torch.ones(64)})
    read_action(folder)  # whole, it reads
    damage(folder / file)
    with pytest.raises(FlashError) as err:
        read_action(folder)
    message = str(err.value)
    assert err.value.code == "weights_incomplete" and "\n" not in message
    assert file in message and "re-run the training" in message


def test_damaged_action_fails_before_any_model_loads(tmp_path, reference_png, capsys, monkeypatch):
    from flash_engine.cli import main
    from flash_engine.models import loading

    def no_model(*_args, **_kwargs):
        raise AssertionError("a model was loaded for a damaged action")

    monkeypatch.setattr(loading, "load_base", no_model)
    folder = write_action(tmp_path / "a", name="a", prompt="p", base_model="b", unet_state={"w": torch.zeros(64)})
    _pickled(folder / "unet.safetensors")
    code = main(["animate", "--image", str(reference_png), "--weights", str(folder), "--model", "tiny",
                 "--frames", "3", "--steps", "2", "--long-side", "64", "--out", str(tmp_path / "clip")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "unet.safetensors" in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "clip").exists()


TOML_HOSTILE = "".join(map(chr, range(0x20))) + "\x7f" + '\\ " \' """ \\u0041 #x [t] é ß 漢字 🎬 \u2028 \ufeff'


def test_toml_strings_round_trip_every_control_character():
    import tomllib

    from flash_engine.actions import dump_toml

    data = {"name": TOML_HOSTILE, "chars": [chr(c) for c in (*range(0x20), 0x7f)], "plain": "wave",
            "steps": 3, "loss": 0.25, "ok": True, "table": {"prompt": TOML_HOSTILE, "key with space": "x"}}
    assert tomllib.loads(dump_toml(data)) == data


def test_action_named_with_a_control_character_loads(tmp_path):
    folder = write_action(tmp_path / "a", name="bad\rname", prompt="a person\tis\x1bwaving.", base_model="b",
                          unet_state={"w": torch.zeros(2)}, meta={"clips": ["c\x00lip.mp4"]})
    action = read_action(folder)
    assert (action.name, action.prompt, action.meta["clips"]) == ("bad\rname", "a person\tis\x1bwaving.",
                                                                  ["c\x00lip.mp4"])


def test_damage_after_the_action_was_read_is_still_a_one_line_error(tiny_pipeline, tmp_path):
    folder = write_action(tmp_path / "a", name="a", prompt="p", base_model=tiny_pipeline.base.identity,
                          unet_state=trained_like_state(tiny_pipeline.base.unet))
    action = read_action(folder)
    _truncated(folder / "unet.safetensors")  # e.g. a sync client rewriting it meanwhile
    slot = ActionSlot(tiny_pipeline)
    with pytest.raises(FlashError) as err:
        slot.apply(action)
    assert err.value.code == "weights_incomplete" and "\n" not in str(err.value) and slot.current is None
