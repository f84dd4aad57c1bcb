"""abp.texture_stats: the spectrum distance sees structure (periods and their orientation)
whatever the image size, the histogram distance sees grey levels, and the baseline (the
source's pixels shuffled) has the source's histogram and none of its structure."""

import math

import pytest
import torch

from abp.texture_stats import histogram_distance, shuffled_pixels, spectrum_distance


def stripes(size: int, period: float = 8.0, vertical: bool = True, seed: int = 0, shift=0.0):
    """A stationary texture in [−1, 1]: stripes of one period, a little noise on them."""
    coordinate = torch.arange(size, dtype=torch.float64) + shift
    wave = torch.sin(2 * math.pi * coordinate / period)
    image = wave[None, :].expand(size, size) if vertical else wave[:, None].expand(size, size)
    noise = 0.1 * torch.randn(size, size, generator=torch.Generator().manual_seed(seed))
    return (0.8 * image + noise).clamp(-1, 1)[None, None].float()


def test_the_same_texture_elsewhere_and_larger_is_close_and_its_shuffled_pixels_are_not():
    source = stripes(64)
    elsewhere = stripes(64, seed=1, shift=3.0)  # other noise, other phase
    larger = stripes(128, seed=2)  # as a texture from a 2× latent map
    noise = shuffled_pixels(source)
    assert spectrum_distance(elsewhere, source) < 0.1
    assert spectrum_distance(larger, source) < 0.1
    assert spectrum_distance(noise, source) > 0.6
    # The baseline keeps the histogram exactly.
    assert histogram_distance(noise, source) == pytest.approx(0.0, abs=1e-9)
    assert sorted(noise.flatten().tolist()) == sorted(source.flatten().tolist())


def test_orientation_and_period_count_and_grey_levels_are_measured_apart():
    source = stripes(64)
    turned = stripes(64, vertical=False)  # the same histogram, the other orientation
    finer = stripes(64, period=3.0)
    assert spectrum_distance(turned, source) > 0.6
    assert spectrum_distance(finer, source) > 0.6
    assert histogram_distance(turned, source) < 0.01
    # Half the contrast: the spectrum's shape is the same, the grey levels are not.
    assert spectrum_distance(0.5 * source, source) < 1e-6
    expected = 0.5 * source.abs().mean().item() / 2  # |x − x/2| on the [0, 1] scale
    assert histogram_distance(0.5 * source, source) == pytest.approx(expected, rel=0.05)


def test_turning_both_images_leaves_the_distance_as_it_was():
    """Horizontal and vertical structure weigh alike (rfft2's half plane, each column but
    the first and last counted with its mirror image)."""
    source = stripes(64) * 0.5 + stripes(64, period=5.0, vertical=False) * 0.5
    other = stripes(64, period=6.0, seed=3)
    here = spectrum_distance(other, source)
    turned = spectrum_distance(other.transpose(-1, -2), source.transpose(-1, -2))
    assert here > 0.1 and turned == pytest.approx(here, abs=1e-9)


def test_several_images_and_channels_make_one_spectrum():
    source = torch.cat([stripes(48, seed=s) for s in range(3)]).repeat(1, 3, 1, 1)  # RGB
    assert source.shape == (3, 3, 48, 48)
    assert spectrum_distance(source[:1], source) < 0.1
    assert spectrum_distance(shuffled_pixels(source), source) > 0.6


def test_abp_on_crops_of_one_texture_synthesises_that_texture_and_a_larger_one():
    """The check the pipeline's texture experiment is held to, on a texture small enough to
    learn here: ABP on random crops of one image of stripes; prior samples, at the training
    size and from a latent map twice as large, are closer to the crops' spectrum than half
    the distance of their shuffled pixels, and an untrained generator's are not."""
    from abp.models import TextureGenerator
    from abp.sources.images import random_patches
    from abp.train import ABPConfig, ABPTrainer

    source = stripes(96, period=8.0)
    crops, _, _ = random_patches(source, count=16, size=32, seed=0)
    torch.manual_seed(0)
    generator = TextureGenerator(latent_channels=2, latent_size=4, channels=1, widths=[16, 8])
    config = ABPConfig(
        sigma=0.3, step_size=0.1, langevin_steps=10, learning_rate=0.003, batch_size=8
    )

    def distances() -> tuple[float, float]:
        with torch.no_grad():
            z = torch.randn(4, 2, 4, 4, generator=torch.Generator().manual_seed(1))
            large = torch.randn(1, 2, 8, 8, generator=torch.Generator().manual_seed(2))
            return (
                spectrum_distance(generator(z), crops),
                spectrum_distance(generator(large), crops),
            )

    baseline = spectrum_distance(shuffled_pixels(crops), crops)
    assert min(distances()) > 0.5 * baseline  # untrained: nothing of the stripes yet
    ABPTrainer(generator, crops, config, device="cpu").fit(60)
    samples, larger = distances()
    assert samples < 0.5 * baseline and larger < 0.5 * baseline, (samples, larger, baseline)
