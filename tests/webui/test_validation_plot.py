"""The loss plot's data carries the validation losses as their own series, named with the best step."""

from types import SimpleNamespace

from loramix.core.events import TrainEvent
from webui.train_tab import loss_frame


def test_loss_frame_has_a_validation_series_naming_the_best_step():
    events = [TrainEvent("step", s, 6, loss=1.0 / s) for s in range(1, 7)]
    events += [TrainEvent("validation", 2, 6, loss=0.9), TrainEvent("validation", 4, 6, loss=0.7),
               TrainEvent("validation", 6, 6, loss=0.8)]
    job = SimpleNamespace(events=events, losses=lambda: [(e.step, e.loss) for e in events if e.kind == "step"])
    frame = loss_frame(job)
    val = frame[frame.series.str.startswith("validation")]
    assert list(val.step) == [2, 4, 6] and list(val.loss) == [0.9, 0.7, 0.8]
    assert set(val.series) == {"validation (best: step 4)"}
    assert set(frame.series) == {"raw", "smoothed", "validation (best: step 4)"}
