"""Write mannequin clips to a cache folder (idempotent, atomic per clip).

    python -m mannequin.generate --out DIR --actions jump squat --clips-per-action 100 \\
        --split train --seed 0 [--size 64 --frames 16 --format png|mp4 --workers 1] [--keypoints] [--depth]

Layout (``DIR`` defaults to ``$FLASH_MANNEQUIN_CACHE`` or ``~/.cache/flash-previs/mannequin``)::

    DIR/<split>/<action>/<action>_00000/frame_0001.png …   (--format png, the default)
    DIR/<split>/<action>/<action>_00000.mp4                  (--format mp4)
    DIR/<split>/<action>/.<action>_00000.json                the clip's spec, prompt, generator version
    DIR/<split>/<action>/.<action>_00000.pose.json           --keypoints: its OpenPose skeleton per frame
    DIR/<split>/<action>/.<action>_00000.depth/depth_0001.png …   --depth: 16-bit depth, near = bright
    DIR/<split>/specs.jsonl                                  one line per clip: path, action, prompt, spec
    DIR/<split>/prompts.json                                 action -> prompt

Every ``DIR/<split>/<action>`` folder holds only clips (the JSON sidecars are hidden), so it can
be passed as is to ``flash_engine train --clips`` / ``scan_clips`` with the action's prompt.

Clip ``i`` of an action has the spec ``sample_spec(action, clip_seed(seed, action, split, i),
split, ...)``: the same command always writes the same pixels. A clip whose folder/file and
sidecar exist with the same spec and generator version is skipped; anything else is rendered
under a temporary hidden name and renamed into place, so an interrupted run never leaves a
clip that looks complete.

``--keypoints`` and ``--depth`` add the ground truth beside each clip, also hidden, for clips
already there too: keypoints are computed from the spec (no render), depth is one more render
of the Z pass; the clip itself and its completeness are untouched. A clip that is rendered again
loses the old ones first.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from mannequin.actions import ACTIONS, PROMPTS
from mannequin.spec import SPLITS, ClipSpec, clip_seed, sample_spec

GENERATOR_VERSION = 1
FORMATS = ("png", "mp4")
FPS = 8
TMP_PREFIX = ".tmp-"
POSE_SUFFIX = ".pose.json"
DEPTH_SUFFIX = ".depth"
DEPTH_RECORD = "depth.json"   # in a depth folder: the clip's record and the depth range; written last


def default_cache_dir() -> Path:
    env = os.environ.get("FLASH_MANNEQUIN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "flash-previs" / "mannequin"


def clip_name(action: str, index: int) -> str:
    return f"{action}_{index:05d}"


def clip_path(split_dir: Path, action: str, index: int, fmt: str) -> Path:
    name = clip_name(action, index)
    return split_dir / action / (f"{name}.mp4" if fmt == "mp4" else name)


def sidecar_path(clip: Path) -> Path:
    return clip.parent / f".{clip.stem}.json"


def keypoints_path(clip: Path) -> Path:
    """The clip's ground-truth OpenPose keypoints (``--keypoints``): a ``.pose.json`` beside it."""
    return clip.parent / f".{clip.stem}{POSE_SUFFIX}"


def depth_path(clip: Path) -> Path:
    """The clip's depth folder (``--depth``): ``depth_0001.png`` … and ``depth.json``, beside it."""
    return clip.parent / f".{clip.stem}{DEPTH_SUFFIX}"


def clip_spec(action: str, index: int, split: str, seed: int, size: int, frames: int) -> ClipSpec:
    return sample_spec(action, clip_seed(seed, action, split, index), split, num_frames=frames, size=size)


