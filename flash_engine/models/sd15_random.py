"""The Stable Diffusion 1.5 + AnimateDiff v1-5-2 architecture at full size, random weights.

For benchmarks only: same shapes and FLOPs as the real model (1.3 B UNet parameters)
without downloading anything. Its frames are noise.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from flash_engine.models.base import vae_size_multiple
from flash_engine.models.tiny import tiny_tokenizer

SEED = 15


MOTION_MAX_SEQ_LENGTH = 32
# What the built model takes, told without building it (loading.model_limits; a test checks
# these against the built model's configs).
VAE_CHANNELS = (128, 256, 512, 512)
LIMITS = {"width": 512, "height": 512, "max_frames": MOTION_MAX_SEQ_LENGTH, "latent_channels": 4,
          "size_multiple": vae_size_multiple({"block_out_channels": VAE_CHANNELS})}

# Stable Diffusion 1.5's UNet (diffusers' defaults for the rest); read without building it
# where a ControlNet is checked against the model (models.controlnet.unet_config).
UNET_CONFIG = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8, layers_per_block=2,
                   block_out_channels=(320, 640, 1280, 1280))


def sd15_random_parts() -> dict:
    tokenizer = tiny_tokenizer()  # ids only index the embedding table; vocabulary size is irrelevant to speed
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
            num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id))
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=VAE_CHANNELS, layers_per_block=2, latent_channels=4, sample_size=512)
        unet2d = UNet2DConditionModel(**UNET_CONFIG)
        motion_adapter = MotionAdapter(
            block_out_channels=(320, 640, 1280, 1280), motion_layers_per_block=2,
            motion_mid_block_layers_per_block=1, motion_num_attention_heads=8, motion_norm_num_groups=32,
            motion_max_seq_length=MOTION_MAX_SEQ_LENGTH, use_motion_mid_block=True)
    return dict(unet2d=unet2d, motion_adapter=motion_adapter, vae=vae, text_encoder=text_encoder,
                tokenizer=tokenizer)


def build_sd15_random():
    from flash_engine.models.base import assemble_base

    return assemble_base(**sd15_random_parts(), scheduler_config=None, identity="sd15-random", source="sd15-random")
