"""The animate use case without Blender: what the user chose → the engine request and the
take's record; what the engine returned → what gets imported.

Pure Python (no bpy). ``animate_take.py`` reads the scene and renders the reference; this
module decides everything else:

- the clip's size: with *Native Size* (the default) the request leaves ``width``,
  ``height`` and ``long_side`` out and the engine uses the model's own size at the
  reference's aspect; the reference is rendered at that size when the running engine has
  said it (``hello``'s ``model_limits``), else at :data:`REFERENCE_LONG_SIDE` (the engine
  scales it). A Long Side the user set gives both sides, at the camera frame's aspect;
- the request's arguments (``flash_engine/requests.py``'s ``AnimateRequest`` fields);
- :class:`Take`, the frozen record of one take that the job carries to its end;
- the request is checked against the engine's schema, and (:func:`check_model_limits`)
  against the model's limits: what they would refuse is refused before the job;
- :func:`take_result`: the engine's result as the importer takes it (its ``out``,
  ``frames`` and the clip's fps, not paths rebuilt from the plan).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .catalog import ActionInfo
from .errors import PlanError
from .motion import MotionChoice, request_args
from .request_limits import check_request
from .take_planning import OutputRoot, TakePlan, model_size, size_multiple
from .timing import clip_fps

REFERENCE_LONG_SIDE = 512  # the reference's long side while the model's size is not known yet
OUTPUTS = ("PLANE", "VSE", "BOTH")


@dataclass(frozen=True)
class TakeChoice:
    """What the user chose: the scene's FLASH settings with the operator's overrides."""

    action: ActionInfo
    prompt: str  # empty: the action's own
    seed: int
    frames: int
    steps: int
    guidance: float
    long_side: int | None  # None: the model's native size
    output: str = "BOTH"  # PLANE, VSE or BOTH
    plane_distance: float = 10.0
    outside: str = "HOLD"
    mp4: bool = False
    motion: MotionChoice = MotionChoice()  # what moves the person (motion.py): the action alone by default


@dataclass(frozen=True)
class Shot:
    """The shot as Blender showed it when the take was asked for."""

    scene: str
    camera: str
    frame: int  # the scene frame that shows the clip's first frame
    resolution_x: int
    resolution_y: int
    pixel_aspect_x: float = 1.0
    pixel_aspect_y: float = 1.0


@dataclass(frozen=True)
class Take:
    """One take, from its plan to its import (the job carries it; nothing changes it)."""

    plan: TakePlan
    scene: str
    camera: str
    frame_start: int
    in_project: bool  # the take lies beside the saved .blend: paths are stored //-relative
    output: str
    distance: float
    outside: str
    action: str  # the action's id
    action_name: str
    base_model_only: bool
    seed: int
    prompt: str
    reference_size: tuple[int, int]  # the reference render's width and height
    native_size: bool  # the engine picks the clip's size (the model's own)
    motion: dict | None = None  # the motion source, as the take's flash.json records it (None: the action alone)
    motion_files: tuple[Path, ...] = ()  # what the add-on wrote for the motion (pose file, depth maps, their folder)

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def folder(self) -> Path:
        return self.plan.folder

    @property
    def reference(self) -> Path:
        return self.plan.reference

    def tags(self, stored_folder: str) -> dict:
        """What the plane and the strip are tagged with (``flash_<key>`` properties)."""
        return {"take": self.name, "action": self.action, "camera": self.camera, "seed": self.seed,
                "prompt": self.prompt, "folder": stored_folder}


def native_long_side(model_limits: dict | None) -> int | None:
    """The long side of the model's own size (``hello``'s ``model_limits``), None if unknown."""
    try:
        side = max(int(model_limits["width"]), int(model_limits["height"]))
    except (TypeError, KeyError, ValueError):
        return None
    return side if side > 0 else None


def clip_size(shot: Shot, long_side: int, model_limits: dict | None) -> tuple[int, int]:
    """Width and height at the camera frame's aspect with ``long_side``, in the model's size
    step (Stable Diffusion's 8 while the engine has not said its model's)."""
    return model_size(shot.resolution_x, shot.resolution_y, long_side, shot.pixel_aspect_x, shot.pixel_aspect_y,
                      size_multiple(model_limits))


def reference_size(choice: TakeChoice, shot: Shot, model_limits: dict | None) -> tuple[int, int]:
    """The size the reference (and the take's pose and depth maps) is rendered at."""
    if choice.long_side is None:
        return clip_size(shot, native_long_side(model_limits) or REFERENCE_LONG_SIDE, model_limits)
    return clip_size(shot, choice.long_side, model_limits)


def plan_animate(choice: TakeChoice, shot: Shot, plan: TakePlan, root: OutputRoot,
                 model_limits: dict | None = None) -> tuple[Take, dict]:
    """The take's record and the engine request's arguments (creates nothing).
    ``model_limits``: what the running engine said about its model, if it runs."""
    if choice.output not in OUTPUTS:
        raise PlanError(f"unknown output {choice.output!r}", f"use one of {', '.join(OUTPUTS)}")
    prompt = choice.prompt.strip() or choice.action.prompt
    native = choice.long_side is None
    width, height = reference_size(choice, shot, model_limits)
    take = Take(plan=plan, scene=shot.scene, camera=shot.camera, frame_start=shot.frame, in_project=root.in_project,
                output=choice.output, distance=choice.plane_distance, outside=choice.outside, action=choice.action.id,
                action_name=choice.action.name, base_model_only=choice.action.base_model_only, seed=choice.seed,
                prompt=prompt, reference_size=(width, height), native_size=native)
    args = {"image": str(plan.reference.resolve()), "out": str(plan.folder.resolve()), "prompt": prompt,
            "frames": choice.frames, "steps": choice.steps, "guidance": float(choice.guidance), "seed": choice.seed,
            **choice.action.request_args()}
    if not native:
        args.update(width=width, height=height)
    if choice.mp4:
        args["mp4"] = True
    args.update(request_args(choice.motion, plan.reference))
    check_request("animate", args)
    check_model_limits(args, model_limits)
    return take, args


def check_model_limits(args: dict, model_limits: dict | None) -> None:
    """PlanError when the model cannot take the request (``model_limits`` None: not known yet)."""
    most = (model_limits or {}).get("max_frames")
    frames = args.get("frames")
    if isinstance(most, int) and isinstance(frames, int) and frames > most:
        raise PlanError(f"{frames} frames is more than this model's motion takes ({most})",
                        f"set Frames to {most} or fewer")
    step = size_multiple(model_limits)
    for name in ("width", "height"):  # planned in steps of 8 before the engine said its model's step
        side = args.get(name)
        if isinstance(side, int) and side % step:
            raise PlanError(f"a {name} of {side} is not a multiple of {step}, this model's size step",
                            f"animate again: the engine runs now, so the size is planned in steps of {step}")


def frames_problem(frames: int, model_limits: dict | None) -> str:
    """What the panel says when the model cannot take ``frames`` (empty: it can)."""
    try:
        check_model_limits({"frames": frames}, model_limits)
    except PlanError as err:
        return str(err)
    return ""


def size_text(shot: Shot, long_side: int | None, model_limits: dict | None) -> str:
    """The clip's size as the next take gets it, for the panel (``long_side`` None: native)."""
    try:
        if long_side is not None:
            width, height = clip_size(shot, long_side, model_limits)
            return f"Clip: {width} × {height} px (camera aspect)"
        side = native_long_side(model_limits)
        if side is None:
            return "Clip: the model's native size at the camera's aspect (shown once the engine runs)"
        width, height = clip_size(shot, side, model_limits)
        return f"Clip: {width} × {height} px (the model's native size, camera aspect)"
    except PlanError as err:
        return str(err)


@dataclass(frozen=True)
class TakeResult:
    """A finished job's take as the importer needs it."""

    folder: Path
    frames: tuple[Path, ...]
    fps: float
    mp4: str | None = None


def take_result(result: dict | None) -> TakeResult:
    """The engine's animate result → :class:`TakeResult`; PlanError when it holds no frames."""
    result = result or {}
    frames = tuple(Path(frame) for frame in result.get("frames") or ())
    if not frames or not result.get("out"):
        raise PlanError("the engine returned no frames", "see the engine log")
    return TakeResult(folder=Path(result["out"]), frames=frames, fps=clip_fps(result.get("metadata")),
                      mp4=result.get("mp4"))
