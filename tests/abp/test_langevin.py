"""Langevin inference against the exact posterior of a linear-Gaussian generator.

For x = W z + b + ε, z ~ N(0, I), ε ~ N(0, σ²I) and an observation y = A x (A linear), the
posterior of z is N(μ, Σ) with Σ = (I + W'ᵀW'/σ²)⁻¹ and μ = Σ W'ᵀ(y − b')/σ², where W' = A W
and b' = A b. The tolerances below are a few standard errors of 2000 independent chains plus
the known O(s²) bias of unadjusted Langevin (about 1 % at the step size used): a wrong sign, a
missing 1/σ², a wrong noise scale or a batch-mean reduction misses them by far.
"""

import math

import torch

from abp.langevin import infer, reconstruct
from abp.models import LinearGenerator
from abp.observe import Mask, Projection, SeededProjections

D, d, SIGMA = 8, 3, 0.5
CHAINS = 2000  # per observation


def make_linear_generator(seed: int = 0) -> LinearGenerator:
    """W with the eigenvalues of WᵀW/σ² spread over [1, 10], so the posterior is far from
    the prior and its scales differ by direction."""
    rng = torch.Generator().manual_seed(seed)
    left, _ = torch.linalg.qr(torch.randn(D, d, generator=rng, dtype=torch.float64))
    right, _ = torch.linalg.qr(torch.randn(d, d, generator=rng, dtype=torch.float64))
    singular = SIGMA * torch.tensor([1.0, 2.0, math.sqrt(10.0)], dtype=torch.float64)
    g = LinearGenerator(d, D).double()
    with torch.no_grad():
        g.weight.copy_(left @ torch.diag(singular) @ right.T)
        g.bias.copy_(0.3 * torch.randn(D, generator=rng, dtype=torch.float64))
    return g


def exact_posterior(W: torch.Tensor, b: torch.Tensor, y: torch.Tensor, sigma: float):
    precision = torch.eye(W.shape[1], dtype=W.dtype) + W.T @ W / sigma**2
    cov = torch.linalg.inv(precision)
    mean = cov @ W.T @ (y - b) / sigma**2
    return mean, cov, precision


def langevin_settings(precision: torch.Tensor) -> tuple[float, int]:
    """Step size with (s²/2)·λ_max = 0.02 (≈1 % bias) and enough steps to forget the start."""
    eigenvalues = torch.linalg.eigvalsh(precision)
    half_step = 0.02 / float(eigenvalues.max())
    n_steps = int(8 / (half_step * float(eigenvalues.min())))
    return math.sqrt(2 * half_step), n_steps


def assert_matches_posterior(samples: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor):
    n = samples.shape[0]
    standard_error = torch.sqrt(torch.diagonal(cov) / n)
    assert torch.all((samples.mean(0) - mean).abs() < 5 * standard_error + 0.01 * mean.abs()), (
        samples.mean(0),
        mean,
    )
    sample_cov = torch.cov(samples.T)
    relative = torch.linalg.norm(sample_cov - cov) / torch.linalg.norm(cov)
    assert relative < 0.12, (sample_cov, cov)


def two_observations(g: LinearGenerator, seed: int = 1) -> torch.Tensor:
    rng = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        x = g(2.0 * torch.randn(2, d, generator=rng, dtype=torch.float64))
    return x + SIGMA * torch.randn(x.shape, generator=rng, dtype=torch.float64)


def run_chains(g, y, observation, precision, seed=2):
    """CHAINS chains for each of the two observations, in one batch."""
    step_size, n_steps = langevin_settings(precision)
    rng = torch.Generator().manual_seed(seed)
    batch_y = y.repeat_interleave(CHAINS, dim=0)
    z0 = torch.randn(len(batch_y), d, generator=rng, dtype=torch.float64)
    return infer(
        g,
        batch_y,
        z0,
        sigma=SIGMA,
        step_size=step_size,
        n_steps=n_steps,
        observation=observation,
        rng=rng,
    )


def test_identity_matches_exact_posterior_for_each_example_in_the_batch():
    g = make_linear_generator()
    y = two_observations(g)
    posteriors = [exact_posterior(g.weight.detach(), g.bias.detach(), y_i, SIGMA) for y_i in y]
    precision = posteriors[0][2]
    z = run_chains(g, y, None, precision)
    for i, (mean, cov, _) in enumerate(posteriors):
        assert_matches_posterior(z[i * CHAINS : (i + 1) * CHAINS], mean, cov)
    # The two observations have clearly different posteriors: cross-talk would show.
    assert (posteriors[0][0] - posteriors[1][0]).abs().max() > 0.5


