"""Real-weights loading path, exercised with a tiny model saved by save_pretrained."""

from pathlib import Path

import numpy as np
import pytest

from flash_engine.errors import FlashError
from flash_engine.models.loading import find_problems, load_base, save_folder
from flash_engine.models.tiny import tiny_parts
from flash_engine.pipeline import AnimationSettings, FlashPipeline
from tests.conftest import REPO, draw_scene

SETTINGS = dict(prompt="a person is doing push-ups.", num_frames=3, steps=2, width=64, height=48, seed=4)


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    return save_folder(tiny_parts(), tmp_path_factory.mktemp("weights") / "sd15-tiny")


def test_saved_layout_is_the_diffusers_layout(saved_tiny):
    assert find_problems(saved_tiny, saved_tiny / "motion_adapter") == []
    for folder in ("unet", "vae", "text_encoder", "motion_adapter"):
        assert list((saved_tiny / folder).glob("*.safetensors")), folder
        assert not list((saved_tiny / folder).glob("*.bin")), folder
    assert (saved_tiny / "scheduler" / "scheduler_config.json").is_file()


def test_round_trip_gives_the_same_clip_as_the_built_in_model(saved_tiny, tiny_pipeline):
    loaded = load_base(saved_tiny)
    assert loaded.source == str(saved_tiny.resolve())
    assert loaded.scheduler.config.beta_schedule == "linear" and loaded.scheduler.config.clip_sample is False
    image = draw_scene()
    from_folder = FlashPipeline(loaded)(image, AnimationSettings(**SETTINGS)).frames
    built_in = tiny_pipeline(image, AnimationSettings(**SETTINGS)).frames
    assert np.array_equal(from_folder, built_in)


def test_separate_motion_adapter_folder(saved_tiny, tmp_path):
    import shutil

    adapter = tmp_path / "adapter"
    shutil.copytree(saved_tiny / "motion_adapter", adapter)
    model = tmp_path / "sd"
    shutil.copytree(saved_tiny, model, ignore=shutil.ignore_patterns("motion_adapter"))
    with pytest.raises(FlashError, match="no motion_adapter/ folder"):
        load_base(model)
    assert load_base(model, adapter_dir=adapter).unet is not None


