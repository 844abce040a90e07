"""FLASH training: each piece must fail these tests if it were wrong."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from flash_engine.errors import FlashError
from flash_engine.training.augment import StrongAugmentConfig, apply_strong, distort, draw_strong, DistortConfig
from flash_engine.training.clips import scan_clips
from flash_engine.training.config import TrainConfig
from flash_engine.training.motion_alignment import align_motion, motion_channels
from flash_engine.training.trainer import FlashTrainer, is_trainable_unet_parameter, sample_timesteps
from tests.support.clipgen import make_clips, moving_disc, write_mp4
from tests.support.devicecheck import HostToDeviceCopies

SMALL = dict(num_frames=6, stride=1, width=64, height=64, checkpoint_every=1000)


@pytest.fixture(scope="module")
def clips_dir(tmp_path_factory) -> Path:
    return make_clips(tmp_path_factory.mktemp("clips") / "disc", count=3, frames=10)


def trainer_for(clips_dir, work_dir, **overrides):
    from flash_engine.models.tiny import build_tiny

    config = TrainConfig(**{**SMALL, "steps": 2, "decoder_steps": 0, "train_decoder": False, **overrides})
    scan = scan_clips([(clips_dir, "a disc is moving.")], config.num_frames, config.stride,
                      (config.width, config.height))
    return FlashTrainer(build_tiny(), scan.good, config, work_dir)


# ---------------------------------------------------------------- motion feature alignment

def features(seed, videos=1, space=5, frames=6, channels=8):
    generator = torch.Generator().manual_seed(seed)
    motion = torch.linspace(0, 1, frames).view(1, 1, frames, 1) * torch.rand(videos, space, 1, channels,
                                                                              generator=generator) * 10
    return torch.randn(videos, space, frames, channels, generator=generator) + motion


def test_motion_channels_are_top_tau_by_temporal_std_of_the_original():
    original = features(0)
    tau = 3
    chosen = set(motion_channels(original, tau)[0].tolist())
    score = original.std(dim=2).mean(dim=1)[0]
    assert chosen == set(score.argsort(descending=True)[:tau].tolist())


def test_alignment_transfers_normalised_motion_channels_only():
    original, augmented = features(0), features(1) * 3 + 2
    tau = 3
    aligned = align_motion(original, augmented, tau)
    channels = motion_channels(original, tau)[0]
    others = [c for c in range(8) if c not in channels.tolist()]

    def normalise(x):
        return (x - x.mean(dim=2, keepdim=True)) / (x.std(dim=2, keepdim=True) + 1e-6)

    # after normalisation the augmented motion channels equal the original's
    assert torch.allclose(normalise(aligned)[..., channels], normalise(original)[..., channels], atol=1e-4)
    # they keep the augmented video's own temporal statistics
    assert torch.allclose(aligned[..., channels].mean(dim=2), augmented[..., channels].mean(dim=2), atol=1e-4)
    assert torch.allclose(aligned[..., channels].std(dim=2), augmented[..., channels].std(dim=2), atol=1e-3)
    # other channels untouched, and the channels come from the ORIGINAL (not the augmented) video
    assert torch.equal(aligned[..., others], augmented[..., others])
    swapped = align_motion(augmented, original, tau)
    assert not torch.equal(motion_channels(augmented, tau), channels.unsqueeze(0)) or not torch.allclose(
        swapped, original)


def test_original_features_are_untouched_inside_the_unet(clips_dir, tmp_path):
    trainer = trainer_for(clips_dir, tmp_path)
    unet, context = trainer.base.unet, trainer.base.attention
    sample = torch.randn(2, 4, 6, 8, 8)
    text = torch.randn(12, 77, 32)
    with torch.no_grad():
        plain = unet(sample, 500, encoder_hidden_states=text).sample
        with context.training_switches(align_motion=True):
            aligned = unet(sample, 500, encoder_hidden_states=text).sample
    assert context.align_motion is False  # put back after the block
    assert torch.equal(aligned[0], plain[0])  # the original video's prediction is unchanged
    assert not torch.allclose(aligned[1], plain[1], atol=1e-6)  # the augmented one is aligned


# ---------------------------------------------------------------- correspondence alignment

def test_chosen_layers_share_attention_maps_the_others_do_not(clips_dir, tmp_path):
    trainer = trainer_for(clips_dir, tmp_path)
    unet, context = trainer.base.unet, trainer.base.attention
    layers = context.cross_frame_layers
    chosen = frozenset(layers[::2])
    with context.training_switches(share_qk_layers=chosen, captured_attention={}), torch.no_grad():
        unet(torch.randn(2, 4, 4, 8, 8), 500, encoder_hidden_states=torch.randn(8, 77, 32))
        maps = dict(context.captured_attention)
    assert context.share_qk_layers == frozenset() and context.captured_attention is None
    assert set(maps) == set(layers)
    for layer, attention in maps.items():
        original, augmented = attention.chunk(2)
        if layer in chosen:
            assert torch.equal(original, augmented), layer
        else:
            assert not torch.allclose(original, augmented, atol=1e-4), layer


def test_layer_draw_is_about_half_and_changes_every_step(clips_dir, tmp_path, monkeypatch):
    trainer = trainer_for(clips_dir, tmp_path, steps=3)
    context = trainer.base.attention
    seen = []
    original_forward = trainer.base.unet.forward

    def spy(*args, **kwargs):
        seen.append(context.share_qk_layers)
        return original_forward(*args, **kwargs)

    monkeypatch.setattr(trainer.base.unet, "forward", spy)
    trainer.run()
    half = round(len(context.cross_frame_layers) / 2)
    assert [len(s) for s in seen] == [half] * 3
    assert len(set(seen)) > 1 or len(context.cross_frame_layers) < 3


# ---------------------------------------------------------------- what trains

def test_one_step_changes_only_the_intended_parameters(clips_dir, tmp_path):
    trainer = trainer_for(clips_dir, tmp_path, steps=1, decoder_steps=1, train_decoder=True,
                          learning_rate=1e-3, decoder_learning_rate=1e-3)
    base = trainer.base
    before = {f"{prefix}.{name}": p.detach().clone()
              for prefix, module in (("unet", base.unet), ("vae", base.vae), ("text", base.text_encoder),
                                     ("decoder", trainer.decoder))
              for name, p in module.named_parameters()}
    trainer.run()
    after = {f"{prefix}.{name}": p.detach()
             for prefix, module in (("unet", base.unet), ("vae", base.vae), ("text", base.text_encoder),
                                    ("decoder", trainer.decoder))
             for name, p in module.named_parameters()}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    intended = {k for k in before if (k.startswith("unet.") and is_trainable_unet_parameter(k[5:]))
                or k.startswith("decoder.enhancers.")}
    assert changed <= intended, sorted(changed - intended)[:5]
    assert any(".motion_modules." in k for k in changed)
    assert any(".attn1.to_k." in k for k in changed) and any(".attn1.to_v." in k for k in changed)
    assert not any(".attentions." in k and (".attn1.to_q." in k or ".attn2." in k) for k in changed)
    assert any(k.startswith("decoder.enhancers.") for k in changed)


# ---------------------------------------------------------------- augmentation

def test_strong_augmentation_is_the_same_on_every_frame_and_differs_between_draws():
    video = torch.from_numpy(moving_disc(5, 48)).permute(0, 3, 1, 2).float() / 255
    generator = torch.Generator().manual_seed(3)
    params = draw_strong(StrongAugmentConfig(), generator)
    whole = apply_strong(video, params)
    one_by_one = torch.cat([apply_strong(frame[None], params) for frame in video])
    assert torch.allclose(whole, one_by_one, atol=1e-5)  # same parameters on every frame
    static = video[:1].expand(4, -1, -1, -1)
    augmented = apply_strong(static, params)
    assert all(torch.equal(augmented[0], frame) for frame in augmented)
    other = draw_strong(StrongAugmentConfig(), generator)
    assert other != params
    assert not torch.allclose(apply_strong(video, other), whole, atol=1e-3)
    assert not torch.allclose(whole, video, atol=1e-3)


def test_blur_kernels_are_odd_and_in_range():
    generator = torch.Generator().manual_seed(0)
    kernels = {draw_strong(StrongAugmentConfig(), generator).kernel for _ in range(200)}
    assert kernels == {3, 5, 7, 9, 11}


def test_decoder_distortion_keeps_the_reference_and_sometimes_stays_clean():
    video = torch.from_numpy(moving_disc(4, 48)).permute(0, 3, 1, 2).float() / 255
    generator = torch.Generator().manual_seed(1)
    results = [distort(video, DistortConfig(clean_probability=0.3), generator) for _ in range(20)]
    assert all(torch.equal(r[0], video[0]) for r in results)
    clean = sum(torch.equal(r, video) for r in results)
    assert 1 <= clean <= 15


def test_timesteps_skew_towards_large_t():
    generator = torch.Generator().manual_seed(0)
    t = sample_timesteps(generator, 20000, 3.0, 1000)
    assert 0 <= t.min() and t.max() <= 999
    assert abs((t >= 500).float().mean().item() - 0.5 ** (1 / 3)) < 0.02  # P(u < 0.794) ≈ 0.79
    uniform = sample_timesteps(generator, 20000, 1.0, 1000)
    assert abs((uniform >= 500).float().mean().item() - 0.5) < 0.02


# ---------------------------------------------------------------- learning and resuming

def fixed_batch_loss(trainer, clip_video, seeds=(0, 1, 2)):
    """Noise-prediction loss on fixed frames, noise and timesteps (no augmentation)."""
    base = trainer.base
    losses = []
    with torch.no_grad():
        latents = base.vae.encode(clip_video * 2 - 1).latent_dist.mean * base.vae.config.scaling_factor
        latents = latents.transpose(0, 1).unsqueeze(0)
        text = trainer.text_embeddings("a disc is moving.").repeat(latents.shape[2], 1, 1)
        for seed, t in zip(seeds, (300, 600, 900)):
            noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed))
            timestep = torch.tensor([t])
            noisy = base.scheduler.add_noise(latents, noise, timestep)
            noisy[:, :, 0] = latents[:, :, 0]
            prediction = base.unet(noisy, timestep, encoder_hidden_states=text).sample
            losses.append(torch.nn.functional.mse_loss(prediction[:, :, 1:], noise[:, :, 1:]).item())
    return sum(losses) / len(losses)


def test_a_short_run_lowers_the_loss(clips_dir, tmp_path):
    trainer = trainer_for(clips_dir, tmp_path, steps=12, learning_rate=2e-3)
    video = torch.from_numpy(trainer.clips[0].frames[:6]).permute(0, 3, 1, 2).float() / 255
    video = torch.nn.functional.interpolate(video, size=(64, 64), mode="bilinear")
    before = fixed_batch_loss(trainer, video)
    trainer.run()
    after = fixed_batch_loss(trainer, video)
    assert after < before * 0.9, (before, after)


def test_resume_reaches_the_same_parameters(clips_dir, tmp_path):
    settings = dict(steps=3, decoder_steps=2, train_decoder=True, learning_rate=1e-3)
    straight = trainer_for(clips_dir, tmp_path / "a", **settings)
    straight.run()
    interrupted = trainer_for(clips_dir, tmp_path / "b", **settings)
    interrupted.run(stop_after=4)  # stops inside the decoder phase, with a checkpoint
    resumed = trainer_for(clips_dir, tmp_path / "b", **settings)
    meta = resumed.load_checkpoint()
    assert (meta["phase"], meta["step"]) == ("decoder", 1)
    resumed.run()
    for name, value in straight.unet_state().items():
        assert torch.allclose(value, resumed.unet_state()[name], atol=1e-6), name
    for name, value in straight.decoder_state().items():
        assert torch.allclose(value, resumed.decoder_state()[name], atol=1e-6), name
    assert straight.losses == resumed.losses


# ---------------------------------------------------------------- no waiting on the device

def test_training_steps_never_wait_for_the_device(clips_dir, tmp_path):
    """On the meta device every value is unknown to the host, so any read of one (loss.item(),
    float(loss), a data-dependent shape such as nonzero) raises: the steps must not do that,
    and each host → device copy must be non-blocking."""
    trainer = trainer_for(clips_dir, tmp_path, decoder_steps=1, train_decoder=True)
    trainer.device = torch.device("meta")
    for module in (trainer.base.unet, trainer.base.vae, trainer.base.text_encoder, trainer.decoder):
        module.to(trainer.device)
    trainer.unet_step(), trainer.decoder_step()  # first use: constants move to the device once
    with HostToDeviceCopies() as copies:
        losses = [trainer.unet_step(), trainer.decoder_step()]
    assert all(loss.device.type == "meta" and loss.shape == () for loss in losses)
    assert copies.count >= 4  # frames, noise, timestep, the decoder's frame indices at least
    assert copies.blocking == []


def test_bf16_training_encodes_the_clips_in_bf16_too(clips_dir, tmp_path):
    trainer = trainer_for(clips_dir, tmp_path, mixed_precision="bf16")
    seen = []
    trainer.base.vae.encoder.conv_in.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    latents = trainer.encode(torch.rand(2, 3, 3, 64, 64))
    assert seen == [torch.bfloat16]
    assert latents.dtype == torch.float32 and latents.shape == (2, 4, 3, 8, 8)


def test_losses_are_read_in_batches_and_none_is_lost(clips_dir, tmp_path, monkeypatch):
    import flash_engine.training.trainer as trainer_module

    def run(read_seconds):
        monkeypatch.setattr(trainer_module, "LOSS_READ_SECONDS", read_seconds)
        trainer = trainer_for(clips_dir, tmp_path / str(read_seconds), steps=4)
        reported = []
        trainer.run(progress=lambda phase, step, total, loss=None, **_: reported.append(loss))
        return trainer.losses["unet"], reported

    every_step, reported_every_step = run(0.0)
    rarely, reported_rarely = run(math.inf)
    assert len(every_step) == 4 and rarely == every_step  # same values, same order
    assert reported_every_step == every_step
    # read at the first step (the report needs a value) and at the phase's end only
    assert reported_rarely == [every_step[0]] * 3 + [every_step[3]]


# ---------------------------------------------------------------- the job: clips, artifact, CLI

def test_bad_clips_are_reported_and_training_goes_on(tmp_path, capsys):
    from flash_engine.cli import main

    folder = make_clips(tmp_path / "clips", count=2, frames=10)
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "notes.mp4").write_text("this is not a video")
    write_mp4(moving_disc(3, 64), folder / "short.mp4")
    (folder / "readme.txt").write_text("x")
    broken = folder / "broken_frames"
    broken.mkdir()
    (broken / "1.png").write_text("not a png")
    code = main(["train", "--clips", str(folder), "--action", "disc", "--prompt", "a disc is moving.",
                 "--model", "tiny", "--steps", "1", "--decoder-steps", "0", "--resolution", "64",
                 "--frames", "6", "--stride", "1", "--out", str(tmp_path / "action")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "empty.mp4: the file is empty (0 bytes)" in err
    assert "notes.mp4: not a readable video" in err
    assert "short.mp4: has 3 frames, needs 6" in err
    assert "readme.txt: not a clip" in err
    assert "broken_frames: frame 1.png is not a readable image" in err
    assert "using 2 of 7 clips" in err
    from flash_engine.actions import read_action

    meta = read_action(tmp_path / "action").meta
    assert len(meta["clips"]) == 2 and len(meta["clips_skipped"]) == 5


def test_no_usable_clip_fails_before_any_model_is_loaded(tmp_path, monkeypatch, capsys):
    from flash_engine.cli import main
    from flash_engine.models import loading

    folder = tmp_path / "clips"
    folder.mkdir()
    (folder / "a.mp4").write_bytes(b"")
    monkeypatch.setattr(loading, "load_base", lambda *a, **k: pytest.fail("model loaded"))
    code = main(["train", "--clips", str(folder), "--action", "x", "--prompt", "a person is x.",
                 "--model", "tiny", "--out", str(tmp_path / "action")])
    err = capsys.readouterr().err
    assert code == 2 and "no usable clips" in err and not (tmp_path / "action").exists()


def test_artifact_round_trips_and_changes_the_clip(clips_dir, tmp_path, tiny_pipeline):
    from flash_engine.actions import ActionSlot, read_action
    from flash_engine.pipeline import AnimationSettings
    from flash_engine.training.job import TrainRequest, resolve_train, run_train
    from tests.conftest import draw_scene

    request = TrainRequest(clips=[str(clips_dir)], action="disc", prompt=["a disc is moving."],
                           out=str(tmp_path / "disc"), model="tiny", steps=2, decoder_steps=1, resolution="64",
                           frames=6, stride=1, options={"learning_rate": 1e-2, "decoder_learning_rate": 1e-2})
    result = run_train(resolve_train(request))
    action = read_action(result["action"])
    assert action.base_model == tiny_pipeline.base.identity
    assert action.meta["base_latent"] == tiny_pipeline.base.latent_identity  # what a decoder-tuned base checks
    # the speed it learned: the mp4s' 12 fps at stride 1 (the frame folder declares none); an
    # animate request without an fps plays at it
    from flash_engine.animate import AnimateRequest, clip_fps

    assert action.meta["fps"] == 12.0
    assert clip_fps(AnimateRequest(image="i.png", out="o"), action) == 12.0
    assert clip_fps(AnimateRequest(image="i.png", out="o", fps=24), action) == 24
    assert clip_fps(AnimateRequest(image="i.png", out="o"), None) == 8
    assert {p.name for p in action.folder.iterdir()} == {"action.toml", "unet.safetensors", "decoder.safetensors"}
    assert set(action.unet_state()) == {n for n, _ in tiny_pipeline.base.unet.named_parameters()
                                        if is_trainable_unet_parameter(n)}
    assert not (tmp_path / ".disc.training").exists()
    settings = AnimationSettings(prompt="a disc is moving.", num_frames=3, steps=2, width=64, height=48, seed=2)
    base_frames = tiny_pipeline(draw_scene(), settings).frames
    slot = ActionSlot(tiny_pipeline)
    slot.apply(action)
    try:
        action_frames = tiny_pipeline(draw_scene(), settings).frames
    finally:
        slot.reset()
    assert not np.array_equal(base_frames, action_frames)


def test_the_learned_fps_is_the_clips_fps_over_the_stride(tmp_path):
    from flash_engine.training.clips import learned_fps

    scan = scan_clips([(make_clips(tmp_path / "c", count=3, frames=10), "a disc")], 3, 2, (64, 64))
    assert [c.fps for c in scan.good] == [12.0, None, 12.0]  # mp4, frame folder, mp4
    assert learned_fps(scan.good, 2) == 6.0
    assert learned_fps([c for c in scan.good if c.fps is None], 2) is None


def test_existing_action_and_interrupted_run_need_a_flag(clips_dir, tmp_path):
    from flash_engine.training.job import TrainRequest, resolve_train, run_train, scan_train_clips

    def request(**kw):
        return TrainRequest(clips=[str(clips_dir)], action="disc", prompt=["a disc is moving."],
                            out=str(tmp_path / "disc"), model="tiny", steps=2, decoder_steps=0, resolution="64",
                            frames=6, stride=1, **kw)

    job = resolve_train(request())
    scan_train_clips(job)  # read now, so the answers below go to the trainer's steps
    from flash_engine.errors import JobCancelled

    with pytest.raises(JobCancelled):  # cancelled after the first step: a checkpoint stays
        run_train(job, progress=lambda *a, **k: None, should_cancel=iter([False, True]).__next__)
    assert not (tmp_path / "disc").exists()
    with pytest.raises(FlashError, match="--resume"):
        resolve_train(request())
    result = run_train(resolve_train(request(resume=True)))
    assert result["steps_done"] == 2
    with pytest.raises(FlashError, match="already exists"):
        resolve_train(request())
    assert resolve_train(request(force=True)).out == tmp_path / "disc"


def test_joint_training_keeps_each_folders_prompt(tmp_path):
    from flash_engine.training.job import TrainRequest, resolve_train, scan_train_clips

    first = make_clips(tmp_path / "wave", count=1, frames=8)
    second = make_clips(tmp_path / "kick", count=1, frames=8)
    job = resolve_train(TrainRequest(clips=[str(first), str(second)], action="both",
                                     prompt=["a person is waving.", "a person is kicking."],
                                     out=str(tmp_path / "both"), model="tiny", resolution="64", frames=6, stride=1))
    assert {(c.path.parent.name, c.prompt) for c in scan_train_clips(job).good} == {
        ("wave", "a person is waving."), ("kick", "a person is kicking.")}
    with pytest.raises(FlashError, match="prompts for 2 clip folders"):
        resolve_train(TrainRequest(clips=[str(first), str(second)], action="x", prompt=["a", "b", "c"],
                                   out=str(tmp_path / "x"), model="tiny"))


def test_kill_9_then_resume_finishes(clips_dir, tmp_path):
    import json
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "disc"
    args = [sys.executable, "-m", "flash_engine", "train", "--clips", str(clips_dir), "--action", "disc",
            "--prompt", "a disc is moving.", "--model", "tiny", "--steps", "10", "--decoder-steps", "0",
            "--resolution", "64", "--frames", "4", "--stride", "1", "--checkpoint-every", "2", "--out", str(out)]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / ".disc.training" / "checkpoint.json"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert checkpoint.exists() and not out.exists()
    stopped_at = json.loads(checkpoint.read_text())["step"]
    assert 2 <= stopped_at < 10
    resumed = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming disc at unet step {stopped_at}" in resumed.stderr
    from flash_engine.actions import read_action

    assert read_action(out).meta["steps_done"] == 10


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_trained_files_follow_the_umask(clips_dir, tmp_path, umask):
    import os
    import stat

    from flash_engine.training.job import TrainRequest, resolve_train, run_train

    def modes(folder):
        return {path.name: stat.S_IMODE(path.stat().st_mode) for path in folder.iterdir()}

    previous = os.umask(umask)
    try:
        request = TrainRequest(clips=[str(clips_dir)], action="disc", prompt=["a disc is moving."],
                               out=str(tmp_path / "disc"), model="tiny", steps=1, decoder_steps=1, resolution="64",
                               frames=6, stride=1)
        action = Path(run_train(resolve_train(request))["action"])
        trainer = trainer_for(clips_dir, tmp_path / "work")
        trainer.save_checkpoint()
    finally:
        os.umask(previous)
    assert stat.S_IMODE(action.stat().st_mode) == 0o777 & ~umask
    assert modes(action) == dict.fromkeys(["action.toml", "unet.safetensors", "decoder.safetensors"],
                                          0o666 & ~umask)
    assert set(modes(tmp_path / "work").values()) == {0o666 & ~umask}  # the checkpoint, while training


def test_resolve_reads_no_clip_and_run_reads_them_before_the_model(tmp_path, monkeypatch):
    """The service checks a train request on the thread that reads requests: only quick checks there."""
    from flash_engine.models import loading
    from flash_engine.training import clips
    from flash_engine.training.job import TrainRequest, resolve_train, run_train

    folder = make_clips(tmp_path / "clips", count=2, frames=8)
    (folder / "empty.mp4").write_bytes(b"")
    request = TrainRequest(clips=[str(folder)], action="disc", prompt=["a disc is moving."], out=str(tmp_path / "d"),
                           model="tiny", steps=1, decoder_steps=0, resolution="64", frames=6, stride=1)
    real_read_video = clips.read_video
    monkeypatch.setattr(clips, "read_video", lambda path: pytest.fail(f"{path.name} read while resolving"))
    lines = []
    job = resolve_train(request, report=lines.append)
    assert job.scan is None and lines == []
    with pytest.raises(FlashError, match="clips folder not found"):  # a missing folder is still caught here
        resolve_train(TrainRequest(clips=[str(folder), str(tmp_path / "gone")], action="disc",
                                   prompt=["a disc is moving."], out=str(tmp_path / "d"), model="tiny"))

    order = []
    monkeypatch.setattr(clips, "read_video", lambda path: order.append(path.name) or real_read_video(path))
    real_load_base = loading.load_base
    monkeypatch.setattr(loading, "load_base", lambda *a, **k: order.append("model") or real_load_base(*a, **k))
    result = run_train(job, log=lines.append)
    assert order == ["clip0.mp4", "empty.mp4", "model"]  # clip1 is a frame folder
    assert lines[:2] == [f"skipped {folder / 'empty.mp4'}: the file is empty (0 bytes)", "using 2 of 3 clips"]
    assert len(result["clips"]) == 2


def test_scanning_stops_between_clips_when_cancelled(tmp_path):
    from flash_engine.errors import JobCancelled

    folder = make_clips(tmp_path / "clips", count=3, frames=8)
    asked = []
    with pytest.raises(JobCancelled):
        scan_clips([(folder, "p")], 6, 1, (64, 64), should_cancel=lambda: asked.append(1) or len(asked) > 1)
    assert len(asked) == 2  # asked before each clip; the second answer stopped it


def test_no_steps_give_no_loss_rather_than_nan():
    from flash_engine.training.trainer import loss_trend

    assert loss_trend([]) == (None, None)
    assert loss_trend([4.0, 2.0]) == (4.0, 2.0)


def test_train_json_output_is_strict_json_without_unet_steps(clips_dir, tmp_path, capsys):
    import json

    from flash_engine.cli import main

    code = main(["train", "--clips", str(clips_dir), "--action", "disc", "--prompt", "a disc is moving.",
                 "--model", "tiny", "--steps", "0", "--decoder-steps", "1", "--resolution", "64", "--frames", "4",
                 "--stride", "1", "--out", str(tmp_path / "action"), "--json"])
    assert code == 0, capsys.readouterr().err
    lines = capsys.readouterr().out.splitlines()
    events = [json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} in {line}")) for line in lines]
    assert events[-1]["type"] == "result" and events[-1]["loss"] == {"unet_first": None, "unet_last": None}


def test_force_keeps_the_old_checkpoint_until_the_job_runs(clips_dir, tmp_path):
    """A queued --force train that is cancelled before it starts must not have cost the old run."""
    from flash_engine.errors import JobCancelled
    from flash_engine.training.job import TrainRequest, resolve_train, run_train, scan_train_clips
    from flash_engine.training.trainer import read_checkpoint_meta

    def request(**kw):
        return TrainRequest(clips=[str(clips_dir)], action="disc", prompt=["a disc is moving."],
                            out=str(tmp_path / "disc"), model="tiny", steps=3, decoder_steps=0, resolution="64",
                            frames=6, stride=1, **kw)

    job = resolve_train(request())
    scan_train_clips(job)
    with pytest.raises(JobCancelled):  # stopped after two steps: the checkpoint says 2
        run_train(job, progress=lambda *a, **k: None, should_cancel=iter([False, False, True]).__next__)
    work = job.work_dir
    assert read_checkpoint_meta(work)["step"] == 2
    forced = resolve_train(request(force=True))
    assert read_checkpoint_meta(work)["step"] == 2  # checking the request removed nothing
    result = run_train(forced)
    assert result["steps_done"] == 3 and not work.exists()  # started over, then finished


def test_training_options_of_the_wrong_type_are_refused_before_anything_loads(clips_dir, tmp_path):
    from flash_engine.training.augment import StrongAugmentConfig
    from flash_engine.training.job import TrainRequest, resolve_train

    def request(options):
        return TrainRequest(clips=[str(clips_dir)], action="disc", prompt=["a disc is moving."], model="tiny",
                            out=str(tmp_path / "disc"), resolution="64", frames=6, stride=1, options=options)

    for bad in ({"learning_rate": "5e-5"}, {"tau": 2.5}, {"train_decoder": 1}, {"learning_rate": float("nan")},
                {"strong": [1, 2]}, {"strong": {"no_such_field": 1}}):
        with pytest.raises(FlashError) as caught:
            resolve_train(request(bad))
        assert caught.value.code == "bad_argument" and "options." in str(caught.value), bad
    job = resolve_train(request({"learning_rate": 1e-4, "tau": 3, "strong": {"blur_kernel": [3, 5]}}))
    assert job.config.learning_rate == 1e-4 and job.config.strong == StrongAugmentConfig(blur_kernel=(3, 5))
