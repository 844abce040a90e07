"""Augmentations for FLASH training, in plain torch (no torchvision wheel exists here).

* ``flip_and_crop``: random horizontal flip + random crop + resize, shared by both videos
  of a training pair (it is applied to the original before the strong augmentation).
* Strong augmentation (Motion Alignment Module): Gaussian blur and colour jitter with ONE
  set of parameters for every frame, so the motion is kept and the appearance changes.
* Decoder distortions (Detail Enhancement Decoder): blur, colour jitter on a random 80% of
  regions (inconsistent on purpose) and an elastic warp; some samples stay clean.

Videos are float tensors (F, 3, H, W) in [0, 1], on any device: training runs them on its
own device, because on the host one 16×512² pair takes longer than a GPU's whole step
(docs/benchmarks.md). All randomness comes from the CPU ``torch.Generator`` passed in, as
host numbers or tensors copied over, so a saved generator state replays a run exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from flash_engine.devices import to_device

MIN_CROP_SCALE = 0.8


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _randint(generator: torch.Generator, low: int, high: int) -> int:
    """Uniform integer in [low, high]."""
    return int(torch.randint(low, high + 1, (), generator=generator))


# ---------------------------------------------------------------- geometry (shared by a pair)

def flip_and_crop(video: torch.Tensor, size: tuple[int, int], generator: torch.Generator,
                  min_scale: float = MIN_CROP_SCALE) -> torch.Tensor:
    """Random flip, a random crop of the target aspect (``min_scale``–1 of the largest), resize."""
    if float(torch.rand((), generator=generator)) < 0.5:
        video = video.flip(-1)
    _, _, height, width = video.shape
    target_w, target_h = size
    largest = min(width / target_w, height / target_h)
    scale = largest * _uniform(generator, min_scale, 1.0)
    crop_w, crop_h = max(1, round(target_w * scale)), max(1, round(target_h * scale))
    left = _randint(generator, 0, width - crop_w)
    top = _randint(generator, 0, height - crop_h)
    crop = video[:, :, top: top + crop_h, left: left + crop_w]
    return F.interpolate(crop, size=(target_h, target_w), mode="bilinear", align_corners=False, antialias=True)


# ---------------------------------------------------------------- photometric primitives

def gaussian_blur(video: torch.Tensor, kernel: int, sigma: float) -> torch.Tensor:
    radius = kernel // 2
    x = torch.arange(-radius, radius + 1, dtype=video.dtype, device=video.device)
    weights = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    weights = weights / weights.sum()
    channels = video.shape[1]
    horizontal = weights.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    vertical = weights.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    padded = F.pad(video, (radius, radius, 0, 0), mode="reflect" if video.shape[-1] > radius else "replicate")
    video = F.conv2d(padded, horizontal, groups=channels)
    padded = F.pad(video, (0, 0, radius, radius), mode="reflect" if video.shape[-2] > radius else "replicate")
    return F.conv2d(padded, vertical, groups=channels)


def grayscale(video: torch.Tensor) -> torch.Tensor:
    r, g, b = video.unbind(1)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    r, g, b = rgb.unbind(1)
    maxc, _ = rgb.max(1)
    minc, _ = rgb.min(1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.where(maxc == r, ((g - b) / safe) % 6,
                      torch.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4)) / 6
    hue = torch.where(delta > 0, hue, torch.zeros_like(hue))
    saturation = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)),
                             torch.zeros_like(maxc))
    return torch.stack([hue, saturation, maxc], 1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    hue, saturation, value = hsv.unbind(1)
    i = torch.floor(hue * 6)
    f = hue * 6 - i
    p, q, t = value * (1 - saturation), value * (1 - saturation * f), value * (1 - saturation * (1 - f))
    i = i.long() % 6
    choices = [(value, t, p), (q, value, p), (p, value, t), (p, q, value), (t, p, value), (value, p, q)]
    out = torch.zeros_like(hsv)
    for index, (r, g, b) in enumerate(choices):
        mask = (i == index).unsqueeze(1)
        out = torch.where(mask, torch.stack([r, g, b], 1), out)
    return out


@dataclass(frozen=True)
class JitterParams:
    brightness: float
    contrast: float
    saturation: float
    hue: float


def color_jitter(video: torch.Tensor, params: JitterParams) -> torch.Tensor:
    """ColorJitter's four adjustments in a fixed order, each with one factor for all frames."""
    video = (video * params.brightness).clamp(0, 1)
    mean = grayscale(video).mean(dim=(1, 2, 3), keepdim=True)
    video = (params.contrast * video + (1 - params.contrast) * mean).clamp(0, 1)
    video = (params.saturation * video + (1 - params.saturation) * grayscale(video)).clamp(0, 1)
    if params.hue:
        hsv = rgb_to_hsv(video)
        hsv = torch.stack([(hsv[:, 0] + params.hue) % 1.0, hsv[:, 1], hsv[:, 2]], 1)
        video = hsv_to_rgb(hsv)
    return video


