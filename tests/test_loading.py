"""Real-weights loading path, exercised with a tiny model saved by save_pretrained."""

import numpy as np
import pytest

from flash_engine.errors import FlashError
from flash_engine.models.loading import find_problems, load_base, save_folder
from flash_engine.models.tiny import tiny_parts
from flash_engine.pipeline import AnimationSettings, FlashPipeline
from tests.conftest import draw_scene

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
