"""FLASH Detail Enhancement Decoder (paper sec. 3.3 and A2.3).

The Stable Diffusion VAE decoder, with "enhancement blocks" inserted after some of its up
blocks. Each block pulls detail from the *reference image's* VAE-encoder feature of the same
scale into the decoder feature of a generated frame:

* Warping Branch: a four-layer conv net N predicts a per-pixel offset; the reference feature
  is bilinearly sampled at the offset positions -> ``s``.
* Patch Attention Branch: 2x2 patches of the frame feature attend (cross-attention) to all
  2x2 patches of the reference feature -> ``t``.
* Fusion: a two-layer conv net M predicts weights ``w``; ``h_hat = h + w * (s + t)``.

The last layer of M is zero-initialised, so a freshly built decoder reproduces the stock
VAE decoder bit for bit; only the new layers are trained (the stock ones stay frozen).

Levels
------
Decoder level ``l`` is the *output* of ``decoder.up_blocks[l]``. With ``n`` up blocks the
output of block ``l`` (``l <= n - 2``) is at ``1 / 2**(n - 2 - l)`` of the image resolution
(every block but the last upsamples by 2 and the latent is at ``1 / 2**(n - 1)``); the last
block's output is at full resolution. In the encoder, the resnets of ``down_blocks[j]`` run
at ``1 / 2**j`` (only the downsampler at the end of block ``j`` halves the size), so the
encoder feature of the same scale as decoder level ``l`` is the output of
``encoder.down_blocks[j].resnets[-1]`` with ``j = clamp(n - 2 - l, 0, n_encoder - 1)``.
For SD (4 blocks, 512x512 image): level 0 <-> encoder block 2 (128x128), level 1 <-> block 1
(256x256), levels 2 and 3 <-> block 0 (512x512).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.autoencoders.vae import Decoder
from diffusers.models.modeling_utils import ModelMixin

from flash_engine.errors import FlashError
from flash_engine.devices import to_device

__all__ = [
    "DetailEnhancementBlock",
    "DetailEnhancementDecoder",
    "default_enhanced_levels",
    "encode_with_features",
    "encoder_block_for_level",
]

_ENHANCER_PREFIX = "enhancers."


def encoder_block_for_level(level: int, num_decoder_blocks: int, num_encoder_blocks: int | None = None) -> int:
    """Index ``j`` of the encoder down block whose last resnet matches decoder level ``level`` in scale.

    See the module docstring for the arithmetic: ``j = clamp(n - 2 - level, 0, n_enc - 1)``.
    """
    if num_encoder_blocks is None:
        num_encoder_blocks = num_decoder_blocks
    if not 0 <= level < num_decoder_blocks:
        raise ValueError(f"decoder level {level} out of range for a decoder with {num_decoder_blocks} up blocks")
    return min(max(num_decoder_blocks - 2 - level, 0), num_encoder_blocks - 1)


def default_enhanced_levels(num_decoder_blocks: int) -> tuple[int, ...]:
    """Up blocks whose output is below full resolution: ``(0, ..., n - 3)``; SD's 4 blocks -> ``(0, 1)``.

    Those are the 1/4- and 1/2-resolution features (128² and 256² for a 512² image, 512
    channels each): multi-scale, as the paper asks, and affordable -- about +14% decoder FLOPs
    per enhanced frame at 512² (2x2-patch attention over 4,096 and 16,384 tokens). A
    full-resolution level would add a 65,536-token attention (~1.1 TFLOP per frame, +44% on
    its own) plus convs at 512². The latent-resolution mid block is not an up-block output
    and is never a level.
    """
    return tuple(range(max(num_decoder_blocks - 2, 0)))


def _conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)


def _zero_(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class DetailEnhancementBlock(nn.Module):
    r"""One enhancement block (paper eq. 5-7) for a decoder feature with ``channels`` channels.

    Args:
        channels: channels of the decoder feature ``h`` at this level.
        reference_channels: channels of the encoder feature ``g`` of the matching scale.
        patch_size: side of the square patches of the Patch Attention Branch (paper: 2).
        attention_dim: width of the patch tokens inside the cross-attention.
        attention_heads: number of attention heads (``attention_dim`` must divide evenly).
        hidden_channels: width of the hidden layers of the offset net N and fusion net M.
        norm_num_groups: groups of the GroupNorms that normalise ``h`` and ``g~`` before N, A, M.
    """

    def __init__(
        self,
        channels: int,
        reference_channels: int,
        patch_size: int = 2,
        attention_dim: int = 64,
        attention_heads: int = 4,
        hidden_channels: int = 64,
        norm_num_groups: int = 32,
    ):
        super().__init__()
        if attention_dim % attention_heads:
            raise ValueError(f"attention_dim {attention_dim} is not divisible by attention_heads {attention_heads}")
        self.channels = channels
        self.patch_size = patch_size
        self.attention_heads = attention_heads

        # "Fully connected layer" mapping the (interpolated) reference feature g to h's channels -> g~.
        self.reference_proj = nn.Conv2d(reference_channels, channels, kernel_size=1)

        # Decoder features are the unnormalised residual stream (the next up block normalises
        # them first), and their scale differs per level; normalise the inputs of N, A and M
        # so that the offsets, attention logits and weights start out in a sane range.
        self.norm_h = nn.GroupNorm(norm_num_groups, channels, eps=1e-6)
        self.norm_g = nn.GroupNorm(norm_num_groups, channels, eps=1e-6)

        # Warping Branch N: four convs on concat(h, g~) -> (dx, dy) in pixels of this level.
        # Last layer zero-initialised so the initial warp is the identity.
        self.offset_net = nn.Sequential(
            _conv3x3(2 * channels, hidden_channels),
            nn.SiLU(),
            _conv3x3(hidden_channels, hidden_channels),
            nn.SiLU(),
            _conv3x3(hidden_channels, hidden_channels),
            nn.SiLU(),
            _zero_(_conv3x3(hidden_channels, 2)),
        )

        # Patch Attention Branch A: a linear layer turns each patch (C * p * p values) into a
        # token, then standard multi-head cross-attention (q from h, k/v from g~), then a linear
        # layer back to patch pixels.
        patch_features = channels * patch_size * patch_size
        self.patch_embed = nn.Linear(patch_features, attention_dim)
        self.to_q = nn.Linear(attention_dim, attention_dim)
        self.to_k = nn.Linear(attention_dim, attention_dim)
        self.to_v = nn.Linear(attention_dim, attention_dim)
        self.to_out = nn.Linear(attention_dim, attention_dim)
        self.patch_unembed = nn.Linear(attention_dim, patch_features)

        # Fusion M: two convs on concat(h, g~) -> per-element weights w. The last layer is
        # zero-initialised (weights and bias): w == 0, so an untrained block is the identity.
        self.fusion_net = nn.Sequential(
            _conv3x3(2 * channels, hidden_channels),
            nn.SiLU(),
            _zero_(_conv3x3(hidden_channels, channels)),
        )

    def forward(self, hidden_states: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """``hidden_states``: (F, C, H, W) frames to enhance; ``reference``: (1 or F, C_enc, H', W')."""
        num_frames, _, height, width = hidden_states.shape
        reference = reference.to(device=hidden_states.device, dtype=hidden_states.dtype)
        if reference.shape[-2:] != (height, width):
            reference = F.interpolate(reference, size=(height, width), mode="bilinear", align_corners=False)
        reference = self.reference_proj(reference)  # g~, (B_ref, C, H, W)

        # .contiguous(): on CPU the up blocks return channels_last tensors, and torch's CPU
        # GroupNorm backward segfaults for a channels_last input that needs no grad while the
        # norm's affine parameters do -- exactly the frozen-decoder training case. A no-op on
        # CUDA, where the decoder's features are already contiguous.
        h_norm = self.norm_h(hidden_states.contiguous())
        g_norm = self.norm_g(reference.contiguous())
        joint = torch.cat([h_norm, g_norm.expand(num_frames, -1, -1, -1)], dim=1)

        warped = self._warp(reference, self.offset_net(joint))
        attended = self._patch_attention(h_norm, g_norm)
        weights = self.fusion_net(joint)
        return hidden_states + weights * (warped + attended)

    @staticmethod
    def _warp(reference: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """Bilinearly sample ``reference`` at (x + dx, y + dy) for every pixel of every frame at once."""
        num_frames, _, height, width = offset.shape
        out_dtype = reference.dtype
        # Sampling coordinates need more precision than fp16/bf16 give (bf16 is ~1 px at 256²).
        compute_dtype = torch.float32 if out_dtype in (torch.float16, torch.bfloat16) else out_dtype
        offset = offset.to(compute_dtype)
        # Pixel centres in grid_sample's normalised coordinates (align_corners=False), which
        # stays well defined for 1-pixel-wide maps.
        xs = (torch.arange(width, device=offset.device, dtype=compute_dtype) * 2 + 1) / width - 1
        ys = (torch.arange(height, device=offset.device, dtype=compute_dtype) * 2 + 1) / height - 1
        grid_x = xs.view(1, 1, width) + offset[:, 0] * (2.0 / width)
        grid_y = ys.view(1, height, 1) + offset[:, 1] * (2.0 / height)
        grid = torch.stack([grid_x, grid_y], dim=-1)  # (F, H, W, 2)
        source = reference.to(compute_dtype).expand(num_frames, -1, -1, -1)
        warped = F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return warped.to(out_dtype)

    def _patch_attention(self, h_norm: torch.Tensor, g_norm: torch.Tensor) -> torch.Tensor:
        """Cross-attention between p x p patches: queries from the frames, keys/values from the reference."""
        p = self.patch_size
        num_frames, channels, height, width = h_norm.shape
        pad_h, pad_w = (-height) % p, (-width) % p
        if pad_h or pad_w:  # odd sizes: pad to whole patches, crop the result back below
            h_norm = F.pad(h_norm, (0, pad_w, 0, pad_h), mode="replicate")
            g_norm = F.pad(g_norm, (0, pad_w, 0, pad_h), mode="replicate")

        def tokens(x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, N, C * p * p)
            return F.pixel_unshuffle(x, p).flatten(2).transpose(1, 2)

        q_tokens = self.patch_embed(tokens(h_norm))
        kv_tokens = self.patch_embed(tokens(g_norm))
        num_patches = q_tokens.shape[1]
        query, key, value = self.to_q(q_tokens), self.to_k(kv_tokens), self.to_v(kv_tokens)

        ref_batch = key.shape[0]
        if ref_batch == 1 and num_frames > 1:
            # One reference for all frames: fold the frames into the query sequence instead of
            # copying keys/values per frame (softmax is per query, so this is the same result).
            query = query.reshape(1, num_frames * num_patches, -1)

        def heads(x: torch.Tensor) -> torch.Tensor:  # (B, N, D) -> (B, heads, N, D / heads)
            return x.unflatten(-1, (self.attention_heads, -1)).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(query), heads(key), heads(value))
        out = out.transpose(1, 2).flatten(2).reshape(num_frames, num_patches, -1)
        out = self.patch_unembed(self.to_out(out))  # (F, N, C * p * p)

        out = out.transpose(1, 2).reshape(num_frames, channels * p * p, (height + pad_h) // p, (width + pad_w) // p)
        out = F.pixel_shuffle(out, p)
        return out[:, :, :height, :width]


class DetailEnhancementDecoder(ModelMixin, ConfigMixin):
    r"""The SD VAE decoder plus FLASH's multi-scale detail propagation from a reference frame.

    Takes the same latents as ``AutoencoderKL.decode`` (already divided by the scaling factor)
    and returns the same images; frames flagged in ``enhance`` additionally receive detail from
    the reference image's encoder features (see :func:`encode_with_features`). Frames are
    independent given the reference, so callers may decode in chunks of frames.

    Args:
        latent_channels, out_channels, up_block_types, block_out_channels, layers_per_block,
        norm_num_groups, act_fn, mid_block_add_attention, use_post_quant_conv:
            as in the ``AutoencoderKL`` config.
        enhanced_levels: indices of decoder up blocks whose output is enhanced. ``None`` uses
            :func:`default_enhanced_levels` (``(0, 1)`` for SD); the resolved tuple is what
            ends up in the saved config.
        patch_size: patch side of the Patch Attention Branch (paper: 2).
        attention_dim: token width inside the patch cross-attention.
        attention_heads: number of heads of the patch cross-attention.
        hidden_channels: hidden width of the offset net N and the fusion net M.
        encoder_block_out_channels: channels of the VAE encoder's down blocks; ``None`` means
            ``block_out_channels`` (true for every ``AutoencoderKL``).
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 4,
        out_channels: int = 3,
        up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",),
        block_out_channels: tuple[int, ...] = (64,),
        layers_per_block: int = 1,
        norm_num_groups: int = 32,
        act_fn: str = "silu",
        mid_block_add_attention: bool = True,
        use_post_quant_conv: bool = True,
        enhanced_levels: tuple[int, ...] | None = None,
        patch_size: int = 2,
        attention_dim: int = 64,
        attention_heads: int = 4,
        hidden_channels: int = 64,
        encoder_block_out_channels: tuple[int, ...] | None = None,
    ):
        super().__init__()
        num_blocks = len(up_block_types)
        if encoder_block_out_channels is None:
            encoder_block_out_channels = tuple(block_out_channels)
        if enhanced_levels is None:
            enhanced_levels = default_enhanced_levels(num_blocks)
        enhanced_levels = tuple(sorted({int(level) for level in enhanced_levels}))
        for level in enhanced_levels:
            if not 0 <= level < num_blocks:
                raise ValueError(f"enhanced level {level} out of range: the decoder has {num_blocks} up blocks")
        # Store the resolved values so a saved config says exactly what was built.
        self.register_to_config(
            enhanced_levels=list(enhanced_levels), encoder_block_out_channels=list(encoder_block_out_channels)
        )

        self.post_quant_conv = (
            nn.Conv2d(latent_channels, latent_channels, kernel_size=1) if use_post_quant_conv else None
        )
        self.decoder = Decoder(
            in_channels=latent_channels,
            out_channels=out_channels,
            up_block_types=up_block_types,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups,
            act_fn=act_fn,
            mid_block_add_attention=mid_block_add_attention,
        )

        reversed_channels = list(reversed(block_out_channels))  # up block i outputs reversed_channels[i]
        self.enhancers = nn.ModuleDict()
        for level in enhanced_levels:
            j = encoder_block_for_level(level, num_blocks, len(encoder_block_out_channels))
            self.enhancers[str(level)] = DetailEnhancementBlock(
                channels=reversed_channels[level],
                reference_channels=encoder_block_out_channels[j],
                patch_size=patch_size,
                attention_dim=attention_dim,
                attention_heads=attention_heads,
                hidden_channels=hidden_channels,
                norm_num_groups=norm_num_groups,
            )

    @property
    def enhanced_levels(self) -> tuple[int, ...]:
        """The decoder levels that get enhanced; pass them to :func:`encode_with_features`."""
        return tuple(int(level) for level in self.enhancers.keys())

    @classmethod
    def from_vae(cls, vae: AutoencoderKL, **enhancement_kwargs) -> "DetailEnhancementDecoder":
        """Build from ``vae.config`` and copy the VAE's decoder and post_quant_conv weights exactly.

        ``enhancement_kwargs`` are the enhancement fields (``enhanced_levels``, ``patch_size``,
        ``attention_dim``, ``attention_heads``, ``hidden_channels``). The result has the VAE's
        dtype, device and train/eval mode; the new layers start at their identity initialisation.
        """
        config = vae.config
        model = cls(
            latent_channels=config.latent_channels,
            out_channels=config.out_channels,
            up_block_types=tuple(config.up_block_types),
            block_out_channels=tuple(config.block_out_channels),
            layers_per_block=config.layers_per_block,
            norm_num_groups=config.norm_num_groups,
            act_fn=config.act_fn,
            mid_block_add_attention=config.get("mid_block_add_attention", True),
            use_post_quant_conv=vae.post_quant_conv is not None,
            encoder_block_out_channels=tuple(config.block_out_channels),
            **enhancement_kwargs,
        )
        model.decoder.load_state_dict(vae.decoder.state_dict())
        if vae.post_quant_conv is not None:
            model.post_quant_conv.load_state_dict(vae.post_quant_conv.state_dict())
        # Same train/eval mode as the VAE: diffusers' ResnetBlock2D takes a different (not
        # bit-identical) path in training mode. nn.Module.to skips ModelMixin.to's fp32-modules
        # warning, which does not apply here.
        model.train(vae.training)
        return nn.Module.to(model, device=vae.device, dtype=vae.dtype)

    # -- new-layer helpers ------------------------------------------------------------------

    def enhancement_parameters(self) -> Iterator[nn.Parameter]:
        """The new (trainable) layers' parameters: N, A, M and the reference projections."""
        yield from self.enhancers.parameters()

    def freeze_stock_layers(self) -> None:
        """Freeze the stock decoder and post_quant_conv; the paper trains only the new layers."""
        for module in (self.decoder, self.post_quant_conv):
            if module is not None:
                module.requires_grad_(False)

    def enhancement_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the new layers' tensors, keyed relative to this model (``"enhancers.0...."``)."""
        return {_ENHANCER_PREFIX + key: value for key, value in self.enhancers.state_dict().items()}

    def load_enhancement_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load tensors saved by :meth:`enhancement_state_dict`; a mismatch raises ``FlashError``."""
        hint = "the enhancement weights were made for a different VAE or enhanced_levels; use matching settings"
        expected = self.enhancers.state_dict()
        given = {}
        for key, value in state_dict.items():
            given[key[len(_ENHANCER_PREFIX) :] if key.startswith(_ENHANCER_PREFIX) else key] = value
        missing = sorted(set(expected) - set(given))
        unexpected = sorted(set(given) - set(expected))
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"{len(missing)} missing (e.g. {_ENHANCER_PREFIX}{missing[0]})")
            if unexpected:
                parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
            raise FlashError(f"Detail-enhancement weights do not fit this decoder: {', '.join(parts)} keys", hint)
        for key, value in given.items():
            if tuple(value.shape) != tuple(expected[key].shape):
                raise FlashError(
                    f"Detail-enhancement weight {_ENHANCER_PREFIX}{key} has shape {tuple(value.shape)}, "
                    f"this decoder needs {tuple(expected[key].shape)}",
                    hint,
                )
        self.enhancers.load_state_dict(given, strict=True)

    # -- forward ------------------------------------------------------------------------------

    def _enhance_indices(
        self, num_frames: int, reference_features: Mapping[int, torch.Tensor] | None, enhance, device
    ) -> torch.Tensor | None:
        """Indices of the frames to enhance, or ``None`` when the stock decoder path applies."""
        if reference_features is None or enhance is None or len(self.enhancers) == 0:
            return None
        enhance = torch.as_tensor(enhance).to(torch.bool)  # stays where it is: on the host, no sync below
        if enhance.shape != (num_frames,):
            raise FlashError(
                f"enhance has shape {tuple(enhance.shape)}, expected ({num_frames},)",
                "pass one bool per frame",
            )
        indices = enhance.nonzero(as_tuple=True)[0]
        if indices.numel() == 0:
            return None
        missing = [level for level in self.enhanced_levels if _lookup(reference_features, level) is None]
        if missing:
            raise FlashError(
                f"reference features are missing decoder level(s) {missing}",
                "compute them with encode_with_features(vae, reference, decoder.enhanced_levels)",
            )
        return to_device(indices, device)

    def _enhance(self, level: int, sample: torch.Tensor, reference: torch.Tensor, indices: torch.Tensor, ckpt):
        num_frames = sample.shape[0]
        if reference.shape[0] not in (1, num_frames):
            raise FlashError(
                f"reference feature for level {level} has batch {reference.shape[0]}, expected 1 or {num_frames}",
                "pass the features of one reference image",
            )
        all_frames = indices.numel() == num_frames
        subset = sample if all_frames else sample.index_select(0, indices)
        if reference.shape[0] != 1 and not all_frames:
            reference = reference.index_select(0, indices.to(reference.device))
        block = self.enhancers[str(level)]
        enhanced = ckpt(block, subset, reference) if ckpt is not None else block(subset, reference)
        # Write into a clone of ``sample`` so the result keeps the stock memory layout (up blocks
        # return channels_last on CPU): later convs choose kernels by layout, and untouched frames
        # are only bit-identical to the stock decoder if the layout is too.
        out = sample.clone()
        if all_frames:
            return out.copy_(enhanced)
        return out.index_copy_(0, indices, enhanced)

    def forward(
        self,
        latents: torch.Tensor,
        reference_features: Mapping[int, torch.Tensor] | None = None,
        enhance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        r"""Decode ``latents`` (F, C, h, w), already divided by the VAE scaling factor.

        Args:
            latents: exactly what ``AutoencoderKL.decode`` takes.
            reference_features: ``{level: (1, C_enc, H, W)}`` from the reference image, as
                returned by :func:`encode_with_features` (a batch of F per-frame references is
                also accepted).
            enhance: bool (F,), which frames get enhanced (the paper: every frame but the
                reference itself); pass it on the host, so that choosing the frames never waits
                for the GPU. ``None``/all-False, or no ``reference_features``, gives exactly the
                stock decoder output.

        Returns:
            images (F, out_channels, H, W), roughly in [-1, 1], like ``vae.decode(z).sample``.
        """
        decoder = self.decoder
        indices = self._enhance_indices(latents.shape[0], reference_features, enhance, latents.device)
        checkpointing = torch.is_grad_enabled() and decoder.gradient_checkpointing
        ckpt = decoder._gradient_checkpointing_func if checkpointing else None

        # Same op sequence as AutoencoderKL._decode + Decoder.forward (diffusers 0.42), with the
        # enhancement inserted after the selected up blocks.
        sample = self.post_quant_conv(latents) if self.post_quant_conv is not None else latents
        sample = decoder.conv_in(sample)
        sample = ckpt(decoder.mid_block, sample, None) if ckpt is not None else decoder.mid_block(sample, None)
        for level, up_block in enumerate(decoder.up_blocks):
            sample = ckpt(up_block, sample, None) if ckpt is not None else up_block(sample, None)
            if indices is not None and str(level) in self.enhancers:
                sample = self._enhance(level, sample, _lookup(reference_features, level), indices, ckpt)

        sample = decoder.conv_norm_out(sample)
        sample = decoder.conv_act(sample)
        sample = decoder.conv_out(sample)
        return sample


def _lookup(features: Mapping, level: int) -> torch.Tensor | None:
    """``features[level]``, also accepting string keys (e.g. after a JSON/safetensors round trip)."""
    if level in features:
        return features[level]
    return features.get(str(level))


def encode_with_features(
    vae: AutoencoderKL, pixels: torch.Tensor, levels: Iterable[int]
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Run the VAE encoder once; return the latent mean and the encoder feature per decoder level.

    Args:
        vae: the ``AutoencoderKL`` whose decoder the levels refer to.
        pixels: (N, 3, H, W) in [-1, 1].
        levels: decoder levels (e.g. ``decoder.enhanced_levels``).

    Returns:
        ``(latent_mean, {level: feature})``: the mean of the latent distribution exactly as
        ``vae.encode(pixels).latent_dist.mean`` (NOT multiplied by the scaling factor), and for
        each level the output of ``vae.encoder.down_blocks[j].resnets[-1]`` with
        ``j = encoder_block_for_level(level, ...)`` (same spatial scale as that decoder level).
        Tiling/slicing settings of the VAE are ignored (one pass over the whole batch).
    """
    num_decoder_blocks = len(vae.decoder.up_blocks)
    num_encoder_blocks = len(vae.encoder.down_blocks)
    block_of = {
        int(level): encoder_block_for_level(int(level), num_decoder_blocks, num_encoder_blocks) for level in levels
    }

    captured: dict[int, torch.Tensor] = {}

    def hook_for(j: int):
        def hook(module, args, output):
            captured[j] = output

        return hook

    handles = []
    try:
        for j in sorted(set(block_of.values())):
            handles.append(vae.encoder.down_blocks[j].resnets[-1].register_forward_hook(hook_for(j)))
        moments = vae.encoder(pixels)
        if vae.quant_conv is not None:
            moments = vae.quant_conv(moments)
    finally:
        for handle in handles:
            handle.remove()

    latent_mean = torch.chunk(moments, 2, dim=1)[0]  # as DiagonalGaussianDistribution.mean
    return latent_mean, {level: captured[j] for level, j in block_of.items()}
