"""Training-speed benchmark: loramix against diffusers' train_text_to_image_lora.py, same model, data and settings.

    python bench/train_speed.py                                  # loramix only
    python bench/train_speed.py --reference /tmp/ref/train_text_to_image_lora.py
    python bench/train_speed.py --arch sd15 --resolution 256 --batch 1 --rank 16   # real SD 1.5 shapes

Builds a random-weight tiny SD model and a folder of generated captioned images, then trains each
trainer in its own subprocess (with `sys.executable`, so run this with the venv both should use).
Per-step times come from a hook on every optimizer.step() (bench/step_timer.py); steps/s is the
median over the steps after the warm-up. Peak RSS is the child's own ru_maxrss from os.wait4, so
each run's peak is its own; peak VRAM is torch.cuda.max_memory_allocated on CUDA.
Method, results and caveats: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
COLOURS = {"red": (200, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 200), "yellow": (230, 210, 40),
           "purple": (130, 50, 160), "orange": (240, 130, 30), "black": (20, 20, 20), "white": (240, 240, 240)}
SHAPES = ["circle", "square", "stripes"]
STYLE_WORD = "benchstyle"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--reference", default="", help="Path to a local copy of diffusers' "
                   "examples/text_to_image/train_text_to_image_lora.py; also benchmark it.")
    p.add_argument("--skip-loramix", action="store_true", help="Only run the reference.")
    p.add_argument("--model", default="", help="A diffusers SD model folder to use instead of a generated one.")
    p.add_argument("--arch", choices=["tiny", "sd15", "sdxl"], default="tiny", help="Generated model: the tiny "
                   "one (--unet-channels, --vae-channels) or random weights with the real SD 1.5 / SDXL configs "
                   "from loramix/configs, built offline and saved in the work dir (bench/real_shapes.py).")
    p.add_argument("--unet-channels", default="64,128", help="UNet block_out_channels of the generated model.")
    p.add_argument("--vae-channels", default="32,64,64", help="VAE block_out_channels of the generated model "
                   "(latent side = resolution / 2**(n-1)).")
    p.add_argument("--images", type=int, default=16, help="Number of generated training images.")
    p.add_argument("--image-size", type=int, default=0, help="Side of the generated images (0 = resolution); "
                   "larger images cost the reference a bigger decode and resize every step.")
    p.add_argument("--resolution", type=int, default=64, help="Training resolution (multiple of 64).")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank (alpha = rank, as the reference fixes it).")
    p.add_argument("--batch", type=int, default=4, help="Images per step.")
    p.add_argument("--steps", type=int, default=40, help="Optimizer steps per run.")
    p.add_argument("--warmup", type=int, default=5, help="Steps left out of the statistics.")
    p.add_argument("--lr", type=float, default=1e-4, help="Learning rate (constant, AdamW, weight decay 1e-2).")
    p.add_argument("--seed", type=int, default=0, help="Seed of the model, the images and the training.")
    p.add_argument("--repeats", type=int, default=1, help="Runs per trainer, alternated; step times are pooled "
                   "and the peak RSS is the largest.")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads in each run (0 = torch's default). "
                   "1 keeps CPU numbers stable when another process shares the cores.")
    p.add_argument("--work-dir", default="", help="Folder for the model, data and outputs "
                   "(empty = a new temp dir).")
    p.add_argument("--json", default="", help="Also write all measurements to this JSON file.")
    p.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"],
                   help="train.mixed_precision of loramix and --mixed_precision of the reference.")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=KEY=VALUE[,KEY=VALUE]",
                   help="Also run loramix as NAME with these --set overrides (repeatable), alternated with the "
                        "rest, e.g. --variant bf16=train.mixed_precision=bf16.")
    p.add_argument("--child", choices=["loramix"], help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ---- the fixed model and data ---------------------------------------------------------------
def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def make_images(root: Path, n: int, size: int, seed: int) -> tuple[Path, Path]:
    """Write the same n captioned PNGs twice: a loramix folder (same-name .txt captions) and an
    imagefolder for the reference (metadata.jsonl with file_name and text)."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    ours, theirs = root / "data-loramix", root / "data-reference"
    for d in (ours, theirs):
        d.mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    rows = []
    for i in range(n):
        bg, fg = (COLOURS[names[j]] for j in rng.choice(len(names), 2, replace=False))
        shape = SHAPES[i % len(SHAPES)]
        grad = np.linspace(0.6, 1.0, size)[:, None, None]
        pixels = (np.array(bg)[None, None] * grad + rng.normal(0, 12, (size, size, 3))).clip(0, 255)
        image = Image.fromarray(pixels.astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(image)
        a, b = sorted(rng.integers(size // 8, size - size // 8, 2))
        if shape == "circle":
            draw.ellipse((a, a, b, b), fill=fg)
        elif shape == "square":
            draw.rectangle((a, b - (b - a) // 2, b, b), fill=fg)
        else:
            for x in range(0, size, max(size // 8, 2)):
                draw.rectangle((x, 0, x + max(size // 16, 1), size), fill=fg)
        caption = f"{STYLE_WORD}, a {_name(fg)} {shape} on {_name(bg)}"
        name = f"img_{i:03d}.png"
        for d in (ours, theirs):
            image.save(d / name)
        (ours / name).with_suffix(".txt").write_text(caption, encoding="utf-8")
        rows.append(json.dumps({"file_name": name, "text": caption}))
    (theirs / "metadata.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return ours, theirs


def _name(rgb) -> str:
    return next(k for k, v in COLOURS.items() if v == tuple(rgb))


def make_model(root: Path, args: argparse.Namespace) -> Path:
    from loramix.embedded.tiny import build_tiny_model

    words = [STYLE_WORD, "on", *COLOURS, *SHAPES]
    if args.arch != "tiny":
        sys.path.insert(0, str(REPO_ROOT))
        from bench.real_shapes import save_model

        return save_model(args.arch, root / f"model-{args.arch}", words)
    return build_tiny_model(root / "model", seed=args.seed, words=words, image_size=args.resolution,
                            unet_channels=_ints(args.unet_channels), vae_channels=_ints(args.vae_channels))


# ---- how each trainer is told the same settings ---------------------------------------------
def loramix_overrides(args: argparse.Namespace, model: Path, data: Path, out: Path) -> list[str]:
    return [f"model.base_model={model}", f"dataset.data_dir={data}", f"dataset.resolution={args.resolution}",
            "dataset.enable_bucket=false", "dataset.crop=center", "dataset.flip_aug=false",
            f"network.rank={args.rank}", f"network.alpha={args.rank}", "optim.optimizer=adamw",
            f"optim.learning_rate={args.lr}", "optim.weight_decay=0.01", "optim.max_grad_norm=1.0",
            "optim.lr_scheduler=constant", f"train.max_steps={args.steps}", f"train.batch_size={args.batch}",
            f"train.mixed_precision={args.mixed_precision}", f"train.seed={args.seed}", f"output.output_dir={out}",
            "output.output_name=bench"]


def reference_args(args: argparse.Namespace, model: Path, data: Path, out: Path) -> list[str]:
    return ["--pretrained_model_name_or_path", str(model), "--train_data_dir", str(data),
            "--image_column", "image", "--caption_column", "text", "--resolution", str(args.resolution),
            "--center_crop", "--rank", str(args.rank), "--train_batch_size", str(args.batch),
            "--max_train_steps", str(args.steps), "--learning_rate", str(args.lr), "--lr_scheduler", "constant",
            "--lr_warmup_steps", "0", "--adam_weight_decay", "0.01", "--max_grad_norm", "1.0",
            "--mixed_precision", args.mixed_precision, "--seed", str(args.seed), "--dataloader_num_workers", "0",
            "--checkpointing_steps", str(10 * args.steps + 1), "--output_dir", str(out),
            "--cache_dir", str(out / "datasets-cache")]


# ---- running one trainer in its own process -------------------------------------------------
@dataclass
class Run:
    trainer: str
    step_times: list[float]  # seconds, after the warm-up
    step_cpu: list[float]  # the child's CPU seconds per step, after the warm-up
    step_rss_mib: float | None  # the largest resident set seen between steps (after each optimizer step)
    first_step_s: float  # from process launch to the end of the first optimizer step
    wall_s: float
    peak_rss_mib: float
    peak_vram_mib: float | None
    threads: int


def run_child(trainer: str, cmd: list[str], timings: Path, warmup: int, log_path: Path) -> Run:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    launched_wall, launched = time.time(), time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage: its peak RSS, not the max of all
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - launched
    if proc.returncode != 0 or not timings.exists():
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise SystemExit(f"{trainer} run failed (exit {proc.returncode}); end of {log_path}:\n{tail}")
    rep = json.loads(timings.read_text(encoding="utf-8"))
    ends = rep["step_ends"]
    times = [b - a for a, b in zip(ends, ends[1:])][max(warmup - 1, 0):]
    cpu_ends = rep.get("step_cpu_ends") or []
    cpu = [b - a for a, b in zip(cpu_ends, cpu_ends[1:])][max(warmup - 1, 0):]
    if not times:
        raise SystemExit(f"{trainer}: only {len(ends)} steps ran; use more --steps than --warmup.")
    vram = rep["peak_vram_bytes"]
    rss = rep.get("step_rss") or []
    return Run(trainer, times, cpu, max(rss) / 2**20 if rss else None, rep["first_step_wall"] - launched_wall, wall, usage.ru_maxrss / 1024,
               vram / 2**20 if vram is not None else None, rep["torch_threads"])


def loramix_child(spec_path: str) -> None:
    """Entry of the loramix subprocess: train with the given overrides, timing every optimizer step."""
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    sys.path[:0] = [str(BENCH_DIR), str(REPO_ROOT)]
    import torch
    from step_timer import StepTimer

    from loramix.core.config import load_config
    from trainers.lora_trainer import train

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    timer = StepTimer().install()
    try:
        train(load_config(overrides=spec["overrides"]))
    finally:
        timer.write(spec["timings"])


def variants(args: argparse.Namespace) -> dict[str, list[str]]:
    """--variant NAME=KEY=VALUE,KEY=VALUE -> {NAME: ["KEY=VALUE", ...]}"""
    out = {}
    for text in args.variant:
        name, _, sets = text.partition("=")
        out[name] = [kv for kv in sets.split(",") if kv]
    return out


def run_trainer(trainer: str, args: argparse.Namespace, root: Path, model: Path, data: dict[str, Path],
                index: int) -> Run:
    out = root / f"out-{trainer}-{index}"
    suffix = 1
    while out.exists():  # a reused --work-dir: a new run folder, since loramix never trains over a run
        out, suffix = root / f"out-{trainer}-{index}-{suffix}", suffix + 1
    out.mkdir(parents=True)
    timings = out / "steps.json"
    if trainer != "reference":
        spec = out / "spec.json"
        extra = variants(args).get(trainer, [])
        spec.write_text(json.dumps({"overrides": loramix_overrides(args, model, data["loramix"], out) + extra,
                                    "timings": str(timings), "threads": args.threads}), encoding="utf-8")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "loramix", "--spec", str(spec)]
    else:
        cmd = [sys.executable, str(BENCH_DIR / "reference_wrapper.py"), "--timings", str(timings),
               "--threads", str(args.threads), str(Path(args.reference).resolve()),
               *reference_args(args, model, data["reference"], out)]
    print(f"[{trainer} #{index + 1}] {' '.join(cmd[:4])} ...  (log: {out / 'train.log'})", file=sys.stderr)
    return run_child(trainer, cmd, timings, args.warmup, out / "train.log")


# ---- the report -----------------------------------------------------------------------------
def summarize(runs: list[Run], steps_per_epoch: int) -> dict:
    times = [t for r in runs for t in r.step_times]
    vram = [r.peak_vram_mib for r in runs if r.peak_vram_mib is not None]
    return {
        "trainer": runs[0].trainer,
        "runs": len(runs),
        "steps_measured": len(times),
        "steps_per_s": 1 / statistics.median(times),
        "cpu_s_per_step": statistics.median(c for r in runs for c in r.step_cpu) if runs[0].step_cpu else None,
        "step_s_p10": sorted(times)[len(times) // 10],
        "step_s_p90": sorted(times)[min(len(times) - 1, len(times) * 9 // 10)],
        "s_per_epoch": statistics.fmean(times) * steps_per_epoch,  # mean, so epoch-boundary costs count
        "first_step_s": statistics.median(r.first_step_s for r in runs),
        "wall_s": statistics.median(r.wall_s for r in runs),
        "peak_rss_mib": max(r.peak_rss_mib for r in runs),
        "step_rss_mib": max((r.step_rss_mib or 0) for r in runs),
        "peak_vram_mib": max(vram) if vram else None,
        "threads": runs[0].threads,
    }


def markdown_table(rows: list[dict]) -> str:
    ref = next((r for r in rows if r["trainer"] == "reference"), None)
    vram = any(r["peak_vram_mib"] is not None for r in rows)
    head = ["trainer", "CPU s/step (median)", "steps/s (median)", "step s p10–p90", "s/epoch", "peak RSS MiB"]
    head += ["peak VRAM MiB"] if vram else []
    head += ["RSS between steps MiB", "launch→1st step s", "speed vs ref", "RSS vs ref"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["trainer"], f"{r['cpu_s_per_step']:.2f}" if r["cpu_s_per_step"] else "–",
                 f"{r['steps_per_s']:.2f}", f"{r['step_s_p10']:.3f}–{r['step_s_p90']:.3f}",
                 f"{r['s_per_epoch']:.2f}", f"{r['peak_rss_mib']:.0f}"]
        cells += [f"{r['peak_vram_mib']:.0f}" if r["peak_vram_mib"] is not None else "–"] if vram else []
        cells += [f"{r['step_rss_mib']:.0f}", f"{r['first_step_s']:.1f}",
                  f"{r['steps_per_s'] / ref['steps_per_s']:.2f}×" if ref else "–",
                  f"{r['peak_rss_mib'] / ref['peak_rss_mib']:.2f}×" if ref else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def describe(args: argparse.Namespace) -> str:
    import torch

    model = args.model or (f"random-weight {args.arch} from loramix/configs" if args.arch != "tiny" else
                           f"generated tiny SD, UNet {_ints(args.unet_channels)}, "
                           f"VAE {_ints(args.vae_channels)}, text dim 32")
    return (f"model: {model}; {args.images} images at {args.image_size or args.resolution}px, resolution "
            f"{args.resolution}, rank {args.rank}, batch {args.batch}, {args.steps} steps ({args.warmup} warm-up), "
            f"mixed_precision {args.mixed_precision}, variants {args.variant or 'none'}, AdamW lr {args.lr}; torch {torch.__version__}, python {sys.executable}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child == "loramix":
        return loramix_child(args.spec)
    sys.path.insert(0, str(REPO_ROOT))
    trainers = ([] if args.skip_loramix else ["loramix", *variants(args)]) + (["reference"] if args.reference else [])
    if not trainers:
        raise SystemExit("Nothing to run: --skip-loramix needs --reference.")
    if args.reference and not Path(args.reference).is_file():
        raise SystemExit(f"--reference {args.reference}: no such file.")
    root = Path(args.work_dir or tempfile.mkdtemp(prefix="loramix-bench-")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    ours, theirs = make_images(root, args.images, args.image_size or args.resolution, args.seed)
    model = Path(args.model).resolve() if args.model else make_model(root, args)
    runs: dict[str, list[Run]] = {t: [] for t in trainers}
    for i in range(args.repeats):
        for trainer in trainers if i % 2 == 0 else trainers[::-1]:
            runs[trainer].append(run_trainer(trainer, args, root, model,
                                             {"loramix": ours, "reference": theirs}, i))
            print(f"  {runs[trainer][-1].trainer} #{i + 1}: CPU s/step {[round(c, 2) for c in runs[trainer][-1].step_cpu]}, "
                  f"peak RSS {runs[trainer][-1].peak_rss_mib:.0f} MiB, between steps "
                  f"{runs[trainer][-1].step_rss_mib or 0:.0f} MiB", file=sys.stderr)
    rows = [summarize(runs[t], math.ceil(args.images / args.batch)) for t in trainers]
    print(describe(args))
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; work dir {root}\n")
    print(markdown_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), "summary": rows,
                                               "runs": {t: [vars(r) for r in rs] for t, rs in runs.items()}},
                                              indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
