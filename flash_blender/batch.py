"""Batch runs: several shots of a .blend animated in one Blender run, usually headless.

Pure Python (no bpy): argument parsing, choosing the shots, where the saved copy goes, the
summary lines and the exit code. ``operators/batch.py`` does the Blender side and
``flash_batch.py`` (beside this file, so it ships in the extension) is the script::

    blender -b shot.blend --python-exit-code 1 -P <extension folder>/flash_batch.py -- --cameras all --mp4 --save

A shot is a camera and a frame: the scene's active camera at the current frame (default),
every camera of the scene, the cameras bound to timeline markers (each at its marker's
frame), or cameras named with ``--camera``. Shots run one after another on one engine, or
shared between one engine per device with ``--devices`` (``shot_queue.py``); one that fails
is reported and the rest still run, and what the good ones made stays (frames on disk, plane
and strip in the scene, the saved copy).
"""

from __future__ import annotations

import argparse
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import PlanError
from .motion import parse_motion

MODES = ("active", "all", "markers", "named")
OUTPUTS = ("plane", "vse", "both")
SAVE_SUFFIX = "_flash"
OUTPUT_FIX = "pass --out DIR with a writable folder, or fix the Output Folder in Preferences > Add-ons > FLASH Previs"
SUMMARY_PREFIX = "FLASH batch:"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# --devices: one engine per device. "auto" is every CUDA GPU the engine's torch sees; the
# host may run several engines ("cpu,cpu"), a GPU holds one. Without --devices: one engine,
# on the preferences' device (NO_DEVICES).
AUTO_DEVICES = "auto"
NO_DEVICES: tuple[str, ...] = ()
SHARED_DEVICES = ("cpu",)
DEVICE_NAME = re.compile(r"cpu|mps|cuda(?::\d+)?")
DEVICES_FIX = "pass auto, or a comma-separated list of cpu, mps, cuda or cuda:N"


class BatchError(PlanError):
    """The batch cannot start (bad arguments, nowhere to save): one line with the fix."""


@dataclass
class BatchOptions:
    scene: str = ""  # empty: the file's active scene
    mode: str = "active"
    cameras: list[str] = field(default_factory=list)  # mode "named"
    markers: list[str] = field(default_factory=list)  # mode "markers": only the markers of these names (empty: all)
    overrides: dict = field(default_factory=dict)  # flash.animate_action properties: action, prompt, seed, ...
    output_root: str = ""  # empty: the preferences' (default //flash/)
    mp4: bool = False
    save: bool = False
    save_path: str = ""  # empty: <name>_flash.blend beside the opened file
    save_over_input: bool = False
    overwrite: bool = False  # --save may replace an existing file
    save_numbered: bool = False  # --save PATH that exists: PATH_2.blend, ... instead of refusing
    out_must_exist: bool = False  # the output root is refused when missing, not created
    record: str = ""  # after every shot is done: a take record (take_records.py) written here
    import_records: list[str] = field(default_factory=list)  # import these records' takes, run nothing
    devices: list[str] = field(default_factory=lambda: list(NO_DEVICES))  # --devices (parse_devices)


# ---------------------------------------------------------------------------------------
# Arguments


def script_argv(argv: list[str]) -> list[str]:
    """The arguments after Blender's ``--`` (Blender's own come before it)."""
    return argv[argv.index("--") + 1:] if "--" in argv else []


