"""The training state file: never written with NaN/inf, refused on read with a sentence naming the field."""

import pytest
import torch
from safetensors.torch import save_file

from loramix.core.config import LoramixConfig
from loramix.core.errors import TrainingError
from trainers.checkpoint import STATE_FORMAT, check_state_file, load_state, save_state


class Opt:
    def __init__(self, state):
        self.state = state

    def state_dict(self):
        return {"state": self.state, "param_groups": [{"lr": 1e-4, "params": [0]}]}


class Sched:
    def state_dict(self):
        return {"last_epoch": 3}


def _save(path, lora, opt_state=None):
    return save_state(path, step=3, lora=lora, optimizer=Opt(opt_state or {}), scheduler=Sched(),
                      config=LoramixConfig())


def test_state_round_trip(tmp_path):
    path = _save(tmp_path / "s.safetensors", {"lora_unet.a.lora_A.weight": torch.ones(2, 3)},
                 {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2, 3)}})
    state = load_state(path)
    assert state["step"] == 3 and torch.equal(state["lora"]["lora_unet.a.lora_A.weight"], torch.ones(2, 3))
    assert torch.equal(state["optimizer"]["state"][0]["exp_avg"], torch.zeros(2, 3))


@pytest.mark.parametrize("lora, opt, bad_key", [
    ({"lora_unet.a.lora_B.weight": torch.tensor([1.0, float("nan")])}, None, "lora.lora_unet.a.lora_B.weight"),
    ({"lora_unet.a.lora_B.weight": torch.tensor([float("inf")])}, None, "lora.lora_unet.a.lora_B.weight"),
    ({"lora_unet.a.lora_B.weight": torch.ones(2)}, {0: {"exp_avg_sq": torch.tensor([float("inf")])}},
     "optim.0.exp_avg_sq"),
    ({"lora_unet.a.lora_B.weight": torch.ones(2)}, {0: {"d": float("nan")}}, "optim.0.d"),
])
def test_a_non_finite_state_is_never_written(tmp_path, lora, opt, bad_key):
    path = tmp_path / "my-lora-state.safetensors"
    _save(path, {"lora_unet.a.lora_B.weight": torch.zeros(2)})
    before = path.read_bytes()
    with pytest.raises(TrainingError, match=f"Refusing to save the training state my-lora-state.safetensors at step 3: "
                                            f"{bad_key} holds NaN or inf"):
        _save(path, lora, opt)
    assert path.read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_non_finite_state_on_disk_is_refused_on_resume(tmp_path):
    path = tmp_path / "old-state.safetensors"
    meta = {"format": STATE_FORMAT, "step": "1", "optimizer_param_groups": "[]", "optimizer_scalars": "{}",
            "scheduler": "{}", "loramix_config": "{}"}
    save_file({"lora.x": torch.tensor([float("nan")])}, str(path), metadata=meta)
    with pytest.raises(TrainingError, match="train.resume_from: old-state.safetensors holds NaN or inf values in lora.x"):
        load_state(path)


def test_check_state_file_names_what_the_file_is(tmp_path):
    lora = tmp_path / "style.safetensors"
    save_file({"lora_unet_a.lora_down.weight": torch.zeros(1)}, str(lora), metadata={"ss_network_module": "x"})
    with pytest.raises(TrainingError, match="train.resume_from: style.safetensors is a LoRA file, not a loramix"):
        check_state_file(lora)
    other = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(1)}, str(other))
    with pytest.raises(TrainingError, match="model.safetensors is another safetensors file"):
        check_state_file(other)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\xff" * 64)  # the audit's "header too large" file
    with pytest.raises(TrainingError, match=r"junk.safetensors is not a loramix training state \(it is not a readable"):
        check_state_file(junk)
    with pytest.raises(TrainingError, match="is a folder; give the <name>-state.safetensors file"):
        check_state_file(tmp_path)
