"""Library chatter (diffusers' dtype notes, transformers' advice and progress bars) is not for our users."""

from __future__ import annotations

import contextlib
import os
import sys


def quiet_libraries() -> None:
    """Library chatter (diffusers' dtype notes, transformers' advice) is not for our users."""
    import warnings

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()  # "Loading weights" bars on every model load
    warnings.filterwarnings("ignore", category=FutureWarning)


@contextlib.contextmanager
def native_stderr_quiet():
    """Send what native libraries write to the process's stderr (MediaPipe's TensorFlow Lite and
    absl lines at start-up, which no setting turns off) to /dev/null meanwhile. For a command
    line's single job only: other threads' stderr is silenced too."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
