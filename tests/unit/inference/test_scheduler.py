"""Our DDIM scheduler against diffusers' DDIMScheduler, step for step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

# The cases of configs() by name (listed here: collecting imports no torch).
CONFIG_NAMES = ["cosine-zero-snr", "linear-alpha-one", "linspace-sample-clip", "sd15", "sd21-v"]


def sd15() -> dict[str, Any]:
    """Stable Diffusion 1.5's noise schedule, as the fixtures write it."""
    from stageflow.inference.fixtures import SCHEDULER_CONFIG

    return dict(SCHEDULER_CONFIG)


def configs() -> dict[str, dict[str, Any]]:
    return {
        "sd15": sd15(),
        # SD 2.1-768 style: v-prediction, trailing spacing.
        "sd21-v": {**sd15(), "prediction_type": "v_prediction", "timestep_spacing": "trailing"},
        "linspace-sample-clip": {
            **sd15(),
            "prediction_type": "sample",
            "timestep_spacing": "linspace",
            "clip_sample": True,
            "clip_sample_range": 1.5,
        },
        "linear-alpha-one": {"beta_schedule": "linear", "set_alpha_to_one": True},
        "cosine-zero-snr": {
            "beta_schedule": "squaredcos_cap_v2",
            "rescale_betas_zero_snr": True,
            "timestep_spacing": "trailing",
            "prediction_type": "v_prediction",
            "clip_sample": False,
            "num_train_timesteps": 500,
        },
    }


def test_every_config_is_a_case() -> None:
    assert sorted(configs()) == CONFIG_NAMES


@pytest.mark.parametrize("steps", [1, 7, 20, 50])
@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_matches_diffusers_step_for_step(name: str, steps: int) -> None:
    import torch
    from diffusers import DDIMScheduler as Reference

    from stageflow.inference.scheduler import DDIMConfig, DDIMScheduler

    config = configs()[name]
    ours = DDIMScheduler(DDIMConfig.from_dict(config))
    ref: Any = Reference(**config)
    ours.set_timesteps(steps)
    ref.set_timesteps(steps)
    assert torch.equal(ours.timesteps, ref.timesteps)
    assert ours.init_noise_sigma == ref.init_noise_sigma
    gen = torch.Generator().manual_seed(steps)
    sample = torch.randn((2, 4, 8, 8), generator=gen)
    ref_sample = sample.clone()
    for t in ours.timesteps:
        output = torch.randn(sample.shape, generator=gen)
        assert torch.equal(ours.scale_model_input(sample, t), ref.scale_model_input(sample, t))
        sample = ours.step(output, t, sample, eta=0.0).prev_sample
        ref_sample = ref.step(output, t, ref_sample, eta=0.0, return_dict=False)[0]
        assert (sample - ref_sample).abs().max().item() <= 1e-6
    noise = torch.randn(sample.shape, generator=gen)
    for ts in (ours.timesteps[:1], ours.timesteps[-1:], torch.tensor([3, 400])):
        assert torch.allclose(
            ours.add_noise(sample, noise, ts), ref.add_noise(sample, noise, ts), atol=1e-6
        )


def test_reads_a_pipeline_folder_and_ignores_other_schedulers_keys(tmp_path: Path) -> None:
    from stageflow.inference.scheduler import DDIMConfig

    (tmp_path / "scheduler").mkdir()
    config = {**sd15(), "_class_name": "PNDMScheduler", "skip_prk_steps": True}
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    assert DDIMConfig.from_folder(tmp_path) == DDIMConfig.from_dict(sd15())


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"timestep_spacing": "karras"}, "timestep_spacing"),
        ({"prediction_type": "flow"}, "prediction_type"),
        ({"beta_schedule": "sigmoid"}, "beta_schedule"),
        ({"thresholding": True}, "thresholding"),
    ],
)
def test_unsupported_configs_fail_loudly(bad: dict[str, Any], message: str) -> None:
    from stageflow.inference.scheduler import DDIMConfig

    with pytest.raises(ValueError, match=message):
        DDIMConfig.from_dict({**sd15(), **bad})


def test_stochastic_steps_are_refused() -> None:
    import torch

    from stageflow.inference.scheduler import DDIMConfig, DDIMScheduler

    scheduler = DDIMScheduler(DDIMConfig.from_dict(sd15()))
    scheduler.set_timesteps(4)
    x = torch.zeros(1, 4, 2, 2)
    with pytest.raises(ValueError, match="eta"):
        scheduler.step(x, scheduler.timesteps[0], x, eta=0.5)