def draw_jitter(generator: torch.Generator, factor: tuple[float, float], hue: float) -> JitterParams:
    return JitterParams(
        brightness=_uniform(generator, *factor),
        contrast=_uniform(generator, *factor),
        saturation=_uniform(generator, *factor),
        hue=_uniform(generator, -hue, hue),
    )


def draw_blur(generator: torch.Generator, kernel_range: tuple[int, int]) -> tuple[int, float]:
    """Kernel uniform in the range, rounded up to odd; sigma uniform in [0.1, 2] (torchvision's)."""
    kernel = _randint(generator, *kernel_range)
    return kernel | 1, _uniform(generator, 0.1, 2.0)


# ---------------------------------------------------------------- strong augmentation

@dataclass(frozen=True)
class StrongAugmentConfig:
    blur_kernel: tuple[int, int] = (3, 10)
    color_factor: tuple[float, float] = (0.5, 1.5)
    hue: float = 0.25


@dataclass(frozen=True)
class StrongAugmentParams:
    kernel: int
    sigma: float
    jitter: JitterParams


def draw_strong(config: StrongAugmentConfig, generator: torch.Generator) -> StrongAugmentParams:
    kernel, sigma = draw_blur(generator, config.blur_kernel)
    return StrongAugmentParams(kernel, sigma, draw_jitter(generator, config.color_factor, config.hue))


def apply_strong(video: torch.Tensor, params: StrongAugmentParams) -> torch.Tensor:
    return color_jitter(gaussian_blur(video, params.kernel, params.sigma), params.jitter)


def strong_augment(video: torch.Tensor, config: StrongAugmentConfig, generator: torch.Generator) -> torch.Tensor:
    return apply_strong(video, draw_strong(config, generator))


# ---------------------------------------------------------------- decoder distortions

@dataclass(frozen=True)
class DistortConfig:
    blur_kernel: tuple[int, int] = (3, 10)
    color_factor: tuple[float, float] = (0.7, 1.3)
    hue: float = 0.2
    region_fraction: float = 0.8
    region_grid: int = 4
    elastic_strength: tuple[float, float] = (1.0, 20.0)
    elastic_sigma: float = 5.0
    clean_probability: float = 0.1


def elastic(video: torch.Tensor, strength: float, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """ElasticTransform: a smoothed random displacement field of ``strength`` pixels per frame."""
    frames, _, height, width = video.shape
    field = torch.rand((frames, 2, height, width), generator=generator)  # drawn on the host: same on any device
    field = to_device(field, video.device) * 2 - 1
    kernel = int(4 * sigma) | 1
    field = gaussian_blur(field, kernel, sigma) * strength
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, height, device=video.device),
                            torch.linspace(-1, 1, width, device=video.device), indexing="ij")
    grid = torch.stack([xs, ys], -1).unsqueeze(0) + torch.stack(
        [field[:, 0] * 2 / max(width - 1, 1), field[:, 1] * 2 / max(height - 1, 1)], -1)
    return F.grid_sample(video, grid.to(video.dtype), mode="bilinear", padding_mode="border", align_corners=True)


def distort(video: torch.Tensor, config: DistortConfig, generator: torch.Generator) -> torch.Tensor:
    """X_dis for decoder training; frame 0 (the reference) is left clean."""
    if float(torch.rand((), generator=generator)) < config.clean_probability:
        return video.clone()
    reference, rest = video[:1], video[1:]
    kernel, sigma = draw_blur(generator, config.blur_kernel)
    rest = gaussian_blur(rest, kernel, sigma)
    frames, _, height, width = rest.shape
    grid = config.region_grid
    regions = [(r, c) for r in range(grid) for c in range(grid)]
    chosen = torch.randperm(len(regions), generator=generator)[: round(config.region_fraction * len(regions))]
    out = rest.clone()
    for index in chosen.tolist():
        row, col = regions[index]
        top, bottom = row * height // grid, (row + 1) * height // grid
        left, right = col * width // grid, (col + 1) * width // grid
        if bottom <= top or right <= left:
            continue
        jitter = draw_jitter(generator, config.color_factor, config.hue)
        out[:, :, top:bottom, left:right] = color_jitter(rest[:, :, top:bottom, left:right], jitter)
    out = elastic(out, _uniform(generator, *config.elastic_strength), config.elastic_sigma, generator)
    return torch.cat([reference, out.clamp(0, 1)])
