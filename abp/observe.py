"""Observation operators A: what of a signal x we get to see, y = A(x).

The energy (abp.energy) only ever calls `residual(y, x)`, so learning from complete,
occluded or compressed data is the same code with a different operator:

- `Identity`: y = x (complete data).
- `Mask`: y = m ⊙ x with a 0/1 mask of observed entries (occluded data). Hidden entries of y
  have no influence at all: the residual is m ⊙ (y − x).
- `Projection`: y = A · vec(x) with a matrix A (compressed measurements).
- `SeededProjections`: y_i = A_i · vec(x_i), each example its own Gaussian A_i, drawn from
  a seed of its own (stored as seeds, never as matrices).
- `LocalAverage`: y = means over non-overlapping k×k blocks (local averaging).

An operator that differs per example (a per-example mask) is restricted to a batch with
`select(index)`; operators shared by all examples return themselves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


class Observation:
    """Base class for a linear observation operator."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def residual(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """y − A(x): the part of the data the signal x does not explain."""
        return y - self(x)

    def select(self, index: torch.Tensor) -> Observation:
        """The operator for the examples `index` of the data set."""
        return self

    def pseudo_inverse(self, y: torch.Tensor, signal_shape: Sequence[int]) -> torch.Tensor:
        """A⁺y: the least-norm signal with A(x) = y (used by the linear PCA baseline)."""
        raise NotImplementedError

    def observed_count(self, y: torch.Tensor) -> torch.Tensor:
        """How many observed entries the batch y has (the denominator of a mean error)."""
        return torch.tensor(y.numel(), device=y.device, dtype=torch.float32)

    def to(self, device: torch.device | str) -> Observation:
        return self


class Identity(Observation):
    """Complete data: y = x."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def residual(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return y - x

    def pseudo_inverse(self, y: torch.Tensor, signal_shape: Sequence[int]) -> torch.Tensor:
        return y


