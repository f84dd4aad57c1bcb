"""Optional speed-ups for the generator's forward pass, each a switch (abp.train.ABPConfig).

They wrap the generator in a module that shares its weights, so the Langevin and learning
steps, the checkpoints and everything else are unchanged:

- channels_last: 4-D activations in NHWC memory order (faster convolutions on CUDA tensor
  cores);
- bf16: the forward pass under bfloat16 autocast (CUDA), its output returned in float32 so
  that the energy is accumulated in float32;
- compile: torch.compile of the forward pass.
"""

from __future__ import annotations

import torch
from torch import nn


class FastForward(nn.Module):
    """The generator's forward pass with the chosen speed-ups; shares its parameters."""

    def __init__(
        self,
        generator: nn.Module,
        *,
        channels_last: bool = False,
        bf16: bool = False,
        compile: bool = False,
    ):
        super().__init__()
        self.generator = generator
        self.latent_shape = generator.latent_shape
        self.bf16 = bf16
        if channels_last:
            generator.to(memory_format=torch.channels_last)
        self.forward_pass = torch.compile(generator) if compile else generator

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if not self.bf16:
            return self.forward_pass(z)
        with torch.autocast(device_type=z.device.type, dtype=torch.bfloat16):
            x = self.forward_pass(z)
        return x.float()


def fast_forward(
    generator: nn.Module, *, channels_last: bool = False, bf16: bool = False, compile: bool = False
) -> nn.Module:
    """The generator itself when no speed-up is on, else a FastForward around it."""
    if not (channels_last or bf16 or compile):
        return generator
    return FastForward(generator, channels_last=channels_last, bf16=bf16, compile=compile)
