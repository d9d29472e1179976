"""End to end in a real browser: train, send to Mix, blend two adapters, generate. Saves screenshots."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import make_folder, random_lora

pytestmark = pytest.mark.browser
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="module")
def page():
    if not shutil.which(CHROMIUM) and not os.environ.get("CI"):
        pytest.skip("Debian's chromium is not installed (apt-get install chromium); CI installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        yield page
        browser.close()


def image_bytes(page, selector: str) -> np.ndarray:
    src = page.locator(f"{selector} img").first.get_attribute("src")
    return np.asarray(Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB"), dtype=np.int16)


def test_train_send_to_mix_blend_generate(app, page, tiny_model, tmp_path):
    url, state = app
    ARTIFACTS.mkdir(exist_ok=True)
    data = make_folder(tmp_path / "data", n=4)
    random_lora(tiny_model, state.lora_dir / "second.safetensors", 7)

    page.goto(url)
    page.locator("#cfg-model-base_model textarea").fill(str(tiny_model))
    page.locator("#cfg-dataset-data_dir textarea").fill(str(data))
    page.locator("#cfg-dataset-data_dir textarea").blur()
    page.locator("#train-thumbs img").first.wait_for()  # the folder's thumbnails appear
    page.locator("#cfg-train-max_steps input").fill("6")
    page.locator("#cfg-sample-sample_every_n_steps input").fill("3")
    page.locator("#cfg-optim-learning_rate input").fill("0.005")
    page.locator("#train-start").click()
    page.locator("#train-progress", has_text="Done").wait_for(timeout=180_000)
    assert "step 6/6" in page.locator("#train-progress").inner_text()
    assert page.locator("#train-samples img").count() >= 2
    page.locator("#train-loss canvas, #train-loss svg").first.wait_for()
    page.screenshot(path=str(ARTIFACTS / "train-tab.png"), full_page=True)

    page.locator("#send-to-mix").click()
    page.locator("#mix-generate").wait_for(state="visible")
    assert "demo-style" in page.locator("#mix-file-0 input").input_value()
    page.locator("#mix-base textarea").fill(str(tiny_model))
    page.locator("#mix-add").click()
    second = page.locator("#mix-file-1 input")
    second.wait_for(state="visible")
    second.click()
    page.get_by_role("option", name="loras/second.safetensors").click()
    page.locator("#mix-weight-0 input[type=range]").fill("1.5")
    page.locator("#mix-weight-1 input[type=range]").fill("-0.8")
    page.locator("#mix-generate").click()
    page.locator("#mix-status", has_text="+1.50").wait_for()
    status = page.locator("#mix-status").inner_text()
    assert "second -0.80" in status, status
    blended = image_bytes(page, "#mix-image")
    page.screenshot(path=str(ARTIFACTS / "mix-tab.png"), full_page=True)

    page.locator("#mix-weight-0 input[type=range]").fill("0")
    page.locator("#mix-weight-1 input[type=range]").fill("0")
    page.locator("#mix-generate").click()
    page.locator("#mix-status", has_text="+0.00").wait_for()
    base = image_bytes(page, "#mix-image")
    assert blended.shape == base.shape
    assert np.abs(blended - base).mean() > 1.0, "the blend should change the picture"
