"""The app's named API endpoints through gradio_client: train (tiny model, few steps) and generate."""

from __future__ import annotations

import numpy as np
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from PIL import Image

from tests.conftest import make_folder


def test_train_then_generate_through_the_api(app, tiny_model, tmp_path):
    url, state = app
    client = Client(url, verbose=False)
    data = make_folder(tmp_path / "data", n=4)
    lora = client.predict("demo-cpu", str(data), "api-run",
                          [f"model.base_model={tiny_model}", "train.max_steps=6", "train.batch_size=2",
                           "sample.sample_every_n_steps=0", "optim.learning_rate=5e-3"], api_name="/train")
    assert lora.endswith("api-run.safetensors")
    assert state.jobs.current().status == "done"
    args = dict(base=str(tiny_model), prompt="red stripes", negative_prompt="", seed=1, steps=3,
                cfg_scale=5.0, size=0)
    base = np.asarray(Image.open(client.predict(loras=[], **args, api_name="/generate")))
    again = np.asarray(Image.open(client.predict(loras=[], **args, api_name="/generate")))
    mixed = np.asarray(Image.open(client.predict(loras=[f"{lora}:1.5"], **args, api_name="/generate")))
    assert base.shape == (64, 64, 3)
    assert np.array_equal(base, again)  # fixed seed: same image
    assert np.abs(mixed.astype(int) - base.astype(int)).mean() > 0.5


def test_api_errors_carry_the_engine_message(app, tmp_path):
    url, _ = app
    client = Client(url, verbose=False)
    with pytest.raises(AppError, match="has no image files"):
        (tmp_path / "empty").mkdir()
        client.predict("demo-cpu", str(tmp_path / "empty"), "x", [], api_name="/train")


def test_generate_keeps_a_bounded_number_of_preview_files():
    from PIL import Image as PILImage

    from webui.app import KEEP_PREVIEWS, PREVIEW_DIR, save_preview

    for _ in range(KEEP_PREVIEWS + 4):
        save_preview(PILImage.new("RGB", (8, 8)))
    assert len(list(PREVIEW_DIR.glob("preview-*.png"))) == KEEP_PREVIEWS
