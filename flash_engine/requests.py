"""The request schema: every field of ``animate`` and ``train``, once.

Standard library only. The command line builds its arguments from it (``add_arguments``),
the service and the CLI check requests with it (``parse``), and the Blender add-on takes its
properties' limits and defaults from it through the bundled engine. A request is a plain
dataclass instance (``AnimateRequest``, ``TrainRequest``): its fields, their types, defaults,
limits and help are the ``Spec`` in each field's metadata.

Limits here are the ones no model can exceed; a model's own (its native size, the step its
sizes go in, the most frames its motion modules take) come from ``models.loading.model_limits``
and are checked when a request is resolved, before any weights load.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from flash_engine.errors import FlashError

BAD_ARGUMENT = "bad_argument"
# Sizes are multiples of the model's VAE scale (``model_limits``' ``size_multiple``): this is
# Stable Diffusion's, the step where the model is not known yet (the add-on before the engine runs).
DEFAULT_SIZE_MULTIPLE = 8
MIN_SIDE = 8
MAX_SIDE = 4096
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes up to 64 bits
MAX_FRAMES = 64  # no motion module we load takes more; a model's own limit may be lower

# Defaults used where neither the request nor a preset names one.
DEFAULT_FRAMES = 16
DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 7.5
DEFAULT_FPS = 8  # the speed of a clip when neither the request nor a trained action gives one
# Training (the paper's values, spec A3.2): TrainConfig's defaults
DEFAULT_TRAIN_STEPS = 20_000
DEFAULT_DECODER_STEPS = 10_000
DEFAULT_STRIDE = 2
DEFAULT_BATCH = 1  # clips per step on each process (the paper trains with batch 1)
MAX_BATCH = 64
# How the learning rates follow the effective batch (clips per step over every rank), from the
# paper's rates at batch 1: sqrt (Adam's square-root rule), linear, or none (kept as they are).
LR_SCALING = ("sqrt", "linear", "none")
DEFAULT_LR_SCALING = "sqrt"
# Motion control: how strongly, and over which part of the denoising schedule (a fraction of the
# steps, diffusers' control_guidance_start/end), a pose or depth ControlNet steers.
DEFAULT_CONTROL_STRENGTH = 1.0
MAX_CONTROL_STRENGTH = 2.0
DEFAULT_CONTROL_START = 0.0
DEFAULT_CONTROL_END = 1.0
CONTROLS = ("pose", "depth")
DEVICES_HELP = "auto, cpu, cuda, cuda:N or mps"
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


SIZE_STEP_HELP = f"the model's size step, its VAE's scale ({DEFAULT_SIZE_MULTIPLE} for Stable Diffusion)"


KIND_NAMES = {str: "a string", int: "a whole number", float: "a number", bool: "true or false",
              list: "a list of strings", dict: "an object"}


@dataclass(frozen=True)
class Spec:
    """What a field takes. ``kind`` is the JSON type: str, int, float, bool, list (of str) or dict."""

    kind: type
    help: str = ""
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple | None = None
    flag: str | None = None  # the CLI flag when it is not --field-name
    metavar: str | None = None
    cli: bool = True  # False: request-only (e.g. a dict of options)

    def check(self, name: str, value: Any) -> Any:
        """``value`` as this field takes it, or a one-line FlashError naming the field."""
        if value is None:
            if self.required:
                raise FlashError(f"'{name}' is required", f"pass {name}", code=BAD_ARGUMENT)
            return None
        value = self._typed(name, value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            low, high = self.minimum, self.maximum
            wanted = (f"between {_number(low)} and {_number(high)}" if low is not None and high is not None
                      else f"at least {_number(low)}" if low is not None
                      else f"at most {_number(high)}" if high is not None else "")
            if isinstance(value, float) and not math.isfinite(value):
                raise FlashError(f"'{name}' must be a finite number {wanted} (got {value})".replace("  ", " "),
                                 f"fix '{name}'", code=BAD_ARGUMENT)
            if (low is not None and value < low) or (high is not None and value > high):
                raise FlashError(f"'{name}' must be {wanted} (got {value})", f"use {name} {self.example()}",
                                 code=BAD_ARGUMENT)
        if self.choices is not None and value not in self.choices:
            raise FlashError(f"'{name}' must be one of {', '.join(map(str, self.choices))} (got {value!r:.40})",
                             f"fix '{name}'", code=BAD_ARGUMENT)
        return value

    def _typed(self, name: str, value: Any) -> Any:
        wrong = FlashError(f"'{name}' must be {KIND_NAMES[self.kind]}, got {value!r:.40} ({type(value).__name__})",
                           f"fix '{name}'", code=BAD_ARGUMENT)
        if self.kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise wrong
            return float(value)
        if self.kind is int:  # True is an int in Python: not here
            if isinstance(value, bool) or not isinstance(value, int):
                raise wrong
            return value
        if self.kind is list:  # a list of strings; one string stands for a list of one
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not value or not all(isinstance(item, str) for item in value):
                raise FlashError(f"'{name}' must be a non-empty list of strings", f"fix '{name}'",
                                 code=BAD_ARGUMENT)
            return list(value)
        if not isinstance(value, self.kind) or (self.kind is not bool and isinstance(value, bool)):
            raise wrong
        return value

    def example(self) -> str:
        low, high = self.minimum, self.maximum
        if low is not None and high is not None and not math.isinf(high):
            return f"from {_number(low)} to {_number(high)}"
        return f"of at least {_number(low)}" if low is not None else ""


def _number(value: float) -> str:
    if value == MAX_SEED:
        return "2^64-1"
    return str(int(value)) if float(value).is_integer() else str(value)


def round_side(value: float, multiple: int) -> int:
    """A side of ``value`` pixels as the nearest multiple of ``multiple`` (halves up), and
    at least MIN_SIDE: how a size that follows an aspect ratio is made one the model takes."""
    smallest = -(-MIN_SIDE // multiple) * multiple
    return max(smallest, int(value / multiple + 0.5) * multiple)


def spec(kind: type, default: Any = None, **options) -> Any:
    """A dataclass field with its ``Spec`` (mutable defaults are copied per request)."""
    metadata = {"spec": Spec(kind, **options)}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    if options.get("required"):
        return field(metadata=metadata)
    return field(default=default, metadata=metadata)


def _model_fields():
    """The fields every job that loads a model has (defaults for a service: ``serve``'s flags)."""
    return dict(
        model=spec(str, "default", help="'mannequin' (the built-in trained model, 64x64), 'tiny' (random "
                   "weights: plumbing checks), a diffusers-layout weights folder, or 'default' ($FLASH_MODEL, "
                   "else fetched weights, else mannequin, else tiny)"),
        motion_adapter=spec(str, None, help="AnimateDiff motion adapter folder (default: MODEL/motion_adapter)"),
        device=spec(str, "auto", help=DEVICES_HELP),
        precision=spec(str, "auto", choices=PRECISIONS, help="compute precision (auto: bf16/fp16 on a GPU)"),
    )


@dataclass
class AnimateRequest:
    image: str = spec(str, required=True, help="the reference frame (PNG/JPEG)")
    out: str = spec(str, required=True, help="output folder: it must not exist, or be a take the engine wrote "
                    "and --overwrite is given")
    action: str | None = spec(str, None, help="preset id or name (see `info`), or a preset .toml file")
    prompt: str | None = spec(str, None, help="the action sentence, e.g. 'a person is shooting a soccer ball.'")
    negative_prompt: str = spec(str, "", help="what the clip should not show")
    weights: str | None = spec(str, None, help="trained action folder (overrides the preset's)")
    model: str = _model_fields()["model"]
    motion_adapter: str | None = _model_fields()["motion_adapter"]
    frames: int | None = spec(int, None, minimum=2, maximum=MAX_FRAMES,
                              help=f"frames in the clip (default: the preset's, else {DEFAULT_FRAMES}; at most "
                                   "the model's motion length)")
    steps: int | None = spec(int, None, minimum=1, maximum=1000,
                             help=f"denoising steps (default: the preset's, else {DEFAULT_STEPS})")
    guidance: float | None = spec(float, None, minimum=0.0, maximum=30.0,
                                  help=f"classifier-free guidance (default: the preset's, else {DEFAULT_GUIDANCE})")
    seed: int | None = spec(int, None, minimum=0, maximum=MAX_SEED, help="default: random (recorded in flash.json)")
    width: int | None = spec(int, None, minimum=MIN_SIDE, maximum=MAX_SIDE,
                             help=f"a multiple of {SIZE_STEP_HELP}; default follows the image's aspect")
    height: int | None = spec(int, None, minimum=MIN_SIDE, maximum=MAX_SIDE,
                              help=f"a multiple of {SIZE_STEP_HELP}; default follows the image's aspect")
    long_side: int | None = spec(int, None, minimum=64, maximum=MAX_SIDE,
                                 help="long side when neither --width nor --height is given (default: the "
                                      "model's native size), a multiple of its size step")
    overwrite: bool = spec(bool, False, help="replace --out when it is a take the engine wrote (only its files)")
    mp4: bool = spec(bool, False, help="also write flash.mp4")
    fps: float | None = spec(float, None, minimum=1, maximum=240,
                           help=f"the clip's speed (default: the trained action's, else {DEFAULT_FPS})")
    device: str = _model_fields()["device"]
    precision: str = _model_fields()["precision"]
    offload: bool = spec(bool, False, help="model CPU offload (less GPU memory, slower)")
    # ---- motion control (docs/motion-control.md) ----
    pose: str | None = spec(str, None, metavar="POSE_JSON",
                            help="the motion to follow: keypoints per frame (.pose.json, docs/pose-format.md)")
    driving: str | None = spec(str, None, metavar="VIDEO",
                               help="the motion to follow: a clip of a person (video file or folder of frames); "
                                    "its poses are read with MediaPipe and retargeted to the reference's person")
    driving_start: int | None = spec(int, None, minimum=0, maximum=10**7,
                                     help="the driving clip's first frame used (default 0)")
    reference_pose: str | None = spec(str, None, metavar="POSE_JSON",
                                      help="the reference person's pose (.pose.json of one frame) the driving "
                                           "clip is retargeted to (default: estimated from --image)")
    depth: str | None = spec(str, None, metavar="DIR",
                             help="per-frame depth images, one per frame (16-bit PNG, near = bright)")
    control_strength: float | None = spec(float, None, minimum=0.0, maximum=MAX_CONTROL_STRENGTH,
                                          help="how strongly every control steers (ControlNet conditioning "
                                               f"scale; default {DEFAULT_CONTROL_STRENGTH:g})")
    pose_strength: float | None = spec(float, None, minimum=0.0, maximum=MAX_CONTROL_STRENGTH,
                                       help="the pose's strength (default: --control-strength)")
    depth_strength: float | None = spec(float, None, minimum=0.0, maximum=MAX_CONTROL_STRENGTH,
                                        help="the depth's strength (default: --control-strength)")
    pose_start: float | None = spec(float, None, minimum=0.0, maximum=1.0,
                                    help="fraction of the steps after which the pose starts steering "
                                         f"(default {DEFAULT_CONTROL_START:g})")
    pose_end: float | None = spec(float, None, minimum=0.0, maximum=1.0,
                                  help=f"fraction of the steps after which it stops (default {DEFAULT_CONTROL_END:g})")
    depth_start: float | None = spec(float, None, minimum=0.0, maximum=1.0,
                                     help=f"as --pose-start, for the depth (default {DEFAULT_CONTROL_START:g})")
    depth_end: float | None = spec(float, None, minimum=0.0, maximum=1.0,
                                   help=f"as --pose-end, for the depth (default {DEFAULT_CONTROL_END:g})")
    pose_controlnet: str | None = spec(str, None, metavar="DIR",
                                       help="pose ControlNet (diffusers folder; default: the model's own, "
                                            "else the fetched lllyasviel/control_v11p_sd15_openpose)")
    depth_controlnet: str | None = spec(str, None, metavar="DIR",
                                        help="depth ControlNet (diffusers folder; default: the model's own, "
                                             "else the fetched lllyasviel/control_v11f1p_sd15_depth)")


@dataclass
class TrainRequest:
    clips: list = spec(list, required=True, metavar="DIR",
                       help="folder(s) of clips: video files or folders of numbered frames")
    action: str = spec(str, required=True, help="the action's name")
    prompt: list = spec(list, required=True, metavar="TEXT",
                        help="the action sentence; one per --clips folder for joint training")
    out: str = spec(str, required=True, help="the action folder to write")
    model: str = _model_fields()["model"]
    motion_adapter: str | None = _model_fields()["motion_adapter"]
    steps: int | None = spec(int, None, minimum=0, maximum=10**7, help=f"UNet steps (default {DEFAULT_TRAIN_STEPS})")
    decoder_steps: int | None = spec(int, None, minimum=0, maximum=10**7, help=f"decoder steps (default {DEFAULT_DECODER_STEPS})")
    resolution: str | None = spec(str, None, help=f"N or WxH, each a multiple of {SIZE_STEP_HELP} "
                                   "(default: the model's native size)")
    frames: int | None = spec(int, None, minimum=2, maximum=MAX_FRAMES, help=f"frames per clip sample (default {DEFAULT_FRAMES})")
    stride: int | None = spec(int, None, minimum=1, maximum=64, help=f"source frames between samples (default {DEFAULT_STRIDE})")
    variant: int | None = spec(int, None, minimum=1, maximum=6,
                               help="the paper's ablation variant #1-#6 (default: 6, the full model)")
    checkpoint_every: int | None = spec(int, None, minimum=1, maximum=10**7, help="default 500 steps")
    seed: int | None = spec(int, None, minimum=0, maximum=MAX_SEED, help="training seed (default 0)")
    batch: int | None = spec(int, None, minimum=1, maximum=MAX_BATCH,
                             help=f"clips per step on each process (default {DEFAULT_BATCH}); under torchrun the "
                                  "effective batch is this times the number of ranks")
    lr_scaling: str | None = spec(str, None, choices=LR_SCALING,
                                  help=f"how the learning rates follow the effective batch (default "
                                       f"{DEFAULT_LR_SCALING}: times its square root)")
    resume: bool = spec(bool, False, help="continue from the last checkpoint")
    force: bool = spec(bool, False, help="start over / replace an action folder the engine wrote")
    device: str = _model_fields()["device"]
    precision: str = _model_fields()["precision"]
    options: dict = spec(dict, {}, cli=False, help="any other TrainConfig field")


REQUESTS = {"animate": AnimateRequest, "train": TrainRequest}
# The fields a service's command line sets for the requests that leave them out.
SERVICE_DEFAULTS = ("model", "motion_adapter", "device", "precision", "offload")


def specs(request_class) -> dict[str, Spec]:
    return {f.name: f.metadata["spec"] for f in fields(request_class)}


def default(request_class, name: str) -> Any:
    found = next(f for f in fields(request_class) if f.name == name)
    if found.default is not MISSING:
        return found.default
    return found.default_factory() if found.default_factory is not MISSING else None


def parse(kind: str, data: dict):
    """A request dict (JSON from the service, or the CLI's) → the request dataclass, checked."""
    request_class = REQUESTS[kind]
    if not isinstance(data, dict):
        raise FlashError(f"{kind} arguments must be a JSON object", "see docs/protocol.md", code=BAD_ARGUMENT)
    known = specs(request_class)
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise FlashError(f"unknown {kind} argument(s): {', '.join(unknown)}", f"allowed: {', '.join(sorted(known))}",
                         code=BAD_ARGUMENT)
    values = {}
    for name, field_spec in known.items():
        value = data.get(name)
        if value is None and not field_spec.required:
            continue
        if field_spec.kind is str and field_spec.required and isinstance(value, str) and not value.strip():
            value = None
        values[name] = field_spec.check(name, value)
    request = request_class(**values)
    check_combinations(request)
    return request


def validate(request) -> None:
    """Check a request made in code (the demo, tests) as ``parse`` checks one from outside."""
    for name, field_spec in specs(type(request)).items():
        setattr(request, name, field_spec.check(name, getattr(request, name)))
    check_combinations(request)


def _given(request, name: str) -> bool:
    return getattr(request, name) is not None


def check_combinations(request) -> None:
    """What no single field can check: fields that need, or exclude, each other."""
    if not isinstance(request, AnimateRequest):
        return
    if _given(request, "pose") and _given(request, "driving"):
        raise FlashError("give --pose or --driving, not both (each is a whole motion)",
                         "drop one of them", code=BAD_ARGUMENT)
    for name, needs in (("driving_start", "driving"), ("reference_pose", "driving")):
        if _given(request, name) and not _given(request, needs):
            raise FlashError(f"'{name}' applies to a driving clip, and none is given",
                             f"add --{needs.replace('_', '-')} or drop --{name.replace('_', '-')}", code=BAD_ARGUMENT)
    sources = {"pose": ("pose", "driving"), "depth": ("depth",)}
    for control in CONTROLS:
        given = any(_given(request, source) for source in sources[control])
        for suffix in ("strength", "start", "end", "controlnet"):
            name = f"{control}_{suffix}"
            if _given(request, name) and not given:
                what = " or ".join(f"--{source}" for source in sources[control])
                raise FlashError(f"'{name}' is set but there is no {control} control",
                                 f"add {what} or drop --{name.replace('_', '-')}", code=BAD_ARGUMENT)
        start, end = control_window(request, control)
        if start >= end:
            raise FlashError(f"'{control}_start' ({start:g}) must be below '{control}_end' ({end:g})",
                             f"e.g. --{control}-start 0 --{control}-end 1", code=BAD_ARGUMENT)
    if _given(request, "control_strength") and not any(
            _given(request, source) for source in ("pose", "driving", "depth")):
        raise FlashError("'control_strength' is set but there is no control",
                         "add --pose, --driving or --depth, or drop --control-strength", code=BAD_ARGUMENT)


def control_strength(request: "AnimateRequest", control: str) -> float:
    """The conditioning scale of ``control`` ("pose" or "depth"): its own, else the shared one."""
    own = getattr(request, f"{control}_strength")
    if own is not None:
        return own
    return request.control_strength if request.control_strength is not None else DEFAULT_CONTROL_STRENGTH


def control_window(request: "AnimateRequest", control: str) -> tuple[float, float]:
    """(start, end): the fraction of the steps over which ``control`` steers."""
    start, end = getattr(request, f"{control}_start"), getattr(request, f"{control}_end")
    return (DEFAULT_CONTROL_START if start is None else start, DEFAULT_CONTROL_END if end is None else end)


# ---------------------------------------------------------------------------------------
# The command line


def _flag(name: str, field_spec: Spec) -> str:
    return field_spec.flag or "--" + name.replace("_", "-")


def _argparse_type(name: str, field_spec: Spec):
    # Only the conversion: limits are checked by ``parse``, whose errors are one line.
    def convert(text: str):
        try:
            return int(text) if field_spec.kind is int else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {'whole ' if field_spec.kind is int else ''}number, "
                                             f"got {text!r}") from None

    convert.__name__ = field_spec.kind.__name__  # argparse names the type in its messages
    return convert


