"""Generator networks g(z; W): each maps a batch of latents to a batch of signals.

Every generator knows the shape of one example's latent (`latent_shape`) and records the
arguments it was built with (`config`), so a checkpoint can rebuild it with
`build_generator(config)`.

There is deliberately no batch normalisation: it couples the examples of a batch, and then a
Langevin chain would depend on which other chains share its batch. Every chain here is exact
whatever the batch size (see `abp.langevin`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeGuard

import torch
from torch import nn

from abp.conv import TO_SIGNAL
from abp.files import save_tensors


class Generator(nn.Module):
    """Base class: `forward(z)` maps latents of shape (N, *latent_shape) to signals."""

    kind: str = ""
    latent_shape: tuple[int, ...]
    config: dict[str, Any]

    def sample_latent(
        self,
        n: int,
        *,
        rng: torch.Generator | None = None,
        latent_shape: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Draw n latents from the prior N(0, I) on the generator's device."""
        shape = tuple(latent_shape) if latent_shape is not None else self.latent_shape
        weight = next(self.parameters())
        return torch.randn((n, *shape), generator=rng, device=weight.device, dtype=weight.dtype)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        rng: torch.Generator | None = None,
        latent_shape: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Signals g(z) for n latents drawn from the prior."""
        return self(self.sample_latent(n, rng=rng, latent_shape=latent_shape))


def _is_whole(value: object) -> TypeGuard[int]:
    """Whether `value` is a whole number (numpy's integers too: they act as ints here). A bool
    is not, though Python counts it as an int: YAML's `true` would otherwise build a network
    of width 1."""
    return not isinstance(value, bool) and isinstance(value, numbers.Integral)


def _check_sizes(**sizes: Any) -> None:
    """Each size must be a whole number ≥ 1 (see _is_whole)."""
    for name, value in sizes.items():
        if not _is_whole(value):
            raise ValueError(f"{name} must be a whole number ≥ 1, got {value!r}")
        if value < 1:
            raise ValueError(f"{name} must be ≥ 1, got {value}")


def _check_widths(widths: Any, *, at_least_one: bool) -> tuple[int, ...]:
    """The channel counts as a tuple of ints, each ≥ 1."""
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence):
        raise ValueError(f"widths must be a list of channel counts, got {widths!r}")
    if at_least_one and not widths:
        raise ValueError("widths must list at least one channel count")
    _check_sizes(**{f"widths[{i}]": w for i, w in enumerate(widths)})
    return tuple(int(w) for w in widths)


def _default_widths(n_layers: int, width: int, max_width: int = 512) -> tuple[int, ...]:
    # Channel count halves at every upsampling, ending at `width` (DCGAN's pattern).
    return tuple(min(max_width, width * 2 ** (n_layers - 1 - i)) for i in range(n_layers))


def _upsampling_stack(
    conv: type[nn.Module], widths: Sequence[int], out_channels: int, kernel, stride, padding
) -> nn.Sequential:
    """ConvTranspose layers widths[0] → widths[1] → … → out_channels, then tanh; the last
    one, into the signal's channels, faster on the CPU (abp.conv; 1-D and 2-D only)."""
    layers: list[nn.Module] = []
    channels = [*widths, out_channels]
    for i in range(len(widths)):
        last = i == len(widths) - 1
        layer = TO_SIGNAL[conv] if last else conv
        layers.append(layer(channels[i], channels[i + 1], kernel, stride, padding))
        layers.append(nn.Tanh() if last else nn.LeakyReLU(0.2))
    return nn.Sequential(*layers)


class ImageGenerator(Generator):
    """z ∈ R^d → linear → base×base×widths[0] → ConvTranspose2d stack (each ×2) → tanh.

    The image side is `image_size = base · 2^len(widths)`; `widths` are the channel counts
    from the base resolution up to half the image size.
    """

    kind = "image"

    def __init__(
        self,
        latent_dim: int = 100,
        image_size: int = 64,
        channels: int = 3,
        widths: Sequence[int] | None = None,
        width: int = 64,
    ):
        super().__init__()
        _check_sizes(latent_dim=latent_dim, image_size=image_size, channels=channels)
        if widths is None:
            _check_sizes(width=width)
            n_layers = max(1, round(math.log2(image_size / 4)))
            widths = _default_widths(n_layers, width)
        widths = _check_widths(widths, at_least_one=True)
        base, remainder = divmod(image_size, 2 ** len(widths))
        if remainder or base < 1:
            raise ValueError(
                f"image_size={image_size} is not base·2^{len(widths)} for the "
                f"{len(widths)} upsampling layers of widths={widths}"
            )
        self.latent_shape = (latent_dim,)
        self.config = dict(
            kind=self.kind,
            latent_dim=latent_dim,
            image_size=image_size,
            channels=channels,
            widths=list(widths),
        )
        self.base, self.widths = base, widths
        self.project = nn.Linear(latent_dim, widths[0] * base * base)
        self.activation = nn.LeakyReLU(0.2)
        self.upsample = _upsampling_stack(nn.ConvTranspose2d, widths, channels, 4, 2, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.activation(self.project(z)).view(-1, self.widths[0], self.base, self.base)
        return self.upsample(h)


def face_generator(channels: int = 3) -> ImageGenerator:
    """The 64×64 face generator of the paper's lineage: d = 100,
    4×4×512 → 8×8×256 → 16×16×128 → 32×32×64 → 64×64×C."""
    return ImageGenerator(
        latent_dim=100, image_size=64, channels=channels, widths=(512, 256, 128, 64)
    )


class TextureGenerator(Generator):
    """Fully convolutional: a latent map c×h×w → ConvTranspose2d stack (each ×2) → tanh.

    With n = len(widths) + 1 layers the texture is (h·2^n)×(w·2^n) (7×7 → 224×224 by
    default, as in the paper); the same weights applied to a larger latent map synthesise a
    proportionally larger texture.
    """

    kind = "texture"

    def __init__(
        self,
        latent_channels: int = 4,
        latent_size: int = 7,
        channels: int = 3,
        widths: Sequence[int] = (256, 128, 64, 32),
    ):
        super().__init__()
        _check_sizes(latent_channels=latent_channels, latent_size=latent_size, channels=channels)
        widths = _check_widths(widths, at_least_one=False)  # none: a single layer
        self.latent_shape = (latent_channels, latent_size, latent_size)
        self.config = dict(
            kind=self.kind,
            latent_channels=latent_channels,
            latent_size=latent_size,
            channels=channels,
            widths=list(widths),
        )
        self.upsample = _upsampling_stack(
            nn.ConvTranspose2d, (latent_channels, *widths), channels, 4, 2, 1
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.upsample(z)


class VideoGenerator(Generator):
    """Spatio-temporal latent c×t×h×w → ConvTranspose3d stack → C×T×H×W clip, tanh.

    Every layer doubles height and width; the first `temporal_layers` layers also double
    time (the rest keep the frame count): with n = len(widths) + 1 layers,
    T = t·2^temporal_layers and H = h·2^n.
    """

    kind = "video"

    def __init__(
        self,
        latent_channels: int = 8,
        latent_frames: int = 2,
        latent_size: int = 4,
        channels: int = 3,
        widths: Sequence[int] = (128, 64, 32),
        temporal_layers: int = 2,
    ):
        super().__init__()
        _check_sizes(
            latent_channels=latent_channels,
            latent_frames=latent_frames,
            latent_size=latent_size,
            channels=channels,
        )
        widths = _check_widths(widths, at_least_one=False)  # none: a single layer
        if not _is_whole(temporal_layers) or not 0 <= temporal_layers <= len(widths) + 1:
            raise ValueError(
                f"temporal_layers={temporal_layers!r} must be a whole number "
                f"between 0 and the number of layers, len(widths) + 1 = "
                f"{len(widths) + 1}"
            )
        self.latent_shape = (latent_channels, latent_frames, latent_size, latent_size)
        self.config = dict(
            kind=self.kind,
            latent_channels=latent_channels,
            latent_frames=latent_frames,
            latent_size=latent_size,
            channels=channels,
            widths=list(widths),
            temporal_layers=temporal_layers,
        )
        channels_in = (latent_channels, *widths)
        channels_out = (*widths, channels)
        layers: list[nn.Module] = []
        for i in range(len(channels_in)):
            doubles_time = i < temporal_layers
            last = i == len(channels_in) - 1
            layers.append(
                nn.ConvTranspose3d(
                    channels_in[i],
                    channels_out[i],
                    kernel_size=(4 if doubles_time else 3, 4, 4),
                    stride=(2 if doubles_time else 1, 2, 2),
                    padding=1,
                )
            )
            layers.append(nn.Tanh() if last else nn.LeakyReLU(0.2))
        self.upsample = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.upsample(z)


class AudioGenerator(Generator):
    """Latent sequence c×l → ConvTranspose1d stack (each ×stride) → 1×L waveform, tanh.

    L = l · stride^(len(widths)+1).
    """

    kind = "audio"

    def __init__(
        self,
        latent_channels: int = 16,
        latent_length: int = 16,
        widths: Sequence[int] = (128, 64, 32),
        stride: int = 4,
        channels: int = 1,
    ):
        super().__init__()
        _check_sizes(
            latent_channels=latent_channels, latent_length=latent_length, channels=channels
        )
        if not _is_whole(stride) or stride < 2 or stride % 2:
            raise ValueError(f"stride={stride!r} must be an even number ≥ 2")
        widths = _check_widths(widths, at_least_one=False)  # none: a single layer
        self.latent_shape = (latent_channels, latent_length)
        self.config = dict(
            kind=self.kind,
            latent_channels=latent_channels,
            latent_length=latent_length,
            widths=list(widths),
            stride=stride,
            channels=channels,
        )
        # kernel 2·stride, padding stride/2: each layer multiplies the length by exactly stride.
        self.upsample = _upsampling_stack(
            nn.ConvTranspose1d,
            (latent_channels, *widths),
            channels,
            2 * stride,
            stride,
            stride // 2,
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.upsample(z)


class LinearGenerator(Generator):
    """x = W z + b (factor analysis), reshaped to `output_shape`."""

    kind = "linear"

    def __init__(self, latent_dim: int, output_shape: Sequence[int] | int):
        super().__init__()
        _check_sizes(latent_dim=latent_dim)
        if _is_whole(output_shape):
            output_shape = (output_shape,)
        if (
            isinstance(output_shape, (str, bytes))
            or not isinstance(output_shape, Sequence)
            or not output_shape
        ):
            raise ValueError(
                f"output_shape must be a size or a list of sizes, got {output_shape!r}"
            )
        _check_sizes(**{f"output_shape[{i}]": s for i, s in enumerate(output_shape)})
        output_shape = tuple(int(s) for s in output_shape)
        self.latent_shape = (latent_dim,)
        self.output_shape = output_shape
        self.config = dict(kind=self.kind, latent_dim=latent_dim, output_shape=list(output_shape))
        self.linear = nn.Linear(latent_dim, math.prod(output_shape))

    @property
    def weight(self) -> torch.Tensor:
        """W, of shape (D, d) with D the flattened signal size."""
        return self.linear.weight

    @property
    def bias(self) -> torch.Tensor:
        return self.linear.bias

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.linear(z).view(-1, *self.output_shape)


GENERATORS: dict[str, type[Generator]] = {
    cls.kind: cls
    for cls in (ImageGenerator, TextureGenerator, VideoGenerator, AudioGenerator, LinearGenerator)
}


def build_generator(config: dict[str, Any]) -> Generator:
    """Rebuild a generator from its `config` (as stored in checkpoints)."""
    options = dict(config)
    kind = options.pop("kind", None)
    if kind not in GENERATORS:
        raise ValueError(f"unknown generator kind {kind!r}; expected one of {sorted(GENERATORS)}")
    return GENERATORS[kind](**options)


def sized_config(config: dict[str, Any], signal_shape: Sequence[int]) -> dict[str, Any]:
    """A generator's settings with the sizes the data fix filled in (channels, image size,
    output shape), unless the settings give them."""
    config = dict(config)
    channels, *rest = signal_shape
    if config.get("kind") == "linear":
        config.setdefault("output_shape", list(signal_shape))
        return config
    config.setdefault("channels", channels)
    if config.get("kind") == "image":
        config.setdefault("image_size", rest[-1])
    return config


def generator_for(
    config: dict[str, Any],
    signal_shape: Sequence[int],
    *,
    seed: int | None = None,
    data_name: str = "the data",
) -> Generator:
    """The generator of `config` sized for signals of `signal_shape`, its initial weights
    drawn with torch's global generator seeded by `seed` (None: as it stands); raises
    ValueError unless it makes signals of exactly that shape."""
    if seed is not None:
        torch.manual_seed(seed)
    generator = build_generator(sized_config(config, signal_shape))
    with torch.no_grad():
        made = list(generator(generator.sample_latent(1)).shape[1:])
    if made != list(signal_shape):
        raise ValueError(
            f"the generator makes signals of shape {made}, but {data_name} holds "
            f"{list(signal_shape)}; change its sizes"
        )
    return generator


def save_generator(generator: Generator, path: Path) -> Path:
    """The generator's config and weights, atomically: what load_generator rebuilds it from."""
    return save_tensors({"config": generator.config, "state_dict": generator.state_dict()}, path)


def load_generator(path: Path) -> Generator:
    """A generator saved by save_generator, on the CPU (weights only: nothing is unpickled
    but tensors and plain values)."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    generator = build_generator(saved["config"])
    generator.load_state_dict(saved["state_dict"])
    return generator
