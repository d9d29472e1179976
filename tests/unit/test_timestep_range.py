"""train.min_timestep / train.max_timestep (kohya's names): the noise timesteps a run trains on."""

from __future__ import annotations

import pytest
import torch

from loramix.core.config import ConfigError, LoramixConfig
from trainers.training_step import draw_noise, seed_for


def timesteps(**train) -> torch.Tensor:
    config = LoramixConfig()
    for key, value in train.items():
        setattr(config.train, key, value)
    config.validate()
    latents = torch.zeros(64, 4, 8, 8)
    return torch.cat([draw_noise(config.train, micro, list(range(64)), latents, 1000)[1] for micro in range(4)])


def test_the_default_draws_the_whole_schedule_as_before():
    """The default range is kohya's [0, 1000): the same draws as before the option existed (a resumed run of an
    older version continues on the same timesteps)."""
    got = timesteps()
    config = LoramixConfig().train
    expected = []
    for micro in range(4):
        for pos in range(64):
            g = torch.Generator().manual_seed(seed_for(config.seed, micro, pos))
            torch.randn((4, 8, 8), generator=g)
            expected.append(torch.randint(0, 1000, (1,), generator=g))
    assert torch.equal(got, torch.cat(expected))
    assert got.min() < 100 and got.max() > 900


@pytest.mark.parametrize("low, high", [(0, 300), (700, 1000), (400, 401)])
def test_every_timestep_falls_in_the_range(low, high):
    got = timesteps(min_timestep=low, max_timestep=high)
    assert got.min() >= low and got.max() < high
    assert high - low == 1 or len(set(got.tolist())) > 1  # drawn, not pinned to one end


def test_a_range_with_no_timestep_is_refused_naming_the_field():
    with pytest.raises(ConfigError, match=r"train\.min_timestep.*500 is not below train\.max_timestep \(500\)"):
        timesteps(min_timestep=500, max_timestep=500)
    with pytest.raises(ConfigError, match=r"train\.max_timestep"):
        timesteps(max_timestep=0)
