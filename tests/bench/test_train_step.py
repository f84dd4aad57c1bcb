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
