"""What watching a training costs: the demo preset through `/train` with 0, 2 and 5 browser tabs open on the
Train tab, each watching the job.

    python bench/train_watchers.py                       # 0, 2 and 5 tabs, 3 rounds, 200 steps
    python bench/train_watchers.py --tabs 0 5 --rounds 5 --steps 200
    python bench/train_watchers.py --tabs 0 5 --background   # all tabs but one hidden, as people watch

Each run starts a fresh `loramix ui` process (its own outputs folder), opens the tabs in headless Debian chromium
(one browser context per tab, so every tab is a foreground page that polls), waits until each shows the Train
tab, then trains `presets/demo-cpu.toml` on `loramix/embedded/styles/pastel` through the named `/train` API
endpoint (the same job queue as the Start button). Measured per run:
- job s: the job's wall time as the job store recorded it (started → finished: model load, steps, samples, saves);
- server CPU s: the server process's user + system CPU time over the same stretch (psutil);
- browser CPU s: the chromium processes' CPU time over it (they share the machine's cores with the server).
With --background every tab but the first is hidden once it shows the Train tab, the way a page in a background
browser tab is: headless pages are always visible, so `HIDABLE_JS` makes `document.visibilityState` say "hidden"
(Gradio's Timer skips its ticks then) and holds `requestAnimationFrame` callbacks until the page shows again (a
browser runs none for a hidden page). The hidden tabs are shown again after the job and must then catch up.
Runs are alternated (0, 2, 5, 0, 2, 5, …) so that a change in the machine's load spreads over every count; the
table gives medians. The tabs are checked to have shown the job at its end ("Done job N"). Threads: the server
runs with OMP_NUM_THREADS=1 (as on a shared box) unless the environment says otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


# A page that can be hidden as a background browser tab is: `document.visibilityState` and no animation frames. Run
# before the page's own scripts (which keep their own reference to requestAnimationFrame); HIDE_JS then hides
# (true) or shows (false) it.
HIDABLE_JS = """(() => {
  const raf = window.requestAnimationFrame.bind(window), held = [];
  window.__hidden = false;
  Object.defineProperty(document, 'visibilityState', {get: () => window.__hidden ? 'hidden' : 'visible',
                                                      configurable: true});
  Object.defineProperty(document, 'hidden', {get: () => window.__hidden, configurable: true});
  window.requestAnimationFrame = (cb) => window.__hidden ? (held.push(cb), 0) : raf(cb);
  window.__show = () => held.splice(0).forEach((cb) => raf(cb));
})()"""
HIDE_JS = """(hidden) => {
  window.__hidden = hidden;
  if (!hidden) window.__show();
  document.dispatchEvent(new Event('visibilitychange'));
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_s(processes: list[psutil.Process]) -> float:
    total = 0.0
    for p in processes:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def chromium_processes() -> list[psutil.Process]:
    """Every chromium process of this bench (the browser and its renderers), found as our descendants."""
    return [p for p in psutil.Process().children(recursive=True) if "chrom" in p.name().lower()]


class Server:
    def __init__(self, outputs: Path, root: Path = ROOT):
        self.port = free_port()
        self.log_path = outputs.parent / "server.log"
        env = {**os.environ, "PYTHONPATH": str(root)}
        env.setdefault("OMP_NUM_THREADS", "1")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "loramix.cli", "ui", "--port", str(self.port),
                                          "--outputs", str(outputs)], stdout=log, stderr=subprocess.STDOUT,
                                         env=env, cwd=root)
        deadline = time.monotonic() + 180
        while "loramix is running" not in self.log_path.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start:\n{self.log_path.read_text(errors='replace')}")
            time.sleep(0.2)
        self.url = f"http://127.0.0.1:{self.port}/"
        self.process = psutil.Process(self.proc.pid)

    def stop(self) -> None:
        self.proc.send_signal(2)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def one_run(browser, tabs: int, steps: int, workdir: Path, root: Path = ROOT, background: bool = False) -> dict:
    from gradio_client import Client

    from loramix.core.job_store import JobStore
    from loramix.embedded import STYLE_SETS

    outputs = workdir / "outputs"
    server = Server(outputs, root)
    contexts, pages = [], []
    try:
        for _ in range(tabs):
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            context.add_init_script(HIDABLE_JS)
            page = context.new_page()
            page.set_default_timeout(120_000)
            page.goto(server.url)
            page.locator("#train-progress").wait_for()
            if background and pages:  # the first tab stays in front
                page.evaluate(HIDE_JS, True)
            contexts.append(context)
            pages.append(page)
        hidden = [p.evaluate("document.visibilityState") for p in pages]
        client = Client(server.url, verbose=False)
        browsers = chromium_processes()
        cpu0, browser0 = cpu_s([server.process]), cpu_s(browsers)
        job = client.submit("demo-cpu", str(STYLE_SETS / "pastel"), "watched", [f"train.max_steps={steps}"],
                            api_name="/train")
        job.result(timeout=1800)
        cpu1, browser1 = cpu_s([server.process]), cpu_s(browsers)
        record = JobStore(outputs / "loramix.db").jobs()[-1]
        assert record.status == "done", record
        for page in pages:  # every tab was watching this job; a hidden one catches up once shown
            page.evaluate(HIDE_JS, False)
            page.locator("#train-progress", has_text=f"Done job {record.id}").wait_for(timeout=60_000)
        client.close()
        return dict(root=str(root), tabs=tabs, job_s=record.finished - record.started, server_cpu_s=cpu1 - cpu0,
                    browser_cpu_s=browser1 - browser0, visibility=f"{hidden.count('visible')} visible, {hidden.count('hidden')} hidden")
    finally:
        for context in contexts:
            context.close()
        server.stop()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tabs", type=int, nargs="+", default=[0, 2, 5])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--background", action="store_true",
                   help="hide every tab but the first (as in a background browser tab) while the job runs")
    p.add_argument("--roots", nargs="+", type=Path, default=[ROOT],
                   help="repository checkouts whose `loramix ui` to compare (e.g. this one and an older commit's "
                        "`git archive` in /tmp); alternated with the tab counts")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from playwright.sync_api import sync_playwright

    print(f"load before: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs", flush=True)
    results, loads = [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        for round_ in range(args.rounds):
            for root, tabs in [(root, tabs) for tabs in args.tabs for root in args.roots]:
                workdir = Path(tempfile.mkdtemp(prefix="loramix-watchers-"))
                try:
                    run = one_run(browser, tabs, args.steps, workdir, root.resolve(), args.background)
                finally:
                    shutil.rmtree(workdir, ignore_errors=True)
                loads.append(os.getloadavg()[0])
                results.append(run)
                print(f"round {round_ + 1} {root} tabs {tabs}: job {run['job_s']:.1f} s, server CPU "
                      f"{run['server_cpu_s']:.1f} s, browser CPU {run['browser_cpu_s']:.1f} s, load "
                      f"{loads[-1]:.2f}, pages {run['visibility']}", flush=True)
        browser.close()
    print("\n| code | tabs | job s (median) | server CPU s (median) | browser CPU s (median) | runs |")
    print("|---|---|---|---|---|---|")
    for root in args.roots:
        base = None
        for tabs in args.tabs:
            runs = [r for r in results if r["tabs"] == tabs and r["root"] == str(root.resolve())]
            job = statistics.median(r["job_s"] for r in runs)
            base = base or job
            print(f"| {root} | {tabs} | {job:.1f} ({job / base:.2f}×) | "
                  f"{statistics.median(r['server_cpu_s'] for r in runs):.1f} | "
                  f"{statistics.median(r['browser_cpu_s'] for r in runs):.1f} | {len(runs)} |")
    print(f"\n1-minute load after each run: min {min(loads):.2f}, median {statistics.median(loads):.2f}, "
          f"max {max(loads):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
