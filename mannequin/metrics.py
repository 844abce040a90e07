"""Clip metrics for the few-shot benchmark, all on the CPU (numpy + torch).

Clips are uint8 arrays (F, H, W, 3). The paper's metrics need CLIP and a pretrained action
classifier; here the frame embeddings and the action scores come from the world's own
classifier (:mod:`mannequin.classifier`), and optical flow from :func:`dense_flow`, a
pyramidal Lucas–Kanade in torch. (OpenCV's Farneback would do too, but OpenCV 5 needs
numpy 2 and the bpy 5.0.1 wheel pins numpy 1.26, so it is not a dependency here.)
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

FLOW_LEVELS = 3
FLOW_ITERATIONS = 4
FLOW_WINDOW_SIGMA = 2.0
# Tikhonov term of the 2×2 Lucas–Kanade system: flat regions get ~0 flow instead of noise.
FLOW_REGULARISER = 1e-4


def to_float(clip: np.ndarray) -> torch.Tensor:
    """uint8 (F, H, W, 3) → float (F, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(clip)).permute(0, 3, 1, 2).float() / 255.0


def grayscale(frames: torch.Tensor) -> torch.Tensor:
    """(F, 3, H, W) → (F, 1, H, W), Rec. 601 luma."""
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=frames.dtype).view(1, 3, 1, 1)
    return (frames * weights).sum(1, keepdim=True)


def _gaussian_window(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(2.5 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    weights = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return weights / weights.sum()


def _smooth(images: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian over (N, C, H, W), edges replicated."""
    radius = window.numel() // 2
    channels = images.shape[1]
    horizontal = window.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    vertical = window.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    images = F.conv2d(F.pad(images, (radius, radius, 0, 0), mode="replicate"), horizontal, groups=channels)
    return F.conv2d(F.pad(images, (0, 0, radius, radius), mode="replicate"), vertical, groups=channels)


def _gradients(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    padded = F.pad(images, (1, 1, 1, 1), mode="replicate")
    gx = (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]) / 2
    gy = (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]) / 2
    return gx, gy


def warp(images: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample ``images`` (N, C, H, W) at x + flow (N, 2, H, W, pixels), edges clamped."""
    n, _, height, width = images.shape
    ys, xs = torch.meshgrid(torch.arange(height, dtype=flow.dtype), torch.arange(width, dtype=flow.dtype),
                            indexing="ij")
    x = (xs + flow[:, 0]) / max(width - 1, 1) * 2 - 1
    y = (ys + flow[:, 1]) / max(height - 1, 1) * 2 - 1
    grid = torch.stack([x, y], dim=-1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=True)


@torch.no_grad()
def dense_flow(first: torch.Tensor, second: torch.Tensor, levels: int = FLOW_LEVELS,
               iterations: int = FLOW_ITERATIONS, sigma: float = FLOW_WINDOW_SIGMA) -> torch.Tensor:
    """Optical flow from ``first`` to ``second``, both (N, 1, H, W) in [0, 1]: (N, 2, H, W) pixels.

    ``first(x) ≈ second(x + flow(x))``: content that moves right by 2 px gives flow x = +2.
    Coarse-to-fine, with warping and a few Lucas–Kanade refinements per level.
    """
    window = _gaussian_window(sigma)
    pyramid = [(first, second)]
    for _ in range(levels - 1):
        a, b = pyramid[-1]
        if min(a.shape[-2:]) < 16:
            break
        pyramid.append((F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)))
    flow = None
    for a, b in reversed(pyramid):
        if flow is None:
            flow = torch.zeros(a.shape[0], 2, *a.shape[-2:], dtype=a.dtype)
        else:
            flow = 2 * F.interpolate(flow, size=a.shape[-2:], mode="bilinear", align_corners=False)
        for _ in range(iterations):
            moved = warp(b, flow)
            gx, gy = _gradients((a + moved) / 2)
            difference = moved - a
            sums = _smooth(torch.cat([gx * gx, gx * gy, gy * gy, gx * difference, gy * difference], 1), window)
            sxx, sxy, syy, sxt, syt = sums.unbind(1)
            sxx, syy = sxx + FLOW_REGULARISER, syy + FLOW_REGULARISER
            determinant = sxx * syy - sxy * sxy
            du = -(syy * sxt - sxy * syt) / determinant
            dv = -(sxx * syt - sxy * sxt) / determinant
            flow = flow + torch.stack([du, dv], 1).clamp(-2, 2)  # one step never jumps far
    return flow


def clip_flow(clip: np.ndarray) -> torch.Tensor:
    """Flow between consecutive frames of a clip: (F-1, 2, H, W)."""
    gray = grayscale(to_float(clip))
    return dense_flow(gray[:-1], gray[1:])


def cosine(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    return float((a @ b) / (a.norm() * b.norm()).clamp_min(eps))


def flow_cosine(generated: np.ndarray, truth: np.ndarray) -> float:
    """Cosine similarity of the whole clips' flow fields (frames 0→1 … F-2→F-1, concatenated)."""
    return cosine(clip_flow(generated), clip_flow(truth))


def psnr(a: np.ndarray, b: np.ndarray, cap: float = 100.0) -> float:
    """PSNR (dB) of two uint8 images or clips, capped for identical inputs."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)) / 255.0 ** 2
    return cap if mse <= 10 ** (-cap / 10) else -10.0 * math.log10(mse)


def embedding_cosines(generated: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean cosine between matching rows of two (F, D) frame-embedding matrices."""
    return float(F.cosine_similarity(generated.double(), truth.double(), dim=-1).mean())


def temporal_consistency(embeddings: torch.Tensor) -> float:
    """Mean cosine between consecutive frames' embeddings (F, D): the paper's CLIP-based measure."""
    return embedding_cosines(embeddings[:-1], embeddings[1:])
