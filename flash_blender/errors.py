"""The add-on's own user-facing error: a problem the user can fix, said in one line."""

from __future__ import annotations


class PlanError(Exception):
    """A problem the user can fix; ``str()`` is one line with the fix."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message, self.hint = message, hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message
