"""The variational auto-encoder baseline: ABP's own generator as the decoder, an inference
network (the encoder) in place of ABP's Langevin inference.

ABP's argument against the VAE (Kingma & Welling 2014) is the encoder: it guesses every
example's latent in one pass, so its posterior is only as good as the encoder (the
amortisation gap), where ABP samples each example's own posterior. To compare on equal
terms the VAE here has

- the decoder: the very generator class and settings of the experiment, initialised from
  the same seed (`generator_for(..., seed=training.init_seed)`);
- the likelihood: ABP's, y = A(g(z)) + N(0, σ²), with the same σ and operator A, so it
  learns from exactly the data ABP learns from: the observed entries only for occluded
  data, the measurements for compressed data;
- the encoder: the generator mirrored (`mirrored_encoder`), every transposed convolution
  a convolution with the same kernel, stride and padding, so it is of the decoder's size.
  It reads what is seen of an example as a signal (A⁺y: the zero-filled image for occluded
  data, the least-norm signal for compressed measurements) beside which entries were seen
  (the mask; all ones otherwise), and gives the mean and log-variance of q(z | y);
- the learning step: the same optimiser, learning rate, batch size and number of epochs.

The loss is the negative ELBO, per example

    E_q[ ||y − A(g(z))||² / (2σ²) ] + KL(q(z | y) || N(0, I)),

the data term of ABP's energy averaged over one reparameterised draw from q, the prior term
taken exactly (the KL). Written here in torch rather than taken from a VAE library: those
(pythae, for one) compute their reconstruction loss over every entry of a complete signal,
so occluded and compressed data, the operator A and σ would all have to be rewritten in
their loss anyway, and their trainers own the loop, the device and the checkpoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any

import torch
from annotated_types import Ge, Gt
from torch import nn

from abp.models import Generator
from abp.observe import Identity, Mask, Observation
from abp.settings import check_fields
from abp.train import ABPConfig


@dataclass(frozen=True)
class VAEConfig:
    """The VAE baseline's training (params.yaml: experiments.<name>.vae; changing it reruns
    the evaluation alone). Unset settings are ABP's, so both learn alike."""

    enabled: bool = True  # off: no VAE rows for this experiment
    # Passes over the training data; None: the experiment's training.epochs.
    epochs: Annotated[int, Ge(1)] | None = None
    # None: abp.learning_rate and abp.batch_size (and abp's optimizer and Adam betas).
    learning_rate: Annotated[float, Gt(0)] | None = None
    batch_size: Annotated[int, Ge(1)] | None = None
    seed: int = 0  # the encoder's initial weights, the batches' order and the draws from q

    def __post_init__(self) -> None:
        check_fields(self)


# A transposed convolution's mirror, by its number of spatial dimensions.
CONVOLUTION_OF = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


