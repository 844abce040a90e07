"""The assembled base model: SD 1.5-style parts plus an AnimateDiff motion adapter.

Every model source (the built-in ``tiny`` model, a local diffusers-layout folder) ends in
``assemble_base``, so they all run the same code from there on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers import AutoencoderKL, DDIMScheduler, MotionAdapter, UNet2DConditionModel, UNetMotionModel

from flash_engine.models.attention import FlashAttentionContext, set_flash_attention

# AnimateDiff's noise schedule (the spec's "Scheduler" line); it overrides SD's scheduler
# config, whose scaled-linear betas AnimateDiff's motion modules were not trained with.
ANIMATEDIFF_SCHEDULE = dict(
    beta_schedule="linear",
    beta_start=0.00085,
    beta_end=0.012,
    clip_sample=False,
    num_train_timesteps=1000,
    steps_offset=1,
    set_alpha_to_one=False,
    prediction_type="epsilon",
)


SD_VAE_BLOCKS = 4  # a VAE config that leaves its blocks out is taken as Stable Diffusion's


def vae_size_multiple(vae_config) -> int:
    """The VAE's scale, pixels per latent cell along a side: what every clip and training
    size must be a multiple of. diffusers' AutoencoderKL halves the size in every block but
    the last (SD's 4 blocks: 8; 3 blocks: 4). ``vae_config``: a loaded VAE's ``config`` or
    its ``config.json`` as a dict, so the size is told before any weights load."""
    return 2 ** (len(vae_config.get("block_out_channels", [0] * SD_VAE_BLOCKS)) - 1)


@dataclass
class BaseModel:
    tokenizer: object
    text_encoder: torch.nn.Module
    vae: AutoencoderKL
    unet: UNetMotionModel
    scheduler: DDIMScheduler
    identity: str  # content fingerprint of the base weights; action artifacts record it
    source: str  # "tiny" or the folder it was loaded from
    attention: FlashAttentionContext = field(repr=False, default=None)
    # The same, blind to the VAE's decoder side (loading.fingerprint_latent_side): what
    # artifacts that never decode (ControlNets, actions without a decoder) also accept.
    latent_identity: str = ""

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"text_encoder": self.text_encoder, "vae": self.vae, "unet": self.unet}

    @property
    def size_multiple(self) -> int:
        """What every width and height must be a multiple of (the VAE's scale)."""
        return vae_size_multiple(self.vae.config)


def animatediff_scheduler(config: dict | None = None) -> DDIMScheduler:
    return DDIMScheduler.from_config({**(config or {}), **ANIMATEDIFF_SCHEDULE})


def assemble_base(
    *,
    unet2d: UNet2DConditionModel,
    motion_adapter: MotionAdapter,
    vae: AutoencoderKL,
    text_encoder: torch.nn.Module,
    tokenizer,
    scheduler_config: dict | None,
    identity: str,
    source: str,
    latent_identity: str | None = None,
) -> BaseModel:
    unet = UNetMotionModel.from_unet2d(unet2d, motion_adapter)
    attention = set_flash_attention(unet)
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
        module.eval()
    return BaseModel(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        unet=unet,
        scheduler=animatediff_scheduler(scheduler_config),
        identity=identity,
        source=source,
        attention=attention,
        latent_identity=latent_identity or identity,  # built in code: no decoder-only variants
    )
