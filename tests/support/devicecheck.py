"""Checks that code never waits for the device, run on PyTorch's meta device (no GPU needed).

On ``meta`` tensors have no values, so any host read of a device value (``.item()``,
``float(t)``, ``if t:``, a data-dependent shape such as ``nonzero``) raises; ``HostToDeviceCopies``
catches the other way a CUDA stream stalls the host: a blocking host → device copy.
"""

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class HostToDeviceCopies(TorchDispatchMode):
    """Records every copy from the host to another device, with its ``non_blocking`` flag."""

    def __init__(self):
        super().__init__()
        self.blocking: list[str] = []
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is torch.ops.aten._to_copy.default and args[0].device.type == "cpu" and out.device.type != "cpu":
            self.count += 1
            if not kwargs.get("non_blocking"):
                self.blocking.append(f"{tuple(args[0].shape)} {args[0].dtype}")
        return out
