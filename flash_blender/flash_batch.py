"""FLASH Previs batch: animate one or more shots of a .blend in one Blender run.

    blender -b shot.blend --python-exit-code 1 -P flash_batch.py -- [--cameras all|markers | --camera NAME ...]
        [--action ID] [--prompt TEXT] [--seed N] [--frames N] [--steps N] [--out DIR] [--mp4] [--save [PATH]]
        [--motion action|rig:ARMATURE|clip:VIDEO] [--depth] [--devices cuda:0,cuda:1,...|auto]

(``-- --help`` lists every option.) The script ships in the extension folder, e.g.
``~/.config/blender/5.0/extensions/user_default/flash_previs/flash_batch.py``; the add-on's
preferences show its path. It needs the FLASH Previs extension installed (it is enabled here
if it is not). One ``FLASH batch:`` line per shot, then a total; the exit code is 1 when a
shot failed (or the copy could not be saved), 2 for bad arguments.

Blender runs this file as a script, not as part of the add-on: it finds the add-on's
package and hands over to ``operators/batch.py``.
"""

import importlib
import sys
from pathlib import Path

ADDON_NAMES = ("flash_previs", "flash_blender")


def addon_package() -> str | None:
    """The enabled FLASH Previs package (``bl_ext.<repository>.flash_previs``), enabling the
    extension this script belongs to when it is installed but not enabled."""
    import addon_utils
    import bpy

    for name in bpy.context.preferences.addons.keys():
        if name.rsplit(".", 1)[-1] in ADDON_NAMES:
            return name
    here = Path(globals().get("__file__") or ".").resolve().parent
    guess = f"bl_ext.{here.parent.name}.{here.name}"
    try:
        addon_utils.enable(guess, default_set=False, handle_error=lambda err: None)
    except Exception:  # not an installed extension: run() says so in one line
        pass
    return guess if guess in bpy.context.preferences.addons.keys() else None


def run() -> int:
    package = addon_package()
    if package is None:
        print("FLASH batch: error: the FLASH Previs extension is not installed or enabled "
              "(install the zip: Preferences > Get Extensions > Install from Disk)")
        return 2
    return importlib.import_module(f"{package}.operators.batch").main(sys.argv)


if __name__ == "__main__":
    code = run()
    if code:
        # With --python-exit-code 1 Blender exits with an error after an exception; SystemExit
        # also ends a Python that runs this directly with the code.
        raise SystemExit(code)
