"""Library chatter (diffusers' dtype notes, transformers' advice and progress bars) is not for our users."""

from __future__ import annotations


def quiet_libraries() -> None:
    """Library chatter (diffusers' dtype notes, transformers' advice) is not for our users."""
    import warnings

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()  # "Loading weights" bars on every model load
    warnings.filterwarnings("ignore", category=FutureWarning)
