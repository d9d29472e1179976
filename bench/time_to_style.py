"""Minutes to a usable style LoRA: train a preset on each sample style set and time the run until the
style is learned, with the content still right.

    python bench/time_to_style.py                                   # presets/demo-cpu.toml, all three sets
    python bench/time_to_style.py --styles pastel --set optim.learning_rate=1e-3 --set train.max_steps=200
    python bench/time_to_style.py --trigger "{style} style" --set dataset.trigger_position=end --reg 12
    python tools/make_styles.py --held-out /tmp/held-out-styles        # dusk: a style no preset is tuned on
    python bench/time_to_style.py --sets /tmp/held-out-styles --styles dusk

Per style set, one training run of the preset (sample images off) saves the LoRA every `--every` steps;
afterwards, off the clock, each saved LoRA generates the held-out content prompts at weight 1 (fixed seeds,
DDIM 20 steps, CFG 6, batched) and is scored by `loramix.embedded.style_metrics`:
- style: the style's statistic, averaged over the prompts; learned when its distance to the target is at most
  half the base model's distance. The target (`--target prompts`, the default since 2026-12-06) is the style's
  own drawing of the same prompts (`style_metrics.prompts_target`), as the base's VAE draws it back (a UNet LoRA
  cannot draw more of a style than its decoder): what a LoRA that learned the style exactly would score. The
  set's value (`--target set`, the measure before; both ratios are printed) also depends on which scenes the
  set holds: a LoRA drawing the prompts exactly in the style scored 0.46 on ink's set and 0.58 on a pastel set
  with every background colour, "not styled" (docs/benchmarks.md). A style with no drawing here (your own
  set) uses the set's value;
- content: the share of prompts whose caption colour is still in the caption's place, on the caption's
  background drawn plain or as the style draws it (`content_kept`; before 2026-12-06 the background was not judged).

Two times are reported: to the first saved step that is learned (style alone), and to the first that is
learned and keeps content. Each is the wall time from calling `train()` (model load and caches included, what a user
waits for) to the end of that step (content kept: at least `--content` of the prompts, default 10 of 12; v1 of
the base keeps 10 of 12 itself, v2 12 of 12), minus the time spent writing checkpoints before it (the
bench saves far more often than a user would). Threads: torch's default unless `--threads`. Beside each wall time
the process's CPU time (getrusage, every thread) over the same span. On a shared box wall time swings (the same
2-thread pastel run took 43 s and 78 s on one machine on one day); at 1 thread the CPU time stays put, at 2 it
swings too, since a thread waiting for its sibling spins and is counted (docs/benchmarks.md, 2026-12-06).

With a trigger word (the preset's `dataset.trigger_word`, or `--trigger`), every held-out prompt carries it,
where `dataset.trigger_position` puts it, for the base as for each LoRA. `--reg N` trains with N
regularisation pictures (`dataset.reg_data_dir`) of random scenes, none of them held out: the base model's
own drawings, or with `--reg-source render` the scenes drawn as the base was pretrained on them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loramix.core.config import load_config  # noqa: E402
from loramix.core.events import TrainEvent  # noqa: E402
from loramix.core.quiet import quiet_libraries  # noqa: E402
from loramix.embedded import STYLE_SETS  # noqa: E402
from loramix.embedded.style_metrics import (  # noqa: E402
    content_scenes,
    prompts_target,
    shape_kept,
    style_and_content,
    style_target,
)
from loramix.mix.mixer import Mixer  # noqa: E402
from trainers.dataset import with_trigger  # noqa: E402
from trainers.lora_trainer import train  # noqa: E402


def cpu_seconds() -> float:
    """This process's CPU time, every thread, user and system (getrusage)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Clock:
    """Event sink: when each step ended and how long each checkpoint write took, in wall and in CPU seconds."""

    def __init__(self):
        self.t0, self.cpu0 = time.perf_counter(), cpu_seconds()
        self.step_end: dict[int, float] = {}
        self.save_s: dict[int, float] = {}
        self.step_cpu: dict[int, float] = {}
        self.save_cpu: dict[int, float] = {}
        self.paths: dict[int, str] = {}

    def __call__(self, event: TrainEvent) -> None:
        now, cpu = time.perf_counter() - self.t0, cpu_seconds() - self.cpu0
        if event.kind == "step":
            self.step_end[event.step] = now
            self.step_cpu[event.step] = cpu
        elif event.kind == "checkpoint":
            self.save_s[event.step] = now - self.step_end.get(event.step, now)
            self.save_cpu[event.step] = cpu - self.step_cpu.get(event.step, cpu)
            self.paths[event.step] = next(p for p in event.paths if not p.endswith("-state.safetensors"))

    @staticmethod
    def _less_saves(ends: dict[int, float], saves: dict[int, float], step: int) -> float:
        return ends[step] - sum(s for k, s in saves.items() if k < step)

    def on_the_clock(self, step: int) -> float:
        """Seconds from train() to the end of `step`, less the checkpoint writes before it."""
        return self._less_saves(self.step_end, self.save_s, step)

    def cpu_on_the_clock(self, step: int) -> float:
        """CPU seconds (all threads) from train() to the end of `step`, less the checkpoint writes before it."""
        return self._less_saves(self.step_cpu, self.save_cpu, step)