def _positive(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="blender -b FILE.blend --python-exit-code 1 -P flash_batch.py --",
        description="Animate one or more shots of a .blend with FLASH Previs. Each shot: its camera's view is "
                    "rendered, animated by the engine, and imported as a plane and/or strip. One summary line per "
                    "shot; the exit code is 1 if any shot failed.")
    shots = p.add_argument_group("shots")
    shots.add_argument("--scene", default="", help="the scene (default: the file's active scene)")
    shots.add_argument("--cameras", choices=MODES[:3], default=None,
                       help="active: the scene's active camera (default); all: every camera in the scene; "
                            "markers: the cameras bound to timeline markers, each at its marker's frame")
    shots.add_argument("--camera", action="append", default=[], metavar="NAME",
                       help="a camera by name (repeat for more); implies named cameras")
    shots.add_argument("--marker", action="append", default=[], metavar="NAME",
                       help="the camera bound to the timeline marker NAME, at its frame (repeat for more); "
                            "implies marker cameras")
    take = p.add_argument_group("take settings (default: the scene's FLASH settings)")
    take.add_argument("--action", help="preset id or name, or a trained action (trained:NAME or its name)")
    take.add_argument("--prompt", help="the action sentence")
    take.add_argument("--seed", type=_positive)
    take.add_argument("--frames", type=int)
    take.add_argument("--steps", type=int)
    take.add_argument("--guidance", type=float)
    take.add_argument("--long-side", type=int, dest="long_side")
    take.add_argument("--output", choices=OUTPUTS, help="what to import: plane, vse (strip) or both")
    take.add_argument("--motion", metavar="action|rig:NAME|clip:PATH",
                      help="what moves the person: the action alone, the armature NAME (read through each shot's "
                           "own camera) or the video PATH (default: the scene's Motion setting)")
    take.add_argument("--depth", action=argparse.BooleanOptionalAction, default=None,
                      help="also steer by each shot's depth from its camera (default: the scene's Depth from Scene)")
    out = p.add_argument_group("output")
    out.add_argument("--out", default="", metavar="DIR",
                     help="the output root for the take folders (absolute, or // relative to the .blend; "
                          "default: the preferences' Output Folder, else //flash/)")
    out.add_argument("--mp4", action="store_true", help="also write flash.mp4 next to each take's frames")
    out.add_argument("--save", nargs="?", const="", default=None, metavar="PATH",
                     help="save the .blend with the imported planes/strips to a new file (default "
                          "NAME_flash.blend beside the opened file, NAME_flash_2.blend and so on when that exists; "
                          "// means beside it). An existing PATH is refused unless --overwrite")
    out.add_argument("--overwrite", action="store_true", help="allow --save PATH to replace an existing file")
    out.add_argument("--save-numbered", action="store_true",
                     help="when --save PATH exists, save PATH_2.blend (and so on) instead of refusing")
    out.add_argument("--save-over-input", action="store_true",
                     help="allow --save to write over the opened .blend itself")
    engines = p.add_argument_group("engines")
    engines.add_argument("--devices", metavar="LIST|auto",
                         help="one engine per device, the shots shared between them: a comma-separated list such "
                              "as cuda:0,cuda:1 (cpu may repeat), or auto for every CUDA GPU (none: one engine on "
                              "the preferences' device, as without --devices)")
    farm = p.add_argument_group("farm (one shot per task; see docs/farm.md)")
    farm.add_argument("--out-must-exist", action="store_true",
                      help="refuse an --out folder that does not exist instead of creating it (a shared folder "
                           "that is not mounted on this machine)")
    farm.add_argument("--record", default="", metavar="FILE",
                      help="when every shot is done, write FILE: a record of the takes made, for --import-takes")
    farm.add_argument("--import-takes", nargs="+", default=[], metavar="RECORD", dest="import_takes",
                      help="import the finished takes the RECORD files name (from their folders on disk) instead "
                           "of animating anything; with --save, the copy holds them all")
    return p


