"""One error type for everything a user can get wrong: a one-line message plus the fix."""


class FlashError(Exception):
    """A user-facing failure. ``str(err)`` is one line: what went wrong, then how to fix it."""

    def __init__(self, message: str, hint: str = "", code: str = "bad_input"):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.code = code

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


CANCELLED = "cancelled"


class JobCancelled(FlashError):
    """A job stopped because its cancel check said so (a cancel request, Ctrl-C, shutdown).

    The one cancellation every layer raises and catches: the pipeline's and the trainer's
    cancel checks, the service's progress callbacks. Catch it before FlashError."""

    def __init__(self, message: str = "the job was cancelled"):
        super().__init__(message, "", code=CANCELLED)