def score(mixer: Mixer, lora: str | None, style: str, scenes, steps: int, trigger: str = "",
          position: str = "start") -> tuple[float, float, float]:
    """(mean style statistic, share of content kept, share with the shape kept whatever the background) of the
    held-out prompts at weight 1 (None = base), each prompt carrying the trigger word where the LoRA was trained
    with it, as a user would write it."""
    for name in list(mixer.slots):
        mixer.remove(name)
    if lora:
        mixer.load(lora, name="style", weight=1.0)
    pipe = mixer.pipeline()
    with mixer.applied():
        images = pipe([with_trigger(s.caption, trigger, position) for s in scenes], num_inference_steps=steps,
                      guidance_scale=6.0, height=64, width=64,
                      generator=[torch.Generator().manual_seed(i) for i in range(len(scenes))]).images
    stat, kept = style_and_content(style, images, scenes)
    return stat, kept, sum(shape_kept(im, s).ok for im, s in zip(images, scenes)) / len(scenes)


def regularisation_folder(base_model: str, count: int, source: str, seed: int = 7) -> Path:
    """`count` pictures of random scenes (never a held-out one), captioned in the scene grammar without any
    trigger: the base model's own drawings ("base", DreamBooth's prior preservation) or the scenes rendered
    as the base was pretrained on them ("render", like real class photos). Made once per setting, cached."""
    from loramix.embedded.scenes import regularisation_scenes, render

    folder = Path(tempfile.gettempdir()) / f"tts-reg-{source}-{count}-{seed}"
    if (folder / "done").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    scenes = regularisation_scenes(count, seed)  # with "render": loramix/embedded/reg/ when count is 12
    if source == "render":
        images = [render(scene) for scene in scenes]
    else:
        mixer = Mixer.from_base(base_model)
        with torch.no_grad():
            images = mixer.pipeline()([s.caption for s in scenes], num_inference_steps=20, guidance_scale=6.0,
                                       height=64, width=64,
                                       generator=[torch.Generator().manual_seed(seed * 1000 + i)
                                                  for i in range(count)]).images
    for i, (scene, image) in enumerate(zip(scenes, images)):
        image.save(folder / f"reg_{i:03d}.png")
        (folder / f"reg_{i:03d}.txt").write_text(scene.caption + "\n")
    (folder / "done").write_text("")
    return folder


