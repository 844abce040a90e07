"""A model whose VAE scales by 4, not Stable Diffusion's 8: its sizes are multiples of its own
scale, read from its VAE config (the tiny model saved with a 3-block VAE stands in for it)."""

import re

import pytest
import torch
from PIL import Image

from flash_engine import devices, warm
from flash_engine.cli import main
from flash_engine.errors import FlashError
from tests.conftest import draw_scene
from tests.support.clipgen import make_clips

PROMPT = "a person is waving."


@pytest.fixture(scope="module")
def model_4x(tmp_path_factory):
    from flash_engine.models.loading import save_folder
    from flash_engine.models.tiny import tiny_parts

    return save_folder(tiny_parts(vae_blocks=3), tmp_path_factory.mktemp("models") / "tiny-4x")


@pytest.fixture(scope="module")
def pipeline_4x(model_4x):
    from flash_engine.models.loading import load_base
    from flash_engine.pipeline import FlashPipeline

    return FlashPipeline(load_base(model_4x))


@pytest.fixture
def no_model_load(monkeypatch):
    from flash_engine.models import loading

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(warm.PipelineCache, "get", refuse)
    monkeypatch.setattr(loading, "load_base", refuse)


def one_line_error(capsys, args) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: "), err
    return err


def animate_request(image, out, model, **fields):
    from flash_engine.requests import AnimateRequest

    return AnimateRequest(image=str(image), out=str(out), prompt=PROMPT, model=str(model), **fields)


def test_the_size_multiple_is_the_vae_configs_scale(model_4x, pipeline_4x, tiny_base):
    from flash_engine.models.loading import model_limits

    assert model_limits(str(model_4x))["size_multiple"] == 4  # read from vae/config.json alone
    assert model_limits("tiny")["size_multiple"] == 8  # Stable Diffusion's 4-block VAE
    assert pipeline_4x.base.size_multiple == 4 and tiny_base.size_multiple == 8  # and the loaded VAEs agree


def test_a_4x_model_animates_at_a_multiple_of_4_with_latents_a_quarter_of_the_size(tmp_path, model_4x,
                                                                                  pipeline_4x):
    from flash_engine.images import fit_reference, to_model_pixels, to_uint8_frames
    from flash_engine.pipeline import AnimationSettings

    out = tmp_path / "take"
    assert main(["animate", "--image", str(_reference(tmp_path)), "--prompt", PROMPT, "--model", str(model_4x),
                 "--frames", "2", "--steps", "1", "--width", "36", "--height", "28", "--out", str(out)]) == 0
    with Image.open(out / "frame_0002.png") as frame:
        assert frame.size == (36, 28)  # 36 and 28: multiples of 4, not of 8

    image = draw_scene()
    result = pipeline_4x(image, AnimationSettings(prompt=PROMPT, num_frames=3, steps=1, width=36, height=28))
    assert result.latents.shape[-2:] == (7, 9) and result.frames.shape[1:3] == (28, 36)
    # the Detail Enhancement Decoder built from the 3-block VAE decodes as the VAE does while untrained
    vae = pipeline_4x.base.vae
    with torch.no_grad():
        stock = vae.decode(result.latents[0].transpose(0, 1) / vae.config.scaling_factor).sample
        reference = vae.encode(to_model_pixels(fit_reference(image, 36, 28))).latent_dist.mean
    assert abs(to_uint8_frames(stock).astype(int) - result.frames.astype(int)).max() <= 1
    assert torch.allclose(result.latents[0, :, 0], reference[0] * vae.config.scaling_factor, atol=1e-5)


