import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs a worker per core. Torch's OpenMP threads spin while they wait for each
    # other, so two 2-thread workers on 2 cores ran a test 12x slower than one thread each
    # (docs/benchmarks.md). Set before torch loads; the engines and Blender processes the
    # tests start inherit it. One set by the caller is kept.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def draw_scene(width=96, height=64, seed=0) -> Image.Image:
    """A small reference frame with structure (so encodings differ between images)."""
    image = Image.new("RGB", (width, height), (40 + seed * 30 % 200, 90, 160))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, height * 2 // 3, width, height], fill=(60, 130, 50))
    draw.ellipse([width // 3, height // 6, width // 3 + height // 3, height // 2], fill=(230, 190, 160))
    draw.rectangle([width // 2 + seed, height // 3, width // 2 + 12 + seed, height - 8], fill=(200, 40, 40))
    return image


@pytest.fixture(scope="session")
def tiny_base():
    from flash_engine.models.tiny import build_tiny

    return build_tiny()


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_base):
    from flash_engine.pipeline import FlashPipeline

    return FlashPipeline(tiny_base)


@pytest.fixture
def reference_png(tmp_path) -> Path:
    path = tmp_path / "reference.png"
    draw_scene().save(path)
    return path


def run_engine(*args, cwd=None, timeout=300):
    """Run ``python -m flash_engine ARGS`` as a user would; returns the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "flash_engine", *map(str, args)], cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout)


def pytest_collection_modifyitems(config, items):
    """Files with a slow test run first: `make test` has pytest-xdist hand out whole files in
    collection order, so the long ones start at once instead of running alone at the end."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: every other order is kept
