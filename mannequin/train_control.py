"""Train the built-in base's pose ControlNet on mannequin clips, on a CPU.

    python -m mannequin.train_control --base MODEL_FOLDER --out FOLDER [--work DIR] [--cache DIR]
        [--minutes-budget M] [--resume | --restart] [--threads 1] [--steps N] [--latents FILE]
        [--smoke] [--probe] [--force]

A diffusers ``ControlNetModel`` made from the base's UNet (``ControlNetModel.from_unet``: its
encoder and mid block copied, zero convolutions out, a condition embedding that scales a
64x64 pose map down to the base's latent size), trained with the whole base frozen, on the
clips the base itself trained on (its ``training.json`` config: the 8 training actions, the
same clips, mirrors and prompt dropout; held-out actions never reach the training data). The
condition of a frame is the OpenPose map ``flash_engine.pose.draw`` draws from the clip's
ground-truth keypoints (``mannequin.generate --keypoints``: from the clip's spec, no
rendering) at the clip's size, as the engine draws a ``--pose`` file; a mirrored clip gets its
keypoints mirrored (x -> 1 - x, left and right swapped).

Training runs exactly as the pipeline samples (``train_base.video_batch`` and
``train_base.unet_loss``, the UNet stage's own batches and loss): latent frame 0 is the clean
posterior mean at every noise level, the UNet has FLASH's cross-frame attention, the loss is
the noise MSE on frames 1..N-1, prompts are dropped to "" for classifier-free guidance; and
the ControlNet's residuals go in through ``FlashPipeline.control_residuals``, the sampler's
own path (frames folded into the batch, the condition per frame, frame 0 included). AdamW,
warm-up and cosine decay, EMA weights ship.

Run state lives in ``--work`` (default ``~/.cache/flash-previs/mannequin-control/<out>-<hash>``):
``run.json``, ``train.log``, the latent cache (the base's own VAE's posterior of every clip
and its mirror image, or ``--latents`` FILE: the base run's ``latents.safetensors``, spot-checked
against the base's VAE) and checkpoints (safetensors + JSON, every ``checkpoint_every`` steps
and on Ctrl-C / SIGTERM). After any stop (kill -9 included) the same command with ``--resume``
computes what an uninterrupted run computes. ``--minutes-budget`` caps the wall time summed
over sessions (default: the wall time of the base's own UNet stage, from its ``training.json``);
a stage stopped by it continues when a later ``--resume`` raises it.

The export (written beside ``--out`` and renamed in): ``config.json`` +
``diffusion_pytorch_model.safetensors`` (fp16, diffusers' layout), ``flash_controlnet.json``
(the base's identity: the engine refuses the ControlNet for any other base) and
``training.json`` (commands, machine, wall time, steps, loss curve, a test-split evaluation
with and without the pose). ``--out MODEL/controlnet_pose`` ships it inside the model: the
engine's ``--pose FILE`` on that model (``--model mannequin`` for the built-in one) then uses
it with no other option. See ``docs/mannequin-control.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from mannequin import train_base as tb
from mannequin.actions import PROMPTS
from mannequin.base_config import BaseConfig
from mannequin.control_config import ControlConfig, smoke_control_config

GENERATOR = "mannequin.train_control"
RECORD = "training.json"
STAGE_DIR = "control"
SMOKE_BUDGET_MINUTES = 10.0  # --smoke on a smoke base, whose own UNet stage took seconds
PROBE_BUDGET_MINUTES = 55.0  # a probe without a base: about the base UNet stage's cap
LATENT_CHECK_TOLERANCE = 0.05  # --latents: max |difference| of the means, in stds of the means


def _base_flags() -> str:
    return "pass --base a model folder written by `python -m mannequin.train_base` (or `mannequin`)"


# ====================================================================== the base

@dataclass
class BaseInfo:
    """A base model folder, told from its files without loading it."""

    folder: Path
    config: BaseConfig  # what its training.json says it trained on
    card: dict
    identity: str
    latent_identity: str  # the same, blind to the VAE's decoder side (what the ControlNet needs)
    size_multiple: int
    unet_wall_s: float | None  # its UNet stage's recorded wall time


def read_base(source: str | Path) -> BaseInfo:
    """A one-line RunError unless ``source`` is a complete base written by ``mannequin.train_base``."""
    from flash_engine.models.base import vae_size_multiple
    from flash_engine.models.loading import (MANNEQUIN, MANNEQUIN_CARD, MANNEQUIN_DIR, base_identity,
                                             base_latent_identity, find_problems)

    folder = MANNEQUIN_DIR if str(source) == MANNEQUIN else Path(source).expanduser()
    folder = folder.resolve()
    if not folder.is_dir():
        raise tb.RunError(f"base model folder not found: {folder}; {_base_flags()}")
    problems = find_problems(folder, folder / "motion_adapter")
    if problems:
        raise tb.RunError(f"{folder} is not a complete model folder ({'; '.join(problems)}); {_base_flags()}")
    record = tb._read_json(folder / "training.json")
    if not isinstance(record, dict) or record.get("generator") != tb.GENERATOR or not isinstance(
            record.get("config"), dict):
        raise tb.RunError(f"{folder} has no {tb.GENERATOR} training record (training.json), so its training clips "
                          f"are unknown; {_base_flags()}")
    card = tb._read_json(folder / MANNEQUIN_CARD)
    if not isinstance(card, dict):
        raise tb.RunError(f"{folder} has no model card ({MANNEQUIN_CARD}); {_base_flags()}")
    config = BaseConfig.from_dict(record["config"])
    try:
        config.validate()
    except ValueError as err:
        raise tb.RunError(f"the training record of {folder} is not usable: {err}") from err
    if list(card.get("train_actions", [])) != list(config.train_actions) or set(card.get("held_out_actions", [])) \
            != set(config.held_out):
        raise tb.RunError(f"the model card of {folder} and its training record disagree on the training and "
                          "held-out actions; re-export the base")
    vae = tb._read_json(folder / "vae" / "config.json") or {}
    wall = (record.get("wall_s") or {}).get("unet")
    return BaseInfo(folder=folder, config=config, card=card, identity=base_identity(folder),
                    latent_identity=base_latent_identity(folder),
                    size_multiple=vae_size_multiple(vae), unet_wall_s=float(wall) if wall else None)


def new_controlnet(unet_folder: Path, control: ControlConfig, size_multiple: int,
                   condition_sample: "torch.Tensor | None" = None):
    """A ControlNet made from the base's 2D UNet (diffusers' ``from_unet``: the encoder copied,
    zero convolutions out), its condition embedding scaling maps down ``size_multiple``x (the
    base's VAE scale), its new layers seeded; with ``condition_init`` "unit-variance", the
    embedding set up on ``condition_sample`` (pose maps, (N, 3, H, W))."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet2d = UNet2DConditionModel.from_pretrained(unet_folder, torch_dtype=torch.float32, use_safetensors=True,
                                                  local_files_only=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(control.seed)
        net = ControlNetModel.from_unet(unet2d,
                                        conditioning_embedding_out_channels=control.embedding_channels(size_multiple))
        if control.condition_init == "unit-variance":
            if condition_sample is None:
                raise ValueError("the unit-variance condition init needs sample pose maps")
            unit_variance_init(net.controlnet_cond_embedding, condition_sample)
    return net


def unit_variance_init(embedding, sample: "torch.Tensor") -> None:
    """Each convolution of a ``ControlNetConditioningEmbedding`` but the zero output one: Gaussian
    (He) weights, zero bias, then scaled so that its output has unit variance on ``sample`` (the
    layer-sequential unit-variance init, LSUV). A pose map is mostly black: with PyTorch's default
    init the layers' biases, not the map, set the features. Uses the caller's torch RNG."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        features = sample
        for conv in (embedding.conv_in, *embedding.blocks):
            torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            conv.bias.zero_()
            conv.weight.div_(conv(features).std().clamp_min(1e-6))
            features = F.silu(conv(features))


def sample_condition(poses: np.ndarray, size: int, clips: int = 8) -> "torch.Tensor":
    """The pose maps the condition embedding is set up on: the first ``clips`` clips' (unmirrored)."""
    return pose_maps(poses[:clips, 0], size)


# ====================================================================== poses

def _mirror_order() -> list[int]:
    """Point ``i`` of a mirrored pose is point ``order[i]`` of the original (right <-> left)."""
    from flash_engine.pose.format import BODY_POINT_NAMES

    def other_side(name: str) -> str:
        return name.replace("right", "\0").replace("left", "right").replace("\0", "left")

    return [BODY_POINT_NAMES.index(other_side(name)) for name in BODY_POINT_NAMES]


def mirror_poses(body: np.ndarray) -> np.ndarray:
    """The keypoints (..., 18, 3) of the horizontally flipped image: x -> 1 - x (normalised
    coordinates: pixel i of n goes to n - 1 - i), and the person's right and left swapped."""
    mirrored = np.array(body[..., _mirror_order(), :], dtype=np.float32, copy=True)
    mirrored[..., 0] = 1.0 - mirrored[..., 0]
    return mirrored


def clip_poses(clips: tb.ClipSet, config: BaseConfig, flips: int) -> np.ndarray:
    """Each clip's ground-truth keypoints from its ``.pose.json`` sidecar (and, with ``flips``
    = 2, its mirror image's): float32 (N, flips, F, 18, 3)."""
    from flash_engine.pose.format import read_pose_file

    from mannequin.generate import keypoints_path

    poses = []
    for path in clips.paths:
        sidecar = keypoints_path(path)
        if not sidecar.is_file():
            raise tb.RunError(f"clip {path} has no keypoints ({sidecar}); run `python -m mannequin.generate "
                              "--keypoints` on the cache")
        seq = read_pose_file(sidecar)
        if seq.frames < config.frames or (seq.width, seq.height) != (config.size, config.size):
            raise tb.RunError(f"keypoints {sidecar} are for {seq.frames} frames of {seq.width}x{seq.height}, "
                              f"the clips are {config.frames} of {config.size}x{config.size}")
        body = seq.body[:config.frames]
        poses.append(np.stack([body, mirror_poses(body)][:flips]))
    return np.stack(poses).astype(np.float32)


def pose_maps(bodies: np.ndarray, size: int) -> "torch.Tensor":
    """(..., F, 18, 3) keypoints -> the ControlNet's condition, (N·F, 3, size, size) in 0..1: the
    OpenPose maps the engine draws for a ``--pose`` file (``TakeControl.condition``)."""
    import torch

    from flash_engine.pose.draw import draw_pose_map

    flat = bodies.reshape(-1, *bodies.shape[-2:])
    maps = np.stack([draw_pose_map(body, size, size) for body in flat]).astype(np.float32) / 255.0
    return torch.from_numpy(maps).permute(0, 3, 1, 2).contiguous()


# ====================================================================== the stage

def control_loss(base, controlnet, batch: dict) -> "torch.Tensor":
    """``train_base.unet_loss`` with the ControlNet steering through the pipeline's own path
    (``FlashPipeline.control_residuals``); ``batch["condition"]``: (B·F, 3, H, W)."""
    from flash_engine.pipeline import Control, FlashPipeline

    condition = batch["condition"]

    def residuals(noisy, timesteps, text):
        control = Control(net=controlnet, frames=condition, scale=1.0, name="pose")
        per_frame = timesteps.repeat_interleave(noisy.shape[2])
        return FlashPipeline.control_residuals([control], [condition], 0, 1, noisy, per_frame, text)

    return tb.unet_loss(base.unet, base.text_encoder, base.scheduler, batch, residuals)


class ControlStage(tb.CheckpointedStage):
    name = "control"

    def __init__(self, control: ControlConfig, config: BaseConfig, base, controlnet, latent_mean, latent_std,
                 poses: np.ndarray, action_ids: np.ndarray):
        import torch

        self.control, self.config, self.base, self.controlnet = control, config, base, controlnet
        self.latent_mean, self.latent_std, self.poses = latent_mean, latent_std, poses
        self.action_ids = torch.as_tensor(action_ids)
        self.scale = float(base.vae.config.scaling_factor)
        self.total = control.steps
        for module in (base.unet, base.text_encoder, base.vae):  # the base stays as it shipped
            module.eval().requires_grad_(False)
        controlnet.train().requires_grad_(True)
        self.params = dict(controlnet.named_parameters())
        self.optimizer = torch.optim.AdamW(list(self.params.values()), lr=control.lr, betas=(0.9, 0.999),
                                           weight_decay=control.weight_decay)
        self.ema = {k: v.detach().clone() for k, v in self.params.items()}
        # the base's training prompts only (row i: training action i), then "" (dropped prompts)
        self.token_ids = tb.tokenize(base.tokenizer, [PROMPTS[a] for a in config.train_actions] + [""])
        self.generator = torch.Generator().manual_seed(control.seed * 1000 + 5)
        self.step, self.losses, self.elapsed = 0, [], 0.0
        self.maps: dict[tuple[int, int], "torch.Tensor"] = {}  # (clip, flip) -> uint8 maps, drawn once

    def condition(self, clips, flips) -> "torch.Tensor":
        """The pose maps of these clips (mirror images where ``flips``): (B·F, 3, H, W) in 0..1.
        Drawing is ~10% of a step at the real size, so each clip's maps are kept once drawn."""
        import torch

        for key in zip(clips.tolist(), flips.tolist()):
            if key not in self.maps:
                self.maps[key] = (pose_maps(self.poses[key], self.config.size) * 255).round().to(torch.uint8)
        return torch.cat([self.maps[key] for key in zip(clips.tolist(), flips.tolist())]).float() / 255.0

    def lr(self) -> float:
        c = self.control
        return tb.lr_at(self.step, self.total, c.lr, c.warmup, c.min_lr_fraction)

    def batch(self) -> dict:
        batch = tb.video_batch(self.generator, self.latent_mean, self.latent_std, self.scale,
                               self.base.scheduler.config.num_train_timesteps, self.control.batch,
                               self.config.cfg_dropout, self.action_ids, self.token_ids)
        batch["condition"] = self.condition(batch["clips"], batch["flips"])
        return batch

    def train_step(self) -> float:
        import torch

        for group in self.optimizer.param_groups:
            group["lr"] = self.lr()
        loss = control_loss(self.base, self.controlnet, self.batch())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(self.params.values()), self.control.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        decay = min(self.control.ema_decay, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            torch._foreach_lerp_(list(self.ema.values()), [p.detach() for p in self.params.values()], 1 - decay)
        self.step += 1
        return float(loss.detach())

    def use_ema(self) -> None:
        import torch

        with torch.no_grad():
            for name, param in self.params.items():
                param.copy_(self.ema[name])
        self.controlnet.eval().requires_grad_(False)


def check_no_held_out(config: BaseConfig, clips: tb.ClipSet) -> None:
    """The ControlNet trains on the base's training actions only (``training_clips`` guards the
    clip list; this guards what the stage is handed)."""
    leaked = sorted(set(clips.actions) - set(config.train_actions)) or sorted(set(clips.actions) & set(config.held_out))
    if leaked:
        raise tb.RunError(f"held-out or unknown action(s) {leaked} in the ControlNet's training data")


# ====================================================================== evaluation

def evaluate(config: BaseConfig, base, controlnet, clips: tb.ClipSet, poses: np.ndarray, seed: int,
             timesteps: tuple[int, ...] = tb.EVAL_TIMESTEPS) -> dict:
    """Test-split clips (unseen appearances and cameras): the denoising loss at fixed timesteps
    and noise without the ControlNet and with the clip's own pose, training and held-out
    actions apart (the held-out ones are motions the ControlNet never saw)."""
    import torch

    g = torch.Generator().manual_seed(seed * 1000 + 6)
    groups: dict[str, dict[str, list[float]]] = {}
    with torch.no_grad():
        for index, (action, frames) in enumerate(zip(clips.actions, clips.frames)):
            mean = base.vae.encode(tb.to_pixels(frames)).latent_dist.mean
            latents = (mean * base.vae.config.scaling_factor).transpose(0, 1).unsqueeze(0)  # (1, C, F, h, w)
            ids = tb.tokenize(base.tokenizer, [PROMPTS[action]])
            condition = pose_maps(poses[index, 0], config.size)
            plain, posed = [], []
            for t in timesteps:
                batch = {"latents": latents, "noise": torch.randn(latents.shape, generator=g),
                         "timesteps": torch.tensor([t]), "token_ids": ids, "condition": condition}
                plain.append(float(tb.unet_loss(base.unet, base.text_encoder, base.scheduler, batch)))
                posed.append(float(control_loss(base, controlnet, batch)))
            group = groups.setdefault("held_out_actions" if action in config.held_out else "train_actions",
                                      {"unet_loss": [], "with_pose": []})
            group["unet_loss"].append(sum(plain) / len(plain))
            group["with_pose"].append(sum(posed) / len(posed))
    result = {"split": "test", "timesteps": list(timesteps), "clips_per_action": config.eval_clips_per_action}
    for name, table in groups.items():
        plain, posed = (sum(v) / len(v) for v in (table["unet_loss"], table["with_pose"]))
        result[name] = {"unet_loss": round(plain, 5), "with_pose": round(posed, 5),
                        "ratio": round(posed / plain, 4) if plain else None}
    return result


# ====================================================================== the run

def made_for_record(info: BaseInfo) -> dict:
    from flash_engine.models.controlnet import MADE_FOR_FORMAT

    return {"format": MADE_FOR_FORMAT, "version": 1, "control": "pose", "base_identity": info.identity,
            "base_latent_identity": info.latent_identity,
            "base_name": info.card.get("name"), "generator": GENERATOR,
            "condition": "OpenPose body maps (flash_engine.pose.draw) at the clip's size",
            "size": [info.config.size, info.config.size], "frames": info.config.frames}


def export(controlnet, out: Path, control: ControlConfig, info: BaseInfo, record: dict) -> Path:
    """The diffusers-layout folder + ``flash_controlnet.json`` + ``training.json``, renamed into place."""
    import torch

    from flash_engine.models.controlnet import MADE_FOR

    dtype = {"float16": torch.float16, "float32": torch.float32}[control.weights_dtype]
    shipped = copy.deepcopy(controlnet).to(dtype)

    def fill(staging: Path) -> None:
        shipped.save_pretrained(staging, safe_serialization=True)
        tb._write_json(staging / MADE_FOR, made_for_record(info))
        tb._write_json(staging / RECORD, record)

    return tb.replace_folder(out, fill)


def check_export(out: Path, info: BaseInfo) -> None:
    """The written folder must be what the engine accepts for this base (and loads)."""
    from flash_engine.models.controlnet import check_controlnet_fits, check_controlnet_folder, load_controlnet

    config = check_controlnet_folder(out, "pose")
    check_controlnet_fits(out, config, info.folder, info.size_multiple, "pose")
    load_controlnet(out)


def run(base: str | Path, out: Path, *, threads: int | None = 1, **options) -> tb.RunResult:
    """Train (or continue) and export; see the module docstring. Restores torch's thread count."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads or 1)
    try:
        return _run(base, out, threads=torch.get_num_threads(), **options)
    finally:
        torch.set_num_threads(previous)


def _run(base_source: str | Path, out: Path, *, control: ControlConfig | None = None, work: Path | None = None,
         cache: Path | None = None, resume: bool = False, restart: bool = False, force: bool = False,
         budget_minutes: float | None = None, threads: int = 1, workers: int | None = None,
         latents_from: Path | None = None, stop: tb.StopRules | None = None, log: Callable | None = None,
         command: list[str] | None = None) -> tb.RunResult:
    import torch

    from flash_engine.models.loading import load_base

    from mannequin.generate import default_cache_dir

    control = control or ControlConfig()
    info = read_base(base_source)
    config = info.config
    try:
        control.validate(info.size_multiple)
    except ValueError as err:
        raise tb.RunError(str(err)) from err
    out = Path(out).expanduser().resolve()
    work = Path(work).expanduser().resolve() if work else tb.default_work_dir(out, "mannequin-control")
    cache = Path(cache).expanduser().resolve() if cache else default_cache_dir()
    stop = stop or tb.StopRules()
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    tb.check_destination(out, force, GENERATOR)
    if latents_from is not None and not Path(latents_from).is_file():
        raise tb.RunError(f"--latents {latents_from} is not a file (a train_base run's latents.safetensors)")
    budget_from = "given"
    if budget_minutes is None:
        budget_from = "the base's UNet stage"
        if info.unet_wall_s is None:
            raise tb.RunError(f"{info.folder}'s training.json records no UNet wall time; pass --minutes-budget")
        budget_minutes = info.unet_wall_s / 60.0
    flips = 2 if config.hflip else 1

    state = tb._read_json(work / tb.RUN_JSON)
    if state is not None and restart:
        tb.discard_run(work, state, GENERATOR, (STAGE_DIR,))
        state = None
    if state is not None and not resume:
        raise tb.RunError(f"a run already exists in {work}; pass --resume to continue it or --restart to discard it")
    if state is not None and state.get("generator") != GENERATOR:
        raise tb.RunError(f"{work} holds a run of {state.get('generator')}, not {GENERATOR}; pick another --work")
    if state is not None and state["base"]["identity"] != info.identity:
        raise tb.RunError(f"the run in {work} was started on another base ({state['base']['folder']}, identity "
                          f"{state['base']['identity']}, not {info.identity}); use that base, or --restart")
    if state is not None and state.get("config") != json.loads(json.dumps(control.to_dict())):
        changed = sorted(k for k, v in control.to_dict().items()
                         if json.loads(json.dumps(v)) != state.get("config", {}).get(k))
        raise tb.RunError(f"the run in {work} was started with a different configuration ({', '.join(changed)}); "
                          "use the same options, or --restart")
    log = log or tb.Log(work / "train.log")
    if state is None:
        state = {"generator": GENERATOR, "config": control.to_dict(), "created": tb._now(), "sessions": [],
                 "stages": {}, "out": str(out), "cache": str(cache),
                 "base": {"folder": str(info.folder), "identity": info.identity, "name": info.card.get("name")}}
    session = {"command": command or [], "started": tb._now(), "machine": tb.machine_info(),
               "budget_minutes": round(budget_minutes, 3), "threads": threads, "workers": workers}
    state["sessions"].append(session)
    for name in ("data", "latents", "control", "export"):
        tb._stage_record(state, name)
    tb._write_json(work / tb.RUN_JSON, state)
    log(f"run: base {info.folder} ({info.identity}); out {out}; work {work}; clip cache {cache}; {threads} "
        f"thread(s); budget {budget_minutes:g} min")
    budget_s = budget_minutes * 60.0

    def total_elapsed() -> float:
        return sum(record.get("wall_s", 0.0) for record in state["stages"].values())

    def timed(name: str, function: Callable):
        started = time.perf_counter()
        try:
            return function()
        finally:
            tb._stage_record(state, name)["wall_s"] += time.perf_counter() - started
            tb._write_json(work / tb.RUN_JSON, state)

    def finish(status: str, out_path: Path | None = None) -> tb.RunResult:
        session["ended"], session["status"] = tb._now(), status
        tb._write_json(work / tb.RUN_JSON, state)
        if status in ("stopped", "interrupted"):
            log(f"run: {status}; continue with the same command and --resume")
        return tb.RunResult(status=status, work=work, out=out_path, record=state)

    # ---------------------------------------------------------------- data: clips and their keypoints
    def prepare():
        summary = tb.render_clips(config, cache, workers, log, keypoints=True)
        clips = tb.training_clips(config, cache)
        check_no_held_out(config, clips)
        poses = clip_poses(clips, config, flips)
        tb._stage_record(state, "data").update(
            status="done", clips=len(clips.paths), fingerprint=clips.fingerprint(),
            actions=sorted(set(clips.actions)), held_out=list(config.held_out),
            rendered_now=summary["train"]["rendered"] + summary["test"]["rendered"],
            keypoints_added=summary["train"].get("keypoints_added", 0) + summary["test"].get("keypoints_added", 0))
        return clips, poses

    train_set, poses = timed("data", prepare)
    base = load_base(info.folder)  # fp16 files, fp32 model: what the engine samples with

    # ---------------------------------------------------------------- latents of the base's own VAE
    def latents():
        from safetensors import safe_open
        from safetensors.torch import load_file

        from flash_engine.tensorfiles import save_tensors

        path = work / tb.LATENTS_FILE
        key = {"base": info.identity, "clips": train_set.fingerprint(), "flips": str(flips)}
        if path.is_file():
            with safe_open(path, "pt") as handle:
                if handle.metadata() == key:
                    tensors = load_file(path)
                    return tensors["mean"], tensors["std"]
        if latents_from is not None:
            mean, std = reused_latents(Path(latents_from), base, train_set, config, flips, log)
        else:
            tb.load_frames(train_set, config.frames, log)
            started = time.perf_counter()
            mean, std = tb.encode_latents(base.vae, train_set.frames, flips)
            log(f"latents: {mean.shape[0]} clips x {flips} in {time.perf_counter() - started:.1f} s")
            train_set.frames = None
        tmp = work / f".{tb.LATENTS_FILE}.tmp-{os.getpid()}"
        save_tensors({"mean": mean.contiguous(), "std": std.contiguous()}, tmp, metadata=key)
        os.replace(tmp, path)
        return mean, std

    latent_mean, latent_std = timed("latents", latents)
    state["stages"]["latents"].update(status="done", source=str(latents_from) if latents_from else "encoded")

    # ---------------------------------------------------------------- the ControlNet
    controlnet = new_controlnet(info.folder / "unet", control, info.size_multiple, sample_condition(poses, config.size))
    state["parameters"] = sum(p.numel() for p in controlnet.parameters())
    stage = ControlStage(control, config, base, controlnet, latent_mean, latent_std, poses,
                         train_set.action_ids(config.train_actions))
    stage_dir = work / STAGE_DIR
    saved = tb.load_checkpoint(stage_dir)
    if saved:
        stage.restore(*saved)
    del saved
    record = tb._stage_record(state, "control")
    trained_now = tb.continues(record)
    if trained_now:
        record["status"] = "running"
        others = total_elapsed() - record["wall_s"]
        status = tb.train_stage(stage, stage_dir, control, stop, lambda: budget_s - tb.EXPORT_RESERVE_S - others, log)
        record["wall_s"] = stage.elapsed
        record.update(steps_done=stage.step, steps_planned=stage.total)
        if status in ("stopped", "interrupted"):
            return finish(status)
        record.update(status=status,
                      final_loss_mean_of_last_100=tb.curve(stage.losses, control.log_every)["mean_of_last_100"])
        tb._write_json(work / tb.RUN_JSON, state)
        log(f"[control] {status}: {stage.step} steps")
    if not trained_now and state["stages"]["export"]["status"] == "done" and tb.is_our_export(out, GENERATOR):
        log(f"run: nothing left to do; {out} is this run's export")
        return finish("done", out)
    stage.use_ema()
    del latent_mean, latent_std

    # ---------------------------------------------------------------- evaluation + export
    def finish_export() -> Path:
        test_set = tb.load_frames(tb.eval_clips(config, cache), config.frames)
        results = evaluate(config, base, controlnet, test_set, clip_poses(test_set, config, 1), control.seed,
                           tuple(control.eval_timesteps))
        log(f"eval: {json.dumps({k: v for k, v in results.items() if k.endswith('actions')})}")
        summary = {
            "generator": GENERATOR, "name": control.name, "created": state["created"], "finished": tb._now(),
            "base": state["base"], "commands": [s["command"] for s in state["sessions"]],
            "sessions": state["sessions"], "machine": session["machine"],
            "budget_minutes": round(budget_minutes, 3), "budget_from": budget_from,
            "steps": {"done": stage.step, "planned": stage.total},
            "data": {"actions": list(config.train_actions), "held_out": list(config.held_out),
                     "clips": len(train_set.paths), "clips_per_action": config.clips_per_action,
                     "mirrors": flips == 2, "size": config.size, "frames": config.frames,
                     "cfg_dropout": config.cfg_dropout},
            "config": control.to_dict(), "parameters": state["parameters"],
            "loss": tb.curve(stage.losses, control.log_every), "eval": results,
        }
        written = export(controlnet, out, control, info, summary)
        check_export(written, info)
        return written

    written = timed("export", finish_export)
    state["stages"]["export"]["status"] = "done"
    summary = tb._read_json(written / RECORD)  # written before its own export time was known
    summary["wall_s"] = {name: round(r.get("wall_s", 0.0), 1) for name, r in state["stages"].items()}
    summary["wall_s"]["total"] = round(total_elapsed(), 1)
    summary["stages"] = state["stages"]
    tb._write_json(written / RECORD, summary)
    log(f"export: {written} ({tb.weight_files_size(written) / 2 ** 20:.1f} MiB); "
        f"run done in {total_elapsed() / 60:.1f} min (all sessions)")
    return finish("done", written)


def reused_latents(path: Path, base, clips: tb.ClipSet, config: BaseConfig, flips: int, log: Callable):
    """A train_base run's latent cache, if it is of these clips and of this base's VAE: its
    shape must be theirs, and the first and last clips, encoded again here, must agree (the
    shipped VAE is the run's, rounded to fp16)."""
    import torch
    from safetensors.torch import load_file

    tensors = load_file(path)
    mean, std = tensors.get("mean"), tensors.get("std")
    side = config.size // base.size_multiple
    wanted = (len(clips.paths), flips, config.frames, config.latent_channels, side, side)
    if mean is None or std is None or tuple(mean.shape) != wanted or tuple(std.shape) != wanted:
        raise tb.RunError(f"--latents {path} is not the latent cache of these clips (shape "
                          f"{None if mean is None else tuple(mean.shape)}, needs {wanted})")
    for index in (0, len(clips.paths) - 1):
        frames = tb.read_clip(clips.paths[index], config.frames)[None]
        again, _ = tb.encode_latents(base.vae, frames, flips)
        error = float((again[0] - mean[index]).abs().max() / mean.std())
        if error > LATENT_CHECK_TOLERANCE:
            raise tb.RunError(f"--latents {path} does not match this base's VAE on clip {clips.paths[index].name} "
                              f"(off by {error:.3f} stds); leave --latents out to encode the clips again")
    log(f"latents: reused {path} (spot check within {LATENT_CHECK_TOLERANCE} stds)")
    return mean.float(), std.float()


# ====================================================================== timing probe

def probe(base_source: str | Path | None, control: ControlConfig, threads: int, steps: int, clips_per_action: int,
          budget_minutes: float | None, log: Callable) -> dict:
    """Seconds per ControlNet step at the real size (and per clip for keypoints, pose maps and
    latents), then the step count that fits the budget. Without ``base_source`` the base is
    ``BaseConfig()``'s shape with random weights (a step costs the same)."""
    import torch

    from mannequin.generate import generate

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if base_source is not None:
            from flash_engine.models.loading import load_base

            info = read_base(base_source)
            config, base, unet_folder = info.config, load_base(info.folder), info.folder / "unet"
            budget_minutes = budget_minutes or (info.unet_wall_s / 60 if info.unet_wall_s else PROBE_BUDGET_MINUTES)
        else:
            config = BaseConfig()
            parts = tb.build_parts(config)
            base, unet_folder = tb.assemble(parts), None
            budget_minutes = budget_minutes or PROBE_BUDGET_MINUTES
        control.validate(base.size_multiple)
        flips = 2 if config.hflip else 1
        with tempfile.TemporaryDirectory() as scratch:
            if unet_folder is None:
                parts["unet2d"].save_pretrained(Path(scratch) / "unet", safe_serialization=True)
                unet_folder = Path(scratch) / "unet"
            started = time.perf_counter()
            generate(Path(scratch), config.train_actions, clips_per_action, "train", config.data_seed, config.size,
                     config.frames, "png", 1, lambda m: None, keypoints=True)
            render_s = time.perf_counter() - started
            clips = tb.clip_list(config, scratch, "train", config.train_actions, clips_per_action)
            started = time.perf_counter()
            poses = clip_poses(clips, config, flips)
            keypoints_s = (time.perf_counter() - started) / len(clips.paths)
            started = time.perf_counter()
            pose_maps(poses[:1], config.size)
            maps_s = time.perf_counter() - started
            tb.load_frames(clips, config.frames)
            started = time.perf_counter()
            mean, std = tb.encode_latents(base.vae, clips.frames, flips)
            latents_s = (time.perf_counter() - started) / len(clips.paths)
            net = new_controlnet(unet_folder, control, base.size_multiple, sample_condition(poses, config.size))
            stage = ControlStage(control, config, base, net, mean, std, poses,
                                 clips.action_ids(config.train_actions))
            walls, cpus = [], []
            for _ in range(steps):
                wall, cpu = time.perf_counter(), time.process_time()
                stage.train_step()
                walls.append(time.perf_counter() - wall)
                cpus.append(time.process_time() - cpu)
        walls, cpus = sorted(walls[2:] or walls), sorted(cpus[2:] or cpus)
        step_s, step_cpu_s = walls[len(walls) // 2], cpus[len(cpus) // 2]
    finally:
        torch.set_num_threads(previous)
    train_clips = config.clips_per_action * len(config.train_actions)
    eval_clips = config.eval_clips_per_action * (len(config.train_actions) + len(config.held_out))
    fixed_s = {"keypoints": train_clips * keypoints_s, "latents": train_clips * latents_s,
               "eval_export": tb.EXPORT_RESERVE_S}
    fits = int(max(0.0, 0.95 * budget_minutes * 60 - sum(fixed_s.values())) / step_s)
    report = {"machine": tb.machine_info(), "threads": threads, "base": str(base_source) if base_source else
              "BaseConfig() shape, random weights", "batch_clips": control.batch, "frames": config.frames,
              "size": config.size, "controlnet_parameters": sum(p.numel() for p in stage.controlnet.parameters()),
              "step_s": round(step_s, 3), "step_cpu_s": round(step_cpu_s, 3),
              "pose_maps_per_clip_s": round(maps_s, 4), "keypoints_per_clip_s": round(keypoints_s, 4),
              "latents_per_clip_s": round(latents_s, 4), "render_probe_clips_s": round(render_s, 1),
              "train_clips": train_clips, "eval_clips": eval_clips,
              "plan_minutes": {**{k: round(v / 60, 1) for k, v in fixed_s.items()},
                               "control": round(control.steps * step_s / 60, 1)},
              "plan_total_minutes": round((sum(fixed_s.values()) + control.steps * step_s) / 60, 1),
              "configured_steps": control.steps, "budget_minutes": round(budget_minutes, 1),
              "steps_that_fit": fits, "latents_reused_steps_that_fit":
                  int(max(0.0, 0.95 * budget_minutes * 60 - fixed_s["keypoints"] - fixed_s["eval_export"]) / step_s)}
    log(json.dumps(report, indent=1))
    log(f"probe: {step_s:.2f} s/step ({control.batch} clips); {control.steps} steps take "
        f"{report['plan_total_minutes']} min with the data; {fits} steps fit {budget_minutes:.1f} min "
        f"({report['latents_reused_steps_that_fit']} with --latents)")
    return report


# ====================================================================== CLI

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mannequin.train_control",
                                     description="Train the built-in base's pose ControlNet (CPU, resumable).")
    parser.add_argument("--base", help="the base model folder (written by mannequin.train_base), or `mannequin`")
    parser.add_argument("--out", type=Path, help="the ControlNet folder to write; MODEL/controlnet_pose ships it "
                        "inside the model")
    parser.add_argument("--work", type=Path, help="run state: checkpoints, latents, logs "
                        "(default ~/.cache/flash-previs/mannequin-control/<out name>-<hash>)")
    parser.add_argument("--cache", type=Path, help="mannequin clip cache (default $FLASH_MANNEQUIN_CACHE or "
                        "~/.cache/flash-previs/mannequin)")
    parser.add_argument("--minutes-budget", type=float, help="wall-time cap over all sessions (default: the "
                        f"base's own UNet stage's wall time; --smoke: {SMOKE_BUDGET_MINUTES:g})")
    parser.add_argument("--resume", action="store_true", help="continue the run in --work (or start it)")
    parser.add_argument("--restart", action="store_true", help="discard the run in --work and start over")
    parser.add_argument("--force", action="store_true", help="replace --out even if it is not our export")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--workers", type=int, help="render processes, for clips missing from the cache (default 2)")
    parser.add_argument("--steps", type=int, help="training steps (default: the configured plan)")
    parser.add_argument("--latents", type=Path, help="reuse the base run's latents.safetensors (checked) instead "
                        "of encoding the clips again")
    parser.add_argument("--smoke", action="store_true", help="a few steps at toy widths: the chain in seconds")
    parser.add_argument("--probe", action="store_true", help="time ControlNet steps at the real size, print the plan")
    parser.add_argument("--probe-steps", type=int, default=8)
    parser.add_argument("--probe-clips", type=int, default=1, help="clips per training action to render")
    parser.add_argument("--probe-json", type=Path, help="also write the probe's report here")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--stop-after", type=int, help=argparse.SUPPRESS)  # steps, then checkpoint and exit
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    control = smoke_control_config() if args.smoke else ControlConfig()
    if args.steps is not None:
        control = control.replace(steps=args.steps)
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        library.set_verbosity_error()
        library.disable_progress_bar()
    if args.probe:
        try:
            report = probe(args.base, control, args.threads, max(3, args.probe_steps), args.probe_clips,
                           args.minutes_budget, tb.Log(None, args.quiet))
        except (tb.RunError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if args.probe_json:
            tb._write_json(args.probe_json, report)
        return 0
    missing = [flag for flag, value in (("--base", args.base), ("--out", args.out)) if value is None]
    if missing:
        print(f"error: {' and '.join(missing)} required (see --help)", file=sys.stderr)
        return 2
    interrupted = {"flag": False}

    def on_signal(signum, frame):
        if interrupted["flag"]:
            raise KeyboardInterrupt
        interrupted["flag"] = True
        print(f"\nsignal {signum}: checkpointing at the end of this step (again to abort)", file=sys.stderr)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    out = args.out.expanduser().resolve()
    work = args.work.expanduser().resolve() if args.work else tb.default_work_dir(out, "mannequin-control")
    budget = args.minutes_budget if args.minutes_budget is not None else (SMOKE_BUDGET_MINUTES if args.smoke else None)
    try:
        result = run(args.base, out, control=control, work=work, cache=args.cache, resume=args.resume,
                     restart=args.restart, force=args.force, budget_minutes=budget, threads=args.threads,
                     workers=args.workers, latents_from=args.latents,
                     stop=tb.StopRules(should_stop=lambda: interrupted["flag"], stop_after=args.stop_after),
                     log=tb.Log(work / "train.log", quiet=args.quiet),
                     command=["python", "-m", GENERATOR, *(argv if argv is not None else sys.argv[1:])])
    except (tb.RunError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aborted; the last checkpoint stands: continue with the same command and --resume", file=sys.stderr)
        return 130
    if result.status == "interrupted":
        return 130
    return 0 if result.status in ("done", "stopped") else 1


if __name__ == "__main__":
    sys.exit(main())
