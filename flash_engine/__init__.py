"""FLASH engine: few-shot image animation of human actions (PyTorch + diffusers).

Standard-library-only, for the Blender add-on: ``protocol``, ``client``, ``requests``,
``layout``, ``errors``, ``presets``, ``setup`` (and ``weights`` at import time);
everything else may import torch. The add-on imports nothing else from here.
"""

__version__ = "0.1.0"
