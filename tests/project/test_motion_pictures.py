"""tools/motion_pictures.py's layout (the Blender part runs in tests/blender/test_blender_mannequin_rig.py's
way; this checks the picture it composes from the frames)."""

import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))
import motion_pictures as mp  # noqa: E402


def test_each_row_shows_every_other_frame_enlarged_beside_its_label(tmp_path):
    rng = np.random.default_rng(0)
    rows = [(f"row {k}\nsecond line", [rng.integers(0, 255, (mp.SIZE, mp.SIZE, 3), dtype=np.uint8)
                                       for _ in range(mp.FRAMES)]) for k in range(3)]
    out = tmp_path / "picture.png"
    mp.compose(rows, out)
    picture = np.asarray(Image.open(out).convert("RGB"))
    cell = mp.SIZE * mp.SCALE
    assert picture.shape == (3 * cell, mp.LABEL_WIDTH + cell * len(mp.SHOWN), 3)
    for row, (_label, frames) in enumerate(rows):
        for column, index in enumerate(mp.SHOWN):
            shown = picture[row * cell:(row + 1) * cell, mp.LABEL_WIDTH + column * cell:][:, :cell]
            assert (shown[::mp.SCALE, ::mp.SCALE] == frames[index]).all(), (row, index)
    label = picture[:, :mp.LABEL_WIDTH]
    assert (label < 128).any() and (label == 255).mean() > 0.8  # dark text on white
