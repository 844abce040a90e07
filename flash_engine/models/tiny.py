"""``tiny``: the FLASH architecture at toy size, built deterministically in code.

No files and no network: the same classes as Stable Diffusion 1.5 + AnimateDiff (CLIP
text encoder with a byte-level CLIP tokenizer, AutoencoderKL with an 8× downsampling,
UNet2DConditionModel + MotionAdapter) with small widths and random weights. The full
pipeline runs on a CPU in seconds; tests and the demo use it. ``tiny_parts(vae_blocks=3)``
is the same with a 4× VAE (tests of models whose size step is not Stable Diffusion's 8).
"""

from __future__ import annotations

import hashlib

import torch
from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
from safetensors.torch import save as safetensors_bytes
from tokenizers import pre_tokenizers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from flash_engine.models.base import BaseModel, assemble_base, vae_size_multiple

TINY_SEED = 20250303
TEXT_WIDTH = 32
MAX_TOKENS = 77


MOTION_MAX_SEQ_LENGTH = 32
VAE_BLOCKS = 4  # as Stable Diffusion's: 8x downsampling
VAE_CHANNELS = (16, 32, 32, 32)
# What the built model takes, told without building it (loading.model_limits; a test checks
# these against the built model's configs).
LIMITS = {"width": 64, "height": 64, "max_frames": MOTION_MAX_SEQ_LENGTH, "latent_channels": 4,
          "size_multiple": vae_size_multiple({"block_out_channels": VAE_CHANNELS[:VAE_BLOCKS]})}

# The 2D UNet's config (its sample size follows the VAE): read without building it where a
# ControlNet is checked against the model (models.controlnet.unet_config).
UNET_CONFIG = dict(
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 64),
    layers_per_block=1,
    cross_attention_dim=TEXT_WIDTH,
    attention_head_dim=8,
    norm_num_groups=8,
)


def tiny_tokenizer() -> CLIPTokenizer:
    """A real CLIP tokenizer with a byte-level vocabulary and no merges (one token per byte)."""
    vocab: dict[str, int] = {}
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    for suffix in ("", "</w>"):
        for char in alphabet:
            vocab[char + suffix] = len(vocab)
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=MAX_TOKENS)


def tiny_parts(vae_blocks: int = VAE_BLOCKS) -> dict:
    """The separate parts, as they would be saved in a diffusers-layout folder. ``vae_blocks``
    (1-4): the VAE's block count, whose scale is 2**(vae_blocks - 1); the UNet's sample size
    follows, so the native size stays 64."""
    if not 1 <= vae_blocks <= len(VAE_CHANNELS):
        raise ValueError(f"vae_blocks must be 1-{len(VAE_CHANNELS)}")
    scale = vae_size_multiple({"block_out_channels": VAE_CHANNELS[:vae_blocks]})
    tokenizer = tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=TEXT_WIDTH,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=MAX_TOKENS,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * vae_blocks,
            up_block_types=("UpDecoderBlock2D",) * vae_blocks,
            block_out_channels=VAE_CHANNELS[:vae_blocks],
            layers_per_block=1,
            norm_num_groups=8,
            latent_channels=4,
            sample_size=64,
        )
        unet2d = UNet2DConditionModel(sample_size=LIMITS["width"] // scale, **UNET_CONFIG)
        motion_adapter = MotionAdapter(
            block_out_channels=(32, 64),
            motion_layers_per_block=1,
            motion_mid_block_layers_per_block=1,
            motion_num_attention_heads=2,
            motion_norm_num_groups=8,
            motion_max_seq_length=MOTION_MAX_SEQ_LENGTH,
            use_motion_mid_block=True,
        )
    return dict(
        unet2d=unet2d,
        motion_adapter=motion_adapter,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
    )


def weights_fingerprint(modules: list[torch.nn.Module]) -> str:
    digest = hashlib.sha256()
    for module in modules:
        state = {k: v.contiguous() for k, v in module.state_dict().items()}
        digest.update(safetensors_bytes(state))
    return digest.hexdigest()[:16]


def build_tiny() -> BaseModel:
    parts = tiny_parts()
    identity = "tiny-" + weights_fingerprint(
        [parts["unet2d"], parts["motion_adapter"], parts["vae"], parts["text_encoder"]]
    )
    return assemble_base(**parts, scheduler_config=None, identity=identity, source="tiny")
