"""Training-step levers at real SD shapes, one at a time, in one process (random weights, offline).

    python bench/train_levers.py --arch sd15 --size 256 --rounds 2 --threads 1
    python bench/train_levers.py --arch sd15 --levers baseline,compile --rounds 1   # compile alone

The step is loramix's: cached latents and text embeddings, a PEFT LoRA (rank 16, alpha 16) on the
UNet attention projections, noise at a random timestep, MSE on epsilon, backward, AdamW. Each lever
changes one thing against `baseline`; levers run in turns (round-robin, `--rounds` times) so a busy
neighbour slows all of them alike. `reference-like` adds what diffusers' train_text_to_image_lora.py
does every step on top (VAE encode of the batch and the text encoder forward): the work of the
reference script's step in this same process, not the script itself.

Reports the median CPU seconds per step (wall in parentheses), images/s, the gain over baseline and
the peak RSS a step adds over the RSS before it (activations, gradients, optimizer state).
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.mix_real_shapes import trim  # noqa: E402
from bench.real_shapes import PeakRSS, build_components, clock  # noqa: E402
from loramix.core.quiet import quiet_libraries  # noqa: E402

LEVERS = ["baseline", "channels_last", "sdpa_math", "adamw_foreach_off", "adamw_fused", "bf16_autocast",
          "grad_checkpointing", "batch2", "reference-like", "compile"]
MiB = 1024 ** 2


@dataclass
class Lever:
    batch: int = 1
    channels_last: bool = False
    sdpa: str = "default"
    adamw: dict | None = None
    autocast: bool = False
    checkpointing: bool = False
    encode_every_step: bool = False
    compile: bool = False


def lever(name: str, batch: int) -> Lever:
    return {
        "baseline": Lever(batch),
        "channels_last": Lever(batch, channels_last=True),
        "sdpa_math": Lever(batch, sdpa="math"),
        "adamw_foreach_off": Lever(batch, adamw={"foreach": False}),
        "adamw_fused": Lever(batch, adamw={"fused": True}),
        "bf16_autocast": Lever(batch, autocast=True),
        "grad_checkpointing": Lever(batch, checkpointing=True),
        "batch2": Lever(2 * batch),
        "reference-like": Lever(batch, encode_every_step=True),
        "compile": Lever(batch, compile=True),
    }[name]


class Bench:
    def __init__(self, args):
        from peft import LoraConfig

        self.args = args
        if args.arch == "tiny":  # the embedded demo model: where a real-shape compile is too slow to wait for
            from loramix.formats.families import load_base_model

            self.c = load_base_model("")
            for module in self.c.models():
                module.eval().requires_grad_(False)
        else:
            self.c = build_components(args.arch, torch.float32, Path(tempfile.mkdtemp(prefix="levers-")))
        unet = self.c.unet
        unet.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian",
                                    target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
        self.params = [p for p in unet.parameters() if p.requires_grad]
        unet.train()
        g = torch.Generator().manual_seed(0)
        n = args.size // 8
        big = 4
        self.pixels = torch.randn(big, 3, args.size, args.size, generator=g).clamp(-1, 1)
        self.latents = torch.randn(big, 4, n, n, generator=g)
        ids = self.c.tokenizer(["a red circle on the left"] * big, padding="max_length", return_tensors="pt").input_ids
        self.ids = ids
        with torch.no_grad():
            self.text = self.c.text_encoder(ids)[0]
        self.extra = {}
        if self.c.text_encoder_2 is not None:  # SDXL: pooled embeds and size/crop ids
            with torch.no_grad():
                out2 = self.c.text_encoder_2(ids, output_hidden_states=True)
            self.text = torch.cat([self.text, out2.hidden_states[-2]], -1)
            self.extra = {"text_embeds": out2.text_embeds,
                          "time_ids": torch.tensor([[args.size, args.size, 0, 0, args.size, args.size]] * big,
                                                   dtype=torch.float32)}
        self.compiled = None
        if "reference-like" not in args.levers.split(","):  # SDXL fp32: the encoders' 3.6 GB would not be used
            self.c.vae = self.c.text_encoder = self.c.text_encoder_2 = None
            trim()

    def step(self, lv: Lever, opt) -> None:
        b = lv.batch
        unet = self.c.unet
        if lv.encode_every_step:
            with torch.no_grad():
                latents = self.c.vae.encode(self.pixels[:b]).latent_dist.sample() * 0.18215
                text = self.c.text_encoder(self.ids[:b])[0]
            if self.extra:
                text = self.text[:b]  # SDXL's second encoder is not timed here
        else:
            latents, text = self.latents[:b], self.text[:b]
        if lv.channels_last:
            latents = latents.contiguous(memory_format=torch.channels_last)
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (b,))
        noisy = self.c.noise_scheduler.add_noise(latents, noise, t)
        kwargs = {"added_cond_kwargs": {k: v[:b] for k, v in self.extra.items()}} if self.extra else {}
        model = self.compiled if lv.compile else unet
        sdpa = contextlib.nullcontext()
        if lv.sdpa == "math":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            sdpa = sdpa_kernel([SDPBackend.MATH])
        amp = torch.autocast("cpu", dtype=torch.bfloat16) if lv.autocast else contextlib.nullcontext()
        with sdpa, amp:
            pred = model(noisy, t, text, **kwargs).sample
        loss = F.mse_loss(pred.float(), noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def run(self, name: str, steps: int, warmup: int):
        lv = lever(name, self.args.batch)
        unet = self.c.unet
        unet.to(memory_format=torch.channels_last if lv.channels_last else torch.contiguous_format)
        if lv.checkpointing:
            unet.enable_gradient_checkpointing()
        else:
            unet.disable_gradient_checkpointing()
        if lv.compile and self.compiled is None:
            self.compiled = torch.compile(unet)
        opt = torch.optim.AdamW(self.params, lr=1e-4, weight_decay=1e-2, **(lv.adamw or {}))
        times = []
        trim()
        child0 = children_cpu()
        with PeakRSS() as peak:
            for _ in range(warmup + steps):
                w0, c0 = clock()
                self.step(lv, opt)
                w1, c1 = clock()
                times.append((c1 - c0, w1 - w0))
                if len(times) == 1:
                    self.first_children_cpu = children_cpu() - child0  # e.g. inductor's gcc runs
        unet.disable_gradient_checkpointing()
        return times[:warmup], times[warmup:], peak.peak - peak.start, lv.batch


def children_cpu() -> float:
    """CPU seconds of this process's finished child processes (the C++ compiler under torch.compile)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=["sd15", "sdxl", "tiny"], default="sd15")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--steps", type=int, default=3, help="timed steps per lever per round")
    p.add_argument("--warmup", type=int, default=1, help="untimed first steps per lever per round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--levers", default=",".join(x for x in LEVERS if x != "compile"))
    args = p.parse_args(argv)
    quiet_libraries()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    names = args.levers.split(",")
    bench = Bench(args)
    results = {n: {"warm": [], "steps": [], "peak": 0, "batch": 1} for n in names}
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            warm, steps, peak, batch = bench.run(name, args.steps, args.warmup)
            res = results[name]
            res["warm"] += warm
            res["steps"] += steps
            res["peak"], res["batch"] = max(res["peak"], peak), batch
            print(f"round {r + 1} {name}: steps CPU s {[round(c, 2) for c, _ in steps]}, first {warm[0][0]:.1f} s "
                  f"(wall {warm[0][1]:.1f} s, child processes CPU {bench.first_children_cpu:.1f} s), "
                  f"peak +{peak / MiB:.0f} MiB", flush=True)
    base = results.get("baseline")
    base_ips = base and base["batch"] / statistics.median(c for c, _ in base["steps"])
    print(f"\n{args.arch}, {args.size} px, batch {args.batch}, rank {args.rank} attention LoRA, fp32 weights, "
          f"{args.threads} thread(s), {args.rounds} round(s) x {args.steps} steps (+{args.warmup} warm-up); "
          f"process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB\n")
    print("| lever | CPU s / step (wall) | images/s | × baseline | first step CPU s (wall) | peak RSS added MiB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, res in results.items():
        cpu = statistics.median(c for c, _ in res["steps"])
        wall = statistics.median(w for _, w in res["steps"])
        ips = res["batch"] / cpu
        gain = f"{ips / base_ips:.2f}" if base_ips else ""
        print(f"| {name} | {cpu:.2f} ({wall:.2f}) | {ips:.3f} | {gain} | {res['warm'][0][0]:.1f} ({res['warm'][0][1]:.1f}) | "
              f"{res['peak'] / MiB:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
