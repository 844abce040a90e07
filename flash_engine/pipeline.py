"""FLASH sampling: clean first frame, DDIM with classifier-free guidance, latent AdaIN,
the Detail Enhancement Decoder, and optional ControlNets steering the motion.

The reference image is encoded once; its clean latent replaces latent frame 0 before
every UNet call, so the first frame is never noised (spec: "Noise-free first frame").

A ``Control`` (a diffusers ``ControlNetModel`` and its condition per frame) steers through
the UNet's ``down_block_additional_residuals`` / ``mid_block_additional_residual``, as
diffusers' ``AnimateDiffControlNetPipeline`` does: frames folded into the batch, prompt
embeddings per frame, several controls summed each with its own scale (``MultiControlNetModel``).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from flash_engine.errors import FlashError, JobCancelled
from flash_engine.requests import DEFAULT_FRAMES, DEFAULT_GUIDANCE, DEFAULT_STEPS
from flash_engine.images import check_size, fit_reference, to_model_pixels, to_uint8_frames
from flash_engine.models.base import BaseModel
from flash_engine.models.decoder import DetailEnhancementDecoder, encode_with_features
from flash_engine.devices import to_device
from flash_engine.weights import default_weights_dir

ProgressFn = Callable[[str, int, int], None]
# FLASH's UNet, cross-frame processors included, traces as one graph: a break is a bug, and
# one graph is what CUDA graphs ("reduce-overhead") need.
COMPILE_OPTIONS: dict = {"fullgraph": True}


@dataclass
class AnimationSettings:
    prompt: str
    negative_prompt: str = ""
    num_frames: int = DEFAULT_FRAMES
    steps: int = DEFAULT_STEPS
    guidance: float = DEFAULT_GUIDANCE
    seed: int = 0
    width: int = 512
    height: int = 512
    adain: bool = True

    def validate(self, max_frames: int, size_multiple: int) -> None:
        if self.num_frames < 2:
            raise FlashError(f"frames must be at least 2 (got {self.num_frames})", "use --frames 16", code="bad_frames")
        if self.num_frames > max_frames:
            raise FlashError(f"frames must be at most {max_frames} for this motion module (got {self.num_frames})",
                             f"use --frames {max_frames} or fewer", code="bad_frames")
        if self.steps < 1:
            raise FlashError(f"steps must be at least 1 (got {self.steps})", "use --steps 25", code="bad_steps")
        if self.guidance < 0:
            raise FlashError(f"guidance must not be negative (got {self.guidance})", "use --guidance 7.5",
                             code="bad_guidance")
        if not self.prompt.strip():
            raise FlashError("the prompt is empty", "pass --prompt TEXT or --action PRESET", code="bad_prompt")
        check_size("width", self.width, size_multiple)
        check_size("height", self.height, size_multiple)


def adain_latents(latents: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Match every frame's per-channel mean/std over H×W to frame 0's. (B, C, F, H, W)."""
    mean = latents.mean(dim=(3, 4), keepdim=True)
    std = latents.std(dim=(3, 4), keepdim=True)
    return (latents - mean) / (std + eps) * std[:, :, :1] + mean[:, :, :1]


@dataclass
class Control:
    """One ControlNet steering a clip: ``frames`` is its condition per frame, (F, 3, H, W) in
    [0, 1] at the clip's size (no normalisation, as diffusers feeds ControlNets); ``scale`` its
    conditioning scale; ``start``/``end`` the fraction of the steps it steers over."""

    net: torch.nn.Module  # diffusers.ControlNetModel
    frames: torch.Tensor
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0
    name: str = "control"

    def active(self, step: int, total: int) -> bool:
        """diffusers' rule (``control_guidance_start/end``): step i of N steers when
        start <= i/N and (i+1)/N <= end. A zero scale adds nothing, so it never runs."""
        return self.scale != 0 and self.start <= step / total and (step + 1) / total <= self.end


def check_controls(controls: Sequence[Control], settings: "AnimationSettings") -> None:
    """A one-line FlashError when a control's condition is not one (3, H, W) image per frame."""
    wanted = (settings.num_frames, 3, settings.height, settings.width)
    for control in controls:
        if tuple(control.frames.shape) != wanted:
            shape = "x".join(map(str, control.frames.shape))
            raise FlashError(f"the {control.name} condition is {shape}, the clip needs {'x'.join(map(str, wanted))} "
                             "(frames x 3 x height x width)", f"give one {control.name} image per frame at the "
                             "clip's size", code="bad_control")


@dataclass
class AnimationResult:
    frames: np.ndarray  # (F, H, W, 3) uint8
    latents: torch.Tensor  # (1, C, F, h, w), what was decoded
    timings: dict[str, float] = field(default_factory=dict)


