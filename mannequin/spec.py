"""Clip specs: everything that decides a clip's pixels, and how they are drawn per split.

A :class:`ClipSpec` is frozen and JSON-serialisable (:meth:`ClipSpec.to_dict` /
:meth:`ClipSpec.from_dict`). :func:`sample_spec` draws one from a seed; the ``"test"`` split
draws body colours, background and ground colours, camera azimuth and camera elevation from
ranges that the ``"train"`` split never uses (:data:`HELD_OUT`), so an evaluation on test clips
is on unseen appearances and unseen camera angles. Speed, amplitude, lighting, position and
scale are drawn from the same ranges in both splits.
"""

from __future__ import annotations

import colorsys
import zlib
from dataclasses import asdict, dataclass, fields

import numpy as np

from mannequin.actions import ACTIONS

RGB = tuple[float, float, float]
SPLITS = ("train", "test")
BODY_PARTS = ("head", "torso", "arms", "legs")

# -- the held-out dimensions -----------------------------------------------------------------------
# Hues are in degrees on the HSV circle. Test hues are three 30° bins; train hues are the rest.
TEST_HUE_BINS = ((30.0, 60.0), (150.0, 180.0), (270.0, 300.0))
TRAIN_HUE_BINS = ((0.0, 30.0), (60.0, 150.0), (180.0, 270.0), (300.0, 360.0))
# Camera azimuth: 0 = in front of the figure, positive = towards the figure's left side.
TRAIN_AZIMUTH = ((-75.0, -45.0), (-30.0, 30.0), (45.0, 75.0))
TEST_AZIMUTH = ((-45.0, -30.0), (30.0, 45.0))
# Camera elevation above the look-at point (degrees).
TRAIN_ELEVATION = ((6.0, 22.0),)
TEST_ELEVATION = ((0.0, 6.0), (22.0, 30.0))

HELD_OUT = {
    "hue": {"train": TRAIN_HUE_BINS, "test": TEST_HUE_BINS},
    "camera_azimuth": {"train": TRAIN_AZIMUTH, "test": TEST_AZIMUTH},
    "camera_elevation": {"train": TRAIN_ELEVATION, "test": TEST_ELEVATION},
}

# -- shared ranges ---------------------------------------------------------------------------------
SPEED = (0.8, 1.2)          # action cycles per clip
AMPLITUDE = (0.8, 1.15)
POSITION = 0.2               # metres, each of x and y in [-POSITION, POSITION]
SCALE = (0.85, 1.02)
CAMERA_DISTANCE = (5.6, 7.0)
LIGHT_AZIMUTH = 110.0        # the key light is within ±110° of the camera's azimuth (never straight behind)
LIGHT_ELEVATION = (25.0, 65.0)
LIGHT_ENERGY = (0.8, 1.2)


@dataclass(frozen=True)
class ClipSpec:
    """Everything that decides a clip's pixels (colours are sRGB in [0, 1], angles in degrees)."""

    action: str
    seed: int = 0
    split: str = "train"
    head_colour: RGB = (0.85, 0.7, 0.55)
    torso_colour: RGB = (0.8, 0.2, 0.2)
    arms_colour: RGB = (0.9, 0.75, 0.2)
    legs_colour: RGB = (0.2, 0.3, 0.8)
    background_colour: RGB = (0.45, 0.5, 0.55)
    ground_colour: RGB = (0.25, 0.25, 0.22)
    light_azimuth: float = 30.0
    light_elevation: float = 50.0
    light_energy: float = 1.0
    position: tuple[float, float] = (0.0, 0.0)
    scale: float = 1.0
    camera_azimuth: float = 0.0
    camera_elevation: float = 12.0
    camera_distance: float = 6.2
    speed: float = 1.0
    amplitude: float = 1.0
    mirror: bool = False
    num_frames: int = 16
    size: int = 64

    def __post_init__(self):
        if self.action not in ACTIONS:
            raise ValueError(f"unknown action {self.action!r}; known: {', '.join(ACTIONS)}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, not {self.split!r}")
        if self.num_frames < 1 or self.size < 8:
            raise ValueError("num_frames must be >= 1 and size >= 8")

    @property
    def body_colours(self) -> dict[str, RGB]:
        return dict(zip(BODY_PARTS, (self.head_colour, self.torso_colour, self.arms_colour, self.legs_colour)))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ClipSpec":
        known = {f.name for f in fields(cls)}
        values = {}
        for key, value in data.items():
            if key in known:
                values[key] = tuple(tuple(v) if isinstance(v, list) else v for v in value) \
                    if isinstance(value, list) else value
        return cls(**values)

    def replace(self, **changes) -> "ClipSpec":
        return ClipSpec(**{**self.to_dict(), **changes})