def add_arguments(parser: argparse.ArgumentParser, request_class, only: tuple[str, ...] | None = None,
                  groups: dict[str, Any] | None = None) -> None:
    """One argparse argument per field (``only``: these fields). ``groups`` maps a field name
    to the argument group it belongs in."""
    for request_field in fields(request_class):
        field_spec: Spec = request_field.metadata["spec"]
        if not field_spec.cli or (only is not None and request_field.name not in only):
            continue
        target = (groups or {}).get(request_field.name, parser)
        options: dict[str, Any] = {"help": field_spec.help, "dest": request_field.name}
        if field_spec.kind is bool:
            options["action"] = "store_true"
        elif field_spec.kind is list:
            options.update(nargs="+", metavar=field_spec.metavar)
        elif field_spec.kind in (int, float):
            options["type"] = _argparse_type(request_field.name, field_spec)
        if field_spec.choices is not None:
            options["choices"] = field_spec.choices
        if field_spec.required:
            options["required"] = True
        else:
            options["default"] = default(request_class, request_field.name)
        target.add_argument(_flag(request_field.name, field_spec), **options)


def from_namespace(kind: str, args: argparse.Namespace):
    """The request the parsed command line describes (checked like a service request)."""
    names = [f.name for f in fields(REQUESTS[kind]) if f.metadata["spec"].cli]
    return parse(kind, {name: getattr(args, name) for name in names if getattr(args, name, None) is not None})
