"""Where base weights live, whether they are complete, and fetching them for online users.

Standard library only at import time (the add-on reads ``download_state`` with Blender's
Python); the download itself imports huggingface_hub and runs in the engine's environment::

    python -m flash_engine.weights fetch [--dest DIR] [--control] [--json]

(``--control``: the public SD 1.5 pose and depth ControlNets instead, into DEST/controlnets/.)

A download resumes: each file is fetched into ``DEST/.flash-download/<path>.part`` with HTTP
Range requests from where the last try stopped (a dropped connection is retried at once; a
cancelled or failed run is continued by the next one), checked against the hub's size and
hash, and only then moved to its place. ``DEST/flash-weights.json`` is written last, after
every file is in place: a folder without it is never taken for a complete download.
"""

from __future__ import annotations

import argparse
import errno
import fnmatch
import hashlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from flash_engine.errors import FlashError
from flash_engine.tensorfiles import safetensors_problem

SD15_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
MOTION_ADAPTER_REPO = "guoyww/animatediff-motion-adapter-v1-5-2"
SD15_FILES = [
    "model_index.json",
    "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/config.json", "text_encoder/model.safetensors",
    "tokenizer/*", "scheduler/*",
]
ADAPTER_FILES = ["config.json", "diffusion_pytorch_model.safetensors"]
REVISION = "main"
# What a download fetches: (repo, sub-folder of the destination, file patterns).
BASE_WEIGHTS = ((SD15_REPO, "", SD15_FILES), (MOTION_ADAPTER_REPO, "motion_adapter", ADAPTER_FILES))
# The public SD 1.5 ControlNets (``weights fetch --control``), each its own download in
# WEIGHTS/controlnets/<name>/: the default pose and depth control of any SD 1.5 model.
PUBLIC_CONTROLNETS = {"pose": "lllyasviel/control_v11p_sd15_openpose", "depth": "lllyasviel/control_v11f1p_sd15_depth"}
CONTROLNET_FILES = ["config.json", "diffusion_pytorch_model.safetensors"]
CONTROLNETS_DIR = "controlnets"
CONTROL_HELP = ("fetch the public SD 1.5 ControlNets (pose: openpose, depth) instead, into DEST/controlnets/: "
                "the default motion control of SD 1.5 models")
COMPLETE_STAMP = "flash-weights.json"  # written last: the files it lists are whole
PARTIAL_DIR = ".flash-download"  # plan.json and the .part files of an unfinished download
PLAN_FILE = "plan.json"
RETRIES = 5  # tries in a row without a byte received before a download gives up
LOCAL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)  # the disk's, not the network's
READ_TIMEOUT_S = 60.0
FETCH_HINT = "check the network connection and press Download again: it resumes (or copy a diffusers-layout folder)"


def builtin_model() -> str:
    """The built-in default: ``mannequin`` when its shipped folder is complete, else ``tiny``."""
    from flash_engine.models.loading import mannequin_available

    return "mannequin" if mannequin_available() else "tiny"


def default_weights_dir() -> Path:
    """$FLASH_WEIGHTS_DIR, else the per-user data folder."""
    if os.environ.get("FLASH_WEIGHTS_DIR"):
        return Path(os.environ["FLASH_WEIGHTS_DIR"]).expanduser()
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        base = Path(os.environ["LOCALAPPDATA"])
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or "~/.local/share").expanduser()
    return base / "flash-previs" / "weights"


def public_controlnet_dir(control: str, weights_dir: Path | None = None) -> Path:
    """Where ``weights fetch --control`` puts the public ControlNet for ``control`` ("pose",
    "depth"); it counts once ``download_state`` says complete."""
    return (weights_dir or default_weights_dir()).expanduser() / CONTROLNETS_DIR / \
        PUBLIC_CONTROLNETS[control].split("/")[-1]


