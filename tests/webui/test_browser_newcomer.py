"""Issue 29 in a real chromium, on the embedded model: what a newcomer met in the tabs.

- each Mix action answers beside its own button (Save mix, Load mix, Export; Save preset in the Train tab);
- the first Mix tab says where adapters come from, and an upload's error goes once a good file is picked;
- every change that a slider release redraws for redraws alike: a file picked, a weight typed into the number
  box, per-block Apply;
- the before/after picture is whole, at a whole-number scale; every per-block slider is on the page at 1280 px;
- only the caption column of the caption table can be edited.
Screenshots at 1280 and 1920 px go to test-artifacts/ (look at them).
"""

from __future__ import annotations

import pytest

from tests.conftest import make_folder, random_lora
from tests.webui.conftest import serve
from tests.webui.test_browser import ARTIFACTS, browser, new_page, shows, type_into  # noqa: F401  (the browser fixture)
from webui.state import EMBEDDED, AppState

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def fresh_app(tmp_path_factory):
    """An app with no LoRA file yet, on the embedded model."""
    state = AppState.create(tmp_path_factory.mktemp("outputs"))
    demo, url = serve(state)
    yield url, state
    demo.close()


def near(page, message: str, button: str, most_px: float = 160) -> float:
    """The vertical distance from a button to its message (both must be on the page)."""
    a, b = page.locator(button).bounding_box(), page.locator(message).bounding_box()
    distance = abs((b["y"] + b["height"] / 2) - (a["y"] + a["height"] / 2))
    assert distance < most_px, f"{message} is {distance:.0f} px from {button}"
    return distance


def status_after(page, action, text: str) -> str:
    """Do `action` and wait until the preview status (each redraw says what it drew) says `text`."""
    action()
    return shows(page, "#mix-status", text, 120_000)


@pytest.mark.slow
def test_a_newcomers_mix_tab_at_1280_and_1920_px(fresh_app, browser, tmp_path):  # noqa: F811
    url, state = fresh_app
    page = new_page(browser, url)
    page.set_viewport_size({"width": 1280, "height": 1000})
    page.get_by_role("tab", name="Mix").click()
    note = page.locator("#mix-adapters-note")
    note.get_by_text("No LoRA files yet").wait_for()  # row 10
    assert "Train tab" in note.inner_text() and "Add LoRA files" in note.inner_text()

    random_lora(EMBEDDED / "tiny-sd", state.lora_dir / "alpha.safetensors", 1)
    random_lora(EMBEDDED / "tiny-sd", state.lora_dir / "beta.safetensors", 2)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a LoRA at all")
    page.locator("#mix-upload input[type=file]").set_input_files(str(broken))
    page.locator("#mix-file-0 input").click()
    status_after(page, lambda: page.get_by_role("option", name="loras/broken.safetensors").click(), "⚠")
    page.locator("#mix-card-0", has_text="⚠").wait_for()

    page.locator("#mix-file-0 input").click()  # row 5: a file picked draws, without Generate; row 2: the error goes
    status_after(page, lambda: page.get_by_role("option", name="loras/alpha.safetensors").click(), "alpha +1.00")
    assert "⚠" not in page.locator("#mix-status").inner_text() + page.locator("#mix-card-0").inner_text()
    assert note.inner_text().strip() == ""
    page.locator("#mix-image img").last.wait_for()

    box = page.locator("#mix-weight-0 input[type=number]")  # row 5: a weight typed into the number box
    box.fill("0.35")
    status_after(page, lambda: box.press("Enter"), "alpha +0.35")

    frame = page.locator("#mix-image").bounding_box()  # row 6: the whole picture, at a whole-number scale
    for img in page.locator("#mix-image img").all():
        natural, shown = img.evaluate(
            "e => { const r = e.getBoundingClientRect(), s = Math.min(1, r.width / e.naturalWidth, "
            "r.height / e.naturalHeight); return [[e.naturalWidth, e.naturalHeight], "
            "[e.naturalWidth * s, e.naturalHeight * s, r.top, r.bottom]]; }")
        assert natural[0] % 64 == 0 and natural[0] // 64 >= 2, natural  # 64 px enlarged by a whole factor
        assert shown[:2] == natural, (shown, natural)  # drawn 1:1, so the factor stays whole
        assert shown[2] >= frame["y"] - 1 and shown[3] <= frame["y"] + frame["height"] + 1, (shown, frame)

    page.get_by_text("Block weights, one slider per block").click()  # row 7 and row 5: per-block Apply
    page.locator("#mix-lbw-OUT11").wait_for()
    sliders = page.locator("#mix-lbw-sliders .mix-lbw-slider:visible")
    assert sliders.count() == 17
    edge = page.locator("#mix-lbw-sliders").bounding_box()
    for i in range(17):
        b = sliders.nth(i).bounding_box()
        assert b["x"] >= edge["x"] - 1 and b["x"] + b["width"] <= edge["x"] + edge["width"] + 1, (i, b, edge)
        assert b["width"] >= 100, f"block slider {i} is squeezed to {b['width']:.0f} px"
        track = sliders.nth(i).locator("input[type=range]").bounding_box()
        assert track["x"] + track["width"] <= b["x"] + b["width"] + 1, f"block slider {i}'s track runs past it"
    assert len({round(sliders.nth(i).bounding_box()["y"]) for i in range(17)}) <= 2, "17 blocks in over 2 rows"
    page.locator("#mix-lbw-OUT11 input[type=number]").fill("0")
    page.locator("#mix-lbw-OUT11 input[type=number]").blur()
    status_after(page, lambda: page.locator("#mix-lbw-apply").click(), "alpha +0.35 (blocks 1,1,")
    assert page.locator("#mix-lbw-message", has_text="Adapter 1 blocks:").count() == 1
    near(page, "#mix-lbw-message", "#mix-lbw-apply")
    page.screenshot(path=str(ARTIFACTS / "newcomer-mix-1280.png"), full_page=True)

    page.get_by_text("Mix presets").click()  # row 1: each action answers beside its button
    page.locator("#mix-preset-name textarea, #mix-preset-name input").first.fill("first")
    page.locator("#mix-preset-save").click()
    page.locator("#mix-preset-message", has_text="Saved mix first").wait_for()
    near(page, "#mix-preset-message", "#mix-preset-save")
    page.locator("#mix-preset-load").click()
    page.locator("#mix-preset-message", has_text="Loaded mix first").wait_for()
    page.get_by_text("Export", exact=True).click()
    # CI (2026-12-05, loaded box) once exported under the field's default, "blend": the name was typed while the
    # accordion's content was still being drawn, and the drawing put the default back. type_into waits for the
    # field and checks it holds the name before exporting.
    type_into(page, "#mix-export-name", "merged")
    page.locator("#mix-export").click()
    shows(page, "#mix-export-message", "Saved merged.safetensors", 120_000, "#mix-status", "#mix-export-name")
    near(page, "#mix-export-message", "#mix-export")
    page.locator("#mix-export").click()  # the same name again: the refusal answers there too
    page.locator("#mix-export-message", has_text="⚠").wait_for()
    assert "Saved mix" not in page.locator("#mix-status").inner_text()
    assert "merged" not in page.locator("#mix-status").inner_text()

    page.set_viewport_size({"width": 1920, "height": 1000})
    page.wait_for_timeout(500)
    for i in range(17):
        b, edge = sliders.nth(i).bounding_box(), page.locator("#mix-lbw-sliders").bounding_box()
        assert b["x"] + b["width"] <= edge["x"] + edge["width"] + 1 and 100 <= b["width"] <= 200, (i, b)
    page.screenshot(path=str(ARTIFACTS / "newcomer-mix-1920.png"), full_page=True)
    page.close()


