"""FLASH engine: few-shot image animation of human actions (PyTorch + diffusers).

Only ``protocol``, ``client`` and ``setup`` are standard-library-only; everything else
may import torch. The add-on imports nothing else from here.
"""

__version__ = "0.1.0"