def _record(spec: ClipSpec, fmt: str) -> dict:
    return {"generator_version": GENERATOR_VERSION, "format": fmt, "prompt": PROMPTS[spec.action],
            "spec": spec.to_dict()}


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_complete(clip: Path, spec: ClipSpec, fmt: str) -> bool:
    record = _read_json(sidecar_path(clip))
    if record is None or not clip.exists():
        return False
    return record == json.loads(json.dumps(_record(spec, fmt)))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_frames(frames: np.ndarray, target: Path, fmt: str) -> None:
    """Write a clip atomically: to a hidden temporary name beside ``target``, then rename."""
    from PIL import Image

    tmp = target.parent / f"{TMP_PREFIX}{os.getpid()}-{target.name}"   # keeps the .mp4 suffix for ffmpeg
    _remove(tmp)
    if fmt == "png":
        tmp.mkdir(parents=True)
        for index, frame in enumerate(frames):
            Image.fromarray(frame).save(tmp / f"frame_{index + 1:04d}.png", compress_level=6)
    else:
        import imageio.v2 as imageio

        with imageio.get_writer(tmp, format="FFMPEG", fps=FPS, codec="libx264", quality=10,
                                macro_block_size=1, ffmpeg_log_level="error") as writer:
            for frame in frames:
                writer.append_data(frame)
    _remove(target)
    os.replace(tmp, target)


def pose_sequence(spec: ClipSpec):
    """The ground-truth poses of a clip (:func:`mannequin.camera.openpose_keypoints`) as a
    :class:`flash_engine.pose.format.PoseSequence` at the cache's frame rate."""
    from flash_engine.pose.format import COORDINATE_RANGE, PoseSequence

    from mannequin.camera import openpose_keypoints

    body = openpose_keypoints(spec)
    # Points far out of frame (confidence 0) are pulled to the edge of what the format allows.
    body[..., :2] = np.clip(body[..., :2], *COORDINATE_RANGE)
    return PoseSequence(body=body, width=spec.size, height=spec.size, fps=float(FPS))


def write_keypoints(spec: ClipSpec, clip: Path) -> bool:
    """Write the clip's ``.pose.json`` unless an identical one is there; True if it wrote one."""
    from flash_engine.pose.format import pose_file_text, write_pose_file

    path = keypoints_path(clip)
    sequence = pose_sequence(spec)
    try:
        if path.read_text(encoding="utf-8") == pose_file_text(sequence):
            return False
    except (OSError, UnicodeDecodeError):
        pass
    _remove(path)   # a stale one (another spec or generator): ours to replace
    write_pose_file(sequence, path)
    return True


def depth_is_complete(clip: Path, spec: ClipSpec, fmt: str) -> bool:
    folder = depth_path(clip)
    record = _read_json(folder / DEPTH_RECORD)
    if not isinstance(record, dict) or record.get("clip") != json.loads(json.dumps(_record(spec, fmt))):
        return False
    return len(list(folder.glob("depth_*.png"))) == spec.num_frames


