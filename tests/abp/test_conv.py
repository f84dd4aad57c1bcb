"""The generators' last layer (abp.conv): the same convolution as nn.ConvTranspose*d, forward
and backward, computed by the GEMM kernel on the CPU into few channels and the usual way
otherwise."""

import pytest
import torch
from torch import nn

from abp.conv import FEW_CHANNELS, TO_SIGNAL
from abp.models import AudioGenerator, ImageGenerator, TextureGenerator, VideoGenerator

# (plain class, input shape, constructor arguments: in, out, kernel, stride, padding, ...)
CASES = [
    (nn.ConvTranspose2d, (5, 8, 6, 7), (8, 1, 4, 2, 1)),
    (nn.ConvTranspose2d, (3, 6, 5, 5), (6, 3, 3, 1, 1)),
    (
        nn.ConvTranspose2d,
        (2, 4, 5, 4),
        dict(
            in_channels=4,
            out_channels=2,
            kernel_size=(3, 5),
            stride=(2, 3),
            padding=(1, 2),
            output_padding=(1, 0),
            dilation=(1, 2),
        ),
    ),
    (nn.ConvTranspose1d, (4, 8, 33), (8, 1, 8, 4, 2)),
    (
        nn.ConvTranspose1d,
        (2, 5, 20),
        dict(
            in_channels=5,
            out_channels=4,
            kernel_size=5,
            stride=3,
            padding=1,
            output_padding=2,
            bias=False,
        ),
    ),
]


def layer_pair(plain_class, arguments):
    torch.manual_seed(0)
    build = (lambda c: c(**arguments)) if isinstance(arguments, dict) else (lambda c: c(*arguments))
    plain, ours = build(plain_class), build(TO_SIGNAL[plain_class])
    ours.load_state_dict(plain.state_dict())
    return plain, ours


def outputs_and_gradients(layer, x):
    x = x.clone().requires_grad_(True)
    y = layer(x)
    # A loss that weights every output entry differently, so no gradient is a plain sum.
    loss = (y * torch.linspace(-1, 2, y.numel()).view_as(y)).sum()
    return y, torch.autograd.grad(loss, [x, *layer.parameters()])


