"""The loramix web app: Train and Mix tabs over the headless engine; `loramix ui` / `python -m webui`."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import gradio as gr

from loramix.config import load_config
from loramix.errors import LoramixError
from loramix.mixer import PreviewRequest
from webui import mix_tab, train_tab
from webui.state import AppState

CSS = """
#train-progress progress { height: 14px; }
#train-error p, #mix-status p { margin: 0.2em 0; }
#mix-image img { min-width: 256px; min-height: 256px; object-fit: contain; image-rendering: pixelated; }
"""


def api_train(preset: str, data_dir: str, output_name: str, overrides: list[str], state: AppState) -> str:
    """Train and wait; returns the LoRA file path. Same engine and job queue as the Start button."""
    presets = state.presets()
    path = presets.get(preset, preset)
    try:
        config = load_config(path, overrides=[f"dataset.data_dir={data_dir}", f"output.output_name={output_name}",
                                              f"output.output_dir={state.outputs / output_name}", *overrides])
        job = state.jobs.wait(state.jobs.submit(config), timeout=3600)
    except LoramixError as e:
        raise gr.Error(str(e)) from e
    if job.status != "done":
        raise gr.Error(job.error or f"training ended: {job.status}")
    return str(job.lora_path)


def api_generate(base: str, loras: list[str], prompt: str, negative_prompt: str, seed: int, steps: int,
                 cfg_scale: float, size: int, state: AppState) -> str:
    """One preview; `loras` are PATH:WEIGHT strings. Returns a PNG path."""
    from loramix.lora_spec import parse_lora_spec

    try:
        with state.mixer_lock:
            mixer = state.mixer(base)
            mixer.set_blend([(p, w, True) for p, w, _ in map(parse_lora_spec, loras)])
            image = mixer.generate(PreviewRequest(prompt, negative_prompt, int(seed), int(steps), float(cfg_scale),
                                                  "ddim", int(size), int(size)))
    except LoramixError as e:
        raise gr.Error(str(e)) from e
    out = Path(tempfile.mkdtemp(prefix="loramix-")) / "preview.png"
    image.save(out)
    return str(out)


def build_app(state: AppState) -> gr.Blocks:
    with gr.Blocks(title="loramix") as demo:
        gr.Markdown("# loramix\nTrain a LoRA on your images, then blend LoRAs with sliders.")
        with gr.Tabs() as tabs:
            with gr.Tab("Train", id="train"):
                train = train_tab.build(state)
            with gr.Tab("Mix", id="mix"):
                mix = mix_tab.build(state)
        train.send_to_mix.click(mix_tab.send_to_mix(mix, state), {mix.count, *mix.files},
                                [mix.count, *mix.files, *mix.rows], api_visibility="private").then(
            lambda: gr.Tabs(selected="mix"), None, tabs, api_visibility="private")
        demo.load(train.follow, None, train.live, show_progress="hidden", api_visibility="private")

        def train_endpoint(preset: str, data_dir: str, output_name: str, overrides: list[str]) -> str:
            return api_train(preset, data_dir, output_name, overrides, state)

        def generate_endpoint(base: str, loras: list[str], prompt: str, negative_prompt: str, seed: int,
                              steps: int, cfg_scale: float, size: int) -> str:
            return api_generate(base, loras, prompt, negative_prompt, seed, steps, cfg_scale, size, state)

        gr.api(train_endpoint, api_name="train")
        gr.api(generate_endpoint, api_name="generate")
    return demo


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="loramix ui", description="Start the loramix web app.")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--listen", action="store_true", help="listen on all network interfaces (default: 127.0.0.1 only)")
    p.add_argument("--auth", help="require a login, as user:password")
    p.add_argument("--outputs", default="outputs", help="folder for trained LoRAs, uploads and presets")
    p.add_argument("--lora-dir", default="", help="your own folder of LoRA files (default: OUTPUTS/loras)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from loramix.quiet import quiet_libraries

    args = parse_args(argv)
    quiet_libraries()
    auth = None
    if args.auth:
        if ":" not in args.auth:
            print("error: --auth is written user:password", file=sys.stderr)
            return 2
        auth = tuple(args.auth.split(":", 1))
    host = "0.0.0.0" if args.listen else "127.0.0.1"
    if args.listen:
        print("WARNING: --listen makes loramix reachable from other machines on your network"
              + ("" if auth else " without a password (add --auth user:password)") + ".", file=sys.stderr)
    state = AppState.create(args.outputs, args.lora_dir)
    build_app(state).queue(default_concurrency_limit=2).launch(
        server_name=host, server_port=args.port, auth=auth, css=CSS, allowed_paths=[str(state.outputs)],
        footer_links=["api"])
    return 0
