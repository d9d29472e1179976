"""The `loramix` command line: `loramix train …` (more sub-commands join as the engine grows).

Errors from the engine (`LoramixError`) are printed as one sentence, never as a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from dataclasses import replace
from pathlib import Path

from loramix.core.allocator import tune_allocator
from loramix.core.config import field_specs, load_config
from loramix.core.environment import check_environment
from loramix.core.errors import LoramixError
from loramix.core.events import CancelToken, TrainEvent
from loramix.core.quiet import quiet_libraries
from loramix.mix.block_weights import UNIFORM_NOTE
from loramix.mix.lora_spec import parse_axis
from loramix.mix.request import PRECISIONS, SAMPLERS, PreviewRequest


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
    sub.add_parser("ui", help="start the web app (see `loramix ui --help`)")
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

    lora_help = ("an adapter and its weight: PATH:WEIGHT or PATH:WEIGHT:TEXT_ENCODER_WEIGHT (weight -2..2), "
                 "optionally :lbw=PRESET (or w=, or the preset right after the weight) or :lbw=17 block weights "
                 "(12 for SDXL), e.g. a.safetensors:0.8:lbw=OUTD; te=/unet= name the weights; repeatable. "
                 + UNIFORM_NOTE)
    mix = sub.add_parser("mix", help="preview a blend of LoRAs on a base model")
    mix.add_argument("--base", default="", help="base model folder or hub id (default: the embedded model)")
    mix.add_argument("--lora", action="append", default=[], help=lora_help)
    mix.add_argument("--mix", help="a mix preset TOML (adapters, weights, block weights, on/off); --lora adds to it")
    # Picture settings: a flag wins, then the --mix preset's [request] table, then PreviewRequest's defaults
    # (the only defaults; the Mix tab starts from them too).
    d = PreviewRequest("")
    mix.add_argument("--prompt", help="what to draw (default: the --mix preset's prompt)")
    mix.add_argument("--negative", help="negative prompt")
    mix.add_argument("--seed", type=int, help=f"default {d.seed}")
    mix.add_argument("--steps", type=int, help=f"default {d.steps}")
    mix.add_argument("--cfg", type=float, help=f"guidance scale, default {d.cfg_scale:g}")
    mix.add_argument("--sampler", help=f"one of {', '.join(SAMPLERS)}; default {d.sampler}")
    mix.add_argument("--size", type=int, help="image side in pixels (default: the model's)")
    mix.add_argument("--grid-x", help="X/Y grid axis: weight:NAME:v1,v2,…, lbw:NAME:PRESET,…, seed:s1,s2,…, "
                                      "cfg:c1,c2,… or sampler:ddim,euler (NAME: the adapter's file stem or path)")
    mix.add_argument("--grid-y", help="second grid axis (default: the given seed)")
    mix.add_argument("--mode", default="auto", choices=["auto", "fused", "unfused"])
    mix.add_argument("--precision", default="auto", choices=list(PRECISIONS),
                     help="what the preview computes in; auto: bf16 on a CPU that multiplies bf16 natively (a "
                          "full-size base), fp16 on a GPU, else fp32")
    mix.add_argument("--out", required=True, help="PNG file to write")
    mix.add_argument("--replace", action="store_true", help="replace an existing --out file")
    mix.add_argument("--allow-unsafe", action="store_true", help="also read pickle LoRA files (.ckpt/.pt/.bin)")

    merge = sub.add_parser("merge", help="merge a blend into one LoRA file")
    merge.add_argument("--lora", action="append", default=[], required=True, help=lora_help)
    merge.add_argument("--rank", type=int, default=0, help="SVD down to this rank (default: exact concat merge)")
    merge.add_argument("--out", required=True, help=".safetensors file to write")
    merge.add_argument("--replace", action="store_true", help="replace an existing --out file")
    merge.add_argument("--precision", default="fp16", choices=["fp16", "bf16", "fp32"])
    merge.add_argument("--allow-unsafe", action="store_true", help="also read pickle LoRA files")

    bake = sub.add_parser("bake", help="fuse a blend into the base model and save it as a diffusers folder")
    bake.add_argument("--base", default="", help="base model folder or hub id (default: the embedded model)")
    bake.add_argument("--lora", action="append", default=[], required=True, help=lora_help)
    bake.add_argument("--out", required=True, help="folder to write (diffusers layout)")
    bake.add_argument("--single-file", help="also write one .safetensors checkpoint in the original layout")
    bake.add_argument("--replace", action="store_true",
                      help="replace an existing --out folder (only one that loramix baked) and --single-file")
    bake.add_argument("--allow-unsafe", action="store_true", help="also read pickle LoRA files")
    _add_dataset_commands(sub)
    _add_caption_command(sub)
    masks = sub.add_parser("masks", help="write a foreground mask <stem>.mask.png per image (CLIPSeg)")
    masks.add_argument("dir", help="the image folder")
    masks.add_argument("--prompt", required=True, help="what the mask covers, e.g. 'person'")
    masks.add_argument("--model", default="CIDAS/clipseg-rd64-refined", help="CLIPSeg hub id or folder")
    masks.add_argument("--threshold", type=float, default=0.0,
                       help="0: a soft mask (probability x 255); else white where the probability reaches it")
    masks.add_argument("--replace", action="store_true", help="replace existing masks")
    return parser


class _EditAction(argparse.Action):
    """Collects tag edits in the order given on the command line (they apply in that order)."""

    def __call__(self, parser, namespace, values, option_string=None):
        from trainers.tags import TagEdit

        values = values if isinstance(values, list) else ([] if values is None else [values])
        try:
            edit = TagEdit(self.const, *values)
        except LoramixError as e:
            parser.error(str(e))
        namespace.edits = [*(getattr(namespace, "edits", None) or []), edit]


def _add_dataset_commands(sub) -> None:
    tags = sub.add_parser("tags", help="edit the tags of a folder's captions in bulk (with a preview and undo)",
                          description="Apply tag edits, in the order given, to every caption of DIR (or the "
                                      "images named by --only). Tags compare lower-cased, as kohya counts them.")
    tags.add_argument("dir", help="the image folder (dataset.data_dir)")
    tags.set_defaults(edits=[])
    tags.add_argument("--add", action=_EditAction, const="add", metavar="TAG", help="add a tag (last; see --first)")
    tags.add_argument("--first", action="store_true", help="--add puts its tag first")
    tags.add_argument("--remove", action=_EditAction, const="remove", metavar="TAG", help="remove a tag")
    tags.add_argument("--rename", action=_EditAction, const="rename", nargs=2, metavar=("OLD", "NEW"),
                      help="a whole tag OLD becomes NEW")
    tags.add_argument("--replace", action=_EditAction, const="replace", nargs=2, metavar=("OLD", "NEW"),
                      help="the words OLD inside any tag or sentence become NEW")
    tags.add_argument("--dedupe", action=_EditAction, const="dedupe", nargs=0, help="drop repeated tags")
    tags.add_argument("--sort", action=_EditAction, const="sort", nargs=0, help="sort the tags")
    tags.add_argument("--trigger", action=_EditAction, const="trigger", metavar="WORD",
                      help="put the trigger word first, once")
    tags.add_argument("--only", action="append", default=[], metavar="IMAGE",
                      help="edit only this image (a path relative to DIR, or a glob); repeatable")
    tags.add_argument("--ext", default=".txt", help="caption extension (.txt or .caption)")
    tags.add_argument("--dry-run", action="store_true", help="show the changes, write nothing")
    tags.add_argument("--undo", action="store_true", help="put back the captions the last save changed")


def _add_caption_command(sub) -> None:
    import dataclasses

    from loramix.core.config import CaptionConfig

    caption = sub.add_parser("caption", help="caption every image of a folder with a captioner model",
                             description="Write <image stem><extension> beside each image of DIR. An existing "
                                         "caption is kept unless --mode says otherwise.")
    caption.add_argument("dir", help="the image folder")
    for f in dataclasses.fields(CaptionConfig):  # the flags are the config's fields
        if f.name == "data_dir":
            continue
        flag = "--ext" if f.name == "caption_extension" else "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            caption.add_argument(flag, dest=f.name, default=f.default, action=argparse.BooleanOptionalAction,
                                 help=f.metadata["help"])
        else:
            caption.add_argument(flag, dest=f.name, default=f.default, type=type(f.default),
                                 help=f.metadata["help"], choices=f.metadata.get("choices"))
    caption.add_argument("--quiet", action="store_true", help="no progress bar")


def _caption(args) -> int:
    from loramix.core.config import CaptionConfig
    from trainers.captioner import caption_folder

    values = {k: v for k, v in vars(args).items() if k in CaptionConfig.__dataclass_fields__}
    config = CaptionConfig(data_dir=args.dir, **values).validate()
    cancel = CancelToken()
    bar = None

    def on_event(event: TrainEvent) -> None:
        nonlocal bar
        if event.kind == "start":
            print(event.message, file=sys.stderr)
            if not args.quiet and event.total:
                from tqdm import tqdm

                bar = tqdm(total=event.total, unit="image", dynamic_ncols=True)
        elif event.kind == "step" and bar is not None:
            bar.update(event.step - bar.n)
        elif event.kind in ("warning", "log"):
            (bar.write if bar else print)(("warning: " if event.kind == "warning" else "") + event.message,
                                          file=sys.stderr)

    try:
        with _ctrl_c_cancels(cancel, "Stopping after this batch (Ctrl-C again to stop at once)."):
            result = caption_folder(config, on_event, cancel)
    finally:
        if bar is not None:
            bar.close()
    return 130 if result.cancelled else 0


def _masks(args) -> int:
    from trainers.clipseg_masks import make_masks

    result = make_masks(args.dir, args.prompt, args.model, args.threshold, args.replace,
                        on_event=lambda e: print(e.message, file=sys.stderr) if e.kind in ("start", "log") else None)
    for failure in result.failed:
        print(f"warning: {failure}", file=sys.stderr)
    return 0


def _tags(args) -> int:
    from trainers.tags import TagEdit, plan_edits, save_changes, undo_last

    if args.undo:
        restored = undo_last(args.dir)
        print(f"Put back {len(restored)} captions in {args.dir}.")
        return 0
    edits = [TagEdit(e.op, e.tag, e.new, first=args.first) if e.op == "add" else e for e in args.edits or []]
    changes = plan_edits(args.dir, args.ext, edits, args.only)
    for change in changes:
        print(f"{change.image}:\n  - {change.before}\n  + {change.after}")
    if args.dry_run or not changes:
        print(f"{len(changes)} captions would change ({'; '.join(e.describe() for e in edits)}); nothing written.")
        return 0
    save_changes(args.dir, args.ext, changes)
    print(f"Saved {len(changes)} captions; `loramix tags {args.dir} --undo` puts them back.")
    return 0


def _mixer_with(args, blend=None):
    from loramix.mix.mix_preset import apply_mix_preset, build_blend
    from loramix.mix.mixer import Mixer

    if blend is None:
        blend = build_blend(getattr(args, "mix", None), args.lora)
    import torch

    # a bake is written from fp32 weights on a CPU (Mixer.bake), so `loramix bake` loads the base in fp32 once
    precision = getattr(args, "precision", None) or ("auto" if torch.cuda.is_available() else "fp32")
    mixer = Mixer.from_base(args.base, mode=getattr(args, "mode", "auto"), precision=precision)
    apply_mix_preset(mixer, blend, allow_unsafe=args.allow_unsafe)
    return mixer


def preview_request(args, blend) -> PreviewRequest:
    """`loramix mix`'s request: each flag given wins, then the --mix preset's [request], then the defaults;
    checked before any model loads."""
    flags = {"prompt": args.prompt, "negative_prompt": args.negative, "seed": args.seed, "steps": args.steps,
             "cfg_scale": args.cfg, "sampler": args.sampler}
    req = replace(blend.request or PreviewRequest(""), **{k: v for k, v in flags.items() if v is not None})
    if args.size is not None:
        req = replace(req, width=args.size, height=args.size)
    if not req.prompt.strip():
        raise LoramixError("--prompt: say what to draw (or give a --mix preset whose [request] has a prompt).")
    return req.validate()


def _mix(args) -> int:
    from loramix.core.writer import check_target, save_png
    from loramix.mix.mix_preset import adapter_names, build_blend
    from loramix.mix.xy_grid import Axis, adapter_name, xy_grid

    check_target(args.out, replace=args.replace, field="--out")  # before the model loads
    blend = build_blend(args.mix, args.lora)
    req = preview_request(args, blend)
    if args.grid_y and not args.grid_x:
        raise LoramixError("--grid-y needs --grid-x.")
    axes = [parse_axis(args.grid_x), parse_axis(args.grid_y) if args.grid_y else Axis("seed", [req.seed])] \
        if args.grid_x else []
    for axis in axes:  # before the model loads: a wrong adapter name costs no wait
        if axis.kind in ("weight", "lbw"):
            axis.adapter = adapter_name(axis.adapter, adapter_names(blend))
    mixer = _mixer_with(args, blend)
    if axes:
        image = xy_grid(mixer, req, *axes)
    else:
        image = mixer.generate(req)
    save_png(image, args.out, replace=args.replace, field="--out")
    print(f"Saved {args.out}")
    return 0


def _merge(args) -> int:
    from loramix.core.writer import check_target
    from loramix.formats.lora_io import read_lora
    from loramix.mix.merge import Source, save_blend
    from loramix.mix.mix_preset import build_blend, mix_preset_metadata

    check_target(args.out, replace=args.replace, field="--out")  # before any file is read
    blend = build_blend(None, args.lora)
    sources = [Source(Path(e.path).stem, read_lora(e.path, allow_unsafe=args.allow_unsafe), e.weight, e.te_weight,
                      e.blocks) for e in blend.adapters if e.enabled]
    adapter, report = save_blend(sources, args.out, rank=args.rank, precision=args.precision,
                                 recipe=mix_preset_metadata(blend), replace=args.replace, field="--out")
    extra = f", relative Frobenius error {report.relative_error:.4f} (worst layer " \
            f"{report.worst_layer_error:.4f})" if args.rank else " (exact)"
    print(f"Saved {args.out}: {len(adapter.layers)} layers, {report.method} merge{extra}")
    return 0


def _bake(args) -> int:
    from loramix.mix.mixer import check_bake_target

    check_bake_target(args.out, args.single_file, args.replace)  # before the model loads
    out = _mixer_with(args).bake(args.out, args.single_file, replace=args.replace)
    print(f"Saved {out}" + (f" and {args.single_file}" if args.single_file else ""))
    return 0


@contextlib.contextmanager
def _ctrl_c_cancels(cancel: CancelToken, saying: str):
    """Inside the block, a first Ctrl-C sets `cancel` (the engine stops after its step or batch) and says so; a
    second one raises KeyboardInterrupt, which `main` turns into one sentence. The previous handler comes back."""
    def on_sigint(_sig, _frame):
        if cancel.cancelled:
            raise KeyboardInterrupt
        print("\n" + saying, file=sys.stderr)
        cancel.cancel()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _train(args: argparse.Namespace) -> int:
    shortcuts = {"dataset.data_dir": args.data, "output.output_dir": args.output,
                 "output.output_name": args.name, "model.base_model": args.base, "train.resume_from": args.resume}
    overrides = [f"{k}={v}" for k, v in shortcuts.items() if v is not None] + args.overrides
    config = load_config(args.preset, args.config, overrides=overrides)

    cancel = CancelToken()

    with _ctrl_c_cancels(cancel, "Stopping after this step and saving a checkpoint (Ctrl-C again to abort now)."):
        return _run_training(args, config, cancel)


def _run_training(args: argparse.Namespace, config, cancel: CancelToken) -> int:
    from trainers.lora_trainer import train

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
        elif event.kind == "warning":
            message = f"warning: {event.message}"
            bar.write(message, file=sys.stderr) if bar else print(message, file=sys.stderr)

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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    tune_allocator()  # before any thread starts or tensor is made (loramix.core.allocator)
    try:  # a broken dependency set is one sentence here, not a traceback from inside a library later
        check_environment()
    except LoramixError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if argv[:1] == ["ui"]:  # the web app parses its own flags
        from webui.app import main as ui_main

        return ui_main(argv[1:])
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    quiet_libraries()
    args = build_parser().parse_args(argv)
    try:
        commands = {"train": _train, "mix": _mix, "merge": _merge, "bake": _bake, "tags": _tags,
                    "caption": _caption, "masks": _masks}
        return commands[args.command](args)
    except LoramixError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C in `train`, or the first one elsewhere
        print("\nerror: stopped at once by Ctrl-C; a file being written was left unfinished as a hidden temp file "
              "(the next run in that folder removes it) and every file saved before is kept.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
