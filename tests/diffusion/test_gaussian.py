"""GaussianDiffusion: the noise schedule, the training targets and the samplers, checked against oracles."""

import math

import pytest
import torch
from diffusers import DDPMScheduler

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


def posterior(abar: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
    """Mean and variance of q(x_{t-1} | x_t, x_0), written out from DDPM's definitions (Ho et al., eq. 6-7)."""
    a = abar[t].view(-1, 1, 1, 1)
    a_prev = torch.where(t > 0, abar[(t - 1).clamp(min=0)], torch.ones_like(abar[t])).view(-1, 1, 1, 1)
    beta = 1 - a / a_prev
    mean = (a_prev.sqrt() * beta * x0 + (1 - beta).sqrt() * (1 - a_prev) * x_t) / (1 - a)
    return mean, beta * (1 - a_prev) / (1 - a), beta


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_variational_bound_is_the_kl_to_the_posterior(prediction_type):
    # KL(q(x_{t-1} | x_t, x_0) || N(μ_θ, Σ_θ)) in bits per dimension, against torch.distributions: μ_θ the posterior
    # mean at the x_0 the prediction implies, log Σ_θ = f log β_t + (1 − f) log σ̃²_t with f = (v + 1) / 2.
    diffusion = GaussianDiffusion(prediction_type=prediction_type)
    abar = alpha_bar("linear")
    t = torch.tensor([1, 2, 10, 500, 999])
    x0, noise = torch.randn(5, 2, 4, 4).double(), torch.randn(5, 2, 4, 4).double()
    a = abar[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    x0_model = x0 + 0.3 * torch.randn_like(x0)  # the model's (wrong) idea of x_0
    eps_model = (x_t - a.sqrt() * x0_model) / (1 - a).sqrt()
    prediction = eps_model if prediction_type == "epsilon" else a.sqrt() * eps_model - (1 - a).sqrt() * x0_model
    v = torch.rand(5, 2, 4, 4).double() * 2 - 1
    v[0], v[1] = -1.0, 1.0  # the two ends of the range: σ̃²_t and β_t
    true_mean, true_variance, beta = posterior(abar, x0, x_t, t)
    model_mean, _, _ = posterior(abar, x0_model, x_t, t)
    model_variance = torch.exp((v + 1) / 2 * beta.log() + (1 - v) / 2 * true_variance.log())
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(true_mean, true_variance.sqrt()),
        torch.distributions.Normal(model_mean, model_variance.sqrt()),
    )
    expected = expected.flatten(1).mean(dim=1) / math.log(2)
    bound = diffusion.variational_bound(x0, x_t, t, prediction, v)
    torch.testing.assert_close(bound, expected.float(), rtol=2e-3, atol=1e-5)
    # The posterior itself scores 0: the right mean (the true x_0) and v = -1 (σ̃²_t).
    truth = noise if prediction_type == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * x0
    exact = diffusion.variational_bound(x0, x_t, t, truth, -torch.ones_like(v))
    torch.testing.assert_close(exact, torch.zeros(5), rtol=0, atol=1e-4)


def test_variational_bound_at_step_zero_is_the_discretised_decoder_likelihood():
    # At t = 0 the term is −log p(x_0 | x_1): the Gaussian's mass on x_0's bin of 256 levels of [-1, 1], the outermost
    # bins open to ±∞ (improved DDPM, DiT).
    diffusion = GaussianDiffusion()
    abar = alpha_bar("linear")
    x0 = torch.tensor([-1.0, -0.5, 0.0, 127 / 127.5 - 1, 1.0]).view(1, 5, 1, 1).double()
    x_t = abar[0].sqrt() * x0 + (1 - abar[0]).sqrt() * torch.randn_like(x0)
    eps = (x_t - abar[0].sqrt() * x0) / (1 - abar[0]).sqrt() + 0.01  # a slightly wrong mean
    v = torch.full_like(x0, 0.5)
    bound = diffusion.variational_bound(x0, x_t, torch.tensor([0]), eps, v)
    # The model's mean and scale at t = 0, from the definitions: σ̃²_0 = 0 is replaced by σ̃²_1 ("clipped").
    _, variance_1, _ = posterior(abar, x0, x_t, torch.tensor([1]))
    log_variance = 0.75 * math.log(1 - abar[0]) + 0.25 * variance_1.log()
    x0_model = (x_t - (1 - abar[0]).sqrt() * eps) / abar[0].sqrt()
    normal = torch.distributions.Normal(x0_model, torch.exp(0.5 * log_variance))  # the mean at t = 0 is x0_model
    upper, lower = normal.cdf(x0 + 1 / 255), normal.cdf(x0 - 1 / 255)
    mass = torch.where(x0 < -0.999, upper, torch.where(x0 > 0.999, 1 - lower, upper - lower))
    expected = -mass.log().mean() / math.log(2)
    torch.testing.assert_close(bound, expected.float().view(1), rtol=1e-3, atol=1e-5)


def test_learned_variance_is_trained_by_the_bound_and_the_mean_by_the_mse_only():
    diffusion = GaussianDiffusion()
    x0, noise = torch.randn(8, 2, 4, 4), torch.randn(8, 2, 4, 4)
    t = torch.randint(1, 1000, (8,))
    mean = (noise + 0.1 * torch.randn_like(noise)).requires_grad_()
    v = torch.zeros_like(noise, requires_grad=True)
    hybrid = diffusion.training_loss(lambda x_t, t_: torch.cat([mean, v], dim=1), x0, noise, t)
    hybrid.backward()
    mse_only = mean.detach().clone().requires_grad_()
    mse = diffusion.training_loss(lambda x_t, t_: mse_only, x0, noise, t)
    mse.backward()
    assert hybrid.item() > mse.item()  # the bound is added
    torch.testing.assert_close(mean.grad, mse_only.grad, rtol=0, atol=0)  # and does not reach the mean
    assert v.grad is not None and v.grad.abs().min() > 0  # every variance element is trained


def test_the_learned_variance_goes_to_the_posterior_variance_for_an_exact_mean():
    # Trained by the bound alone, with the mean exact, a free variance logit per timestep moves to the bottom of its
    # range (v = −1: Σ = σ̃²_t, where the KL is 0).
    diffusion = GaussianDiffusion()
    t = torch.tensor([5, 50, 500])
    logits = torch.zeros(3, 1, 1, 1, requires_grad=True)
    optimizer = torch.optim.Adam([logits], lr=0.1)
    for _ in range(200):
        x0, noise = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
        v = torch.tanh(logits).expand(3, 2, 4, 4)
        loss = diffusion.training_loss(lambda x_t, t_, noise=noise, v=v: torch.cat([noise, v], dim=1), x0, noise, t)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert (torch.tanh(logits) < -0.95).all() and loss.item() < 1e-3


def test_a_prediction_of_other_channels_is_refused():
    with pytest.raises(ValueError, match="predicts 3 channels for data of 2: expected 2 .* or 4"):
        GaussianDiffusion().training_loss(lambda x_t, t: torch.zeros(4, 3, 4, 4), torch.randn(4, 2, 4, 4))


def test_ddpm_draws_with_the_learned_variance():
    diffusion = GaussianDiffusion()
    noise = torch.randn(4, 1, 4, 4)

    def mean(x, t):
        return 0.5 * torch.tanh(x)

    def sample(fn):
        return diffusion.sample(fn, noise, "ddpm", num_steps=5, generator=torch.Generator().manual_seed(1))

    def fixed(variance_type: str):
        # diffusers' DDPM step with a fixed variance: σ̃²_t ("fixed_small") or β_t ("fixed_large").
        scheduler = DDPMScheduler.from_config(diffusion.train_scheduler.config, variance_type=variance_type)
        scheduler.set_timesteps(5)
        x, generator = noise.clone(), torch.Generator().manual_seed(1)
        for t in scheduler.timesteps:
            x = scheduler.step(mean(x, t), t, x, generator=generator).prev_sample
        return x

    def learned(v: float):
        return lambda x, t: torch.cat([mean(x, t), torch.full_like(x, v)], dim=1)

    # The two ends of the learned range are the two fixed variances; between them, another draw.
    torch.testing.assert_close(sample(learned(-1.0)), fixed("fixed_small"), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sample(learned(1.0)), fixed("fixed_large"), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sample(mean), fixed("fixed_small"), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(sample(learned(0.0)), sample(learned(1.0)))


@pytest.mark.parametrize("sampler", ["ddim", "dpm++"])
def test_deterministic_samplers_take_the_mean_only(sampler):
    diffusion = GaussianDiffusion()
    noise = torch.randn(2, 4, 4, 4)
    plain = diffusion.sample(lambda x, t: 0.5 * x, noise, sampler, num_steps=4)
    with_variance = diffusion.sample(lambda x, t: torch.cat([0.5 * x, torch.randn_like(x)], dim=1), noise, sampler, 4)
    torch.testing.assert_close(with_variance, plain, rtol=0, atol=0)


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