def parse_args(argv: list[str]) -> BatchOptions:
    """``argv``: the script's own arguments (after ``--``). argparse exits 2 on a bad one."""
    args = parser().parse_args(argv)
    if sum(map(bool, (args.camera, args.marker, args.cameras))) > 1:
        parser().error("--camera, --marker and --cameras are exclusive: name cameras or markers, or pick a mode")
    if args.import_takes and (args.camera or args.marker or args.cameras or args.record):
        parser().error("--import-takes animates nothing: drop --camera, --marker, --cameras and --record")
    overrides = {name: getattr(args, name)
                 for name in ("action", "prompt", "seed", "frames", "steps", "guidance", "long_side")
                 if getattr(args, name) is not None}
    if args.output:
        overrides["output"] = args.output.upper()
    if args.motion is not None:
        try:
            overrides.update(parse_motion(args.motion))
        except PlanError as err:
            parser().error(str(err))
    if args.depth is not None:
        overrides["depth"] = args.depth
    if args.out_must_exist and not args.out:
        parser().error("--out-must-exist needs --out DIR")
    devices = list(NO_DEVICES)
    if args.devices is not None:
        if args.import_takes:
            parser().error("--import-takes animates nothing: drop --devices")
        try:
            devices = parse_devices(args.devices)
        except BatchError as err:
            parser().error(str(err))
    mode = "named" if args.camera else "markers" if args.marker else (args.cameras or "active")
    return BatchOptions(scene=args.scene, mode=mode, cameras=list(args.camera), markers=list(args.marker),
                        overrides=overrides, output_root=args.out, mp4=args.mp4,
                        save=args.save is not None or args.save_over_input, save_path=args.save or "",
                        save_over_input=args.save_over_input, overwrite=args.overwrite,
                        save_numbered=args.save_numbered,
                        out_must_exist=args.out_must_exist, record=args.record, import_records=list(args.import_takes),
                        devices=devices)


def parse_devices(text: str) -> list[str]:
    """``--devices``' list: device names (``cuda`` is ``cuda:0``), or ``["auto"]``. BatchError
    for an unknown name, a GPU named twice, or auto beside other names."""
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    if not names:
        raise BatchError("--devices names no device", DEVICES_FIX)
    if AUTO_DEVICES in names:
        if len(names) > 1:
            raise BatchError("--devices auto stands alone", "pass auto, or a list such as cuda:0,cuda:1")
        return [AUTO_DEVICES]
    devices = []
    for name in names:
        if not DEVICE_NAME.fullmatch(name):
            raise BatchError(f"--devices: unknown device '{name}'", DEVICES_FIX)
        device = "cuda:0" if name == "cuda" else name  # torch's "cuda" is its first GPU
        if device in devices and device not in SHARED_DEVICES:
            raise BatchError(f"--devices names {device} twice",
                             f"one engine per GPU: drop the repeat; only {', '.join(SHARED_DEVICES)} may repeat")
        devices.append(device)
    return devices


def needs_cuda_count(devices: list[str]) -> bool:
    """Whether resolving ``devices`` needs to know how many CUDA GPUs the engine sees."""
    return any(device == AUTO_DEVICES or device.startswith("cuda") for device in devices)


@dataclass(frozen=True)
class EngineDevices:
    devices: list[str]  # one engine each, in this order
    note: str = ""  # what the batch says about the choice (empty: nothing to say)


def engine_devices(requested: list[str], shots: int, default: str, cuda_count: int | None = None) -> EngineDevices:
    """The devices a batch of ``shots`` runnable shots starts engines on. ``requested``:
    parse_devices' list (empty: one engine on ``default``, the preferences' device);
    ``cuda_count``: the CUDA GPUs the engine sees (needed when needs_cuda_count). Never more
    engines than shots. BatchError for a CUDA device the engine does not see."""
    if not requested:
        return EngineDevices([default])
    note = ""
    if requested == [AUTO_DEVICES]:
        if not cuda_count:
            return EngineDevices([default], f"--devices auto: no CUDA GPU here, so one engine on the preferences' "
                                            f"device ({default})")
        requested = [f"cuda:{index}" for index in range(cuda_count)]
    for device in requested:
        if device.startswith("cuda"):
            index = int(device.partition(":")[2])
            if not cuda_count:
                raise BatchError(f"--devices names {device} but the engine sees no CUDA GPU",
                                 "pass --devices cpu, or install the CUDA build of torch in the engine's environment")
            if index >= cuda_count:
                raise BatchError(f"--devices names {device} but the engine sees {cuda_count} CUDA GPU"
                                 f"{'s' if cuda_count != 1 else ''}",
                                 ("use cuda:0" if cuda_count == 1 else f"use cuda:0 to cuda:{cuda_count - 1}")
                                 + ", or --devices auto")
    engines = max(1, shots)
    if len(requested) > engines:
        note = f"{len(requested)} devices for {shots} shot{'s' if shots != 1 else ''}: " \
               f"{engines} engine{'s' if engines != 1 else ''}"
    return EngineDevices(requested[:engines], note if shots else "")


