"""Train the built-in ``mannequin`` base model from scratch on mannequin clips, on a CPU.

    python -m mannequin.train_base --out flash_engine/models/mannequin [--minutes-budget 85]
        [--resume | --restart] [--stage vae|unet|all] [--smoke] [--probe]
        [--work DIR] [--cache DIR] [--threads N] [--workers N] [--force]

The same classes as the real pipeline (``flash_engine/models/tiny.py``): a CLIP text encoder
with the byte-level CLIP tokenizer, an ``AutoencoderKL`` with an 8x downsampling, and a
``UNet2DConditionModel`` + ``MotionAdapter`` assembled into a ``UNetMotionModel`` with FLASH's
processors by ``flash_engine.models.base.assemble_base``. Two stages, each resumable:

1. **vae**: the VAE on single frames (random 32x32 crops for most of the stage, whole frames at
   the end; L1 + L2 + L1 on pixel differences + a small KL), then its ``scaling_factor`` =
   1 / std of the latents.
2. **unet**: text encoder + UNet2D + motion modules jointly, on latent videos of the frozen
   VAE, exactly as FLASH samples: cross-frame attention, a clean (noise-free) latent frame 0,
   noise-prediction MSE on frames 1..N-1, AnimateDiff's linear betas, 10% of prompts dropped
   to "" (classifier-free guidance). EMA weights are what ships.

Then a small evaluation on test-split clips (unseen appearances and cameras; training and
held-out actions reported apart) and the export: the diffusers layout of
``flash_engine.models.loading.save_folder`` plus ``mannequin.json`` (model card and demo
settings), ``training.json`` (commands, machine, wall time per stage), ``losses.json`` and
``demo_reference.png``. The export is written beside ``--out`` and renamed into place.

Clips come from ``python -m mannequin.generate`` (the clip cache, outside git); run state
(checkpoints, the latent cache, ``run.json``, ``train.log``) lives in ``--work`` (default
under ``~/.cache/flash-previs/mannequin-base/``). Checkpoints are safetensors + JSON, written
every ``checkpoint_every`` steps and on Ctrl-C / SIGTERM, and replaced atomically; after any
interruption (kill -9 included) the same command with ``--resume`` continues from the last
one and computes exactly what an uninterrupted run computes. ``--minutes-budget`` caps the
wall time (summed over sessions): the VAE stage stops at ``vae_budget_share`` of it and the
UNet stage leaves room for the evaluation and export; a stage stopped that way is recorded
as such, and ``--resume`` with a larger budget continues it (the VAE only while the UNet has
not started: its latents would change) and exports again. See ``docs/mannequin-base.md``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from mannequin.actions import PROMPTS
from mannequin.base_config import BaseConfig, smoke_config

GENERATOR = "mannequin.train_base"
RUN_JSON = "run.json"
CHECKPOINT_JSON = "checkpoint.json"
LATENTS_FILE = "latents.safetensors"
EXPORT_RESERVE_S = 120.0  # wall time the UNet stage leaves for evaluation + export
EVAL_TIMESTEPS = (50, 250, 500, 750, 950)
NOT_FINISHED = ("pending", "running")


def continues(record: dict, later: dict | None = None) -> bool:
    """Whether a stage still trains in this session: it never finished, or it stopped at the time
    budget short of its steps (a later session may raise the budget) and no later stage has used it."""
    if record["status"] in NOT_FINISHED:
        return True
    stopped_short = record["status"] == "budget" and record.get("steps_done", 0) < record.get("steps_planned", 0)
    return stopped_short and (later is None or later["status"] == "pending")


class RunError(Exception):
    """A run that cannot start or go on (the message says what to do)."""


# ====================================================================== small helpers

def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def _write_json(path: Path, data) -> None:
    """Atomic: a temporary file beside ``path``, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def machine_info() -> dict:
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        memory = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {"host": platform.node(), "cpu": cpu, "cpu_count": os.cpu_count(), "memory_gib": memory,
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "load_average": load}


def default_work_dir(out: Path, kind: str = "mannequin-base") -> Path:
    """``~/.cache/flash-previs/<kind>/<out name>-<hash of out>``: one run state per output."""
    out = Path(out).expanduser().resolve()
    tag = hashlib.sha256(str(out).encode()).hexdigest()[:8]
    return Path.home() / ".cache" / "flash-previs" / kind / f"{out.name}-{tag}"


