"""Error measures, the most probable latents and the baselines on cases with known answers."""

import math

import pytest
import torch

from abp.baselines import PCA, linear_baseline, pca_from_observations, pca_size, recover_with_pca
from abp.energy import energy
from abp.evaluate import CONVERGED, Split, mean_absolute_error, most_probable_latents, scored
from abp.langevin import frozen_weights
from abp.models import LinearGenerator, build_generator
from abp.observe import Identity, LocalAverage, Mask, Projection


def test_mean_absolute_error_is_on_the_unit_scale_and_counts_only_selected_entries():
    truth = torch.zeros(2, 1, 2, 2)
    estimate = truth.clone()
    assert mean_absolute_error(estimate, truth) == 0
    estimate[0, 0, 0, 0] = 1.0  # off by 1 on [-1, 1] = 0.5 on [0, 1]
    assert mean_absolute_error(estimate, truth) == pytest.approx(0.5 / 8)
    hidden = torch.zeros_like(truth)
    hidden[0, 0, 0, :] = 1
    assert mean_absolute_error(estimate, truth, where=hidden) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="no entries selected"):
        mean_absolute_error(estimate, truth, where=torch.zeros_like(truth))


def test_pca_reconstructs_data_of_exact_rank_d_exactly():
    rng = torch.Generator().manual_seed(0)
    basis = torch.randn(3, 1 * 4 * 4, generator=rng)

    def rank3(n):
        return (torch.randn(n, 3, generator=rng) @ basis + 0.2).view(n, 1, 4, 4)

    train, test = rank3(50), rank3(10)
    torch.testing.assert_close(PCA(3).fit(train).reconstruct(test), test, atol=1e-5, rtol=0)
    assert mean_absolute_error(PCA(2).fit(train).reconstruct(test), test) > 1e-2


@pytest.mark.parametrize(
    "make_operator",
    [
        lambda shape: Projection.gaussian(12, shape, seed=0),
        lambda shape: LocalAverage(2),
        lambda shape: Identity(),
    ],
)
def test_pseudo_inverse_is_a_right_inverse(make_operator):
    shape = (1, 4, 4)
    op = make_operator(shape)
    y = op(torch.randn(3, *shape))
    torch.testing.assert_close(op(op.pseudo_inverse(y, shape)), y, atol=1e-4, rtol=0)


def test_missing_data_pca_recovers_hidden_entries_of_low_rank_data():
    rng = torch.Generator().manual_seed(1)
    basis = torch.randn(3, 64, generator=rng)
    x = (torch.randn(200, 3, generator=rng) @ basis).view(200, 1, 8, 8)
    mask = (torch.rand(200, 1, 8, 8, generator=rng) > 0.4).float()
    op = Mask(mask)
    _, x_hat = pca_from_observations(
        op(x),
        forward=op,
        n_components=3,
        n_iter=200,
        back_project=lambda r: op.pseudo_inverse(r, (1, 8, 8)),
    )
    hidden = mask == 0
    assert (x_hat - x)[hidden].abs().mean() < 0.02 * x.abs().mean()
    assert torch.equal(x_hat[~hidden], x[~hidden])  # observed entries are kept


def test_compressed_pca_stays_consistent_with_the_measurements():
    """With one A shared by all examples, what lies in A's null space is invisible to any
    linear method: the baseline recovers the rest and always agrees with y."""
    rng = torch.Generator().manual_seed(2)
    basis = torch.randn(3, 64, generator=rng)
    x = (torch.randn(300, 3, generator=rng) @ basis).view(300, 1, 8, 8)
    op = Projection.gaussian(32, (1, 8, 8), seed=3)

    def back(r):
        return op.pseudo_inverse(r, (1, 8, 8))

    pca, x_hat = pca_from_observations(op(x), forward=op, back_project=back, n_components=3)
    torch.testing.assert_close(op(x_hat), op(x), atol=1e-3, rtol=0)
    least_norm = back(op(x))
    assert (x_hat - x).abs().mean() <= (least_norm - x).abs().mean() + 1e-4
    new = (torch.randn(5, 3, generator=rng) @ basis).view(5, 1, 8, 8)
    recovered = recover_with_pca(pca, op(new), forward=op, back_project=back)
    torch.testing.assert_close(op(recovered), op(new), atol=1e-3, rtol=0)


