"""Progress events and the cancel token: the one stream the CLI bar, the UI and the tests all read."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TrainEvent:
    """One thing that happened during a run.

    kind: "start" | "step" | "sample" | "checkpoint" | "done" | "cancelled" | "error" | "log" | "warning" |
    "validation" (`loss` is the validation loss; `extra` holds "best_step" and "best_loss" so far)
    ("warning": `message` is one sentence for the person training, naming the file it is about: an image
    the scan skipped, a caption cut by the tokenizer, a layer saved wider than asked.)
    """

    kind: str
    step: int = 0
    total: int = 0
    loss: float | None = None
    lr: float | None = None
    steps_per_s: float | None = None
    eta_s: float | None = None
    paths: tuple[str, ...] = ()
    message: str = ""
    extra: dict = field(default_factory=dict)


EventSink = Callable[[TrainEvent], None]


def no_events(_event: TrainEvent) -> None:
    """The sink used when nobody listens."""


class CancelToken:
    """A flag a caller sets from any thread; the trainer checks it between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()
