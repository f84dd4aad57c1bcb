"""The benchmark program runs, checks that ours and the reference compute the same
iteration, and ends with the line other tools read. (Its speed is not tested here.)"""

import re

from bench.train_step import main


def test_benchmark_prints_a_table_and_the_speedup_line(capsys):
    main(["--device", "cpu", "--batch-sizes", "2", "--repeats", "1"])
    lines = capsys.readouterr().out.strip().splitlines()
    check = next(line for line in lines if line.startswith("same iteration check"))
    assert float(check.rsplit("=", 1)[1]) < 1e-6
    assert sum(1 for line in lines if re.search(r"\d+\.\d\d×$", line)) == 3  # one row per case
    assert re.fullmatch(r"speedup_vs_reference=\d+\.\d\d", lines[-1])


def test_flops_of_an_iteration_are_counted_and_grow_with_the_batch():
    """The FLOP count behind the TFLOP/s column (CUDA only in the table) works through
    autograd.grad on the latents, and an iteration on twice the examples does twice the
    work (a counter that saw only part of the iteration would not scale so)."""
    import torch

    from abp.train import ABPConfig
    from bench.train_step import CASES, iteration_flops

    torch.manual_seed(0)
    generator = CASES[2].build()
    config = ABPConfig(sigma=0.3, step_size=0.1, langevin_steps=2, batch_size=16, seed=0)
    small = iteration_flops(generator, torch.rand(8, 1, 4096) * 2 - 1, config, torch.device("cpu"))
    large = iteration_flops(generator, torch.rand(16, 1, 4096) * 2 - 1, config, torch.device("cpu"))
    assert small > 0
    assert abs(large / small - 2) < 0.05
