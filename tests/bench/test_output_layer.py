"""The output-layer benchmark runs and prints a row per case with finite positive numbers;
its baseline really is the plain oneDNN layer with the same weights. (Its speed is not tested
here: it is what the benchmark is for.)"""

import math

import torch
from torch import nn

from abp.conv import TO_SIGNAL
from abp.models import ImageGenerator
from bench.output_layer import main, with_plain_last_layer


def test_the_baseline_is_the_plain_layer_with_the_same_weights():
    ours = ImageGenerator(latent_dim=3, image_size=8, channels=1, widths=(8, 4))
    plain = with_plain_last_layer(ours)
    assert not any(type(m) in TO_SIGNAL.values() for m in plain.modules())
    assert any(type(m) is nn.ConvTranspose2d for m in plain.modules())
    assert any(type(m) in TO_SIGNAL.values() for m in ours.modules())  # left as it was
    z = torch.randn(4, 3)
    torch.testing.assert_close(plain(z), ours(z), rtol=1e-5, atol=1e-5)


def test_prints_a_row_per_case(capsys):
    main(["--repeats", "1", "--cases", "faces,speech"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["case", "oneDNN", "ms", "ours", "ms", "ratio"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert set(rows) == {"faces", "speech"}
    for fields in rows.values():
        plain, ours, ratio = float(fields[0]), float(fields[1]), float(fields[2].rstrip("×"))
        assert all(math.isfinite(v) and v > 0 for v in (plain, ours, ratio))
