"""Motion feature alignment (FLASH sec. 3.2), as an attention processor for the temporal
attention layers of the motion modules.

The training batch is [original videos; augmented videos]. After a temporal attention
layer, the features of each video are normalised over time; in the augmented video the
τ channels that move most in the original video (largest temporal std, averaged over
space) take the original's normalised values, and are then de-normalised with the
augmented video's own temporal statistics. The original's features are left untouched.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

EPS = 1e-6


def motion_channels(features: torch.Tensor, tau: int) -> torch.Tensor:
    """Indices of the top-τ channels by temporal std averaged over space. (V, S, N, C) → (V, τ)."""
    score = features.std(dim=2).mean(dim=1)  # (V, C)
    return score.topk(min(tau, features.shape[-1]), dim=-1).indices


def align_motion(original: torch.Tensor, augmented: torch.Tensor, tau: int) -> torch.Tensor:
    """The augmented features with the original's motion channels; shapes (V, S, N, C).

    V videos, S spatial positions, N frames, C channels.
    """
    mean_o, std_o = original.mean(dim=2, keepdim=True), original.std(dim=2, keepdim=True) + EPS
    mean_a, std_a = augmented.mean(dim=2, keepdim=True), augmented.std(dim=2, keepdim=True) + EPS
    channels = motion_channels(original, tau)  # chosen from the original video
    index = channels[:, None, None, :].expand(-1, original.shape[1], original.shape[2], -1)
    normalised_original = (original - mean_o) / std_o
    transferred = normalised_original.gather(-1, index)
    scale, shift = std_a.expand_as(augmented).gather(-1, index), mean_a.expand_as(augmented).gather(-1, index)
    return augmented.scatter(-1, index, transferred * scale + shift)


class MotionAlignedAttnProcessor:
    """Temporal attention (AttnProcessor2_0) followed by motion feature alignment when enabled."""

    def __init__(self, context, tau: int):
        self.context = context
        self.tau = tau
        self.inner = AttnProcessor2_0()

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.inner(attn, hidden_states, *args, **kwargs)
        if not self.context.align_motion:
            return out
        # motion modules see (videos·H·W, frames, C), videos outermost
        videos = 2 * self.context.pairs
        features = out.view(videos, out.shape[0] // videos, out.shape[1], out.shape[2])
        original, augmented = features.chunk(2)
        aligned = align_motion(original, augmented, self.tau)
        return torch.cat([original, aligned]).view_as(out)


def is_temporal_attention(processor_name: str) -> bool:
    return ".motion_modules." in processor_name


def install_motion_alignment(unet, tau: int) -> None:
    """Swap the temporal attention processors for aligning ones (driven by unet.flash_context)."""
    context = unet.flash_context
    processors = dict(unet.attn_processors)
    for name in processors:
        if is_temporal_attention(name) and not isinstance(processors[name], MotionAlignedAttnProcessor):
            processors[name] = MotionAlignedAttnProcessor(context, tau)
    unet.set_attn_processor(processors)
