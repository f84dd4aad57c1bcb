"""The switch checks meant for a GPU machine run on the CPU too, and pass there."""

from bench.cuda_checks import main


def test_switch_checks_pass_on_the_cpu_and_say_what_needs_cuda(capsys):
    assert main(["--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "PASS channels_last" in out and "PASS bf16" in out
    assert "n/a  cuda_graphs    needs a CUDA device" in out
