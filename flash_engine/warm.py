"""The warm pipeline: one loaded model (and its action slot and ControlNets) kept between jobs.

The service and the command line ask ``PipelineCache.get(key)`` for the pipeline a job runs
on; a different key (model, adapter, device, dtype, offload) releases the old one first.
The action slot belongs to its pipeline (it remembers the base's tensors that an action
replaces), so it is made and dropped with it here and nowhere else. So are the ControlNets a
job steers with (``controlnets``): kept on the pipeline's device while the jobs ask for them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flash_engine.devices import PRECISIONS


@dataclass(frozen=True)
class PipelineKey:
    model: str
    motion_adapter: str | None
    device: str
    dtype: str
    offload: bool


class PipelineCache:
    """Keeps the last loaded pipeline warm; ``loads`` counts real weight loads."""

    def __init__(self):
        self.key: PipelineKey | None = None
        self.pipeline = None
        self.slot = None  # the pipeline's ActionSlot
        self.loaded_controlnets: dict[tuple[str, str], object] = {}  # (folder, identity) → ControlNetModel
        self.loads = 0

    def get(self, key: PipelineKey):
        """The pipeline for ``key``, loading it only when the key changed."""
        if self.key != key:
            from flash_engine.actions import ActionSlot
            from flash_engine.models.loading import load_base
            from flash_engine.pipeline import FlashPipeline

            self.release()  # the old pipeline's tensors go before the new ones load
            base = load_base(key.model, key.motion_adapter)
            device = torch.device(key.device)
            self.pipeline = FlashPipeline(base, device=device, dtype=PRECISIONS[key.dtype], offload=key.offload)
            self.slot = ActionSlot(self.pipeline)
            self.key = key
            self.loads += 1
        return self.pipeline

    def controlnets(self, keys: list[tuple[str, str]]) -> list:
        """The ControlNets for ``keys`` ((folder, identity), as ``controls.TakeControl.controlnet_key``),
        in order, placed with the warm pipeline (``get`` first); loaded only when not warm already.
        Those the job does not use are let go first: a warm model, not a growing collection."""
        from pathlib import Path

        from flash_engine.models.controlnet import load_controlnet

        if self.pipeline is None:
            raise RuntimeError("get the pipeline before its ControlNets")
        self.loaded_controlnets = {key: net for key, net in self.loaded_controlnets.items() if key in keys}
        for key in keys:
            if key not in self.loaded_controlnets:
                self.loaded_controlnets[key] = self.pipeline.place(load_controlnet(Path(key[0])))
                self.loads += 1
        return [self.loaded_controlnets[key] for key in keys]

    def release(self) -> None:
        self.key = None
        self.pipeline = None
        self.slot = None
        self.loaded_controlnets = {}
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
