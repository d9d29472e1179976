"""Take the README's screenshots on the embedded model: train the pastel style from the Train tab, send it
to the Mix tab and draw the before/after preview with a slider. Needs Debian's chromium.

    python tools/screenshots.py --out docs/            # the README's, at 1280 px wide
    python tools/screenshots.py --width 1920 --out /tmp/shots      # to look at the page wider
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main() -> int:
    from playwright.sync_api import sync_playwright

    from loramix.core.quiet import quiet_libraries
    from webui.app import build_app, launch_kwargs
    from webui.state import AppState

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300)  # the Train tab preset's own
    parser.add_argument("--out", default="docs")
    parser.add_argument("--port", type=int, default=7977)
    parser.add_argument("--width", type=int, default=1280, help="browser width in px (default 1280)")
    args = parser.parse_args()
    quiet_libraries()
    out = Path(args.out)
    state = AppState.create(Path(tempfile.mkdtemp(prefix="loramix-shots-")) / "outputs")
    demo = build_app(state).queue(default_concurrency_limit=2)
    demo.launch(server_name="127.0.0.1", server_port=args.port, prevent_thread_lock=True, quiet=True,
                **launch_kwargs(state))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": args.width, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(f"http://127.0.0.1:{args.port}/")
        page.locator("#train-thumbs img").first.wait_for()
        steps = page.locator("#cfg-train-max_steps input")
        steps.fill(str(args.steps))
        every = page.locator("#cfg-sample-sample_every_n_steps input")
        every.fill(str(max(args.steps // 2, 1)))
        every.blur()
        page.locator("#train-start").click()
        page.locator("#train-progress", has_text="Done").wait_for(timeout=1_800_000)
        page.locator("#train-samples img").nth(3).wait_for()
        page.wait_for_timeout(1500)
        page.screenshot(path=str(out / "train-tab.png"), full_page=True)
        page.locator("#send-to-mix").click()
        page.locator("#mix-generate").wait_for(state="visible")
        # the Mix tab's own default prompt, as a newcomer sees it (v1 drew it on the wrong background; v3 does not)
        slider = page.locator("#mix-weight-0 input[type=range]")
        box = slider.bounding_box()
        slider.click(position={"x": box["width"] * 0.75, "y": box["height"] / 2})  # weight 1: a release
        page.locator("#mix-status", has_text="pastel +").wait_for(timeout=300_000)
        page.locator("#mix-image img").last.wait_for()
        page.wait_for_timeout(1500)
        page.screenshot(path=str(out / "mix-tab.png"), full_page=True)
        browser.close()
    demo.close()
    print(f"Saved {out / 'train-tab.png'} and {out / 'mix-tab.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
