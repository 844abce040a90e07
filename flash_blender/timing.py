"""Which scene frame shows which clip frame: a take plays at the clip's own speed.

Pure Python (no bpy). The engine writes a clip at ``clip_fps`` (``flash.json`` "fps"); the
scene plays at ``scene_fps`` (``render.fps / render.fps_base``). Clip frame *k* (0-based) is
on screen from *k / clip_fps* seconds after the take starts, so scene frame ``start + j``
shows clip frame ``floor(j * clip_fps / scene_fps)``: at 24 fps each 8 fps frame is held for
3 scene frames. The take lasts ``clip_frames / clip_fps`` seconds, which is
``ceil(clip_frames * scene_fps / clip_fps)`` scene frames. Outside those frames the plane
holds the first (before) or last (after) frame, or is hidden.

Blender's image sequences show file ``clamp(f - frame_start + 1, 0, frame_duration) +
frame_offset`` at scene frame ``f``; ``offset_keys`` gives the frame offsets (constant
keyframes) that make that file the one the timing rule asks for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .bundled import engine_module

DEFAULT_CLIP_FPS = float(engine_module("requests").DEFAULT_FPS)  # what the engine writes when nothing says otherwise
HOLD, HIDE = "HOLD", "HIDE"
OUTSIDE = (HOLD, HIDE)
_EPS = 1e-9  # fps ratios like 24000/1001 must not push an exact boundary a frame late


@dataclass(frozen=True)
class TakeTiming:
    frame_start: int  # the scene frame that shows clip frame 0
    clip_frames: int
    clip_fps: float = DEFAULT_CLIP_FPS
    scene_fps: float = 24.0

    def __post_init__(self):
        if self.clip_frames < 1:
            raise ValueError("a take needs at least one frame")
        if not (self.clip_fps > 0 and self.scene_fps > 0):
            raise ValueError("frame rates must be positive")

    @property
    def seconds(self) -> float:
        return self.clip_frames / self.clip_fps

    @property
    def scene_frames(self) -> int:
        """How many scene frames the take lasts."""
        return max(1, math.ceil(self.clip_frames * self.scene_fps / self.clip_fps - _EPS))

    @property
    def frame_end(self) -> int:
        """The take's last scene frame (inclusive)."""
        return self.frame_start + self.scene_frames - 1

    def clip_frame(self, scene_frame: int, outside: str = HOLD) -> int | None:
        """The clip frame (0-based) scene frame ``scene_frame`` shows; None when hidden."""
        offset = scene_frame - self.frame_start
        if not 0 <= offset < self.scene_frames:
            if outside == HIDE:
                return None
            return 0 if offset < 0 else self.clip_frames - 1
        return min(self.clip_frames - 1, math.floor(offset * self.clip_fps / self.scene_fps + _EPS))

    def sequence(self) -> list[int]:
        """The clip frame of each of the take's scene frames, in order (a strip's elements)."""
        return [self.clip_frame(self.frame_start + j) for j in range(self.scene_frames)]

    def sample_frames(self) -> list[tuple[int, float]]:
        """``(scene frame, subframe)`` at which to read the scene for each clip frame (a rig's
        pose, a depth pass): the first scene frame that shows it, so what the plane shows on a
        frame was read on that frame. A clip faster than the scene shows some clip frames on
        no scene frame: those are read at their own time, between frames."""
        times = []
        ratio = self.scene_fps / self.clip_fps
        for k in range(self.clip_frames):
            exact = k * ratio
            first = math.ceil(exact - _EPS)
            if first < self.scene_frames and self.clip_frame(self.frame_start + first) == k:
                times.append((self.frame_start + first, 0.0))
            else:
                whole = math.floor(exact + _EPS)
                times.append((self.frame_start + whole, max(0.0, exact - whole)))
        return times

    def offset_keys(self) -> list[tuple[int, int]]:
        """``(scene frame, frame offset)`` keys, held constant until the next, for an image
        sequence with ``frame_start`` = the take's start and ``frame_duration`` = its clip
        frames: every scene frame then shows the file of ``clip_frame`` (held outside)."""
        keys: list[tuple[int, int]] = []
        # until the sequence's own count stops too (later than the take's end for a fast clip)
        last = max(self.frame_end, self.frame_start + self.clip_frames - 1) + 1
        for frame in range(self.frame_start - 1, last + 1):
            base = min(max(frame - self.frame_start + 1, 0), self.clip_frames)
            offset = self.clip_frame(frame) + 1 - base
            if not keys or keys[-1][1] != offset:
                keys.append((frame, offset))
        return keys

    def describe(self, scene_fps_label: str | None = None) -> str:
        """For the panel: '4 frames at 8 fps: 0.5 s, 12 scene frames at 24 fps'."""
        fps = scene_fps_label or f"{self.scene_fps:g}"
        return (f"{self.clip_frames} frames at {self.clip_fps:g} fps: {self.seconds:.1f} s, "
                f"{self.scene_frames} scene frames at {fps} fps")


def scene_fps(fps: int, fps_base: float) -> float:
    return fps / (fps_base or 1.0)


def clip_fps(metadata: dict | None, fallback: float = DEFAULT_CLIP_FPS) -> float:
    """The fps a clip's ``flash.json`` says (the engine's default when it says nothing usable)."""
    value = (metadata or {}).get("fps")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else fallback
