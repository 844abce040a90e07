"""mannequin/train_control.py: the built-in base's pose ControlNet trainer, at smoke size, on the
smoke base (`mannequin.train_base --smoke`). Rendering needs the `bpy` wheel (the test extra)."""

import dataclasses
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from mannequin import train_base as tb
from mannequin import train_control as tc
from mannequin.base_config import smoke_config
from mannequin.control_config import smoke_control_config
from tests.conftest import REPO

QUIET = tb.Log(None, quiet=True)


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke base, trained once for the module on its own clip cache: (base folder, cache)."""
    pytest.importorskip("bpy")
    root = tmp_path_factory.mktemp("control")
    torch.set_num_threads(1)
    result = tb.run(smoke_config(), root / "base", work=root / "base-work", cache=root / "cache", threads=1, workers=1,
                    log=QUIET)
    assert result.status == "done"
    tb.render_clips(smoke_config(), root / "cache", 1, lambda message: None, keypoints=True)  # as train_control does
    return root / "base", root / "cache"


@pytest.fixture(scope="module")
def other_base(smoke, tmp_path_factory):
    """The same base with one UNet weight changed: the same shape, another identity."""
    folder = tmp_path_factory.mktemp("other") / "base"
    shutil.copytree(smoke[0], folder)
    file = next((folder / "unet").glob("*.safetensors"))
    tensors = load_file(file)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1
    save_file(tensors, file)
    return folder


def weights(folder):
    return load_file(folder / "diffusion_pytorch_model.safetensors")


def run(smoke, out, work, **options):
    return tc.run(smoke[0], out, control=options.pop("control", smoke_control_config()), work=work, cache=smoke[1],
                  threads=1, workers=1, budget_minutes=options.pop("budget_minutes", 10.0), log=QUIET, **options)


# ---------------------------------------------------------------- the CLI, and the engine using its output

def test_smoke_cli_writes_a_controlnet_that_the_engine_uses_for_pose_with_no_other_option(smoke, other_base,
                                                                                           tmp_path, monkeypatch):
    from PIL import Image

    from flash_engine.animate import resolve, run_animate
    from flash_engine.errors import FlashError
    from flash_engine.models import loading
    from flash_engine.models.controlnet import (check_controlnet_fits, check_controlnet_folder, find_controlnet,
                                                load_controlnet)
    from flash_engine.pipeline import AnimationSettings, Control, FlashPipeline
    from flash_engine.requests import AnimateRequest

    model = tmp_path / "model"  # the base as shipped, its ControlNet written inside it
    shutil.copytree(smoke[0], model)
    out = model / "controlnet_pose"
    done = subprocess.run([sys.executable, "-m", "mannequin.train_control", "--smoke", "--base", str(model), "--out",
                           str(out), "--work", str(tmp_path / "work"), "--cache", str(smoke[1]), "--threads", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[control] step 6/6" in done.stderr and "eta" in done.stderr

    tensors = weights(out)
    assert tensors and all(t.dtype == torch.float16 for t in tensors.values())  # fp16, as the base ships
    assert any(k.startswith("controlnet_cond_embedding.") for k in tensors)
    record = json.loads((out / "training.json").read_text())
    assert record["generator"] == "mannequin.train_control"
    assert record["commands"][0][:3] == ["python", "-m", "mannequin.train_control"]
    assert record["steps"] == {"done": 6, "planned": 6} and record["loss"]["steps_done"] == 6
    assert {"data", "latents", "control", "export", "total"} <= set(record["wall_s"])
    assert record["machine"]["cpu_count"] >= 1 and record["data"]["actions"] == ["arm_wave", "jump"]
    assert set(record["eval"]) >= {"train_actions", "held_out_actions"}
    made_for = json.loads((out / "flash_controlnet.json").read_text())
    assert made_for["base_identity"] == loading.base_identity(model)  # the ControlNet did not change it
    assert made_for["base_latent_identity"] == loading.base_latent_identity(model)

    # accepted for its base, refused for another of the same shape (identity), in one line
    config = check_controlnet_folder(out, "pose")
    check_controlnet_fits(out, config, model, 4, "pose")
    with pytest.raises(FlashError) as err:
        check_controlnet_fits(out, config, other_base, 4, "pose")
    assert err.value.code == "base_mismatch" and "\n" not in str(err.value) and "--pose-controlnet" in str(err.value)

    # `--pose FILE` on the model, nothing else: its own controlnet_pose/ steers the take
    clip = smoke[1] / "test" / "jump" / "jump_00000"
    pose_file = clip.parent / ".jump_00000.pose.json"  # the ground truth the run wrote beside the clip
    request = AnimateRequest(model=str(model), image=str(clip / "frame_0001.png"), pose=str(pose_file),
                             prompt="a person is jumping.", frames=16, steps=2, seed=1, out=str(tmp_path / "take"))
    job = resolve(request)
    assert job.controls[0].controlnet == out.resolve() and (job.width, job.height) == (64, 64)
    with pytest.raises(FlashError, match="was trained with base model"):  # named for another base: refused
        resolve(dataclasses.replace(request, model=str(other_base), pose_controlnet=str(out)))
    base = loading.load_base(model)
    pipeline = FlashPipeline(base)
    metadata = run_animate(job, pipeline)
    assert metadata["control"][0]["controlnet"]["folder"] == str(out.resolve())
    assert len(list((tmp_path / "take").glob("*.png"))) == 16
    # the same lookup for the built-in name (`--model mannequin` finds MANNEQUIN_DIR/controlnet_pose)
    monkeypatch.setattr(loading, "MANNEQUIN_DIR", model)
    assert find_controlnet("pose", None, "mannequin") == out
    check_controlnet_fits(out, config, "mannequin", 4, "pose")

    # and it steers: the same take with and without it differ
    reference = Image.open(clip / "frame_0001.png")
    settings = AnimationSettings(prompt="a person is jumping.", num_frames=16, steps=2, width=64, height=64, seed=1)
    condition = torch.from_numpy(job.controls[0].condition(64, 64)).permute(0, 3, 1, 2).contiguous()
    steered = pipeline(reference, settings, controls=[Control(pipeline.place(load_controlnet(out)), condition)])
    plain = pipeline(reference, settings)
    assert not torch.equal(steered.latents, plain.latents)
    assert torch.equal(steered.latents[:, :, 0], plain.latents[:, :, 0])  # frame 0 stays the reference's


# ---------------------------------------------------------------- resume

class Crash(Exception):
    pass


def test_interrupted_and_resumed_runs_equal_an_uninterrupted_one_bit_for_bit(smoke, other_base, tmp_path):
    straight = run(smoke, tmp_path / "a", tmp_path / "wa")
    assert straight.status == "done"

    crash = tb.StopRules()

    def crash_after_3_steps():  # like kill -9: no checkpoint at the crash; step 2's stands
        if crash.done_now == 3:
            raise Crash()
        return False

    crash.should_stop = crash_after_3_steps
    with pytest.raises(Crash):
        run(smoke, tmp_path / "b", tmp_path / "wb", stop=crash)
    assert json.loads((tmp_path / "wb" / "control" / "checkpoint.json").read_text())["step"] == 2
    with pytest.raises(tb.RunError, match="--resume"):
        run(smoke, tmp_path / "b", tmp_path / "wb")
    with pytest.raises(tb.RunError, match="different configuration"):
        run(smoke, tmp_path / "b", tmp_path / "wb", resume=True, control=smoke_control_config(lr=5e-4))
    with pytest.raises(tb.RunError, match="another base"):
        tc.run(other_base, tmp_path / "b", control=smoke_control_config(), work=tmp_path / "wb", cache=smoke[1],
               resume=True, budget_minutes=10.0, log=QUIET)
    stopped = run(smoke, tmp_path / "b", tmp_path / "wb", resume=True, stop=tb.StopRules(stop_after=1))
    assert stopped.status == "stopped" and not (tmp_path / "b").exists()  # nothing that looks complete
    resumed = run(smoke, tmp_path / "b", tmp_path / "wb", resume=True)
    assert resumed.status == "done"

    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert a.keys() == b.keys() and len(a) > 20 and all(torch.equal(a[k], b[k]) for k in a)
    record_a, record_b = (json.loads((tmp_path / name / "training.json").read_text()) for name in "ab")
    assert record_a["loss"] == record_b["loss"] and record_a["eval"] == record_b["eval"]
    assert len(record_b["sessions"]) == 3 and record_b["stages"]["control"]["steps_done"] == 6
    # the trained ControlNet differs from the one it started as (zero convolutions out)
    assert any(float(a[k].abs().max()) > 0 for k in a if k.startswith("controlnet_down_blocks."))


def test_the_time_budget_stops_the_stage_and_a_larger_one_continues_it(smoke, tmp_path):
    short = run(smoke, tmp_path / "c", tmp_path / "wc", budget_minutes=1e-6)
    stage = short.record["stages"]["control"]
    assert short.status == "done" and stage["status"] == "budget" and stage["steps_done"] < 6
    longer = run(smoke, tmp_path / "c", tmp_path / "wc", resume=True)
    assert longer.record["stages"]["control"]["status"] == "done"
    assert json.loads((tmp_path / "c" / "training.json").read_text())["steps"]["done"] == 6


# ---------------------------------------------------------------- what it trains on

def test_held_out_actions_never_reach_the_controlnet(smoke, tmp_path):
    from mannequin.generate import generate

    config = smoke_config()
    generate(smoke[1], ["kick"], 1, "train", config.data_seed, config.size, config.frames, "png", 1, None,
             keypoints=True)  # a held-out action's train clips in the same cache
    info = tc.read_base(smoke[0])
    clips = tb.training_clips(info.config, smoke[1])
    tc.check_no_held_out(info.config, clips)
    assert set(clips.actions) == {"arm_wave", "jump"} and all("kick" not in str(p) for p in clips.paths)
    leaked = tb.ClipSet(paths=clips.paths + [smoke[1] / "train" / "kick" / "kick_00000"],
                        actions=clips.actions + ["kick"])
    with pytest.raises(tb.RunError, match="held-out"):
        tc.check_no_held_out(info.config, leaked)
    # the prompts it trains with are the base's training actions' (+ "")
    from flash_engine.models.loading import load_base

    base = load_base(smoke[0])
    latents = torch.zeros(len(clips.paths), 2, 16, 4, 16, 16)
    poses = tc.clip_poses(clips, info.config, 2)
    net = tc.new_controlnet(smoke[0] / "unet", smoke_control_config(), 4, tc.sample_condition(poses, 64))
    stage = tc.ControlStage(smoke_control_config(), info.config, base, net, latents, latents, poses,
                            clips.action_ids(info.config.train_actions))
    assert torch.equal(stage.token_ids, tb.tokenize(base.tokenizer, ["a person is waving an arm.",
                                                                     "a person is jumping.", ""]))
    # a base whose record trains a held-out action is refused
    bad = tmp_path / "bad"
    shutil.copytree(smoke[0], bad)
    record = json.loads((bad / "training.json").read_text())
    record["config"]["actions"] = ["arm_wave", "kick"]
    (bad / "training.json").write_text(json.dumps(record))
    with pytest.raises(tb.RunError, match="held-out"):
        tc.read_base(bad)


def test_the_stage_trains_only_the_controlnet_through_the_pipelines_residual_path(smoke):
    from flash_engine.models.loading import load_base

    info = tc.read_base(smoke[0])
    base = load_base(smoke[0])
    clips = tb.training_clips(info.config, smoke[1])
    poses = tc.clip_poses(clips, info.config, 2)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(len(clips.paths), 2, 16, 4, 16, 16, generator=g)
    control = smoke_control_config(lr=1e-2, warmup=1)  # steps large enough to see after 3 of them
    net = tc.new_controlnet(smoke[0] / "unet", control, 4, tc.sample_condition(poses, 64))
    stage = tc.ControlStage(control, info.config, base, net, latents, latents.abs() * 0.1, poses,
                            clips.action_ids(info.config.train_actions))
    batch = stage.batch()
    assert batch["condition"].shape == (2 * 16, 3, 64, 64)
    drawn = tc.pose_maps(poses[batch["clips"].numpy(), batch["flips"].numpy()], 64)
    assert torch.equal(batch["condition"], drawn) and torch.equal(stage.batch()["condition"][:0], drawn[:0])
    with torch.no_grad():
        # from_unet's zero convolutions: an untrained ControlNet adds nothing to the base's loss
        assert float(tc.control_loss(base, net, batch)) == float(tb.unet_loss(base.unet, base.text_encoder,
                                                                              base.scheduler, batch))
        # frame 0 is given clean and left out of the loss, as the pipeline samples
        other = dict(batch, noise=batch["noise"].clone())
        other["noise"][:, :, 0] += 5
        assert float(tc.control_loss(base, net, other)) == float(tc.control_loss(base, net, batch))
    frozen = {k: v.clone() for k, v in base.unet.state_dict().items()}
    before = {k: v.detach().clone() for k, v in net.named_parameters()}
    for _ in range(3):
        stage.train_step()
    assert all(torch.equal(frozen[k], v) for k, v in base.unet.state_dict().items())  # the base stays frozen
    assert any(not torch.equal(before[k], v) for k, v in net.named_parameters())
    with torch.no_grad():  # now the pose changes the residuals (the loss, after 3 steps, only in its 7th digit)
        x, t = torch.randn(32, 4, 16, 16, generator=g), torch.full((32,), 500)
        text = base.text_encoder(batch["token_ids"])[0].repeat_interleave(16, 0)
        posed = net(x, t, encoder_hidden_states=text, controlnet_cond=batch["condition"], return_dict=False)[1]
        blank = net(x, t, encoder_hidden_states=text, controlnet_cond=batch["condition"] * 0, return_dict=False)[1]
        assert float((posed - blank).abs().max()) > 1e-5


def test_pose_maps_are_the_engines_and_mirrored_poses_are_the_mirrored_scenes(smoke):
    from flash_engine.controls import TakeControl
    from flash_engine.pose.format import read_pose_file

    from mannequin.camera import openpose_keypoints
    from mannequin.generate import clip_spec, keypoints_path

    info = tc.read_base(smoke[0])
    clips = tb.training_clips(info.config, smoke[1])
    poses = tc.clip_poses(clips, info.config, 2)
    assert poses.shape == (4, 2, 16, 18, 3)
    # the condition a training clip gets is what `animate --pose` draws for its pose file
    take = TakeControl("pose", smoke[0], "", 1.0, 0.0, 1.0, {}, pose=read_pose_file(keypoints_path(clips.paths[0])))
    engine = torch.from_numpy(take.condition(64, 64)).permute(0, 3, 1, 2)
    assert torch.equal(tc.pose_maps(poses[0, 0], 64), engine) and float(engine.max()) > 0.5
    # mirroring the picture = the mirrored scene: camera azimuth and figure x negated, motion mirrored
    spec = clip_spec("punch", 3, "train", 0, 64, 16)
    mirrored_scene = dataclasses.replace(spec, camera_azimuth=-spec.camera_azimuth, mirror=not spec.mirror,
                                         position=(-spec.position[0], spec.position[1]))
    expected = openpose_keypoints(mirrored_scene)
    assert np.allclose(tc.mirror_poses(openpose_keypoints(spec)), expected, atol=1e-6)
    assert not np.allclose(openpose_keypoints(spec)[..., :2], expected[..., :2], atol=1e-2)


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("make, message", [
    (lambda tmp: tmp / "missing", "base model folder not found"),
    (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", "not a complete model folder"),
    (lambda tmp: _no_record(tmp), "no mannequin.train_base training record"),
])
def test_a_bad_base_is_a_one_line_error_before_anything_loads(tmp_path, capsys, monkeypatch, make, message):
    from flash_engine.models import loading

    def loaded(*_args, **_kwargs):
        raise AssertionError("a model was loaded before --base was checked")

    monkeypatch.setattr(loading, "load_base", loaded)
    base = make(tmp_path)
    code = tc.main(["--base", str(base), "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err and "--base" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()


def _no_record(tmp):
    """A complete diffusers model folder that train_base did not write (no training.json)."""
    from flash_engine.models.loading import save_folder
    from flash_engine.models.tiny import tiny_parts

    return save_folder(tiny_parts(), tmp / "sd-like")


def test_the_base_runs_latent_cache_is_reused_only_when_it_matches_the_shipped_vae(smoke, tmp_path):
    from flash_engine.models.loading import load_base

    info = tc.read_base(smoke[0])
    base = load_base(smoke[0])
    clips = tb.training_clips(info.config, smoke[1])
    path = smoke[0].parent / "base-work" / tb.LATENTS_FILE  # what train_base encoded (fp32 VAE checkpoint)
    mean, std = tc.reused_latents(path, base, clips, info.config, 2, QUIET)
    again, _ = tb.encode_latents(base.vae, tb.load_frames(clips, info.config.frames).frames, 2)  # fp16-shipped VAE
    assert mean.shape == again.shape and torch.allclose(mean, again, atol=0.05 * float(again.std()))
    tensors = load_file(path)
    save_file({"mean": tensors["mean"] * 1.5, "std": tensors["std"]}, tmp_path / "other.safetensors")
    with pytest.raises(tb.RunError, match="does not match this base's VAE"):
        tc.reused_latents(tmp_path / "other.safetensors", base, clips, info.config, 2, QUIET)
    save_file({"mean": tensors["mean"][:1], "std": tensors["std"][:1]}, tmp_path / "short.safetensors")
    with pytest.raises(tb.RunError, match="not the latent cache of these clips"):
        tc.reused_latents(tmp_path / "short.safetensors", base, clips, info.config, 2, QUIET)


def test_the_probe_times_steps_and_plans_the_steps_that_fit_the_budget(smoke, tmp_path):
    report_file = tmp_path / "probe.json"
    assert tc.main(["--probe", "--base", str(smoke[0]), "--smoke", "--probe-steps", "3", "--minutes-budget", "3",
                    "--probe-json", str(report_file), "--quiet"]) == 0
    report = json.loads(report_file.read_text())
    assert report["step_s"] > 0 and report["threads"] == 1 and report["batch_clips"] == 2
    fixed_s = 60 * sum(report["plan_minutes"][k] for k in ("keypoints", "latents", "eval_export"))
    rounding_s = 3 * 0.05 * 60  # three figures rounded to 0.1 min
    planned = (0.95 * 3 * 60 - fixed_s) / report["step_s"]
    assert abs(report["steps_that_fit"] - planned) <= rounding_s / report["step_s"] + 1
    assert report["latents_reused_steps_that_fit"] >= report["steps_that_fit"]


def test_the_condition_embedding_starts_with_features_set_by_the_pose_not_its_biases(smoke):
    import torch.nn.functional as F

    info = tc.read_base(smoke[0])
    poses = tc.clip_poses(tb.training_clips(info.config, smoke[1]), info.config, 1)
    sample = tc.sample_condition(poses, 64)

    def features(init, maps):
        embedding = tc.new_controlnet(smoke[0] / "unet", smoke_control_config(condition_init=init), 4,
                                      sample).controlnet_cond_embedding
        with torch.no_grad():
            x = maps
            for conv in (embedding.conv_in, *embedding.blocks):
                last = conv(x)
                x = F.silu(last)
            assert not embedding.conv_out.weight.any()  # diffusers' zero output convolution either way
        return last

    own, other = tc.pose_maps(poses[0, 0], 64), tc.pose_maps(poses[2, 0], 64)  # arm_wave vs jump
    unit = features("unit-variance", sample)
    assert float(unit.std()) == pytest.approx(1.0, rel=1e-3)  # on the maps it was set up on
    moved = float((features("unit-variance", own) - features("unit-variance", other)).std())
    default_moved = float((features("diffusers", own) - features("diffusers", other)).std())
    assert moved > 0.3 and moved > 20 * default_moved  # PyTorch's default barely sees a 1-px skeleton