def lr_at(step: int, total: int, peak: float, warmup: int, min_fraction: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``min_fraction`` of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (min_fraction + (1 - min_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))


class Log:
    """Progress lines to stderr and to ``WORK/train.log``."""

    def __init__(self, file: Path | None = None, quiet: bool = False):
        self.file, self.quiet = file, quiet

    def __call__(self, message: str) -> None:
        line = f"{_dt.datetime.now().strftime('%H:%M:%S')} {message}"
        if not self.quiet:
            print(line, file=sys.stderr, flush=True)
        if self.file is not None:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            with self.file.open("a") as handle:
                handle.write(line + "\n")


# ====================================================================== models

def build_parts(config: BaseConfig) -> dict:
    """Fresh, seeded parts in the layout ``save_folder`` writes (same classes as ``tiny``)."""
    import torch
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from flash_engine.models.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    heads = tuple(width // config.head_width for width in config.unet_channels)
    blocks = len(config.unet_channels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=config.text_width, intermediate_size=config.text_ff,
            num_hidden_layers=config.text_layers, num_attention_heads=config.text_heads,
            max_position_embeddings=tokenizer.model_max_length, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * len(config.vae_channels),
            up_block_types=("UpDecoderBlock2D",) * len(config.vae_channels),
            block_out_channels=tuple(config.vae_channels),
            layers_per_block=config.vae_layers, norm_num_groups=config.vae_groups,
            latent_channels=config.latent_channels, sample_size=config.size)
        with torch.no_grad():  # log-variance half of the posterior: start near-deterministic
            vae.quant_conv.bias[config.latent_channels:].fill_(config.vae_logvar_init)
        unet2d = UNet2DConditionModel(
            sample_size=config.size // config.vae_scale, in_channels=config.latent_channels, out_channels=config.latent_channels,
            down_block_types=("CrossAttnDownBlock2D",) * blocks, up_block_types=("CrossAttnUpBlock2D",) * blocks,
            block_out_channels=tuple(config.unet_channels), layers_per_block=config.unet_layers,
            cross_attention_dim=config.text_width, attention_head_dim=heads,  # (diffusers: = number of heads)
            norm_num_groups=config.unet_groups)
        motion_adapter = MotionAdapter(
            block_out_channels=tuple(config.unet_channels), motion_layers_per_block=config.unet_layers,
            motion_mid_block_layers_per_block=1, motion_num_attention_heads=heads,
            motion_norm_num_groups=config.unet_groups, motion_max_seq_length=config.max_frames,
            use_motion_mid_block=True)
    return dict(unet2d=unet2d, motion_adapter=motion_adapter, vae=vae, text_encoder=text_encoder,
                tokenizer=tokenizer)


def assemble(parts: dict, identity: str = "training"):
    """The ``BaseModel`` the pipeline would build from these parts (FLASH processors installed)."""
    from flash_engine.models.base import assemble_base

    return assemble_base(unet2d=parts["unet2d"], motion_adapter=parts["motion_adapter"], vae=parts["vae"],
                         text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"], scheduler_config=None,
                         identity=identity, source=GENERATOR)


def split_motion_state(parts: dict, motion_state: dict) -> None:
    """Copy a ``UNetMotionModel`` state dict back into the UNet2D and the motion adapter (strict)."""
    unet_keys = set(parts["unet2d"].state_dict())
    adapter_keys = set(parts["motion_adapter"].state_dict())
    missing = set(motion_state) - unet_keys - adapter_keys
    if missing:
        raise RuntimeError(f"UNetMotionModel tensors with no home in UNet2D/MotionAdapter: {sorted(missing)[:5]}")
    parts["unet2d"].load_state_dict({k: motion_state[k] for k in unet_keys}, strict=True)
    parts["motion_adapter"].load_state_dict({k: motion_state[k] for k in adapter_keys}, strict=True)


def count_parameters(parts: dict) -> dict:
    return {name: sum(p.numel() for p in parts[name].parameters())
            for name in ("vae", "unet2d", "motion_adapter", "text_encoder")}


# ====================================================================== data

@dataclass
class ClipSet:
    """Clips in memory: ``frames`` (N, F, H, W, 3) uint8, one action per clip."""

    paths: list[Path]
    actions: list[str]
    frames: np.ndarray | None = None

    def action_ids(self, actions: tuple[str, ...]) -> np.ndarray:
        return np.array([actions.index(a) for a in self.actions], dtype=np.int64)

    def fingerprint(self) -> str:
        return hashlib.sha256("\n".join(str(p) for p in self.paths).encode()).hexdigest()[:16]


def render_clips(config: BaseConfig, cache: Path, workers: int, log: Callable, keypoints: bool = False) -> dict:
    """Make sure the train clips (training actions only) and the test clips exist in the cache
    (with ``keypoints``: and their ground-truth ``.pose.json``, written from the specs without
    rendering clips that are already there)."""
    from mannequin.generate import generate

    eval_actions = config.train_actions + tuple(config.held_out)
    train = generate(cache, config.train_actions, config.clips_per_action, "train", config.data_seed,
                     config.size, config.frames, "png", workers, log, keypoints=keypoints)
    test = generate(cache, eval_actions, config.eval_clips_per_action, "test", config.data_seed, config.size,
                    config.frames, "png", workers, log, keypoints=keypoints)
    return {"train": train, "test": test}


def clip_list(config: BaseConfig, cache: Path, split: str, actions: tuple[str, ...], per_action: int) -> ClipSet:
    """The exact clips a run uses, by construction (never by scanning folders), checked complete."""
    from mannequin.generate import clip_path, clip_spec, is_complete

    paths, owners = [], []
    for action in actions:
        for index in range(per_action):
            spec = clip_spec(action, index, split, config.data_seed, config.size, config.frames)
            path = clip_path(Path(cache) / split, action, index, "png")
            if not is_complete(path, spec, "png"):
                raise RunError(f"clip {path} is missing or stale in the clip cache")
            paths.append(path)
            owners.append(spec.action)
    return ClipSet(paths=paths, actions=owners)


def training_clips(config: BaseConfig, cache: Path) -> ClipSet:
    clips = clip_list(config, cache, "train", config.train_actions, config.clips_per_action)
    leaked = sorted(set(clips.actions) & set(config.held_out))
    if leaked:  # cannot happen by construction; refuse loudly if it ever does
        raise RunError(f"held-out action(s) {leaked} in the training data")
    return clips


def eval_clips(config: BaseConfig, cache: Path) -> ClipSet:
    return clip_list(config, cache, "test", config.train_actions + tuple(config.held_out),
                     config.eval_clips_per_action)


def read_clip(path: Path, frames: int) -> np.ndarray:
    from PIL import Image

    files = sorted(Path(path).glob("frame_*.png"))[:frames]
    if len(files) < frames:
        raise RunError(f"clip {path} has {len(files)} frames, needs {frames}")
    out = []
    for file in files:
        with Image.open(file) as image:
            out.append(np.asarray(image.convert("RGB")))
    return np.stack(out)


def load_frames(clips: ClipSet, frames: int, log: Callable | None = None) -> ClipSet:
    started = time.perf_counter()
    clips.frames = np.stack([read_clip(path, frames) for path in clips.paths])
    if log:
        log(f"data: read {len(clips.paths)} clips ({clips.frames.nbytes / 2 ** 20:.0f} MiB) "
            f"in {time.perf_counter() - started:.1f} s")
    return clips


def to_pixels(frames) -> "torch.Tensor":
    """uint8 (..., H, W, 3) -> float (..., 3, H, W) in [-1, 1]."""
    import torch

    x = torch.as_tensor(np.ascontiguousarray(frames))
    return x.movedim(-1, -3).float() / 127.5 - 1.0


# ====================================================================== checkpoints

def save_checkpoint(folder: Path, step: int, tensors: dict, meta: dict) -> None:
    """``checkpoint-<step>.safetensors`` + ``checkpoint.json`` (replaced atomically, last)."""
    from flash_engine.tensorfiles import save_tensors

    folder.mkdir(parents=True, exist_ok=True)
    name = f"checkpoint-{step:07d}.safetensors"
    save_tensors(tensors, folder / name)
    _write_json(folder / CHECKPOINT_JSON, {**meta, "tensors": name, "step": step})
    for old in folder.glob("checkpoint-*.safetensors"):
        if old.name != name:
            old.unlink()


def load_checkpoint(folder: Path) -> tuple[dict, dict] | None:
    from safetensors.torch import load_file

    meta = _read_json(folder / CHECKPOINT_JSON)
    if not meta:
        return None
    return meta, load_file(folder / meta["tensors"])


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


# ====================================================================== stage 1: VAE

def vae_loss(vae, pixels, generator, config: BaseConfig, extra_noise_std: "torch.Tensor | None" = None,
             keep_decoded: bool = False) -> tuple["torch.Tensor", dict]:
    """L1 + ``vae_l2_weight`` x L2 + ``vae_edge_weight`` x L1 of pixel differences (per-pixel means)
    + ``vae_kl_weight`` x KL (mean per latent element), on a posterior sample; plus, when
    ``extra_noise_std`` (one std per frame, latent units) is given, Gaussian noise on that sample.
    ``keep_decoded``: the parts also hold the decoded pixels (for an adversarial term)."""
    import torch

    dist = vae.encode(pixels).latent_dist
    noise = torch.randn(dist.mean.shape, generator=generator, dtype=dist.mean.dtype)
    latents = dist.mean + dist.std * noise
    if extra_noise_std is not None:
        extra = torch.randn(dist.mean.shape, generator=generator, dtype=dist.mean.dtype)
        latents = latents + extra_noise_std.view(-1, 1, 1, 1) * extra
    decoded = vae.decode(latents).sample
    error = decoded - pixels
    l1, l2 = error.abs().mean(), error.pow(2).mean()
    edge = ((decoded.diff(dim=-1) - pixels.diff(dim=-1)).abs().mean()
            + (decoded.diff(dim=-2) - pixels.diff(dim=-2)).abs().mean())
    kl = dist.kl().mean() / dist.mean[0].numel()
    loss = l1 + config.vae_l2_weight * l2 + config.vae_edge_weight * edge + config.vae_kl_weight * kl
    parts = {"l1": float(l1.detach()), "l2": float(l2.detach()), "edge": float(edge.detach()),
             "kl": float(kl.detach())}
    return loss, ({**parts, "decoded": decoded} if keep_decoded else parts)


class CheckpointedStage:
    """What a stage's checkpoint holds: its parameters (and EMA copies, if it keeps them), its
    optimizer, its generator and its counters. Subclasses set those attributes."""

    ema: dict | None = None

    def checkpoint_tensors(self) -> tuple[dict, dict]:
        from flash_engine.training.checkpoint import optimizer_tensors

        tensors = {f"param.{k}": v for k, v in self.params.items()}
        tensors.update({f"ema.{k}": v for k, v in (self.ema or {}).items()})
        groups = optimizer_tensors(self.optimizer, "optim", tensors)
        tensors["rng"] = self.generator.get_state()
        return tensors, {"optimizer": groups}

    def restore(self, meta: dict, tensors: dict) -> None:
        import torch

        from flash_engine.training.checkpoint import load_optimizer

        with torch.no_grad():
            for name, param in self.params.items():
                param.copy_(tensors[f"param.{name}"])
            for name, average in (self.ema or {}).items():
                average.copy_(tensors[f"ema.{name}"])
        load_optimizer(self.optimizer, "optim", tensors, meta["optimizer"])
        self.generator.set_state(tensors["rng"])
        self.step, self.losses, self.elapsed = meta["step"], meta["losses"], meta["elapsed_s"]


class VaeStage(CheckpointedStage):
    name = "vae"

    def __init__(self, config: BaseConfig, vae, frames: np.ndarray | None):
        import torch

        self.config, self.vae, self.frames = config, vae, frames
        self.total = config.vae_steps
        self.vae.train().requires_grad_(True)
        self.params = dict(vae.named_parameters())
        self.optimizer = torch.optim.AdamW(list(self.params.values()), lr=config.vae_lr, betas=(0.9, 0.99),
                                           weight_decay=0.0)
        self.generator = torch.Generator().manual_seed(config.seed * 1000 + 1)
        self.step, self.losses, self.elapsed = 0, [], 0.0

    def lr(self) -> float:
        c = self.config
        return lr_at(self.step, self.total, c.vae_lr, c.vae_warmup, c.min_lr_fraction)

    def cropping(self) -> bool:
        c = self.config
        return c.vae_crop < c.size and self.step < round(c.vae_crop_fraction * self.total)

    def batch(self):
        """Random frames of random clips, mirrored half the time; random crops early in the stage."""
        import torch

        c, g, (count, frames) = self.config, self.generator, self.frames.shape[:2]
        crop = self.cropping()
        size = c.vae_crop if crop else c.size
        n = c.vae_crop_batch if crop else c.vae_batch
        clip = torch.randint(count, (n,), generator=g).numpy()
        frame = torch.randint(frames, (n,), generator=g).numpy()
        y, x = (torch.randint(c.size - size + 1, (2, n), generator=g).numpy() if crop
                else np.zeros((2, n), dtype=np.int64))
        flip = torch.randint(2 if c.hflip else 1, (n,), generator=g).bool()
        picked = np.stack([self.frames[a, b, top:top + size, left:left + size]
                           for a, b, top, left in zip(clip, frame, y, x)])
        pixels = to_pixels(picked)
        return torch.where(flip[:, None, None, None], pixels.flip(-1), pixels)

    def latent_noise_std(self, frames: int):
        """Per-frame std of extra noise on the latents (None: none; the decoder tune adds some)."""
        return None

    def train_step(self) -> float:
        import torch

        for group in self.optimizer.param_groups:
            group["lr"] = self.lr()
        pixels = self.batch()
        loss, _ = vae_loss(self.vae, pixels, self.generator, self.config, self.latent_noise_std(len(pixels)))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(self.params.values()), self.config.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return float(loss.detach())


def latent_scale(vae, frames: np.ndarray, count: int, seed: int) -> float:
    """``scaling_factor`` = 1 / std of the latent means of ``count`` random training frames."""
    import torch

    g = torch.Generator().manual_seed(seed)
    flat = frames.reshape(-1, *frames.shape[2:])
    pick = torch.randperm(len(flat), generator=g)[:count].numpy()
    means = []
    with torch.no_grad():
        for start in range(0, len(pick), 256):
            means.append(vae.encode(to_pixels(flat[np.sort(pick[start:start + 256])])).latent_dist.mean)
    return float(1.0 / torch.cat(means).std())


def encode_latents(vae, frames: np.ndarray, flips: int, chunk: int = 256):
    """Posterior mean and std of every frame (and of its mirror image): (N, flips, F, C, h, w) each."""
    import torch

    count, num_frames = frames.shape[:2]
    flat = frames.reshape(-1, *frames.shape[2:])
    means, stds = [], []
    with torch.no_grad():
        for flip in range(flips):
            m, s = [], []
            for start in range(0, len(flat), chunk):
                pixels = to_pixels(flat[start:start + chunk])
                dist = vae.encode(pixels.flip(-1) if flip else pixels).latent_dist
                m.append(dist.mean)
                s.append(dist.std)
            means.append(torch.cat(m).unflatten(0, (count, num_frames)))
            stds.append(torch.cat(s).unflatten(0, (count, num_frames)))
    return torch.stack(means, 1).contiguous(), torch.stack(stds, 1).contiguous()


# ====================================================================== stage 2: UNet

def tokenize(tokenizer, prompts: list[str]):
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def unet_loss(unet, text_encoder, scheduler, batch: dict, residuals: Callable | None = None) -> "torch.Tensor":
    """FLASH's training objective at base scale: clean frame 0, noise MSE on frames 1..N-1.

    ``batch``: ``latents`` (B, C, F, h, w) scaled, ``noise`` like it, ``timesteps`` (B,),
    ``token_ids`` (B, L). The UNet sees frame 0 noise-free, as the pipeline gives it at
    every sampling step, and its spatial self-attention is FLASH's cross-frame attention.
    ``residuals(noisy, timesteps, text_per_frame)``, when given, returns extra UNet arguments
    (a ControlNet's ``down_block_additional_residuals`` / ``mid_block_additional_residual``)
    computed from the same UNet input.
    """
    import torch.nn.functional as F

    latents, noise = batch["latents"], batch["noise"]
    noisy = scheduler.add_noise(latents, noise, batch["timesteps"])
    noisy[:, :, 0] = latents[:, :, 0]
    text = text_encoder(batch["token_ids"])[0].repeat_interleave(latents.shape[2], 0)
    extra = residuals(noisy, batch["timesteps"], text) if residuals is not None else {}
    prediction = unet(noisy, batch["timesteps"], encoder_hidden_states=text, **extra).sample
    return F.mse_loss(prediction[:, :, 1:].float(), noise[:, :, 1:].float())


def video_batch(g, latent_mean, latent_std, scale: float, num_timesteps: int, size: int, cfg_dropout: float,
                action_ids, token_ids) -> dict:
    """One step's clips as FLASH samples them, drawn from generator ``g``: random clips (and
    mirror images) of the latent cache, a posterior sample per frame with frame 0 the posterior
    mean, noise, uniform timesteps and prompts (the last row of ``token_ids``, "", for a share
    ``cfg_dropout``). Also returns which clips (``clips``) and mirrors (``flips``) it drew."""
    import torch

    count, flips = latent_mean.shape[:2]
    clip = torch.randint(count, (size,), generator=g)
    flip = torch.randint(flips, (size,), generator=g)
    mean, std = latent_mean[clip, flip], latent_std[clip, flip]  # (B, F, C, h, w)
    sample = mean + std * torch.randn(mean.shape, generator=g)
    sample[:, 0] = mean[:, 0]  # the pipeline encodes the reference frame with the posterior mean
    latents = (sample * scale).transpose(1, 2).contiguous()  # (B, C, F, h, w)
    noise = torch.randn(latents.shape, generator=g)
    timesteps = torch.randint(num_timesteps, (size,), generator=g)
    dropped = torch.rand(size, generator=g) < cfg_dropout
    prompt = torch.where(dropped, torch.full_like(clip, len(token_ids) - 1), action_ids[clip])
    return {"latents": latents, "noise": noise, "timesteps": timesteps, "token_ids": token_ids[prompt],
            "clips": clip, "flips": flip}


class UnetStage(CheckpointedStage):
    name = "unet"

    def __init__(self, config: BaseConfig, base, latent_mean, latent_std, action_ids: np.ndarray):
        import torch

        self.config, self.base = config, base
        self.unet, self.text_encoder, self.scheduler = base.unet, base.text_encoder, base.scheduler
        self.latent_mean, self.latent_std = latent_mean, latent_std
        self.action_ids = torch.as_tensor(action_ids)
        self.scale = float(base.vae.config.scaling_factor)
        self.total = config.unet_steps
        for module in (self.unet, self.text_encoder):
            module.train().requires_grad_(True)
        self.params = {**{f"unet.{k}": v for k, v in self.unet.named_parameters()},
                       **{f"text_encoder.{k}": v for k, v in self.text_encoder.named_parameters()}}
        self.optimizer = torch.optim.AdamW(list(self.params.values()), lr=config.unet_lr, betas=(0.9, 0.999),
                                           weight_decay=config.weight_decay)
        self.ema = {k: v.detach().clone() for k, v in self.params.items()}
        # row i: the prompt of training action i; the last row: "" (dropped prompt, the negative prompt)
        self.token_ids = tokenize(base.tokenizer, [PROMPTS[a] for a in config.train_actions] + [""])
        self.generator = torch.Generator().manual_seed(config.seed * 1000 + 2)
        self.step, self.losses, self.elapsed = 0, [], 0.0

    def lr(self) -> float:
        c = self.config
        return lr_at(self.step, self.total, c.unet_lr, c.unet_warmup, c.min_lr_fraction)

    def batch(self) -> dict:
        return video_batch(self.generator, self.latent_mean, self.latent_std, self.scale,
                           self.scheduler.config.num_train_timesteps, self.config.unet_batch,
                           self.config.cfg_dropout, self.action_ids, self.token_ids)

    def train_step(self) -> float:
        import torch

        for group in self.optimizer.param_groups:
            group["lr"] = self.lr()
        loss = unet_loss(self.unet, self.text_encoder, self.scheduler, self.batch())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(self.params.values()), self.config.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            torch._foreach_lerp_(list(self.ema.values()), [p.detach() for p in self.params.values()], 1 - decay)
        self.step += 1
        return float(loss.detach())

    def use_ema(self) -> None:
        import torch

        with torch.no_grad():
            for name, param in self.params.items():
                param.copy_(self.ema[name])
        for module in (self.unet, self.text_encoder):
            module.eval().requires_grad_(False)


# ====================================================================== the loop

@dataclass
class StopRules:
    should_stop: Callable[[], bool] = lambda: False  # Ctrl-C / SIGTERM
    stop_after: int | None = None  # steps in this session (tests, --stop-after)
    done_now: int = 0


def train_stage(stage, folder: Path, config: BaseConfig, stop: StopRules, deadline_s: Callable[[], float],
                log: Callable) -> str:
    """Run ``stage`` to ``stage.total`` steps; returns done | budget | stopped | interrupted."""
    checkpointed_at = stage.step

    def checkpoint() -> None:
        nonlocal checkpointed_at
        tensors, meta = stage.checkpoint_tensors()
        save_checkpoint(folder, stage.step, tensors, {**meta, "losses": stage.losses, "elapsed_s": stage.elapsed,
                                                     "total": stage.total, "config": config.to_dict()})
        checkpointed_at = stage.step

    started, first_step = time.perf_counter(), stage.step
    session_start_elapsed = stage.elapsed
    status = "done"
    log(f"[{stage.name}] from step {stage.step} of {stage.total}")
    while stage.step < stage.total:
        if stop.should_stop():
            status = "interrupted"
            break
        if stop.stop_after is not None and stop.done_now >= stop.stop_after:
            status = "stopped"
            break
        if stage.elapsed >= deadline_s():
            status = "budget"
            log(f"[{stage.name}] time budget reached at step {stage.step} of {stage.total}: stopping the stage "
                "(a larger --minutes-budget with --resume continues it)")
            break
        loss = stage.train_step()
        stage.losses.append(loss)
        stop.done_now += 1
        stage.elapsed = session_start_elapsed + time.perf_counter() - started
        if stage.step % config.log_every == 0 or stage.step == stage.total:
            window = stage.losses[-config.log_every:]
            per_step = (time.perf_counter() - started) / max(1, stage.step - first_step)
            log(f"[{stage.name}] step {stage.step}/{stage.total} loss {loss:.4f} "
                f"(mean of last {len(window)}: {sum(window) / len(window):.4f}) lr {stage.lr():.2e} "
                f"{per_step:.3f} s/step, elapsed {stage.elapsed / 60:.1f} min, "
                f"eta {(stage.total - stage.step) * per_step / 60:.1f} min")
        if stage.step % config.checkpoint_every == 0 and stage.step < stage.total:
            checkpoint()
    if stage.step != checkpointed_at or status == "done":
        checkpoint()
    return status


# ====================================================================== evaluation

def evaluate(config: BaseConfig, base, clips: ClipSet) -> dict:
    """Test-split clips (unseen appearances and cameras): VAE reconstruction and UNet denoising
    loss at fixed timesteps and noise, for training actions and held-out actions apart."""
    import torch

    vae, unet, text_encoder, scheduler = base.vae, base.unet, base.text_encoder, base.scheduler
    g = torch.Generator().manual_seed(config.seed * 1000 + 3)
    groups: dict[str, dict[str, list[float]]] = {"train_actions": {}, "held_out_actions": {}}
    per_action: dict[str, dict[str, list[float]]] = {}
    with torch.no_grad():
        for path, action, frames in zip(clips.paths, clips.actions, clips.frames):
            pixels = to_pixels(frames)
            mean = vae.encode(pixels).latent_dist.mean
            decoded = vae.decode(mean).sample.clamp(-1, 1)
            mse = float(((decoded - pixels) / 2).pow(2).mean())
            l1 = float((decoded - pixels).abs().mean())
            latents = (mean * vae.config.scaling_factor).transpose(0, 1).unsqueeze(0)  # (1, C, F, h, w)
            ids = tokenize(base.tokenizer, [PROMPTS[action]])
            losses = []
            for t in EVAL_TIMESTEPS:
                noise = torch.randn(latents.shape, generator=g)
                batch = {"latents": latents, "noise": noise, "timesteps": torch.tensor([t]), "token_ids": ids}
                losses.append(float(unet_loss(unet, text_encoder, scheduler, batch)))
            values = {"vae_l1": l1, "vae_psnr": 10 * math.log10(1 / max(mse, 1e-12)),
                      "unet_loss": sum(losses) / len(losses)}
            group = "held_out_actions" if action in config.held_out else "train_actions"
            for key, value in values.items():
                groups[group].setdefault(key, []).append(value)
                per_action.setdefault(action, {}).setdefault(key, []).append(value)

    def means(table):
        return {key: round(sum(v) / len(v), 5) for key, v in table.items()}

    return {"split": "test", "clips_per_action": config.eval_clips_per_action, "timesteps": list(EVAL_TIMESTEPS),
            **{name: means(table) for name, table in groups.items() if table},
            "per_action": {action: means(table) for action, table in per_action.items()}}


# ====================================================================== export

def curve(losses: list[float], every: int) -> dict:
    points = [(min(i + every, len(losses)), sum(losses[i:i + every]) / len(losses[i:i + every]))
              for i in range(0, len(losses), every)]
    tail = losses[-100:]
    return {"steps_done": len(losses), "window": every, "step": [p[0] for p in points],
            "mean_loss": [round(p[1], 6) for p in points],
            "first": round(losses[0], 6) if losses else None,
            "mean_of_last_100": round(sum(tail) / len(tail), 6) if tail else None}


def is_our_export(folder: Path, generator: str = GENERATOR) -> bool:
    record = _read_json(folder / "training.json")
    return isinstance(record, dict) and record.get("generator") == generator


def check_destination(out: Path, force: bool, generator: str = GENERATOR) -> None:
    if out.exists() and not force and not (out.is_dir() and (is_our_export(out, generator) or not any(out.iterdir()))):
        raise RunError(f"{out} exists and is not a model written by {generator}; pass --force to replace it")


def replace_folder(out: Path, fill: Callable[[Path], None]) -> Path:
    """``fill(staging)`` writes a folder beside ``out`` (a hidden temporary name), which then
    replaces ``out`` by renames: ``out`` is never half-written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in (*out.parent.glob(f".{out.name}.tmp-*"), *out.parent.glob(f".{out.name}.old-*")):
        shutil.rmtree(stale, ignore_errors=True)  # left by an export that died half-way
    staging = out.parent / f".{out.name}.tmp-{os.getpid()}"
    fill(staging)
    for path in staging.rglob("*"):  # some writers create 0600 files; the shipped folder is for everyone
        path.chmod(0o755 if path.is_dir() else 0o644)
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    os.replace(staging, out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def export(parts: dict, out: Path, config: BaseConfig, files: dict[str, object], demo_image: Path) -> Path:
    """Write the diffusers-layout folder (+ JSON records, demo image) beside ``out``, rename it in."""
    import copy

    import torch

    from flash_engine.models.loading import save_folder

    dtype = {"float16": torch.float16, "float32": torch.float32}[config.weights_dtype]
    shipped = dict(parts)
    for name in ("unet2d", "motion_adapter", "vae", "text_encoder"):
        shipped[name] = copy.deepcopy(parts[name]).to(dtype)

    def fill(staging: Path) -> None:
        save_folder(shipped, staging)
        for name, data in files.items():
            _write_json(staging / name, data)
        shutil.copyfile(demo_image, staging / "demo_reference.png")

    return replace_folder(out, fill)


def weight_files_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.safetensors"))


# ====================================================================== the run

@dataclass
class RunResult:
    status: str  # done | stopped | interrupted
    work: Path
    out: Path | None = None
    record: dict = field(default_factory=dict)


def discard_run(work: Path, state: dict, generator: str, stage_dirs: tuple[str, ...]) -> None:
    """``--restart``: remove a run's state once its ``run.json`` shows ``generator`` wrote it,
    and only the names a run writes (its stage folders, the latent cache, the record, the
    log); anything else in ``work`` stays."""
    if state.get("generator") != generator:
        raise RunError(f"{work} holds a run of {state.get('generator')}, not {generator}; pick another --work")
    for folder in stage_dirs:
        if (work / folder).is_symlink():
            (work / folder).unlink()  # the link only: what it points to is not the run's
        elif (work / folder).is_dir():
            shutil.rmtree(work / folder)  # a failure stops here: no half-removed run is resumed
    for file in (LATENTS_FILE, "train.log", *(p.name for p in work.glob(f".{LATENTS_FILE}.tmp-*")), RUN_JSON):
        (work / file).unlink(missing_ok=True)


def _stage_record(state: dict, name: str) -> dict:
    return state["stages"].setdefault(name, {"status": "pending", "wall_s": 0.0})


def run(config: BaseConfig, out: Path, *, threads: int | None = None, **options) -> RunResult:
    """Train (or continue) and export; see the module docstring. Restores torch's thread count."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads or min(2, os.cpu_count() or 1))
    try:
        return _run(config, out, threads=torch.get_num_threads(), **options)
    finally:
        torch.set_num_threads(previous)


def _run(config: BaseConfig, out: Path, *, work: Path | None = None, cache: Path | None = None, stage: str = "all",
         resume: bool = False, restart: bool = False, force: bool = False, budget_minutes: float = 85.0,
         threads: int = 1, workers: int | None = None, stop: StopRules | None = None,
         log: Callable | None = None, command: list[str] | None = None) -> RunResult:
    import torch

    from mannequin.generate import default_cache_dir

    config.validate()
    if stage not in ("vae", "unet", "all"):
        raise RunError(f"unknown stage {stage!r} (vae, unet or all)")
    out = Path(out).expanduser().resolve()
    work = Path(work).expanduser().resolve() if work else default_work_dir(out)
    cache = Path(cache).expanduser().resolve() if cache else default_cache_dir()
    stop = stop or StopRules()
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    check_destination(out, force)

    state = _read_json(work / RUN_JSON)
    if state is not None and restart:
        discard_run(work, state, GENERATOR, ("vae", "unet"))
        state = None
    if state is not None and not resume:
        raise RunError(f"a run already exists in {work}; pass --resume to continue it or --restart to discard it")
    if state is not None and state.get("config") != json.loads(json.dumps(config.to_dict())):
        changed = sorted(k for k, v in config.to_dict().items()
                         if json.loads(json.dumps(v)) != state.get("config", {}).get(k))
        raise RunError(f"the run in {work} was started with a different configuration ({', '.join(changed)}); "
                       "use the same options, or --restart")
    log = log or Log(work / "train.log")
    if state is None:
        state = {"generator": GENERATOR, "config": config.to_dict(), "created": _now(), "sessions": [],
                 "stages": {}, "out": str(out), "cache": str(cache)}
    session = {"command": command or [], "started": _now(), "machine": machine_info(), "stage": stage,
               "budget_minutes": budget_minutes, "workers": workers}
    state["sessions"].append(session)
    for name in ("data", "vae", "latents", "unet", "export"):
        _stage_record(state, name)
    _write_json(work / RUN_JSON, state)
    log(f"run: out {out}; work {work}; clip cache {cache}; {threads} threads; "
        f"budget {budget_minutes:g} min; stage {stage}")

    budget_s = budget_minutes * 60.0

    def total_elapsed() -> float:
        return sum(record.get("wall_s", 0.0) for record in state["stages"].values())

    def timed(name: str, function: Callable):
        started = time.perf_counter()
        try:
            return function()
        finally:
            _stage_record(state, name)["wall_s"] += time.perf_counter() - started
            _write_json(work / RUN_JSON, state)

    def finish(status: str, out_path: Path | None = None) -> RunResult:
        session["ended"], session["status"] = _now(), status
        _write_json(work / RUN_JSON, state)
        if status in ("stopped", "interrupted"):
            log(f"run: {status}; continue with the same command and --resume")
        return RunResult(status=status, work=work, out=out_path, record=state)

    # ---------------------------------------------------------------- data
    def prepare() -> dict:
        summary = render_clips(config, cache, workers, log)
        _stage_record(state, "data").update(
            status="done", train_clips=summary["train"]["indexed"], rendered_now=summary["train"]["rendered"]
            + summary["test"]["rendered"], actions=list(config.train_actions), held_out=list(config.held_out))
        return summary

    timed("data", prepare)
    train_set = training_clips(config, cache)
    state["stages"]["data"]["clips"] = {"train": len(train_set.paths), "fingerprint": train_set.fingerprint(),
                                        "actions": sorted(set(train_set.actions))}
    parts = build_parts(config)
    state["parameters"] = count_parameters(parts)

    # ---------------------------------------------------------------- stage 1
    vae_dir = work / "vae"
    vae_record = _stage_record(state, "vae")
    if stage in ("vae", "all") and continues(vae_record, later=_stage_record(state, "unet")):
        if train_set.frames is None:
            timed("data", lambda: load_frames(train_set, config.frames, log))
        vae_stage = VaeStage(config, parts["vae"], train_set.frames)
        saved = load_checkpoint(vae_dir)
        if saved:
            vae_stage.restore(*saved)
        vae_record["status"] = "running"
        status = train_stage(vae_stage, vae_dir, config, stop,
                             lambda: config.vae_budget_share * budget_s, log)
        vae_record["wall_s"] = vae_stage.elapsed  # up to its last checkpoint, over all sessions
        vae_record.update(steps_done=vae_stage.step, steps_planned=vae_stage.total)
        if status in ("stopped", "interrupted"):
            return finish(status)
        vae_stage.vae.eval().requires_grad_(False)

        def scale() -> float:
            return latent_scale(vae_stage.vae, train_set.frames, config.scale_frames, config.seed * 1000 + 4)

        factor = timed("latents", scale)
        vae_record.update(status=status, scaling_factor=factor,
                          final_loss_mean_of_last_100=curve(vae_stage.losses, config.log_every)["mean_of_last_100"])
        _write_json(work / RUN_JSON, state)
        log(f"[vae] {status}: {vae_stage.step} steps, scaling_factor {factor:.5f}")
    if stage == "vae":
        log("run: the VAE stage is finished; go on with --stage unet --resume (or --stage all --resume)")
        return finish("stage-done")
    if vae_record["status"] in NOT_FINISHED:
        raise RunError("the VAE stage has not finished in this run; run --stage vae (or all) first")

    # restore the finished VAE
    saved = load_checkpoint(vae_dir)
    with torch.no_grad():
        for name, param in parts["vae"].named_parameters():
            param.copy_(saved[1][f"param.{name}"])
    parts["vae"].register_to_config(scaling_factor=vae_record["scaling_factor"])
    vae_digest = file_digest(vae_dir / saved[0]["tensors"])
    del saved

    # ---------------------------------------------------------------- latents
    def latents():
        from safetensors.torch import load_file

        from flash_engine.tensorfiles import save_tensors

        path = work / LATENTS_FILE
        key = {"vae": vae_digest, "clips": train_set.fingerprint(), "flips": str(2 if config.hflip else 1)}
        if path.is_file():
            from safetensors import safe_open

            with safe_open(path, "pt") as handle:
                if handle.metadata() == key:
                    tensors = load_file(path)
                    return tensors["mean"], tensors["std"]
        if train_set.frames is None:
            load_frames(train_set, config.frames, log)
        started = time.perf_counter()
        parts["vae"].eval()
        mean, std = encode_latents(parts["vae"], train_set.frames, 2 if config.hflip else 1)
        log(f"latents: {mean.shape[0]} clips x {mean.shape[1]} in {time.perf_counter() - started:.1f} s")
        tmp = work / f".{LATENTS_FILE}.tmp-{os.getpid()}"
        save_tensors({"mean": mean, "std": std}, tmp, metadata=key)
        os.replace(tmp, path)
        return mean, std

    latent_mean, latent_std = timed("latents", latents)
    state["stages"]["latents"]["status"] = "done"
    train_set.frames = None  # the UNet stage needs latents only

    # ---------------------------------------------------------------- stage 2
    base = assemble(parts)
    unet_dir = work / "unet"
    unet_record = _stage_record(state, "unet")
    unet_stage = UnetStage(config, base, latent_mean, latent_std, train_set.action_ids(config.train_actions))
    saved = load_checkpoint(unet_dir)
    if saved:
        unet_stage.restore(*saved)
    del saved
    if continues(unet_record):
        unet_record["status"] = "running"
        others = total_elapsed() - unet_record["wall_s"]
        status = train_stage(unet_stage, unet_dir, config, stop,
                             lambda: budget_s - EXPORT_RESERVE_S - others, log)
        unet_record["wall_s"] = unet_stage.elapsed
        unet_record.update(steps_done=unet_stage.step, steps_planned=unet_stage.total)
        if status in ("stopped", "interrupted"):
            return finish(status)
        unet_record.update(status=status,
                           final_loss_mean_of_last_100=curve(unet_stage.losses, config.log_every)["mean_of_last_100"])
        _write_json(work / RUN_JSON, state)
        log(f"[unet] {status}: {unet_stage.step} steps")
    unet_stage.use_ema()
    del latent_mean, latent_std

    # ---------------------------------------------------------------- evaluation + export
    def finish_model() -> Path:
        from flash_engine.models.loading import load_base

        test_set = load_frames(eval_clips(config, cache), config.frames)
        results = evaluate(config, base, test_set)
        log(f"eval: {json.dumps({k: v for k, v in results.items() if k.endswith('actions')})}")
        split_motion_state(parts, base.unet.state_dict())
        vae_losses = _read_json(vae_dir / CHECKPOINT_JSON)["losses"]
        record = {
            "generator": GENERATOR, "name": config.name, "created": state["created"], "finished": _now(),
            "commands": [s["command"] for s in state["sessions"]], "sessions": state["sessions"],
            "machine": session["machine"],
            "wall_s": {name: round(r.get("wall_s", 0.0), 1) for name, r in state["stages"].items()},
            "stages": state["stages"], "parameters": state["parameters"], "config": config.to_dict(),
            "budget_minutes": budget_minutes,
        }
        record["wall_s"]["total"] = round(total_elapsed(), 1)
        losses = {"vae": curve(vae_losses, config.log_every), "unet": curve(unet_stage.losses, config.log_every),
                  "eval": results}
        card = {
            "name": config.name, "generator": GENERATOR, "resolution": [config.size, config.size],
            "frames": config.frames, "latent_channels": config.latent_channels,
            "train_actions": list(config.train_actions), "held_out_actions": list(config.held_out),
            "prompts": dict(PROMPTS), "clip_cache": {"seed": config.data_seed, "train_clips_per_action":
                                                     config.clips_per_action, "format": "png"},
            "demo": {"image": "demo_reference.png", "action": config.demo_action,
                     "prompt": PROMPTS[config.demo_action], "width": config.size, "height": config.size,
                     "frames": config.frames, "steps": 25, "guidance": 7.5, "seed": 7,
                     "source": f"test split, clip 0 of {config.demo_action} (unseen appearance and camera)"},
        }
        demo_image = test_set.paths[test_set.actions.index(config.demo_action)] / "frame_0001.png"
        export(parts, out, config, {"training.json": record, "losses.json": losses, "mannequin.json": card},
               demo_image)
        load_base(out)  # the shipped folder must load exactly as users load it
        log(f"export: {out} ({weight_files_size(out) / 2 ** 20:.1f} MiB of safetensors)")
        return out

    written = timed("export", finish_model)
    state["stages"]["export"]["status"] = "done"
    # the record inside the export was written before its own export time was known; refresh it
    record = _read_json(written / "training.json")
    record["wall_s"] = {name: round(r.get("wall_s", 0.0), 1) for name, r in state["stages"].items()}
    record["wall_s"]["total"] = round(total_elapsed(), 1)
    record["stages"] = state["stages"]
    _write_json(written / "training.json", record)
    log(f"run: done in {total_elapsed() / 60:.1f} min (all sessions)")
    return finish("done", written)


# ====================================================================== timing probe

def probe(config: BaseConfig, threads: int | None, workers: int | None, steps: int, clips_per_action: int,
          log: Callable, budget_minutes: float = 85.0) -> dict:
    """A few steps of every stage at the real sizes, with 1 thread and with ``threads``: seconds per
    step (wall and process CPU; the CPU figure is the steadier one on a shared machine) and the
    planned budget of the configured step counts."""
    import torch

    from mannequin.generate import generate

    threads = threads or min(2, os.cpu_count() or 1)
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    previous = torch.get_num_threads()
    machine = machine_info()

    def median_step(step: Callable, count: int) -> tuple[float, float]:
        walls, cpus = [], []
        for _ in range(count):
            wall, cpu = time.perf_counter(), time.process_time()
            step()
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        walls, cpus = sorted(walls[2:] or walls), sorted(cpus[2:] or cpus)
        return walls[len(walls) // 2], cpus[len(cpus) // 2]

    timings: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as scratch:
        # rendering: fresh clips in a scratch cache, so nothing is skipped
        started = time.perf_counter()
        summary = generate(Path(scratch), config.train_actions, clips_per_action, "train", config.data_seed,
                           config.size, config.frames, "png", workers, lambda m: None)
        render_wall = time.perf_counter() - started
        # steady state: each worker's seconds per clip (render + PNGs), the workers in parallel
        render_s = summary["render_write_s_per_clip"] / max(1, workers)
        render_start_s = max(0.0, render_wall - render_s * summary["rendered"])
        clips = load_frames(clip_list(config, scratch, "train", config.train_actions, clips_per_action),
                            config.frames)
        try:
            for count in sorted({1, threads}):
                torch.set_num_threads(count)
                parts = build_parts(config)
                vae_stage = VaeStage(config, parts["vae"], clips.frames)
                vae_wall, vae_cpu = median_step(vae_stage.train_step, steps)
                vae_stage.vae.eval().requires_grad_(False)
                started = time.perf_counter()
                mean, std = encode_latents(parts["vae"], clips.frames, 2 if config.hflip else 1)
                latents_s = (time.perf_counter() - started) / len(clips.paths)
                parts["vae"].register_to_config(scaling_factor=float(1 / mean.std()))
                unet_stage = UnetStage(config, assemble(parts), mean, std, clips.action_ids(config.train_actions))
                unet_wall, unet_cpu = median_step(unet_stage.train_step, steps)
                timings[str(count)] = {"vae_step_s": round(vae_wall, 3), "vae_step_cpu_s": round(vae_cpu, 3),
                                       "latents_per_clip_s": round(latents_s, 4),
                                       "unet_step_s": round(unet_wall, 3), "unet_step_cpu_s": round(unet_cpu, 3)}
                log(f"probe: {count} thread(s): {json.dumps(timings[str(count)])}")
        finally:
            torch.set_num_threads(previous)
    best = min(timings.values(), key=lambda t: config.vae_steps * t["vae_step_s"] + config.unet_steps
               * t["unet_step_s"])
    best_threads = [k for k, v in timings.items() if v is best][0]
    train_clips = config.clips_per_action * len(config.train_actions)
    eval_count = config.eval_clips_per_action * (len(config.train_actions) + len(config.held_out))
    plan_s = {
        "data": 2 * render_start_s + (train_clips + eval_count) * (render_s + 0.01),
        "vae": config.vae_steps * best["vae_step_s"],
        "latents": train_clips * best["latents_per_clip_s"] + 10,
        "unet": config.unet_steps * best["unet_step_s"],
        "eval_export": 60.0,
    }
    # step counts that would fill the budget (5% margin) at these timings, in the configured ratio
    fixed = plan_s["data"] + plan_s["latents"] + plan_s["eval_export"]
    fit = max(0.0, 0.95 * budget_minutes * 60 - fixed) / (plan_s["vae"] + plan_s["unet"])
    suggested = {"vae_steps": int(round(config.vae_steps * fit, -2)), "unet_steps": int(round(config.unet_steps * fit, -2)),
                 "threads": int(best_threads)}
    report = {"machine": machine, "load_average_after": machine_info()["load_average"], "workers": workers,
              "render": {"clips": summary["rendered"], "wall_s": round(render_wall, 1),
                         "s_per_clip": round(render_s, 3), "start_s": round(render_start_s, 1)},
              "batches": {"vae_frames": config.vae_batch, "unet_clips": config.unet_batch, "frames": config.frames},
              "timings_by_threads": timings, "plan_threads": int(best_threads),
              "parameters": count_parameters(parts),
              "steps": {"vae": config.vae_steps, "unet": config.unet_steps},
              "plan_minutes": {k: round(v / 60, 1) for k, v in plan_s.items()},
              "plan_total_minutes": round(sum(plan_s.values()) / 60, 1),
              "budget_minutes": budget_minutes, "suggested": suggested}
    log(json.dumps(report, indent=1))
    log(f"probe: at these timings the configured steps take {report['plan_total_minutes']} min; to fill "
        f"{budget_minutes:g} min use --threads {suggested['threads']} --vae-steps {suggested['vae_steps']} "
        f"--unet-steps {suggested['unet_steps']}")
    return report


# ====================================================================== CLI

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mannequin.train_base",
                                     description="Train the built-in `mannequin` base model (CPU, resumable).")
    parser.add_argument("--out", type=Path, help="the model folder to write (e.g. flash_engine/models/mannequin)")
    parser.add_argument("--work", type=Path, help="run state: checkpoints, latents, logs "
                        "(default ~/.cache/flash-previs/mannequin-base/<out name>-<hash>)")
    parser.add_argument("--cache", type=Path, help="mannequin clip cache (default $FLASH_MANNEQUIN_CACHE or "
                        "~/.cache/flash-previs/mannequin)")
    parser.add_argument("--minutes-budget", type=float, default=85.0, help="wall-time cap over all sessions")
    parser.add_argument("--stage", choices=("vae", "unet", "all"), default="all")
    parser.add_argument("--resume", action="store_true", help="continue the run in --work")
    parser.add_argument("--restart", action="store_true", help="discard the run in --work and start over")
    parser.add_argument("--force", action="store_true", help="replace --out even if it is not our export")
    parser.add_argument("--smoke", action="store_true", help="toy sizes, a few steps: the chain in seconds")
    parser.add_argument("--probe", action="store_true", help="time a few steps of each stage and print the plan")
    parser.add_argument("--probe-steps", type=int, default=8, help="steps per stage and thread count")
    parser.add_argument("--probe-clips", type=int, default=4, help="clips per training action to render")
    parser.add_argument("--probe-json", type=Path, help="also write the probe's report here")
    parser.add_argument("--threads", type=int, help="torch threads (default: 2 or the core count if fewer)")
    parser.add_argument("--workers", type=int, help="render processes for the clips (default 2)")
    parser.add_argument("--vae-steps", type=int)
    parser.add_argument("--unet-steps", type=int)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--stop-after", type=int, help=argparse.SUPPRESS)  # steps, then checkpoint and exit
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = smoke_config() if args.smoke else BaseConfig()
    if args.smoke and args.threads is None:
        args.threads = 1  # toy tensors: a second thread costs more in synchronisation than it saves
    if args.vae_steps is not None:
        config = config.replace(vae_steps=args.vae_steps)
    if args.unet_steps is not None:
        config = config.replace(unet_steps=args.unet_steps)
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    if args.probe:
        report = probe(config, args.threads, args.workers, max(3, args.probe_steps), args.probe_clips,
                       Log(None, args.quiet), args.minutes_budget)
        if args.probe_json:
            _write_json(args.probe_json, report)
        return 0
    if args.out is None:
        print("error: --out is required", file=sys.stderr)
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
    work = args.work.expanduser().resolve() if args.work else default_work_dir(out)
    log = Log(work / "train.log", quiet=args.quiet)
    stop = StopRules(should_stop=lambda: interrupted["flag"], stop_after=args.stop_after)
    try:
        result = run(config, out, work=work, cache=args.cache, stage=args.stage, resume=args.resume,
                     restart=args.restart, force=args.force, budget_minutes=args.minutes_budget,
                     threads=args.threads, workers=args.workers, stop=stop, log=log,
                     command=["python", "-m", "mannequin.train_base", *(argv if argv is not None else sys.argv[1:])])
    except (RunError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aborted; the last checkpoint stands: continue with the same command and --resume", file=sys.stderr)
        return 130
    if result.status == "interrupted":
        return 130
    return 0 if result.status in ("done", "stage-done", "stopped") else 1


if __name__ == "__main__":
    sys.exit(main())
