"""Output folders that never look complete until they are, and never cost a user a file.

A job writes into a hidden sibling (``.NAME.partial-XXXXXXXX``, holding an owner file that
names the process) and renames it into place at the end, so a failed, killed or cancelled
job leaves no folder under the requested name.

``overwrite`` replaces an existing folder only when the engine wrote it: the caller's
``written_files`` reads the folder's manifest (a take's ``flash.json``, an action's
``action.toml``) and returns the names the engine wrote there; a folder without one, or
holding anything else, is refused before any work starts. The old folder is moved aside and
only the names it claims are removed from it.

Hidden folders of killed jobs are removed by the next job into the same parent, when their
owner file shows that the process that made them is gone (same host, pid not running or
running a different program start), and then only files with the names the engine writes.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
from pathlib import Path
from typing import Callable

from flash_engine.errors import FlashError
from flash_engine.layout import (ACTION_DECODER, ACTION_MANIFEST, ACTION_UNET, OLD_MARK, OWNER_FILE, PARTIAL_MARK,
                                 TAKE_MANIFEST, TAKE_MP4, staging_prefix)
from flash_engine.tensorfiles import current_umask

# A folder's manifest → the names the engine wrote there, each with the SHA-256 it had when
# written (None where the manifest records none); None: the folder has no manifest of ours.
WrittenFiles = Callable[[Path], "dict[str, str | None] | None"]

NAME_MAX_BYTES = 255
PATH_MAX_BYTES = 4096
# mkdtemp adds 8 random characters; with the leading dot and the mark this is the most a
# staging name adds to the folder's own name.
_STAGING_EXTRA_BYTES = 1 + max(len(PARTIAL_MARK), len(OLD_MARK)) + 8
# The longest name the engine writes inside a folder (frame_0001.png, decoder.safetensors, ...).
_LONGEST_CHILD_BYTES = 32
# Every name the engine writes into a staged folder (takes, actions, the demo's extras).
# Only these are removed from a dead job's leftovers; anything else stays.
ENGINE_FILE_NAMES = re.compile("|".join(
    [r"frame_\d{4,}\.png", r"strip\.png", r"preview\.mp4"]  # frames, and the demo's preview
    + [re.escape(name) for name in (TAKE_MANIFEST, TAKE_MP4, ACTION_MANIFEST, ACTION_UNET, ACTION_DECODER, OWNER_FILE)]))


def normalise(dest: str | Path) -> Path:
    """Absolute, with ``~``, ``.``, ``..`` and trailing dots resolved lexically, so that
    ``x/.`` is ``x`` in every check and rename below."""
    return Path(os.path.abspath(os.path.expanduser(os.fspath(dest))))


def os_error(err: OSError, path: Path, what: str = "write") -> FlashError:
    """A filesystem failure as one line with the fix."""
    where = err.filename or path
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return FlashError(f"the disk is full: could not {what} {where}",
                          "free some space or choose --out on another disk", code="disk_full")
    if err.errno == errno.EROFS:
        return FlashError(f"read-only filesystem: could not {what} {where}", "choose a writable --out folder",
                          code="output_unwritable")
    if err.errno in (errno.EACCES, errno.EPERM):
        return FlashError(f"permission denied: could not {what} {where}", "choose a writable --out folder",
                          code="output_unwritable")
    if err.errno == errno.ENAMETOOLONG:
        return FlashError(f"path too long: could not {what} {where}", "choose a shorter --out path",
                          code="bad_output")
    if err.errno == errno.ENOTDIR:
        return FlashError(f"a part of the output path is a file: could not {what} {where}",
                          "choose an --out whose parent folders are folders", code="bad_output")
    return FlashError(f"could not {what} {where}: {os.strerror(err.errno) if err.errno else err}",
                      "check the --out folder", code="output_unwritable")


def _nearest_existing(path: Path) -> Path:
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def _check_writable_parent(dest: Path, needed_bytes: int) -> None:
    base = _nearest_existing(dest.parent)
    if not base.is_dir():
        raise FlashError(f"{base} is a file, not a folder", "choose an --out whose parent folders are folders",
                         code="bad_output")
    try:
        read_only = bool(os.statvfs(base).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs (Windows): the write itself will tell
        read_only = False
    if read_only:
        raise FlashError(f"{base} is on a read-only filesystem", "choose a writable --out folder",
                         code="output_unwritable")
    if not os.access(base, os.W_OK | os.X_OK):
        raise FlashError(f"cannot write into {base}", "choose a writable --out folder", code="output_unwritable")
    if needed_bytes:
        free = shutil.disk_usage(base).free
        if free < needed_bytes:
            raise FlashError(f"not enough disk space in {base}: about {needed_bytes / 2**20:.0f} MiB needed, "
                             f"{free / 2**20:.0f} MiB free", "free some space or choose --out on another disk",
                             code="disk_full")


def check_destination(dest: str | Path, overwrite: bool, written_files: WrittenFiles, needed_bytes: int = 0) -> Path:
    """Refuse early (before any model is loaded) what cannot or must not be written; returns
    the normalised destination."""
    dest = normalise(dest)
    if not dest.name:
        raise FlashError(f"cannot write a folder at {dest}", "choose an --out folder inside a folder",
                         code="bad_output")
    name_bytes = len(os.fsencode(dest.name))
    if name_bytes > NAME_MAX_BYTES:
        raise FlashError(f"the output folder's name is {name_bytes} bytes long; at most {NAME_MAX_BYTES} fit",
                         "choose a shorter --out name", code="bad_output")
    path_bytes = len(os.fsencode(str(dest))) + 1 + _LONGEST_CHILD_BYTES
    if path_bytes > PATH_MAX_BYTES:
        raise FlashError(f"the output path is {len(str(dest))} characters long; its files would not fit the "
                         f"system's {PATH_MAX_BYTES}-byte path limit", "choose a shorter --out path",
                         code="bad_output")
    if os.path.islink(dest):  # a TD's link to fast storage: replacing it would move the link, not the take
        raise FlashError(f"{dest} is a symbolic link (to {os.readlink(dest)})",
                         "pass the folder it points to as --out", code="bad_output")
    if os.path.lexists(dest):
        if not dest.is_dir():
            raise FlashError(f"output path is a file: {dest}", "choose a folder path for --out", code="output_exists")
        if not overwrite:
            raise FlashError(f"output folder already exists: {dest}",
                             "choose another --out, or pass --overwrite to replace a take the engine wrote there",
                             code="output_exists")
        check_replaceable(dest, written_files)
    _check_writable_parent(dest, needed_bytes)
    return dest


def file_digest(path: Path) -> str:
    """SHA-256 of a file, hex: what a manifest records so a later replace can tell an edited file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_replaceable(folder: Path, written_files: WrittenFiles) -> set[str]:
    """The names to remove when ``folder`` is replaced; a FlashError unless the engine wrote
    every entry in it and none of them was changed since (an artist's paint-over is theirs)."""
    claimed = written_files(folder)
    if claimed is None:
        raise FlashError(f"{folder} was not written by the engine (no manifest): --overwrite replaces only "
                         "the engine's own output", "choose another --out", code="output_exists")
    try:
        entries = set(os.listdir(folder))
    except OSError as err:
        raise os_error(err, folder, "read") from err
    others = sorted(entries - set(claimed) - {OWNER_FILE})  # an owner file: a swap the engine did not finish
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise FlashError(f"{folder} holds files the engine did not write ({shown}): not replacing it",
                         "move those files out or choose another --out", code="output_exists")
    for name in sorted(entries & set(claimed)):
        path, recorded = folder / name, claimed[name]
        try:
            changed = recorded is not None and (path.is_symlink() or not path.is_file() or file_digest(path) != recorded)
        except OSError as err:
            raise FlashError(f"cannot read {path} to check that it is unchanged ({os.strerror(err.errno or 0)})",
                             "fix its permissions or choose another --out", code="output_exists") from err
        if changed:
            raise FlashError(f"{path} was changed after the engine wrote it: not replacing {folder}",
                             "keep your edit: choose another --out, or move the folder away", code="output_exists")
    return set(claimed)


