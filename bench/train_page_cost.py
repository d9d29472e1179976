"""What a watching Train tab costs its browser: chromium CPU per second and per Gradio event of one or more pages
on the Train tab, against a fake running job that gains 8 steps a second (samples on disk every 100 steps).

    python bench/train_page_cost.py                       # 1 page in front, 20 s
    python bench/train_page_cost.py --pages 2 --hidden 1  # and one in a background tab
    python bench/train_page_cost.py --poll-s 1            # the Train tab's timer at 1 s instead of POLL_S
    python bench/train_page_cost.py --poll-s 1000         # no ticks: what an idle page costs
    python bench/train_page_cost.py --profile out.cpuprofile   # and the first page's JavaScript profile
    python bench/train_page_cost.py --frame-cap-ms 0     # without the page's cap on idle animation frames

The app runs in this process (no training: bench/train_watchers.py measures a real job); chromium's CPU time is
summed over its processes (psutil), Gradio's own measure of the renderer's main thread (CDP Performance.getMetrics:
TaskDuration, ScriptDuration) beside it. Events are counted where the server runs the tab's `tick` and `catch_up`.
Hidden pages are hidden the way train_watchers.py --background hides them (HIDABLE_JS, HIDE_JS).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from train_tick_cost import fake_run  # noqa: E402
from train_watchers import ARGS, CHROMIUM, HIDABLE_JS, HIDE_JS, chromium_processes, cpu_s  # noqa: E402

from webui import page_js, train_tab  # noqa: E402
from webui.state import AppState  # noqa: E402


def counted(calls: dict):
    """Count the server's calls of the Train tab's tick and catch_up (the page's two timer events)."""
    for name in ("tick", "catch_up"):
        real = getattr(train_tab, name)

        def wrapper(*a, _real=real, _name=name, **k):
            calls[_name] += 1
            return _real(*a, **k)
        setattr(train_tab, name, wrapper)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pages", type=int, default=1)
    p.add_argument("--hidden", type=int, default=0, help="how many of the pages are in a background tab")
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--poll-s", type=float, default=train_tab.POLL_S, help="the Train tab's timer (POLL_S)")
    p.add_argument("--profile", type=Path, help="write the first page's JavaScript CPU profile here")
    p.add_argument("--frame-cap-ms", type=float, default=page_js.FRAME_CAP_MS,
                   help="the page's cap on idle animation frames (webui/page_js.py; 0 = none, as before 2026-12-06)")
    args = p.parse_args(argv)
    from playwright.sync_api import sync_playwright

    from tests.webui.conftest import serve

    train_tab.POLL_S = args.poll_s
    calls = {"tick": 0, "catch_up": 0}
    counted(calls)
    state = AppState.create(Path(tempfile.mkdtemp(prefix="loramix-page-")) / "outputs")
    advance = fake_run(state, 8, 10_000)
    demo, url = serve(state, frame_cap_ms=args.frame_cap_ms)
    stop = threading.Event()

    def feed():  # the job's next second of events, every second
        while not stop.wait(1.0):
            advance()
    threading.Thread(target=feed, daemon=True).start()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pages, cdps = [], []
        for i in range(args.pages):
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            context.add_init_script(HIDABLE_JS)
            page = context.new_page()
            page.goto(url)
            page.locator("#train-progress", has_text="Training").wait_for(timeout=60_000)
            if i >= args.pages - args.hidden:
                page.evaluate(HIDE_JS, True)
            cdp = context.new_cdp_session(page)
            cdp.send("Performance.enable")
            pages.append(page)
            cdps.append(cdp)
        time.sleep(3)

        def metrics() -> dict:
            total = {}
            for cdp in cdps:
                for m in cdp.send("Performance.getMetrics")["metrics"]:
                    total[m["name"]] = total.get(m["name"], 0) + m["value"]
            return total

        processes = chromium_processes()
        cpu0, m0, n0, t0 = cpu_s(processes), metrics(), dict(calls), time.monotonic()
        if args.profile:
            cdps[0].send("Profiler.enable")
            cdps[0].send("Profiler.start")
        time.sleep(args.seconds)
        if args.profile:
            args.profile.write_text(json.dumps(cdps[0].send("Profiler.stop")["profile"]))
        cpu1, m1, dt = cpu_s(processes), metrics(), time.monotonic() - t0
        browser.close()
    stop.set()
    demo.close()
    state.jobs.shutdown(timeout=5)
    events = {k: calls[k] - n0[k] for k in calls}
    spent = cpu1 - cpu0
    print(f"{args.pages} pages ({args.hidden} hidden), timer {args.poll_s:g} s, frame cap {args.frame_cap_ms:g} ms, "
          f"{dt:.1f} s: events {events}")
    print(f"  chromium CPU {spent:.2f} s = {1000 * spent / dt / args.pages:.0f} ms per page-second, "
          f"{1000 * spent / max(sum(events.values()), 1):.0f} ms per event")
    print(f"  renderer main threads: tasks {1000 * (m1['TaskDuration'] - m0['TaskDuration']) / dt:.0f} ms/s, "
          f"of which script {1000 * (m1['ScriptDuration'] - m0['ScriptDuration']) / dt:.0f} ms/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
