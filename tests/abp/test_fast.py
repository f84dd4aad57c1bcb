"""The speed switches keep results: bf16 within a stated tolerance of fp32, channels_last
and larger inference batches exact."""

import torch

from abp.energy import energy
from abp.fast import FastForward, fast_forward
from abp.models import ImageGenerator
from abp.train import ABPConfig, ABPTrainer, ExecutionConfig


def small_generator() -> ImageGenerator:
    torch.manual_seed(0)
    return ImageGenerator(latent_dim=8, image_size=16, channels=3, widths=(32, 16))


def test_no_switch_means_the_generator_itself():
    g = small_generator()
    assert fast_forward(g) is g
    wrapped = fast_forward(g, channels_last=True)
    assert isinstance(wrapped, FastForward) and set(wrapped.parameters()) == set(g.parameters())


def test_bf16_forward_returns_float32_and_an_energy_within_two_percent_of_fp32():
    g = small_generator()
    z = torch.randn(16, 8)
    y = torch.rand(16, 3, 16, 16) * 2 - 1
    fast = fast_forward(g, bf16=True)
    x = fast(z)
    assert x.dtype == torch.float32
    exact = energy(g, z, y, sigma=0.3)
    approximate = energy(fast, z, y, sigma=0.3)
    assert torch.all((approximate - exact).abs() / exact < 0.02)


def test_channels_last_and_larger_inference_batches_train_like_the_plain_path():
    data = torch.rand(24, 3, 16, 16) * 2 - 1
    settings = dict(sigma=0.3, step_size=0.1, langevin_steps=3, batch_size=8, seed=1)
    plain = ABPTrainer(small_generator(), data, ABPConfig(**settings), device="cpu")
    fast = ABPTrainer(
        small_generator(),
        data,
        ABPConfig(**settings),
        execution=ExecutionConfig(channels_last=True),
        device="cpu",
    )
    plain.fit(2)
    fast.fit(2)
    for a, b in zip(plain.generator.parameters(), fast.generator.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)

    # One inference batch of 24 with three learning steps of 8: every example still gets
    # l Langevin steps and one learning step per epoch, and training still improves.
    big = ABPTrainer(
        small_generator(),
        data,
        ABPConfig(**settings),
        execution=ExecutionConfig(inference_batch_size=24),
        device="cpu",
    )
    history = big.fit(4)
    assert history[-1]["reconstruction_mse"] < history[0]["reconstruction_mse"]
    assert not torch.allclose(
        big.latent_bank.latents,
        ABPTrainer(
            small_generator(), data, ABPConfig(**settings), device="cpu"
        ).latent_bank.latents,
    )
