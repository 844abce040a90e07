"""FLASH attention processors for diffusers' ``UNetMotionModel``.

Spatial self-attention (``attn1`` of the spatial transformers) becomes cross-frame
attention: every frame's queries attend to the keys and values of the first frame and of
the frame itself, concatenated along the tokens. Frame 0 attends to [frame 0; frame 0],
which is plain self-attention, so the reference frame is not disturbed.

Processors are swapped in by name (diffusers' convention) and share one
``FlashAttentionContext``. A forward pre-hook on the UNet records the frame count from the
sample's shape, so callers never have to pass it.

Training-only switches (inter-frame correspondence alignment) live on the same context,
so training and inference share the same model classes.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0


@dataclass
class FlashAttentionContext:
    """State shared by the FLASH processors of one UNet."""

    num_frames: int = 1
    # Training only. The batch is [original videos; augmented videos] (``pairs`` of each).
    # In ``share_qk_layers`` the augmented half uses the original half's queries and keys
    # (so its attention map is the original's); ``align_motion`` switches on motion feature
    # alignment in the temporal layers (training/motion_alignment.py). Off at inference.
    pairs: int = 1
    share_qk_layers: frozenset[str] = frozenset()
    align_motion: bool = False
    # Diagnostics: when not None, layers store their attention maps here by name.
    captured_attention: dict[str, torch.Tensor] | None = None
    cross_frame_layers: list[str] = field(default_factory=list)
    # The UNet's forward pre-hook that records num_frames (removed by remove_flash_attention).
    hook_handle: object = None

    @contextlib.contextmanager
    def training_switches(self, **switches):
        """Set training-only switches (pairs, share_qk_layers, align_motion,
        captured_attention) for the block, and put back what was there, error or not."""
        unknown = set(switches) - {"pairs", "share_qk_layers", "align_motion", "captured_attention"}
        if unknown:
            raise TypeError(f"not a training switch: {', '.join(sorted(unknown))}")
        before = {name: getattr(self, name) for name in switches}
        for name, value in switches.items():
            setattr(self, name, value)
        try:
            yield self
        finally:
            for name, value in before.items():
                setattr(self, name, value)


def cross_frame_tokens(x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """(B·F, N, C) → (B·F, 2N, C): each frame's tokens prefixed by frame 0's tokens."""
    bf, n, c = x.shape
    frames = x.view(bf // num_frames, num_frames, n, c)
    first = frames[:, :1].expand(-1, num_frames, -1, -1)
    return torch.cat([first, frames], dim=2).view(bf, 2 * n, c)


def share_first_half(x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Copy the original videos' rows onto the augmented videos' rows ([ori; aug] batch)."""
    videos = x.shape[0] // num_frames
    if videos % 2:
        raise ValueError("correspondence alignment needs a batch of [original; augmented] pairs")
    half = x.shape[0] // 2
    return torch.cat([x[:half], x[:half]], dim=0)


class CrossFrameAttnProcessor:
    """Spatial cross-frame attention on fused SDPA (no per-frame Python loop)."""

    def __init__(self, context: FlashAttentionContext, name: str):
        self.context = context
        self.name = name

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None:
            raise ValueError("CrossFrameAttnProcessor replaces self-attention (attn1) only")
        if attention_mask is not None:
            # The keys are [frame 0; this frame]: a mask over one frame's tokens does not say
            # what to do with the reference's. Refused rather than silently dropped.
            raise ValueError("cross-frame attention takes no attention_mask (the UNet's spatial "
                             "self-attention is never masked)")
        num_frames = self.context.num_frames
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        if self.name in self.context.share_qk_layers:
            query = share_first_half(query, num_frames)
            key = share_first_half(key, num_frames)
        key = cross_frame_tokens(key, num_frames)
        value = cross_frame_tokens(value, num_frames)

        batch_frames = query.shape[0]
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_frames, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_frames, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_frames, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        if self.context.captured_attention is not None:
            scores = query @ key.transpose(-1, -2) * attn.scale
            self.context.captured_attention[self.name] = scores.softmax(dim=-1).detach()

        hidden_states = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_frames, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def is_spatial_self_attention(processor_name: str) -> bool:
    """``…attentions.N.transformer_blocks.M.attn1.processor`` (not motion modules, not attn2)."""
    return ".attentions." in processor_name and processor_name.endswith("attn1.processor")


def _record_num_frames(context: FlashAttentionContext):
    def hook(module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        context.num_frames = sample.shape[2]  # (B, C, F, H, W)

    return hook


def set_flash_attention(unet) -> FlashAttentionContext:
    """Install FLASH processors on a ``UNetMotionModel`` and return their shared context.

    Only the spatial self-attention processors are replaced: every other processor the UNet
    has (diffusers' defaults, LoRA, IP-adapter, the training's motion alignment) stays.
    Idempotent: a UNet that already has them keeps its context.
    """
    existing = getattr(unet, "flash_context", None)
    if existing is not None:
        return existing
    context = FlashAttentionContext()
    processors = dict(unet.attn_processors)
    for name in processors:
        if is_spatial_self_attention(name):
            layer = name.removesuffix(".processor")
            processors[name] = CrossFrameAttnProcessor(context, layer)
            context.cross_frame_layers.append(layer)
    unet.set_attn_processor(processors)
    context.hook_handle = unet.register_forward_pre_hook(_record_num_frames(context), with_kwargs=True)
    unet.flash_context = context
    return context


def remove_flash_attention(unet) -> None:
    """Undo ``set_flash_attention``: plain SDPA self-attention where FLASH had its own, the hook gone."""
    context = getattr(unet, "flash_context", None)
    if context is None:
        return
    processors = dict(unet.attn_processors)
    for name, processor in processors.items():
        if isinstance(processor, CrossFrameAttnProcessor):
            processors[name] = AttnProcessor2_0()
    unet.set_attn_processor(processors)
    context.hook_handle.remove()
    del unet.flash_context
