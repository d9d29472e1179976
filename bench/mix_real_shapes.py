"""Mixer previews at real SD 1.5 / SDXL shapes against diffusers' load_lora_weights + set_adapters.

Run through `python bench/mix_latency.py --arch sd15|sdxl ...`. One process, phases one after the
other on the same random-weight model: the base alone, loramix (fused = auto, and unfused hooks),
then diffusers (unfused, and fused with fuse_lora). For 1 and 5 full-layer kohya LoRAs (weight 0.5)
it reports the time to load, to the first preview, of a steady preview, of a preview after one
weight change, and the peak RSS each case added over the RSS at the start of its phase (freed heap
is handed back with malloc_trim between phases). Timings are CPU seconds of this process (wall
clock in parentheses): on a shared machine CPU time is the steadier of the two. A preview here stops
at the latents (no VAE decode, the same in every case), so the ratios show the adapters' own cost.
"""

from __future__ import annotations

import ctypes
import gc
import statistics
import tempfile
from pathlib import Path

import torch

from bench.real_shapes import PeakRSS, build_components, clock, kohya_targets, random_kohya_lora, rss_bytes
from loramix.core.quiet import quiet_libraries
from loramix.mix.mixer import Mixer
from loramix.mix.request import PreviewRequest

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
GiB = 1024 ** 3


def trim() -> int:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    return rss_bytes()


def measure(fn):
    """(CPU s, wall s, peak RSS during fn in bytes)."""
    with PeakRSS() as peak:
        w0, c0 = clock()
        fn()
        w1, c1 = clock()
    return c1 - c0, w1 - w0, peak.peak


def fingerprint(modules) -> int:
    """A bit-level checksum of the weights (one layer at a time, no copy of the model)."""
    total = 0
    for m in modules:
        w = m.weight.detach()
        ints = {1: torch.int8, 2: torch.int16, 4: torch.int32}[w.element_size()]
        total += int(w.contiguous().view(ints).long().mul_(2654435761).sum())
    return total


class Table:
    def __init__(self, base_cpu: float):
        self.base_cpu, self.rows = base_cpu, []

    def add(self, who, n, case, cpu, wall, peak=None, start=None, model_bytes=1):
        added = "" if peak is None else f"{(peak - start) / GiB:.2f} ({100 * (peak - start) / model_bytes:.0f}%)"
        ratio = f"{cpu / self.base_cpu:.3f}" if self.base_cpu else ""
        self.rows.append(f"| {who} | {n} | {case} | {cpu:.2f} ({wall:.2f}) | {ratio} | {added} |")
        print(self.rows[-1], flush=True)


