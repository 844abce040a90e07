"""mannequin/train_base.py: the built-in `mannequin` base model's training script, at smoke size.

The rendering tests need the `bpy` wheel (the test extra); the loss tests run anywhere.
"""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from mannequin.base_config import HELD_OUT_ACTIONS, BaseConfig, smoke_config
from mannequin.train_base import (RunError, StopRules, Log, assemble, build_parts, render_clips, run,
                                  tokenize, training_clips, unet_loss, vae_loss, UnetStage)
from tests.conftest import REPO

QUIET = Log(None, quiet=True)


@pytest.fixture(autouse=True)
def one_thread():
    """Toy-sized tensors: one thread is faster than two, and far faster on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """The smoke run's clips, rendered once for the module (4 train + 5 test clips)."""
    pytest.importorskip("bpy")
    folder = tmp_path_factory.mktemp("mannequin-cache")
    render_clips(smoke_config(), folder, workers=1, log=lambda message: None)
    return folder


def figure_frames(count=4, size=64, seed=0) -> torch.Tensor:
    """Synthetic mannequin-like frames in [-1, 1]: a flat background, a floor and a coloured figure."""
    rng = np.random.default_rng(seed)
    frames = np.empty((count, size, size, 3), np.float32)
    for i in range(count):
        frames[i] = rng.uniform(0.2, 0.8, 3)
        frames[i, size * 2 // 3:] = rng.uniform(0.1, 0.4, 3)
        x = 20 + 6 * i
        frames[i, 12:50, x:x + 8] = rng.uniform(0, 1, 3)
        frames[i, 6:14, x + 1:x + 7] = rng.uniform(0, 1, 3)
    return torch.from_numpy(frames).permute(0, 3, 1, 2) * 2 - 1


def model_tensors(folder):
    return {f"{part}/{key}": value for part in ("unet", "vae", "text_encoder", "motion_adapter")
            for file in sorted((folder / part).glob("*.safetensors")) for key, value in load_file(file).items()}


# ---------------------------------------------------------------- the chain, end to end

@pytest.mark.slow
def test_smoke_cli_writes_a_model_that_load_base_loads_and_the_pipeline_animates(cache, tmp_path):
    from PIL import Image

    from flash_engine.models.loading import load_base
    from flash_engine.pipeline import AnimationSettings, FlashPipeline

    out = tmp_path / "model"
    done = subprocess.run([sys.executable, "-m", "mannequin.train_base", "--smoke", "--out", str(out),
                           "--work", str(tmp_path / "work"), "--cache", str(cache), "--workers", "1", "--threads", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[unet] step 6/6" in done.stderr and "eta" in done.stderr  # progress lines with loss and ETA

    base = load_base(out)
    assert base.vae.config.scaling_factor != pytest.approx(0.18215)  # measured, not SD's
    assert all(p.dtype == torch.float32 for p in base.unet.parameters())  # fp16 files, loaded as asked
    card = json.loads((out / "mannequin.json").read_text())
    assert card["held_out_actions"] == list(HELD_OUT_ACTIONS)
    reference = Image.open(out / card["demo"]["image"])
    assert reference.size == (64, 64)
    result = FlashPipeline(base)(reference, AnimationSettings(prompt=card["demo"]["prompt"], num_frames=8,
                                                             steps=2, width=64, height=64, seed=1))
    assert result.frames.shape == (8, 64, 64, 3) and result.frames.dtype == np.uint8

    record = json.loads((out / "training.json").read_text())
    assert record["generator"] == "mannequin.train_base"
    assert record["commands"][0][:3] == ["python", "-m", "mannequin.train_base"]
    assert {"vae", "unet", "data", "latents", "export", "total"} <= set(record["wall_s"])
    assert record["machine"]["cpu_count"] >= 1 and record["machine"]["torch"]
    losses = json.loads((out / "losses.json").read_text())
    assert losses["vae"]["steps_done"] == 6 and losses["unet"]["steps_done"] == 6
    assert set(losses["eval"]) >= {"train_actions", "held_out_actions", "per_action"}

    # The decoder tune: more decoder steps from the VAE stage's checkpoint, written into the
    # export with the encoder (so the UNet's latents) untouched.
    def tune(*args):
        return subprocess.run([sys.executable, "-m", "mannequin.tune_decoder", "--work", str(tmp_path / "tune"),
                               "--cache", str(cache), *args], cwd=REPO, capture_output=True, text=True, timeout=120)

    before = model_tensors(out)
    done = tune("--from-checkpoint", str(tmp_path / "work" / "vae"), "--steps", "3")
    assert done.returncode == 0, done.stderr[-3000:]
    again = tune("--from-checkpoint", str(tmp_path / "work" / "vae"), "--steps", "3")
    assert again.returncode != 0 and "--resume" in again.stderr  # a finished tune is not silently redone
    done = tune("--apply", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    after = model_tensors(out)
    tuned = [k for k in before if k.startswith(("vae/decoder.", "vae/post_quant_conv."))]
    assert tuned and any(not torch.equal(before[k], after[k]) for k in tuned)
    assert all(torch.equal(before[k], after[k]) for k in before if k not in tuned)  # encoder, UNet: as they were
    assert json.loads((out / "training.json").read_text())["decoder_tune"]["step"] == 3
    load_base(out)  # still a model
    other = tmp_path / "other"
    shutil.copytree(out, other)
    first = next(k for k in sorted(before) if k.startswith("vae/encoder."))
    file = next((other / "vae").glob("*.safetensors"))
    tensors = load_file(file)
    tensors[first.removeprefix("vae/")] = tensors[first.removeprefix("vae/")] + 1
    save_file(tensors, file)
    refused = tune("--apply", str(other))
    assert refused.returncode != 0 and "was not exported from the VAE this tune started from" in refused.stderr

    # A second tune goes on from the first one's checkpoint, with noise on the latents.
    def tune2(*args):
        return subprocess.run([sys.executable, "-m", "mannequin.tune_decoder", "--work", str(tmp_path / "tune2"),
                               "--cache", str(cache), *args], cwd=REPO, capture_output=True, text=True, timeout=120)

    bad = tune2("--from-checkpoint", str(tmp_path / "tune" / "decoder"), "--steps", "2", "--latent-noise", "-1")
    assert bad.returncode != 0 and "--latent-noise must be 0 or more" in bad.stderr
    done = tune2("--from-checkpoint", str(tmp_path / "tune" / "decoder"), "--steps", "2", "--latent-noise", "0.5")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "tune2" / "decoder_tune.json").read_text())["settings"]["latent_noise"] == 0.5
    done = tune2("--apply", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    noisy = model_tensors(out)
    assert any(not torch.equal(after[k], noisy[k]) for k in tuned)
    assert all(torch.equal(after[k], noisy[k]) for k in after if k not in tuned)

    # A third goes on from the exported model itself (a new machine has no run state), adversarially.
    done = subprocess.run([sys.executable, "-m", "mannequin.tune_decoder", "--work", str(tmp_path / "tune3"),
                           "--cache", str(cache), "--from-checkpoint", str(out), "--steps", "2",
                           "--adversarial", "0.5", "--adversarial-after", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "tune3" / "decoder_tune.json").read_text())
    assert record["settings"]["adversarial"] == 0.5 and record["from_step"] == "export"
    done = subprocess.run([sys.executable, "-m", "mannequin.tune_decoder", "--work", str(tmp_path / "tune3"),
                           "--apply", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    sharp = model_tensors(out)
    assert any(not torch.equal(noisy[k], sharp[k]) for k in tuned)
    assert all(torch.equal(noisy[k], sharp[k]) for k in noisy if k not in tuned)


def test_a_tune_records_the_settings_added_later_only_when_they_are_on():
    """A checkpoint of a tune from before latent noise and the adversarial term records neither:
    the same settings today must match it (resume compares these dicts), and turning either on
    must not."""
    from mannequin.tune_decoder import TuneSettings

    first_tunes = {"steps": 3000, "lr": 3e-4, "warmup": 50, "seed": 0}
    assert TuneSettings().saved_as() == first_tunes
    assert TuneSettings(latent_noise=0.4).saved_as() == {**first_tunes, "latent_noise": 0.4}
    assert TuneSettings(adversarial=0.5, adversarial_after=7).saved_as() == {
        **first_tunes, "adversarial": 0.5, "adversarial_after": 7}
    assert TuneSettings(adversarial_after=7).saved_as() == first_tunes  # no term: its start is moot


def test_the_adversarial_decoder_tune_resumes_bit_for_bit_and_keeps_the_encoder():
    """4 steps straight == 2 steps, a checkpoint, a new stage restored from it, 2 more: the
    decoder, the discriminator and its optimizer all travel (the adversarial term is on from step 1)."""
    from mannequin.tune_decoder import DecoderStage, TuneSettings, encoder_state

    config = smoke_config()
    frames = ((figure_frames(8).permute(0, 2, 3, 1).numpy() + 1) * 127.5).astype(np.uint8).reshape(2, 4, 64, 64, 3)
    settings = TuneSettings(steps=4, adversarial=0.5, adversarial_after=1)

    def stage():
        torch.manual_seed(0)
        return DecoderStage(config, build_parts(config)["vae"], frames, settings)

    straight = stage()
    start_encoder = encoder_state(straight.vae)
    for _ in range(4):
        straight.train_step()
    first = stage()
    for _ in range(2):
        first.train_step()
    tensors, meta = first.checkpoint_tensors()
    tensors = {k: v.clone() for k, v in tensors.items()}
    resumed = stage()
    resumed.restore({**meta, "step": first.step, "losses": first.losses, "elapsed_s": 0.0}, tensors)
    for _ in range(2):
        resumed.train_step()
    for ours, theirs in ((resumed.params, straight.params), (resumed.disc_params, straight.disc_params)):
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert resumed.disc_losses == straight.disc_losses and len(straight.disc_losses) == 4
    assert any(not torch.equal(straight.params[k], stage().params[k]) for k in straight.params)  # it trained
    assert all(torch.equal(v, start_encoder[k]) for k, v in encoder_state(straight.vae).items())


def test_the_adversarial_term_changes_the_decoders_step_only_after_its_start():
    from mannequin.tune_decoder import DecoderStage, TuneSettings

    config = smoke_config()
    frames = ((figure_frames(8).permute(0, 2, 3, 1).numpy() + 1) * 127.5).astype(np.uint8).reshape(2, 4, 64, 64, 3)

    def decoder_after(steps, **settings):
        torch.manual_seed(0)
        stage = DecoderStage(config, build_parts(config)["vae"], frames, TuneSettings(steps=4, **settings))
        for _ in range(steps):
            stage.train_step()
        return stage.params

    plain = decoder_after(2)
    late = decoder_after(2, adversarial=0.5, adversarial_after=2)  # the term would enter at step 3
    early = decoder_after(2, adversarial=0.5, adversarial_after=0)
    assert all(torch.equal(plain[k], late[k]) for k in plain)
    assert any(not torch.equal(plain[k], early[k]) for k in plain)


# ---------------------------------------------------------------- each stage learns

def test_vae_stage_lowers_its_reconstruction_loss_on_a_fixed_batch():
    config = smoke_config()
    vae = build_parts(config)["vae"].train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=2e-3)
    pixels = figure_frames()
    losses = []
    for _ in range(15):
        loss, _ = vae_loss(vae, pixels, torch.Generator().manual_seed(0), config)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.6 * losses[0], losses


def test_vae_loss_adds_the_latent_noise_it_is_given_and_none_at_zero():
    config = smoke_config()
    torch.manual_seed(0)
    vae = build_parts(config)["vae"]
    pixels = figure_frames(2)

    def loss(std):
        with torch.no_grad():
            return float(vae_loss(vae, pixels, torch.Generator().manual_seed(3), config, extra_noise_std=std)[0])

    plain = loss(None)
    assert loss(torch.zeros(2)) == pytest.approx(plain, rel=1e-6)
    assert abs(loss(torch.full((2,), 5.0)) - plain) > 1e-3  # an untrained decoder barely follows its input


def test_unet_stage_lowers_its_loss_on_a_fixed_batch():
    config = smoke_config()
    base = assemble(build_parts(config))
    base.vae.register_to_config(scaling_factor=1.0)
    latents = torch.randn(1, 1, 12, config.latent_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    stage = UnetStage(config, base, latents, torch.zeros_like(latents), np.zeros(1, dtype=np.int64))
    batch = stage.batch()  # one fixed batch: latents, noise, timesteps, prompts
    optimizer = torch.optim.AdamW(list(stage.params.values()), lr=2e-3)
    losses = []
    for _ in range(10):
        loss = unet_loss(stage.unet, stage.text_encoder, stage.scheduler, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0], losses


def test_unet_stage_trains_as_flash_samples_clean_frame_0_cross_frame_attention():
    from flash_engine.models.attention import CrossFrameAttnProcessor

    config = smoke_config()
    base = assemble(build_parts(config))
    processors = base.unet.attn_processors
    assert any(isinstance(p, CrossFrameAttnProcessor) for p in processors.values())
    latents = torch.randn(2, 1, 6, config.latent_channels, 8, 8)
    stage = UnetStage(config, base, latents, torch.zeros_like(latents), np.zeros(2, dtype=np.int64))
    batch = stage.batch()
    with torch.no_grad():
        loss = unet_loss(stage.unet, stage.text_encoder, stage.scheduler, batch)
        # frame 0 is given clean and left out of the loss: its noise cannot matter
        other = dict(batch, noise=batch["noise"].clone())
        other["noise"][:, :, 0] = torch.randn_like(other["noise"][:, :, 0]) * 5
        assert float(unet_loss(stage.unet, stage.text_encoder, stage.scheduler, other)) == float(loss)
        # ...but the clean frame 0 does condition the other frames
        shifted = dict(batch, latents=batch["latents"].clone())
        shifted["latents"][:, :, 0] += 1
        assert float(unet_loss(stage.unet, stage.text_encoder, stage.scheduler, shifted)) != float(loss)


# ---------------------------------------------------------------- resume

class Crash(Exception):
    pass


def test_interrupted_and_resumed_runs_reach_the_same_weights_as_an_uninterrupted_one(cache, tmp_path):
    config = smoke_config()
    common = dict(cache=cache, threads=1, workers=1, log=QUIET)
    straight = run(config, tmp_path / "a", work=tmp_path / "wa", **common)
    assert straight.status == "done"

    # 1. a crash at VAE step 4 (like kill -9: no checkpoint at the crash, the one at step 2 stands)
    crash_at = StopRules()

    def crash_after_3_steps():
        if crash_at.done_now == 3:
            raise Crash()
        return False

    crash_at.should_stop = crash_after_3_steps
    with pytest.raises(Crash):
        run(config, tmp_path / "b", work=tmp_path / "wb", stop=crash_at, **common)
    assert json.loads((tmp_path / "wb" / "vae" / "checkpoint.json").read_text())["step"] == 2
    with pytest.raises(RunError, match="--resume"):
        run(config, tmp_path / "b", work=tmp_path / "wb", **common)
    with pytest.raises(RunError, match="different configuration"):
        run(config.replace(unet_steps=7), tmp_path / "b", work=tmp_path / "wb", resume=True, **common)
    # 2. a clean stop in the middle of the UNet stage (Ctrl-C / SIGTERM / --stop-after)
    stopped = run(config, tmp_path / "b", work=tmp_path / "wb", resume=True, stop=StopRules(stop_after=7), **common)
    assert stopped.status == "stopped" and not (tmp_path / "b").exists()
    assert json.loads((tmp_path / "wb" / "unet" / "checkpoint.json").read_text())["step"] == 3
    # 3. the rest
    resumed = run(config, tmp_path / "b", work=tmp_path / "wb", resume=True, **common)
    assert resumed.status == "done"

    a, b = model_tensors(tmp_path / "a"), model_tensors(tmp_path / "b")
    assert a.keys() == b.keys() and len(a) > 50
    assert all(torch.equal(a[key], b[key]) for key in a)
    losses_a = json.loads((tmp_path / "a" / "losses.json").read_text())
    losses_b = json.loads((tmp_path / "b" / "losses.json").read_text())
    assert losses_a == losses_b
    record = json.loads((tmp_path / "b" / "training.json").read_text())
    assert len(record["sessions"]) == 3 and record["stages"]["vae"]["steps_done"] == 6


@pytest.mark.slow
def test_a_stage_stopped_by_the_time_budget_continues_when_a_later_session_raises_it(cache, tmp_path):
    config = smoke_config()
    common = dict(cache=cache, threads=1, workers=1, log=QUIET)
    straight = run(config, tmp_path / "a", work=tmp_path / "wa", **common)
    no_time = 1e-6  # minutes: every stage is out of time after at most its first step

    vae_only = run(config, tmp_path / "b", work=tmp_path / "wb", stage="vae", budget_minutes=no_time, **common)
    assert vae_only.record["stages"]["vae"]["status"] == "budget"
    assert vae_only.record["stages"]["vae"]["steps_done"] < config.vae_steps
    run(config, tmp_path / "b", work=tmp_path / "wb", stage="vae", resume=True, **common)
    vae = json.loads((tmp_path / "wb" / "run.json").read_text())["stages"]["vae"]
    assert vae["status"] == "done" and vae["steps_done"] == vae["steps_planned"] == config.vae_steps

    short = run(config, tmp_path / "b", work=tmp_path / "wb", resume=True, budget_minutes=no_time, **common)
    assert short.status == "done" and short.record["stages"]["unet"]["status"] == "budget"
    assert short.record["stages"]["unet"]["steps_done"] < config.unet_steps
    untrained_unet = model_tensors(tmp_path / "b")
    longer = run(config, tmp_path / "b", work=tmp_path / "wb", resume=True, **common)
    assert longer.status == "done" and longer.record["stages"]["unet"]["status"] == "done"
    assert longer.record["stages"]["unet"]["steps_done"] == config.unet_steps

    a, b = model_tensors(straight.out), model_tensors(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    assert not all(torch.equal(untrained_unet[key], b[key]) for key in b if key.startswith("unet/"))


def test_a_budget_stopped_vae_does_not_continue_once_the_unet_has_trained_on_its_latents(cache, tmp_path):
    config = smoke_config()
    common = dict(cache=cache, threads=1, workers=1, log=QUIET)
    first = run(config, tmp_path / "b", work=tmp_path / "wb", budget_minutes=1e-6, **common)
    assert first.record["stages"]["vae"]["status"] == "budget"
    again = run(config, tmp_path / "b", work=tmp_path / "wb", resume=True, **common)
    stages = again.record["stages"]
    assert stages["vae"]["steps_done"] < config.vae_steps and stages["vae"]["status"] == "budget"
    assert stages["unet"]["status"] == "done" and stages["unet"]["steps_done"] == config.unet_steps


def test_restart_removes_only_what_a_run_of_this_trainer_wrote(tmp_path):
    from mannequin.train_base import GENERATOR, LATENTS_FILE, RUN_JSON, discard_run

    work = tmp_path / "work"
    (work / "vae").mkdir(parents=True)
    (work / "vae" / "checkpoint.json").write_text("{}")
    for name in (RUN_JSON, "train.log", LATENTS_FILE, f".{LATENTS_FILE}.tmp-12"):
        (work / name).write_text("x")
    (work / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="holds a run of mannequin.train_control"):
        discard_run(work, {"generator": "mannequin.train_control"}, GENERATOR, ("vae", "unet"))
    assert (work / "vae" / "checkpoint.json").exists() and (work / RUN_JSON).exists()
    elsewhere = tmp_path / "elsewhere"  # a stage folder that is a link: the link goes, not its target
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    (work / "unet").symlink_to(elsewhere, target_is_directory=True)
    discard_run(work, {"generator": GENERATOR}, GENERATOR, ("vae", "unet"))
    assert sorted(p.name for p in work.iterdir()) == ["notes.txt"]
    assert (elsewhere / "keep.txt").read_text() == "mine"


# ---------------------------------------------------------------- held-out actions

def test_held_out_actions_never_appear_in_the_training_data(cache):
    from mannequin.generate import generate

    default = BaseConfig()
    assert set(default.train_actions).isdisjoint(default.held_out) and len(default.train_actions) == 8
    with pytest.raises(ValueError, match="held-out"):
        BaseConfig(actions=("jump", "kick")).validate()

    # the cache holds a held-out action's *train* clips too (as few-shot training will make them):
    config = smoke_config()
    generate(cache, ["kick"], 1, "train", config.data_seed, config.size, config.frames, "png", 1, None)
    assert (cache / "train" / "kick").is_dir()
    clips = training_clips(config, cache)
    assert set(clips.actions) == set(config.train_actions)
    assert all(path.parent.name in config.train_actions for path in clips.paths)
    for held in config.held_out:
        assert all(held not in str(path) for path in clips.paths)
    # ... and the prompts the UNet stage trains on are the training actions' (+ the empty one)
    base = assemble(build_parts(config))
    latents = torch.zeros(len(clips.paths), 1, 4, config.latent_channels, 8, 8)
    stage = UnetStage(config, base, latents, latents, clips.action_ids(config.train_actions))
    expected = tokenize(base.tokenizer, ["a person is waving an arm.", "a person is jumping.", ""])
    assert torch.equal(stage.token_ids, expected)
