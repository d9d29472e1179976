"""The frame cap's script reaches the page before Gradio's modules, and nothing else is rewritten."""

import httpx

from webui.page_js import frame_cap_script


def test_the_page_starts_with_the_frame_cap_and_other_responses_are_untouched(app):
    url, _ = app
    script = frame_cap_script()
    page = httpx.get(url)
    assert page.status_code == 200 and int(page.headers["content-length"]) == len(page.content)
    html = page.text
    # first in <head>: Gradio's client captures requestAnimationFrame when its modules load
    assert html.index(script) == html.index("<head>") + len("<head>") < html.index('<script type="module"')
    assert html.count("__loramixFrameCap") == 1
    config = httpx.get(url + "config")
    assert config.status_code == 200 and "__loramixFrameCap" not in config.text
    assert frame_cap_script(0) == ""
