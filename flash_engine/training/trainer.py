"""The FLASH training loop: UNet phase (Motion Alignment Module), then decoder phase
(Detail Enhancement Decoder), with checkpoints that resume bit-for-bit.

All randomness (clip choice, frames, crops, augmentation, noise, timesteps, layer draws)
comes from one CPU ``torch.Generator`` whose state is saved in every checkpoint.
Checkpoints hold tensors in safetensors and the rest in JSON: nothing is pickled.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from flash_engine.models.base import BaseModel
from flash_engine.models.decoder import DetailEnhancementDecoder, encode_with_features
from flash_engine import layout
from flash_engine.errors import JobCancelled
from flash_engine.devices import to_device
from flash_engine.tensorfiles import save_tensors
from flash_engine.training.augment import distort, flip_and_crop, strong_augment
from flash_engine.training.checkpoint import load_optimizer, optimizer_tensors
from flash_engine.training.clips import Clip, sample_frames
from flash_engine.training.config import TrainConfig
from flash_engine.training.motion_alignment import install_motion_alignment

CHECKPOINT_JSON = layout.CHECKPOINT_JSON
PHASES = ("unet", "decoder")
# Reading a step's loss on the host waits for the GPU to finish that step and leaves its queue
# empty, so the losses stay on the device and are read in one go this often (and at checkpoints).
LOSS_READ_SECONDS = 1.0


def is_trainable_unet_parameter(name: str) -> bool:
    """Motion modules (temporal attention) + spatial cross-frame attention K and V."""
    if ".motion_modules." in name or name.startswith("motion_modules."):
        return True
    return ".attentions." in name and (".attn1.to_k." in name or ".attn1.to_v." in name)


def sample_timesteps(generator: torch.Generator, count: int, skew: float, train_steps: int) -> torch.Tensor:
    u = torch.rand(count, generator=generator)
    return ((1 - u ** skew) * train_steps).long().clamp(0, train_steps - 1)


class FlashTrainer:
    def __init__(self, base: BaseModel, clips: list[Clip], config: TrainConfig, work_dir: Path,
                 device: torch.device = torch.device("cpu")):
        config.validate(base.size_multiple)
        self.base, self.clips, self.config, self.work_dir = base, clips, config, Path(work_dir)
        self.device = device
        self.generator = torch.Generator("cpu").manual_seed(config.seed)
        self.phase, self.step = "unet", 0
        self.losses: dict[str, list[float]] = {"unet": [], "decoder": []}
        self._unread_losses: list[torch.Tensor] = []  # this phase's newest steps, still on the device
        self._losses_read_at = -math.inf
        cuda = device.type == "cuda"
        self.autocast_dtype = torch.bfloat16 if config.mixed_precision == "auto" and cuda else (
            {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.mixed_precision))
        unet, vae = base.unet, base.vae
        for module in (unet, vae, base.text_encoder):
            module.to(device)
        install_motion_alignment(unet, config.tau)
        self.unet_params = {name: p for name, p in unet.named_parameters() if is_trainable_unet_parameter(name)}
        for name, param in unet.named_parameters():
            param.requires_grad_(name in self.unet_params)
        if config.gradient_checkpointing == "on" or (config.gradient_checkpointing == "auto" and cuda):
            unet.enable_gradient_checkpointing()
        self.unet_optimizer = torch.optim.AdamW(list(self.unet_params.values()), lr=config.learning_rate,
                                                weight_decay=config.weight_decay, fused=cuda or None)
        with torch.random.fork_rng(devices=[]):  # the new layers' init is part of the run's seed
            torch.manual_seed(config.seed)
            self.decoder = DetailEnhancementDecoder.from_vae(vae)
        self.decoder.freeze_stock_layers()
        self.decoder_params = dict(self.decoder.enhancers.named_parameters())
        self.decoder_optimizer = torch.optim.AdamW(list(self.decoder_params.values()),
                                                   lr=config.decoder_learning_rate, weight_decay=config.weight_decay,
                                                   fused=cuda or None)
        self._text_cache: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ helpers

    def total(self, phase: str) -> int:
        if phase == "decoder":
            return self.config.decoder_steps if self.config.train_decoder else 0
        return self.config.steps

    def text_embeddings(self, prompt: str) -> torch.Tensor:
        if prompt not in self._text_cache:
            tokenizer = self.base.tokenizer
            ids = tokenizer([prompt], padding="max_length", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids.to(self.device)
            with torch.no_grad():
                self._text_cache[prompt] = self.base.text_encoder(ids)[0]
        return self._text_cache[prompt]

    def pick_clip(self) -> Clip:
        return self.clips[int(torch.randint(len(self.clips), (), generator=self.generator))]

    def training_video(self, num_frames: int) -> tuple[Clip, torch.Tensor]:
        clip = self.pick_clip()
        video = sample_frames(clip, num_frames, self.config.stride, self.generator, self.device)
        return clip, flip_and_crop(video, (self.config.width, self.config.height), self.generator)

    @torch.no_grad()
    def encode(self, videos: torch.Tensor) -> torch.Tensor:
        """(V, F, 3, H, W) in [0, 1] → scaled latents (V, C, F, h, w)."""
        count, frames = videos.shape[:2]
        vae = self.base.vae
        pixels = (videos.flatten(0, 1) * 2 - 1).to(self.device, vae.dtype)
        # In bf16 like the UNet: at 512² encoding a 16-frame clip costs almost a UNet forward (17.9
        # vs 19.7 TFLOP, bench/flop_budget.py). Not in fp16, whose range the VAE can overflow.
        with self._autocast() if self.autocast_dtype == torch.bfloat16 else contextlib.nullcontext():
            dist = vae.encode(pixels).latent_dist
        mean, std = dist.mean.float(), dist.std.float()
        noise = to_device(torch.randn(mean.shape, generator=self.generator), self.device)
        latents = (mean + std * noise) * vae.config.scaling_factor
        return latents.unflatten(0, (count, frames)).transpose(1, 2)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # ------------------------------------------------------------------ steps

    def unet_step(self) -> torch.Tensor:
        """One FLASH step; returns the loss still on the device (reading it would sync)."""
        config, context = self.config, self.base.attention
        clip, video = self.training_video(config.num_frames)
        videos = [video]
        if config.strong_augmentation:
            videos.append(strong_augment(video, config.strong, self.generator))
        latents = self.encode(torch.stack(videos))
        count = latents.shape[0]
        noise = to_device(torch.randn(latents[:1].shape, generator=self.generator), self.device, latents.dtype)
        noise = noise.expand_as(latents)  # same noise and t for both videos of the pair
        train_steps = self.base.scheduler.config.num_train_timesteps
        timestep = to_device(sample_timesteps(self.generator, 1, config.timestep_skew, train_steps), self.device)
        noisy = self.base.scheduler.add_noise(latents, noise, timestep)
        noisy[:, :, 0] = latents[:, :, 0]  # noise-free first frame
        layers = context.cross_frame_layers
        share = torch.randperm(len(layers), generator=self.generator)[: round(config.correspondence_fraction
                                                                             * len(layers))]
        paired = config.strong_augmentation
        shared = frozenset(layers[i] for i in share.tolist()) if paired and config.correspondence_alignment \
            else frozenset()
        text = self.text_embeddings(clip.prompt).repeat(count * config.num_frames, 1, 1)
        with context.training_switches(pairs=1, align_motion=paired and config.feature_alignment,
                                       share_qk_layers=shared):
            with self._autocast():
                prediction = self.base.unet(noisy, timestep.expand(count), encoder_hidden_states=text).sample
            # frame 0 is clean, so the loss covers frames 1..N-1 (as LAMP)
            loss = F.mse_loss(prediction[:, :, 1:].float(), noise[:, :, 1:].float())
            loss.backward()  # recomputation under checkpointing still sees the switches above
        self.unet_optimizer.step()
        self.unet_optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def decoder_step(self) -> torch.Tensor:
        config = self.config
        _, video = self.training_video(config.decoder_frames)
        distorted = distort(video, config.distort, self.generator)
        vae = self.base.vae
        with torch.no_grad():
            _, features = encode_with_features(vae, (video[:1] * 2 - 1).to(self.device, vae.dtype),
                                               self.decoder.enhanced_levels)
            latents = self.encode(distorted.unsqueeze(0))[0].transpose(0, 1) / vae.config.scaling_factor
        enhance = torch.arange(latents.shape[0]) > 0
        with self._autocast():
            decoded = self.decoder(latents, features, enhance)
        loss = F.mse_loss(decoded.float(), (video * 2 - 1).to(self.device))
        loss.backward()
        self.decoder_optimizer.step()
        self.decoder_optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    # ------------------------------------------------------------------ loop

    def run(self, progress: Callable | None = None, should_cancel: Callable[[], bool] | None = None,
            stop_after: int | None = None) -> None:
        """Train to the end (or ``stop_after`` more steps); checkpoint every N steps and on cancel."""
        progress = progress or (lambda *args, **kwargs: None)
        self.decoder.train()
        done_now = 0
        for phase in PHASES[PHASES.index(self.phase):]:
            if phase != self.phase:
                self.phase, self.step = phase, 0
            total = self.total(phase)
            step_fn = self.unet_step if phase == "unet" else self.decoder_step
            started, start_step = time.perf_counter(), self.step
            while self.step < total:
                if should_cancel is not None and should_cancel():
                    self.save_checkpoint()
                    raise JobCancelled()
                self._unread_losses.append(step_fn())
                self.step += 1
                done_now += 1
                if (self.step == total or not self.losses[phase]
                        or time.monotonic() - self._losses_read_at >= LOSS_READ_SECONDS):
                    self.read_losses()
                rate = (self.step - start_step) / max(time.perf_counter() - started, 1e-9)
                progress(phase, self.step, total, loss=self.losses[phase][-1] if self.losses[phase] else None,
                         it_per_s=rate, eta_s=(total - self.step) / rate if rate else None)
                if self.step % self.config.checkpoint_every == 0 and self.step < total:
                    self.save_checkpoint()
                if stop_after is not None and done_now >= stop_after:
                    self.save_checkpoint()
                    return
        self.phase, self.step = "done", 0
        self.decoder.eval()

    def read_losses(self) -> None:
        """Bring the unread step losses to ``self.losses`` with one host-device sync."""
        if self._unread_losses:
            self.losses[self.phase].extend(torch.stack(self._unread_losses).float().tolist())
            self._unread_losses.clear()
        self._losses_read_at = time.monotonic()

    # ------------------------------------------------------------------ results

    def unet_state(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().cpu().clone() for name, p in self.unet_params.items()}

    def decoder_state(self) -> dict[str, torch.Tensor] | None:
        return self.decoder.enhancement_state_dict() if self.config.train_decoder else None

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> Path:
        """``checkpoint-<phase>-<step>.safetensors`` + ``checkpoint.json`` (replaced atomically, last)."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.read_losses()
        tensors = {f"unet.{k}": v for k, v in self.unet_state().items()}
        tensors.update({f"decoder.{k}": v.detach().cpu() for k, v in self.decoder_params.items()})
        tensors["rng.generator"] = self.generator.get_state()
        optimizers = {name: optimizer_tensors(optimizer, f"optim.{name}", tensors)
                      for name, optimizer in (("unet", self.unet_optimizer), ("decoder", self.decoder_optimizer))}
        tensor_file = f"checkpoint-{self.phase}-{self.step}.safetensors"
        save_tensors(tensors, self.work_dir / tensor_file)
        meta = {"tensors": tensor_file, "phase": self.phase, "step": self.step, "losses": self.losses,
                "optimizers": optimizers, "config": self.config.to_dict(), "base_model": self.base.identity}
        temporary = self.work_dir / (CHECKPOINT_JSON + ".tmp")
        temporary.write_text(json.dumps(meta))
        os.replace(temporary, self.work_dir / CHECKPOINT_JSON)  # the checkpoint exists from here on
        for old in self.work_dir.glob("checkpoint-*.safetensors"):
            if old.name != tensor_file:
                old.unlink()
        return self.work_dir / CHECKPOINT_JSON

    def load_checkpoint(self) -> dict:
        meta = json.loads((self.work_dir / CHECKPOINT_JSON).read_text())
        tensors = load_file(self.work_dir / meta["tensors"])
        with torch.no_grad():
            for name, param in self.unet_params.items():
                param.copy_(tensors[f"unet.{name}"])
            for name, param in self.decoder_params.items():
                param.copy_(tensors[f"decoder.{name}"])
        self.generator.set_state(tensors["rng.generator"])
        for name, optimizer in (("unet", self.unet_optimizer), ("decoder", self.decoder_optimizer)):
            load_optimizer(optimizer, f"optim.{name}", tensors, meta["optimizers"][name])
        self.phase, self.step, self.losses = meta["phase"], meta["step"], meta["losses"]
        return meta


def read_checkpoint_meta(work_dir: Path) -> dict | None:
    path = Path(work_dir) / CHECKPOINT_JSON
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def loss_trend(losses: list[float], window: int = 10) -> tuple[float | None, float | None]:
    """Mean loss of the first and last ``window`` steps (for reports); None without steps
    (JSON and TOML readers take no NaN)."""
    if not losses:
        return None, None
    window = max(1, min(window, len(losses) // 2 or 1))
    return sum(losses[:window]) / window, sum(losses[-window:]) / window