class Mask(Observation):
    """Occluded data: y = m ⊙ x, with m = 1 where an entry is observed and 0 where hidden.

    `mask` holds one mask per example, shape (N, *signal_shape), unless `per_example=False`,
    in which case one mask of shape signal_shape (or broadcastable to it) serves every example.
    """

    def __init__(self, mask: torch.Tensor, *, per_example: bool = True, validate: bool = True):
        # The check reads the mask on the host; rows of a checked mask skip it (`select`),
        # so choosing a batch's masks stays free of host syncs (and CUDA-graph capturable).
        if validate and mask.dtype != torch.bool and not torch.all((mask == 0) | (mask == 1)):
            raise ValueError("a mask must contain only 0 (hidden) and 1 (observed)")
        # A bool mask stays bool (a memory-mapped one is never read whole); the rows a
        # batch selects, and a mask moved to a device, are float32 (what the energy uses).
        self.mask = mask if mask.dtype == torch.bool else _as_float(mask)
        self.per_example = per_example

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.mask * x

    def residual(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.mask * (y - x)

    def pseudo_inverse(self, y: torch.Tensor, signal_shape: Sequence[int]) -> torch.Tensor:
        return self.mask * y

    def select(self, index: torch.Tensor) -> Mask:
        if not self.per_example:
            return self
        rows = self.mask[index.to(self.mask.device)]
        return Mask(_as_float(rows), per_example=True, validate=False)

    def observed_count(self, y: torch.Tensor) -> torch.Tensor:
        return self.mask.expand_as(y).sum()

    def to(self, device: torch.device | str) -> Mask:
        mask = _as_float(self.mask.to(device))
        return Mask(mask, per_example=self.per_example, validate=False)

    @property
    def observed_fraction(self) -> float:
        return float(_as_float(self.mask).mean())


def _as_float(mask: torch.Tensor) -> torch.Tensor:
    return mask if mask.is_floating_point() else mask.to(torch.float32)


class Projection(Observation):
    """Compressed measurements: y = A · vec(x), with A of shape (M, D) shared by all examples."""

    def __init__(self, matrix: torch.Tensor):
        if matrix.dim() != 2:
            raise ValueError(f"a projection matrix must be 2-D (M, D); got {tuple(matrix.shape)}")
        self.matrix = matrix

    @classmethod
    def gaussian(
        cls,
        n_measurements: int,
        signal_shape: Sequence[int] | int,
        seed: int,
        dtype: torch.dtype = torch.float32,
    ) -> Projection:
        """A random Gaussian A with entries N(0, 1/M), reproducible from (M, shape, seed)."""
        size = signal_shape if isinstance(signal_shape, int) else math.prod(signal_shape)
        rng = torch.Generator().manual_seed(seed)
        matrix = torch.randn((n_measurements, size), generator=rng, dtype=dtype)
        return cls(matrix / math.sqrt(n_measurements))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.matrix.T

    def pseudo_inverse(self, y: torch.Tensor, signal_shape: Sequence[int]) -> torch.Tensor:
        if not hasattr(self, "_pinv"):
            self._pinv = torch.linalg.pinv(self.matrix.double()).to(self.matrix.dtype)
        return (y @ self._pinv.T).view(-1, *signal_shape)

    def to(self, device: torch.device | str) -> Projection:
        return Projection(self.matrix.to(device))


SEED_MULTIPLIER = 0x9E3779B97F4A7C1  # odd, below 2⁶² (from the golden ratio)


class SeededProjections(Observation):
    """Compressed measurements with a matrix of each example's own: y_i = A_i · vec(x_i),
    A_i of shape (M, D) with entries N(0, 1/M), drawn as Projection.gaussian draws it from
    the example's seed. Measured through one shared A, every signal's part in null(A) is
    invisible to every method; with matrices that differ by example, each direction is seen
    in some examples.

    The seeds are what is stored; the matrices are drawn from them on first use, all at
    once on the operator's device, and a batch's operator (`select`) takes their rows. Dense
    (M, D) matrices per example are meant for small signals (digits: 16 × 64 floats each at
    ratio 0.25, 7 MB for all 1797)."""

    def __init__(
        self,
        seeds: torch.Tensor,
        n_measurements: int,
        size: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        if seeds.dim() != 1 or seeds.dtype != torch.int64:
            raise ValueError(
                f"seeds must be a 1-D int64 tensor; got {seeds.dtype} {tuple(seeds.shape)}"
            )
        self.device, self.dtype = torch.device(device), dtype
        # On the operator's device, so that selecting a batch (device ids) needs no host sync.
        self.seeds = seeds.to(self.device)
        self.n_measurements, self.size = n_measurements, size
        self._matrices: torch.Tensor | None = None
        self._pinv: torch.Tensor | None = None

    @staticmethod
    def seeds_for(seed: int, ids: torch.Tensor) -> torch.Tensor:
        """Each example's seed from the variant's seed and its example id: distinct for
        distinct ids, the same in every run."""
        # torch's CPU generator seeds its Mersenne Twister from a seed's low 32 bits: an odd
        # multiplier is invertible modulo 2³², so ids below 2³² get distinct low bits, hence
        # distinct matrices. (int64 products wrap modulo 2⁶⁴, which keeps every residue.)
        offset = seed * 2654435761 % 2**62  # a Python int: any seed
        return (ids.to(torch.int64) * SEED_MULTIPLIER + offset) % 2**62

    @property
    def matrices(self) -> torch.Tensor:
        """A_i of every example, (N, M, D), drawn on first use."""
        if self._matrices is None:
            matrices = torch.empty(
                (len(self.seeds), self.n_measurements, self.size), dtype=self.dtype
            )
            for i, seed in enumerate(self.seeds.tolist()):  # one host sync, once
                matrices[i] = Projection.gaussian(
                    self.n_measurements, self.size, seed, self.dtype
                ).matrix
            self._matrices = matrices.to(self.device)
        return self._matrices

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) != len(self.seeds):
            raise ValueError(
                f"{len(x)} signals for {len(self.seeds)} per-example matrices: select the "
                "batch's examples first"
            )
        return torch.einsum("nmd,nd->nm", self.matrices, x.flatten(1))

    def select(self, index: torch.Tensor) -> SeededProjections:
        """The batch's operator: rows of the data set's matrices, drawn once for all (a
        training selects every batch of every epoch)."""
        index = index.to(self.device)
        chosen = SeededProjections(
            self.seeds[index], self.n_measurements, self.size, self.device, self.dtype
        )
        chosen._matrices = self.matrices[index]
        return chosen

    def pseudo_inverse(self, y: torch.Tensor, signal_shape: Sequence[int]) -> torch.Tensor:
        if self._pinv is None:  # the PCA baseline's iterations ask for it again and again
            self._pinv = torch.linalg.pinv(self.matrices.double()).to(self.dtype)  # (N, D, M)
        return torch.einsum("ndm,nm->nd", self._pinv.to(y.dtype), y).view(-1, *signal_shape)

    def to(self, device: torch.device | str) -> SeededProjections:
        moved = SeededProjections(self.seeds, self.n_measurements, self.size, device, self.dtype)
        if self._matrices is not None:
            moved._matrices = self._matrices.to(device)
        return moved


class LocalAverage(Observation):
    """Local averaging: means over non-overlapping blocks of `block` entries along each of the
    last `n_dims` dimensions (2 for images and video frames, 1 for audio)."""

    def __init__(self, block: int, n_dims: int = 2):
        if block < 1 or n_dims < 1:
            raise ValueError(f"block={block} and n_dims={n_dims} must be positive")
        self.block, self.n_dims = block, n_dims

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        leading = x.shape[: x.dim() - self.n_dims]
        blocked_shape: list[int] = []
        for size in x.shape[x.dim() - self.n_dims :]:
            if size % self.block:
                raise ValueError(f"signal side {size} is not a multiple of block={self.block}")
            blocked_shape += [size // self.block, self.block]
        block_dims = tuple(range(len(leading) + 1, len(leading) + 2 * self.n_dims, 2))
        return x.reshape(*leading, *blocked_shape).mean(dim=block_dims)

    def pseudo_inverse(self, y: torch.Tensor, signal_shape: Sequence[int]) -> torch.Tensor:
        # The block-mean rows are orthogonal with equal norms, so A⁺ repeats each mean
        # over its block.
        for dim in range(y.dim() - self.n_dims, y.dim()):
            y = y.repeat_interleave(self.block, dim=dim)
        return y
