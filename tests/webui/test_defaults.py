"""With no arguments the app opens on the embedded model, a sample style set and the demo preset."""

from pathlib import Path

from webui.state import AppState
from webui.train_form import preset_config


def test_first_run_form_is_ready_to_train(tmp_path):
    state = AppState.create(tmp_path / "outputs")
    assert "demo-cpu" in state.presets()
    config = preset_config(state, "demo-cpu")
    assert config.model.base_model == ""  # the embedded model
    assert sorted(Path(config.dataset.data_dir).glob("*.png"))
    # the run is named after its data folder and gets a new folder under outputs/ at start
    assert config.output.output_name == "" and config.output.output_dir == ""
