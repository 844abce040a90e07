"""Training a custom action from the add-on: names, folders, the job, what the list shows.

Pure Python (no bpy). The engine's ``train`` job does the work (``flash_engine/training``);
this module decides where things go and follows the job:

- an action named "Golf Swing" becomes ``<actions>/golf_swing/`` (``action.toml``,
  ``unet.safetensors``, ``decoder.safetensors``), listed in the dropdown as
  ``trained:golf_swing``;
- while it trains, the engine keeps its checkpoints in ``<actions>/.golf_swing.training/``;
  the add-on keeps what it asked for in ``<actions>/.golf_swing.request.json`` (so *Resume*
  can ask again with ``resume: true``) and, for clips chosen as files, the staged clips
  folder ``<actions>/.golf_swing.clips/``. Hidden names: the dropdown never lists them;
- the finished action gets ``sources.json``: the user's own clip paths (the engine
  recorded the staged ones).
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .bundled import engine_module
from .clipcheck import user_paths
from .errors import PlanError
from .progress import AnimateJob, format_eta
from .take_planning import size_multiple

LAYOUT = engine_module("layout")  # the engine's file names
CHECKPOINT_JSON = LAYOUT.CHECKPOINT_JSON
SOURCES_JSON = "sources.json"
_SCHEMA = engine_module("requests")  # training's defaults, from the engine's schema
DEFAULT_STEPS, DEFAULT_DECODER_STEPS = _SCHEMA.DEFAULT_TRAIN_STEPS, _SCHEMA.DEFAULT_DECODER_STEPS
DEFAULT_FRAMES, DEFAULT_STRIDE = _SCHEMA.DEFAULT_FRAMES, _SCHEMA.DEFAULT_STRIDE
PHASE_LABELS = {"start": "Starting engine", "submitted": "Reading clips", "unet": "Training motion (UNet)",
                "decoder": "Training details (decoder)"}


def action_folder_name(name: str) -> str:
    """The folder (and dropdown id) for an action name: lower case, ``_`` for the rest."""
    slug = re.sub(r"[^\w\-]+", "_", name.strip().lower(), flags=re.UNICODE).strip("_-")[:60]
    if not slug:
        raise PlanError("the action needs a name", "type a name such as 'golf swing'")
    return slug


@dataclass(frozen=True)
class TrainPaths:
    actions_dir: Path
    folder: str  # the action's folder name

    @property
    def out(self) -> Path:
        return self.actions_dir / self.folder

    @property
    def work_dir(self) -> Path:  # the engine's checkpoints (flash_engine.training.job.work_dir_for)
        return LAYOUT.training_work_dir(self.actions_dir / self.folder)

    @property
    def request_file(self) -> Path:
        return self.actions_dir / f".{self.folder}.request.json"

    @property
    def staged_clips(self) -> Path:
        return self.actions_dir / f".{self.folder}.clips"

    def checkpoint(self) -> dict | None:
        return read_json(self.work_dir / CHECKPOINT_JSON)

    def saved_request(self) -> dict | None:
        return read_json(self.request_file)


def read_json(path: Path) -> dict | None:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: Path, data: dict) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=1), encoding="utf-8")
    temporary.replace(path)


NATIVE_RESOLUTION = 0  # a training resolution of 0: the base model's native size (the engine's default)


def resolution_arg(resolution: int, model_limits: dict | None = None) -> str | None:
    """The request's ``resolution``; None (left out) for the base model's native size.
    ``model_limits``: what the running engine said of its model (its size step), if it runs."""
    if resolution == NATIVE_RESOLUTION:
        return None
    step = size_multiple(model_limits)
    if resolution < step or resolution % step:
        lower = max(step, resolution // step * step)
        raise PlanError(f"resolution {resolution} is not a multiple of {step}, the model's size step",
                        f"use {lower} or {lower + step}, or 0 for the model's native size")
    return str(resolution)


def train_args(*, clips_folder: Path, name: str, prompt: str, out: Path, model: str, steps: int,
               decoder_steps: int, resolution: int, frames: int, stride: int, device: str = "auto",
               precision: str = "auto", seed: int | None = None, model_limits: dict | None = None) -> dict:
    """The engine's ``train`` request (TrainRequest's fields). The engine's serve defaults
    do not apply to training, so model, device and precision are always sent. ``model_limits``:
    the running engine's (``hello``), whose model this trains on; None while none runs."""
    prompt = prompt.strip()
    if not prompt:
        raise PlanError("the action needs a prompt sentence", "describe it, e.g. 'a person is swinging a golf club.'")
    if steps < 0 or decoder_steps < 0 or steps + decoder_steps == 0:
        raise PlanError("nothing to train: 0 UNet and 0 decoder steps", "use 20000 UNet and 10000 decoder steps")
    args = {"clips": [str(clips_folder)], "action": name.strip(), "prompt": [prompt], "out": str(out),
            "model": model, "steps": steps, "decoder_steps": decoder_steps,
            "resolution": resolution_arg(resolution, model_limits), "frames": frames, "stride": stride, "device": device, "precision": precision}
    if seed is not None:
        args["seed"] = seed
    if args["resolution"] is None:  # the base model's native size: the engine's default
        del args["resolution"]
    return args


