"""The ABP trainer: it learns, it resumes exactly, and its checkpoints are complete."""

import numpy as np
import pytest
import torch
from skimage import data as skimage_data

from abp.divergence import DivergenceError, risky_settings
from abp.langevin import reconstruct
from abp.models import ImageGenerator, LinearGenerator
from abp.observe import Mask, Projection, SeededProjections
from abp.train import ABPConfig, ABPTrainer, Checkpointer, ExecutionConfig, noise_seed


def principal_angles_degrees(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    qa, _ = np.linalg.qr(a)
    qb, _ = np.linalg.qr(b)
    cosines = np.clip(np.linalg.svd(qa.T @ qb, compute_uv=False), -1, 1)
    return np.degrees(np.arccos(cosines))


def test_linear_abp_recovers_the_principal_subspace():
    """On data from a rank-3 model plus isotropic noise, ABP with a linear generator is
    (stochastic-EM) probabilistic PCA: its W spans PCA's top-3 subspace."""
    rng = np.random.default_rng(0)
    D, d, n = 12, 3, 600
    basis, _ = np.linalg.qr(rng.normal(size=(D, d)))
    W_true = basis * np.array([3.0, 2.0, 1.5])
    x = rng.normal(size=(n, d)) @ W_true.T + 0.5 + 0.3 * rng.normal(size=(n, D))
    torch.manual_seed(0)
    trainer = ABPTrainer(
        LinearGenerator(d, D),
        torch.tensor(x, dtype=torch.float32),
        ABPConfig(sigma=0.3, step_size=0.1, langevin_steps=10, learning_rate=0.02, batch_size=100),
        device="cpu",
    )
    trainer.fit(epochs=60)
    W = trainer.generator.weight.detach().double().numpy()
    centred = x - x.mean(0)
    pca_basis = np.linalg.svd(centred, full_matrices=False)[2][:d].T
    angles = principal_angles_degrees(W, pca_basis)
    assert angles.max() < 5, angles


def test_per_example_measurements_reveal_what_one_shared_matrix_hides():
    """Each example measured through its own 6×12 Gaussian matrix: ABP learns the rank-3
    subspace from the measurements alone. Through one shared 6×12 matrix, the subspace's part
    in null(A) is invisible, whatever the method."""
    rng = np.random.default_rng(0)
    D, d, n, M = 12, 3, 600, 6
    basis, _ = np.linalg.qr(rng.normal(size=(D, d)))
    x = rng.normal(size=(n, d)) @ (basis * np.array([3.0, 2.0, 1.5])).T
    x = torch.tensor(x + 0.3 * rng.normal(size=(n, D)), dtype=torch.float32)
    worst_angle = {}
    for name, operator in (
        ("own", SeededProjections(SeededProjections.seeds_for(1, torch.arange(n)), M, D)),
        ("shared", Projection.gaussian(M, D, seed=1)),
    ):
        torch.manual_seed(0)
        trainer = ABPTrainer(
            LinearGenerator(d, D),
            operator(x),
            ABPConfig(
                sigma=0.3, step_size=0.1, langevin_steps=10, learning_rate=0.02, batch_size=100
            ),
            observation=operator,
            device="cpu",
        )
        trainer.fit(epochs=60)
        W = trainer.generator.weight.detach().double().numpy()
        worst_angle[name] = principal_angles_degrees(W, basis).max()
    assert worst_angle["own"] < 6 and worst_angle["shared"] > 30, worst_angle


def test_per_example_projections_train_alike_with_the_data_on_or_off_the_device():
    """Off the device each batch's matrices are selected on the host with its rows (the
    prefetch thread); on the device, from the device's copy: the same training."""
    n, D, d = 40, 12, 3
    x = torch.randn(n, D, generator=torch.Generator().manual_seed(0))
    operator = SeededProjections(SeededProjections.seeds_for(1, torch.arange(n)), 6, D)
    trained = []
    for on_device in (True, False):
        torch.manual_seed(0)
        trainer = ABPTrainer(
            LinearGenerator(d, D),
            operator(x),
            ABPConfig(sigma=0.3, step_size=0.1, langevin_steps=3, batch_size=8, seed=2),
            observation=operator,
            device="cpu",
            data_on_device=on_device,
        )
        assert trainer.data_on_device is on_device
        trainer.fit(epochs=3)
        trained.append((trainer.generator.weight.detach(), trainer.latent_bank.latents))
    torch.testing.assert_close(trained[0][0], trained[1][0], atol=0, rtol=0)
    torch.testing.assert_close(trained[0][1], trained[1][1], atol=0, rtol=0)
    with pytest.warns(UserWarning, match="each example has its own measurement matrix"):
        ABPTrainer(
            LinearGenerator(d, D),
            operator(x),
            ABPConfig(),
            execution=ExecutionConfig(cuda_graphs=True),
            observation=operator,
            device="cpu",
        )


def small_image_trainer(
    data: torch.Tensor, execution: ExecutionConfig | None = None, **config
) -> ABPTrainer:
    torch.manual_seed(1)
    generator = ImageGenerator(latent_dim=4, image_size=8, channels=1, widths=(8,))
    settings = dict(sigma=0.3, step_size=0.1, langevin_steps=3, batch_size=8, seed=3)
    return ABPTrainer(
        generator, data, ABPConfig(**{**settings, **config}), execution=execution, device="cpu"
    )


@pytest.mark.parametrize(
    "speed", [None, ExecutionConfig(channels_last=True, inference_batch_size=16, cuda_graphs=True)]
)
@pytest.mark.filterwarnings("ignore:cuda_graphs is on")
def test_resume_from_checkpoint_equals_training_straight_through(tmp_path, speed):
    data = torch.rand(20, 1, 8, 8) * 2 - 1
    straight = small_image_trainer(data, speed)
    straight.fit(epochs=5)

    first = small_image_trainer(data, speed)
    first.fit(epochs=2, callbacks=[Checkpointer(tmp_path / "ckpt.pt", every=2)])
    resumed = small_image_trainer(data, speed)  # fresh weights, latents, RNG: overwritten
    resumed.load_checkpoint(tmp_path / "ckpt.pt")
    assert resumed.epoch == 2
    resumed.fit(epochs=5)

    for a, b in zip(straight.generator.parameters(), resumed.generator.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        straight.latent_bank.latents, resumed.latent_bank.latents, atol=1e-6, rtol=0
    )
    for s, r in zip(straight.history, resumed.history):
        assert s["energy"] == pytest.approx(r["energy"], rel=1e-6)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4, 5]


