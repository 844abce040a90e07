"""FLASH Previs: animate a previs still into a short clip of a human action.

The Blender side of the project. It runs in Blender's Python and never imports torch: the
engine (``flash_engine``, bundled in the extension) runs as a subprocess in its own
environment and talks JSON lines over stdio (``docs/protocol.md``).

This file only registers. Inside Blender (``bpy`` already imported) it exposes
``register``/``unregister`` from ``registration``; outside Blender — plain pytest of the
bpy-free modules (``takes``, ``take_planning``, ``job_loop``, ``request_limits``, ``errors``,
``camera_frame``, ``catalog``, ``progress``, ``engine``, ``installer``, ``bundled``,
``clipcheck``, ``training``, ``batch``, ``timing``) — importing the package
imports no bpy. ``flash_batch.py`` is the batch script Blender runs with ``-P``.
"""

import sys

if "bpy" in sys.modules:
    from .registration import classes, register, unregister  # noqa: F401