def test_mask_matches_posterior_of_observed_rows_and_ignores_hidden_entries():
    g = make_linear_generator()
    y = two_observations(g)
    masks = torch.ones(2, D, dtype=torch.float64)
    masks[0, [1, 4, 6]] = 0
    masks[1, [0, 2, 3, 7]] = 0
    per_chain_mask = Mask(masks.repeat_interleave(CHAINS, dim=0))
    W, b = g.weight.detach(), g.bias.detach()
    posteriors = []
    for i in range(2):
        rows = masks[i].bool()
        posteriors.append(exact_posterior(W[rows], b[rows], y[i, rows], SIGMA))
    precision = max((p[2] for p in posteriors), key=lambda p: float(torch.linalg.eigvalsh(p).max()))
    z = run_chains(g, y, per_chain_mask, precision)
    for i, (mean, cov, _) in enumerate(posteriors):
        assert_matches_posterior(z[i * CHAINS : (i + 1) * CHAINS], mean, cov)

    # Hidden entries have no influence at all: garbage there gives the very same chains.
    garbage = torch.where(masks.bool(), y, torch.full_like(y, 1e6))
    assert torch.equal(run_chains(g, garbage, per_chain_mask, precision), z)


def test_projection_matches_posterior_of_the_projected_model():
    g = make_linear_generator()
    y_full = two_observations(g)
    projection = Projection.gaussian(5, D, seed=3)
    projection.matrix = projection.matrix.double()
    A = projection.matrix
    y = projection(y_full)
    W, b = A @ g.weight.detach(), A @ g.bias.detach()
    posteriors = [exact_posterior(W, b, y_i, SIGMA) for y_i in y]
    z = run_chains(g, y, projection, posteriors[0][2])
    for i, (mean, cov, _) in enumerate(posteriors):
        assert_matches_posterior(z[i * CHAINS : (i + 1) * CHAINS], mean, cov)


def test_per_example_projections_match_the_posterior_of_each_examples_own_model():
    g = make_linear_generator()
    y_full = two_observations(g)
    # Seed 2: both posteriors conditioned like the shared projection's (the chains' step
    # count grows with the worse one's condition number; some seeds need 4× as many).
    seeds = SeededProjections.seeds_for(2, torch.arange(2))
    own = SeededProjections(seeds, 5, D, dtype=torch.float64)
    y = own(y_full)
    per_chain = SeededProjections(seeds.repeat_interleave(CHAINS), 5, D, dtype=torch.float64)
    posteriors = [
        exact_posterior(A @ g.weight.detach(), A @ g.bias.detach(), y_i, SIGMA)
        for A, y_i in zip(own.matrices, y, strict=True)
    ]
    precision = max((p[2] for p in posteriors), key=lambda p: float(torch.linalg.eigvalsh(p).max()))
    z = run_chains(g, y, per_chain, precision)
    for i, (mean, cov, _) in enumerate(posteriors):
        assert_matches_posterior(z[i * CHAINS : (i + 1) * CHAINS], mean, cov)
    # The two matrices differ, and so do the posteriors: one shared A would miss one of them.
    assert not torch.allclose(own.matrices[0], own.matrices[1])
    assert (posteriors[0][1] - posteriors[1][1]).abs().max() > 0.01


def test_gradient_descent_without_noise_converges_to_posterior_mean():
    g = make_linear_generator()
    y = two_observations(g)
    means = torch.stack(
        [exact_posterior(g.weight.detach(), g.bias.detach(), y_i, SIGMA)[0] for y_i in y]
    )
    z = infer(
        g,
        y,
        torch.zeros(2, d, dtype=torch.float64),
        sigma=SIGMA,
        step_size=0.3,
        n_steps=2000,
        noise=False,
    )
    torch.testing.assert_close(z, means, atol=1e-8, rtol=0)


def test_each_chain_is_the_same_alone_or_in_any_batch():
    g = make_linear_generator()
    rng = torch.Generator().manual_seed(5)
    y = torch.randn(6, D, generator=rng, dtype=torch.float64)
    z0 = torch.randn(6, d, generator=rng, dtype=torch.float64)
    together = infer(g, y, z0, sigma=SIGMA, step_size=0.1, n_steps=50, noise=False)
    alone = torch.cat(
        [
            infer(
                g, y[i : i + 1], z0[i : i + 1], sigma=SIGMA, step_size=0.1, n_steps=50, noise=False
            )
            for i in range(6)
        ]
    )
    torch.testing.assert_close(together, alone, atol=1e-12, rtol=0)


def test_inference_computes_no_weight_gradients_and_leaves_inputs_alone():
    g = make_linear_generator()
    y = two_observations(g)
    z0 = torch.zeros(2, d, dtype=torch.float64)
    infer(g, y, z0, sigma=SIGMA, step_size=0.1, n_steps=5)
    assert all(p.grad is None for p in g.parameters())
    assert all(p.requires_grad for p in g.parameters())
    assert torch.equal(z0, torch.zeros(2, d, dtype=torch.float64))


def test_reconstruct_recovers_hidden_entries_of_a_linear_signal():
    g = make_linear_generator()
    with torch.no_grad():
        x = g(torch.randn(4, d, generator=torch.Generator().manual_seed(7), dtype=torch.float64))
    mask = torch.ones_like(x)
    mask[:, :2] = 0  # 6 observed entries determine 3 latents: the hidden 2 follow
    # A small σ makes the MAP close to the noise-free solution.
    _, x_hat = reconstruct(
        g,
        mask * x,
        latent_shape=(d,),
        sigma=0.01,
        step_size=0.004,
        n_steps=20000,
        observation=Mask(mask),
    )
    torch.testing.assert_close(x_hat, x, atol=2e-3, rtol=0)