@pytest.mark.filterwarnings("ignore:cuda_graphs is on")
def test_checkpoint_is_written_atomically_and_refuses_other_settings(tmp_path):
    data = torch.rand(10, 1, 8, 8) * 2 - 1
    trainer = small_image_trainer(data)
    trainer.fit(epochs=1)
    path = trainer.save_checkpoint(tmp_path / "run" / "ckpt.pt")
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt.pt"]  # no temporary left
    state = torch.load(path, weights_only=True)
    assert {
        "generator",
        "optimizer",
        "latent_bank",
        "rng_state",
        "epoch",
        "history",
        "generator_config",
    } <= set(state)
    with pytest.raises(ValueError, match="other settings \\(step_size\\)"):
        small_image_trainer(data, step_size=0.2).load_checkpoint(path)
    with pytest.raises(ValueError, match="other settings \\(adam_betas\\)"):
        small_image_trainer(data, adam_betas=(0.9, 0.999)).load_checkpoint(path)
    # How the iteration runs (ExecutionConfig, every field of it) is not part of the run:
    # the checkpoint resumes with any of it.
    switched = small_image_trainer(
        data,
        ExecutionConfig(channels_last=True, cuda_graphs=True, bf16=True, inference_batch_size=16),
    )
    switched.load_checkpoint(path)
    assert switched.epoch == 1 and "bf16" not in state["config"]
    with pytest.raises(ValueError, match="latent bank has shape"):
        small_image_trainer(data[:5]).load_checkpoint(path)


