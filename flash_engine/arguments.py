"""Checking a job's arguments (from the command line or a protocol request) by name."""

from __future__ import annotations

from flash_engine.errors import FlashError


def check_arguments(kind: str, data: dict, known: set[str], required: tuple[str, ...]) -> None:
    """Unknown or missing arguments → one FlashError naming them and the allowed ones."""
    unknown = sorted(set(data) - known)
    if unknown:
        raise FlashError(f"unknown {kind} argument(s): {', '.join(unknown)}",
                         f"allowed: {', '.join(sorted(known))}", code="bad_argument")
    for name in required:
        if not data.get(name):
            raise FlashError(f"{kind} needs '{name}'", f"pass {name}", code="bad_argument")