def clip_seed(base_seed: int, action: str, split: str, index: int) -> int:
    """The seed of clip ``index`` of ``action`` in ``split`` for a generation run seeded ``base_seed``."""
    sequence = np.random.SeedSequence(entropy=int(base_seed),
                                      spawn_key=(zlib.crc32(action.encode()), SPLITS.index(split), int(index)))
    return int(sequence.generate_state(1, dtype=np.uint32)[0])


def _uniform_in(rng: np.random.Generator, ranges) -> float:
    """A uniform draw from a union of [lo, hi) intervals, weighted by their widths."""
    widths = np.array([hi - lo for lo, hi in ranges], dtype=float)
    pick = rng.choice(len(ranges), p=widths / widths.sum())
    lo, hi = ranges[pick]
    return float(rng.uniform(lo, hi))


def _colour(rng, split, saturation, value) -> RGB:
    # A 1° margin inside each bin: rounding the RGB values never moves a hue across a boundary.
    hue = _uniform_in(rng, [(lo + 1.0, hi - 1.0) for lo, hi in HELD_OUT["hue"][split]]) / 360.0
    rgb = colorsys.hsv_to_rgb(hue, rng.uniform(*saturation), rng.uniform(*value))
    return tuple(round(float(c), 4) for c in rgb)


def _luma(rgb) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _distance(a, b) -> float:
    return float(np.linalg.norm(np.subtract(a, b)))


def sample_spec(action: str, rng: np.random.Generator | int = 0, split: str = "train", *,
                num_frames: int = 16, size: int = 64, seed: int | None = None) -> ClipSpec:
    """Draw a clip spec for ``action``. ``rng`` is a numpy Generator or an integer seed.

    With an integer seed the spec depends only on (action, seed, split, num_frames, size); it
    is recorded in the spec's ``seed`` field (with a Generator, pass ``seed`` to record one).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; known: {', '.join(ACTIONS)}")
    if isinstance(rng, (int, np.integer)):
        seed = int(rng)
        rng = np.random.default_rng(np.random.SeedSequence(entropy=seed,
                                                           spawn_key=(zlib.crc32(action.encode()),
                                                                      SPLITS.index(split))))
    # Background and ground: muted, one darker than the other so the floor's edge shows.
    background = _colour(rng, split, (0.08, 0.4), (0.35, 0.8))
    for _ in range(20):
        ground = _colour(rng, split, (0.08, 0.45), (0.2, 0.75))
        if abs(_luma(ground) - _luma(background)) > 0.12:
            break
    # Body: saturated colours that stand out from both.
    body = []
    for part_value in ((0.55, 0.95), (0.45, 0.95), (0.55, 0.95), (0.4, 0.9)):
        for _ in range(30):
            colour = _colour(rng, split, (0.45, 0.95), part_value)
            if min(_distance(colour, background), _distance(colour, ground)) > 0.35:
                break
        body.append(colour)
    values = dict(
        head_colour=body[0], torso_colour=body[1], arms_colour=body[2], legs_colour=body[3],
        background_colour=background, ground_colour=ground,
        light_azimuth=float(rng.uniform(-LIGHT_AZIMUTH, LIGHT_AZIMUTH)),   # relative to the camera: below
        light_elevation=float(rng.uniform(*LIGHT_ELEVATION)),
        light_energy=float(rng.uniform(*LIGHT_ENERGY)),
        position=(float(rng.uniform(-POSITION, POSITION)), float(rng.uniform(-POSITION, POSITION))),
        scale=float(rng.uniform(*SCALE)),
        camera_azimuth=_uniform_in(rng, HELD_OUT["camera_azimuth"][split]),
        camera_elevation=_uniform_in(rng, HELD_OUT["camera_elevation"][split]),
        camera_distance=float(rng.uniform(*CAMERA_DISTANCE)),
        speed=float(rng.uniform(*SPEED)),
        amplitude=float(rng.uniform(*AMPLITUDE)),
        mirror=bool(rng.random() < 0.5),
    )
    values["light_azimuth"] = (values["camera_azimuth"] + values["light_azimuth"]) % 360.0
    return ClipSpec(action=action, seed=int(seed or 0), split=split, num_frames=num_frames, size=size, **values)


def in_ranges(value: float, ranges) -> bool:
    return any(lo <= value < hi for lo, hi in ranges)


def spec_hues(spec: ClipSpec) -> list[float]:
    """The HSV hues (degrees) of every colour of a spec (for checking the split)."""
    colours = (*spec.body_colours.values(), spec.background_colour, spec.ground_colour)
    return [colorsys.rgb_to_hsv(*c)[0] * 360.0 for c in colours]