def split_names(text: str) -> list[str]:
    """The operator's comma-separated camera names."""
    return [name.strip() for name in text.split(",") if name.strip()]


# ---------------------------------------------------------------------------------------
# Shots


@dataclass(frozen=True)
class Shot:
    scene: str
    camera: str | None  # the camera's name (None: there is none to name)
    # (a shot with an error cannot run: the error says why)
    frame: int | None = None  # None: the file's current frame
    marker: str | None = None
    error: str = ""

    @property
    def label(self) -> str:
        text = f"{self.scene}/{self.camera or '-'}"
        if self.frame is not None:
            text += f" @{self.frame}"
        if self.marker:
            text += f" ({self.marker})"
        return text


def select_shots(mode: str, scene: str, *, active: str | None, cameras: list[str], others: list[str] = (),
                 markers: list[tuple[int, str, str | None]] = (), names: list[str] = (),
                 marker_names: list[str] = ()) -> list[Shot]:
    """The shots to run.

    ``active``: the scene's active camera's name (or None); ``cameras``: the names of the
    scene's camera objects; ``others``: the names of its other objects (to say "not a
    camera"); ``markers``: ``(frame, marker name, bound camera name or None)``;
    ``marker_names``: in mode "markers", only the markers of these names.
    """
    if mode == "active":
        if active is None:
            return [Shot(scene, None, error=f"scene '{scene}' has no active camera (make one active, or pass "
                                            "--cameras all or --camera NAME)")]
        return [Shot(scene, active)]
    if mode == "all":
        if not cameras:
            return [Shot(scene, None, error=f"scene '{scene}' has no cameras")]
        return [Shot(scene, name) for name in sorted(cameras)]
    if mode == "markers":
        bound = sorted((m for m in markers if m[2]), key=lambda m: (m[0], m[1]))
        if marker_names:
            return [shot for name in marker_names for shot in _marker_shots(scene, name, bound, markers)]
        if not bound:
            return [Shot(scene, None, error=f"no timeline marker of scene '{scene}' has a camera bound "
                                            "(Timeline: Marker > Bind Camera to Markers, Ctrl+B)")]
        return [Shot(scene, camera, frame=frame, marker=name) for frame, name, camera in bound]
    if mode == "named":
        if not names:
            return [Shot(scene, None, error="no camera named (pass --camera NAME)")]
        shots = []
        for name in names:
            if name in cameras:
                shots.append(Shot(scene, name))
            elif name in others:
                shots.append(Shot(scene, name, error=f"'{name}' in scene '{scene}' is not a camera"))
            else:
                near = difflib.get_close_matches(name, cameras, n=3, cutoff=0.6)
                hint = f"did you mean {', '.join(near)}?" if near else (
                    f"its cameras: {', '.join(sorted(cameras))}" if cameras else "it has no cameras")
                shots.append(Shot(scene, name, error=f"no camera named '{name}' in scene '{scene}' ({hint})"))
        return shots
    raise BatchError(f"unknown camera choice {mode!r}", f"use one of {', '.join(MODES)}")


def _marker_shots(scene: str, name: str, bound: list, markers: list) -> list[Shot]:
    shots = [Shot(scene, camera, frame=frame, marker=marker) for frame, marker, camera in bound if marker == name]
    if shots:
        return shots
    if any(m[1] == name for m in markers):
        return [Shot(scene, None, marker=name, error=f"timeline marker '{name}' of scene '{scene}' has no camera "
                                                     "bound (Timeline: Marker > Bind Camera to Markers, Ctrl+B)")]
    names = sorted({m[1] for m in markers})  # several markers may share a name
    near = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(near)}?" if near else (
        f"its markers: {', '.join(names)}" if names else "it has no markers")
    return [Shot(scene, None, marker=name, error=f"no timeline marker named '{name}' in scene '{scene}' ({hint})")]