# ---------------------------------------------------------------------------------------
# Owner files and leftovers of killed jobs


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def _owner_record() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "start": _process_start(os.getpid())}


def _owner_is_gone(owner: dict) -> bool:
    """True only when it is certain that the owning process no longer runs."""
    if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return False  # another machine's job (shared storage): not ours to judge
    pid = owner["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OSError):
        return False
    start = _process_start(pid)
    return start is not None and owner.get("start") is not None and start != owner["start"]


def _remove_engine_files(folder: Path) -> bool:
    """Remove the engine's own names from ``folder`` (and it, when that empties it)."""
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            _remove_engine_files(child)
        elif ENGINE_FILE_NAMES.fullmatch(child.name) and (child.is_file() or child.is_symlink()):
            child.unlink()
    try:
        folder.rmdir()
        return True
    except OSError:  # something else is in there: leave it
        return False


def _restore_old(trash: Path, parent: Path, owner: dict) -> bool:
    """A job killed between its two renames left the take it was replacing in ``trash`` and
    nothing under its name: that take goes back, it is not deleted. True when restored."""
    name = owner.get("dest")
    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
        return False
    old, dest = trash / name, parent / name
    if os.path.lexists(dest) or not old.is_dir() or old.is_symlink():
        return False  # the new take is in place (or the name is taken): the old one may go
    os.rename(old, dest)
    (trash / OWNER_FILE).unlink()
    trash.rmdir()
    return True


def remove_stale_partials(parent: Path) -> list[Path]:
    """Remove hidden staging folders in ``parent`` whose owner process is gone; returns them.
    An old take a killed job had moved aside, with nothing under its name, is put back instead."""
    removed = []
    try:
        candidates = [p for p in parent.iterdir() if p.name.startswith(".")
                      and (PARTIAL_MARK in p.name or OLD_MARK in p.name)]
    except OSError:
        return removed
    for folder in candidates:
        try:
            if folder.is_symlink() or not folder.is_dir():
                continue
            owner_file = folder / OWNER_FILE
            if owner_file.is_file():
                owner = json.loads(owner_file.read_text(encoding="utf-8"))
                if not isinstance(owner, dict) or not _owner_is_gone(owner):
                    continue
                if OLD_MARK in folder.name and _restore_old(folder, parent, owner):
                    continue
                if _remove_engine_files(folder):
                    removed.append(folder)
            elif not any(folder.iterdir()):  # an empty one (older engines left those): nothing to lose
                folder.rmdir()
                removed.append(folder)
        except (OSError, ValueError):
            continue
    return removed


def _hidden_sibling(dest: Path, mark: str) -> Path:
    """``.NAME<mark>XXXXXXXX`` beside ``dest``, NAME shortened so the whole name fits."""
    room = NAME_MAX_BYTES - _STAGING_EXTRA_BYTES
    short = os.fsencode(dest.name)[:room].decode("utf-8", "ignore") if len(os.fsencode(dest.name)) > room else dest.name
    folder = Path(tempfile.mkdtemp(prefix=staging_prefix(short, mark), dir=dest.parent))
    try:
        (folder / OWNER_FILE).write_text(json.dumps({**_owner_record(), "dest": dest.name}), encoding="utf-8")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


def _usual_permissions(folder: Path) -> None:
    # mkdtemp makes it private (0700); the finished folder gets the user's usual permissions,
    # so shared project storage can read the frames.
    folder.chmod(0o777 & ~current_umask())


@contextlib.contextmanager
def staged_folder(dest: str | Path, overwrite: bool = False, written_files: WrittenFiles | None = None,
                  needed_bytes: int = 0):
    """Yield a hidden folder beside ``dest``; on success it becomes ``dest``.

    On any exception the hidden folder is removed and ``dest`` is untouched. With
    ``overwrite`` an existing ``dest`` the engine wrote is replaced only after the new one is
    complete. Filesystem failures become one-line FlashErrors.
    """
    written_files = written_files or (lambda folder: None)
    dest = check_destination(dest, overwrite, written_files, needed_bytes)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(dest.parent)
    except OSError as err:
        raise os_error(err, dest, "create") from err
    staging, created = None, False
    try:
        # Ctrl-C / SIGTERM wait until the folder has a name here, so the handler below removes it
        with _signals_held():
            staging = _hidden_sibling(dest, PARTIAL_MARK)
            _usual_permissions(staging)
        created = True
        yield staging
        _put_in_place(staging, dest, overwrite, written_files)
    except BaseException as err:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if isinstance(err, OSError):
            raise os_error(err, dest, "write" if created else "create") from err
        raise


@contextlib.contextmanager
def _signals_held():
    """Ctrl-C and SIGTERM wait while two renames run: an interruption between them would
    leave neither the old take nor the new one under the name."""
    held = {signal.SIGINT, signal.SIGTERM}
    can_hold = hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread()
    before = signal.pthread_sigmask(signal.SIG_BLOCK, held) if can_hold else None
    try:
        yield
    finally:
        if can_hold:
            signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _put_in_place(staging: Path, dest: Path, overwrite: bool, written_files: WrittenFiles) -> None:
    """Rename the finished staging folder to ``dest`` (replacing the engine's old take there),
    then drop its owner file: until then a kill leaves it for the next job to clean."""
    if not os.path.lexists(dest):
        try:
            os.rename(staging, dest)
            (dest / OWNER_FILE).unlink()
            return
        except OSError as err:
            if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
    if not overwrite:  # appeared while we worked: keep theirs, never clobber
        raise FlashError(f"output folder appeared while working: {dest}", "run again with another --out",
                         code="output_exists")
    claimed = check_replaceable(dest, written_files)  # again: a user may have added a file meanwhile
    trash = _hidden_sibling(dest, OLD_MARK)
    old = trash / dest.name
    with _signals_held():
        os.replace(dest, old)
        try:
            os.replace(staging, dest)
        except BaseException:
            os.replace(old, dest)  # the old take back under its name
            shutil.rmtree(trash, ignore_errors=True)
            raise
    (dest / OWNER_FILE).unlink()
    for name in claimed:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            (old / name).unlink()
    # Not empty: a file arrived after the check. It stays, and without the owner file no later
    # job takes the folder for a dead job's leftovers.
    (trash / OWNER_FILE).unlink()
    with contextlib.suppress(OSError):
        old.rmdir()
    with contextlib.suppress(OSError):
        trash.rmdir()
