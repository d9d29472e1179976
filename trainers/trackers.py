"""Experiment trackers through accelerate: loss, learning rate, validation loss and samples to TensorBoard
(or Weights & Biases), as `output.log_with` says. log.jsonl is written either way.

TensorBoard's event files go to `<run folder>/tensorboard/` (open them with
`tensorboard --logdir <run folder>`); a resumed run adds a new event file beside the first. The files are
written by the tracker library itself, not through loramix.core.writer: an event file is appended as it goes.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from loramix.core.config import OutputConfig
from loramix.core.errors import ConfigError

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}
TENSORBOARD_FOLDER = "tensorboard"


def accelerator_options(out: OutputConfig, out_dir: Path) -> dict:
    """`Accelerator(...)` keyword arguments for `output.log_with`; refuses a tracker whose package is missing."""
    if out.log_with == "none":
        return {}
    package = PACKAGES[out.log_with]
    if importlib.util.find_spec(package) is None:
        raise ConfigError("output.log_with", f"{out.log_with} needs the {package} package, which is not installed: "
                                             f"pip install 'loramix[{out.log_with}]', or set output.log_with=none.")
    return {"log_with": out.log_with, "project_dir": str(out_dir)}


def start_trackers(acc, out: OutputConfig, out_dir: Path) -> None:
    if out.log_with == "none":
        return
    init = {"wandb": {"dir": str(out_dir), "name": out.output_name}} if out.log_with == "wandb" else {}
    acc.init_trackers(TENSORBOARD_FOLDER if out.log_with == "tensorboard" else out.output_name, init_kwargs=init)


def log_samples(acc, step: int, images: list) -> None:
    """The sample images (PIL) of `step`, one tag per prompt index."""
    for tracker in getattr(acc, "trackers", []):
        if tracker.name == "tensorboard":
            tracker.log_images({f"sample/{i}": np.asarray(im)[None] for i, im in enumerate(images)}, step,
                               dataformats="NHWC")
        elif tracker.name == "wandb":
            tracker.log_images({"samples": images}, step)
