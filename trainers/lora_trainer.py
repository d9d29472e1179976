"""The LoRA trainer's entry: image folder + base model -> kohya-format LoRA file, as named steps.

    scan data -> accelerator -> load model -> inject LoRA -> cache -> optimizer -> resume -> loop -> save

`LoraTrainer` joins one class per job; where each job lives:
- this file: the run folder check and lock (`LoraTrainer.run`), the order of the steps (`_run`), `train()`;
- trainers/training_setup.py: data scan, Accelerator, base model, adapter injection, caches, optimizer, resume;
- trainers/training_step.py: one micro-batch's loss (noise and timesteps, target, masks, min-SNR, prior loss);
- trainers/training_loop.py: the steps, the stop and rollback on NaN/inf (`LastGood`), periodic outputs, cancel;
- trainers/run_outputs.py: the files in the run folder: log.jsonl, config, LoRA with metadata, state, samples.

`accelerate.Accelerator` owns devices, precision, gradient accumulation and distributed runs; the
same code runs under `accelerate launch --num_processes N`. Every random choice is derived from
(seed, micro-batch index, position in the global batch), so a resumed run, and an N-process run
with the same global batch, see the same data and noise as a single uninterrupted run.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

from loramix.core.config import LoramixConfig
from loramix.core.events import CancelToken, EventSink, TrainEvent, no_events
from loramix.core.runs import RunLock, check_run_folder, remove_stale_temps
from trainers.run_outputs import RunOutputs
from trainers.trackers import start_trackers
from trainers.training_loop import TrainingLoop, TrainResult
from trainers.training_setup import TrainingSetup
from trainers.training_step import TrainingStep

__all__ = ["LoraTrainer", "TrainResult", "train"]


class LoraTrainer(TrainingSetup, TrainingStep, TrainingLoop, RunOutputs):
    """One training run of `config`: `run()` does it all; tests call the steps one by one.

    The state the jobs share, and the step that sets it: `cfg` (the validated config; its sections are
    read as `self.cfg.dataset`, `.train`, ...), `out_dir` and `name` (the run folder and the files' stem):
    __init__. `items`: scan_data. `accelerator`, `total_steps`, `micro_per_epoch`: setup_accelerator.
    `components` (the base model: unet, vae, text encoders, tokenizers, noise scheduler) and `family`:
    load_model. `trained` (prefix -> module carrying the adapter): inject_lora. `latent_cache`,
    `text_cache`, `masks`, `vset` (validation set), `parking`: build_caches. `params`, `optimizer`,
    `scheduler`, `models` (`trained` as accelerate prepared them), `ema`: build_optimizer.
    """

    def __init__(self, config: LoramixConfig, events: EventSink = no_events, cancel: CancelToken | None = None):
        self.cfg = config.validate()
        self.events = events
        self.cancel = cancel or CancelToken()
        self.out_dir = Path(config.output.output_dir).expanduser()
        self.name = config.output.output_name
        self.started_at = time.time()
        # The run's own files: written inside its folder (links out are refused at each file), replaced as the
        # run goes (the state file at every checkpoint); check_run_folder kept other runs' folders out.
        self.own_files = {"replace": True, "within": self.out_dir}
        self.session_id = random.SystemRandom().randint(0, 2**32)  # kohya's ss_session_id: one per launch
        self.sampled_at = -1  # the step whose samples were drawn last
        self.val_losses: list[tuple[int, float]] = []  # (step, validation loss), kept across a resume via the log
        self.vset = None
        self.masks = None

    def run(self) -> TrainResult:
        # one run folder per job: refuse another run's folder, lock it, clear a killed run's temp files
        check_run_folder(self.cfg)
        if int(os.environ.get("RANK", "0")) != 0:  # only the main process writes files
            return self._run()
        with RunLock(self.out_dir):
            remove_stale_temps(self.out_dir)
            return self._run()

    def _run(self) -> TrainResult:
        self.scan_data()
        self.setup_accelerator()
        self.events(TrainEvent("log", message=f"{len(self.items)} images; loading {self.cfg.model.base_model or 'the embedded model'}"))
        self.load_model()
        self.check_caption_lengths()
        self.inject_lora()
        self.build_caches()
        self.build_optimizer()
        start = self.maybe_resume()
        self.start_log(start)
        start_trackers(self.accelerator, self.cfg.output, self.out_dir)
        self.events(TrainEvent("start", start, self.total_steps))
        try:
            return self.train_steps(start)
        finally:
            if getattr(self, "parking", None):
                self.parking.discard()


def train(config: LoramixConfig, events: EventSink = no_events, cancel: CancelToken | None = None) -> TrainResult:
    """Train a LoRA as `config` says; progress goes to `events`; `cancel` stops it between steps."""
    return LoraTrainer(config, events, cancel).run()
