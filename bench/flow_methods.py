"""How well OpenCV's dense flows recover a known shift, and their speed: the figures behind
``mannequin.metrics.dense_flow``'s choice of DIS (docs/mannequin-benchmark.md, "Flow cos").

    .venv/bin/python bench/flow_methods.py [--seeds 3]

A smooth random 64×64 texture is moved by whole and sub-pixel shifts (bilinear, edges
clamped, as the metric tests do); each method's flow is compared with the shift over the
centre (12 px margin): |error of the mean flow| and the per-pixel RMS error, in px; then the
milliseconds per 8-frame clip of a moving disc (one thread).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHIFTS = ((0.5, 0.0), (1.5, -1.0), (3.0, 2.0), (-5.0, 1.0), (6.0, -4.0))


def methods():
    import cv2

    def dis(preset):
        return lambda a, b: cv2.DISOpticalFlow_create(preset).calc(a, b, None)

    return {
        "dis-medium (the metric)": dis(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM),
        "dis-fast": dis(cv2.DISOPTICAL_FLOW_PRESET_FAST),
        "farneback": lambda a, b: cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 9, 5, 5, 1.1, 0),
    }


def main(argv=None) -> int:
    import cv2
    import torch
    import torch.nn.functional as F

    from mannequin.metrics import warp
    from tests.support.clipgen import moving_disc

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)

    def grey(t):
        return (t[0, 0].clamp(0, 1).numpy() * 255).round().astype(np.uint8)

    print("| method | shift (px) | mean-flow error, worst seed | per-pixel RMS, worst seed |")
    print("|---|---|---|---|")
    for name, flow in methods().items():
        for dx, dy in SHIFTS:
            mean_errors, rms = [], []
            for seed in range(args.seeds):
                torch.manual_seed(seed)
                texture = F.interpolate(torch.rand(1, 1, 16, 16), size=(64, 64), mode="bicubic",
                                        align_corners=False).clamp(0, 1)
                shift = torch.zeros(1, 2, 64, 64)
                shift[:, 0], shift[:, 1] = -dx, -dy
                found = flow(grey(texture), grey(warp(texture, shift)))[12:-12, 12:-12]
                mean_errors.append(abs(found[..., 0].mean() - dx) + abs(found[..., 1].mean() - dy))
                rms.append(float(np.sqrt(((found[..., 0] - dx) ** 2 + (found[..., 1] - dy) ** 2).mean())))
            print(f"| {name} | ({dx:g}, {dy:g}) | {max(mean_errors):.2f} | {max(rms):.2f} |")
    clip = moving_disc(8, seed=1)
    grey_clip = [cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in clip]
    for name, flow in methods().items():
        started = time.perf_counter()
        for _ in range(5):
            [flow(a, b) for a, b in zip(grey_clip[:-1], grey_clip[1:])]
        print(f"{name}: {(time.perf_counter() - started) / 5 * 1000:.1f} ms per 8-frame clip")
    return 0


if __name__ == "__main__":
    sys.exit(main())