def test_callbacks_see_every_epoch_and_persistent_chains_move():
    data = torch.rand(12, 1, 8, 8) * 2 - 1
    trainer = small_image_trainer(data)
    start = trainer.latent_bank.latents.clone()
    seen = []
    trainer.fit(epochs=3, callbacks=[lambda t, stats: seen.append((t.epoch, stats["epoch"]))])
    assert seen == [(1, 1), (2, 2), (3, 3)]
    assert not torch.allclose(trainer.latent_bank.latents, start)


def brick_patches(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Real image patches: crops of scikit-image's brick texture, downsampled 2×, in [-1, 1]."""
    image = skimage_data.brick().astype(np.float32) / 127.5 - 1  # 512×512 grayscale
    rng = np.random.default_rng(seed)
    corners = rng.integers(0, 512 - 2 * size, size=(n, 2))
    crops = np.stack([image[r : r + 2 * size, c : c + 2 * size] for r, c in corners])
    crops = crops.reshape(n, size, 2, size, 2).mean(axis=(2, 4))
    return torch.from_numpy(crops).unsqueeze(1)


def test_generator_learns_real_images_and_recovers_occluded_pixels():
    data = brick_patches(64)
    torch.manual_seed(0)
    generator = ImageGenerator(latent_dim=16, image_size=32, channels=1, widths=(64, 32, 16))
    config = ABPConfig(
        sigma=0.3, step_size=0.1, langevin_steps=10, learning_rate=1e-3, batch_size=16
    )
    trainer = ABPTrainer(generator, data, config, device="cpu")
    history = trainer.fit(epochs=25)
    errors = [h["reconstruction_mse"] for h in history]
    assert errors[-1] < 0.5 * errors[0], errors
    assert np.isfinite([h["energy"] for h in history]).all()

    # With W learned, the bottom half of a training patch is recovered from its top half
    # better than by filling in the mean.
    mask = torch.ones_like(data[:16])
    mask[..., 16:, :] = 0
    _, x_hat = reconstruct(
        trainer.generator,
        mask * data[:16],
        latent_shape=(16,),
        sigma=0.3,
        step_size=0.1,
        n_steps=200,
        observation=Mask(mask),
    )
    hidden = mask == 0
    model_error = (x_hat - data[:16])[hidden].abs().mean()
    mean_fill_error = (data.mean() - data[:16])[hidden].abs().mean()
    assert model_error < 0.9 * mean_fill_error, (model_error, mean_fill_error)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="sigma must be > 0, got 0"):
        ABPConfig(sigma=0)
    with pytest.raises(ValueError, match="optimizer must be 'adam' or 'sgd'"):
        ABPConfig(optimizer="rmsprop")
    # The bounds are the annotations pydantic checks params.yaml against (abp.settings): the
    # same rules hold for a library user, nested in tuples too, and a bool is not a number.
    with pytest.raises(ValueError, match=r"adam_betas\[1\] must be < 1, got 1.0"):
        ABPConfig(adam_betas=(0.5, 1.0))
    with pytest.raises(ValueError, match=r"adam_betas\[0\] must be ≥ 0, got -0.1"):
        ABPConfig(adam_betas=[-0.1, 0.9])  # type: ignore[arg-type]  # a list, as from JSON
    with pytest.raises(ValueError, match="batch_size must be ≥ 1, got True"):
        ABPConfig(batch_size=True)
    with pytest.raises(ValueError, match="inference_batch_size must be ≥ 1, got 0"):
        ExecutionConfig(inference_batch_size=0)
    with pytest.raises(
        ValueError,
        match=r"inference_batch_size \(8\) must be at least "
        r"batch_size \(64\)",
    ):
        ABPTrainer(
            LinearGenerator(2, 4),
            torch.zeros(3, 4),
            ABPConfig(),
            execution=ExecutionConfig(inference_batch_size=8),
            device="cpu",
        )


def linear_trainer(data: torch.Tensor, **config) -> ABPTrainer:
    torch.manual_seed(1)
    settings = dict(sigma=0.3, step_size=0.1, langevin_steps=3, batch_size=8, seed=3)
    return ABPTrainer(
        LinearGenerator(4, data.shape[1]), data, ABPConfig(**{**settings, **config}), device="cpu"
    )


