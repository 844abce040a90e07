"""Can a person detector we did not train see the person? MediaPipe Pose as the judge.

    python -m mannequin.judge FRAMES [--reference FRAMES] [--json]

``FRAMES`` is a folder of PNG frames (a take, a mannequin clip, a benchmark dump), read in
name order. For each frame MediaPipe Pose (``mediapipe==0.10.21``, whose wheel ships its
models, so nothing downloads; ``model_complexity=1``, every frame on its own) is run on the
frame enlarged ×4 bicubic (at 64×64 the figure is too small for the detector's input). The
report: the share of frames with a person found, and, with ``--reference`` (the same clip as
rendered, say), the reference's own rate beside it and the keypoint error — the mean distance
in pixels of the frame's own size between the 12 limb landmarks found in both (shoulders,
elbows, wrists, hips, knees, ankles), over frames where both have a person.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

UPSCALE = 4
MODEL_COMPLEXITY = 1
# MediaPipe's landmark indices: shoulders, elbows, wrists, hips, knees, ankles (left, right).
LIMB_LANDMARKS = (11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28)
LANDMARK_COUNT = 33


class JudgeUnavailable(RuntimeError):
    pass


class PoseJudge:
    """MediaPipe Pose on single frames; ``keypoints(frame)`` gives (33, 3) [x_px, y_px, visibility]
    in the frame's own pixels, or None when no person is found."""

    def __init__(self, upscale: int = UPSCALE, model_complexity: int = MODEL_COMPLEXITY):
        try:
            import mediapipe as mp
        except ImportError as err:  # an optional dependency of the benchmarks, not of the engine
            raise JudgeUnavailable(f"MediaPipe is not installed ({err}); "
                                   "install it with: pip install mediapipe==0.10.21") from None
        self.upscale = upscale
        self._pose = mp.solutions.pose.Pose(static_image_mode=True, model_complexity=model_complexity,
                                            enable_segmentation=False)

    def close(self) -> None:
        self._pose.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def keypoints(self, frame: np.ndarray) -> np.ndarray | None:
        from PIL import Image

        frame = np.ascontiguousarray(frame[..., :3], dtype=np.uint8)
        height, width = frame.shape[:2]
        if self.upscale != 1:
            frame = np.asarray(Image.fromarray(frame).resize((width * self.upscale, height * self.upscale),
                                                             Image.BICUBIC))
        result = self._pose.process(frame)
        if result.pose_landmarks is None:
            return None
        return np.array([[p.x * width, p.y * height, p.visibility] for p in result.pose_landmarks.landmark],
                        dtype=np.float64)

    def clip(self, frames: np.ndarray) -> list[np.ndarray | None]:
        return [self.keypoints(frame) for frame in frames]


@dataclass(frozen=True)
class Judgement:
    frames: int
    found: int
    reference_found: int | None = None
    both_found: int | None = None
    keypoint_error_px: float | None = None  # mean over frames found in both; None if none

    @property
    def rate(self) -> float:
        return self.found / self.frames if self.frames else 0.0

    @property
    def reference_rate(self) -> float | None:
        return None if self.reference_found is None else self.reference_found / self.frames


def keypoint_error(points: np.ndarray, reference: np.ndarray) -> float:
    """Mean pixel distance of the limb landmarks between two (33, 3) detections."""
    picked = list(LIMB_LANDMARKS)
    return float(np.linalg.norm(points[picked, :2] - reference[picked, :2], axis=1).mean())


def score(detections: list, reference: list | None = None) -> Judgement:
    """Tally detections (each (33, 3) or None), against a reference's frame by frame."""
    found = sum(d is not None for d in detections)
    if reference is None:
        return Judgement(frames=len(detections), found=found)
    if len(reference) != len(detections):
        raise ValueError(f"{len(detections)} frames against a reference of {len(reference)}")
    errors = [keypoint_error(d, r) for d, r in zip(detections, reference) if d is not None and r is not None]
    return Judgement(frames=len(detections), found=found, reference_found=sum(r is not None for r in reference),
                     both_found=len(errors), keypoint_error_px=float(np.mean(errors)) if errors else None)


def judge_frames(frames, reference=None, judge: PoseJudge | None = None) -> Judgement:
    """``frames`` (and ``reference``): uint8 (N, H, W, 3) arrays or lists of frames."""
    own = judge or PoseJudge()
    try:
        detections = own.clip(frames)
        return score(detections, own.clip(reference) if reference is not None else None)
    finally:
        if judge is None:
            own.close()


def read_folder(folder: Path) -> np.ndarray:
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of frames")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file())
    numbered = [p for p in files if p.name.startswith("frame_")]  # a take: its frames, not its strip.png
    files = numbered or files
    if not files:
        raise FileNotFoundError(f"{folder} has no .png frames")
    frames = []
    for file in files:
        with Image.open(file) as image:
            frames.append(np.asarray(image.convert("RGB")))
    if len({f.shape for f in frames}) != 1:
        raise ValueError(f"the frames in {folder} are not all the same size")
    return np.stack(frames)


def _percent(rate: float | None) -> str:
    return "–" if rate is None else f"{100 * rate:.0f}%"


def report(judgement: Judgement) -> str:
    lines = [f"person found: {judgement.found}/{judgement.frames} frames ({_percent(judgement.rate)})"]
    if judgement.reference_found is not None:
        lines.append(f"reference:    {judgement.reference_found}/{judgement.frames} frames "
                     f"({_percent(judgement.reference_rate)})")
        error = judgement.keypoint_error_px
        lines.append("keypoint error: " + ("– (no frame with a person in both)" if error is None else
                                            f"{error:.2f} px over {judgement.both_found} frames"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mannequin.judge", description=__doc__.split("\n\n")[0])
    parser.add_argument("frames", type=Path, help="a folder of PNG frames (a take, a clip)")
    parser.add_argument("--reference", type=Path, help="the same clip's ground truth, frame for frame")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    try:
        frames = read_folder(args.frames)
        reference = read_folder(args.reference) if args.reference else None
        if reference is not None and len(reference) != len(frames):
            raise ValueError(f"{args.frames} has {len(frames)} frames, the reference {len(reference)}; "
                             "give the reference of the same clip")
        judgement = judge_frames(frames, reference)
    except (OSError, ValueError, JudgeUnavailable) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        data = asdict(judgement) | {"rate": judgement.rate, "reference_rate": judgement.reference_rate}
        print(json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                          for k, v in data.items()}))
    else:
        print(report(judgement))
    return 0


if __name__ == "__main__":
    sys.exit(main())