def test_only_the_caption_column_can_be_edited_and_save_preset_answers_beside_it(fresh_app, browser,  # noqa: F811
                                                                                   tmp_path):
    url, _ = fresh_app
    folder = make_folder(tmp_path / "mystyle", n=2, prefix="pic")
    page = new_page(browser, url)
    page.set_viewport_size({"width": 1280, "height": 1000})
    page.locator("#train-thumbs img").first.wait_for()  # the page load's reading of the pre-filled folder first
    box = page.locator("#cfg-dataset-data_dir textarea, #cfg-dataset-data_dir input").first
    box.fill(str(folder))
    box.blur()
    page.locator("#train-dataset-notes", has_text="2 images").wait_for()
    table = page.locator("#train-captions")
    first_row = table.locator(".virtual-row", has_text="pic0.png").first
    first_row.locator(".body-cell", has_text="picture 0").wait_for()  # the scan's rows are drawn, captions in
    page.wait_for_timeout(500)
    name_cell = first_row.locator(".body-cell").nth(0)
    name_cell.dblclick()
    page.keyboard.type("renamed")
    page.keyboard.press("Enter")
    page.wait_for_timeout(300)
    assert "renamed" not in table.text_content(), "the file-name column took an edit"
    # The caption column still edits. Up to three tries: on a loaded CI box (2026-12-05) one edit was lost
    # once, the table drawn again between the double click and the typing; a column that never edits still
    # fails here.
    caption_cell = first_row.locator(".body-cell").nth(1)
    for attempt in range(3):
        caption_cell.dblclick()
        page.keyboard.type(" edited")
        page.keyboard.press("Enter")
        try:
            page.wait_for_function("() => document.querySelector('#train-captions').textContent.includes('edited')",
                                   timeout=10_000)
            break
        except Exception:
            if attempt == 2:
                raise
    page.locator("#train-preset-save").click()  # no name: the sentence sits under Save preset
    page.locator("#train-preset-message", has_text="⚠").wait_for()
    near(page, "#train-preset-message", "#train-preset-save")
    page.screenshot(path=str(ARTIFACTS / "newcomer-train-1280.png"), full_page=True)
    page.close()
