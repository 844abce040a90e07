"""Output folders that never look complete until they are.

A job writes into a hidden temporary sibling and renames it into place at the end, so a
failed, killed or cancelled job leaves no folder under the requested name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from flash_engine.errors import FlashError


def check_destination(dest: Path, overwrite: bool) -> None:
    """Refuse early (before any model is loaded) when the destination is taken."""
    if dest.exists() and not overwrite:
        raise FlashError(f"output folder already exists: {dest}",
                         "choose another --out or pass --overwrite", code="output_exists")
    if dest.exists() and not dest.is_dir():
        raise FlashError(f"output path is a file: {dest}", "choose a folder path for --out", code="output_exists")
    parent = dest.parent
    if parent.exists() and not os.access(parent, os.W_OK):
        raise FlashError(f"cannot write into {parent}", "choose a writable --out folder", code="output_unwritable")


@contextlib.contextmanager
def staged_folder(dest: Path, overwrite: bool = False):
    """Yield a temporary folder beside ``dest``; on success it becomes ``dest``.

    On any exception the temporary folder is removed and ``dest`` is untouched. With
    ``overwrite`` an existing ``dest`` is replaced only after the new one is complete.
    """
    dest = Path(dest)
    check_destination(dest, overwrite)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    # mkdtemp makes it private (0700); the finished folder gets the user's usual permissions,
    # so shared project storage can read the frames.
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if dest.exists():
        if not overwrite:  # appeared while we worked: keep both, never clobber
            shutil.rmtree(staging, ignore_errors=True)
            raise FlashError(f"output folder appeared while working: {dest}", "run again with another --out",
                             code="output_exists")
        trash = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
        os.replace(dest, trash / dest.name)
        os.replace(staging, dest)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, dest)