def write_depth(spec: ClipSpec, clip: Path, fmt: str) -> None:
    """Render and write the clip's depth folder atomically (a hidden temporary, then renamed)."""
    from mannequin.depth import write_depth_pngs
    from mannequin.render import render_depth

    depth = render_depth(spec)
    target = depth_path(clip)
    tmp = target.parent / f"{TMP_PREFIX}{os.getpid()}-{target.name}"
    _remove(tmp)
    write_depth_pngs(depth.images, tmp)
    _write_json(tmp / DEPTH_RECORD, {"clip": _record(spec, fmt), "near_m": depth.near, "far_m": depth.far,
                                     "convention": "inverse depth normalised over the clip: 65535 at near_m, "
                                                   "0 at far_m and for the background (mannequin/depth.py)"})
    _remove(target)
    os.replace(tmp, target)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: Path) -> int:
    """Delete half-written clips left by runs that died (their process is gone)."""
    removed = 0
    for path in folder.glob(f"{TMP_PREFIX}*"):
        pid = path.name[len(TMP_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            _remove(path)
            removed += 1
    return removed


def _write_json(path: Path, data) -> None:
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(data, sort_keys=True) + "\n")
    os.replace(tmp, path)


def render_and_write(task: tuple) -> float:
    """Render one clip and write it with its sidecar, and its keypoints and depth when asked;
    returns the seconds it took. ``task``: (spec dict, clip path, format[, render the clip
    (False: it is there), keypoints, depth])."""
    from mannequin.render import render_clip

    spec_dict, target, fmt, *extras = task
    frames_wanted, keypoints, depth = extras if extras else (True, False, False)
    spec = ClipSpec.from_dict(spec_dict)
    target = Path(target)
    start = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    if frames_wanted:
        frames = render_clip(spec)
        sidecar = sidecar_path(target)
        for old in (sidecar, keypoints_path(target), depth_path(target)):
            _remove(old)   # the clip is replaced: nothing may vouch for the old one
        write_frames(frames, target, fmt)
        _write_json(sidecar, _record(spec, fmt))
    if keypoints:
        write_keypoints(spec, target)
    if depth and not depth_is_complete(target, spec, fmt):
        write_depth(spec, target, fmt)
    return time.perf_counter() - start


def write_index(split_dir: Path) -> int:
    """Rebuild ``specs.jsonl`` and ``prompts.json`` of a split from the clips' sidecars."""
    lines, prompts = [], {}
    for action_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for sidecar in sorted(action_dir.glob(".*.json")):
            if sidecar.name.endswith(POSE_SUFFIX):
                continue
            record = _read_json(sidecar)
            if not record or "spec" not in record:
                continue
            name = sidecar.name[1:-len(".json")]
            clip = action_dir / (f"{name}.mp4" if record.get("format") == "mp4" else name)
            if not clip.exists():
                continue
            spec = record["spec"]
            prompts[spec["action"]] = record["prompt"]
            lines.append(json.dumps({"path": str(clip.relative_to(split_dir)), "action": spec["action"],
                                     "prompt": record["prompt"], "format": record.get("format"),
                                     "generator_version": record.get("generator_version"), "spec": spec},
                                    sort_keys=True))
    tmp = split_dir / f".specs.jsonl.tmp-{os.getpid()}"
    tmp.write_text("".join(line + "\n" for line in lines))
    os.replace(tmp, split_dir / "specs.jsonl")
    _write_json(split_dir / "prompts.json", dict(sorted(prompts.items())))
    return len(lines)


def generate(out: Path | str | None = None, actions=None, clips_per_action: int = 16, split: str = "train",
             seed: int = 0, size: int = 64, frames: int = 16, fmt: str = "png", workers: int = 1,
             log=None, keypoints: bool = False, depth: bool = False) -> dict:
    """Make sure ``clips_per_action`` clips of each action exist under ``out/split`` (with their
    keypoints and depth when asked); returns a summary."""
    out = Path(out).expanduser() if out is not None else default_cache_dir()
    actions = list(actions or ACTIONS)
    unknown = [a for a in actions if a not in ACTIONS]
    if unknown:
        raise ValueError(f"unknown action(s) {', '.join(unknown)}; known: {', '.join(ACTIONS)}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}")
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}")
    if fmt == "mp4" and size % 2:
        raise ValueError("mp4 clips need an even --size")
    log = log or (lambda message: None)
    split_dir = out / split
    split_dir.mkdir(parents=True, exist_ok=True)

    todo, skipped, rendered, keypoints_only = [], 0, 0, []
    for action in actions:
        if (split_dir / action).is_dir():
            remove_stale_temporaries(split_dir / action)
        for index in range(clips_per_action):
            spec = clip_spec(action, index, split, seed, size, frames)
            target = clip_path(split_dir, action, index, fmt)
            task = (spec.to_dict(), str(target), fmt)
            if not is_complete(target, spec, fmt):
                todo.append((*task, True, keypoints, depth))
                rendered += 1
                continue
            skipped += 1
            if depth and not depth_is_complete(target, spec, fmt):
                todo.append((*task, False, keypoints, depth))
            elif keypoints:
                keypoints_only.append((spec, target))   # no Blender needed
    log(f"{split}: {rendered} clips to render, {skipped} already there ({out})"
        + (f"; {len(todo) - rendered} need only depth" if depth else ""))

    start = time.perf_counter()
    seconds = []
    if todo and workers > 1:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            for done, took in enumerate(pool.map(render_and_write, todo, chunksize=8), 1):
                seconds.append(took)
                if done % 100 == 0 or done == len(todo):
                    log(f"  {done}/{len(todo)} clips, {(time.perf_counter() - start) / done:.3f} s/clip")
    else:
        for done, task in enumerate(todo, 1):
            seconds.append(render_and_write(task))
            if done % 100 == 0 or done == len(todo):
                log(f"  {done}/{len(todo)} clips, {(time.perf_counter() - start) / done:.3f} s/clip")
    keypoints_written = sum(write_keypoints(spec, target) for spec, target in keypoints_only)
    wall = time.perf_counter() - start
    indexed = write_index(split_dir)
    summary = {"out": str(split_dir), "rendered": rendered, "skipped": skipped, "indexed": indexed,
               "wall_s": round(wall, 3),
               "s_per_clip": round(wall / len(todo), 4) if todo else None,
               "render_write_s_per_clip": round(float(np.mean(seconds)), 4) if seconds else None}
    if depth:
        summary["depth_only"] = len(todo) - rendered
    if keypoints:
        summary["keypoints_added"] = keypoints_written   # beside clips that were already there
    log(json.dumps(summary))
    return summary


