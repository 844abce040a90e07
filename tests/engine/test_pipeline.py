"""Sampling: clean first frame, AdaIN, seeds, sizes."""

import numpy as np
import pytest
import torch

from flash_engine.errors import FlashError
from flash_engine.pipeline import AnimationSettings, adain_latents
from tests.conftest import draw_scene

FAST = dict(num_frames=4, steps=3, width=64, height=48)


def settings(**overrides):
    return AnimationSettings(**{"prompt": "a person is waving.", "seed": 1, **FAST, **overrides})


def test_frame_zero_is_the_clean_reference_at_every_step(tiny_pipeline):
    seen = []
    hook = tiny_pipeline.base.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((args[0] if args else kwargs["sample"])[:, :, 0].clone()),
        with_kwargs=True)
    try:
        result = tiny_pipeline(draw_scene(), settings(steps=4))
    finally:
        hook.remove()
    assert len(seen) == 4
    reference = result.latents[0, :, 0]
    for sample in seen:  # both CFG halves, every step
        for half in sample:
            assert torch.allclose(half.float(), reference, atol=1e-6)
    # and the other frames were noisy, not clean copies
    assert not torch.allclose(result.latents[0, :, 1], reference, atol=1e-2)


def test_reference_latent_is_the_vae_encoding(tiny_pipeline):
    from flash_engine.images import fit_reference, to_model_pixels

    image = draw_scene()
    result = tiny_pipeline(image, settings())
    vae = tiny_pipeline.base.vae
    with torch.no_grad():
        expected = vae.encode(to_model_pixels(fit_reference(image, 64, 48))).latent_dist.mean
    assert torch.allclose(result.latents[0, :, 0], expected[0] * vae.config.scaling_factor, atol=1e-5)


def test_adain_matches_frame_zero_statistics():
    torch.manual_seed(0)
    latents = torch.randn(1, 4, 5, 6, 7) * torch.arange(1, 6).view(1, 1, 5, 1, 1) + 3
    out = adain_latents(latents)
    mean, std = out.mean(dim=(3, 4)), out.std(dim=(3, 4))
    for frame in range(5):
        assert torch.allclose(mean[:, :, frame], mean[:, :, 0], atol=1e-4)
        assert torch.allclose(std[:, :, frame], std[:, :, 0], atol=1e-4)
    assert torch.allclose(out[:, :, 0], latents[:, :, 0], atol=1e-4)
    # structure within a frame is kept (it is an affine map per channel)
    corr = torch.corrcoef(torch.stack([out[0, 0, 3].flatten(), latents[0, 0, 3].flatten()]))[0, 1]
    assert corr > 0.999


def test_pipeline_output_has_adain_statistics(tiny_pipeline):
    result = tiny_pipeline(draw_scene(), settings())
    latents = result.latents[0]
    assert torch.allclose(latents.mean(dim=(2, 3))[:, 1:], latents.mean(dim=(2, 3))[:, :1].expand(-1, 3), atol=1e-3)
    assert torch.allclose(latents.std(dim=(2, 3))[:, 1:], latents.std(dim=(2, 3))[:, :1].expand(-1, 3), atol=1e-3)


def test_same_seed_same_frames_different_seed_different_frames(tiny_pipeline):
    image = draw_scene()
    first = tiny_pipeline(image, settings(seed=5)).frames
    again = tiny_pipeline(image, settings(seed=5)).frames
    other = tiny_pipeline(image, settings(seed=6)).frames
    assert np.array_equal(first, again)
    assert not np.array_equal(first[1:], other[1:])


def test_output_size_and_count_for_non_square(tiny_pipeline):
    result = tiny_pipeline(draw_scene(120, 60), settings(num_frames=3, width=80, height=40))
    assert result.frames.shape == (3, 40, 80, 3)
    assert result.frames.dtype == np.uint8
    assert set(result.timings) == {"encode", "denoise", "decode"}


def test_guidance_one_runs_without_the_unconditional_batch(tiny_pipeline):
    batches = []
    hook = tiny_pipeline.base.unet.register_forward_pre_hook(
        lambda module, args, kwargs: batches.append((args[0] if args else kwargs["sample"]).shape[0]),
        with_kwargs=True)
    try:
        tiny_pipeline(draw_scene(), settings(guidance=1.0, steps=2))
        tiny_pipeline(draw_scene(), settings(guidance=7.5, steps=2))
    finally:
        hook.remove()
    assert batches == [1, 1, 2, 2]


