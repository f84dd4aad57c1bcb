"""The switch checks meant for a GPU machine run on the CPU too, and pass there."""

from bench.cuda_checks import main


def test_switch_checks_pass_on_the_cpu_and_say_what_needs_cuda(capsys):
    assert main(["--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "PASS channels_last" in out and "PASS bf16" in out
    assert "n/a  cuda_graphs    needs a CUDA device" in out


def test_a_switch_that_changes_the_computation_fails_its_check():
    """The tolerances come from the measured rounding floor; they must still catch a
    "switch" that computes something else: σ 3 % off, or another noise draw."""
    import torch

    from bench.cuda_checks import check_switch

    cpu = torch.device("cpu")
    assert not check_switch(cpu, {"sigma": 0.31}, {})[0]
    passed, message = check_switch(cpu, {"seed": 1}, {})
    assert not passed and "same generator state: False" in message
