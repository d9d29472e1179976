"""A Train tab in a hidden browser page (a background tab, a minimised window) does not poll while a job runs, and
shows what it missed once it is in front again: each of Gradio's events costs the browser tens of milliseconds of
CPU on the cores the training uses (docs/benchmarks.md, "Watching a job").

Headless pages are always visible, so the page is hidden the way bench/train_watchers.py --background hides it:
`document.visibilityState` says "hidden" and a `visibilitychange` event fires (Gradio's Timer checks the former).
"""

from __future__ import annotations

import time

import pytest

from loramix.core.config import LoramixConfig
from loramix.core.events import TrainEvent
from tests.webui.conftest import serve
from tests.webui.test_browser import browser, new_page  # noqa: F401 (the module's chromium fixture)
from webui import train_tab
from webui.jobs import Job
from webui.state import AppState

pytestmark = [pytest.mark.browser, pytest.mark.slow]
HIDE = """(hidden) => {
  Object.defineProperty(document, 'visibilityState', {get: () => hidden ? 'hidden' : 'visible', configurable: true});
  Object.defineProperty(document, 'hidden', {get: () => hidden, configurable: true});
  document.dispatchEvent(new Event('visibilitychange'));
}"""


@pytest.fixture
def watched(tmp_path, monkeypatch):
    """(url, job, ticks): the app with a running job that the test feeds steps by hand; `ticks` counts the server's
    calls of the Train tab's tick."""
    state = AppState.create(tmp_path / "outputs")
    config = LoramixConfig()
    config.output.output_dir, config.output.output_name = str(tmp_path / "run"), "run"
    config.train.max_steps = 100
    job = Job(1, config, status="running", events=[TrainEvent("start", 0, 100)])
    state.jobs.jobs.append(job)
    ticks = []
    real_tick = train_tab.tick
    monkeypatch.setattr(train_tab, "tick", lambda *a, **k: (ticks.append(time.monotonic()), real_tick(*a, **k))[1])
    demo, url = serve(state)
    yield url, job, ticks
    demo.close()


def steps(job, first, last):
    job.events += [TrainEvent("step", s, 100, loss=1 / s, steps_per_s=8.0) for s in range(first, last + 1)]


def test_a_hidden_page_sends_no_ticks_and_catches_up_when_shown(watched, browser):  # noqa: F811
    url, job, ticks = watched
    steps(job, 1, 8)
    page = new_page(browser, url)
    page.locator("#train-progress", has_text="step 8/100").wait_for(timeout=30_000)
    time.sleep(2 * train_tab.POLL_S + 0.5)
    assert len(ticks) >= 2  # a page in front polls

    page.evaluate(HIDE, True)
    time.sleep(1.5)  # a tick already on its way when the page was hidden lands
    before = len(ticks)
    steps(job, 9, 20)
    time.sleep(2 * train_tab.POLL_S + 0.5)
    assert len(ticks) == before, f"{len(ticks) - before} ticks while the page was hidden"
    assert "step 8/100" in page.locator("#train-progress").inner_text()

    page.evaluate(HIDE, False)
    page.locator("#train-progress", has_text="step 20/100").wait_for(timeout=10_000)
    page.close()
