"""Devices and precisions: which device, which dtype, copies to it, how much memory it has.

A leaf: models, training and the pipeline import it; it imports no model code. The warm
pipeline the service keeps lives in ``warm``.
"""

from __future__ import annotations

import math
import os
import platform
import torch

from flash_engine.errors import FlashError

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def precision_name(dtype: torch.dtype) -> str:
    return next(name for name, value in PRECISIONS.items() if value == dtype)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FlashError("CUDA was requested but no CUDA GPU is available",
                         "use --device cpu or install the CUDA build of torch", code="bad_device")
    if name.startswith("cuda:"):
        index = name.partition(":")[2]
        if not index.isdigit() or int(index) >= torch.cuda.device_count():
            raise FlashError(f"no CUDA device {name!r}: this machine has {torch.cuda.device_count()}",
                             "use --device cuda (the first) or cuda:N with N below that count", code="bad_device")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise FlashError("MPS was requested but is not available", "use --device cpu", code="bad_device")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise FlashError(f"unknown device {name!r}", "use auto, cpu, cuda or mps", code="bad_device") from err


def to_device(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Copy a host tensor to ``device`` without stalling the host: on CUDA through pinned
    memory with ``non_blocking`` (a pageable copy waits for the GPU's queue to drain)."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        tensor = tensor.pin_memory()  # the caching host allocator keeps it until the copy is done
    # Non-blocking only where that is known safe: CUDA from pinned memory, and meta (no data:
    # the device tests/devicecheck.py checks the loops on). MPS copies stay ordinary.
    return tensor.to(device, dtype, non_blocking=device.type in ("cuda", "meta"))


def pick_dtype(precision: str, device: torch.device) -> torch.dtype:
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "mps":
            return torch.float16
        return torch.float32
    if precision not in PRECISIONS:
        raise FlashError(f"unknown precision {precision!r}", "use auto, fp32, fp16 or bf16", code="bad_precision")
    return PRECISIONS[precision]


def device_report() -> dict:
    report = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "device": str(pick_device("auto")),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        report["gpu"] = props.name
        report["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    return report


# Peak activation bytes per pixel of the clip, per byte of the compute dtype, for Stable
# Diffusion 1.5-sized models with fused attention (docs/benchmarks.md, memory section):
# the UNet's per frame and batch item (2.1 GiB for 16×512² bf16 with guidance), the enhanced
# decoder's per decoded frame (one frame per call). The smaller built-in models need less.
UNET_BYTES_PER_PIXEL = 135
DECODE_BYTES_PER_PIXEL = 2300
USABLE_MEMORY_FRACTION = 0.8  # the rest: the runtime's own context, fragmentation, other programs


def device_memory_bytes(device: torch.device) -> int | None:
    """The device's memory (the host's for the CPU); None where it cannot be told (MPS)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "cpu":
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return None
    return None


def clip_memory_bytes(frames: int, width: int, height: int, dtype: torch.dtype, guided: bool) -> int:
    element = torch.empty((), dtype=dtype).element_size()
    unet = UNET_BYTES_PER_PIXEL * element * frames * width * height * (2 if guided else 1)
    decode = DECODE_BYTES_PER_PIXEL * element * width * height
    return max(unet, decode)


def check_clip_fits(device: torch.device, dtype: torch.dtype, frames: int, width: int, height: int,
                    guided: bool, size_multiple: int, weights_bytes: int = 0) -> None:
    """Refuse, before anything loads, a clip the device cannot hold; the error names a size
    that fits, in multiples of the model's ``size_multiple``."""
    total = device_memory_bytes(device)
    if total is None:
        return
    budget = total * USABLE_MEMORY_FRACTION - weights_bytes
    needed = clip_memory_bytes(frames, width, height, dtype, guided)
    if needed <= budget:
        return
    scale = math.sqrt(max(budget, 0) / needed)
    fit_w, fit_h = (max(size_multiple, int(side * scale) // size_multiple * size_multiple) for side in (width, height))
    raise FlashError(f"{frames} frames at {width}x{height} need about {needed / 2**30:.1f} GiB on {device}, "
                     f"which has {total / 2**30:.1f} GiB", f"use at most {fit_w}x{fit_h} (--width {fit_w} "
                     f"--height {fit_h}) or a device with more memory", code="too_large")


def is_out_of_memory(err: BaseException) -> bool:
    """The device (or the host) ran out of memory: torch's OutOfMemoryError (CUDA), a host
    MemoryError, or the RuntimeError MPS raises, which has no type of its own."""
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()
