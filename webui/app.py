"""The loramix web app: Dataset, Train and Mix tabs over the headless engine; `loramix ui` / `python -m webui`.

Security (docs/security.md): 127.0.0.1 by default; every request's Host and Origin must name this
machine (DNS rebinding) and failed logins are throttled (`webui.guard`); uploads are capped and gradio's
cache is cleaned; `--listen` needs `--auth` (or the explicit `--insecure-no-auth`) and then reads only the
app's folders and `--data-root`s, and takes hub ids only with `--allow-hub-download`; every path or name
a handler takes goes through `loramix.core.paths`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import gradio as gr
from starlette.middleware import Middleware

from loramix.core import writer
from loramix.core.config import load_config
from loramix.core.environment import check_environment
from loramix.core.errors import LoramixError
from loramix.core.runs import confine_config, drop_if_empty, new_run_folder
from loramix.mix.lora_spec import parse_adapter_spec
from loramix.mix.request import PreviewRequest
from trainers.captions import captions_table
from webui import dataset_tab, mix_tab, train_data, train_tab
from webui.guard import HostCheck, LoginThrottle
from webui.page_js import FRAME_CAP_MS, FrameCap
from webui.state import AppState

CSS = """
#train-progress progress { height: 14px; }
#train-error p, #mix-status p { margin: 0.2em 0; }
#train-queue table { font-size: 0.85em; }
#mix-image img { image-rendering: pixelated; object-fit: scale-down !important; height: 100% !important;
                 max-height: 100% !important; }
