"""Take records: what a batch run that finished its shots leaves for a later run to import
them, without re-running anything (a farm's shot tasks, then its "save the copy" task).

Pure Python (no bpy). A record is a small JSON file naming the takes one run made — the
fields of each :class:`~flash_blender.takes.Take` — written whole through a temporary file,
so a reader never sees half of one. It names takes; it holds no frames: the importing run
reads those from each take's folder on disk, and refuses a folder that is not a finished
take (no engine manifest, no frames).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

from .bundled import engine_module
from .errors import PlanError
from .take_planning import TakePlan
from .takes import Take, TakeResult
from .timing import clip_fps

RECORD_VERSION = 1
_LAYOUT = engine_module("layout")
_FRAME = re.compile(r"^frame_\d{4,}\.png$")  # layout.frame_name's files
_PATHS = ("root", "folder", "reference")


def take_to_dict(take: Take) -> dict:
    data = dataclasses.asdict(take)
    data["plan"] = {**data["plan"], **{key: str(getattr(take.plan, key)) for key in _PATHS}}
    data["reference_size"] = list(take.reference_size)
    data["motion_files"] = [str(path) for path in take.motion_files]
    return data


def take_from_dict(data: dict) -> Take:
    plan = dict(data["plan"])
    plan.update({key: Path(plan[key]) for key in _PATHS})
    fields = {**data, "plan": TakePlan(**plan), "reference_size": tuple(data["reference_size"]),
              "motion_files": tuple(Path(path) for path in data.get("motion_files") or ())}
    return Take(**fields)


def write_record(path: str | Path, takes: list[Take]) -> Path:
    """``path`` replaced whole by a record of ``takes`` (its folder created)."""
    path = Path(path)
    if path.exists():  # replace only a record this add-on wrote (a re-queued shot's), never a user file
        try:
            ours = json.loads(path.read_text(encoding="utf-8")).get("version") == RECORD_VERSION
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise PlanError(f"--record {path} exists and is not a FLASH take record; it was left as it is",
                            "pass a new --record path")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        staging.write_text(json.dumps({"version": RECORD_VERSION, "takes": [take_to_dict(t) for t in takes]},
                                      indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
    return path


def read_record(path: str | Path) -> list[Take]:
    """The takes a record names; PlanError (one line) when there is none or it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlanError(f"no take record {path}", "its shot has not finished: re-queue that shot's task") from None
    except (OSError, ValueError) as err:
        raise PlanError(f"cannot read the take record {path}: {err}", "re-queue that shot's task") from None
    try:
        if data.get("version") != RECORD_VERSION:
            raise ValueError(f"version {data.get('version')!r}")
        return [take_from_dict(item) for item in data["takes"]]
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise PlanError(f"{path} is not a FLASH take record ({err})", "re-queue that shot's task") from None


def take_on_disk(take: Take) -> TakeResult:
    """The finished take in its folder, as the importer needs it; PlanError when the folder
    is gone or is not a finished take."""
    folder = take.folder
    manifest = folder / _LAYOUT.TAKE_MANIFEST
    try:
        metadata = json.loads(manifest.read_text(encoding="utf-8"))
        names = os.listdir(folder)
    except FileNotFoundError:
        raise PlanError(f"take {take.name} is not finished on disk: no {manifest}",
                        "re-queue its shot's task (the shared folder must be mounted at the same path)") from None
    except (OSError, ValueError) as err:
        raise PlanError(f"cannot read take {take.name} in {folder}: {err}", "check the shared folder") from None
    frames = tuple(folder / name for name in sorted(names) if _FRAME.match(name))
    if not frames:
        raise PlanError(f"take {take.name} has no frames in {folder}", "re-queue its shot's task")
    mp4 = folder / _LAYOUT.TAKE_MP4
    return TakeResult(folder=folder, frames=frames, fps=clip_fps(metadata if isinstance(metadata, dict) else None),
                      mp4=str(mp4) if mp4.is_file() else None)