class FlashPipeline:
    """One base model on one device, ready to animate; keep it around to stay warm."""

    def __init__(
        self,
        base: BaseModel,
        decoder: DetailEnhancementDecoder | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        offload: bool = False,
        decode_chunk: int = 1,
        channels_last: bool = False,
        compile_unet: bool | str = False,
    ):
        """``decode_chunk``: frames per decoder call (1 needs the least memory). ``channels_last``
        and ``compile_unet`` (True, or a ``torch.compile`` mode such as ``"reduce-overhead"``
        for CUDA graphs) are off until a GPU measurement shows they pay (docs/benchmarks.md);
        the first compiled call compiles, later processes reuse the cache."""
        self.base = base
        self.device = torch.device(device)
        self.dtype = dtype
        # fp16 VAEs overflow on bright images; bf16 and fp32 are safe.
        self.vae_dtype = torch.float32 if dtype == torch.float16 else dtype
        self.offload = offload and self.device.type != "cpu"
        self.decode_chunk = decode_chunk
        self.decoder = decoder if decoder is not None else DetailEnhancementDecoder.from_vae(base.vae)
        self.decoder.requires_grad_(False).eval()
        placements = {
            base.text_encoder: dtype,
            base.unet: dtype,
            base.vae: self.vae_dtype,
            self.decoder: self.vae_dtype,
        }
        for module, module_dtype in placements.items():
            module.to(device="cpu" if self.offload else self.device, dtype=module_dtype)
        if channels_last:
            base.unet.to(memory_format=torch.channels_last)
        if compile_unet:
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(default_weights_dir().parent / "compiled"))
            mode = {"mode": compile_unet} if isinstance(compile_unet, str) else {}
            base.unet.compile(**COMPILE_OPTIONS, **mode)

    def place(self, module: torch.nn.Module) -> torch.nn.Module:
        """Put a module the pipeline runs with the UNet (a ControlNet) where the UNet is kept,
        in its dtype, frozen."""
        module.requires_grad_(False).eval()
        return module.to(device="cpu" if self.offload else self.device, dtype=self.dtype)

    @property
    def max_frames(self) -> int:
        return int(self.base.unet.config.get("motion_max_seq_length", 32))

    @contextlib.contextmanager
    def _on_device(self, *modules: torch.nn.Module):
        """Model CPU offload: a module visits the GPU only for its own phase."""
        if not self.offload:
            yield
            return
        for module in modules:
            module.to(self.device)
        try:
            yield
        finally:
            for module in modules:
                module.to("cpu")
            torch.cuda.empty_cache()

    def encode_prompt(self, prompt: str, negative_prompt: str, guided: bool) -> torch.Tensor:
        tokenizer = self.base.tokenizer
        texts = [negative_prompt, prompt] if guided else [prompt]
        tokens = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length,
                           truncation=True, return_tensors="pt")
        with self._on_device(self.base.text_encoder):
            embeddings = self.base.text_encoder(tokens.input_ids.to(self.device))[0]
        return embeddings.to(self.dtype)

    @torch.no_grad()
    def __call__(
        self,
        reference,
        settings: AnimationSettings,
        progress: ProgressFn | None = None,
        should_cancel: Callable[[], bool] | None = None,
        controls: Sequence[Control] | None = None,
    ) -> AnimationResult:
        """``controls``: ControlNets steering the motion (none: FLASH as without them)."""
        settings.validate(self.max_frames, self.base.size_multiple)
        controls = list(controls or ())
        check_controls(controls, settings)
        progress = progress or (lambda phase, step, total: None)
        timings: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal clock
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            now = time.perf_counter()
            timings[name] = round(now - clock, 4)
            clock = now

        def check_cancel() -> None:
            if should_cancel is not None and should_cancel():
                raise JobCancelled()

        frames, vae, unet, scheduler = settings.num_frames, self.base.vae, self.base.unet, self.base.scheduler
        guided = settings.guidance > 1.0
        progress("encode", 0, 1)
        text = self.encode_prompt(settings.prompt, settings.negative_prompt, guided)
        encoder_hidden_states = text.repeat_interleave(frames, dim=0)  # (batch·F, 77, D)

        pixels = to_model_pixels(fit_reference(reference, settings.width, settings.height))
        with self._on_device(vae):
            latent_mean, reference_features = encode_with_features(
                vae, pixels.to(self.device, self.vae_dtype), self.decoder.enhanced_levels)
        reference_latent = (latent_mean * vae.config.scaling_factor).to(self.dtype)  # (1, C, h, w)
        lap("encode")
        check_cancel()

        # Noise drawn on the CPU from the seed: the same seed gives the same clip on any device.
        generator = torch.Generator("cpu").manual_seed(settings.seed)
        channels, height, width = reference_latent.shape[1:]
        latents = torch.randn((1, channels, frames, height, width), generator=generator, dtype=torch.float32)
        latents = to_device(latents * scheduler.init_noise_sigma, self.device, self.dtype)
        with self._on_device(unet, *(control.net for control in controls)):
            latents = self.denoise(latents, reference_latent, encoder_hidden_states, settings,
                                   lambda step, total: progress("denoise", step, total), check_cancel, controls)
        latents[:, :, 0] = reference_latent
        if settings.adain:
            latents = adain_latents(latents.float()).to(self.dtype)
            latents[:, :, 0] = reference_latent
        lap("denoise")

        progress("decode", 0, frames)
        pixels_out = self.decode(latents, reference_features, progress)
        lap("decode")
        return AnimationResult(frames=to_uint8_frames(pixels_out), latents=latents.float().cpu(), timings=timings)

    def denoise(self, latents: torch.Tensor, reference_latent: torch.Tensor | None,
                encoder_hidden_states: torch.Tensor, settings: AnimationSettings,
                progress: Callable[[int, int], None], check_cancel: Callable[[], None],
                controls: Sequence[Control] = ()) -> torch.Tensor:
        """DDIM from noise to the clip's latents, frame 0 held clean (``reference_latent``; None:
        no clean frame, as plain AnimateDiff), guided when guidance > 1, steered by ``controls``.

        Nothing here waits for the device: the scheduler keeps its timesteps on the host (its
        step indexes its tables with them and compares them with 0), and the UNet reads copies
        made once, before the loop."""
        scheduler, unet = self.base.scheduler, self.base.unet
        guided = settings.guidance > 1.0
        scheduler.set_timesteps(settings.steps)
        unet_timesteps = to_device(scheduler.timesteps, self.device)
        total = len(scheduler.timesteps)
        # Each condition on the device once, doubled for the [unconditional; text] batch.
        conditions = [to_device(control.frames, self.device, self.dtype) for control in controls]
        conditions = [torch.cat([frames, frames]) if guided else frames for frames in conditions]
        progress(0, total)
        for step, timestep in enumerate(scheduler.timesteps):
            if reference_latent is not None:
                latents[:, :, 0] = reference_latent
            model_input = torch.cat([latents, latents]) if guided else latents
            model_input = scheduler.scale_model_input(model_input, timestep)
            residuals = self.control_residuals(controls, conditions, step, total, model_input, unet_timesteps[step],
                                               encoder_hidden_states)
            noise = unet(model_input, unet_timesteps[step], encoder_hidden_states=encoder_hidden_states,
                         **residuals).sample
            if guided:
                uncond, cond = noise.chunk(2)
                noise = uncond + settings.guidance * (cond - uncond)
            latents = scheduler.step(noise, timestep, latents).prev_sample
            progress(step + 1, total)
            check_cancel()
        return latents

    @staticmethod
    def control_residuals(controls: Sequence[Control], conditions: list[torch.Tensor], step: int, total: int,
                          model_input: torch.Tensor, timestep: torch.Tensor,
                          encoder_hidden_states: torch.Tensor) -> dict:
        """The UNet's extra residuals from the controls active at this step, summed (each
        scaled by its own net); no keys when none is active, so the UNet runs as without them."""
        active = [(control, frames) for control, frames in zip(controls, conditions) if control.active(step, total)]
        if not active:
            return {}
        batch, channels, frames, height, width = model_input.shape
        # (B, C, F, h, w) → (B·F, C, h, w): a ControlNet is a 2D net, each frame an image.
        per_frame = model_input.transpose(1, 2).reshape(batch * frames, channels, height, width)
        down, mid = None, None
        for control, condition in active:
            control_down, control_mid = control.net(per_frame, timestep, encoder_hidden_states=encoder_hidden_states,
                                                    controlnet_cond=condition, conditioning_scale=control.scale,
                                                    return_dict=False)
            down = control_down if down is None else [a + b for a, b in zip(down, control_down)]
            mid = control_mid if mid is None else mid + control_mid
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}

    def decode(self, latents: torch.Tensor, reference_features: dict, progress: ProgressFn) -> torch.Tensor:
        """(1, C, F, h, w) scaled latents → (F, 3, H, W) pixels, every frame after the first enhanced."""
        frames = latents.shape[2]
        video = latents[0].transpose(0, 1).to(self.vae_dtype) / self.base.vae.config.scaling_factor
        enhance = torch.arange(frames) > 0
        outputs = []
        with self._on_device(self.decoder):
            for start in range(0, frames, self.decode_chunk):
                stop = min(frames, start + self.decode_chunk)
                outputs.append(self.decoder(video[start:stop], reference_features, enhance[start:stop]).float().cpu())
                progress("decode", stop, frames)
        return torch.cat(outputs)
