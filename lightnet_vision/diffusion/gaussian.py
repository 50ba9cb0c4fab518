"""The Gaussian diffusion process: noise schedule, training loss and samplers, on top of diffusers' schedulers.

Nothing here knows the network: a denoiser enters only as `model_fn(x_t, t) -> prediction`.
"""

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from torch import Tensor

Sampler = Literal["ddpm", "ddim", "dpm++"]
ModelFn = Callable[[Tensor, Tensor], Tensor]


class GaussianDiffusion:
    """Forward noising `x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε` and its reverse, with ε- or v-prediction.

    Args:
        num_train_timesteps: Discrete training timesteps T.
        beta_schedule: diffusers' schedule name: "linear" (DiT), "scaled_linear" or "squaredcos_cap_v2" (cosine).
        beta_start: First β of the linear schedules.
        beta_end: Last β of the linear schedules.
        prediction_type: What the denoiser predicts: the noise ("epsilon") or the velocity ("v_prediction").
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        prediction_type: Literal["epsilon", "v_prediction"] = "epsilon",
    ) -> None:
        self.num_train_timesteps = num_train_timesteps
        self.prediction_type = prediction_type
        self.train_scheduler = DDPMScheduler(
            num_train_timesteps=num_train_timesteps,
            beta_schedule=beta_schedule,
            beta_start=beta_start,
            beta_end=beta_end,
            prediction_type=prediction_type,
            clip_sample=False,
        )

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        if self.prediction_type == "epsilon":
            return noise
        return self.train_scheduler.get_velocity(x0, noise, t)

    def training_loss(
        self, model_fn: ModelFn, x0: Tensor, noise: Tensor | None = None, t: Tensor | None = None
    ) -> Tensor:
        """Mean squared error of the prediction at random (or given) timesteps and noise; a scalar."""
        if noise is None:
            noise = torch.randn_like(x0)
        if t is None:
            t = torch.randint(0, self.num_train_timesteps, (x0.shape[0],), device=x0.device)
        x_t = self.train_scheduler.add_noise(x0, noise, t)
        prediction = model_fn(x_t, t)[:, : x0.shape[1]]  # a learned variance, if any, is not trained by this loss
        return F.mse_loss(prediction.float(), self.target(x0, noise, t).float())

    def sampler(self, name: Sampler) -> DDPMScheduler | DDIMScheduler | DPMSolverMultistepScheduler:
        """A fresh diffusers scheduler of kind `name` for this process' noise schedule."""
        config = self.train_scheduler.config
        if name == "ddpm":
            return DDPMScheduler.from_config(config)
        if name == "ddim":
            return DDIMScheduler.from_config(config, timestep_spacing="trailing")
        if name == "dpm++":
            return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2)
        raise ValueError(f"unknown sampler {name!r}; choose one of 'ddpm', 'ddim', 'dpm++'")

    @torch.no_grad()
    def sample(
        self,
        model_fn: ModelFn,
        noise: Tensor,
        sampler: Sampler = "ddim",
        num_steps: int = 50,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Denoise `noise` `[B, C, H, W]` in `num_steps` steps; stochastic samplers draw from `generator`."""
        scheduler = self.sampler(sampler)
        scheduler.set_timesteps(num_steps, device=noise.device)
        x = noise * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            x_in = scheduler.scale_model_input(x, t)
            prediction = model_fn(x_in, t.expand(x.shape[0]))[:, : x.shape[1]]
            x = scheduler.step(prediction, t, x, generator=generator).prev_sample
        return x
