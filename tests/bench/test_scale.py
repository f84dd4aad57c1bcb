"""The scaling benchmark runs end to end (tiny sizes, both parts: fresh child processes and a
2-process torchrun) and prints its tables with finite positive numbers. (Its speed and its
verdicts are not tested here; that off-device training trains as on-device training does
is tests/abp/test_data.py's.)"""

import math
import re

import pytest
import torch

from abp.datasets import PIXELS, decode
from abp.evaluate import most_probable_latents
from abp.models import ImageGenerator
from bench.scale import (
    RUNS,
    DecodedRows,
    decode_all,
    first_rows,
    main,
    open_images,
    synthetic_images,
    write_images,
)


def numbers(fields: list[str]) -> list[float]:
    return [float(f.rstrip("×%")) for f in fields]


@pytest.mark.slow  # fresh child processes and torchrun
def test_a_quick_run_prints_every_row_with_finite_positive_numbers(capsys):
    main(["--quick", "--device", "cpu", "--sizes", "64,256"])
    lines = capsys.readouterr().out.splitlines()

    for n in (64, 256):
        for run in RUNS:
            found = [line for line in lines if re.match(rf"\s*{n} {run.name}\s", line)]
            assert len(found) == 1, (n, run.name, lines)
            fields = found[0].split(run.name)[1].split()
            # s/epoch, s/1k ex, ×64, CPU s/1k, ×64, RSS MB, anon MB, ×64, Δanon MB, KiB/ex
            assert len(fields) == 10, found
            positive = numbers(fields[:8])
            assert all(math.isfinite(x) and x > 0 for x in positive), found
            if n == 64:  # the baseline row: ratios of 1, no difference
                assert positive[2] == positive[4] == positive[7] == 1.0, found
                assert fields[9] == "-", found
            else:
                assert all(math.isfinite(x) for x in numbers(fields[8:])), found

    verdicts = [line for line in lines if re.search(r"\): (holds|does NOT hold)$", line)]
    assert len(verdicts) == 6, lines  # time and host memory, for each of the three runs

    processes = {}
    for line in lines:
        match = re.match(r"\s*(1 -|2 gloo)\s+(.*)", line)
        if match:
            processes[match[1]] = numbers(match[2].split())
    assert set(processes) == {"1 -", "2 gloo"}, lines
    for row in processes.values():
        # N, batch, s/epoch, ex/s, speedup, efficiency, energy/ex, RSS MB
        assert len(row) == 8 and all(math.isfinite(x) and x > 0 for x in row), row
    assert processes["1 -"][5] == 100
    efficiency = re.fullmatch(r"parallel_efficiency=(\d+\.\d\d)", lines[-1])
    assert efficiency and float(efficiency[1]) > 0, lines[-1]


def test_the_memory_mapped_images_are_the_synthetic_images_read_per_batch(tmp_path):
    """What the runs train and evaluate on: the file holds the synthetic images (a prefix of
    a larger set is the smaller set), decoded with the PIXELS encoding; and evaluation
    reading y per batch from the file finds what it finds from the decoded tensor."""
    images = synthetic_images(1100)
    assert torch.equal(images[:300], synthetic_images(300))
    source = open_images(write_images(tmp_path / "images.npy", 1100), 1030)
    expected = decode(images[:1030], PIXELS.scale, PIXELS.offset)
    assert torch.equal(decode_all(source), expected)
    ids = torch.tensor([0, 7, 1029])
    assert torch.equal(DecodedRows(source)[ids], expected[ids])

    generator = ImageGenerator(latent_dim=4, image_size=64, channels=3, widths=(4,))
    settings = {"sigma": 0.3, "step_size": 0.1, "max_steps": 2, "batch_size": 64}
    y = DecodedRows(first_rows(source, 150))  # three batches, the last one short
    from_file, _ = most_probable_latents(generator, y, torch.zeros(150, 4), **settings)  # type: ignore[arg-type]
    from_tensor, _ = most_probable_latents(
        generator, expected[:150], torch.zeros(150, 4), **settings
    )
    assert torch.equal(from_file, from_tensor)
