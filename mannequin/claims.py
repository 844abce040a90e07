"""Claims on units of a long run, so several worker processes on one machine can share it.

A worker claims a unit (one training of the benchmark, say) before doing it and releases it
after; another worker skips a unit whose claim is held by a live process. A claim whose
process is gone (killed, crashed, the machine rebooted) is stale and is taken over. Every
claim operation runs under one lock file in the claims folder, so two workers cannot both
take a stale claim. Only POSIX machines have ``fcntl``; elsewhere a single worker needs none.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no shared runs, nothing to lock against
    fcntl = None


@contextlib.contextmanager
def locked(path: Path):
    """Hold an exclusive lock on ``path`` (created if missing) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


def process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux), so a reused pid is not taken for the claimer."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def _alive(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return True  # another machine's process cannot be checked from here: assume it still runs
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    started = process_start(pid)
    return started is None or holder.get("started") in (None, started)


def _me() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": process_start(os.getpid())}


class Claims:
    """The claims of one run, as files ``<name>.claim`` in ``folder``."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def _path(self, name: str) -> Path:
        return self.folder / f"{name}.claim"

    def holder(self, name: str) -> dict | None:
        """Who holds ``name`` now (a live process other than this one), or None."""
        try:
            holder = json.loads(self._path(name).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(holder, dict) or holder == _me() or not _alive(holder):
            return None
        return holder

    def claim(self, name: str) -> bool:
        """Take ``name`` unless a live process holds it; True when this process now holds it."""
        with locked(self.folder / ".lock"):
            if self.holder(name) is not None:
                return False
            tmp = self._path(name).with_suffix(".tmp")
            tmp.write_text(json.dumps(_me()))
            tmp.replace(self._path(name))
            return True

    def release(self, name: str) -> None:
        """Remove ``name``'s claim if this process holds it (never another's)."""
        with locked(self.folder / ".lock"):
            path = self._path(name)
            try:
                mine = json.loads(path.read_text()) == _me()
            except (OSError, ValueError):
                return
            if mine:
                path.unlink()
