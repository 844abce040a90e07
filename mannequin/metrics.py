"""Clip metrics for the few-shot benchmark, all on the CPU (numpy + torch + OpenCV).

Clips are uint8 arrays (F, H, W, 3). The paper's metrics need CLIP and a pretrained action
classifier; here the frame embeddings and the action scores come from the world's own
classifier (:mod:`mannequin.classifier`), and optical flow from OpenCV's DIS
(:func:`dense_flow`; opencv-contrib 4.11 comes with mediapipe 0.10.21 and keeps numpy 1.x).
DIS replaced a hand-written pyramidal Lucas–Kanade: on the known-shift tests it is as close
on the mean (≤ 0.03 px), closer per pixel (RMS 0.03 px against 0.13), it still finds a 6 px
shift where Lucas–Kanade lost it, and it is ~8× faster (docs/mannequin-benchmark.md).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# Part of the benchmark's run key: rows scored with another flow are not mixed with these.
FLOW_METHOD = "opencv-dis-medium"


def to_float(clip: np.ndarray) -> torch.Tensor:
    """uint8 (F, H, W, 3) → float (F, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(clip)).permute(0, 3, 1, 2).float() / 255.0


def grayscale(frames: torch.Tensor) -> torch.Tensor:
    """(F, 3, H, W) → (F, 1, H, W), Rec. 601 luma."""
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=frames.dtype).view(1, 3, 1, 1)
    return (frames * weights).sum(1, keepdim=True)


def warp(images: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample ``images`` (N, C, H, W) at x + flow (N, 2, H, W, pixels), edges clamped."""
    n, _, height, width = images.shape
    ys, xs = torch.meshgrid(torch.arange(height, dtype=flow.dtype), torch.arange(width, dtype=flow.dtype),
                            indexing="ij")
    x = (xs + flow[:, 0]) / max(width - 1, 1) * 2 - 1
    y = (ys + flow[:, 1]) / max(height - 1, 1) * 2 - 1
    grid = torch.stack([x, y], dim=-1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=True)


def dense_flow(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Optical flow from ``first`` to ``second``, both (N, 1, H, W) in [0, 1]: (N, 2, H, W) pixels.

    ``first(x) ≈ second(x + flow(x))``: content that moves right by 2 px gives flow x = +2.
    OpenCV's DIS (medium preset) on the frames as 8-bit grey.
    """
    import cv2

    def grey(images: torch.Tensor) -> np.ndarray:
        return (images[:, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()

    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    flows = [dis.calc(a, b, None) for a, b in zip(grey(first), grey(second))]
    return torch.from_numpy(np.stack(flows)).permute(0, 3, 1, 2).float()


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