AUDIO_GENERATOR = {
    "kind": "audio",
    "latent_channels": 3,
    "latent_length": 4,
    "widths": [4],
    "stride": 4,
    "channels": 1,
}


def linear_generator(latent_dim: int, size: int, seed: int) -> LinearGenerator:
    torch.manual_seed(seed)
    return LinearGenerator(latent_dim, (1, size))


def exact_map(generator: LinearGenerator, y: torch.Tensor, sigma: float) -> torch.Tensor:
    """argmin ||y − Wz − b||²/(2σ²) + ||z||²/2 = (WᵀW/σ² + I)⁻¹Wᵀ(y − b)/σ²."""
    w, b = generator.weight.detach().double(), generator.bias.detach().double()
    precision = w.T @ w / sigma**2 + torch.eye(w.shape[1], dtype=torch.float64)
    residual = y.flatten(1).double() - b
    return torch.linalg.solve(precision, w.T @ residual.T / sigma**2).T.float()


def test_most_probable_latents_reach_the_exact_map_and_stop_once_converged():
    generator = linear_generator(3, 12, seed=0)
    y = generator(torch.randn(20, 3)).detach() + 0.1 * torch.randn(20, 1, 12)
    z, steps = most_probable_latents(
        generator, y, torch.zeros(20, 3), sigma=0.5, step_size=0.3, max_steps=2000, tolerance=1e-7
    )
    torch.testing.assert_close(z, exact_map(generator, y, 0.5), atol=2e-3, rtol=0)
    assert steps.shape == (20,) and 0 < steps.max() < 2000  # stopped on its own
    assert all(p.requires_grad for p in generator.parameters())  # weights untouched


def test_the_batch_size_does_not_change_the_latents_and_a_stop_never_spreads():
    """Each example stops on its own: inferring in batches of 3 or all at once, or alongside
    other examples, gives it the same latent and the same number of steps."""
    generator = linear_generator(4, 16, seed=1)
    y = generator(torch.randn(10, 4)).detach()
    options = {"sigma": 0.3, "step_size": 0.2, "max_steps": 300, "tolerance": 1e-4}
    whole, whole_steps = most_probable_latents(generator, y, torch.zeros(10, 4), **options)
    batched, batched_steps = most_probable_latents(
        generator, y, torch.zeros(10, 4), batch_size=3, **options
    )
    alone, alone_steps = most_probable_latents(generator, y[1:2], torch.zeros(1, 4), **options)
    torch.testing.assert_close(batched, whole, atol=1e-6, rtol=0)
    assert torch.equal(batched_steps, whole_steps)
    assert len(set(whole_steps.tolist())) > 1  # the examples did stop at different steps
    torch.testing.assert_close(alone[0], whole[1], atol=1e-6, rtol=0)
    assert alone_steps[0] == whole_steps[1]


def test_an_overshooting_descent_returns_the_lowest_energy_latent_it_visited():
    generator = linear_generator(2, 8, seed=2)
    y = generator(torch.randn(5, 2)).detach()
    start = torch.zeros(5, 2)
    # s²/2 · curvature > 2: every step overshoots further; the start is the best visited.
    z, _ = most_probable_latents(generator, y, start, sigma=0.05, step_size=1.0, max_steps=30)
    with torch.no_grad():
        assert torch.all(
            energy(generator, z, y, sigma=0.05) <= energy(generator, start, y, sigma=0.05)
        )
    assert torch.isfinite(z).all()