def run_style(style: str, args) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"tts-{style}-"))
    trigger = args.trigger.format(style=style)
    extra = [f"dataset.trigger_word={trigger}"] if trigger else []
    if args.reg:
        base = load_config(args.preset, overrides=args.set).model.base_model
        extra.append(f"dataset.reg_data_dir={regularisation_folder(base, args.reg, args.reg_source)}")
    config = load_config(args.preset, overrides=[
        f"dataset.data_dir={(args.train_sets or args.sets) / style}", f"output.output_dir={out / 'run'}",
        "sample.sample_every_n_steps=0", f"output.save_every_n_steps={args.every}", *extra, *args.set])
    trigger = config.dataset.trigger_word
    clock = Clock()
    result = train(config, events=clock)
    wall, cpu = time.perf_counter() - clock.t0, cpu_seconds() - clock.cpu0
    last = max(clock.step_end)
    clock.paths.setdefault(last, str(result.lora_path))
    clock.save_s.setdefault(last, 0.0)

    scenes = content_scenes(args.prompts)
    mixer = Mixer.from_base(config.model.base_model)
    vae = mixer.components.vae
    set_target = style_target(style, args.sets / style, vae=vae)  # the set as this base's decoder draws it
    drawn = prompts_target(style, scenes, vae=vae) if args.target == "prompts" else None
    target = set_target if drawn is None else drawn
    base_stat, base_kept, _ = score(mixer, None, style, scenes, args.sample_steps, trigger,
                                    config.dataset.trigger_position)

    def ratio_to(value: float, stat: float) -> float:
        return abs(stat - value) / max(abs(base_stat - value), 1e-9)

    rows, styled, reached = [], None, None
    for step in sorted(clock.paths):
        stat, kept, shape = score(mixer, clock.paths[step], style, scenes, args.sample_steps, trigger,
                                  config.dataset.trigger_position)
        ratio = ratio_to(target, stat)
        rows.append({"step": step, "s": round(clock.on_the_clock(step), 2),
                     "cpu_s": round(clock.cpu_on_the_clock(step), 1), "stat": round(stat, 4),
                     "distance_ratio": round(ratio, 3), "set_ratio": round(ratio_to(set_target, stat), 3),
                     "content": round(kept, 3), "shape_kept": round(shape, 3)})
        if styled is None and ratio <= 0.5:
            styled = rows[-1]
        if reached is None and ratio <= 0.5 and kept >= args.content:
            reached = rows[-1]
        print(f"  {style} step {step:4d}: {rows[-1]['s']:6.1f} s ({rows[-1]['cpu_s']:6.1f} s CPU)  stat {stat:.4f}  distance ratio {ratio:.3f} "
              f"(to the set {rows[-1]['set_ratio']:.3f})  content {kept:.2f} (shape alone {shape:.2f})", flush=True)
    return {"style": style, "target": round(target, 4), "target_from": "set" if drawn is None else "prompts",
            "set_target": round(set_target, 4), "base_stat": round(base_stat, 4),
            "base_content": round(base_kept, 3), "train_wall_s": round(wall, 1), "train_cpu_s": round(cpu, 1),
            "steps": last,
            "styled": styled, "reached": reached, "curve": rows}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="presets/demo-cpu.toml")
    parser.add_argument("--styles", default="pastel,ink,stripes")
    parser.add_argument("--sets", type=Path, default=STYLE_SETS, help="folder holding one folder per style")
    parser.add_argument("--train-sets", type=Path, help="train on these folders instead (e.g. a set plus "
                        "regularisation pictures); the target stays the one from --sets")
    parser.add_argument("--trigger", default="", help="trigger word for the style pictures, also put in front "
                        "of every held-out prompt; {style} stands for the set's name (e.g. '{style} style'). "
                        "Default: the preset's dataset.trigger_word")
    parser.add_argument("--reg", type=int, default=0, help="train with this many regularisation pictures "
                        "(dataset.reg_data_dir), captioned without the trigger")
    parser.add_argument("--reg-source", choices=["base", "render"], default="base", help="base: the base "
                        "model's own drawings; render: the scenes drawn as the base was pretrained on them")
    parser.add_argument("--set", action="append", default=[], help="a config override, as `loramix train --set`")
    parser.add_argument("--every", type=int, default=25, help="save (and score) every N steps")
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--content", type=float, default=10 / 12,
                        help="share of prompts that must keep content (default 10 of 12, the demo's goal)")
    parser.add_argument("--target", choices=["prompts", "set"], default="prompts",
                        help="prompts: the style's own drawing of the prompts (where it has one); set: the set's")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet_libraries()
    results = []
    for style in args.styles.split(","):
        print(f"{style}: training {args.preset} {' '.join(args.set)}", flush=True)
        results.append(run_style(style, args))
        r = results[-1]
        def when(row):
            return (f"{row['s']} s, {row['cpu_s']} s CPU (step {row['step']}, content {row['content']})" if row
                    else "not reached")
        print(f"{style}: target {r['target']} ({r['target_from']}; the set {r['set_target']}), base {r['base_stat']} "
              f"(content {r['base_content']}); "
              f"style alone {when(r['styled'])}; style with content kept {when(r['reached'])}; "
              f"whole run {r['train_wall_s']} s, {r['train_cpu_s']} s CPU", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"preset": args.preset, "set": args.set, "threads": torch.get_num_threads(),
                                         "load": os.getloadavg(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