def test_an_8x_model_refuses_a_multiple_of_4_naming_the_sizes_it_takes(tmp_path, capsys, model_4x, tiny_pipeline,
                                                                      no_model_load):
    from flash_engine.pipeline import AnimationSettings

    reference = _reference(tmp_path)
    common = ["animate", "--image", str(reference), "--prompt", PROMPT, "--frames", "2", "--steps", "1",
              "--out", str(tmp_path / "take")]
    err = one_line_error(capsys, [*common, "--model", "tiny", "--width", "36", "--height", "32"])
    assert "width 36 is not a multiple of 8" in err and "use 32 or 40" in err
    err = one_line_error(capsys, [*common, "--model", "tiny", "--long-side", "68"])
    assert "long side 68 is not a multiple of 8" in err and "use 64 or 72" in err
    err = one_line_error(capsys, [*common, "--model", str(model_4x), "--height", "34"])
    assert "height 34 is not a multiple of 4" in err and "use 32 or 36" in err
    assert not (tmp_path / "take").exists()
    with pytest.raises(FlashError, match="width 36 is not a multiple of 8"):  # the pipeline checks it too
        tiny_pipeline(draw_scene(), AnimationSettings(prompt=PROMPT, num_frames=2, steps=1, width=36, height=32))


def test_the_default_size_rounds_to_the_models_multiple(tmp_path, model_4x, no_model_load):
    from flash_engine.animate import resolve

    reference = tmp_path / "wide.png"
    draw_scene(96, 64).save(reference)  # 3:2 at the native long side 64: 42.7 px high
    for model, expected in ((model_4x, (64, 44)), ("tiny", (64, 40))):
        job = resolve(animate_request(reference, tmp_path / "take", model))
        assert (job.width, job.height) == expected and job.reference.size == expected
    job = resolve(animate_request(reference, tmp_path / "take", model_4x, width=36))
    assert (job.width, job.height) == (36, 24)  # 36 / 1.5 = 24, a multiple of 4


def test_memory_fitting_names_a_size_in_the_models_multiple(tmp_path, monkeypatch, model_4x, no_model_load):
    from flash_engine.animate import resolve

    weights = sum(f.stat().st_size for f in model_4x.glob("*/*.safetensors"))
    needed = devices.clip_memory_bytes(16, 1024, 576, torch.float32, guided=True)
    room = needed * (300.5 / 1024) ** 2  # room for 300.5 x 169.0: fits at 300 x 168 in steps of 4, 296 x 168 in 8
    monkeypatch.setattr(devices, "device_memory_bytes",
                        lambda device: (room + weights) / devices.USABLE_MEMORY_FRACTION)
    with pytest.raises(FlashError) as err:
        resolve(animate_request(_reference(tmp_path), tmp_path / "take", model_4x, frames=16, width=1024,
                                height=576, device="cpu", precision="fp32"))
    assert "use at most 300x168 (--width 300 --height 168)" in str(err.value) and err.value.code == "too_large"
    fit_w, fit_h = (int(n) for n in re.search(r"--width (\d+) --height (\d+)", str(err.value)).groups())
    job = resolve(animate_request(_reference(tmp_path), tmp_path / "take", model_4x, frames=16, width=fit_w,
                                  height=fit_h, device="cpu", precision="fp32"))
    assert (job.width, job.height) == (300, 168)  # the size it names is one it takes


def test_training_at_a_multiple_of_4(tmp_path, capsys, model_4x):
    clips = make_clips(tmp_path / "clips", count=2, frames=6)
    out = tmp_path / "actions" / "disc"
    args = ["train", "--clips", str(clips), "--action", "disc", "--prompt", "a disc is moving.", "--out", str(out),
            "--steps", "1", "--decoder-steps", "1", "--frames", "4", "--stride", "1", "--resolution", "36x28"]
    assert main([*args, "--model", str(model_4x)]) == 0, capsys.readouterr().err
    from flash_engine.actions import read_action

    config = read_action(out).meta["config"]
    assert (config["width"], config["height"]) == (36, 28)

    from flash_engine.models import loading

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the resolution was checked")

    capsys.readouterr()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loading, "load_base", refuse)
        err = one_line_error(capsys, [*args, "--model", "tiny", "--force"])
    assert "resolution '36x28' is not N or WxH in multiples of 8" in err and "32x24 or 40x32" in err


def test_training_config_takes_the_models_multiple():
    from flash_engine.training.config import TrainConfig

    TrainConfig(width=36, height=28).validate(size_multiple=4)
    with pytest.raises(FlashError, match="36x28 is not a multiple of 8"):
        TrainConfig(width=36, height=28).validate(size_multiple=8)


def _reference(tmp_path):
    path = tmp_path / "reference.png"
    if not path.exists():
        draw_scene().save(path)
    return path