def whole_split_latents(generator, y, z, *, sigma, step_size, max_steps, observation, chunk):
    """most_probable_latents before per-batch descent, kept as the reference: one loop over
    the whole split, every step visiting the still active examples `chunk` at a time."""
    n = y.shape[0]
    half_step = step_size**2 / 2
    z = z.detach().clone()
    best_z, best_energy = z.clone(), torch.full((n,), math.inf)
    energy_at_last_check = best_energy.clone()
    active = torch.ones(n, dtype=torch.bool)
    steps = torch.zeros(n, dtype=torch.long)
    with frozen_weights(generator):
        for step in range(max_steps + 1):
            for index in active.nonzero().squeeze(1).split(chunk):
                z_batch = z[index].requires_grad_(step < max_steps)
                with torch.set_grad_enabled(step < max_steps):
                    e = energy(
                        generator,
                        z_batch,
                        y[index],
                        sigma=sigma,
                        observation=observation.select(index),
                    )
                    if step < max_steps:
                        (grad,) = torch.autograd.grad(e.sum(), z_batch)
                        z[index] = z_batch.detach() - half_step * grad
                e = e.detach()
                better = e < best_energy[index]
                best_energy[index[better]] = e[better]
                best_z[index[better]] = z_batch.detach()[better]
            if step < max_steps:
                steps[active] += 1
            if (step + 1) % 10 == 0:
                stalled = energy_at_last_check - best_energy <= CONVERGED * best_energy.abs()
                active &= ~stalled
                energy_at_last_check = best_energy.clone()
                if not active.any():
                    break
    return best_z, steps


def occluded_split(generator, n: int, seed: int) -> Split:
    """n signals the generator can make plus noise, each with its own mask (30 % hidden)."""
    rng = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        x = generator(torch.randn(n, *generator.latent_shape, generator=rng))
    x = x + 0.05 * torch.randn(x.shape, generator=rng)
    mask = torch.rand(x.shape, generator=rng) > 0.3
    return Split(x, x * mask, Mask(mask.float()), mask)


def part(split: Split, index: torch.Tensor) -> Split:
    """The examples `index` of an occluded split, each with its own mask."""
    assert split.mask is not None
    return Split(split.x[index], split.y[index], split.observation.select(index), split.mask[index])


def test_per_batch_descent_gives_the_latents_of_the_whole_split_descent():
    """Each batch runs its own loop to the end: the same latents and steps as the loop over
    the whole split, whose stops were per example too.

    Up to rounding: products over other numbers of rows round differently, and near the
    minimum that can make the other of two nearly equal energies the lowest visited, so a
    latent may differ by about one last step (2e-5 here) at the same energy."""
    generator = linear_generator(4, 16, seed=9)
    split = occluded_split(generator, 23, seed=10)
    options = {"sigma": 0.3, "step_size": 0.2, "max_steps": 150, "observation": split.observation}
    start = torch.randn(23, 4, generator=torch.Generator().manual_seed(11))
    reference, reference_steps = whole_split_latents(generator, split.y, start, chunk=8, **options)
    assert len(set(reference_steps.tolist())) > 1  # the examples stopped at different steps

    def energies(z):
        with torch.no_grad():
            return energy(generator, z, split.y, sigma=0.3, observation=split.observation)

    for batch_size in (1, 5, 23, 64):
        z, steps = most_probable_latents(
            generator, split.y, start, batch_size=batch_size, **options
        )
        assert torch.equal(steps, reference_steps)
        torch.testing.assert_close(z, reference, atol=1e-4, rtol=0)
        torch.testing.assert_close(energies(z), energies(reference), atol=0, rtol=1e-6)
    # The same rows in one product as the reference's: the same arithmetic.
    z, _ = most_probable_latents(generator, split.y, start, batch_size=23, **options)
    reference, _ = whole_split_latents(generator, split.y, start, chunk=23, **options)
    assert torch.equal(z, reference)


