"""GaussianDiffusion: the noise schedule, the training targets and the samplers, checked against oracles."""

import math

import pytest
import torch

from lightnet_vision.diffusion import GaussianDiffusion

SAMPLERS = ["ddpm", "ddim", "dpm++"]


def alpha_bar(schedule: str, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """ᾱ_t written out from the definitions (DDPM's linear betas; Nichol & Dhariwal's cosine), in float64."""
    if schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
    else:

        def f(t: float) -> float:
            return math.cos((t / num_steps + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = torch.tensor([min(1 - f(t + 1) / f(t), 0.999) for t in range(num_steps)], dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0)


def point_mass_oracle(diffusion: GaussianDiffusion, x0: torch.Tensor):
    """The exact denoiser when the data is the single point x0: ε (or v) recovered from x_t and t."""
    abar = diffusion.train_scheduler.alphas_cumprod.double()

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = abar[t.long()].view(-1, 1, 1, 1)
        eps = (x_t.double() - a.sqrt() * x0) / (1 - a).sqrt()
        out = eps if diffusion.prediction_type == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * x0
        return out.float()

    return model_fn


@pytest.mark.parametrize("schedule", ["linear", "squaredcos_cap_v2"])
def test_add_noise_follows_the_schedule(schedule):
    diffusion = GaussianDiffusion(beta_schedule=schedule, beta_start=2e-4, beta_end=0.03)
    abar = alpha_bar(schedule, beta_start=2e-4, beta_end=0.03)
    torch.testing.assert_close(diffusion.train_scheduler.alphas_cumprod.double(), abar, rtol=1e-5, atol=1e-6)
    x0, noise = torch.randn(4, 2, 4, 4), torch.randn(4, 2, 4, 4)
    t = torch.tensor([0, 10, 500, 999])
    a = abar[t].view(-1, 1, 1, 1)
    expected = (a.sqrt() * x0 + (1 - a).sqrt() * noise).float()
    torch.testing.assert_close(diffusion.train_scheduler.add_noise(x0, noise, t), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_training_loss_of_an_oracle_is_zero_and_of_zero_is_one(prediction_type):
    diffusion = GaussianDiffusion(prediction_type=prediction_type)
    abar = alpha_bar("linear")
    x0, noise = torch.randn(64, 4, 8, 8), torch.randn(64, 4, 8, 8)
    t = torch.randint(0, 1000, (64,))
    a = abar[t].view(-1, 1, 1, 1)
    truth = noise if prediction_type == "epsilon" else (a.sqrt() * noise - (1 - a).sqrt() * x0).float()
    # The oracle also checks that the model sees the timesteps the noise was added at.
    seen = []

    def oracle(x_t, t_seen):
        seen.append(t_seen)
        return truth

    assert diffusion.training_loss(oracle, x0, noise, t).item() < 1e-10
    assert torch.equal(seen[0], t)
    zero = diffusion.training_loss(lambda x_t, t_: torch.zeros_like(x_t), x0, noise, t).item()
    assert zero == pytest.approx(1.0, abs=0.05)  # E[ε²] = 1; E[v²] = ᾱ E[ε²] + (1-ᾱ) E[x0²] = 1 for unit x0
    # The loss is the mean squared error, so a prediction off by 0.5 everywhere costs 0.25.
    assert diffusion.training_loss(lambda x_t, t_: truth + 0.5, x0, noise, t).item() == pytest.approx(0.25)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_training_loss_with_random_timesteps_of_the_point_mass_oracle_is_zero(prediction_type):
    diffusion = GaussianDiffusion(prediction_type=prediction_type)
    x0 = torch.randn(32, 2, 4, 4)
    assert diffusion.training_loss(point_mass_oracle(diffusion, x0), x0).item() < 1e-6


def test_training_loss_ignores_learned_variance_channels():
    diffusion = GaussianDiffusion()
    x0, noise = torch.randn(8, 2, 4, 4), torch.randn(8, 2, 4, 4)
    t = torch.randint(0, 1000, (8,))
    with_sigma = diffusion.training_loss(lambda x_t, t_: torch.cat([noise, 100 + noise], dim=1), x0, noise, t)
    assert with_sigma.item() < 1e-10


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sampling_is_deterministic_for_a_seed(sampler):
    diffusion = GaussianDiffusion()
    noise = torch.randn(2, 2, 4, 4)

    def model_fn(x, t):
        return 0.5 * torch.tanh(x) + t.float().view(-1, 1, 1, 1) / 2000

    first = diffusion.sample(model_fn, noise, sampler, num_steps=3, generator=torch.Generator().manual_seed(1))
    second = diffusion.sample(model_fn, noise, sampler, num_steps=3, generator=torch.Generator().manual_seed(1))
    assert first.shape == noise.shape and torch.isfinite(first).all()
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert not torch.allclose(first, noise)  # the sampler did something


def test_ddpm_sampling_depends_on_the_seed():
    diffusion = GaussianDiffusion()
    noise = torch.randn(2, 2, 4, 4)

    def model_fn(x, t):
        return 0.5 * x

    first = diffusion.sample(model_fn, noise, "ddpm", num_steps=3, generator=torch.Generator().manual_seed(1))
    other = diffusion.sample(model_fn, noise, "ddpm", num_steps=3, generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(first, other)


def test_unknown_sampler_is_refused():
    with pytest.raises(ValueError, match="euler"):
        GaussianDiffusion().sample(lambda x, t: x, torch.randn(1, 1, 2, 2), "euler", num_steps=2)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("schedule", ["linear", "squaredcos_cap_v2"])
def test_sampling_with_the_point_mass_oracle_returns_the_point(sampler, prediction_type, schedule):
    diffusion = GaussianDiffusion(beta_schedule=schedule, prediction_type=prediction_type)
    x0 = torch.randn(2, 3, 4, 4).double()
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    samples = diffusion.sample(
        point_mass_oracle(diffusion, x0), noise, sampler, num_steps=10, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(samples, x0.float(), rtol=1e-3, atol=1e-3)
