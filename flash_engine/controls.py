"""Motion control of a take: the request's pose, driving clip and depth resolved to the
conditions and ControlNets the pipeline steers with.

Everything is checked when the request is resolved, before any model loads: the pose file
(read, and checked against the take's frames and aspect), the depth folder (read, one image
per frame), the ControlNet folders (complete, safetensors, made for this model). A driving
clip is checked to exist then; its poses are read with MediaPipe by ``prepare_controls``, which
the job runs first, still before the model loads (seconds of work that the service's reading
thread must not wait for).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from flash_engine.errors import FlashError
from flash_engine.requests import AnimateRequest, control_strength, control_window


@dataclass
class TakeControl:
    """One control of a take, resolved. ``kind``: "pose" (from a pose file or a driving clip) or
    "depth"; ``source``: what the take's flash.json records about where the motion came from."""

    kind: str
    controlnet: Path
    controlnet_identity: str
    strength: float
    start: float
    end: float
    source: dict
    pose: object = None  # pose.format.PoseSequence, once known
    depth: np.ndarray | None = None  # (F, H, W) float32 in 0..1
    driving: dict | None = None  # {path, start, reference_pose}: its poses are read by prepare_controls

    @property
    def controlnet_key(self) -> tuple[str, str]:
        """What a warm ControlNet is known by: its folder and the fingerprint of its weights."""
        return str(self.controlnet), self.controlnet_identity

    def condition(self, width: int, height: int) -> np.ndarray:
        """The ControlNet's condition: (F, height, width, 3) float32 in 0..1."""
        if self.kind == "depth":
            from flash_engine.depth import depth_condition

            return depth_condition(self.depth)
        if self.pose is None:
            raise RuntimeError("the driving clip's poses are not read yet: run prepare_controls first")
        from flash_engine.pose.draw import draw_pose_maps

        return draw_pose_maps(self.pose, width, height).astype(np.float32) / 255.0

    def record(self) -> dict:
        """This control as the take's flash.json lists it."""
        return {"control": self.kind, "source": self.source, "strength": self.strength, "start": self.start,
                "end": self.end, "controlnet": {"folder": str(self.controlnet), "identity": self.controlnet_identity}}


def _controlnet(request: AnimateRequest, kind: str, model: str, size_multiple: int) -> tuple[Path, str]:
    from flash_engine.models.controlnet import (check_controlnet_fits, check_controlnet_folder, controlnet_identity,
                                                find_controlnet)

    folder = find_controlnet(kind, getattr(request, f"{kind}_controlnet"), model).resolve()
    config = check_controlnet_folder(folder, kind)
    check_controlnet_fits(folder, config, model, size_multiple, kind, request.motion_adapter)
    return folder, controlnet_identity(folder)


def _settings(request: AnimateRequest, kind: str) -> dict:
    start, end = control_window(request, kind)
    return {"strength": control_strength(request, kind), "start": start, "end": end}


def resolve_controls(request: AnimateRequest, *, model: str, frames: int, width: int, height: int,
                     size_multiple: int, reference_size: tuple[int, int]) -> list[TakeControl]:
    """The take's controls (pose first, then depth), each input and ControlNet checked; a
    one-line FlashError for the first problem."""
    from flash_engine.output import file_digest

    controls = []
    if request.pose is not None:
        from flash_engine.pose.format import read_pose_file

        path = Path(request.pose).expanduser()
        poses = read_pose_file(path)
        poses.check_for(frames, width, height, size_multiple)
        source = {"pose": os.path.abspath(path), "sha256": file_digest(path)}
        folder, identity = _controlnet(request, "pose", model, size_multiple)
        controls.append(TakeControl("pose", folder, identity, **_settings(request, "pose"), source=source, pose=poses))
    elif request.driving is not None:
        path = Path(request.driving).expanduser()
        if not path.exists():
            raise FlashError(f"driving clip not found: {path}", "check the --driving path (a video file or a folder "
                             "of frames)", code="bad_driving")
        reference_pose, reference_path = None, None
        if request.reference_pose is not None:
            from flash_engine.pose.format import read_pose_file

            reference_path = Path(request.reference_pose).expanduser()
            reference_pose = read_pose_file(reference_path)
        source = {"driving": os.path.abspath(path), "start": request.driving_start or 0, "frames": frames,
                  "reference_pose": os.path.abspath(reference_path) if reference_path else None}
        folder, identity = _controlnet(request, "pose", model, size_multiple)
        controls.append(TakeControl("pose", folder, identity, **_settings(request, "pose"), source=source,
                                    driving={"path": path, "start": request.driving_start or 0,
                                             "reference_pose": reference_pose}))
    if request.depth is not None:
        from flash_engine.depth import read_depth_folder

        folder_in = Path(request.depth).expanduser()
        depth, names = read_depth_folder(folder_in, frames, width, height, reference_size, size_multiple)
        source = {"depth": os.path.abspath(folder_in), "files": names}
        folder, identity = _controlnet(request, "depth", model, size_multiple)
        controls.append(TakeControl("depth", folder, identity, **_settings(request, "depth"), source=source,
                                    depth=depth))
    return controls


def prepare_controls(controls: list[TakeControl], frames: int, reference, fps: float,
                     report: Callable[[str], None] | None = None) -> None:
    """Read a driving clip's poses (MediaPipe), retargeted to the reference's person, at the
    take's ``fps``; nothing to do for the other controls, or when done already."""
    for control in controls:
        if control.driving is None or control.pose is not None:
            continue
        from flash_engine.pose.driving import poses_from_driving

        driving = control.driving
        control.pose = poses_from_driving(driving["path"], frames, driving["start"], reference,
                                          driving["reference_pose"], fps=fps, report=report)
        control.source["fps"] = fps


def pipeline_controls(controls: list[TakeControl], nets: list, width: int, height: int) -> list:
    """The pipeline's ``Control`` for each take control, with its loaded ControlNet."""
    import torch

    from flash_engine.pipeline import Control

    made = []
    for control, net in zip(controls, nets, strict=True):
        frames = torch.from_numpy(np.ascontiguousarray(control.condition(width, height))).permute(0, 3, 1, 2)
        made.append(Control(net=net, frames=frames.contiguous(), scale=control.strength, start=control.start,
                            end=control.end, name=control.kind))
    return made


def controlnet_bytes(controls: list[TakeControl]) -> int:
    """The bytes of the ControlNets' weight files (what they add to the device's memory)."""
    return sum(f.stat().st_size for control in controls for f in control.controlnet.glob("*.safetensors"))