@pytest.mark.parametrize(
    "make, change, cause, setting",
    [
        # s²/(2σ²) ≈ 1.4e4: the chains blow up in the first batch
        (small_image_trainer, {"step_size": 50.0}, "langevin", "step_size"),
        # finite but astronomically large latents (the tanh output hides them from the data term)
        (small_image_trainer, {"sigma": 1e-6}, "langevin", "step_size"),
        # SGD at lr 10 makes W so steep that the (nominally small) Langevin step overshoots
        (linear_trainer, {"optimizer": "sgd", "learning_rate": 10.0}, "langevin", "learning_rate"),
    ],
)
def test_divergence_stops_before_the_callbacks_with_a_diagnosis(
    tmp_path, make, change, cause, setting
):
    data = torch.rand(24, 1, 8, 8) * 2 - 1
    trainer = make(data if make is small_image_trainer else data.flatten(1), **change)
    saved = []
    with pytest.raises(DivergenceError) as caught:
        trainer.fit(
            epochs=6,
            callbacks=[Checkpointer(tmp_path / "ckpt.pt"), lambda t, stats: saved.append(t.epoch)],
        )
    error = caught.value
    assert (error.cause, error.setting) == (cause, setting)
    assert error.epoch == len(saved) + 1
    assert trainer.epoch == len(saved) and len(trainer.history) == len(saved)
    message = str(error)
    assert f"diverged at epoch {error.epoch}, batch {error.batch + 1} of 3" in message
    first = message.index("Look first at")
    assert (
        message.index(setting, first)
        < message.index("then at")
        < message.index("learning_rate" if setting == "step_size" else "step_size", first)
    )
    if saved:  # the checkpoint on disk is the last good epoch's, finite
        state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
        assert state["epoch"] == saved[-1]
        assert all(torch.isfinite(v).all() for v in state["generator"].values())


def test_energy_running_away_is_divergence_even_while_finite():
    data = torch.rand(24, 1, 8, 8) * 2 - 1
    trainer = small_image_trainer(data)
    trainer.fit(epochs=1)
    trainer.history[-1]["energy"] /= 1000  # as if the first epoch had been far better
    with pytest.raises(DivergenceError, match=r"energy rose .*-fold above its lowest"):
        trainer.fit(epochs=2)
    assert trainer.epoch == 1


def test_a_good_run_is_not_called_divergent():
    data = torch.rand(24, 1, 8, 8) * 2 - 1
    trainer = small_image_trainer(data)
    trainer.fit(epochs=8)
    assert trainer.epoch == 8


def test_a_retry_may_resume_with_a_lower_step_size_or_learning_rate(tmp_path):
    data = torch.rand(16, 1, 8, 8) * 2 - 1
    trainer = small_image_trainer(data, learning_rate=0.01)
    trainer.fit(epochs=1)
    path = trainer.save_checkpoint(tmp_path / "ckpt.pt")
    state = torch.load(path, weights_only=True)
    with pytest.raises(ValueError, match="other settings"):
        small_image_trainer(data, learning_rate=0.005).load_state_dict(state)
    retried = small_image_trainer(data, learning_rate=0.005, step_size=0.05)
    retried.load_state_dict(state, retuned=("step_size", "learning_rate"))
    assert [g["lr"] for g in retried.optimizer.param_groups] == [0.005]
    assert retried.epoch == 1


def test_risky_settings_are_named():
    assert risky_settings(ABPConfig()) == []
    found = " ".join(risky_settings(ABPConfig(step_size=50, learning_rate=100)))
    assert "step_size 50 is large for sigma 0.3" in found and "learning_rate 100" in found


def test_each_ranks_noise_stream_is_its_own():
    """No rank's Langevin noise is the shuffling stream (seeded by the seed itself), another
    rank's, another seed's, or the stream before a resume at another world size."""
    seeds = [noise_seed(seed, rank) for seed in range(3) for rank in range(4)]
    assert len(set(seeds)) == 12 and not set(seeds) & set(range(100))
    assert noise_seed(0, 1, resumed_at=5) not in seeds
