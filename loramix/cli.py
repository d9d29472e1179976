"""The `loramix` command line: `loramix train …` (more sub-commands join as the engine grows).

Errors from the engine (`LoramixError`) are printed as one sentence, never as a traceback.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from loramix.config import field_specs, load_config
from loramix.errors import LoramixError
from loramix.events import CancelToken, TrainEvent


def _fields_help() -> str:
    lines = ["config fields (set with --set section.field=value; lists are comma-separated,",
             "sample.prompts is |-separated):"]
    for spec in field_specs():
        lines.append(f"  {spec.name} = {spec.default!r}")
        choices = spec.metadata.get("choices")
        lines.append(f"      {spec.help}" + (f" [{' | '.join(choices)}]" if choices else ""))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loramix", description="Train and blend Stable Diffusion LoRA adapters.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a LoRA on a folder of images",
                           formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_fields_help(),
                           description="Train a LoRA. Settings layer: defaults -> --preset -> --config -> "
                                       "--data/--output/--name -> --set.")
    train.add_argument("--preset", help="preset TOML file (e.g. presets/demo-cpu.toml)")
    train.add_argument("--config", help="your own TOML file, applied after the preset")
    train.add_argument("--data", help="image folder (dataset.data_dir)")
    train.add_argument("--output", help="output folder (output.output_dir)")
    train.add_argument("--name", help="output file name without extension (output.output_name)")
    train.add_argument("--base", help="base model folder or hub id (model.base_model)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                       help="override one config field; repeatable")
    train.add_argument("--resume", help="continue from a …-state.safetensors file (train.resume_from)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _train(args: argparse.Namespace) -> int:
    from trainers.lora_trainer import train

    shortcuts = {"dataset.data_dir": args.data, "output.output_dir": args.output,
                 "output.output_name": args.name, "model.base_model": args.base, "train.resume_from": args.resume}
    overrides = [f"{k}={v}" for k, v in shortcuts.items() if v is not None] + args.overrides
    config = load_config(args.preset, args.config, overrides=overrides)

    cancel = CancelToken()

    def on_sigint(_sig, _frame):
        if cancel.cancelled:
            raise KeyboardInterrupt
        print("\nStopping after this step and saving a checkpoint (Ctrl-C again to abort now).", file=sys.stderr)
        cancel.cancel()

    signal.signal(signal.SIGINT, on_sigint)
    bar = None

    def on_event(event: TrainEvent) -> None:
        nonlocal bar
        if args.quiet:
            return
        from tqdm import tqdm

        if event.kind == "start":
            bar = tqdm(total=event.total, initial=event.step, unit="step", dynamic_ncols=True)
        elif event.kind == "step" and bar is not None:
            bar.update(event.step - bar.n)
            bar.set_postfix(loss=f"{event.loss:.4f}", lr=f"{event.lr:.2e}")
        elif event.kind in ("sample", "checkpoint"):
            (bar.write if bar else print)(f"{event.kind} at step {event.step}: {', '.join(event.paths)}")
        elif event.kind == "log":
            print(event.message, file=sys.stderr)

    result = train(config, on_event, cancel)
    if bar is not None:
        bar.close()
    if result.cancelled:
        print(f"Cancelled at step {result.steps}. Checkpoint: {result.lora_path}. "
              f"Resume with --resume {result.state_path}")
        return 130
    if result.lora_path:
        print(f"Saved {result.lora_path}")
    return 0


def quiet_libraries() -> None:
    """Keep diffusers / transformers chatter (load bars, dtype notes) out of the user's terminal."""
    import os

    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from diffusers.utils import logging as dl
    from transformers.utils import logging as tl

    for lib in (dl, tl):
        lib.set_verbosity_error()
        lib.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    quiet_libraries()
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            return _train(args)
    except LoramixError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