class LargestBatch(torch.nn.Module):
    """A generator that records the largest batch of latents it is called with."""

    def __init__(self, generator: torch.nn.Module):
        super().__init__()
        self.generator, self.latent_shape, self.largest = generator, generator.latent_shape, 0

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.largest = max(self.largest, len(z))
        return self.generator(z)


def scores_in_batches_of(batch_size: int, train: Split, test: Split, generator, device=None):
    """score on the host's splits, the descent on `device` (default: the generator's)."""
    from abp.evaluate import EvaluationConfig, score
    from abp.train import ABPConfig

    return score(
        generator,
        train,
        test,
        latent_bank=torch.randn(
            (len(train), *generator.latent_shape), generator=torch.Generator().manual_seed(12)
        ),
        config=ABPConfig(sigma=0.3, step_size=0.3),
        evaluation=EvaluationConfig(n_steps=150, init="prior", batch_size=batch_size),
        device=device,
    )


def test_the_batch_size_changes_no_metric_and_bounds_the_batches_the_generator_sees():
    torch.manual_seed(15)
    generator = LargestBatch(build_generator(AUDIO_GENERATOR))  # convolutions, 1×64 sounds
    whole = occluded_split(generator, 30, seed=13)
    train, test = part(whole, torch.arange(21)), part(whole, torch.arange(21, 30))
    found = {}
    for batch_size in (7, 64):
        generator.largest = 0
        found[batch_size] = scores_in_batches_of(batch_size, train, test, generator)
        assert generator.largest == min(batch_size, len(train))  # never more
    small, large = found[7], found[64]
    assert small.metrics.keys() == large.metrics.keys()
    for key, value in large.metrics.items():
        assert small.metrics[key] == pytest.approx(value, rel=1e-6), key
    for split in ("train", "test"):
        assert torch.equal(small.descent_steps[split], large.descent_steps[split])
    assert len(set(large.descent_steps["train"].tolist())) > 1  # the examples stopped apart
    torch.testing.assert_close(small.signals["ABP"], large.signals["ABP"], atol=1e-5, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_scoring_on_cuda_keeps_the_splits_on_the_host_and_agrees_with_the_cpu():
    torch.manual_seed(16)
    generator = build_generator(AUDIO_GENERATOR)
    whole = occluded_split(generator, 40, seed=14)
    train, test = part(whole, torch.arange(30)), part(whole, torch.arange(30, 40))
    on_cpu = scores_in_batches_of(16, train, test, generator)
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # full float32 convolutions, as on the CPU
    try:
        on_cuda = scores_in_batches_of(16, train, test, generator.cuda(), device="cuda")
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
        generator.cpu()
    assert on_cuda.signals["ABP"].device.type == "cpu"
    assert on_cuda.descent_steps["train"].device.type == "cpu"
    for key, value in on_cpu.metrics.items():
        assert on_cuda.metrics[key] == pytest.approx(value, rel=1e-3), key


def test_pca_size_is_the_latent_size_capped_by_the_training_examples_and_the_signal():
    assert pca_size(20, 1000, 64) == 20
    assert pca_size(256, 49, 24576) == 48  # 49 clips span 48 dimensions around their mean
    assert pca_size(100, 1000, 64) == 64
    assert pca_size(5, 1, 64) == 0


def test_pca_with_no_components_is_the_training_mean_and_a_constant_predicts_its_signal():
    x = torch.randn(30, 1, 4, 4)
    mean = x.mean(0, keepdim=True).expand_as(x)
    torch.testing.assert_close(PCA(0).fit(x).reconstruct(x), mean)
    silence = PCA.constant(torch.zeros(1, 4, 4))
    assert torch.equal(silence.reconstruct(x), torch.zeros_like(x))
    mask = (torch.rand(30, 1, 4, 4) > 0.5).float()
    op = Mask(mask)
    kept = recover_with_pca(
        silence, op(x), forward=op, back_project=lambda r: op.pseudo_inverse(r, (1, 4, 4))
    )
    assert torch.equal(kept, x * mask)  # the observed entries, silence in the gaps


def test_the_trivial_baseline_learned_from_occluded_data_is_the_mean_of_what_is_observed():
    torch.manual_seed(3)
    x = torch.randn(40, 1, 3, 3) + torch.arange(9.0).view(1, 1, 3, 3)
    mask = torch.rand(40, 1, 3, 3) > 0.9  # 90 % hidden, the slowest case for the imputation
    mask[0] = True  # every entry observed at least once
    train = Split(x, x * mask, Mask(mask.float()), mask)
    test = Split(x[:5], x[:5] * mask[:5], Mask(mask[:5].float()), mask[:5])
    fitted, recovered = linear_baseline(0, train, test)
    observed_mean = (x * mask).sum(0) / mask.sum(0)
    expected = torch.where(mask, x, observed_mean)
    torch.testing.assert_close(fitted, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(recovered, expected[:5], atol=1e-4, rtol=0)
    found = scored("trivial_", fitted, recovered, train, test)
    assert set(found) == {
        "trivial_train_mae",
        "trivial_train_hidden_mae",
        "trivial_heldout_mae",
        "trivial_heldout_hidden_mae",
    }


def test_linear_baselines_on_complete_data_project_and_on_measurements_agree_with_them():
    torch.manual_seed(4)
    basis = torch.randn(2, 16)
    x = (torch.randn(50, 2) @ basis).view(50, 1, 4, 4)
    complete = Split(x[:40], x[:40], Identity()), Split(x[40:], x[40:], Identity())
    fitted, recovered = linear_baseline(2, *complete)
    torch.testing.assert_close(fitted, x[:40], atol=1e-4, rtol=0)  # rank 2: exact
    torch.testing.assert_close(recovered, x[40:], atol=1e-4, rtol=0)
    no_test = Split(x[:0], x[:0], Identity())
    assert linear_baseline(2, complete[0], no_test)[1] is None
    assert linear_baseline(2, complete[0], None)[1] is None
    op = Projection.gaussian(8, (1, 4, 4), seed=5)
    measured = Split(x[:40], op(x[:40]), op), Split(x[40:], op(x[40:]), op)
    for model in (0, 2):
        _, recovered = linear_baseline(model, *measured)
        torch.testing.assert_close(op(recovered), op(x[40:]), atol=1e-3, rtol=0)


@pytest.mark.parametrize("n, size", [(30, 8), (12, 300)])  # tall (SVD) and wide (Gram)
def test_pca_components_are_orthonormal_and_span_the_top_principal_subspace(n, size):
    torch.manual_seed(6)
    x = torch.randn(n, 1, size) * torch.linspace(3, 0.1, size)
    pca = PCA(5).fit(x)
    components = pca.components
    torch.testing.assert_close(
        components @ components.T, torch.eye(5, dtype=torch.float64), atol=1e-8, rtol=0
    )
    centred = x.flatten(1).double() - x.flatten(1).double().mean(0)
    top = torch.linalg.svd(centred, full_matrices=False).Vh[:5]
    torch.testing.assert_close(components.T @ components, top.T @ top, atol=1e-8, rtol=0)
    duplicated = PCA(5).fit(torch.cat([x[:3]] * 4))  # 3 distinct examples span 2 directions
    assert torch.isfinite(duplicated.components).all()
    torch.testing.assert_close(duplicated.reconstruct(x[:3]), x[:3], atol=1e-5, rtol=0)


def test_the_protocol_scores_a_library_users_model_as_the_pipeline_does(tmp_path):
    """abp.evaluate.score, on splits read back from a prepared folder (Split.read): ABP and
    both baselines scored alike, every recovery keeping what the data say."""
    from abp.datasets import write_prepared
    from abp.evaluate import EvaluationConfig, Split, score
    from abp.train import ABPConfig

    torch.manual_seed(7)
    generator = LinearGenerator(3, 16)
    with torch.no_grad():
        x = generator(torch.randn(30, 3)) + 0.05 * torch.randn(30, 16)
    x = x.view(30, 1, 16)
    mask = torch.rand(30, 1, 16) > 0.4
    write_prepared(
        tmp_path / "tiny",
        {"train": {"x": x[:24], "mask": mask[:24]}, "test": {"x": x[24:], "mask": mask[24:]}},
        {"name": "tiny", "kind": "audio"},
    )
    train, test = Split.read(tmp_path / "tiny", "train"), Split.read(tmp_path / "tiny", "test")
    assert torch.equal(train.y, x[:24] * mask[:24]) and isinstance(train.observation, Mask)

    generator = LinearGenerator(3, (1, 16))
    scores = score(
        generator,
        train,
        test,
        latent_bank=torch.zeros(24, 3),
        config=ABPConfig(),
        evaluation=EvaluationConfig(n_steps=30),
    )
    metrics = scores.metrics
    for prefix in ("", "pca_", "trivial_"):
        assert {
            f"{prefix}train_mae",
            f"{prefix}train_hidden_mae",
            f"{prefix}heldout_mae",
            f"{prefix}heldout_hidden_mae",
        } <= set(metrics)
    sizes = (metrics["pca_components"], metrics["latent_size"], metrics["train_examples"])
    assert sizes == (3, 3, 24)
    assert scores.shown_split is test and set(scores.signals) == {"ABP", "PCA", "trivial"}
    for signals in scores.signals.values():  # every method keeps the observed entries
        torch.testing.assert_close(signals[test.mask], test.x[test.mask], atol=1e-5, rtol=0)
    # Sound (N×1×L): the trivial baseline is silence in the gaps.
    assert torch.equal(scores.signals["trivial"], test.x * test.mask)
    assert scores.descent_steps["test"].max() <= 30
    # Without a test split, the training split is the one shown.
    no_test = score(
        generator,
        train,
        None,
        latent_bank=torch.zeros(24, 3),
        config=ABPConfig(),
        evaluation=EvaluationConfig(n_steps=5),
    )
    assert no_test.shown_split is train and "heldout_mae" not in no_test.metrics
    empty = Split(test.x[:0], test.y[:0], test.observation.select(torch.arange(0)), test.mask[:0])
    no_test_examples = score(
        generator,
        train,
        empty,
        latent_bank=torch.zeros(24, 3),
        config=ABPConfig(),
        evaluation=EvaluationConfig(n_steps=5),
    )
    assert no_test_examples.metrics == no_test.metrics
    assert no_test_examples.shown_split is train


def test_flat_signals_are_scored_with_the_mean_as_their_trivial_baseline():
    """A library user's N×D data (a LinearGenerator): not sound, so the trivial baseline is
    the training mean, not silence."""
    from abp.evaluate import Split, score
    from abp.train import ABPConfig

    torch.manual_seed(8)
    x = torch.randn(20, 6) + 3
    train, test = Split(x[:15], x[:15], Identity()), Split(x[15:], x[15:], Identity())
    scores = score(
        LinearGenerator(2, 6), train, test, latent_bank=torch.zeros(15, 2), config=ABPConfig()
    )
    mean = x[:15].mean(0, keepdim=True).expand(5, 6)
    assert scores.metrics["trivial_heldout_mae"] == pytest.approx(
        mean_absolute_error(mean, x[15:]), rel=1e-5
    )


def test_sample_latents_are_one_fixed_draw_whatever_the_generators_device():
    from abp.evaluate import sample_latents

    generator = LinearGenerator(4, 8)
    expected = torch.randn((5, 4), generator=torch.Generator().manual_seed(12345))
    assert torch.equal(sample_latents(generator, 5), expected)
    assert torch.equal(sample_latents(generator.double(), 5), expected.double())
    assert not torch.equal(sample_latents(generator, 5, seed=1), sample_latents(generator, 5))