def weights_status(folder: Path | None = None) -> dict:
    from flash_engine.models.loading import find_problems

    folder = folder or default_weights_dir()
    if not folder.is_dir():
        return {"folder": str(folder), "found": False, "problems": ["folder does not exist"]}
    problems = find_problems(folder, folder / "motion_adapter")
    if download_state(folder)["state"] == "partial":  # whole files so far, but not all of them
        problems.append("its download is unfinished (run `python -m flash_engine weights fetch` again: it resumes)")
    return {"folder": str(folder), "found": not problems, "problems": problems}


def resolve_model_source(model: str) -> str:
    """``default`` → $FLASH_MODEL, else fetched weights if complete, else ``builtin_model()``."""
    if model != "default":
        return model
    if os.environ.get("FLASH_MODEL"):
        return os.environ["FLASH_MODEL"]
    status = weights_status()
    return status["folder"] if status["found"] else builtin_model()


# ---------------------------------------------------------------------------------------
# Downloading (resumable)


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: dict) -> None:
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(partial, path)  # whole or absent


def part_path(partial: Path, path: str, file_id: str) -> Path:
    """Where a file's bytes gather while it downloads: named by its id too, so bytes of an
    older revision of the same path are never resumed into the new one."""
    return partial / f"{path}.{(file_id or 'unknown')[:16]}.part"


def _in_place(dest: Path, entry: dict) -> bool:
    target = dest / entry["path"]
    return target.is_file() and target.stat().st_size == entry["size"]


def download_state(dest: str | os.PathLike) -> dict:
    """What a download into ``dest`` got to, from the files alone (no network, no imports):
    ``state`` is ``complete`` (the stamp and every file it lists), ``partial`` (a download
    started and not finished: press Download to resume) or ``none``; ``done`` and ``total``
    in bytes (``total`` None until a download has asked the hub)."""
    dest = Path(dest)
    stamp = _read_json(dest / COMPLETE_STAMP)
    plan = _read_json(dest / PARTIAL_DIR / PLAN_FILE)
    record = plan or stamp
    if record is None:
        return {"state": "none", "done": 0, "total": None, "folder": str(dest)}
    try:
        files = list(record.get("files", []))
        done = 0
        for entry in files:
            if _in_place(dest, entry) and (plan is None or plan.get("verified", {}).get(entry["path"]) == entry["id"]):
                done += entry["size"]
            else:
                part = part_path(dest / PARTIAL_DIR, entry["path"], entry.get("id", ""))
                done += min(part.stat().st_size, entry["size"]) if part.is_file() else 0
        complete = plan is None and all(_in_place(dest, entry) for entry in files)
    except (KeyError, TypeError, AttributeError, OSError):  # a damaged record: a download to finish
        return {"state": "partial", "done": 0, "total": None, "folder": str(dest)}
    return {"state": "complete" if complete else "partial", "done": done, "total": record.get("total"),
            "folder": str(dest)}


@dataclass(frozen=True)
class RemoteFile:
    repo: str
    commit: str
    name: str  # in the repo
    path: str  # in the destination
    size: int
    id: str  # the hub's hash of it: LFS sha256, else the git blob id
    sha256: str | None
    blob_id: str | None


def plan_download(packs=BASE_WEIGHTS) -> list[RemoteFile]:
    """The files to fetch, their sizes and hashes, pinned to each repo's current commit."""
    from huggingface_hub import HfApi

    api, files = HfApi(), []
    for repo, folder, patterns in packs:
        info = api.model_info(repo, revision=REVISION, files_metadata=True)
        for sibling in info.siblings or []:
            if not any(fnmatch.fnmatch(sibling.rfilename, pattern) for pattern in patterns):
                continue
            parts = PurePosixPath(sibling.rfilename).parts
            if sibling.rfilename.startswith("/") or ".." in parts or "\\" in sibling.rfilename:
                raise FlashError(f"the hub named a file outside the weights folder: {repo}/{sibling.rfilename}",
                                 "check HF_ENDPOINT: it does not look like the model hub", code="download_failed")
            sha256 = sibling.lfs.sha256 if sibling.lfs else None
            size = sibling.lfs.size if sibling.lfs else sibling.size
            if size is None:
                raise FlashError(f"the hub did not say how big {repo}/{sibling.rfilename} is", FETCH_HINT,
                                 code="download_failed")
            files.append(RemoteFile(repo, info.sha, sibling.rfilename,
                                    f"{folder}/{sibling.rfilename}" if folder else sibling.rfilename, int(size),
                                    sha256 or sibling.blob_id or "", sha256, sibling.blob_id))
    return files