def test_identity_changes_with_the_weights(saved_tiny, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "copy"
    shutil.copytree(saved_tiny, copy)
    assert load_base(copy).identity == load_base(saved_tiny).identity
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    name = next(iter(state))
    state[name] = state[name] + torch.randn_like(state[name])
    save_file(state, weights)
    assert load_base(copy).identity != load_base(saved_tiny).identity


def test_pickle_weights_are_refused_without_being_read(saved_tiny, tmp_path):
    import shutil

    copy = tmp_path / "pickled"
    shutil.copytree(saved_tiny, copy)
    for path in (copy / "unet").glob("*.safetensors"):
        path.rename(path.with_suffix(".bin"))
    with pytest.raises(FlashError, match=r"unet/ has only pickle weights \(convert them to .safetensors\)"):
        load_base(copy)


def test_corrupt_config_is_a_clear_error(saved_tiny, tmp_path):
    import shutil

    copy = tmp_path / "corrupt"
    shutil.copytree(saved_tiny, copy)
    (copy / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(FlashError) as err:
        load_base(copy)
    assert err.value.code == "weights_incomplete" and "\n" not in str(err.value)


# ---------------------------------------------------------------- the built-in `mannequin` model

def fp16_folder(dest):
    """A folder as mannequin/train_base.py exports it: save_folder's layout with fp16 weights."""
    import torch

    parts = tiny_parts()
    for name in ("unet2d", "motion_adapter", "vae", "text_encoder"):
        parts[name] = parts[name].to(torch.float16)
    return save_folder(parts, dest)


@pytest.fixture(scope="module")
def mannequin_stand_in(tmp_path_factory):
    return fp16_folder(tmp_path_factory.mktemp("models") / "mannequin")


def test_mannequin_loads_its_folder_through_load_folder(mannequin_stand_in, monkeypatch):
    import torch
    from safetensors import safe_open

    from flash_engine.models import loading

    monkeypatch.setattr(loading, "MANNEQUIN_DIR", mannequin_stand_in)
    assert "mannequin" in loading.BUILT_IN and loading.mannequin_available()
    with safe_open(str(mannequin_stand_in / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16  # the files are fp16 ...
    base = load_base("mannequin")
    for name, module in base.modules().items():  # ... the model is fp32 unless asked otherwise
        assert {p.dtype for p in module.parameters()} == {torch.float32}, name
    assert base.source == "mannequin"
    folder = loading.load_folder(mannequin_stand_in)
    assert base.identity == folder.identity  # the content fingerprint, as for any folder
    assert len(base.identity) == 16 and not base.identity.startswith("tiny-")
    image = draw_scene()
    from_name = FlashPipeline(base)(image, AnimationSettings(**SETTINGS)).frames
    assert np.array_equal(from_name, FlashPipeline(folder)(image, AnimationSettings(**SETTINGS)).frames)
    half = load_base("mannequin", dtype=torch.float16)
    assert {p.dtype for p in half.unet.parameters()} == {torch.float16}


@pytest.mark.parametrize("state", ["absent", "empty", "no unet weights"])
def test_missing_mannequin_is_a_one_line_error_naming_the_fix(tmp_path, monkeypatch, capsys, reference_png, state,
                                                               mannequin_stand_in):
    import shutil

    from flash_engine.cli import main
    from flash_engine.models import loading

    folder = tmp_path / "mannequin"
    if state == "empty":
        folder.mkdir()
    elif state == "no unet weights":
        shutil.copytree(mannequin_stand_in, folder)
        for path in (folder / "unet").glob("*.safetensors"):
            path.unlink()
    monkeypatch.setattr(loading, "MANNEQUIN_DIR", folder)
    assert not loading.mannequin_available()
    with pytest.raises(FlashError) as err:
        load_base("mannequin")
    assert "\n" not in str(err.value) and "mannequin" in str(err.value)
    assert "reinstall" in str(err.value) and "--model tiny" in str(err.value)
    code = main(["animate", "--image", str(reference_png), "--prompt", "x", "--model", "mannequin",
                 "--out", str(tmp_path / "o")])
    message = capsys.readouterr().err.strip()
    assert code == 2 and message.startswith("error: ") and "\n" not in message and "--model tiny" in message
    assert not (tmp_path / "o").exists()


def demo_model(stand_in, tmp_path, monkeypatch, **demo_changes):
    """A copy of the mannequin stand-in as the built-in model, with a drawn demo reference and a
    card whose demo takes 3 frames of 2 steps (plus ``demo_changes``); returns its folder."""
    import json
    import shutil

    from flash_engine.models import loading

    folder = tmp_path / "mannequin"
    shutil.copytree(stand_in, folder)
    draw_scene(64, 64, seed=2).save(folder / "demo_reference.png")
    demo = {"image": "demo_reference.png", "action": "jump", "prompt": "a person is jumping.", "width": 64,
            "height": 64, "frames": 3, "steps": 2, "guidance": 7.5, "seed": 7, **demo_changes}
    (folder / "mannequin.json").write_text(json.dumps({"resolution": [64, 64], "frames": 16, "demo": demo}))
    monkeypatch.setattr(loading, "MANNEQUIN_DIR", folder)
    monkeypatch.delenv("FLASH_MODEL", raising=False)
    monkeypatch.setenv("FLASH_WEIGHTS_DIR", str(tmp_path / "no-fetched-weights"))
    return folder


def test_demo_animates_the_model_card_reference_with_its_settings(mannequin_stand_in, tmp_path, monkeypatch):
    import json
    import shutil

    from flash_engine.cli import main
    from flash_engine.models import loading

    folder = demo_model(mannequin_stand_in, tmp_path, monkeypatch)
    out = tmp_path / "out" / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    assert main(["demo", "--out", str(out)]) == 0  # the demo's own take is replaced on the next run
    meta = json.loads((out / "flash.json").read_text())
    assert meta["model"]["source"] == "mannequin" and meta["reference_image"] == str(folder / "demo_reference.png")
    assert {k: meta["settings"][k] for k in ("prompt", "num_frames", "steps", "guidance", "seed", "width",
                                              "height")} == {
        "prompt": "a person is jumping.", "num_frames": 3, "steps": 2, "guidance": 7.5, "seed": 7, "width": 64,
        "height": 64}
    assert sorted(p.name for p in out.iterdir()) == ["flash.json", "flash.mp4", "frame_0001.png", "frame_0002.png",
                                                    "frame_0003.png", "preview.mp4", "strip.png"]
    from PIL import Image

    with Image.open(out / "strip.png") as strip, Image.open(out / "frame_0002.png") as frame:
        assert strip.size == (3 * 256, 256)  # three frames side by side, each ×4 nearest-neighbour
        enlarged = np.asarray(strip.convert("RGB"))[:, 256:512]
        assert np.array_equal(enlarged[::4, ::4], np.asarray(frame.convert("RGB")))
        assert np.array_equal(enlarged[3::4, 3::4], np.asarray(frame.convert("RGB")))
    assert (out / "preview.mp4").stat().st_size > 0
    assert not (tmp_path / "out" / "demo_reference.png").exists()  # no drawn reference for mannequin


def test_demo_adds_a_take_driven_by_the_cards_poses_when_the_model_has_a_pose_controlnet(
        mannequin_stand_in, tmp_path, monkeypatch):
    import json
    import shutil

    from PIL import Image

    from flash_engine.cli import main
    from flash_engine.models import loading
    from flash_engine.models.controlnet import controlnet_for
    from flash_engine.pose.draw import draw_pose_maps
    from flash_engine.pose.format import PoseSequence, write_pose_file

    rng = np.random.default_rng(4)
    body = np.concatenate([rng.uniform(0.2, 0.8, (3, 18, 2)), np.ones((3, 18, 1))], axis=2)
    folder = demo_model(mannequin_stand_in, tmp_path, monkeypatch, pose={
        "file": "demo_pose.pose.json", "action": "kick", "prompt": "a person is kicking."})
    controlnet_for(folder, seed=3).save_pretrained(folder / "controlnet_pose", safe_serialization=True)
    write_pose_file(PoseSequence(body=body, width=64, height=64, fps=8.0), folder / "demo_pose.pose.json")
    out = tmp_path / "out" / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    posed = tmp_path / "out" / "demo-pose"
    meta = json.loads((posed / "flash.json").read_text())
    assert meta["settings"]["prompt"] == "a person is kicking."
    assert [c["control"] for c in meta["control"]] == ["pose"]
    assert meta["control"][0]["source"]["pose"] == str(folder / "demo_pose.pose.json")
    plain = np.asarray(Image.open(out / "frame_0002.png").convert("RGB"))
    steered = np.asarray(Image.open(posed / "frame_0002.png").convert("RGB"))
    assert not np.array_equal(plain, steered)  # the poses steer it
    with Image.open(posed / "strip.png") as strip:
        assert strip.size == (3 * 256, 2 * 256)  # the pose maps above the frames, each ×4
        pixels = np.asarray(strip.convert("RGB"))
    maps = draw_pose_maps(PoseSequence(body=body, width=64, height=64), 64, 64)
    assert np.array_equal(pixels[:256:4, 256:512:4], maps[1])
    assert np.array_equal(pixels[256::4, 256:512:4], steered)
    assert main(["demo", "--out", str(out)]) == 0  # both takes are the demo's own: replaced


SHIPPED_MANNEQUIN = REPO / "flash_engine" / "models" / "mannequin"


@pytest.mark.skipif(not SHIPPED_MANNEQUIN.is_dir(),
                    reason="flash_engine/models/mannequin/ is absent (the trained export is not in this checkout)")
def test_the_shipped_mannequin_card_loads_and_animates():
    import torch
    from PIL import Image

    from flash_engine.models.loading import MANNEQUIN_DIR, mannequin_available, mannequin_card
    from flash_engine.weights import builtin_model

    assert MANNEQUIN_DIR.resolve() == SHIPPED_MANNEQUIN and mannequin_available() and builtin_model() == "mannequin"
    card = mannequin_card()
    assert card["resolution"] == [64, 64] and card["frames"] == 16
    assert card["train_actions"] and not set(card["train_actions"]) & set(card["held_out_actions"])
    demo = card["demo"]
    assert demo["prompt"] == card["prompts"][demo["action"]] and demo["action"] in card["train_actions"]
    assert (demo["width"], demo["height"], demo["frames"]) == (64, 64, 16)
    base = load_base("mannequin")
    assert {p.dtype for p in base.unet.parameters()} == {torch.float32} and base.source == "mannequin"
    assert base.vae.config.latent_channels == card["latent_channels"]
    with Image.open(MANNEQUIN_DIR / demo["image"]) as image:
        reference = image.convert("RGB")
    assert reference.size == (64, 64)
    frames = FlashPipeline(base)(reference, AnimationSettings(prompt=demo["prompt"], num_frames=demo["frames"],
                                                              steps=2, width=64, height=64, seed=0)).frames
    assert frames.shape == (16, 64, 64, 3) and np.isfinite(frames.astype(float)).all()


# ---------------------------------------------------------------- weights never run code

EVIL_MODULE = '''
import os
from pathlib import Path
Path(os.environ["FLASH_TEST_MARKER"]).write_text("custom code ran")
from transformers import CLIPTokenizer
class EvilTokenizer(CLIPTokenizer):
    pass
'''


def custom_code_folder(saved_tiny, dest):
    """A copy of the tiny weights whose tokenizer names a local ``.py`` file to run (``auto_map``)."""
    import json
    import shutil

    shutil.copytree(saved_tiny, dest)
    config_path = dest / "tokenizer" / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    config["tokenizer_class"] = "EvilTokenizer"  # no class of that name in transformers: only the file has it
    config_path.write_text(json.dumps(config))
    (dest / "tokenizer" / "evil.py").write_text(EVIL_MODULE)
    return dest


@pytest.fixture
def custom_code_env(tmp_path, monkeypatch):
    """Where the custom code would leave its marker, and a private module cache should it be copied."""
    import transformers.dynamic_module_utils as dynamic

    marker = tmp_path / "ran.txt"
    monkeypatch.setenv("FLASH_TEST_MARKER", str(marker))
    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    return marker


@pytest.mark.parametrize("user", ["answers y at a terminal", "no terminal"])
@pytest.mark.parametrize("precheck", ["folder check", "loader alone"])
def test_weights_with_custom_code_are_refused_and_never_run(saved_tiny, tmp_path, monkeypatch, custom_code_env,
                                                             user, precheck):
    import io
    import sys

    from flash_engine.models import loading

    folder = custom_code_folder(saved_tiny, tmp_path / "custom")

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdin", Terminal("y\ny\ny\n") if user.startswith("answers") else io.StringIO(""))
    if precheck == "loader alone":  # the loaders themselves must refuse too, should a check miss a case
        monkeypatch.setattr(loading, "find_problems", lambda *_: [])
    with pytest.raises(FlashError) as err:
        load_base(folder)
    assert not custom_code_env.exists(), "the weights folder's own code ran"
    message = str(err.value)
    assert "\n" not in message and "custom code" in message and err.value.code == "weights_unsafe"
    if precheck == "folder check":
        assert "tokenizer/tokenizer_config.json" in message and "auto_map" in message


def test_model_limits_are_read_from_the_configs_without_loading(tmp_path, monkeypatch):
    """The built-in models' stated limits equal what their saved configs say, and a folder's are read
    from its configs alone (no weights load)."""
    from flash_engine.models import loading
    from flash_engine.models.tiny import tiny_parts

    folder = loading.save_folder(tiny_parts(), tmp_path / "tiny-folder")
    monkeypatch.setattr(loading, "load_folder", lambda *a, **k: pytest.fail("weights were loaded"))
    assert loading.model_limits(str(folder)) == loading.model_limits("tiny") == {
        "width": 64, "height": 64, "size_multiple": 8, "max_frames": 32, "latent_channels": 4, "fps": 8}
    assert loading.model_limits("mannequin") == {"width": 64, "height": 64, "size_multiple": 4, "max_frames": 32,
                                                 "latent_channels": 4, "fps": 8}  # its 4x VAE
    (folder / "motion_adapter" / "config.json").write_text("{not json")
    with pytest.raises(FlashError, match="unreadable model config"):
        loading.model_limits(str(folder))


def test_a_models_native_size_is_the_default_clip_size(tmp_path, capsys):
    import json

    from flash_engine.cli import main

    image = tmp_path / "wide.png"
    draw_scene(320, 180).save(image)
    assert main(["animate", "--image", str(image), "--prompt", "a person is waving.", "--model", "tiny",
                 "--frames", "2", "--steps", "1", "--out", str(tmp_path / "take")]) == 0
    settings = json.loads((tmp_path / "take" / "flash.json").read_text())["settings"]
    assert (settings["width"], settings["height"]) == (64, 40)  # tiny's native 64, not 512


def _changed(folder: Path, prefix: str) -> None:
    """Add noise to the first VAE tensor whose name starts with ``prefix``, in place."""
    import torch
    from safetensors.torch import load_file, save_file

    weights = folder / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    name = next(k for k in sorted(state) if k.startswith(prefix))
    state[name] = state[name] + torch.randn_like(state[name])
    save_file(state, weights)


@pytest.fixture(scope="module")
def decoder_tuned(saved_tiny, tmp_path_factory):
    """The saved base with only its VAE decoder changed (as mannequin.tune_decoder does), and
    one with an encoder tensor changed too."""
    import shutil

    root = tmp_path_factory.mktemp("tuned")
    decoder, encoder = root / "decoder-tuned", root / "encoder-changed"
    shutil.copytree(saved_tiny, decoder)
    _changed(decoder, "decoder.")
    shutil.copytree(decoder, encoder)
    _changed(encoder, "encoder.")
    return decoder, encoder


def test_a_decoder_only_tune_changes_the_identity_but_not_the_latent_identity(saved_tiny, decoder_tuned, tmp_path):
    import shutil

    from flash_engine.models.loading import base_identity, base_latent_identity

    decoder, encoder = decoder_tuned
    original, tuned, changed = load_base(saved_tiny), load_base(decoder), load_base(encoder)
    assert tuned.identity != original.identity  # what the benchmarks and #6 actions key on
    assert tuned.latent_identity == original.latent_identity
    assert changed.latent_identity not in (original.latent_identity, changed.identity)
    for folder, base in ((saved_tiny, original), (decoder, tuned), (encoder, changed)):  # told without loading
        assert (base_identity(folder), base_latent_identity(folder)) == (base.identity, base.latent_identity)
    for prefix, same_latents in (("post_quant_conv.", True), ("quant_conv.", False)):  # the 1x1 convs either side
        copy = tmp_path / prefix
        shutil.copytree(saved_tiny, copy)
        _changed(copy, prefix)
        assert base_identity(copy) != original.identity
        assert (base_latent_identity(copy) == original.latent_identity) is same_latents, prefix
    damaged = tmp_path / "damaged"  # a truncated VAE file: told apart, and the load's own error, not a crash
    shutil.copytree(saved_tiny, damaged)
    vae_file = damaged / "vae" / "diffusion_pytorch_model.safetensors"
    vae_file.write_bytes(vae_file.read_bytes()[:1000])
    assert base_latent_identity(damaged) != original.latent_identity


def test_actions_without_decoder_layers_and_controlnets_fit_a_decoder_tuned_base(saved_tiny, decoder_tuned,
                                                                                tmp_path, reference_png):
    import json

    import torch

    from flash_engine.actions import ActionSlot, read_action, write_action
    from flash_engine.animate import resolve
    from flash_engine.models.controlnet import MADE_FOR, check_controlnet_base
    from flash_engine.requests import AnimateRequest

    decoder, encoder = decoder_tuned
    original = load_base(saved_tiny)
    trained = {name: p.detach().clone() + 0.01 for name, p in original.unet.named_parameters() if "motion" in name}
    enhancement = FlashPipeline(original).decoder.enhancement_state_dict()

    def action(name, with_decoder=False, latent=original.latent_identity):
        return write_action(tmp_path / name, name=name, prompt="a person kicks.", base_model=original.identity,
                            base_latent=latent, unet_state=trained,
                            decoder_state={k: v + 0.1 for k, v in enhancement.items()} if with_decoder else None)

    unet_only, with_decoder, before_latents = action("kick"), action("kick6", True), action("old", latent=None)
    assert "base_latent" not in (before_latents / "action.toml").read_text()  # written as before this change

    def refused(folder, model) -> str:
        with pytest.raises(FlashError) as err:
            resolve(AnimateRequest(model=str(model), image=str(reference_png), weights=str(folder), frames=3,
                                   steps=1, out=str(tmp_path / "take")))
        assert err.value.code == "base_mismatch" and "\n" not in str(err.value)
        return str(err.value)

    # before any model loads
    assert resolve(AnimateRequest(model=str(decoder), image=str(reference_png), weights=str(unet_only), frames=3,
                                  steps=1, out=str(tmp_path / "take"))).request.weights == str(unet_only)
    assert original.identity in refused(with_decoder, decoder)  # its layers were trained on the old decoder
    refused(before_latents, decoder)  # it recorded no latent identity: only its own base
    refused(unet_only, encoder)  # the latents mean something else

    # and where the tensors go in
    tuned_pipeline = FlashPipeline(load_base(decoder))
    ActionSlot(tuned_pipeline).apply(read_action(unet_only))
    params = dict(tuned_pipeline.base.unet.named_parameters())
    assert all(torch.equal(params[k], v) for k, v in trained.items())
    with pytest.raises(FlashError, match="was trained on base model"):
        ActionSlot(tuned_pipeline).apply(read_action(with_decoder))

    # a ControlNet's record: the latent identity admits the decoder-tuned base, not a changed encoder
    net = tmp_path / "controlnet"
    net.mkdir()
    record = {"format": "flash-controlnet", "version": 1, "control": "pose", "base_identity": original.identity}
    (net / MADE_FOR).write_text(json.dumps(record))
    with pytest.raises(FlashError, match="was trained with base model"):
        check_controlnet_base(net, decoder, "pose")  # a record from before this change
    (net / MADE_FOR).write_text(json.dumps({**record, "base_latent_identity": original.latent_identity}))
    check_controlnet_base(net, saved_tiny, "pose")
    check_controlnet_base(net, decoder, "pose")
    with pytest.raises(FlashError, match="was trained with base model"):
        check_controlnet_base(net, encoder, "pose")


def test_the_shipped_pose_controlnet_records_the_shipped_bases_latent_identity():
    """So it stays usable when a decoder-only tune ships (its base_identity is then the older one)."""
    import json

    from flash_engine.models.controlnet import MADE_FOR, check_controlnet_base
    from flash_engine.models.loading import MANNEQUIN_DIR, base_latent_identity, mannequin_available

    if not mannequin_available():
        pytest.skip("the built-in mannequin model is not in this checkout")
    folder = MANNEQUIN_DIR / "controlnet_pose"
    record = json.loads((folder / MADE_FOR).read_text())
    assert record["base_latent_identity"] == base_latent_identity("mannequin")
    check_controlnet_base(folder, "mannequin", "pose")