def test_progress_and_cancel(tiny_pipeline):
    from flash_engine.errors import JobCancelled

    calls = []
    with pytest.raises(JobCancelled):
        tiny_pipeline(draw_scene(), settings(steps=5), progress=lambda *a: calls.append(a),
                      should_cancel=lambda: any(c[0] == "denoise" and c[1] == 2 for c in calls))
    denoise_steps = [c[1] for c in calls if c[0] == "denoise"]
    assert denoise_steps == [0, 1, 2]  # stopped within one denoising step


@pytest.mark.parametrize("bad, code", [
    (dict(num_frames=1), "bad_frames"),
    (dict(num_frames=40), "bad_frames"),
    (dict(steps=0), "bad_steps"),
    (dict(width=60), "bad_size"),
    (dict(prompt="  "), "bad_prompt"),
])
def test_bad_settings_are_refused(tiny_pipeline, bad, code):
    values = {"prompt": "a person is waving.", **FAST, **bad}
    with pytest.raises(FlashError) as err:
        tiny_pipeline(draw_scene(), AnimationSettings(**values))
    assert err.value.code == code


def test_denoising_never_waits_for_the_device():
    """The whole DDIM loop on the meta device (see tests/support/devicecheck.py): no host read of a
    device value, no blocking copy, at any step, with guidance."""
    from flash_engine.models.tiny import build_tiny
    from flash_engine.pipeline import FlashPipeline
    from tests.support.devicecheck import HostToDeviceCopies

    pipeline = FlashPipeline(build_tiny())
    pipeline.device = torch.device("meta")
    pipeline.base.unet.to(pipeline.device)
    settings = AnimationSettings(prompt="p", num_frames=3, steps=4, guidance=7.5, width=64, height=64)
    latents = torch.empty(1, 4, 3, 8, 8, device="meta")
    text = torch.empty(2 * 3, 77, pipeline.base.unet.config.cross_attention_dim, device="meta")
    steps = []
    with HostToDeviceCopies() as copies:
        out = pipeline.denoise(latents, latents[:, :, 0], text, settings, lambda step, total: steps.append(step),
                               lambda: None)
    assert out.device.type == "meta" and out.shape == latents.shape
    assert steps == [0, 1, 2, 3, 4]
    assert copies.count >= 1 and copies.blocking == []  # the timesteps, once


def test_channels_last_and_compiled_unet_give_the_same_clip(monkeypatch, tmp_path):
    """The opt-in speed switches change no output; the compile is one graph (``fullgraph``:
    a graph break in FLASH's processors fails here). ``aot_eager`` traces exactly what
    inductor would compile, without the minute of C++ code generation."""
    import flash_engine.pipeline as pipeline_module
    from flash_engine.models.tiny import build_tiny
    from flash_engine.pipeline import FlashPipeline

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(pipeline_module, "COMPILE_OPTIONS", {**pipeline_module.COMPILE_OPTIONS, "backend": "aot_eager"})
    settings = AnimationSettings(prompt="a disc moves", num_frames=3, steps=2, width=32, height=32)
    reference = draw_scene(32, 32)
    eager = FlashPipeline(build_tiny())(reference, settings).latents
    fast = FlashPipeline(build_tiny(), channels_last=True, compile_unet=True)
    assert fast.base.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert fast.base.unet._compiled_call_impl is not None  # nn.Module.compile took
    latents = fast(reference, settings).latents
    assert ((latents - eager).norm() / eager.norm()).item() < 1e-5


def test_decode_chunks_change_memory_not_pixels(tiny_pipeline):
    """Frames decode independently given the reference, so any chunking gives the same clip."""
    latents = torch.randn(1, 4, 5, 4, 4, generator=torch.Generator().manual_seed(0))
    from flash_engine.models.decoder import encode_with_features

    _, features = encode_with_features(tiny_pipeline.base.vae, torch.rand(1, 3, 32, 32) * 2 - 1,
                                       tiny_pipeline.decoder.enhanced_levels)
    decoded, reports = {}, {}
    try:
        for chunk in (1, 2, 5):
            tiny_pipeline.decode_chunk = chunk
            reports[chunk] = []
            with torch.no_grad():
                decoded[chunk] = tiny_pipeline.decode(latents, features,
                                                      lambda phase, step, total: reports[chunk].append(step))
    finally:
        tiny_pipeline.decode_chunk = 1
    assert torch.allclose(decoded[1], decoded[2], atol=1e-5) and torch.allclose(decoded[1], decoded[5], atol=1e-5)
    assert reports == {1: [1, 2, 3, 4, 5], 2: [2, 4, 5], 5: [5]}
