"""Our DDIM scheduler against diffusers' DDIMScheduler, step for step."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from stageflow.inference.fixtures import SCHEDULER_CONFIG
from stageflow.inference.scheduler import DDIMConfig, DDIMScheduler

SD15 = SCHEDULER_CONFIG  # Stable Diffusion 1.5's noise schedule
CONFIGS: dict[str, dict[str, Any]] = {
    "sd15": SD15,
    # SD 2.1-768 style: v-prediction, trailing spacing.
    "sd21-v": {**SD15, "prediction_type": "v_prediction", "timestep_spacing": "trailing"},
    "linspace-sample-clip": {
        **SD15,
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


@pytest.mark.parametrize("steps", [1, 7, 20, 50])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_matches_diffusers_step_for_step(name: str, steps: int) -> None:
    from diffusers import DDIMScheduler as Reference

    config = CONFIGS[name]
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
    (tmp_path / "scheduler").mkdir()
    config = {**SD15, "_class_name": "PNDMScheduler", "skip_prk_steps": True}
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    assert DDIMConfig.from_folder(tmp_path) == DDIMConfig.from_dict(SD15)


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
    with pytest.raises(ValueError, match=message):
        DDIMConfig.from_dict({**SD15, **bad})


def test_stochastic_steps_are_refused() -> None:
    scheduler = DDIMScheduler(DDIMConfig.from_dict(SD15))
    scheduler.set_timesteps(4)
    x = torch.zeros(1, 4, 2, 2)
    with pytest.raises(ValueError, match="eta"):
        scheduler.step(x, scheduler.timesteps[0], x, eta=0.5)


def test_does_not_import_diffusers() -> None:
    code = (
        "import sys, torch; from stageflow.inference.scheduler import DDIMScheduler, DDIMConfig;"
        "s = DDIMScheduler(DDIMConfig()); s.set_timesteps(3);"
        "assert 'diffusers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