#mix-lbw-sliders .mix-lbw-slider { flex: 0 0 124px !important; margin: 0 !important; }
#mix-lbw-sliders .min_value, #mix-lbw-sliders .max_value { display: none; }
.mix-card p { font-size: 0.85em; margin: 0 0 0.4em 0; color: var(--body-text-color-subdued); }
#train-samples .caption-label, #train-thumbs .caption-label { white-space: normal; overflow: visible; }
"""
MAX_UPLOAD_MB = 1024  # one uploaded file (gradio's max_file_size): an SDXL LoRA at rank 128 is under 1 GB
CACHE_S = 3600  # gradio's copies of uploads and shown files are deleted this long after they were made


# ---- the named API endpoints ----------------------------------------------------------------------
def api_train(preset: str, data_dir: str, output_name: str, overrides: list[str], state: AppState) -> str:
    """Train and wait; returns the LoRA file path. Same engine, job queue and confinement as the Start button."""
    try:
        if any(o.strip().startswith("output.") for o in overrides):
            raise LoramixError("overrides: output.* is chosen by the app (a new run folder under outputs/); give "
                               "the name as output_name.")
        config = load_config(state.preset_path(preset), overrides=[
            f"dataset.data_dir={data_dir}", f"output.output_name={output_name}",
            f"output.output_dir={state.outputs / 'pending'}", *overrides])
        config = confine_config(config, state.confinement, state.reserved_folders())
        captions_table(config.dataset.data_dir, config.dataset.caption_extension, config.dataset.resolution)
        config.output.output_dir = str(new_run_folder(state.outputs, config.output.output_name))
        try:
            job = state.jobs.submit(config)
        except LoramixError:
            drop_if_empty(config.output.output_dir)
            raise
        job = state.jobs.wait(job, timeout=3600)
    except LoramixError as e:
        raise gr.Error(str(e)) from e
    if job.status != "done":
        raise gr.Error(job.error or f"training ended: {job.status}")
    return str(job.lora_path)


def api_generate(base: str, loras: list[str], prompt: str, negative_prompt: str, seed: int, steps: int,
                 cfg_scale: float, size: int, state: AppState):
    """One preview; `loras` are PATH:WEIGHT[:lbw=…] strings. Returns the image (never a file path of ours)."""
    try:
        request = PreviewRequest(prompt, negative_prompt, int(seed), int(steps), float(cfg_scale), "ddim",
                                 int(size), int(size))
        request.validate()  # before any model loads
        specs = [parse_adapter_spec(text) for text in loras]
        rows = [(state.adapter_path("loras", s.path), s.weight, True, s.blocks) for s in specs]
        with state.mixer_lock:
            mixer = state.mixer(base)
            mixer.set_blend(rows)
            return mixer.generate(request)
    except LoramixError as e:
        raise gr.Error(str(e)) from e


PREVIEW_DIR = Path(tempfile.gettempdir()) / "loramix-previews"
KEEP_PREVIEWS = 16


def save_preview(image) -> str:
    """Save an API preview as a PNG in one temp folder that keeps only the newest KEEP_PREVIEWS files."""
    import uuid

    folder = writer.make_folder(PREVIEW_DIR)
    path = writer.save_png(image, folder / f"preview-{uuid.uuid4().hex}.png", within=folder)
    writer.prune_files(folder, "preview-*.png", KEEP_PREVIEWS)
    return str(path)


def launch_kwargs(state: AppState, listen: bool = False, allowed_hosts: tuple[str, ...] = (),
                  max_upload_mb: float = MAX_UPLOAD_MB, login_delay_s: float = LoginThrottle.FIRST_DELAY_S,
                  frame_cap_ms: float = FRAME_CAP_MS) -> dict:
    """What `launch()` needs besides host and port: the Host check and login throttle, the upload cap, our CSS,
    the one folder files come from, and the cap on idle animation frames (`webui.page_js`; 0 = none)."""
    middleware = [Middleware(HostCheck, listen=listen, allowed_hosts=allowed_hosts),
                  Middleware(LoginThrottle, first_delay_s=login_delay_s), Middleware(FrameCap, cap_ms=frame_cap_ms)]
    return dict(css=CSS, allowed_paths=[str(state.outputs)], footer_links=["api"],
                max_file_size=int(max_upload_mb * 1024 * 1024), app_kwargs={"middleware": middleware})


def build_app(state: AppState, cache_s: int = CACHE_S) -> gr.Blocks:
    """The page. Uploads are copied into outputs/uploads at once, so gradio's cache keeps its copies `cache_s`."""
    with gr.Blocks(title="loramix", delete_cache=(max(1, cache_s // 4), cache_s)) as demo:
        gr.Markdown("# loramix\nTrain a LoRA on your images, then blend LoRAs with sliders.")
        with gr.Tabs() as tabs:
            with gr.Tab("Train", id="train"):
                train = train_tab.build(state)
            with gr.Tab("Dataset", id="dataset"):
                dataset = dataset_tab.build(state)
            with gr.Tab("Mix", id="mix"):
                mix = mix_tab.build(state)
        show, inputs, outputs = train.first_view
        dataset.use_for_training.click(lambda folder: (folder, gr.Tabs(selected="train")), dataset.folder,
                                       [train.form["dataset.data_dir"], tabs], api_visibility="private").then(
            show, inputs, outputs, api_visibility="private", **train_data.IN_ORDER)
        train.send_to_mix.click(mix_tab.send_to_mix(mix, state, train.selected, train.message, tabs),
                                {mix.count, *mix.files, train.selected, mix.request.prompt},
                                [mix.count, *mix.files, *mix.rows, train.message, tabs, mix.request.prompt],
                                api_visibility="private")
        demo.load(show, inputs, outputs, api_visibility="private", **train_data.IN_ORDER)  # the pre-filled folder
        estimate, inputs, outputs = train.estimate
        demo.load(estimate, inputs, outputs, api_visibility="private")  # the time estimate beside Start
        refresh, inputs, outputs = mix.first_view
        demo.load(refresh, inputs, outputs, api_visibility="private")  # adapters trained since the app started

        def train_endpoint(preset: str, data_dir: str, output_name: str, overrides: list[str]) -> str:
            return api_train(preset, data_dir, output_name, overrides, state)

        def generate_endpoint(base: str, loras: list[str], prompt: str, negative_prompt: str, seed: int,
                              steps: int, cfg_scale: float, size: int) -> str:
            image = api_generate(base, loras, prompt, negative_prompt, seed, steps, cfg_scale, size, state)
            return save_preview(image)

        gr.api(train_endpoint, api_name="train")
        gr.api(generate_endpoint, api_name="generate")
    return demo


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="loramix ui", description="Start the loramix web app.")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--listen", action="store_true",
                   help="serve on all network interfaces (default: 127.0.0.1 only); needs --auth")
    p.add_argument("--auth", help="require a login, as user:password")
    p.add_argument("--insecure-no-auth", action="store_true",
                   help="allow --listen without --auth: anyone on your network can train, write and delete")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="with --listen, a DNS name this machine is reached by (IP addresses always work); repeatable")
    p.add_argument("--outputs", default="outputs", help="folder for trained LoRAs, uploads and presets")
    p.add_argument("--lora-dir", default="", help="your own folder of LoRA files (default: OUTPUTS/loras)")
    p.add_argument("--allow-hub-download", action="store_true",
                   help="with --listen, let web clients name a Hugging Face hub id as the base model (the server "
                        "downloads it); without --listen hub ids always work")
    p.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_MB,
                   help=f"largest file a web client may upload, in MiB (default {MAX_UPLOAD_MB})")
    p.add_argument("--data-root", action="append", default=[], metavar="DIR",
                   help="with --listen, a folder the app may read images, models and LoRAs from (besides its own "
                        "folders); repeatable")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from loramix.core.allocator import tune_allocator
    from loramix.core.quiet import quiet_libraries

    tune_allocator()  # `python -m webui` comes here without the CLI (which sets it first thing too)
    args = parse_args(argv)
    try:
        check_environment()  # `python -m webui` comes here without the CLI's check
    except LoramixError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    auth = None
    if args.auth:
        if ":" not in args.auth:
            print("error: --auth is written user:password", file=sys.stderr)
            return 2
        user, _, password = args.auth.partition(":")
        if not user.strip() or not password:
            print("error: --auth needs a user name and a password, written user:password (neither may be empty).",
                  file=sys.stderr)
            return 2
        auth = (user.strip(), password)
    if args.listen and not auth and not args.insecure_no_auth:
        print("error: --listen serves loramix to your whole network, so it needs a login: add "
              "--auth user:password (or --insecure-no-auth if you really want none).", file=sys.stderr)
        return 2
    if args.listen and not auth:
        print("WARNING: --insecure-no-auth: anyone on your network can use this app.", file=sys.stderr)
    quiet_libraries()
    host = "0.0.0.0" if args.listen else "127.0.0.1"
    state = AppState.create(args.outputs, args.lora_dir, listen=args.listen, data_roots=args.data_root,
                            allow_hub=args.allow_hub_download or not args.listen)
    demo = build_app(state).queue(default_concurrency_limit=2)
    demo.launch(server_name=host, server_port=args.port, auth=auth, quiet=True, prevent_thread_lock=True,
                **launch_kwargs(state, args.listen, tuple(args.allow_host), args.max_upload_mb))
    print(f"loramix is running on http://{'<this machine>' if args.listen else '127.0.0.1'}:{args.port} "
          f"(outputs in {state.outputs}; Ctrl-C stops it: a running job stops after its step and can be resumed)",
          flush=True)
    restored = state.jobs.restored_queue
    interrupted = state.jobs.store.interrupted_at_open
    if restored:
        print(f"{len(restored)} queued jobs from before the restart start now, in order (jobs "
              f"{', '.join(map(str, restored))}).", flush=True)
    if interrupted:
        print(f"Jobs {', '.join(map(str, interrupted))} were running when loramix stopped; the Train tab lists them "
              "as interrupted, with Resume.", flush=True)
    serve_until_stopped(demo, state)
    return 0


def serve_until_stopped(demo, state: AppState) -> None:
    """Wait for Ctrl-C or SIGTERM; then stop the running job after its current step (it saves its state and is
    marked interrupted) and close the server. A second Ctrl-C stops at once, with a sentence."""
    import os
    import signal
    import threading

    stop = threading.Event()

    def on_signal(_signum, _frame):
        if stop.is_set():
            print("\nStopping at once: the running job is left interrupted at its last saved state (Resume it after "
                  "the next start).", file=sys.stderr, flush=True)
            os._exit(130)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    while not stop.wait(0.5):
        pass
    running = state.jobs.current()
    if running is not None and running.status == "running":
        print(f"\nStopping: job {running.id} stops after its current step and saves its state (Ctrl-C again to stop "
              "at once).", file=sys.stderr, flush=True)
    job = state.jobs.shutdown()
    if job is not None:
        print(f"Job {job.id} is interrupted at step {job.step()}; Resume it from the Train tab after the next start.",
              file=sys.stderr, flush=True)
    demo.close()
