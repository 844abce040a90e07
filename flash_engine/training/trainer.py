"""The FLASH training loop: UNet phase (Motion Alignment Module), then decoder phase
(Detail Enhancement Decoder), with checkpoints that resume bit-for-bit.

All randomness (clip choice, frames, crops, augmentation, noise, timesteps, layer draws)
comes from one CPU ``torch.Generator`` whose state is saved in every checkpoint.
Checkpoints hold tensors in safetensors and the rest in JSON: nothing is pickled.

A step's batch is ``batch_size`` clips on each of the team's ranks (``distributed.Team``; one
process: ``SOLO``). Slot s of the effective batch (rank s // batch_size) draws everything from
its own generator, seeded by the s-th of the seeds the step first draws from the run's stream,
which every rank keeps in step: so rank r of a 2-rank run with batch 1 draws exactly what slot r
of a 1-process run with batch 2 draws. A batch of one draws from the run's stream itself. Each
rank runs its slots one after another (memory of one clip) and averages their gradients; DDP
averages the ranks'. Rank 0 alone writes checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
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
from flash_engine.training.clips import Clip, frames_needed, sample_frames
from flash_engine.training.config import TrainConfig
from flash_engine.training.distributed import SOLO, Team
from flash_engine.training.motion_alignment import install_motion_alignment

CHECKPOINT_JSON = layout.CHECKPOINT_JSON
PHASES = ("unet", "decoder")
# Reading a step's loss on the host waits for the GPU to finish that step and leaves its queue
# empty, so the losses stay on the device and are read in one go this often (and at checkpoints).
LOSS_READ_SECONDS = 1.0
SLOT_SEED_HIGH = 2**63 - 1  # slot seeds are drawn in [0, this)


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
                 device: torch.device = torch.device("cpu"), team: Team = SOLO):
        config.validate(base.size_multiple)
        self.base, self.clips, self.config, self.work_dir = base, clips, config, Path(work_dir)
        self.device, self.team = device, team
        self.effective_batch = config.batch_size * team.world_size
        # (phase, step, ranks, effective batch) where a run started or resumed with another batch
        self.batches: list[dict] = []
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
        self.unet_optimizer = torch.optim.AdamW(list(self.unet_params.values()), lr=self.learning_rates["unet"],
                                                weight_decay=config.weight_decay, fused=cuda or None)
        with torch.random.fork_rng(devices=[]):  # the new layers' init is part of the run's seed
            torch.manual_seed(config.seed)
            self.decoder = DetailEnhancementDecoder.from_vae(vae)
        self.decoder.freeze_stock_layers()
        self.decoder_params = dict(self.decoder.enhancers.named_parameters())
        self.decoder_optimizer = torch.optim.AdamW(list(self.decoder_params.values()),
                                                   lr=self.learning_rates["decoder"],
                                                   weight_decay=config.weight_decay, fused=cuda or None)
        self._text_cache: dict[str, torch.Tensor] = {}
        with team.talking("the start (DDP's first sync)"):  # several ranks: DDP; one: the modules themselves
            self.unet_model, self.decoder_model = team.wrap(unet), team.wrap(self.decoder)

    # ------------------------------------------------------------------ helpers

    @property
    def learning_rates(self) -> dict[str, float]:
        """Each optimizer's rate at this run's effective batch (the config's are for batch 1)."""
        config = self.config
        return {"unet": config.scaled_rate(config.learning_rate, self.effective_batch),
                "decoder": config.scaled_rate(config.decoder_learning_rate, self.effective_batch)}

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

    def pick_clip(self, generator: torch.Generator) -> Clip:
        return self.clips[int(torch.randint(len(self.clips), (), generator=generator))]

    def training_video(self, num_frames: int, generator: torch.Generator) -> tuple[Clip, torch.Tensor]:
        clip = self.pick_clip(generator)
        video = sample_frames(clip, num_frames, self.config.stride, generator, self.device)
        return clip, flip_and_crop(video, (self.config.width, self.config.height), generator)

    def decoder_video(self, generator: torch.Generator) -> torch.Tensor:
        """A decoder sample: frame 0 is its reference, the others its targets.

        ``consecutive`` (default): ``decoder_frames`` frames in a row (at ``stride``), so the
        targets are 1..decoder_frames-1 frames from their reference. ``spread``: the reference is the first frame of a
        UNet-length window and the targets ``decoder_frames - 1`` distinct later frames of it,
        1..num_frames-1 from it, as generated frames are at inference. The two were measured
        to pull limbs alike (``python -m mannequin.decoder_probe``)."""
        config = self.config
        if config.decoder_sampling == "consecutive":
            return self.training_video(config.decoder_frames, generator)[1]
        clip = self.pick_clip(generator)
        window = max(config.num_frames, config.decoder_frames)  # scan_clips made sure the clip has it
        start = int(torch.randint(0, len(clip.frames) - frames_needed(window, config.stride) + 1, (1,),
                                  generator=generator))
        later = (torch.randperm(window - 1, generator=generator)[: config.decoder_frames - 1].sort().values + 1)
        picked = [start + config.stride * i for i in (0, *later.tolist())]  # chosen on the host, sent once
        frames = to_device(torch.from_numpy(np.ascontiguousarray(clip.frames[picked])), self.device)
        video = frames.permute(0, 3, 1, 2).float() / 255.0
        return flip_and_crop(video, (config.width, config.height), generator)

    def slot_generators(self) -> list[torch.Generator]:
        """This rank's slots of the step's batch, each with the generator it draws from."""
        if self.effective_batch == 1:
            return [self.generator]  # the run's own stream, as before there were batches
        seeds = torch.randint(SLOT_SEED_HIGH, (self.effective_batch,), generator=self.generator).tolist()
        first = self.team.rank * self.config.batch_size
        return [torch.Generator("cpu").manual_seed(seed) for seed in seeds[first: first + self.config.batch_size]]

    def _batch_step(self, model: torch.nn.Module, sample_loss: Callable) -> torch.Tensor:
        """Backward through each of this rank's slots, the gradient the mean of theirs (DDP's
        sync, on the last, averages over ranks); returns the step's mean loss over every rank."""
        generators = self.slot_generators()
        weight = 1.0 / len(generators)
        total = None
        for index, generator in enumerate(generators):
            with self.team.accumulating(model, last=index == len(generators) - 1):
                loss = sample_loss(generator, weight)
            total = loss if total is None else total + loss
        return self.team.average(total if len(generators) == 1 else total * weight)

    @torch.no_grad()
    def encode(self, videos: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(V, F, 3, H, W) in [0, 1] → scaled latents (V, C, F, h, w)."""
        count, frames = videos.shape[:2]
        vae = self.base.vae
        pixels = (videos.flatten(0, 1) * 2 - 1).to(self.device, vae.dtype)
        # In bf16 like the UNet: at 512² encoding a 16-frame clip costs almost a UNet forward (17.9
        # vs 19.7 TFLOP, bench/flop_budget.py). Not in fp16, whose range the VAE can overflow.
        with self._autocast() if self.autocast_dtype == torch.bfloat16 else contextlib.nullcontext():
            dist = vae.encode(pixels).latent_dist
        mean, std = dist.mean.float(), dist.std.float()
        noise = to_device(torch.randn(mean.shape, generator=generator or self.generator), self.device)
        latents = (mean + std * noise) * vae.config.scaling_factor
        return latents.unflatten(0, (count, frames)).transpose(1, 2)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # ------------------------------------------------------------------ steps

    def unet_step(self) -> torch.Tensor:
        """One FLASH step; returns the loss still on the device (reading it would sync)."""
        loss = self._batch_step(self.unet_model, self.unet_sample_loss)
        self.unet_optimizer.step()
        self.unet_optimizer.zero_grad(set_to_none=True)
        return loss

    def unet_sample_loss(self, generator: torch.Generator, weight: float = 1.0) -> torch.Tensor:
        """One clip's FLASH loss, its gradient (times ``weight``) accumulated."""
        config, context = self.config, self.base.attention
        clip, video = self.training_video(config.num_frames, generator)
        videos = [video]
        if config.strong_augmentation:
            videos.append(strong_augment(video, config.strong, generator))
        latents = self.encode(torch.stack(videos), generator)
        count = latents.shape[0]
        noise = to_device(torch.randn(latents[:1].shape, generator=generator), self.device, latents.dtype)
        noise = noise.expand_as(latents)  # same noise and t for both videos of the pair
        train_steps = self.base.scheduler.config.num_train_timesteps
        timestep = to_device(sample_timesteps(generator, 1, config.timestep_skew, train_steps), self.device)
        noisy = self.base.scheduler.add_noise(latents, noise, timestep)
        noisy[:, :, 0] = latents[:, :, 0]  # noise-free first frame
        layers = context.cross_frame_layers
        share = torch.randperm(len(layers), generator=generator)[: round(config.correspondence_fraction
                                                                             * len(layers))]
        paired = config.strong_augmentation
        shared = frozenset(layers[i] for i in share.tolist()) if paired and config.correspondence_alignment \
            else frozenset()
        text = self.text_embeddings(clip.prompt).repeat(count * config.num_frames, 1, 1)
        with context.training_switches(pairs=1, align_motion=paired and config.feature_alignment,
                                       share_qk_layers=shared):
            with self._autocast():
                prediction = self.unet_model(noisy, timestep.expand(count), encoder_hidden_states=text).sample
            # frame 0 is clean, so the loss covers frames 1..N-1 (as LAMP)
            loss = F.mse_loss(prediction[:, :, 1:].float(), noise[:, :, 1:].float())
            # recomputation under checkpointing still sees the switches above
            (loss if weight == 1.0 else loss * weight).backward()
        return loss.detach()

    def decoder_step(self) -> torch.Tensor:
        loss = self._batch_step(self.decoder_model, self.decoder_sample_loss)
        self.decoder_optimizer.step()
        self.decoder_optimizer.zero_grad(set_to_none=True)
        return loss

    def decoder_sample_loss(self, generator: torch.Generator, weight: float = 1.0) -> torch.Tensor:
        config = self.config
        video = self.decoder_video(generator)
        distorted = distort(video, config.distort, generator)
        vae = self.base.vae
        with torch.no_grad():
            _, features = encode_with_features(vae, (video[:1] * 2 - 1).to(self.device, vae.dtype),
                                               self.decoder.enhanced_levels)
            latents = self.encode(distorted.unsqueeze(0), generator)[0].transpose(0, 1) / vae.config.scaling_factor
        enhance = torch.arange(latents.shape[0]) > 0
        with self._autocast():
            decoded = self.decoder_model(latents, features, enhance)
        loss = F.mse_loss(decoded.float(), (video * 2 - 1).to(self.device))
        (loss if weight == 1.0 else loss * weight).backward()
        return loss.detach()

    # ------------------------------------------------------------------ loop

    def run(self, progress: Callable | None = None, should_cancel: Callable[[], bool] | None = None,
            stop_after: int | None = None) -> None:
        """Train to the end (or ``stop_after`` more steps); checkpoint every N steps and on cancel."""
        progress = progress or (lambda *args, **kwargs: None)
        self.decoder.train()
        self._note_batch()
        done_now = 0
        for phase in PHASES[PHASES.index(self.phase):]:
            if phase != self.phase:
                self.phase, self.step = phase, 0
            total = self.total(phase)
            step_fn = self.unet_step if phase == "unet" else self.decoder_step
            started, start_step = time.perf_counter(), self.step
            while self.step < total:
                where = f"{phase} step {self.step + 1}"
                with self.team.talking(where):  # every rank stops at the same step
                    stop = should_cancel is not None and self.team.any(should_cancel())
                if stop:
                    self.save_checkpoint()
                    raise JobCancelled()
                with self.team.talking(where):
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

    def _note_batch(self) -> None:
        entry = {"phase": self.phase, "step": self.step, "ranks": self.team.world_size,
                 "effective_batch": self.effective_batch}
        last = self.batches[-1] if self.batches else None
        if last is None or (last["ranks"], last["effective_batch"]) != (entry["ranks"], entry["effective_batch"]):
            self.batches.append(entry)

    def batch_report(self) -> dict:
        """For the artifact's manifest: the batch, the learning-rate rule and the rates it gave."""
        config = self.config
        report = {"ranks": self.team.world_size, "per_rank": config.batch_size,
                  "effective": self.effective_batch, "lr_rule": config.lr_scaling,
                  "learning_rate": self.learning_rates["unet"],
                  "decoder_learning_rate": self.learning_rates["decoder"]}
        if len(self.batches) > 1:  # resumed with another number of ranks
            report["changes"] = [f"{entry['phase']} step {entry['step']}: {entry['ranks']} rank(s), effective "
                                 f"batch {entry['effective_batch']}" for entry in self.batches]
        return report

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

    def save_checkpoint(self) -> Path | None:
        """``checkpoint-<phase>-<step>.safetensors`` + ``checkpoint.json`` (replaced atomically, last);
        on rank 0 only (every rank holds the same state)."""
        if not self.team.is_main:
            return None
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
                "optimizers": optimizers, "config": self.config.to_dict(), "base_model": self.base.identity,
                "batches": self.batches}
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
            for group in optimizer.param_groups:  # this run's rate: the checkpoint's may be another batch's
                group["lr"] = self.learning_rates[name]
        self.phase, self.step, self.losses = meta["phase"], meta["step"], meta["losses"]
        self.batches = meta.get("batches") or [{"phase": "unet", "step": 0, "ranks": 1, "effective_batch": 1}]
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
