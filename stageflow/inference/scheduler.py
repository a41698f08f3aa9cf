"""Our own DDIM scheduler, in torch, with no diffusers import.

Every backend (torch eager, ONNX Runtime, TensorRT) is driven by this one
scheduler, so outputs differ only by what the compiled parts compute. It is
configured from a diffusers folder's `scheduler/scheduler_config.json` and
reproduces diffusers' `DDIMScheduler` step for step (a unit test holds it to
1e-6), including its quirks: `step` always subtracts
`num_train_timesteps // num_inference_steps` to find the previous timestep,
whatever the spacing, and the arithmetic is float32 as there.

Only the deterministic sampler (eta = 0) is implemented: the denoise loop
never draws per-step noise. Configs asking for what we do not implement
(dynamic thresholding, trained betas of another length) fail loudly rather
than sample differently.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

CONFIG_FILE = "scheduler_config.json"
SPACINGS = ("leading", "trailing", "linspace")
PREDICTIONS = ("epsilon", "v_prediction", "sample")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


@dataclass(frozen=True)
class DDIMConfig:
    """The fields of diffusers' DDIMScheduler config that change sampling."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: tuple[float, ...] | None = None
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    set_alpha_to_one: bool = True
    steps_offset: int = 0
    prediction_type: str = "epsilon"
    thresholding: bool = False
    timestep_spacing: str = "leading"
    rescale_betas_zero_snr: bool = False

    def __post_init__(self) -> None:
        if self.beta_schedule not in BETA_SCHEDULES and self.trained_betas is None:
            raise ValueError(
                f"beta_schedule must be one of {BETA_SCHEDULES}, got {self.beta_schedule!r}"
            )
        if self.timestep_spacing not in SPACINGS:
            raise ValueError(
                f"timestep_spacing must be one of {SPACINGS}, got {self.timestep_spacing!r}"
            )
        if self.prediction_type not in PREDICTIONS:
            raise ValueError(
                f"prediction_type must be one of {PREDICTIONS}, got {self.prediction_type!r}"
            )
        if self.thresholding:
            raise ValueError("dynamic thresholding is not implemented (pixel-space models only)")
        if self.trained_betas is not None and len(self.trained_betas) != self.num_train_timesteps:
            raise ValueError("trained_betas must have num_train_timesteps entries")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> DDIMConfig:
        """Keys other schedulers add (PNDM's skip_prk_steps, `_class_name`) are ignored,
        as diffusers' DDIMScheduler.from_config ignores them."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in raw.items() if k in names}
        if values.get("trained_betas") is not None:
            values["trained_betas"] = tuple(float(b) for b in values["trained_betas"])
        return cls(**values)

    @classmethod
    def from_folder(cls, folder: Path) -> DDIMConfig:
        """`folder` is the scheduler folder itself or a pipeline folder holding `scheduler/`."""
        folder = Path(folder)
        path = folder / CONFIG_FILE
        if not path.exists():
            path = folder / "scheduler" / CONFIG_FILE
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))


class StepOutput(NamedTuple):
    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


def make_betas(config: DDIMConfig) -> torch.Tensor:
    n = config.num_train_timesteps
    if config.trained_betas is not None:
        betas = torch.tensor(config.trained_betas, dtype=torch.float32)
    elif config.beta_schedule == "linear":
        betas = torch.linspace(config.beta_start, config.beta_end, n, dtype=torch.float32)
    elif config.beta_schedule == "scaled_linear":
        # Latent diffusion's schedule: linear in sqrt(beta).
        start, end = config.beta_start**0.5, config.beta_end**0.5
        betas = torch.linspace(start, end, n, dtype=torch.float32) ** 2
    else:  # squaredcos_cap_v2 (GLIDE's cosine schedule)

        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = torch.tensor(
            [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)],
            dtype=torch.float32,
        )
    if config.rescale_betas_zero_snr:
        betas = _rescale_zero_terminal_snr(betas)
    return betas


def _rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2023, Algorithm 1: shift and scale sqrt(alpha_bar) so the last is 0."""
    root = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    alphas_bar = root**2
    alphas = alphas_bar[1:] / alphas_bar[:-1]
    alphas = torch.cat([alphas_bar[0:1], alphas])
    return 1 - alphas