# ---------------------------------------------------------------------------------------
# The running job


@dataclass
class TrainProgress:
    phase: str = "start"
    step: int = 0
    total: int = 0
    eta_s: float | None = None
    loss: float | None = None
    steps: int = 0  # planned UNet steps
    decoder_steps: int = 0

    @property
    def label(self) -> str:
        return PHASE_LABELS.get(self.phase, self.phase.capitalize())

    @property
    def factor(self) -> float:
        """Overall completion over both phases, by steps."""
        planned = self.steps + self.decoder_steps
        if planned <= 0:
            return 0.0
        if self.phase == "unet":
            done = min(self.step, self.steps)
        elif self.phase == "decoder":
            done = self.steps + min(self.step, self.decoder_steps)
        else:
            done = 0
        return max(0.0, min(1.0, done / planned))

    @property
    def text(self) -> str:
        parts = [self.label]
        if self.total > 0 and self.phase in ("unet", "decoder"):
            parts[0] += f" {self.step}/{self.total}"
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.eta_s is not None:
            later = " + decoder" if self.phase == "unet" and self.decoder_steps else ""
            parts.append(f"ETA {format_eta(self.eta_s)}{later}")
        return " · ".join(parts)


class TrainJob(AnimateJob):
    """One ``train`` request: the same life as an animate job (engine start → submit →
    events → result), with the loss and both phases in its progress."""

    job_type = "train"

    def __init__(self, manager, config, args: dict, meta: dict | None = None, **kwargs):
        self.loss: float | None = None
        meta = meta or {}
        # the planned steps (a resumed training: the checkpoint's, in meta)
        self.planned = (int(meta.get("steps", args.get("steps") or 0)),
                        int(meta.get("decoder_steps", args.get("decoder_steps") or 0)))
        super().__init__(manager, config, args, meta, **kwargs)

    def check_engine(self, hello: dict) -> None:
        """(The engine checks a training's frames against its model itself.)"""

    def phase_progress(self, phase: str) -> TrainProgress:
        return TrainProgress(phase, steps=self.planned[0], decoder_steps=self.planned[1])

    def on_event(self, event: dict) -> None:
        if event.get("type") == "progress" and isinstance(event.get("loss"), (int, float)):
            self.loss = float(event["loss"])

    def make_progress(self, state) -> TrainProgress:
        return TrainProgress(state.phase, state.step, state.total, state.eta_s, self.loss, *self.planned)

    def skipped(self) -> list[str]:
        """The clips the engine skipped, as the user knows them ("clip.mp4: reason")."""
        sources = self.meta.get("sources") or {}
        lines = []
        if self.result is not None and self.result.get("clips_skipped") is not None:
            raw = list(self.result["clips_skipped"])
        else:
            raw = [line.removeprefix("skipped ") for line in self.logs if line.startswith("skipped ")]
        for line in raw:
            lines.append(user_paths(line, sources))
        return lines


# ---------------------------------------------------------------------------------------
# What the preferences list


