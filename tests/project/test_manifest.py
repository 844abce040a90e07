"""The extension manifest passes Blender's own validator (shipped in the bpy wheel)."""

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from tests.conftest import REPO


def blender_ext_cli() -> Path:
    """Blender's extension CLI from the bpy wheel, found without importing bpy."""
    site = Path(sysconfig.get_paths()["platlib"])
    cli = site / "bpy" / "5.0" / "scripts" / "addons_core" / "bl_pkg" / "cli" / "blender_ext.py"
    assert cli.is_file(), f"bpy 5.0 wheel not installed: {cli}"
    return cli


def test_manifest_validates(tmp_path):
    staged = tmp_path / "flash_previs"
    shutil.copytree(REPO / "flash_blender", staged, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "blender_manifest.toml", staged)
    proc = subprocess.run([sys.executable, str(blender_ext_cli()), "validate", str(staged)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_validator_rejects_a_broken_manifest(tmp_path):
    staged = tmp_path / "broken"
    staged.mkdir()
    (staged / "__init__.py").write_text("")
    text = (REPO / "blender_manifest.toml").read_text().replace('type = "add-on"', 'type = "plugin"')
    (staged / "blender_manifest.toml").write_text(text)
    proc = subprocess.run([sys.executable, str(blender_ext_cli()), "validate", str(staged)],
                          capture_output=True, text=True)
    assert proc.returncode != 0
