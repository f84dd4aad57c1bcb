"""Incomplete and indirect variants of prepared signals."""

import pytest
import torch

from abp.observe import LocalAverage, Projection
from abp.variants import (
    UnfitSetting,
    check_measurement,
    measurement_spec,
    occlusion_mask,
    operator_from_spec,
    subsample,
)


def test_occlusion_patterns_fit_their_signal_kinds():
    rng = torch.Generator().manual_seed(0)
    images, clips = torch.zeros(4, 3, 32, 32), torch.zeros(2, 3, 8, 16, 16)
    audio = torch.zeros(3, 1, 512)
    m = occlusion_mask(images, pattern="salt_pepper", hidden_fraction=0.7, block=3, rng=rng)
    assert m.shape == (4, 1, 32, 32) and abs(1 - m.float().mean() - 0.7) < 0.01
    m = occlusion_mask(images, pattern="square", side=20, rng=rng)  # 20 at 64 → 10 at 32
    assert torch.all((~m).sum(dim=(1, 2, 3)) == 100)
    m = occlusion_mask(clips, pattern="frame_occlusion", hidden_fraction=0.5, block=3, rng=rng)
    assert m.shape == (2, 1, 8, 16, 16)
    hidden_per_frame = 1 - m.float().mean(dim=(1, 3, 4))
    assert torch.all((hidden_per_frame >= 0.5) & (hidden_per_frame < 0.6))
    m = occlusion_mask(audio, pattern="missing_segments", hidden_fraction=0.2, block=16, rng=rng)
    assert m.shape == (3, 1, 512)
    with pytest.raises(
        ValueError, match="'missing_frames' is for video data, but this data set holds image"
    ):
        occlusion_mask(images, pattern="missing_frames", hidden_fraction=0.5, rng=rng)
    with pytest.raises(ValueError, match="needs hidden_fraction and block"):
        occlusion_mask(images, pattern="salt_pepper", hidden_fraction=0.5, rng=rng)


def test_projection_is_rebuilt_exactly_from_its_stored_spec():
    x = torch.rand(5, 1, 8, 8)
    spec = measurement_spec(x, operator="gaussian", ratio=0.25, seed=3)
    assert spec == {"kind": "gaussian", "n_measurements": 16, "signal_shape": [1, 8, 8], "seed": 3}
    a, b = operator_from_spec(spec), operator_from_spec(dict(spec))
    assert isinstance(a, Projection) and torch.equal(a.matrix, b.matrix)
    assert a(x).shape == (5, 16)
    avg = operator_from_spec(measurement_spec(x, operator="local_average", block=2))
    assert isinstance(avg, LocalAverage) and avg(x).shape == (5, 1, 4, 4)
    audio_avg = operator_from_spec(
        measurement_spec(torch.rand(2, 1, 64), operator="local_average", block=4)
    )
    assert audio_avg(torch.rand(2, 1, 64)).shape == (2, 1, 16)


def test_subsampling_frames_and_samples():
    clips = torch.arange(8.0).view(1, 1, 8, 1, 1).expand(2, 3, 8, 4, 4)
    assert subsample(clips, frame_step=2)[0, 0, :, 0, 0].tolist() == [0, 2, 4, 6]
    audio = torch.arange(10.0).view(1, 1, 10)
    assert subsample(audio, sample_step=3)[0, 0].tolist() == [0, 3, 6, 9]
    with pytest.raises(ValueError, match="frame_step applies to video"):
        subsample(audio, frame_step=2)


def test_per_example_matrices_too_large_to_hold_are_refused_before_any_work():
    check_measurement((1, 8, 8), operator="gaussian", ratio=0.25, per_example=True, n_examples=1797)
    with pytest.raises(UnfitSetting, match=r"60000 examples .* need 34\.3 GiB of matrices"):
        check_measurement(
            (1, 28, 28), operator="gaussian", ratio=0.25, per_example=True, n_examples=60000
        )
    with pytest.raises(UnfitSetting, match="per_example applies to gaussian"):
        check_measurement((1, 8, 8), operator="local_average", block=2, per_example=True)
