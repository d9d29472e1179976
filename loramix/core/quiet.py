"""Keep library chatter (load bars, dtype notes, gradio's share hint) out of the user's terminal."""

from __future__ import annotations

import os


def quiet_libraries() -> None:
    """Silence diffusers / transformers progress bars and advisory warnings."""
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from diffusers.utils import logging as dl
    from transformers.utils import logging as tl

    for lib in (dl, tl):
        lib.set_verbosity_error()
        lib.disable_progress_bar()