def _file_hash_ok(path: Path, remote: RemoteFile) -> bool:
    if remote.sha256:
        digest = hashlib.sha256()
    elif remote.blob_id:  # git's blob id: sha1 of "blob <size>\0" + content
        digest = hashlib.sha1(f"blob {remote.size}\0".encode())
    else:
        return True
    with open(path, "rb") as source:
        for block in iter(lambda: source.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest() == (remote.sha256 or remote.blob_id)


def _fetch_file(remote: RemoteFile, part: Path, on_bytes) -> None:
    """Bring ``part`` to the whole file: Range requests from its current size; a dropped
    connection is retried at once from where it stopped."""
    import httpx2  # huggingface_hub's HTTP client
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    metadata = get_hf_file_metadata(hf_hub_url(remote.repo, remote.name, revision=remote.commit))  # HEAD
    if metadata.size is not None and metadata.size != remote.size:
        raise FlashError(f"{remote.repo}/{remote.name} changed on the hub while downloading", FETCH_HINT,
                         code="download_failed")
    headers = build_hf_headers()
    headers["Accept-Encoding"] = "identity"  # byte offsets must be the file's
    part.parent.mkdir(parents=True, exist_ok=True)
    tries, restarts, best = 0, 0, -1
    while True:
        have = part.stat().st_size if part.is_file() else 0
        if have <= best:  # this try got nowhere (a server that ignores Range and sends a short body)
            restarts += 1
            if restarts > RETRIES:
                raise FlashError(f"{remote.repo}/{remote.name} does not get any further ({have} of {remote.size} "
                                 "bytes)", FETCH_HINT, code="download_failed")
        best = max(best, have)
        if have > remote.size:  # not this file: start over
            part.unlink()
            have = 0
        if have == remote.size:
            return
        request = dict(headers, Range=f"bytes={have}-") if have else headers
        try:
            with get_session().stream("GET", metadata.location, headers=request,
                                      timeout=httpx2.Timeout(READ_TIMEOUT_S, connect=30.0)) as response:
                hf_raise_for_status(response)
                resumed = response.status_code == 206 and \
                    response.headers.get("Content-Range", "").startswith(f"bytes {have}-")
                if have and not resumed:  # a server that ignores Range sends it all: start over
                    on_bytes(-have)
                with open(part, "ab" if resumed else "wb", buffering=0) as out:  # on disk as it comes: a kill keeps it
                    written = have if resumed else 0
                    for chunk in response.iter_bytes():
                        if written + len(chunk) > remote.size:  # more than the file: not this file
                            raise FlashError(f"the hub sent more of {remote.repo}/{remote.name} than its "
                                             f"{remote.size} bytes", FETCH_HINT, code="download_failed")
                        out.write(chunk)
                        written += len(chunk)
                        tries = 0  # bytes came: the next drop gets fresh tries
                        on_bytes(len(chunk))
        except OSError as err:
            if err.errno in LOCAL_ERRNOS:  # the disk, not the network: retrying will not help
                raise
            tries += 1
            if tries > RETRIES:
                raise FlashError(f"could not download {remote.repo}/{remote.name}: {err}", FETCH_HINT,
                                 code="download_failed") from err
            time.sleep(min(0.2 * 2 ** tries, 5.0))
        except httpx2.TransportError as err:
            tries += 1
            if tries > RETRIES:
                raise FlashError(f"could not download {remote.repo}/{remote.name}: {err}", FETCH_HINT,
                                 code="download_failed") from err
            time.sleep(min(0.2 * 2 ** tries, 5.0))


def fetch(dest: Path | None = None, packs=BASE_WEIGHTS, progress=None, problems=None) -> Path:
    """Download SD 1.5 + the AnimateDiff v1-5-2 motion adapter (safetensors only) into
    ``dest``, resuming whatever an earlier run left. ``progress(done, total, path)`` is
    called as bytes arrive (bytes in the destination, of all files). Disk failures are
    one line too. ``packs``/``problems``: another download and what it must hold when done."""
    from flash_engine.output import os_error

    dest = (dest or default_weights_dir()).expanduser()
    try:
        return _fetch(dest, packs, progress, problems or weights_status_files)
    except OSError as err:
        raise os_error(err, dest) from err


def controlnet_problems(folder: Path) -> list[str]:
    """What keeps ``folder`` from loading as a ControlNet, as short phrases (empty when none)."""
    if not folder.is_dir():
        return ["not a folder"]
    problems = []
    if not (folder / "config.json").is_file():
        problems.append("no config.json")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        pickled = any(folder.glob(pattern) for pattern in ("*.bin", "*.ckpt", "*.pt", "*.pth"))
        problems.append("only pickle weights (convert them to .safetensors)" if pickled else "no .safetensors weights")
    for path in weights:
        problem = safetensors_problem(path)
        if problem:
            problems.append(f"{path.name}: {problem}")
    return problems


def fetch_controlnets(weights_dir: Path | None = None, progress=None, controls=tuple(PUBLIC_CONTROLNETS)) -> list[Path]:
    """Download the public SD 1.5 ControlNets (``PUBLIC_CONTROLNETS``, safetensors only) into
    WEIGHTS/controlnets/<name>/, each its own resumable download; ``progress(done, total, path)``
    per download, ``path`` relative to ``weights_dir``."""

    weights_dir = (weights_dir or default_weights_dir()).expanduser()
    folders = []
    for control in controls:
        folder = public_controlnet_dir(control, weights_dir)
        prefix = folder.relative_to(weights_dir).as_posix()
        report = (lambda done, total, path, _prefix=prefix: progress(done, total, f"{_prefix}/{path}")) \
            if progress else None
        folders.append(fetch(folder, controlnet_packs(control), report, problems=controlnet_problems))
    return folders


def controlnet_packs(control: str) -> tuple:
    return ((PUBLIC_CONTROLNETS[control], "", CONTROLNET_FILES),)


def _fetch(dest: Path, packs, progress, problems) -> Path:
    try:
        dest.mkdir(parents=True, exist_ok=True)
        files = plan_download(packs)
    except FlashError:
        raise
    except Exception as err:  # network, auth and disk errors all end the same way for a user
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise FlashError(f"could not download the weights: {first}", FETCH_HINT, code="download_failed") from err
    partial = dest / PARTIAL_DIR
    partial.mkdir(exist_ok=True)
    previous = _read_json(partial / PLAN_FILE) or _read_json(dest / COMPLETE_STAMP) or {}
    # what an earlier run put in place and checked (path -> hash); a file the hub changed since is fetched anew
    if "verified" in previous:
        verified = dict(previous["verified"])
    else:  # a complete download: every file it lists
        verified = {entry["path"]: entry.get("id") for entry in previous.get("files", [])}
    total = sum(f.size for f in files)
    plan = {"format": 1, "total": total, "verified": verified,
            "files": [{"path": f.path, "size": f.size, "id": f.id, "repo": f.repo, "commit": f.commit} for f in files]}
    _write_json(partial / PLAN_FILE, plan)
    (dest / COMPLETE_STAMP).unlink(missing_ok=True)  # not complete while anything may change
    report = progress or (lambda done, total, path: None)
    done = 0
    for remote in files:
        target, part = dest / remote.path, part_path(partial, remote.path, remote.id)
        if verified.get(remote.path) == remote.id and _in_place(dest, {"path": remote.path, "size": remote.size}):
            done += remote.size
            continue
        if os.path.lexists(target):  # not put there by this download: the hub's file, or never replaced
            if target.is_file() and not target.is_symlink() and _file_hash_ok(target, remote):
                verified[remote.path] = remote.id
                done += remote.size
                continue
            raise FlashError(f"{target} is already there and is not the hub's {remote.name}: not replacing it",
                             "choose an empty --dest, or move that file away", code="download_failed")
        if progress is None:
            print(f"fetching {remote.repo}/{remote.name} ({remote.size / 1e6:.1f} MB)", file=sys.stderr)
        start = done + (part.stat().st_size if part.is_file() else 0)
        counted = [start]

        def on_bytes(count: int, _path=remote.path) -> None:
            counted[0] += count
            report(counted[0], total, _path)

        report(start, total, remote.path)
        try:
            _fetch_file(remote, part, on_bytes)
        except FlashError:
            raise
        except Exception as err:  # the HEAD request, an HTTP error status, the disk
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise FlashError(f"could not download {remote.repo}/{remote.name}: {first}", FETCH_HINT,
                             code="download_failed") from err
        if not _file_hash_ok(part, remote):
            part.unlink()
            raise FlashError(f"{remote.repo}/{remote.name} arrived damaged (its hash does not match the hub's)",
                             "press Download again to fetch it anew", code="download_failed")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, target)
        verified[remote.path] = remote.id
        _write_json(partial / PLAN_FILE, plan)
        done += remote.size
        report(done, total, remote.path)
    status = problems(dest)
    if status:
        raise FlashError(f"download finished but {dest} is incomplete: {'; '.join(status)}",
                         "run `python -m flash_engine weights fetch` again", code="download_failed")
    del plan["verified"]
    _write_json(dest / COMPLETE_STAMP, plan)
    for leftover in sorted(partial.rglob("*"), reverse=True):  # only .part files of older commits remain
        leftover.rmdir() if leftover.is_dir() else leftover.unlink()
    partial.rmdir()
    return dest