class DDIMScheduler:
    """Deterministic DDIM. One instance per run: `set_timesteps` keeps state."""

    order = 1
    # DDIM's input needs no scaling; kept for the loop's scheduler-agnostic call.
    init_noise_sigma = 1.0

    def __init__(self, config: DDIMConfig) -> None:
        self.config = config
        self.betas = make_betas(config)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        self.final_alpha_cumprod = (
            torch.tensor(1.0) if config.set_alpha_to_one else self.alphas_cumprod[0]
        )
        self.num_inference_steps: int | None = None
        self.timesteps = torch.arange(config.num_train_timesteps - 1, -1, -1, dtype=torch.int64)

    def set_timesteps(self, num_inference_steps: int) -> None:
        n = self.config.num_train_timesteps
        if not 1 <= num_inference_steps <= n:
            raise ValueError(f"num_inference_steps must be in [1, {n}], got {num_inference_steps}")
        self.num_inference_steps = num_inference_steps
        # numpy, as diffusers computes them: rounding must agree to the timestep.
        spacing = self.config.timestep_spacing
        if spacing == "linspace":
            steps = np.linspace(0, n - 1, num_inference_steps).round()[::-1].astype(np.int64)
        elif spacing == "leading":
            ratio = n // num_inference_steps
            steps = (np.arange(0, num_inference_steps) * ratio).round()[::-1].astype(np.int64)
            steps = steps + self.config.steps_offset
        else:  # trailing
            steps = np.round(np.arange(n, 0, -n / num_inference_steps)).astype(np.int64) - 1
        self.timesteps = torch.from_numpy(steps.copy())

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        return sample

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        eta: float = 0.0,
        return_dict: bool = True,
    ) -> StepOutput:
        """One reverse step. `StepOutput` is a tuple too, so both diffusers call
        styles work: `.prev_sample` and `step(..., return_dict=False)[0]`."""
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps before step")
        if eta != 0.0:
            raise ValueError("only deterministic DDIM (eta = 0) is implemented")
        cfg = self.config
        prev_timestep = timestep - cfg.num_train_timesteps // self.num_inference_steps
        alpha_prod_t = self.alphas_cumprod[timestep]
        alpha_prod_t_prev = (
            self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod
        )
        beta_prod_t = 1 - alpha_prod_t
        if cfg.prediction_type == "epsilon":
            pred_original = (sample - beta_prod_t**0.5 * model_output) / alpha_prod_t**0.5
            pred_epsilon = model_output
        elif cfg.prediction_type == "sample":
            pred_original = model_output
            pred_epsilon = (sample - alpha_prod_t**0.5 * pred_original) / beta_prod_t**0.5
        else:  # v_prediction
            pred_original = (alpha_prod_t**0.5) * sample - (beta_prod_t**0.5) * model_output
            pred_epsilon = (alpha_prod_t**0.5) * model_output + (beta_prod_t**0.5) * sample
        if cfg.clip_sample:
            pred_original = pred_original.clamp(-cfg.clip_sample_range, cfg.clip_sample_range)
        # With eta = 0 the variance term vanishes: std_dev_t is 0.
        direction = (1 - alpha_prod_t_prev) ** 0.5 * pred_epsilon
        prev_sample = alpha_prod_t_prev**0.5 * pred_original + direction
        return StepOutput(prev_sample, pred_original)

    def add_noise(
        self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """Forward diffusion q(x_t | x_0) at `timesteps` (one per batch item, or one)."""
        alphas_cumprod = self.alphas_cumprod.to(device=original.device, dtype=original.dtype)
        timesteps = timesteps.to(original.device)
        sqrt_alpha = (alphas_cumprod[timesteps] ** 0.5).flatten()
        sqrt_one_minus = ((1 - alphas_cumprod[timesteps]) ** 0.5).flatten()
        shape = (-1,) + (1,) * (original.dim() - 1)
        return sqrt_alpha.reshape(shape) * original + sqrt_one_minus.reshape(shape) * noise


def scheduler_factory(folder: Path) -> Callable[[], DDIMScheduler]:
    """A `new_scheduler` callable for `DiffusionParts`, reading the config once."""
    config = DDIMConfig.from_folder(folder)

    def new_scheduler() -> DDIMScheduler:
        return DDIMScheduler(config)

    return new_scheduler
