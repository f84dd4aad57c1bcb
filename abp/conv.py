"""The generators' last layer: a transposed convolution into the signal's few channels (1
for images and sound, 3 for colour), computed on the CPU by PyTorch's own im2col-GEMM
kernel rather than by oneDNN.

PyTorch hands every CPU convolution it can to oneDNN, which is fast for the wide layers but
slow for a transposed convolution into so few channels: forward, a generator's last layer
took 1.2–3× as long as the GEMM kernel at the default experiments' shapes, and a whole ABP
epoch takes 3–15 % less with it (`python -m bench.output_layer`; video's 3-D layer gained
nothing and keeps oneDNN). The backward pass stays PyTorch's choice (oneDNN is fast there),
and on any other device nothing changes. It is the same convolution up to floating-point
rounding, with nn.ConvTranspose*d's weights, names and checkpoints.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable

# The most output channels for which the GEMM kernel wins (measured: into 1, 3 and 4
# channels it is faster, into 8 slower).
FEW_CHANNELS = 4


def gemm_forward(layer: nn.modules.conv._ConvTransposeNd, x: torch.Tensor) -> torch.Tensor:
    """layer(x) by aten's slow_conv_transpose2d (a 1-D layer as a 2-D one of height 1)."""
    flat = len(layer.kernel_size) == 1

    def two_d(sizes: tuple[int, ...], height: int) -> tuple[int, ...]:
        return (height, *sizes) if flat else sizes

    y = torch.ops.aten.slow_conv_transpose2d(
        x.unsqueeze(2) if flat else x,
        layer.weight.unsqueeze(2) if flat else layer.weight,
        two_d(layer.kernel_size, 1),
        layer.bias,
        two_d(layer.stride, 1),
        two_d(tuple(layer.padding), 0),  # type: ignore[arg-type]
        two_d(layer.output_padding, 0),
        two_d(layer.dilation, 1),
    )
    return y.squeeze(2) if flat else y


class GemmConvTranspose(torch.autograd.Function):
    """The GEMM kernel forward; the backward exactly the layer's own (aten's
    convolution_backward on the layer's shapes, where PyTorch picks oneDNN): for a 1-D
    layer the backward of the 2-D kernel the forward runs was slower than that."""

    @staticmethod
    def forward(ctx, x, weight, bias, layer):
        ctx.save_for_backward(x, weight)
        ctx.layer, ctx.with_bias = layer, bias is not None
        return gemm_forward(layer, x)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        layer = ctx.layer
        grad_x, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad,
            x,
            weight,
            [layer.out_channels] if ctx.with_bias else None,
            layer.stride,
            layer.padding,
            layer.dilation,
            True,  # transposed
            layer.output_padding,
            1,  # groups
            list(ctx.needs_input_grad[:3]),
        )
        return grad_x, grad_weight, grad_bias, None


class _IntoFewChannels:
    """forward() of a transposed convolution into few channels: the GEMM kernel on the CPU,
    the usual path anywhere else (or for what the kernel does not cover)."""

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        layer: nn.modules.conv._ConvTransposeNd = self  # type: ignore[assignment]
        if (
            x.device.type != "cpu"
            or output_size is not None
            or layer.groups != 1
            or layer.padding_mode != "zeros"
            or layer.out_channels > FEW_CHANNELS
            # Batched and not empty: what the kernel and its backward take.
            or x.dim() != len(layer.kernel_size) + 2
            or x.numel() == 0
            # Under autocast (bf16) the input's dtype is autocast's to choose, not ours.
            or torch.is_autocast_enabled("cpu")
            # A traced or exported graph (torch.compile, MLflow's pt2 model) keeps the plain
            # convolution: any device, any batch size (the GEMM kernel has no symbolic shapes).
            or torch.compiler.is_compiling()
            or torch.compiler.is_exporting()
        ):
            return super().forward(x, output_size)  # type: ignore[misc]
        return GemmConvTranspose.apply(x, layer.weight, layer.bias, layer)


class ConvTranspose1dToSignal(_IntoFewChannels, nn.ConvTranspose1d):
    """nn.ConvTranspose1d, faster on the CPU into few channels."""


class ConvTranspose2dToSignal(_IntoFewChannels, nn.ConvTranspose2d):
    """nn.ConvTranspose2d, faster on the CPU into few channels."""


TO_SIGNAL: dict[type[nn.Module], type[nn.Module]] = {
    nn.ConvTranspose1d: ConvTranspose1dToSignal,
    nn.ConvTranspose2d: ConvTranspose2dToSignal,
}