def weights_status_files(folder: Path) -> list[str]:
    """What the engine would miss in ``folder`` (find_problems, without the download check)."""
    from flash_engine.models.loading import find_problems

    return find_problems(folder, folder / "motion_adapter")


# ---------------------------------------------------------------------------------------
# python -m flash_engine.weights fetch [--dest DIR] [--json]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flash_engine.weights",
                                     description="Download the base weights (resumes an unfinished download).")
    commands = parser.add_subparsers(dest="command", required=True)
    fetch_parser = commands.add_parser("fetch", help="download SD 1.5 + AnimateDiff (needs network)")
    fetch_parser.add_argument("--dest", type=Path, help="default: the per-user weights folder")
    fetch_parser.add_argument("--control", action="store_true", help=CONTROL_HELP)
    fetch_parser.add_argument("--json", action="store_true",
                              help="one JSON object a line on stdout (plan, progress, done, error): for the add-on")
    args = parser.parse_args(argv)

    def emit(event: dict) -> None:
        if args.json:
            print(json.dumps(event), flush=True)

    last = [0.0, ""]

    def progress(done: int, total: int, path: str) -> None:
        now = time.monotonic()
        # a few lines a second is plenty for a progress bar; a new file is always said
        if now - last[0] >= 0.1 or done >= total or path != last[1]:
            last[:] = [now, path]
            emit({"event": "progress", "done": done, "total": total, "file": path})

    # Cancelling sends SIGTERM: end through the normal path, so each .part file is closed whole.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    try:
        if args.control:
            folders = fetch_controlnets(args.dest, progress=progress if args.json else None)
        else:
            folders = [fetch(args.dest, progress=progress if args.json else None)]
    except FlashError as err:
        emit({"event": "error", "message": err.message, "hint": err.hint})
        print(f"error: {err.message}" + (f"\n  {err.hint}" if err.hint else ""), file=sys.stderr)
        return 1
    for folder in folders:
        emit({"event": "done", "folder": str(folder), **download_state(folder)})
        if not args.json:
            print(f"weights ready in {folder}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
