"""The Gaussian diffusion process: noise schedule, training loss and samplers, on top of diffusers' schedulers.

Nothing here knows the network: a denoiser enters only as `model_fn(x_t, t) -> prediction`. A prediction with twice
the channels of the data also carries a learned variance (DiT's `learn_sigma`, improved DDPM's "learned range",
Nichol & Dhariwal 2021): `training_loss` trains it with the variational bound, the "ddpm" sampler draws with it.
"""

import math
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
        # The posterior q(x_{t-1} | x_t, x_0) = N(a_t x_0 + b_t x_t, σ̃²_t) of every step, for the variational bound
        # (improved DDPM, eq. 10-12), in float64 from the scheduler's betas.
        betas = self.train_scheduler.betas.double()
        alpha_bar = torch.cumprod(1 - betas, dim=0)
        alpha_bar_prev = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
        variance = betas * (1 - alpha_bar_prev) / (1 - alpha_bar)
        self._tables = {
            "sqrt_alpha_bar": alpha_bar.sqrt(),
            "sqrt_one_minus_alpha_bar": (1 - alpha_bar).sqrt(),
            "mean_x0": betas * alpha_bar_prev.sqrt() / (1 - alpha_bar),
            "mean_xt": (1 - alpha_bar_prev) * (1 - betas).sqrt() / (1 - alpha_bar),
            # σ̃²_0 is 0: its log is taken from step 1, as improved DDPM does ("clipped").
            "log_variance": torch.cat([variance[1:2], variance[1:]]).log(),
            "log_beta": betas.log(),
        }

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        if self.prediction_type == "epsilon":
            return noise
        return self.train_scheduler.get_velocity(x0, noise, t)

    def training_loss(
        self, model_fn: ModelFn, x0: Tensor, noise: Tensor | None = None, t: Tensor | None = None
    ) -> Tensor:
        """The loss at random (or given) timesteps and noise; a scalar.

        The mean squared error of the prediction (ε or v). When the model also predicts the variance (twice the
        channels of x0), improved DDPM's hybrid loss, as DiT trains: the MSE plus the variational-bound term
        `variational_bound` of the variance channels, with the mean held fixed, so that the MSE alone trains the
        mean and the bound alone the variance.
        """
        if noise is None:
            noise = torch.randn_like(x0)
        if t is None:
            t = torch.randint(0, self.num_train_timesteps, (x0.shape[0],), device=x0.device)
        x_t = self.train_scheduler.add_noise(x0, noise, t)
        output = model_fn(x_t, t)
        channels = x0.shape[1]
        if output.shape[1] not in (channels, 2 * channels):
            raise ValueError(
                f"the model predicts {output.shape[1]} channels for data of {channels}: expected {channels} (the "
                f"{self.prediction_type} prediction) or {2 * channels} (it and a learned variance)"
            )
        prediction = output[:, :channels]
        loss = F.mse_loss(prediction.float(), self.target(x0, noise, t).float())
        if output.shape[1] == 2 * channels:
            loss = loss + self.variational_bound(x0, x_t, t, prediction.detach(), output[:, channels:]).mean()
        return loss

    def variational_bound(self, x0: Tensor, x_t: Tensor, t: Tensor, prediction: Tensor, variance: Tensor) -> Tensor:
        """The term `L_{t-1}` of the variational bound, per sample `[B]`, in bits per dimension.

        The model's reverse step is `N(μ, Σ)`: μ the posterior mean at the x_0 that `prediction` (ε or v) implies,
        `log Σ = f log β_t + (1 − f) log σ̃²_t` with `f = (variance + 1) / 2` (the "learned range"). For t > 0 the
        term is `KL(q(x_{t-1} | x_t, x_0) ‖ N(μ, Σ))`; for t = 0 the negative log-likelihood of x_0 under `N(μ, Σ)`
        discretised to 256 levels of [-1, 1] (the data's decoder, as improved DDPM and DiT define it).
        """
        x0, x_t, prediction, variance = (tensor.float() for tensor in (x0, x_t, prediction, variance))
        sqrt_alpha_bar, sqrt_one_minus = self._at("sqrt_alpha_bar", t, x0), self._at("sqrt_one_minus_alpha_bar", t, x0)
        if self.prediction_type == "epsilon":
            x0_predicted = (x_t - sqrt_one_minus * prediction) / sqrt_alpha_bar
        else:
            x0_predicted = sqrt_alpha_bar * x_t - sqrt_one_minus * prediction
        mean_x0, mean_xt = self._at("mean_x0", t, x0), self._at("mean_xt", t, x0)
        true_mean, model_mean = mean_x0 * x0 + mean_xt * x_t, mean_x0 * x0_predicted + mean_xt * x_t
        true_log_variance = self._at("log_variance", t, x0)
        fraction = (variance + 1) / 2
        model_log_variance = fraction * self._at("log_beta", t, x0) + (1 - fraction) * true_log_variance
        kl = 0.5 * (
            model_log_variance
            - true_log_variance
            + torch.exp(true_log_variance - model_log_variance)
            + (true_mean - model_mean).square() * torch.exp(-model_log_variance)
            - 1
        )
        nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_variance)
        per_element = torch.where(t.view(-1, *[1] * (x0.dim() - 1)) == 0, nll, kl)
        return per_element.flatten(1).mean(dim=1) / math.log(2.0)

    def _at(self, name: str, t: Tensor, like: Tensor) -> Tensor:
        # The table's values at timesteps t [B], shaped to broadcast against `like` [B, ...].
        values = self._tables[name].float().to(like.device)[t.long()]
        return values.view(-1, *[1] * (like.dim() - 1))

    def sampler(
        self, name: Sampler, learned_variance: bool = False
    ) -> DDPMScheduler | DDIMScheduler | DPMSolverMultistepScheduler:
        """A fresh diffusers scheduler of kind `name` for this process' noise schedule; a "ddpm" one for a model
        with a learned variance takes it from the model's output (diffusers' "learned_range")."""
        config = self.train_scheduler.config
        if name == "ddpm":
            return DDPMScheduler.from_config(config, **({"variance_type": "learned_range"} if learned_variance else {}))
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
        """Denoise `noise` `[B, C, H, W]` in `num_steps` steps; stochastic samplers draw from `generator`.

        A model output of 2C channels carries a learned variance: "ddpm" draws each step's noise with it; "ddim" and
        "dpm++" are deterministic and take the mean only."""
        scheduler = self.sampler(sampler)
        scheduler.set_timesteps(num_steps, device=noise.device)
        x = noise * scheduler.init_noise_sigma
        channels = noise.shape[1]
        for index, t in enumerate(scheduler.timesteps):
            x_in = scheduler.scale_model_input(x, t)
            output = model_fn(x_in, t.expand(x.shape[0]))
            if output.shape[1] == 2 * channels and sampler == "ddpm":
                if index == 0:
                    # Known from the first output: a DDPM step keeps no state, so the scheduler is swapped now.
                    scheduler = self.sampler("ddpm", learned_variance=True)
                    scheduler.set_timesteps(num_steps, device=noise.device)
            else:
                output = output[:, :channels]
            x = scheduler.step(output, t, x, generator=generator).prev_sample
        return x


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """Log-probability, per element, of data x in [-1, 1] quantised to 256 levels under `N(mean, exp(log_scale)²)`:
    the mass of the level's bin (the outermost bins reach to ±∞), from the exact normal CDF."""
    half_bin = 1.0 / 255.0
    inverse_scale = torch.exp(-log_scale)
    upper, lower = inverse_scale * (x - mean + half_bin), inverse_scale * (x - mean - half_bin)
    cdf = torch.special.ndtr
    # A bin's mass from the tail it lies in (Φ(b) − Φ(a) = Φ(−a) − Φ(−b)), so that far tails do not cancel to 0.
    inner = torch.where(x > mean, cdf(-lower) - cdf(-upper), cdf(upper) - cdf(lower))
    probability = torch.where(x < -0.999, cdf(upper), torch.where(x > 0.999, cdf(-lower), inner))
    return probability.clamp(min=1e-12).log()