def check_out_exists(folder: Path) -> None:
    """``--out-must-exist``: the output root is there (BatchError with the fix). On a farm a
    missing shared folder means it is not mounted: creating it would hide the takes on one
    machine's local disk."""
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist on this machine"
        raise BatchError(f"the output root {folder} {what}",
                         "mount the shared folder here (or create it), or pass another --out")


# ---------------------------------------------------------------------------------------
# Saving and reporting


def save_target(blend_path: str, requested: str, over_input: bool, overwrite: bool = False,
                numbered: bool = False) -> Path:
    """Where the copy with the results goes. Never the opened file unless ``over_input``, never
    another existing file unless ``overwrite``: the default name is numbered past existing
    ones (NAME_flash_2.blend, ...), a named one that exists is refused — or numbered too
    with ``numbered`` (a farm task run again)."""
    blend = Path(blend_path).resolve() if blend_path else None
    requested = (requested or "").strip()
    if requested.startswith("//"):
        if blend is None:
            raise BatchError("--save //… needs a saved .blend", "pass an absolute --save path")
        target = blend.parent / requested[2:]
    elif requested:
        target = Path(requested).expanduser()
    elif over_input:
        if blend is None:
            raise BatchError("--save-over-input with an unsaved file", "open a .blend, or pass --save PATH")
        target = blend
    else:
        if blend is None:
            raise BatchError("the file is not saved, so --save has no name to derive", "pass --save PATH")
        target = blend.with_name(blend.stem + SAVE_SUFFIX + ".blend")
    if target.suffix.lower() != ".blend":
        target = target.with_name(target.name + ".blend")
    target = target.resolve()
    if blend is not None and target == blend and not over_input:
        raise BatchError(f"--save {target} is the opened file", "save elsewhere, or pass --save-over-input")
    if target.exists() and not overwrite and target != blend:
        if requested and not numbered:
            raise BatchError(f"--save {target} exists",
                             "pass --overwrite to replace it, --save-numbered to number the name, or save elsewhere")
        stem, number = target.stem, 2
        while target.exists():
            target = target.with_name(f"{stem}_{number}.blend")
            number += 1
    return target


@dataclass
class ShotResult:
    shot: Shot
    ok: bool
    take: str = ""
    folder: str = ""  # as stored in the .blend (//… inside the project)
    frames: int = 0
    mp4: str | None = None
    reason: str = ""  # why it failed (one line with the fix)
    base_model_only: bool = False


def summary_line(result: ShotResult) -> str:
    if not result.ok:
        return f"{SUMMARY_PREFIX} FAILED {result.shot.label}: {result.reason}"
    text = f"{SUMMARY_PREFIX} ok {result.shot.label}: {result.take}, {result.frames} frames in {result.folder}"
    if result.base_model_only:
        text += " (base model only)"
    if result.mp4:
        text += f", {Path(result.mp4).name}"
    return text


def final_lines(results: list[ShotResult], saved: str | None = None, save_error: str = "") -> list[str]:
    failed = [r for r in results if not r.ok]
    lines = [f"{SUMMARY_PREFIX} {len(results)} shot{'s' if len(results) != 1 else ''}: "
             f"{len(results) - len(failed)} ok, {len(failed)} failed"]
    if saved:
        lines.append(f"{SUMMARY_PREFIX} saved {saved}")
    if save_error:
        lines.append(f"{SUMMARY_PREFIX} NOT saved: {save_error}")
    return lines


def exit_code(results: list[ShotResult], save_error: str = "") -> int:
    if not results or save_error or any(not r.ok for r in results):
        return EXIT_FAILED
    return EXIT_OK