def run_real_shapes(args) -> int:
    quiet_libraries()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix=f"mix-{args.arch}-"))
    dtype = DTYPES[args.dtype]
    w0, _ = clock()
    components = build_components(args.arch, dtype, work)
    model_bytes = sum(p.numel() * p.element_size() for m in components.models() for p in m.parameters())
    targets = kohya_targets(components, attention_only=args.layers == "attn")
    adapted = list(dict.fromkeys(targets.values()))
    adapted_bytes = sum(m.weight.numel() * m.weight.element_size() for m in adapted)
    files = [random_kohya_lora(targets, work / f"lora{i}.safetensors", i, args.rank) for i in range(5)]
    del targets
    build_s = clock()[0] - w0
    size = args.size
    req = PreviewRequest("a red circle on the left", seed=1, steps=args.steps, cfg_scale=6.0, width=size, height=size)
    before = fingerprint(adapted)
    start = trim()
    print(f"\n{args.arch}, {args.dtype}: model {model_bytes / GiB:.2f} GiB of parameters, {len(adapted)} adapted "
          f"layers = {adapted_bytes / GiB:.2f} GiB ({100 * adapted_bytes / model_bytes:.0f}% of the model), "
          f"rank {args.rank}, {args.layers} layers; built in {build_s:.0f} s; RSS after build {start / GiB:.2f} GiB; "
          f"{size} px, {args.steps} steps, CFG, {args.threads} thread(s)\n", flush=True)

    mixer = Mixer(components)
    pipe = mixer.pipeline()
    if args.memory_only:
        preview = None
        base_cpu = 0.0
    else:
        def preview(mode="fused"):
            return lambda: mixer_preview(mixer, pipe, req, mode)
        measure(preview())  # warm-up
        base = [measure(preview()) for _ in range(args.repeats)]
        base_cpu = statistics.median(b[0] for b in base)
    table = Table(base_cpu)
    print("| implementation | adapters | case | CPU s (wall s) | × base | peak RSS added, GiB (% of model) |")
    print("| --- | ---: | --- | ---: | ---: | ---: |")
    if not args.memory_only:
        table.add("base model", 0, "preview", base_cpu, statistics.median(b[1] for b in base),
                  max(b[2] for b in base), start, model_bytes)
    probe = PreviewRequest(req.prompt, seed=1, steps=1, cfg_scale=1.0, width=args.probe, height=args.probe)
    if args.memory_only and args.probe:  # one small UNet call: the memory a preview adds beyond the weights
        phase = trim()
        cpu, wall, peak = measure(lambda: mixer_preview(mixer, pipe, probe, None))
        table.add("base model", 0, f"probe: 1 step, {args.probe} px, no CFG", cpu, wall, peak, phase, model_bytes)

    def applied_only(mode="fused"):
        def run():
            with mixer.applied(mode):
                pass
        return run

    # ---- loramix ----
    for n in (1, 5):
        phase = trim()
        cpu, wall, peak = measure(lambda n=n: mixer.set_blend([(f, 0.5, True) for f in files[:n]]))
        table.add("loramix", n, "load files", cpu, wall, peak, phase, model_bytes)
        if args.memory_only and args.probe:  # before anything fused: the hooks' own memory
            cpu, wall, peak = measure(lambda: mixer_preview(mixer, pipe, probe, "unfused"))
            table.add("loramix unfused (hooks)", n, f"probe: 1 step, {args.probe} px, no CFG", cpu, wall, peak,
                      phase, model_bytes)
        first = preview() if preview else applied_only()
        cpu, wall, peak = measure(first)
        table.add("loramix fused", n, "first preview" if preview else "fuse", cpu, wall, peak, phase,
                  model_bytes)
        if preview:
            steady = [measure(preview()) for _ in range(args.repeats)]
            table.add("loramix fused", n, "same blend again", statistics.median(s[0] for s in steady),
                      statistics.median(s[1] for s in steady), max(s[2] for s in steady), phase, model_bytes)
        same = [measure(applied_only()) for _ in range(max(args.repeats, 5))]
        table.add("loramix fused", n, "same blend: applied() alone (the cache check)",
                  statistics.median(c[0] for c in same), statistics.median(c[1] for c in same),
                  max(c[2] for c in same), phase, model_bytes)
        slot = next(iter(mixer.slots))
        changes = []
        for i in range(args.repeats):
            mixer.set_weight(slot, 0.3 if i % 2 == 0 else 0.7)
            changes.append(measure(applied_only()))
        table.add("loramix fused", n, "weight change: re-fuse only", statistics.median(c[0] for c in changes),
                  statistics.median(c[1] for c in changes), max(c[2] for c in changes), phase, model_bytes)
        if preview:
            changes = []
            for i in range(args.repeats):
                mixer.set_weight(slot, 0.4 if i % 2 == 0 else 0.6)
                changes.append(measure(preview()))
            table.add("loramix fused", n, "weight change + preview", statistics.median(c[0] for c in changes),
                      statistics.median(c[1] for c in changes), max(c[2] for c in changes), phase, model_bytes)
            measure(preview("unfused"))  # puts the base back, then hooks
            hooked = [measure(preview("unfused")) for _ in range(args.repeats)]
            table.add("loramix unfused", n, "preview", statistics.median(h[0] for h in hooked),
                      statistics.median(h[1] for h in hooked), max(h[2] for h in hooked), phase, model_bytes)
        originals = mixer.held_bytes()
        with mixer.applied() as how:
            pass
        print(f"loramix, {n} adapter(s): originals kept on the host {originals / GiB:.2f} GiB "
              f"({100 * originals / model_bytes:.0f}% of the model); auto (fuse_budget {mixer.fuse_budget}) "
              f"picks {how}", flush=True)
    for slot in mixer.slots.values():
        slot.enabled = False
    with mixer.applied() as how:
        assert how == "base"
    same = fingerprint(adapted) == before
    print(f"loramix: base bit-identical after every adapter is off: {same}", flush=True)
    mixer.slots.clear()
    mixer.release()

    # ---- diffusers ----
    for n in () if args.skip_diffusers else (1, 5):
        phase = trim()
        names = [f"a{i}" for i in range(n)]

        def load(names=names, n=n):
            for name, f in zip(names, files):
                pipe.load_lora_weights(str(f), adapter_name=name)
            pipe.set_adapters(names, adapter_weights=[0.5] * n)
        cpu, wall, peak = measure(load)
        table.add("diffusers", n, "load_lora_weights + set_adapters", cpu, wall, peak, phase, model_bytes)
        if args.memory_only and args.probe:
            cpu, wall, peak = measure(lambda: pipe_preview(pipe, probe))
            table.add("diffusers unfused", n, f"probe: 1 step, {args.probe} px, no CFG", cpu, wall, peak, phase,
                      model_bytes)
        if preview:
            runs = [measure(lambda: pipe_preview(pipe, req, mixer)) for _ in range(args.repeats + 1)]
            table.add("diffusers unfused", n, "first preview", *runs[0], phase, model_bytes)
            table.add("diffusers unfused", n, "same blend again", statistics.median(r[0] for r in runs[1:]),
                      statistics.median(r[1] for r in runs[1:]), max(r[2] for r in runs[1:]), phase, model_bytes)
        changes = [measure(lambda i=i, names=names, n=n: pipe.set_adapters(
            names, adapter_weights=[0.3 if i % 2 == 0 else 0.7] + [0.5] * (n - 1))) for i in range(args.repeats)]
        table.add("diffusers unfused", n, "weight change: set_adapters only", statistics.median(c[0] for c in changes),
                  statistics.median(c[1] for c in changes), max(c[2] for c in changes), phase, model_bytes)
        pipe.set_adapters(names, adapter_weights=[0.5] * n)
        cpu, wall, peak = measure(lambda names=names: pipe.fuse_lora(adapter_names=names))
        table.add("diffusers fused", n, "fuse_lora", cpu, wall, peak, phase, model_bytes)
        if preview:
            runs = [measure(lambda: pipe_preview(pipe, req, mixer)) for _ in range(args.repeats)]
            table.add("diffusers fused", n, "same blend again", statistics.median(r[0] for r in runs),
                      statistics.median(r[1] for r in runs), max(r[2] for r in runs), phase, model_bytes)

        def refuse(weight, names=names, n=n):
            def run():
                pipe.unfuse_lora()
                pipe.set_adapters(names, adapter_weights=[weight] + [0.5] * (n - 1))
                pipe.fuse_lora(adapter_names=names)
            return run
        changes = [measure(refuse(0.3 if i % 2 == 0 else 0.7)) for i in range(args.repeats)]
        table.add("diffusers fused", n, "weight change: unfuse + set_adapters + fuse",
                  statistics.median(c[0] for c in changes), statistics.median(c[1] for c in changes),
                  max(c[2] for c in changes), phase, model_bytes)
        pipe.unfuse_lora()
        pipe.delete_adapters(names)
        print(f"diffusers, {n} adapter(s): base bit-identical after unfuse_lora + delete_adapters: "
              f"{fingerprint(adapted) == before}", flush=True)
    print("\n" + "\n".join(table.rows))
    return 0


def pipe_preview(pipe, req, mixer=None):
    """The call `Mixer.generate` makes, up to the latents: the VAE decode costs the same in every case and
    is left out, so the ratios show what the adapters cost in the text encoder and the UNet."""
    with torch.no_grad():
        return pipe(req.prompt, num_inference_steps=req.steps, guidance_scale=req.cfg_scale, width=req.width,
                    height=req.height, generator=torch.Generator("cpu").manual_seed(req.seed),
                    output_type="latent").images[0]


def mixer_preview(mixer, pipe, req, mode):
    """As `Mixer.generate`: the blend applied for the request's UNet calls (what `auto` plans by)."""
    with mixer.applied(mode, mixer.unet_calls_of(req)):
        return pipe_preview(pipe, req)