def preview(path: Path | str, actions=None, split: str = "train", seed: int = 0, size: int = 64,
            frames: int = 16, every: int = 2, index: int = 0, zoom: int = 2) -> Path:
    """A contact sheet: one row per action (clip ``index`` of the split), every ``every``-th frame."""
    from PIL import Image

    from mannequin.render import render_clip

    rows = [np.concatenate(list(render_clip(clip_spec(action, index, split, seed, size, frames))[::every]), axis=1)
            for action in (actions or ACTIONS)]
    sheet = Image.fromarray(np.concatenate(rows, axis=0))
    if zoom > 1:
        sheet = sheet.resize((sheet.width * zoom, sheet.height * zoom), Image.Resampling.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mannequin.generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="cache folder (default: $FLASH_MANNEQUIN_CACHE or ~/.cache/flash-previs/mannequin)")
    parser.add_argument("--actions", nargs="+", default=None, metavar="ACTION",
                        help=f"actions to render (default: all of {', '.join(ACTIONS)})")
    parser.add_argument("--clips-per-action", type=int, default=16)
    parser.add_argument("--split", choices=SPLITS, default="train")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--format", choices=FORMATS, default="png", dest="fmt")
    parser.add_argument("--workers", type=int, default=1, help="render processes (each loads Blender)")
    parser.add_argument("--keypoints", action="store_true",
                        help="also write each clip's ground-truth OpenPose keypoints (.NAME.pose.json, from the spec)")
    parser.add_argument("--depth", action="store_true",
                        help="also render each clip's depth (.NAME.depth/, 16-bit PNGs, near = bright)")
    parser.add_argument("--list-actions", action="store_true", help="print the actions and their prompts")
    parser.add_argument("--preview", type=Path, default=None, metavar="PNG",
                        help="only write a contact sheet (one row per action, every 2nd frame) to PNG")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.list_actions:
        for action, prompt in PROMPTS.items():
            print(f"{action}\t{prompt}")
        return 0
    log = (lambda message: None) if args.quiet else (lambda message: print(message, file=sys.stderr, flush=True))
    if args.preview is not None:
        unknown = [a for a in (args.actions or []) if a not in ACTIONS]
        if unknown:
            parser.error(f"unknown action(s) {', '.join(unknown)}")
        log(f"wrote {preview(args.preview, args.actions, args.split, args.seed, args.size, args.frames)}")
        return 0
    try:
        generate(args.out, args.actions, args.clips_per_action, args.split, args.seed, args.size, args.frames,
                 args.fmt, args.workers, log, keypoints=args.keypoints, depth=args.depth)
    except ValueError as err:
        parser.error(str(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
