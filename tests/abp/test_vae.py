"""The VAE baseline (abp.vae): an encoder of the generator's own size for every kind, the
negative ELBO of ABP's likelihood (observed entries only, measurements through A), and a
linear VAE that finds the data's subspace from complete and from occluded data."""

import math

import pytest
import torch

from abp.evaluate import EvaluationConfig, Split, consistent, recover, score_vae
from abp.models import build_generator
from abp.observe import Identity, Mask, Projection
from abp.train import ABPConfig
from abp.vae import VAE, VAEConfig, encoder_inputs, mirrored_encoder, train_vae

GENERATORS = {  # config, signal shape
    "image": ({"kind": "image", "latent_dim": 5, "image_size": 16, "channels": 1,
               "widths": [8, 4]}, (1, 16, 16)),
    "texture": ({"kind": "texture", "latent_channels": 2, "latent_size": 3, "channels": 3,
                 "widths": [8, 4]}, (3, 24, 24)),
    "video": ({"kind": "video", "latent_channels": 2, "latent_frames": 1, "latent_size": 2,
               "channels": 3, "widths": [4], "temporal_layers": 1}, (3, 2, 8, 8)),
    "audio": ({"kind": "audio", "latent_channels": 2, "latent_length": 4, "widths": [4],
               "stride": 4}, (1, 64)),
    "linear": ({"kind": "linear", "latent_dim": 3, "output_shape": [2, 5]}, (2, 5)),
}  # fmt: skip


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("kind", GENERATORS)
def test_the_encoder_mirrors_the_generator_and_gives_its_latent_shape(kind):
    config, shape = GENERATORS[kind]
    generator = build_generator(config)
    assert tuple(generator(generator.sample_latent(2)).shape[1:]) == shape
    encoder = mirrored_encoder(generator, shape)
    seen = torch.randn(2, *shape)
    mean, log_variance = encoder(seen, torch.ones_like(seen))
    assert mean.shape == log_variance.shape == (2, *generator.latent_shape)
    # Of the generator's size: the same layers backwards, with twice the input channels
    # (what is seen, and where) and twice the output ones (mean and log-variance)
    # (1.4× for this image generator; a linear one's is all inputs and outputs: 3.2×).
    assert 0.5 < parameter_count(encoder) / parameter_count(generator) < 4


def test_a_texture_encoder_reads_larger_textures_into_larger_latent_maps():
    config, _ = GENERATORS["texture"]
    generator = build_generator(config)
    encoder = mirrored_encoder(generator, (3, 24, 24))
    seen = torch.randn(1, 3, 48, 72)
    mean, _ = encoder(seen, torch.ones_like(seen))
    assert mean.shape == (1, 2, 6, 9)


def linear_vae(latent_dim: int, size: int) -> VAE:
    generator = build_generator(
        {"kind": "linear", "latent_dim": latent_dim, "output_shape": [size]}
    )
    return VAE(generator, mirrored_encoder(generator, (size,)), (size,))


def test_the_loss_is_the_negative_elbo_of_the_likelihood_abp_uses():
    """For a linear decoder −ELBO has a closed form: E_q||y − Wz − b||²/2σ² + KL(q ‖ p) with
    E_q||y − Wz − b||² = ||y − Wμ − b||² + Σ_j s_j²||W_j||². The one-draw estimate averages
    to it."""
    torch.manual_seed(0)
    vae, sigma = linear_vae(3, 6), 0.5
    y = torch.randn(1, 6)
    seen, observed = encoder_inputs(y, Identity(), (6,))
    with torch.no_grad():
        mean, log_variance = vae.encoder(seen, observed)
        w, b = vae.decoder.weight, vae.decoder.bias
        variance = log_variance.exp()
        expected_residual = (y - mean @ w.T - b).pow(2).sum() + (variance * w.pow(2).sum(0)).sum()
        kl = 0.5 * (mean.pow(2) + variance - 1 - log_variance).sum()
        exact = float(expected_residual / (2 * sigma**2) + kl)
        draws = 20000
        estimates = vae.negative_elbo(
            y.expand(draws, 6),
            Identity(),
            seen.expand(draws, 6),
            observed.expand(draws, 6),
            sigma=sigma,
            rng=torch.Generator().manual_seed(1),
        )
    standard_error = float(estimates.std()) / math.sqrt(draws)
    assert float(estimates.mean()) == pytest.approx(exact, abs=4 * standard_error)
    assert standard_error < 0.01 * abs(exact)  # a test that could tell


def test_hidden_entries_change_nothing_the_vae_sees():
    torch.manual_seed(0)
    vae = linear_vae(2, 8)
    x = torch.randn(4, 8)
    mask = torch.rand(4, 8) > 0.5
    other = torch.where(mask, x, torch.randn(4, 8))  # the hidden entries redrawn
    observation = Mask(mask)

    def loss(signals):
        seen, observed = encoder_inputs(signals, observation, (8,))
        return vae.negative_elbo(
            signals, observation, seen, observed, sigma=0.3, rng=torch.Generator().manual_seed(0)
        )

    assert torch.equal(loss(x), loss(other))
    assert torch.equal(vae.encode(x, observation), vae.encode(other, observation))
    # and the mask reaches the encoder: the same zero-filled signal, other entries observed
    seen, _ = encoder_inputs(x, observation, (8,))
    assert not torch.equal(vae.encode(seen, Mask(torch.ones(4, 8))), vae.encode(x, observation))


