#!/usr/bin/env python3
"""Build the installable Blender extension zip.

    python tools/build_extension.py [--out DIR]      # default: dist/

Blender wants ``__init__.py`` beside ``blender_manifest.toml`` at the zip's root, so the
build stages a folder::

    flash_previs/
        blender_manifest.toml    the repo root's manifest
        __init__.py, …           the contents of flash_blender/ (the add-on)
        flash_engine/            the engine package (the add-on imports its stdlib-only
                                 modules; the engine subprocess gets this folder on PYTHONPATH)
        presets/                 the action presets (flash_engine.presets finds ../presets)

leaving out tests, caches and dev files, then runs Blender's own packager
(``blender_ext.py build``, shipped in the bpy wheel or a Blender install; ``--blender-ext``
or ``$BLENDER_EXT`` picks one) which validates the manifest and writes
``<id>-<version>.zip``. Prints the zip's path on the last line.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MANIFEST = "blender_manifest.toml"
# What goes into the extension, from where: (source in the repo, destination in the zip).
PARTS = (("flash_blender", "."), ("flash_engine", "flash_engine"), ("presets", "presets"))
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", ".*", "*.egg-info", "tests", "test_*.py",
                                "*~", "*.swp", ".DS_Store")


def find_blender_ext(explicit: str | None = None) -> Path:
    """Blender's extension CLI: --blender-ext, $BLENDER_EXT, else the bpy wheel's copy."""
    candidates = [explicit, os.environ.get("BLENDER_EXT")]
    site = Path(sysconfig.get_paths()["platlib"])
    candidates += [str(p) for p in sorted(site.glob("bpy/*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise SystemExit("error: Blender's blender_ext.py not found (install the bpy wheel: pip install bpy==5.0.1, "
                     "or pass --blender-ext BLENDER/5.0/scripts/addons_core/bl_pkg/cli/blender_ext.py)")


def stage(dest: Path, repo: Path = REPO) -> Path:
    """Copy the extension's files into ``dest`` (created; must not exist)."""
    dest.mkdir(parents=True)
    for source, target in PARTS:
        shutil.copytree(repo / source, dest / target, ignore=IGNORE, dirs_exist_ok=True)
    shutil.copy2(repo / MANIFEST, dest / MANIFEST)
    return dest


def build(out_dir: Path, blender_ext: Path | None = None, python: str = sys.executable) -> Path:
    manifest = tomllib.loads((REPO / MANIFEST).read_text(encoding="utf-8"))
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    zip_path = out_dir / f"{manifest['id']}-{manifest['version']}.zip"
    with tempfile.TemporaryDirectory(prefix="flash-extension-") as tmp:
        staged = stage(Path(tmp) / manifest["id"])
        partial = out_dir / (zip_path.name + ".partial")
        partial.unlink(missing_ok=True)
        proc = subprocess.run([python, str(blender_ext or find_blender_ext()), "build", "--source-dir", str(staged),
                               "--output-filepath", str(partial)], capture_output=True, text=True)
        if proc.returncode != 0 or not partial.is_file():
            partial.unlink(missing_ok=True)
            raise SystemExit(f"error: blender_ext build failed:\n{proc.stdout}{proc.stderr}")
        os.replace(partial, zip_path)  # a zip is whole or absent
    return zip_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "dist"), help="output folder (default: dist/)")
    parser.add_argument("--blender-ext", help="path to Blender's blender_ext.py (default: the bpy wheel's)")
    args = parser.parse_args(argv)
    print(build(Path(args.out), find_blender_ext(args.blender_ext)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
