"""Find and import the engine code the extension bundles, without touching ``sys.path``.

The extension zip holds the add-on at its root and the engine beside it::

    flash_previs/            (the extension folder: Blender imports it as bl_ext.<repo>.flash_previs)
        __init__.py …        the add-on (this package)
        flash_engine/        the engine package
        presets/             the action presets (flash_engine.presets looks for ../presets)

In a source checkout the add-on is ``flash_blender/`` and the engine is its sibling
``flash_engine/``: :func:`engine_root` finds either layout.

Two consumers:

- the engine subprocess gets ``engine_root()`` as its PYTHONPATH (``EngineClient(engine_path=…)``);
- inside Blender the add-on needs the stdlib-only modules (``client``, ``protocol``,
  ``presets``, ``model_actions``, ``setup``, ``errors``). Those import each other absolutely
  (``from flash_engine.errors import …``), so they must live under the top-level name
  ``flash_engine``: :func:`load_engine` imports the bundled package by location under that
  name. Nothing is added to ``sys.path`` (other add-ons and Blender see no new folder),
  only this one package is registered, and :func:`unload_engine` (on unregister) removes
  it again so a disabled or updated extension leaves no stale modules behind.

Pure Python (no bpy).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

PACKAGE = "flash_engine"
HERE = Path(__file__).resolve().parent

_loaded_by_us = False


def engine_root(start: Path = HERE) -> Path:
    """The folder that holds ``flash_engine/`` (and ``presets/``)."""
    for candidate in (start, start.parent):
        if (candidate / PACKAGE / "__init__.py").is_file():
            return candidate
    raise FileNotFoundError(f"the bundled engine ({PACKAGE}/) is missing next to {start}: reinstall the extension")


def load_engine(root: Path | None = None):
    """The ``flash_engine`` package: the bundled one, imported by location if not loaded yet.

    If some other copy is already imported (a developer's own install, imported first),
    that one is used: it is the same code, and two copies under one name cannot coexist.
    """
    global _loaded_by_us
    root = root or engine_root()
    module = sys.modules.get(PACKAGE)
    if module is not None:
        return module
    init = root / PACKAGE / "__init__.py"
    spec = importlib.util.spec_from_file_location(PACKAGE, init, submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(PACKAGE, None)
        raise
    _loaded_by_us = True
    return module


def engine_module(name: str):
    """``flash_engine.<name>`` from the bundled engine (stdlib-only modules only, in Blender)."""
    load_engine()
    return importlib.import_module(f"{PACKAGE}.{name}")


def unload_engine() -> list[str]:
    """Forget the engine modules this add-on imported (not a copy someone else imported);
    returns their names."""
    global _loaded_by_us
    if not _loaded_by_us:
        return []
    names = [name for name in list(sys.modules) if name == PACKAGE or name.startswith(PACKAGE + ".")]
    for name in names:
        del sys.modules[name]
    _loaded_by_us = False
    return names