@dataclass(frozen=True)
class Interrupted:
    """A training that stopped before the end: the engine's checkpoint is there."""

    folder: str
    name: str
    phase: str
    step: int
    steps: int
    decoder_steps: int
    resumable: bool  # the add-on saved the request (clips, prompt): Resume can ask again

    @property
    def text(self) -> str:
        total = self.steps if self.phase == "unet" else self.decoder_steps
        where = "UNet" if self.phase == "unet" else "decoder"
        return f"{self.name}: stopped at {where} step {self.step}/{total}"


def interrupted_trainings(actions_dir: Path | None) -> list[Interrupted]:
    found = []
    if not actions_dir or not Path(actions_dir).is_dir():
        return found
    for work in sorted(Path(actions_dir).glob(f".*{LAYOUT.TRAINING_SUFFIX}")):
        meta = read_json(work / CHECKPOINT_JSON)
        if meta is None:
            continue
        folder = work.name[1:-len(LAYOUT.TRAINING_SUFFIX)]
        paths = TrainPaths(Path(actions_dir), folder)
        request = paths.saved_request()
        config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
        found.append(Interrupted(
            folder=folder, name=(request or {}).get("name") or folder, phase=str(meta.get("phase", "unet")),
            step=int(meta.get("step") or 0), steps=int(config.get("steps") or 0),
            decoder_steps=int(config.get("decoder_steps") or 0), resumable=request is not None))
    return found


@dataclass
class TrainedDetails:
    """One trained action for the list: what it was trained on, how long, on what."""

    folder: Path
    name: str
    prompt: str
    clips: list[str] = field(default_factory=list)
    clips_skipped: list[str] = field(default_factory=list)
    steps: int | None = None
    decoder_steps: int | None = None
    base_model: str = ""
    created: str = ""
    problem: str = ""

    @property
    def clip_names(self) -> str:
        names = [Path(c).name for c in self.clips]
        shown = ", ".join(names[:4]) + (f", … (+{len(names) - 4})" if len(names) > 4 else "")
        return f"{len(names)} clip{'s' if len(names) != 1 else ''}" + (f": {shown}" if names else "")

    @property
    def steps_text(self) -> str:
        if self.steps is None:
            return "steps unknown"
        return f"{self.steps} UNet + {self.decoder_steps or 0} decoder steps"

    @property
    def date(self) -> str:
        if not self.created:
            return "date unknown"
        try:
            moment = _dt.datetime.fromisoformat(self.created)
        except ValueError:
            return self.created
        if moment.tzinfo is not None:
            moment = moment.astimezone()  # the user's local time
        return moment.strftime("%Y-%m-%d %H:%M")


def trained_details(folder: Path) -> TrainedDetails:
    folder = Path(folder)
    try:
        data = tomllib.loads((folder / LAYOUT.ACTION_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        return TrainedDetails(folder, folder.name, "", problem=f"unreadable action.toml ({err})")
    sources = read_json(folder / SOURCES_JSON) or {}
    clips = sources.get("clips") if isinstance(sources.get("clips"), list) else data.get("clips") or []
    skipped = (sources.get("clips_skipped") if isinstance(sources.get("clips_skipped"), list)
               else data.get("clips_skipped") or [])

    def number(key):
        value = data.get(key)
        return value if isinstance(value, int) else None

    return TrainedDetails(folder=folder, name=str(data.get("name") or folder.name),
                          prompt=str(data.get("prompt") or ""),
                          clips=[str(c) for c in clips], clips_skipped=[str(c) for c in skipped],
                          steps=number("steps_done"), decoder_steps=number("decoder_steps_done"),
                          base_model=str(data.get("base_model") or ""), created=str(data.get("created") or ""))


def write_sources(action_folder: Path, sources: dict[str, str], result: dict, skipped: list[str]) -> None:
    """``sources.json`` in the finished action: the clips by the user's paths."""
    clips = [user_paths(str(c), sources) for c in result.get("clips") or []]
    write_json(Path(action_folder) / SOURCES_JSON, {"clips": clips, "clips_skipped": skipped})