class Encoder(nn.Module):
    """q(z | y): (what is seen as a signal, which entries were seen) → (mean, log-variance),
    each of the decoder's latent shape."""

    def __init__(self, body: nn.Module, head: nn.Module | None):
        super().__init__()
        self.body, self.head = body, head

    def forward(self, seen: torch.Tensor, observed: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = self.body(torch.cat([seen, observed], dim=1))
        if self.head is not None:  # a latent vector: a linear map of the flattened features
            h = self.head(h.flatten(1))
        # Channels of a latent map (of any size: a larger texture gives a larger map), or
        # entries of a latent vector.
        mean, log_variance = h.chunk(2, dim=1)
        return mean, log_variance


def mirrored_encoder(generator: Generator, signal_shape: tuple[int, ...]) -> Encoder:
    """An encoder of the generator's size: its transposed convolutions reversed, each as a
    convolution with the same kernel, stride and padding (which maps the layer's output
    size back to its input size), LeakyReLU between. A latent map (texture, video, audio)
    comes out of the last convolution as 2 × its channels; a latent vector (image) from a
    linear layer after it, mirroring the generator's first one; a linear generator gets a
    linear encoder. Its input is the signal's channels twice (what is seen, and where)."""
    channels = signal_shape[0]
    transposed = [m for m in generator.modules() if isinstance(m, nn.modules.conv._ConvTransposeNd)]
    latent_shape = tuple(generator.latent_shape)
    vector = len(latent_shape) == 1
    if not transposed:  # linear: x = Wz + b, so q's mean is a linear map too
        size = 2 * math.prod(signal_shape)
        return Encoder(nn.Flatten(), nn.Linear(size, 2 * latent_shape[0]))
    layers: list[nn.Module] = []
    for i, layer in enumerate(reversed(transposed)):
        last = i == len(transposed) - 1
        out = layer.in_channels if vector or not last else 2 * layer.in_channels
        # Typed loosely: torch annotates sizes per dimension (int or a 1-, 2- or 3-tuple).
        convolution: Any = CONVOLUTION_OF[len(layer.kernel_size)]
        layers.append(
            convolution(
                2 * channels if i == 0 else layer.out_channels,
                out,
                layer.kernel_size,
                layer.stride,
                layer.padding,
            )
        )
        if vector or not last:
            layers.append(nn.LeakyReLU(0.2))
    body = nn.Sequential(*layers)
    head = None
    if vector:
        with torch.no_grad():
            features = body(torch.zeros(1, 2 * channels, *signal_shape[1:])).numel()
        head = nn.Linear(features, 2 * latent_shape[0])
    encoder = Encoder(body, head)
    with torch.no_grad():
        mean, _ = encoder(torch.zeros(1, *signal_shape), torch.zeros(1, *signal_shape))
    if tuple(mean.shape[1:]) != latent_shape:
        raise ValueError(
            f"the mirrored encoder gives latents of shape {list(mean.shape[1:])} for signals "
            f"of shape {list(signal_shape)}, not the generator's {list(latent_shape)}"
        )
    return encoder


def encoder_inputs(
    y: torch.Tensor, observation: Observation, signal_shape: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """What the encoder reads of examples: A⁺y (what is seen, as a signal: the zero-filled
    signal for occluded data) and the entries seen (the mask; ones for complete data and for
    measurements, whose A⁺y has no hidden entries to mark)."""
    seen = y if isinstance(observation, Identity) else observation.pseudo_inverse(y, signal_shape)
    if isinstance(observation, Mask):
        return seen, observation.mask.to(seen.dtype).expand_as(seen)
    return seen, seen.new_ones(()).expand_as(seen)  # no memory: a batch's rows are made whole


def batch_operator(
    observation: Observation,
    index: torch.Tensor,
    device: torch.device,
    moved: dict[str, Observation],
) -> Observation:
    """The operator of the examples `index` on `device`: a per-example one's rows, moved;
    one shared by all examples moved once (kept in `moved`), so a projection's pseudo-inverse
    is not recomputed for every batch."""
    chosen = observation.select(index)
    if chosen is not observation:
        return chosen.to(device)
    if "shared" not in moved:
        moved["shared"] = observation.to(device)
    return moved["shared"]


class VAE(nn.Module):
    """The decoder (an abp generator) and its encoder."""

    def __init__(self, decoder: Generator, encoder: Encoder, signal_shape: tuple[int, ...]):
        super().__init__()
        self.decoder, self.encoder, self.signal_shape = decoder, encoder, signal_shape

    def negative_elbo(
        self,
        y: torch.Tensor,
        observation: Observation,
        seen: torch.Tensor,
        observed: torch.Tensor,
        *,
        sigma: float,
        rng: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Per example: −ELBO up to a constant, one reparameterised draw from q (`rng`: a
        CPU generator)."""
        mean, log_variance = self.encoder(seen, observed)
        # Drawn on the CPU, then moved: the same draws on every device, as sample_latents'.
        noise = torch.randn(mean.shape, generator=rng).to(mean.device, mean.dtype)
        z = mean + (0.5 * log_variance).exp() * noise
        residual = observation.residual(y, self.decoder(z))
        data_term = residual.flatten(1).pow(2).sum(1) / (2 * sigma**2)
        kl = 0.5 * (mean.pow(2) + log_variance.exp() - 1 - log_variance).flatten(1).sum(1)
        return data_term + kl

    @torch.no_grad()
    def encode(
        self,
        y: torch.Tensor,
        observation: Observation,
        *,
        batch_size: int = 1024,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """q's means for examples (what the encoder guesses, with no inference of its own),
        `batch_size` at a time on `device` (default: the VAE's), returned where y is."""
        device = torch.device(device) if device is not None else next(self.parameters()).device
        means: list[torch.Tensor] = []
        moved: dict[str, Observation] = {}
        for index in torch.arange(len(y)).split(batch_size):
            batch = batch_operator(observation, index, device, moved)
            seen, observed = encoder_inputs(y[index].to(device), batch, self.signal_shape)
            means.append(self.encoder(seen, observed)[0].to(y.device))
        return torch.cat(means)


def train_vae(
    decoder: Generator,
    y: torch.Tensor,
    observation: Observation,
    signal_shape: tuple[int, ...],
    *,
    abp: ABPConfig,
    config: VAEConfig,
    epochs: int,
    device: torch.device | str = "cpu",
) -> tuple[VAE, list[float]]:
    """A VAE with `decoder` (initialised as ABP's generator was) learned from the
    observations y = A(x) of the training examples: minibatch Adam (or SGD, as abp says) on
    the mean negative ELBO. Returns the VAE, in eval mode on `device`, and each epoch's mean
    negative ELBO per example. Raises FloatingPointError if the loss stops being finite."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):  # seeded here, leaving the caller's stream alone
        torch.manual_seed(config.seed)  # the encoder's initial weights
        encoder = mirrored_encoder(decoder, signal_shape)
    vae = VAE(decoder, encoder, signal_shape).to(device)
    learning_rate = config.learning_rate or abp.learning_rate
    if abp.optimizer == "adam":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(
            vae.parameters(), lr=learning_rate, betas=abp.adam_betas
        )
    else:
        optimizer = torch.optim.SGD(vae.parameters(), lr=learning_rate, momentum=abp.sgd_momentum)
    batch_size = config.batch_size or abp.batch_size
    order_rng = torch.Generator().manual_seed(config.seed)
    noise_rng = torch.Generator().manual_seed(config.seed + 1)
    # What the encoder reads never changes: computed once (A⁺y of per-example matrices
    # costs a pseudo-inverse per example).
    seen, observed = encoder_inputs(y, observation, signal_shape)
    history: list[float] = []
    moved: dict[str, Observation] = {}
    vae.train()
    for epoch in range(epochs):
        total = 0.0
        for index in torch.randperm(len(y), generator=order_rng).split(batch_size):
            loss = vae.negative_elbo(
                y[index].to(device),
                batch_operator(observation, index, device, moved),
                seen[index].to(device),
                observed[index].to(device),
                sigma=abp.sigma,
                rng=noise_rng,
            ).sum()
            optimizer.zero_grad(set_to_none=True)
            (loss / len(index)).backward()
            optimizer.step()
            total += float(loss.detach())
        history.append(total / len(y))
        if not math.isfinite(history[-1]):
            raise FloatingPointError(
                f"the VAE's loss became {history[-1]} at epoch {epoch + 1}: lower vae.learning_rate"
            )
    return vae.eval(), history