@pytest.mark.parametrize("plain_class, shape, arguments", CASES)
def test_the_same_convolution_forward_and_backward(plain_class, shape, arguments):
    plain, ours = layer_pair(plain_class, arguments)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    expected, expected_grads = outputs_and_gradients(plain, x)
    found, found_grads = outputs_and_gradients(ours, x)
    assert found.grad_fn.name() == "GemmConvTransposeBackward"  # the GEMM kernel ran
    torch.testing.assert_close(found, expected, rtol=1e-5, atol=1e-5)
    assert len(found_grads) == len(expected_grads)
    for got, want in zip(found_grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_channels_last_weights_and_input_give_the_same_result():
    # abp.fast's channels_last switch turns the generator's weights to NHWC as well.
    plain, ours = layer_pair(nn.ConvTranspose2d, (8, 1, 4, 2, 1))
    ours.to(memory_format=torch.channels_last)
    x = torch.randn(3, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    expected, expected_grads = outputs_and_gradients(plain, x)
    found, found_grads = outputs_and_gradients(ours, x)
    assert found.grad_fn.name() == "GemmConvTransposeBackward"
    torch.testing.assert_close(found, expected, rtol=1e-5, atol=1e-5)
    for got, want in zip(found_grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_only_the_input_gradient_when_the_weights_are_frozen():
    # The Langevin steps differentiate in z alone: no weight gradient is asked for.
    plain, ours = layer_pair(nn.ConvTranspose2d, (8, 1, 4, 2, 1))
    ours.requires_grad_(False)
    x = torch.randn(2, 8, 5, 5, requires_grad=True)
    y = ours(x)
    assert y.grad_fn.name() == "GemmConvTransposeBackward"
    (grad,) = torch.autograd.grad(y.sum(), x)
    (expected,) = torch.autograd.grad(plain(x).sum(), x)
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "plain_class, arguments, x",
    [
        (nn.ConvTranspose1d, (4, 1, 8, 4, 2), torch.randn(4, 9)),  # one signal, no batch
        (nn.ConvTranspose2d, (4, 1, 4, 2, 1), torch.randn(4, 5, 5)),  # one image, no batch
        (nn.ConvTranspose2d, (4, 1, 4, 2, 1), torch.randn(0, 4, 5, 5)),  # an empty batch
    ],
    ids=["unbatched 1-D", "unbatched 2-D", "empty batch"],
)
def test_unbatched_or_empty_input_takes_the_usual_path(plain_class, arguments, x):
    plain, ours = layer_pair(plain_class, arguments)
    x.requires_grad_(True)
    y = ours(x)
    assert y.grad_fn.name() != "GemmConvTransposeBackward"
    torch.testing.assert_close(y, plain(x))
    if x.numel():
        (grad,) = torch.autograd.grad(y.sum(), x)
        torch.testing.assert_close(grad, torch.autograd.grad(plain(x).sum(), x)[0])


def test_many_channels_an_output_size_or_autocast_take_the_usual_path():
    plain, ours = layer_pair(nn.ConvTranspose2d, (4, FEW_CHANNELS + 1, 4, 2, 1))
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    y = ours(x)
    assert y.grad_fn.name() != "GemmConvTransposeBackward"
    torch.testing.assert_close(y, plain(x))
    plain, ours = layer_pair(nn.ConvTranspose2d, (4, 1, 3, 2, 1))
    sized = ours(x, output_size=[10, 10])  # output_padding from the size: PyTorch's own
    assert sized.shape[-2:] == (10, 10)
    torch.testing.assert_close(sized, plain(x, output_size=[10, 10]))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # abp.fast's bf16 switch
        mixed = ours(x)
    assert mixed.grad_fn.name() != "GemmConvTransposeBackward"


@pytest.mark.parametrize(
    "generator",
    [
        ImageGenerator(latent_dim=3, image_size=8, channels=1, widths=(8, 4)),
        ImageGenerator(latent_dim=3, image_size=8, channels=3, widths=(8, 4)),
        TextureGenerator(latent_channels=2, latent_size=2, channels=1, widths=(4,)),
        AudioGenerator(latent_channels=2, latent_length=4, widths=(4,), stride=2),
    ],
    ids=["image", "colour", "texture", "audio"],
)
def test_generators_end_in_the_fast_layer_with_plain_weights(generator):
    convolutions = [m for m in generator.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    assert type(convolutions[-1]) in TO_SIGNAL.values()  # the last layer only
    assert all(type(m) not in TO_SIGNAL.values() for m in convolutions[:-1])
    z = generator.sample_latent(2).requires_grad_(True)
    assert generator(z).grad_fn.name() == "TanhBackward0"  # the layer runs, then tanh


def test_video_keeps_the_plain_layer():
    # Into 3 channels of video oneDNN was as fast or faster (bench.output_layer).
    video = VideoGenerator(
        latent_channels=2, latent_frames=1, latent_size=2, widths=(4,), temporal_layers=1
    )
    assert all(type(m) not in TO_SIGNAL.values() for m in video.modules())


@pytest.mark.parametrize(
    "generator, latent_shape",
    [
        (ImageGenerator(latent_dim=3, image_size=8, channels=1, widths=(8, 4)), (3,)),
        (AudioGenerator(latent_channels=2, latent_length=4, widths=(4,), stride=2), (2, 4)),
    ],
    ids=["image", "audio"],
)
def test_an_exported_generator_keeps_the_plain_convolution(generator, latent_shape):
    # MLflow's pt2 model is a torch.export with any batch size, to run on any device: the
    # GEMM kernel (CPU only, no symbolic shapes) stays out of the graph.
    from torch.export import Dim, export

    generator.eval()
    exported = export(
        generator, (torch.zeros(2, *latent_shape),), dynamic_shapes={"z": {0: Dim("batch")}}
    )
    targets = [str(n.target) for n in exported.graph.nodes if n.op == "call_function"]
    assert not any("slow_conv" in t for t in targets)
    assert any("conv_transpose" in t for t in targets)
    z = torch.randn(5, *latent_shape)
    torch.testing.assert_close(exported.module()(z), generator(z), rtol=1e-5, atol=1e-5)
