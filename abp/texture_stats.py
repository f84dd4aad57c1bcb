"""Whether a synthesised texture looks like its source, in two numbers a test can hold.

A texture is a stationary image: what identifies it is how its energy spreads over spatial
frequencies and orientations (brick: strong horizontal and vertical periods; grass: fine
vertical strokes) and which grey levels it uses. So a synthesis is compared with its source
by

- `spectrum_distance`: the total-variation distance between their normalised power spectra
  (0: the same spread over frequencies and orientations; 1: disjoint), each estimated by
  Welch's method, averaged over Hann-windowed square tiles, so images of any size (a texture
  from a larger latent map) compare with the training size's;
- `histogram_distance`: the Wasserstein-1 distance between their pixel values (mean
  absolute difference of matched quantiles, on the [0, 1] intensity scale).

The baseline (`shuffled_pixels`) is noise with the source's histogram exactly: the source's
pixels in random places. It scores 0 on histograms and the spectrum of white noise, so a
synthesis whose spectrum distance is well below the baseline's has learned the source's
structure, not only its grey levels.

    spectrum_distance(samples, source), spectrum_distance(shuffled_pixels(source), source)
"""

from __future__ import annotations

import torch

TILE = 32  # the tile side: periods up to TILE pixels are resolved (a brick is ~20 at 112 px)
QUANTILES = 256


def tiles(images: torch.Tensor, size: int = TILE) -> torch.Tensor:
    """Every size×size tile of images (N, C, H, W) at half-tile strides, as (M, C, size,
    size). An image smaller than a tile is one tile of its own size."""
    size = min(size, images.shape[-2], images.shape[-1])
    stride = max(size // 2, 1)
    patches = images.unfold(-2, size, stride).unfold(-2, size, stride)  # N, C, h, w, s, s
    return patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, images.shape[1], size, size)


def power_spectrum(images: torch.Tensor, size: int = TILE) -> torch.Tensor:
    """The normalised power spectrum (summing to 1) of images (N, C, H, W) in [−1, 1]:
    Welch's estimate over Hann-windowed tiles, each with its mean removed (the mean grey
    level is the histogram's business), channels averaged."""
    x = tiles(images.double(), size)
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    n = x.shape[-1]
    window = torch.hann_window(n, periodic=True, dtype=x.dtype)  # as Welch's method uses
    x = x * (window[:, None] * window[None, :])
    power = torch.fft.rfft2(x).abs().square().mean(dim=(0, 1))
    # rfft2 keeps half the plane: every column but the first (and the last, for an even n)
    # stands for itself and its mirror image, so it counts twice, or vertical structure
    # would weigh half as much as horizontal.
    power[..., 1 : (n + 1) // 2] *= 2
    total = power.sum()
    if not torch.isfinite(total) or total <= 0:  # a flat image has no spectrum to compare
        return torch.full_like(power, 1.0 / power.numel())
    return power / total


def spectrum_distance(synthesis: torch.Tensor, source: torch.Tensor, size: int = TILE) -> float:
    """Total-variation distance in [0, 1] between the two power spectra."""
    size = min(size, *synthesis.shape[-2:], *source.shape[-2:])
    p, q = power_spectrum(synthesis, size), power_spectrum(source, size)
    return float(0.5 * (p - q).abs().sum())


def histogram_distance(synthesis: torch.Tensor, source: torch.Tensor) -> float:
    """Wasserstein-1 distance between the pixel values of the two, on the [0, 1] scale."""
    levels = (torch.arange(QUANTILES, dtype=torch.float64) + 0.5) / QUANTILES  # midpoints
    a = torch.quantile(synthesis.double().flatten()[: 2**24], levels)
    b = torch.quantile(source.double().flatten()[: 2**24], levels)
    return float((a - b).abs().mean() / 2)  # signals in [−1, 1]: half is the [0, 1] scale


def shuffled_pixels(images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Each image's pixels (of each channel) in random places: its histogram, no structure."""
    generator = torch.Generator().manual_seed(seed)
    flat = images.flatten(-2)
    order = torch.argsort(torch.rand(flat.shape, generator=generator), dim=-1)
    return flat.gather(-1, order).view_as(images)
