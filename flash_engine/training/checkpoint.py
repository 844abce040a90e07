"""Optimizer state in checkpoints without pickle: its tensors go to safetensors, its param
groups (plain numbers) to the checkpoint's JSON. Used by the FLASH trainer and by
``mannequin/train_base.py``."""

from __future__ import annotations

import torch


def optimizer_tensors(optimizer: torch.optim.Optimizer, prefix: str, tensors: dict[str, torch.Tensor]) -> list[dict]:
    """Add the optimizer's state to ``tensors`` as ``<prefix>.<index>.<slot>`` (host copies);
    return its param groups for the JSON side."""
    state = optimizer.state_dict()
    for index, slots in state["state"].items():
        for slot, value in slots.items():
            tensors[f"{prefix}.{index}.{slot}"] = torch.as_tensor(value).detach().cpu().clone()
    return state["param_groups"]


def load_optimizer(optimizer: torch.optim.Optimizer, prefix: str, tensors: dict[str, torch.Tensor],
                   groups: list[dict]) -> None:
    """The inverse of ``optimizer_tensors``: ``load_state_dict`` moves each slot to its parameter."""
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "."):
            index, slot = key[len(prefix) + 1:].split(".", 1)
            state.setdefault(int(index), {})[slot] = value
    groups = [dict(group) for group in groups]
    for group in groups:
        if "betas" in group:  # JSON turned the tuple into a list; AdamW wants the tuple back
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})
