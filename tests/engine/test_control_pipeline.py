"""ControlNets in the sampler: diffusers' AnimateDiffControlNetPipeline semantics (the oracle),
diffusers' schedule window, FLASH's clean first frame kept, and no control = today's sampling."""

import pytest
import torch

from flash_engine.errors import FlashError
from flash_engine.models.controlnet import new_controlnet
from flash_engine.models.tiny import build_tiny, tiny_parts
from flash_engine.pipeline import AnimationSettings, Control, FlashPipeline
from tests.conftest import draw_scene

FRAMES, SIZE = 3, 32


@pytest.fixture(scope="module")
def nets():
    """Two ControlNets for ``tiny`` whose output convolutions are random (a fresh one adds zeros)."""
    unet2d = tiny_parts()["unet2d"]
    return new_controlnet(unet2d, seed=1), new_controlnet(unet2d, seed=2)


def settings(**overrides):
    values = dict(prompt="a person is waving.", num_frames=FRAMES, steps=3, guidance=7.5, width=SIZE, height=SIZE,
                  seed=3, adain=False)
    return AnimationSettings(**{**values, **overrides})


def conditions(seed):
    return torch.rand(FRAMES, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def noise(seed=0):
    return torch.randn(1, 4, FRAMES, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(seed))


def count_calls(module):
    calls = []
    handle = module.register_forward_pre_hook(
        lambda m, args, kwargs: calls.append(args[0] if args else kwargs["sample"]), with_kwargs=True)
    return calls, handle


def todays_denoise(pipeline, latents, reference_latent, text, steps, guidance):
    """The sampling loop as it was before controls existed: the frozen expectation."""
    scheduler, unet = pipeline.base.scheduler, pipeline.base.unet
    scheduler.set_timesteps(steps)
    for timestep in scheduler.timesteps:
        latents[:, :, 0] = reference_latent
        model_input = scheduler.scale_model_input(torch.cat([latents, latents]), timestep)
        uncond, cond = unet(model_input, timestep, encoder_hidden_states=text).sample.chunk(2)
        latents = scheduler.step(uncond + guidance * (cond - uncond), timestep, latents).prev_sample
    return latents


def test_the_schedule_window_is_diffusers_rule():
    total = 10
    for start, end in ((0.0, 1.0), (0.2, 0.7), (0.25, 0.75), (0.0, 0.1), (0.95, 1.0)):
        control = Control(net=None, frames=None, scale=1.0, start=start, end=end)
        # diffusers' AnimateDiffControlNetPipeline: keep = 1 - float(i/N < s or (i+1)/N > e)
        expected = [1.0 - float(i / total < start or (i + 1) / total > end) for i in range(total)]
        assert [float(control.active(i, total)) for i in range(total)] == expected


def test_with_flash_off_one_controlnet_steers_as_in_diffusers(nets):
    """Oracle: cross-frame attention, clean first frame and AdaIN off, our sampler with a
    ControlNet equals diffusers' AnimateDiffControlNetPipeline on the same weights, latents
    and conditioning."""
    from diffusers import AnimateDiffControlNetPipeline, DDIMScheduler
    from flash_engine.models.attention import remove_flash_attention

    base = build_tiny()
    remove_flash_attention(base.unet)
    ours = FlashPipeline(base)
    net, condition, run = nets[0], conditions(5), settings()
    text = ours.encode_prompt(run.prompt, run.negative_prompt, guided=True).repeat_interleave(FRAMES, dim=0)
    control = Control(net, condition, scale=0.8, start=0.0, end=1.0)
    steered = ours.denoise(noise(), None, text, run, lambda *a: None, lambda: None, [control])
    plain = ours.denoise(noise(), None, text, run, lambda *a: None, lambda: None)

    theirs = AnimateDiffControlNetPipeline(
        vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=base.unet, motion_adapter=None,
        controlnet=net, scheduler=DDIMScheduler.from_config(base.scheduler.config))
    theirs.set_progress_bar_config(disable=True)
    expected = theirs(prompt=run.prompt, negative_prompt=run.negative_prompt, num_frames=FRAMES, height=SIZE,
                      width=SIZE, num_inference_steps=run.steps, guidance_scale=run.guidance, latents=noise(),
                      conditioning_frames=list(condition), controlnet_conditioning_scale=0.8,
                      output_type="latent").frames
    assert (steered - plain).abs().max() > 1e-2  # the control steers: the comparison means something
    assert torch.allclose(steered, expected, rtol=1e-4, atol=1e-5), (steered - expected).abs().max()


def test_with_flash_off_two_controlnets_sum_as_diffusers_multicontrolnet(nets):
    """Pose + depth: each with its own scale and window, summed as MultiControlNetModel."""
    from diffusers import AnimateDiffControlNetPipeline, DDIMScheduler
    from flash_engine.models.attention import remove_flash_attention

    base = build_tiny()
    remove_flash_attention(base.unet)
    ours = FlashPipeline(base)
    run = settings(steps=3)
    text = ours.encode_prompt(run.prompt, run.negative_prompt, guided=True).repeat_interleave(FRAMES, dim=0)
    pose, depth = conditions(6), conditions(7)
    controls = [Control(nets[0], pose, scale=0.8, start=0.0, end=0.6, name="pose"),
                Control(nets[1], depth, scale=1.3, start=0.3, end=1.0, name="depth")]
    steered = ours.denoise(noise(1), None, text, run, lambda *a: None, lambda: None, controls)

    theirs = AnimateDiffControlNetPipeline(
        vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=base.unet, motion_adapter=None,
        controlnet=list(nets), scheduler=DDIMScheduler.from_config(base.scheduler.config))
    theirs.set_progress_bar_config(disable=True)
    expected = theirs(prompt=run.prompt, num_frames=FRAMES, height=SIZE, width=SIZE, num_inference_steps=run.steps,
                      guidance_scale=run.guidance, latents=noise(1),
                      conditioning_frames=[list(pose), list(depth)],
                      controlnet_conditioning_scale=[0.8, 1.3], control_guidance_start=[0.0, 0.3],
                      control_guidance_end=[0.6, 1.0], output_type="latent").frames
    assert torch.allclose(steered, expected, rtol=1e-4, atol=1e-5), (steered - expected).abs().max()
    only_pose = ours.denoise(noise(1), None, text, run, lambda *a: None, lambda: None, controls[:1])
    assert (steered - only_pose).abs().max() > 1e-2  # the depth's share is in there


def test_no_control_is_todays_sampling_bit_for_bit(nets):
    """No control, an empty list, a zero-strength control and one whose window holds no step:
    the same bits as the loop before controls existed, and the ControlNet never runs."""
    pipeline = FlashPipeline(build_tiny())
    run = settings(steps=2)
    text = pipeline.encode_prompt(run.prompt, "", guided=True).repeat_interleave(FRAMES, dim=0)
    reference = torch.randn(1, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(9))
    expected = todays_denoise(pipeline, noise(), reference, text, run.steps, run.guidance)
    calls, handle = count_calls(nets[0])
    try:
        for controls in (None, [], [Control(nets[0], conditions(5), scale=0.0)],
                         [Control(nets[0], conditions(5), scale=1.0, start=0.9, end=1.0)]):
            args = () if controls is None else (controls,)
            out = pipeline.denoise(noise(), reference, text, run, lambda *a: None, lambda: None, *args)
            assert torch.equal(out, expected), controls
        assert calls == []
        steered = pipeline.denoise(noise(), reference, text, run, lambda *a: None, lambda: None,
                                   [Control(nets[0], conditions(5))])
    finally:
        handle.remove()
    assert len(calls) == 2 and not torch.equal(steered, expected)  # it would have shown


def test_a_whole_clip_without_controls_is_unchanged_by_an_empty_list(tiny_pipeline):
    run = settings(adain=True, steps=2)
    plain = tiny_pipeline(draw_scene(SIZE, SIZE), run)
    empty = tiny_pipeline(draw_scene(SIZE, SIZE), run, controls=[])
    assert torch.equal(plain.latents, empty.latents) and (plain.frames == empty.frames).all()


def test_controls_steer_only_inside_their_window(nets):
    pipeline = FlashPipeline(build_tiny())
    run = settings(steps=4, guidance=1.0)  # unguided: one batch of frames, the condition not doubled
    calls, handle = count_calls(nets[0])
    try:
        pipeline(draw_scene(SIZE, SIZE), run, controls=[Control(nets[0], conditions(5), start=0.25, end=0.75)])
    finally:
        handle.remove()
    assert len(calls) == 2  # steps 1 and 2 of 4: 1/4 >= 0.25 and 3/4 <= 0.75
    assert all(sample.shape == (FRAMES, 4, SIZE // 8, SIZE // 8) for sample in calls)


def test_flash_on_frame_zero_stays_the_reference_and_the_controlnet_sees_it(nets):
    """With FLASH's features on, the ControlNet gets the latents with the clean reference in
    frame 0, per frame in the batch (B·F), both CFG halves; the clip's frame 0 is the reference."""
    pipeline = FlashPipeline(build_tiny())
    run = settings(steps=2, adain=True)
    seen_by_net, handle = count_calls(nets[0])
    try:
        result = pipeline(draw_scene(SIZE, SIZE), run, controls=[Control(nets[0], conditions(5))])
        plain = pipeline(draw_scene(SIZE, SIZE), run)
    finally:
        handle.remove()
    reference = result.latents[0, :, 0]
    assert torch.equal(reference, plain.latents[0, :, 0])
    assert len(seen_by_net) == 2
    for sample in seen_by_net:
        assert sample.shape == (2 * FRAMES, 4, SIZE // 8, SIZE // 8)
        for half in (0, FRAMES):  # frame 0 of the unconditional and the text half
            assert torch.allclose(sample[half], reference, atol=1e-6)
    assert not torch.allclose(result.latents[0, :, 1:], plain.latents[0, :, 1:], atol=1e-3)


@pytest.mark.parametrize("shape", [(FRAMES + 1, 3, SIZE, SIZE), (FRAMES, 3, SIZE, SIZE + 8), (FRAMES, 1, SIZE, SIZE)])
def test_a_condition_that_does_not_match_the_clip_is_refused(tiny_pipeline, nets, shape):
    with pytest.raises(FlashError) as err:
        tiny_pipeline(draw_scene(SIZE, SIZE), settings(), controls=[Control(nets[0], torch.zeros(shape), name="pose")])
    assert err.value.code == "bad_control" and "pose" in str(err.value) and "\n" not in str(err.value)


def test_a_controlled_denoising_never_waits_for_the_device(nets):
    """As test_pipeline's meta-device check, with a ControlNet steering every step."""
    from tests.support.devicecheck import HostToDeviceCopies

    pipeline = FlashPipeline(build_tiny())
    pipeline.device = torch.device("meta")
    pipeline.base.unet.to(pipeline.device)
    net = new_controlnet(tiny_parts()["unet2d"], seed=1).to("meta")
    run = AnimationSettings(prompt="p", num_frames=3, steps=3, guidance=7.5, width=SIZE, height=SIZE)
    latents = torch.empty(1, 4, 3, SIZE // 8, SIZE // 8, device="meta")
    text = torch.empty(2 * 3, 77, pipeline.base.unet.config.cross_attention_dim, device="meta")
    with HostToDeviceCopies() as copies:
        out = pipeline.denoise(latents, latents[:, :, 0], text, run, lambda step, total: None, lambda: None,
                               [Control(net, torch.rand(3, 3, SIZE, SIZE))])
    assert out.shape == latents.shape
    assert copies.blocking == []


def test_a_new_controlnet_scales_its_condition_as_the_models_vae_does():
    # diffusers' default condition embedding scales 8x (SD's VAE); the built-in model's VAE is 4x,
    # and a ControlNet whose condition lands on another latent size is refused at load
    from flash_engine.models.base import vae_size_multiple
    from flash_engine.models.controlnet import controlnet_for
    from flash_engine.models.loading import model_limits

    for model in ("mannequin", "tiny"):
        net = controlnet_for(model)
        scale = vae_size_multiple({"block_out_channels": net.config.conditioning_embedding_out_channels})
        assert scale == model_limits(model)["size_multiple"], model
    assert model_limits("mannequin")["size_multiple"] == 4 and model_limits("tiny")["size_multiple"] == 8
