"""The dataset journey in a real chromium: open an uncaptioned folder in the Dataset tab, caption it with the tiny
test captioner (a job in the queue), bulk-add a trigger word with a preview, see the tag table change, click a
thumbnail, make CLIPSeg masks, then train on the folder. Screenshot: test-artifacts/dataset-tab.png."""

from __future__ import annotations

import pytest

from loramix.embedded.tiny import build_tiny_captioner, build_tiny_clipseg
from tests.conftest import make_folder
from tests.webui.test_browser import ARTIFACTS, browser, fill, new_page  # noqa: F401 (browser is a fixture)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _set(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    box.fill(str(value))
    box.blur()


def test_caption_tag_and_train_an_uncaptioned_folder(app, browser, tiny_model, tmp_path):  # noqa: F811
    url, state = app
    model = build_tiny_captioner(tmp_path / "captioner", "blip")
    data = make_folder(tmp_path / "data", n=4, captions=False)
    page = new_page(browser, url)
    page.get_by_role("tab", name="Dataset").click()
    _set(page, "dataset-folder", data)
    page.locator("#dataset-load").click()
    page.locator("#dataset-summary", has_text="4 images have no caption").wait_for()

    _set(page, "dataset-caption-model", model)
    page.locator("#dataset-caption").click()
    page.locator("#dataset-caption-status", has_text="Captioned 4 images").wait_for(timeout=120_000)
    page.locator("#dataset-summary", has_text="Every image has a caption").wait_for()
    assert all((data / f"img{i}.txt").read_text().strip() for i in range(4))
    assert "ohwx" not in page.locator("#dataset-tags").inner_text()

    _set(page, "dataset-tag", "ohwx")
    page.locator("#dataset-tag-preview").click()
    page.locator("#dataset-tag-message", has_text="4 captions would change").wait_for()
    assert not any("ohwx" in (data / f"img{i}.txt").read_text() for i in range(4))  # a preview writes nothing
    page.locator("#dataset-tag-save").click()
    page.locator("#dataset-tag-message", has_text="Saved 4 captions").wait_for()
    page.locator("#dataset-tags", has_text="ohwx").wait_for()
    assert all((data / f"img{i}.txt").read_text().startswith("ohwx") for i in range(4))

    page.get_by_text("Masks for masked training (CLIPSeg)").click()
    _set(page, "dataset-mask-prompt", "cat")
    _set(page, "dataset-mask-model", build_tiny_clipseg(tmp_path / "clipseg"))
    page.locator("#dataset-mask-make").click()
    page.locator("#dataset-mask-message", has_text="Wrote 4 masks").wait_for()
    assert sorted(p.name for p in data.glob("*.mask.png")) == [f"img{i}.mask.png" for i in range(4)]
    page.locator("#dataset-summary", has_text="4 images").wait_for()  # the masks are not taken for images

    page.locator("#dataset-thumbs img").first.click()
    page.locator("#dataset-details", has_text="bucket").wait_for()
    page.screenshot(path=str(ARTIFACTS / "dataset-tab.png"), full_page=True)

    page.locator("#dataset-use").click()
    page.locator("#train-start").wait_for(state="visible")
    assert page.locator("#cfg-dataset-data_dir textarea, #cfg-dataset-data_dir input").first.input_value() == str(data)
    fill(page, "model-base_model", tiny_model)
    fill(page, "train-max_steps", 4)
    fill(page, "dataset-resolution", 64)
    page.locator("#train-start").click()
    page.locator("#train-error", has_text="started").wait_for()
    job_id = int(page.locator("#train-error").inner_text().split("Job ")[1].split()[0])
    job = state.jobs.wait(state.jobs.get(job_id), timeout=180)
    assert job.status == "done", (job.status, job.error)
    page.locator("#train-progress", has_text=f"Done job {job_id}").wait_for()
    assert job.kind == "train" and job.config.dataset.data_dir == str(data) and job.status == "done"
