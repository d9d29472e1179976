"""Where a watching tab's tick spends the server's CPU: the Train tab's timer events run in-process through
gradio's own `Blocks.process_api` (preprocess, our handler, postprocess, the session's config), against a job
that gains a demo-paced batch of step events between ticks, with its samples on disk.

    python bench/train_tick_cost.py                  # 25 ticks, 1 s apart, 8 steps each (200 steps, samples every 100)
    python bench/train_tick_cost.py --profile 25     # and the 25 most expensive functions (cProfile)

Prints the process CPU time per tick of each timer event, the bytes each tick sends, and (with --profile)
where it goes. The HTTP and server-sent-event transport around `process_api` is not included: bench/
train_watchers.py measures the whole server with real browser tabs.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import resource
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from loramix.core.config import load_config  # noqa: E402
from loramix.core.events import TrainEvent  # noqa: E402
from webui.app import build_app  # noqa: E402
from webui.jobs import Job  # noqa: E402
from webui.state import AppState  # noqa: E402


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def fake_run(state: AppState, steps_per_tick: int, ticks: int):
    """A running demo job; each call of the returned function publishes the next tick's events."""
    config = load_config(ROOT / "presets" / "demo-cpu.toml", validate=False)
    config.output.output_dir = str(state.outputs / "demo")
    config.train.max_steps = steps_per_tick * ticks
    Path(config.output.output_dir).mkdir(parents=True, exist_ok=True)
    job = Job(1, config, status="running")
    job.events.append(TrainEvent("start", 0, config.train.max_steps))
    state.jobs.jobs.append(job)
    step = 0

    def advance():
        nonlocal step
        for _ in range(steps_per_tick):
            step += 1
            job.events.append(TrainEvent("step", step, config.train.max_steps, loss=1 / step, steps_per_s=8.0))
            if step % config.sample.sample_every_n_steps == 0:
                paths = []
                for i in range(len(config.sample.prompts)):
                    path = Path(config.output.output_dir) / "samples" / f"demo-{step:06d}-{i}.png"
                    path.parent.mkdir(exist_ok=True)
                    Image.new("RGB", (64, 64), (step % 255, 80, 160)).save(path)
                    paths.append(str(path))
                job.events.append(TrainEvent("sample", step, config.train.max_steps, paths=tuple(paths)))
            if config.output.save_every_n_steps and step % config.output.save_every_n_steps == 0:
                job.events.append(TrainEvent("checkpoint", step, config.train.max_steps, paths=("demo.safetensors",)))
    return advance


def tick_events(demo) -> list:
    """The tick events of the timers that run from page load (a stopped timer, like the Dataset tab's, ticks only
    while a captioning runs), in the order they were wired."""
    return [fn for fn in demo.fns.values()
            if any(event == "tick" and demo.blocks[block].active for block, event in fn.targets)]


async def run(args) -> None:
    from gradio.state_holder import SessionState

    outputs = Path(tempfile.mkdtemp(prefix="loramix-tick-"))
    state = AppState.create(outputs)
    demo = build_app(state)
    advance = fake_run(state, args.steps_per_tick, args.ticks)
    session = SessionState(demo)
    events = tick_events(demo)
    names = [getattr(fn.fn, "__qualname__", "?") for fn in events]
    names.append("events a tick's changed states start (as the page does)")
    spent, sent = [0.0] * len(names), [0] * len(names)
    profile = cProfile.Profile() if args.profile else None

    async def call(fn, i):
        t0 = cpu()
        if profile:
            profile.enable()
        result = await demo.process_api(fn, [None] * len(fn.inputs), state=session, session_hash="bench",
                                        explicit_call=True)
        if profile:
            profile.disable()
        spent[i] += cpu() - t0
        sent[i] += len(json.dumps(result["data"], default=str))
        return result

    for _ in range(args.ticks):
        await asyncio.sleep(args.poll_s)  # the page's timer: the plot is re-sent by time, not by tick
        advance()
        for i, fn in enumerate(events):
            result = await call(fn, i)
            for state_id in result.get("changed_state_ids", []):
                for follow in demo.fns.values():
                    if (state_id, "change") in [tuple(t) for t in follow.targets]:
                        await call(follow, len(events))
    print(f"{args.ticks} ticks of one tab, {args.steps_per_tick} steps between ticks:")
    for name, s, b in zip(names, spent, sent):
        print(f"  {name:60s} {1000 * s / args.ticks:7.2f} ms CPU/tick  {b / args.ticks / 1024:7.1f} KiB/tick")
    print(f"  {'all tick events':60s} {1000 * sum(spent) / args.ticks:7.2f} ms CPU/tick  "
          f"{sum(sent) / args.ticks / 1024:7.1f} KiB/tick")
    if profile:
        pstats.Stats(profile).sort_stats("cumulative").print_stats(args.profile)
    state.jobs.shutdown(timeout=5)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ticks", type=int, default=200 // 8)
    p.add_argument("--steps-per-tick", type=int, default=8)
    p.add_argument("--poll-s", type=float, default=1.0, help="seconds between ticks (the Train tab's POLL_S)")
    p.add_argument("--profile", type=int, default=0, metavar="N")
    asyncio.run(run(p.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
