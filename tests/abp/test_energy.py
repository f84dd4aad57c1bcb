"""The energy E(z, W) = ||y − A(g(z; W))||² / (2σ²) + ||z||² / 2, one value per example:
against the formula worked out example by example, with hidden entries left out, and its
gradient in z and W against the closed forms of a linear generator."""

import torch
from torch import nn

from abp.energy import energy, energy_of_residual
from abp.models import LinearGenerator
from abp.observe import Identity, Mask, Projection

SIGMA = 0.4  # not 1, nor 1/√2: a missing or doubled σ² changes the value


def small_generator(seed: int = 0) -> nn.Module:
    """A nonlinear generator z (d=3) → x (1×2×3), in float64 so that sums compare exactly."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Unflatten(1, (1, 2, 3))).double()


def by_hand(
    x: torch.Tensor,
    y: torch.Tensor,
    z: torch.Tensor,
    sigma: float,
    observed: torch.Tensor | None = None,
) -> list[float]:
    """The formula, one example and one entry at a time, in plain Python floats."""
    values = []
    for i in range(len(z)):
        data = 0.0
        for j, (xi, yi) in enumerate(zip(x[i].flatten().tolist(), y[i].flatten().tolist())):
            if observed is None or observed[i].flatten()[j]:
                data += (yi - xi) ** 2
        prior = sum(v**2 for v in z[i].tolist())
        values.append(data / (2 * sigma**2) + prior / 2)
    return values


def test_the_energy_is_the_formula_for_each_example_on_its_own():
    g = small_generator()
    rng = torch.Generator().manual_seed(1)
    z = torch.randn(4, 3, generator=rng, dtype=torch.float64)
    y = torch.randn(4, 1, 2, 3, generator=rng, dtype=torch.float64)
    values = energy(g, z, y, sigma=SIGMA)
    assert values.shape == (4,)  # one per example, never a batch sum or mean
    with torch.no_grad():
        expected = by_hand(g(z), y, z, SIGMA)
    torch.testing.assert_close(values, torch.tensor(expected, dtype=torch.float64))
    # Each example's energy is its own: the same alone as in the batch.
    for i in range(4):
        torch.testing.assert_close(
            energy(g, z[i : i + 1], y[i : i + 1], sigma=SIGMA), values[i : i + 1]
        )
    # No operator means complete data.
    torch.testing.assert_close(energy(g, z, y, sigma=SIGMA, observation=Identity()), values)


def test_hidden_entries_do_not_count():
    g = small_generator()
    rng = torch.Generator().manual_seed(2)
    z = torch.randn(3, 3, generator=rng, dtype=torch.float64)
    y = torch.randn(3, 1, 2, 3, generator=rng, dtype=torch.float64)
    observed = torch.rand(3, 1, 2, 3, generator=rng) > 0.5
    observed[0] = True  # example 0 sees everything
    observed[1] = False  # example 1 nothing: only the prior is left
    mask = Mask(observed, per_example=True)
    values = energy(g, z, y, sigma=SIGMA, observation=mask)
    with torch.no_grad():
        expected = by_hand(g(z), y, z, SIGMA, observed)
    torch.testing.assert_close(values, torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(values[1], z[1].pow(2).sum() / 2)
    # Whatever the data say at a hidden entry, the energy stays the same.
    y_changed = torch.where(observed, y, y + 100.0)
    torch.testing.assert_close(energy(g, z, y_changed, sigma=SIGMA, observation=mask), values)


def test_the_energy_of_a_residual_is_the_energy():
    g = small_generator()
    rng = torch.Generator().manual_seed(3)
    z = torch.randn(2, 3, generator=rng, dtype=torch.float64)
    y = torch.randn(2, 1, 2, 3, generator=rng, dtype=torch.float64)
    mask = Mask(torch.rand(2, 1, 2, 3, generator=rng) > 0.5)
    residual = mask.residual(y, g(z))
    torch.testing.assert_close(
        energy_of_residual(residual, z, sigma=SIGMA), energy(g, z, y, sigma=SIGMA, observation=mask)
    )


def linear_problem(seed: int):
    """A linear generator x = W z + b, compressed measurements y = A x + noise, a latent z."""
    rng = torch.Generator().manual_seed(seed)
    g = LinearGenerator(3, (1, 2, 4)).double()
    with torch.no_grad():
        g.weight.copy_(torch.randn(8, 3, generator=rng, dtype=torch.float64))
        g.bias.copy_(torch.randn(8, generator=rng, dtype=torch.float64))
    a = Projection(torch.randn(5, 8, generator=rng, dtype=torch.float64))
    z = torch.randn(4, 3, generator=rng, dtype=torch.float64)
    y = torch.randn(4, 5, generator=rng, dtype=torch.float64)
    return g, a, z, y


def test_the_gradient_in_z_is_the_closed_form_for_a_linear_generator():
    # ∇z E = −(AW)ᵀ(y − A(Wz + b))/σ² + z, for every example, from the summed energy.
    g, a, z, y = linear_problem(seed=4)
    z.requires_grad_(True)
    energy(g, z, y, sigma=SIGMA, observation=a).sum().backward()
    W, b, A = g.weight.detach(), g.bias.detach(), a.matrix
    residual = y - (z.detach() @ W.T + b) @ A.T
    expected = -residual @ (A @ W) / SIGMA**2 + z.detach()
    torch.testing.assert_close(z.grad, expected)


def test_the_gradient_in_the_weights_is_the_closed_form_for_a_linear_generator():
    # ∇W ΣE = −Σᵢ Aᵀ(yᵢ − A(W zᵢ + b)) zᵢᵀ / σ², ∇b ΣE = −Σᵢ Aᵀ(yᵢ − A(W zᵢ + b)) / σ².
    g, a, z, y = linear_problem(seed=5)
    energy(g, z, y, sigma=SIGMA, observation=a).sum().backward()
    W, b, A = g.weight.detach(), g.bias.detach(), a.matrix
    back = (y - (z @ W.T + b) @ A.T) @ A  # Aᵀ(yᵢ − A xᵢ), one row per example
    torch.testing.assert_close(g.weight.grad, -back.T @ z / SIGMA**2)
    torch.testing.assert_close(g.bias.grad, -back.sum(0) / SIGMA**2)
