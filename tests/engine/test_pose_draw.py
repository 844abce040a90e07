"""Pose maps drawn to controlnet_aux's convention (docs/motion-control.md): pixel checks."""

import colorsys

import numpy as np
import pytest

from flash_engine.pose.draw import draw_pose_maps
from flash_engine.pose.format import PoseSequence

# The convention, as listed from controlnet_aux's draw_bodypose (1-based pairs, RGB).
LIMBS_1_BASED = [[2, 3], [2, 6], [3, 4], [4, 5], [6, 7], [7, 8], [2, 9], [9, 10], [10, 11], [2, 12], [12, 13],
                 [13, 14], [2, 1], [1, 15], [15, 17], [1, 16], [16, 18]]
COLOURS = [[255, 0, 0], [255, 85, 0], [255, 170, 0], [255, 255, 0], [170, 255, 0], [85, 255, 0], [0, 255, 0],
           [0, 255, 85], [0, 255, 170], [0, 255, 255], [0, 170, 255], [0, 85, 255], [0, 0, 255], [85, 0, 255],
           [170, 0, 255], [255, 0, 255], [255, 0, 170], [255, 0, 85]]


def _shade(colour):
    return [int(c * 0.6) for c in colour]


def _body(points: dict[int, tuple[float, float]], confidence: dict[int, float] | None = None):
    body = np.zeros((18, 3))
    for index, (x, y) in points.items():
        body[index] = [x, y, (confidence or {}).get(index, 1.0)]
    return body


def _draw(bodies, width, height, **options):
    seq = PoseSequence(body=np.stack(bodies), width=width, height=height, **options)
    return draw_pose_maps(seq, width, height)


def _at(image, x, y):
    """The pixel at normalised (x, y) of a (H, W, 3) map."""
    height, width = image.shape[:2]
    return image[int(y * height), int(x * width)].tolist()


@pytest.mark.parametrize("limb", range(17))
def test_each_limb_in_its_colour_times_0_6_and_its_points_in_theirs(limb):
    a, b = (i - 1 for i in LIMBS_1_BASED[limb])
    image = _draw([_body({a: (0.3, 0.4), b: (0.7, 0.6)})], 512, 512)[0]
    assert _at(image, 0.5, 0.5) == _shade(COLOURS[limb])          # the limb's midpoint
    assert _at(image, 0.3, 0.4) == COLOURS[a]                      # each joint's centre
    assert _at(image, 0.7, 0.6) == COLOURS[b]
    assert image[:100].max() == 0 and image[-100:].max() == 0      # black background
    assert (image.max(axis=-1) > 0).sum() < 0.02 * 512 * 512       # a thin limb, not a fill


def test_widths_are_4_px_per_512_and_scale_with_the_image():
    def limb_width(size):
        # A horizontal right upper arm (shoulder -> elbow) across the middle; its lit rows at x = 0.5.
        image = _draw([_body({2: (0.2, 0.5), 3: (0.8, 0.5)})], size, size)[0]
        return int((image[:, size // 2].max(axis=-1) > 0).sum()), image

    width_512, image = limb_width(512)
    assert width_512 == 2 * 4 + 1                                  # half-width 4 around the axis
    width_1024, big = limb_width(1024)
    assert 2 * width_512 - 1 <= width_1024 <= 2 * width_512 + 2     # twice, plus the bilinear edge rows
    assert _at(big, 0.5, 0.5) == _shade(COLOURS[2])                # enlarged: the inside keeps its colour
    width_128, small = limb_width(128)
    assert width_128 <= 4 and _at(small, 0.5, 0.5)[0] > 0          # shrunk ×4: about 2 px, still red
    joint = _draw([_body({0: (0.5, 0.5)})], 1024, 1024)[0]
    lit = int((joint[512].max(axis=-1) > 0).sum())
    assert 2 * 9 - 1 <= lit <= 2 * 9 + 2                           # radius 4 per 512: twice 9 px, bilinear edges


def test_a_wide_image_is_drawn_at_512_on_its_short_side():
    image = _draw([_body({2: (0.25, 0.5), 3: (0.75, 0.5)})], 1024, 512)[0]
    assert image.shape == (512, 1024, 3)
    assert (image[:, 512].max(axis=-1) > 0).sum() == 9             # not thickened by the long side
    assert _at(image, 0.5, 0.5) == _shade(COLOURS[2])


def test_low_confidence_points_and_their_limbs_are_not_drawn():
    body = _body({1: (0.5, 0.3), 2: (0.3, 0.3), 3: (0.3, 0.7)}, confidence={3: 0.1})
    image = _draw([body], 512, 512)[0]
    assert _at(image, 0.4, 0.3) == _shade(COLOURS[0])              # neck - right shoulder: drawn
    assert _at(image, 0.3, 0.7) == [0, 0, 0]                       # the unsure elbow: absent
    assert _at(image, 0.3, 0.5) == [0, 0, 0]                       # and its limb
    missing = _draw([_body({1: (0.5, 0.3)}, confidence={1: 0.0})], 512, 512)[0]
    assert missing.max() == 0


def test_each_frame_is_drawn_from_its_own_pose():
    frames = _draw([_body({0: (0.2, 0.5)}), _body({0: (0.8, 0.5)})], 64, 64)
    assert frames.shape == (2, 64, 64, 3) and frames.dtype == np.uint8
    assert frames[0, 32, 12].max() > 0 and frames[0, 32, 51].max() == 0
    assert frames[1, 32, 51].max() > 0 and frames[1, 32, 12].max() == 0


def test_hands_and_face_are_drawn_when_present():
    hands = np.zeros((1, 2, 21, 3))
    hands[0, 0, 0] = [0.3, 0.3, 1]      # right wrist
    hands[0, 0, 1] = [0.5, 0.3, 1]      # its thumb's first point: edge 0
    hands[0, 1, 0] = [0.3, 0.7, 1]      # left wrist
    hands[0, 1, 5] = [0.5, 0.7, 1]      # its index finger's first point: edge 4
    face = np.array([[[0.8, 0.8, 1.0], [0.9, 0.9, 0.0]]])
    seq = PoseSequence(body=np.zeros((1, 18, 3)), width=512, height=512, hands=hands, face=face)
    image = draw_pose_maps(seq, 512, 512)[0]
    assert _at(image, 0.4, 0.3) == [255, 0, 0]                     # HSV(0/20, 1, 1)
    expected = [255 * c for c in colorsys.hsv_to_rgb(4 / 20, 1, 1)]
    assert np.abs(np.array(_at(image, 0.4, 0.7)) - expected).max() <= 1
    assert (image[int(0.3 * 512) - 5: int(0.3 * 512) + 6, 204].max(axis=-1) > 0).sum() <= 3  # thickness 2
    for x, y in ((0.3, 0.3), (0.5, 0.3), (0.3, 0.7), (0.5, 0.7)):
        assert _at(image, x, y) == [0, 0, 255]                     # hand points: blue in RGB
    assert _at(image, 0.8, 0.8) == [255, 255, 255]                 # a face point
    assert _at(image, 0.9, 0.9) == [0, 0, 0]                       # an unsure one
    body_only = draw_pose_maps(seq, 512, 512, hands=False, face=False)[0]
    assert body_only.max() == 0