def subspace_angle(learned: torch.Tensor, truth: torch.Tensor) -> float:
    """The largest principal angle, in degrees, between the column spaces."""
    q_learned, _ = torch.linalg.qr(learned.double())
    q_truth, _ = torch.linalg.qr(truth.double())
    cosines = torch.linalg.svdvals(q_truth.T @ q_learned)
    return math.degrees(math.acos(min(1.0, float(cosines.min()))))


@pytest.mark.parametrize("hidden", [0.0, 0.5])
def test_a_linear_vae_learns_the_datas_subspace_from_complete_and_occluded_data(hidden):
    """A linear VAE's optimum is probabilistic PCA's (Lucas et al. 2019): from data on a
    2-dimensional subspace of R^10 plus noise, its decoder's columns span that subspace,
    also when half the entries of every example are hidden."""
    torch.manual_seed(0)
    n, size, sigma = 600, 10, 0.1
    basis = torch.randn(size, 2)
    x = torch.randn(n, 2) @ basis.T + sigma * torch.randn(n, size)
    observation = Identity() if hidden == 0 else Mask(torch.rand(n, size) >= hidden)
    y = x if hidden == 0 else observation(x)
    decoder = build_generator({"kind": "linear", "latent_dim": 2, "output_shape": [size]})
    untrained = subspace_angle(decoder.weight.detach(), basis)
    abp = ABPConfig(sigma=sigma, learning_rate=0.01, batch_size=50, adam_betas=(0.9, 0.999))
    vae, history = train_vae(
        decoder, y, observation, (size,), abp=abp, config=VAEConfig(), epochs=120
    )
    assert history[-1] < history[0]
    assert untrained > 30
    assert subspace_angle(vae.decoder.weight.detach(), basis) < 5


def test_the_same_seed_learns_the_same_vae():
    torch.manual_seed(0)
    x = torch.randn(40, 6)
    weights = []
    for _ in range(2):
        decoder = build_generator({"kind": "linear", "latent_dim": 2, "output_shape": [6]})
        decoder.load_state_dict({k: torch.ones_like(v) for k, v in decoder.state_dict().items()})
        vae, _ = train_vae(
            decoder, x, Identity(), (6,), abp=ABPConfig(batch_size=8), config=VAEConfig(), epochs=3
        )
        weights.append([p.detach().clone() for p in vae.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*weights))


def test_the_refined_vae_descends_from_the_encoders_guess_on_the_splits_compared():
    """vae_refined_* are the decoder's most probable latents descended from where the
    encoder guessed (the difference from vae_* is the amortisation gap), on the test split
    and, for indirect data, on the training split too."""
    torch.manual_seed(0)
    size, n = 12, 30
    x = torch.randn(n, 2) @ torch.randn(2, size) / 2
    projection = Projection.gaussian(6, size, seed=3)
    train = Split(x, projection(x), projection)
    test = Split(x[:10], projection(x[:10]), projection)
    decoder = build_generator({"kind": "linear", "latent_dim": 2, "output_shape": [size]})
    abp = ABPConfig(sigma=0.3, step_size=0.1, batch_size=10)
    vae, _ = train_vae(decoder, train.y, projection, (size,), abp=abp, config=VAEConfig(), epochs=2)
    evaluation = EvaluationConfig(n_steps=3)  # few steps: where it starts shows
    metrics, signals = score_vae(vae, train, test, abp, evaluation)
    assert {
        "vae_train_mae",
        "vae_heldout_mae",
        "vae_refined_train_mae",
        "vae_refined_heldout_mae",
    } == set(metrics)
    for side, split in enumerate((train, test)):
        guesses = vae.encode(split.y, projection)
        from_guesses, _ = recover(vae.decoder, split, guesses, abp, evaluation)
        from_zero, _ = recover(vae.decoder, split, torch.zeros_like(guesses), abp, evaluation)
        assert torch.equal(signals["VAE + descent"][side], from_guesses)
        assert not torch.allclose(from_guesses, from_zero)
        with torch.no_grad():
            guessed = consistent(vae.decoder(guesses), split)
        assert torch.equal(signals["VAE"][side], guessed)
    # Complete data with a test split: the training split keeps the encoder's guesses alone.
    complete = Split(x, x, Identity())
    metrics, signals = score_vae(
        vae_for_complete(size), complete, Split(x[:10], x[:10], Identity()), abp, evaluation
    )
    assert "vae_refined_train_mae" not in metrics and "vae_refined_heldout_mae" in metrics
    assert signals["VAE + descent"][0] is None


def vae_for_complete(size: int) -> VAE:
    return linear_vae(2, size)


def test_the_vae_settings_are_checked():
    with pytest.raises(ValueError, match="epochs"):
        VAEConfig(epochs=0)
    with pytest.raises(ValueError, match="learning_rate"):
        VAEConfig(learning_rate=-1.0)
