"""Data off the device: batches gathered by example id train exactly as data on the device."""

from __future__ import annotations

import threading

import numpy as np
import torch

from abp.data import InMemory, Occluded, Prefetcher, fits_on_device
from abp.models import ImageGenerator
from abp.observe import Mask
from abp.train import ABPConfig, ABPTrainer, ExecutionConfig


class MemoryMapped:
    """Examples in a .npy file read through np.load(mmap_mode='r'), counting the rows read."""

    def __init__(self, path, array: np.ndarray):
        np.save(path, array)
        self.array = np.load(path, mmap_mode="r")
        self.rows_read = 0

    def __len__(self) -> int:
        return len(self.array)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        self.rows_read += len(ids)
        return torch.from_numpy(np.ascontiguousarray(self.array[ids.numpy()])).float()


def images(n: int) -> torch.Tensor:
    return torch.rand((n, 1, 8, 8), generator=torch.Generator().manual_seed(5)) * 2 - 1


def trainer(data, observation=None, **options) -> ABPTrainer:
    torch.manual_seed(1)
    generator = ImageGenerator(latent_dim=4, image_size=8, channels=1, widths=(8,))
    config = ABPConfig(sigma=0.3, step_size=0.1, langevin_steps=3, batch_size=8, seed=3)
    execution = ExecutionConfig(inference_batch_size=16)
    return ABPTrainer(
        generator,
        data,
        config,
        execution=execution,
        observation=observation,
        device="cpu",
        **options,
    )


def same_state(a: ABPTrainer, b: ABPTrainer) -> None:
    assert torch.equal(a.latent_bank.latents, b.latent_bank.latents)
    for p, q in zip(a.generator.parameters(), b.generator.parameters(), strict=True):
        assert torch.equal(p, q)
    assert [h["energy"] for h in a.history] == [h["energy"] for h in b.history]


def test_a_memory_mapped_split_trains_exactly_as_the_same_data_in_memory(tmp_path):
    x = images(45)
    in_memory = trainer(x)
    mapped = MemoryMapped(tmp_path / "x.npy", x.numpy())
    off_device = trainer(mapped, data_on_device=False)
    assert in_memory.data_on_device and not off_device.data_on_device
    in_memory.fit(3)
    off_device.fit(3)
    same_state(in_memory, off_device)
    assert mapped.rows_read == 1 + 3 * 45  # the probe of one row's shape, then each epoch


def test_occluded_data_off_the_device_trains_exactly_as_on_it(tmp_path):
    x = images(40)
    mask = torch.rand(x.shape, generator=torch.Generator().manual_seed(2)) < 0.6
    on = trainer(x * mask, Mask(mask))
    signals = MemoryMapped(tmp_path / "x.npy", x.numpy())
    masks = InMemory(torch.from_numpy(np.load(_saved(tmp_path / "m.npy", mask), mmap_mode="c")))
    off = trainer(Occluded(signals, masks), Mask(masks.tensor), data_on_device=False)
    on.fit(2)
    off.fit(2)
    same_state(on, off)


def _saved(path, tensor: torch.Tensor):
    np.save(path, tensor.numpy())
    return path


def test_the_prefetcher_gathers_every_batch_in_order_one_ahead():
    gathered = []

    def gather(ids: torch.Tensor) -> list[int]:
        gathered.append(ids.tolist())
        return ids.tolist()

    prefetch = Prefetcher(gather)
    batches = list(torch.arange(10).split(3))
    stream = prefetch(batches)
    assert next(stream) == [0, 1, 2]
    next(stream)
    assert len(gathered) >= 2  # the one after the current one is on its way
    assert list(stream) == [[6, 7, 8], [9]]
    # Its thread ends with the pass.
    assert not [t for t in threading.enumerate() if t.name.startswith("abp-prefetch")]


def test_data_on_the_cpu_always_fits():
    assert fits_on_device(10**9, (3, 64, 64), torch.device("cpu"))
